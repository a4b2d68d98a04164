"""Redis list lengths and stream groups: the I/O, over one connection per server, database and login.

One :class:`RedisSource` holds one TCP (or TLS) connection, opened on the first measurement
(AUTH, then SELECT when the database is not 0) and reused; any failure mid-exchange drops it
and the next measurement opens a new one. Commands are pipelined: a measurement, or a batch of
any number of triggers (:meth:`RedisSource.measure_many`, the waker's poll), is one round trip:
LLEN per list trigger, XINFO GROUPS + XLEN per stream trigger. A list key that holds a set,
sorted set or hash (WRONGTYPE to LLEN) costs one more round trip (TYPE, then its length command).
The protocol is :mod:`._resp` (bounded replies; why not redis-py is said there).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterable

from tidescale.credentials import Credentials
from tidescale.errors import BrokerAuthFailed, BrokerUnreachable, SourceError, SourceNotFound
from tidescale.sources._secret_read import read_secret
from tidescale.sources.base import Measurement, MeasurementFailure, Scope, TriggerSettings, within_timeout
from tidescale.sources.redis._length import (
    CARDINALITY_COMMANDS,
    RedisSnapshot,
    length_from_reply,
    redis_measurement,
    stream_snapshot,
)
from tidescale.sources.redis._resp import MAX_LINE_BYTES, Reply, RespError, encode_command, read_reply
from tidescale.sources.redis._settings import RedisSettings

__all__ = ["RedisSource"]

_AUTH_CODES = ("NOAUTH", "WRONGPASS", "NOPERM")


class RedisSource:
    """A connection to one Redis server's database; measures any trigger naming it."""

    def __init__(self, settings: RedisSettings, *, credentials: Credentials | None = None) -> None:
        self._connection = settings
        self._credentials = credentials
        """Given (by the waker): the password (and username); no *-env or *-file is read then."""
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self.round_trips = 0
        """Pipelines sent so far (the login counts one)."""

    @property
    def _where(self) -> str:
        return f"Redis at {self._connection.address} (database {self._connection.database})"

    async def measure(self, settings: TriggerSettings, scope: Scope) -> Measurement:
        """Scope does not matter: Redis keeps no per-consumer share a pod could call its own."""
        s = _redis(settings)
        found = await within_timeout(
            self._snapshots([s]),
            trigger=s.name,
            seconds=s.timeout,
            waiting_for=f"{self._where} for key {s.key!r}",
            advice="check the server's load, or raise timeout",
        )
        snapshot = found[s]
        try:
            if isinstance(snapshot, SourceError):
                raise snapshot
            return redis_measurement(snapshot, s, time.monotonic())
        except SourceError as exc:
            raise type(exc)(f"{self._where}: {exc}", trigger=s.name) from exc

    async def measure_many(
        self, settings: Iterable[TriggerSettings]
    ) -> dict[RedisSettings, Measurement | MeasurementFailure]:
        """Group-wide measurements of many triggers of this server in one pipelined round trip.
        Equal settings are measured once. Never raises a SourceError."""
        batch = list(dict.fromkeys(_redis(s) for s in settings))
        if not batch:
            return {}
        limit = max(s.timeout for s in batch)
        try:
            found = await within_timeout(
                self._snapshots(batch),
                trigger=batch[0].name,
                seconds=limit,
                waiting_for=f"{self._where} for {len(batch)} keys",
                advice="check the server's load, or raise timeout",
            )
        except SourceError as exc:
            failure = str(exc)
            taken_at = time.monotonic()
            return {s: MeasurementFailure(trigger=s.name, error=failure, taken_at=taken_at) for s in batch}
        taken_at = time.monotonic()
        results: dict[RedisSettings, Measurement | MeasurementFailure] = {}
        for s in batch:
            snapshot = found[s]
            try:
                if isinstance(snapshot, SourceError):
                    raise snapshot
                results[s] = redis_measurement(snapshot, s, taken_at)
            except SourceError as exc:
                results[s] = MeasurementFailure(
                    trigger=s.name, error=f"{self._where}: {exc}", taken_at=taken_at
                )
        return results

    def forget(self, settings: TriggerSettings) -> None:
        """Nothing is kept per trigger."""

    async def close(self) -> None:
        self._closed = True
        await self._drop()

    # -- the exchange -----------------------------------------------------------------------------

    async def _snapshots(
        self, batch: list[RedisSettings]
    ) -> dict[RedisSettings, RedisSnapshot | SourceError]:
        async with self._lock:
            if self._closed:
                raise SourceError("the Redis source is closed")
            try:
                return await self._exchange(batch)
            except SourceError:
                await self._drop()
                raise
            except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
                await self._drop()
                raise BrokerUnreachable(
                    f"lost the connection to {self._where} ({exc or type(exc).__name__}): check address, "
                    "that the server is up, and network policies"
                ) from exc
            except BaseException:
                # Cancelled (a timeout) mid-exchange: the replies still due would answer the next
                # pipeline, so the connection is dropped.
                await self._drop()
                raise

    async def _exchange(self, batch: list[RedisSettings]) -> dict[RedisSettings, RedisSnapshot | SourceError]:
        commands: list[tuple[str | bytes | int, ...]] = []
        for s in batch:
            if s.list_name is not None:
                commands.append(("LLEN", s.key))
            else:
                commands += [("XINFO", "GROUPS", s.key), ("XLEN", s.key)]
        replies = iter(await self._pipeline(commands))
        found: dict[RedisSettings, RedisSnapshot | SourceError] = {}
        other_types: list[RedisSettings] = []
        for s in batch:
            try:
                if s.list_name is not None:
                    reply = next(replies)
                    if isinstance(reply, RespError) and reply.code == "WRONGTYPE":
                        other_types.append(s)
                        continue
                    self._raise_if_refused(reply, "LLEN")
                    found[s] = RedisSnapshot(length=length_from_reply(reply, f"LLEN {s.key!r}"))
                else:
                    xinfo, xlen = next(replies), next(replies)
                    self._raise_if_refused(xinfo, "XINFO GROUPS")
                    self._raise_if_refused(xlen, "XLEN")
                    found[s] = stream_snapshot(xinfo, xlen, s.key)
            except BrokerAuthFailed:
                raise
            except SourceError as exc:
                found[s] = exc
        if other_types:
            found.update(await self._other_lengths(other_types))
        return found

    async def _other_lengths(
        self, batch: list[RedisSettings]
    ) -> dict[RedisSettings, RedisSnapshot | SourceError]:
        """Keys that are not lists: their type, then the length command of that type."""
        types = await self._pipeline([("TYPE", s.key) for s in batch])
        found: dict[RedisSettings, RedisSnapshot | SourceError] = {}
        asked: list[tuple[RedisSettings, str]] = []
        for s, kind in zip(batch, types, strict=True):
            command = CARDINALITY_COMMANDS.get(kind) if isinstance(kind, bytes) else None
            if command is None:
                shown = kind.decode("utf-8", "replace") if isinstance(kind, bytes) else repr(kind)
                found[s] = SourceError(
                    f"key {s.key!r} holds a {shown}, not a list, set, sorted set or hash: check list "
                    "(use stream for a stream)"
                )
            else:
                asked.append((s, command))
        lengths = await self._pipeline([(command, s.key) for s, command in asked])
        for (s, command), reply in zip(asked, lengths, strict=True):
            try:
                self._raise_if_refused(reply, command)
                found[s] = RedisSnapshot(length=length_from_reply(reply, f"{command} {s.key!r}"))
            except BrokerAuthFailed:
                raise
            except SourceError as exc:
                found[s] = exc
        return found

    def _raise_if_refused(self, reply: Reply, command: str) -> None:
        """An ACL or login refusal fails the whole batch: it is the login's, not one key's."""
        if isinstance(reply, RespError) and reply.code in _AUTH_CODES:
            raise BrokerAuthFailed(
                f"{self._where} refused {command} for user {self._user() or 'default'!r} ({reply.message}): "
                "check the password source, and that the user's ACL allows LLEN, TYPE, SCARD, ZCARD, HLEN, "
                "XLEN and XINFO on the key"
            )

    async def _pipeline(self, commands: list[tuple[str | bytes | int, ...]]) -> list[Reply]:
        if not commands:
            return []
        reader, writer = await self._open()
        writer.write(b"".join(encode_command(*command) for command in commands))
        await writer.drain()
        self.round_trips += 1
        return [await read_reply(reader) for _ in commands]

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is not None and self._writer is not None:
            return self._reader, self._writer
        settings = self._connection
        context = self._tls_context() if settings.enable_tls else None
        try:
            reader, writer = await asyncio.open_connection(
                settings.host,
                settings.port,
                ssl=context,
                server_hostname=settings.host if context is not None else None,
                limit=MAX_LINE_BYTES,
            )
        except ssl.SSLCertVerificationError as exc:
            raise BrokerAuthFailed(
                f"the TLS certificate of {self._where} is not trusted ({exc.verify_message}): check "
                "tls-ca-file (the CA that signed the server's certificate)"
            ) from exc
        except OSError as exc:
            raise BrokerUnreachable(
                f"cannot reach {self._where} ({exc.strerror or exc}): check address, that the server "
                "listens there, and network policies"
            ) from exc
        self._reader, self._writer = reader, writer
        await self._login()
        return reader, writer

    async def _login(self) -> None:
        password = self._password()
        commands: list[tuple[str | bytes | int, ...]] = []
        user = self._user()
        if password is not None:
            commands.append(("AUTH", user, password) if user else ("AUTH", password))
        if self._connection.database:
            commands.append(("SELECT", self._connection.database))
        if not commands:
            return
        replies = await self._pipeline(commands)
        if password is not None:
            auth = replies.pop(0)
            if isinstance(auth, RespError):
                raise BrokerAuthFailed(
                    f"{self._where} refused the login of user {user or 'default'!r} ({auth.message}): check "
                    "username and the password source"
                )
        if replies and isinstance(replies[0], RespError):
            error = replies[0]
            if error.code in _AUTH_CODES:
                raise BrokerAuthFailed(
                    f"{self._where} needs a login ({error.message}): give a password source"
                )
            raise SourceNotFound(f"{self._where} refused SELECT ({error.message}): check database")

    def _user(self) -> str | None:
        if self._credentials is not None:
            return self._credentials.get("username") or self._connection.username
        return self._connection.username

    def _password(self) -> str | None:
        if self._credentials is not None:
            return self._credentials.require("password")
        settings = self._connection
        return read_secret(settings.password_env, settings.password_file)

    def _tls_context(self) -> ssl.SSLContext:
        try:
            return ssl.create_default_context(cafile=self._connection.tls_ca_file)
        except OSError as exc:
            raise BrokerAuthFailed(f"cannot load tls-ca-file for {self._where} ({exc.strerror})") from exc

    async def _drop(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()  # not awaited: a dead peer must not hold up the next measurement


def _redis(settings: TriggerSettings) -> RedisSettings:
    if not isinstance(settings, RedisSettings):
        raise TypeError(f"RedisSource cannot measure {type(settings).__name__}")
    return settings
