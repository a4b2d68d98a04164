"""RabbitMQ queue depth and rates: settings, the pure arithmetic, and the I/O (management API or AMQP).

One :class:`RabbitMQSource` is one connection to one broker (see the pool in
``registry``): an HTTP/1.1 client for the management API (:mod:`tidescale._http1`, not httpx:
~8 MiB less in every pod that measures), or an aio-pika connection
for AMQP passive declares. Clients are imported the first time one opens.

Requests per measurement: management API, one queue: 1 GET (plus 1 GET per own
channel in LOCAL scope, for its unacknowledged count and deliver rate); a
pattern: 1 GET per page of 500 queues. AMQP: one passive declare on a fresh
channel (a failed passive declare closes its channel, so channels are not reused).
A batch (:meth:`RabbitMQSource.measure_many`, the waker's poll): 1 GET per vhost for every
management-API trigger, whatever its number.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from tidescale._progress import rabbitmq_progress
from tidescale.credentials import Credentials
from tidescale.errors import BrokerAuthFailed, BrokerUnreachable, SourceError, SourceNotFound, SourceTimeout
from tidescale.sources._fields import compile_linear
from tidescale.sources.base import (
    Measurement,
    MeasurementFailure,
    MeasurementWarning,
    Scope,
    TriggerSettings,
    within_timeout,
)
from tidescale.sources.rabbitmq._depth import (
    LocalShare,
    QueueStats,
    RabbitMQSnapshot,
    own_channels,
    queue_metric,
    queue_stats_from_api,
    rabbitmq_measurement,
)
from tidescale.sources.rabbitmq._settings import RABBITMQ_FIELDS, RabbitMQSettings, parse_rabbitmq_settings

__all__ = [
    "RABBITMQ_FIELDS",
    "LocalShare",
    "QueueStats",
    "RabbitMQSettings",
    "RabbitMQSnapshot",
    "RabbitMQSource",
    "own_channels",
    "parse_rabbitmq_settings",
    "queue_metric",
    "queue_stats_from_api",
    "rabbitmq_measurement",
]

_PAGE_SIZE = 500
_PATTERN_COLUMNS = (
    "name,type,messages_ready,messages_unacknowledged,consumers,message_stats.publish_details.rate"
)
_COLUMNS = _PATTERN_COLUMNS
"""What a batch lists of every queue of a vhost: the fields ``queue_stats_from_api`` reads."""
MAX_RESPONSE_BYTES = 8 << 20
"""Most bytes read of one management API answer (after decompression): about 50,000 queues of a
listing's five columns. A larger answer fails that measurement instead of filling the memory."""


class RabbitMQSource:
    """A connection to one RabbitMQ broker; measures any trigger naming it."""

    def __init__(
        self, settings: RabbitMQSettings, *, pod_ip: str | None = None, credentials: Credentials | None = None
    ) -> None:
        self._connection = settings
        self._pod_ip = pod_ip
        self._credentials = credentials
        """Given (by the waker): the username and password and the TLS material (keys ca.crt, tls.crt,
        tls.key, tls.key-password); no *-env or *-file is read then."""
        self._http: Any = None
        self._amqp: Any = None
        self._http_user: str | None = None
        self._http_auth: dict[str, str] = {}
        self._open_lock = asyncio.Lock()
        self._closed = False
        self.requests = 0
        """Broker requests sent so far."""

    @property
    def _where(self) -> str:
        url = self._connection.management_url or self._connection.amqp_url or ""
        parts = urlsplit(url)
        return f"RabbitMQ at {parts.hostname}:{parts.port or _default_port(parts.scheme)}"

    async def measure(self, settings: TriggerSettings, scope: Scope) -> Measurement:
        if not isinstance(settings, RabbitMQSettings):
            raise TypeError(f"RabbitMQSource cannot measure {type(settings).__name__}")
        if self._closed:
            raise SourceError("the RabbitMQ source is closed", trigger=settings.name)
        snapshot = await within_timeout(
            self.snapshot(settings, scope),
            trigger=settings.name,
            seconds=settings.timeout,
            waiting_for=f"{self._where} for queue {settings.queue or settings.queue_pattern!r}",
            advice="check the broker's load, or raise timeout",
        )
        measurement = rabbitmq_measurement(snapshot, settings, time.monotonic())
        if scope is not Scope.GROUP:
            return measurement
        # The leader's rate estimator and stall detector read the same listing's counters.
        return replace(
            measurement, progress=rabbitmq_progress(snapshot.queues, taken_at=measurement.taken_at)
        )

    async def measure_many(
        self, settings: Iterable[TriggerSettings]
    ) -> dict[RabbitMQSettings, Measurement | MeasurementFailure]:
        """Group-wide measurements of many triggers of this broker in one batch (the waker's poll).

        Management-API triggers cost one ``GET /api/queues/{vhost}`` per vhost (only the columns the
        arithmetic reads), whatever their number and whether they name a queue or a pattern. AMQP
        triggers are measured one by one (a passive declare per queue; there is no listing).
        Equal settings are measured once. Never raises a SourceError."""
        batch: list[RabbitMQSettings] = []
        for s in dict.fromkeys(settings):
            if not isinstance(s, RabbitMQSettings):
                raise TypeError(f"RabbitMQSource cannot measure {type(s).__name__}")
            batch.append(s)
        by_vhost: dict[str, list[RabbitMQSettings]] = defaultdict(list)
        for s in batch:
            if s.uses_management:
                by_vhost[s.vhost].append(s)
        results: dict[RabbitMQSettings, Measurement | MeasurementFailure] = {}

        async def one(s: RabbitMQSettings) -> None:
            try:
                results[s] = await self.measure(s, Scope.GROUP)
            except SourceError as exc:
                results[s] = MeasurementFailure(trigger=s.name, error=str(exc), taken_at=time.monotonic())

        async def vhost(name: str, members: list[RabbitMQSettings]) -> None:
            try:
                snapshots = await self._vhost_snapshots(name, members)
            except Exception as exc:  # whatever a broker answers fails only the triggers it concerns
                failure = SourceError(f"{self._where} gave an unusable answer ({type(exc).__name__})")
                snapshots = dict.fromkeys(members, failure)
            taken_at = time.monotonic()
            for s in members:
                found = snapshots[s]
                try:
                    if isinstance(found, SourceError):
                        raise found
                    results[s] = rabbitmq_measurement(found, s, taken_at)
                except SourceError as error:
                    results[s] = MeasurementFailure(trigger=s.name, error=str(error), taken_at=taken_at)

        await asyncio.gather(
            *(vhost(name, members) for name, members in by_vhost.items()),
            *(one(s) for s in batch if not s.uses_management),
        )
        return results

    async def _vhost_snapshots(
        self, vhost: str, members: list[RabbitMQSettings]
    ) -> dict[RabbitMQSettings, RabbitMQSnapshot | SourceError]:
        """Snapshots of the triggers of one vhost from one listing of its queues."""
        limit = max(s.timeout for s in members)
        try:
            if self._closed:
                raise SourceError("the RabbitMQ source is closed")
            try:
                async with asyncio.timeout(limit):
                    listing = await self._get(f"/api/queues/{quote(vhost, safe='')}", {"columns": _COLUMNS})
            except TimeoutError as exc:
                raise SourceTimeout(
                    f"{self._where} did not list the queues of vhost {vhost!r} within {limit:g}s: check the "
                    "broker's load, or raise timeout"
                ) from exc
            if listing is None:
                raise SourceNotFound(f"{self._where} has no vhost {vhost!r}: check vhost")
        except SourceError as exc:
            return dict.fromkeys(members, exc)
        if not isinstance(listing, list):
            failure = SourceError(f"{self._where} answered the queue listing with something not a JSON list")
            return dict.fromkeys(members, failure)
        queues = {str(item.get("name")): item for item in listing if isinstance(item, dict)}
        return {s: self._snapshot_from_listing(s, queues) for s in members}

    def _snapshot_from_listing(
        self, settings: RabbitMQSettings, queues: Mapping[str, Mapping[str, Any]]
    ) -> RabbitMQSnapshot | SourceError:
        if settings.queue is not None:
            names = [settings.queue] if settings.queue in queues else []
            what = f"queue {settings.queue!r}"
        else:
            pattern = compile_linear(settings.queue_pattern or "")  # linear time, whatever the names
            names = sorted(name for name in queues if _matches(pattern, name, settings))
            what = f"queue matching {settings.queue_pattern!r}"
        if not names:
            if settings.queue is None:
                return self._unmatched(settings)
            return SourceNotFound(
                f"{self._where} has no {what} in vhost {settings.vhost!r}: check the queue name and that "
                "the consumers declared it"
            )
        try:
            stats = tuple(queue_stats_from_api(queues[name]) for name in names)
        except SourceError as exc:
            return exc
        return RabbitMQSnapshot(queues=stats, via="management")

    def forget(self, settings: TriggerSettings) -> None:
        """Nothing is kept per trigger."""

    async def close(self) -> None:
        self._closed = True
        http, self._http = self._http, None
        amqp, self._amqp = self._amqp, None
        if http is not None:
            await http.aclose()
        if amqp is not None:
            await amqp.close()

    async def snapshot(self, settings: RabbitMQSettings, scope: Scope) -> RabbitMQSnapshot:
        if settings.uses_management:
            return await self._management_snapshot(settings, scope)
        return await self._amqp_snapshot(settings)

    # -- management API -------------------------------------------------------------------------

    async def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        from tidescale._http1 import BodyTooLarge, HttpError

        client = await self._http_client()
        self.requests += 1
        try:
            async with asyncio.timeout(self._connection.timeout):
                response = await client.request(
                    "GET", path, params=params, headers=self._http_auth, limit=MAX_RESPONSE_BYTES
                )
        except TimeoutError as exc:
            raise SourceTimeout(f"{self._where} (management API) timed out on GET {path}") from exc
        except BodyTooLarge as exc:
            raise SourceError(
                f"the management API of {self._where} answered {path} with more than "
                f"{MAX_RESPONSE_BYTES >> 20} MiB: refused"
            ) from exc
        except HttpError as exc:
            if (untrusted := _untrusted_certificate(exc)) is not None:
                from tidescale.sources._tls import ca_advice

                raise BrokerAuthFailed(
                    f"the TLS certificate of the management API of {self._where} is not trusted "
                    f"({untrusted.verify_message}): check {ca_advice(self._credentials)}"
                ) from exc
            raise BrokerUnreachable(
                f"cannot reach the management API of {self._where} ({exc or type(exc).__name__}): check "
                "management-url, that the rabbitmq_management plugin is enabled, and network policies"
            ) from exc
        if response.status in (401, 403):
            raise BrokerAuthFailed(
                f"the management API of {self._where} refused user {self._http_user!r} (HTTP "
                f"{response.status}): check the username/password sources and the user's tags "
                "and vhost permissions (monitoring is enough)"
            )
        if response.status == 404:
            return None
        if response.status >= 400:
            raise SourceError(
                f"the management API of {self._where} answered HTTP {response.status} to {path}"
            )
        import orjson

        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise SourceError(
                f"the management API of {self._where} answered {path} with something not JSON"
            ) from exc

    async def _http_client(self) -> Any:
        async with self._open_lock:
            if self._http is None:
                import base64

                from tidescale._http1 import HttpClient

                settings = self._connection
                url = settings.management_url or ""
                parts = urlsplit(url)
                username, password = self._login(parts.username)
                base = urlunsplit((parts.scheme, _netloc_without_user(parts), parts.path.rstrip("/"), "", ""))
                login = f"{username or ''}:{password or ''}".encode()
                self._http_auth = (
                    {"Authorization": f"Basic {base64.b64encode(login).decode()}"} if username else {}
                )
                self._http = HttpClient(
                    base,
                    ssl_context=self._tls_context() if parts.scheme == "https" else None,
                    headers={"Accept": "application/json", "User-Agent": "tidescale"},
                )
                self._http_user = username
            return self._http

    def _login(self, url_user: str | None) -> tuple[str | None, str | None]:
        """The username and password: the given credentials, else the *-env and *-file sources."""
        settings = self._connection
        if self._credentials is not None:
            if settings.auth_mechanism == "external":
                return None, None  # the client certificate (keys tls.crt, tls.key) is the identity
            return self._credentials.username, self._credentials.password
        username = _env(settings.username_env) if settings.username_env else url_user
        return username, _password(settings)

    async def _management_snapshot(self, settings: RabbitMQSettings, scope: Scope) -> RabbitMQSnapshot:
        vhost = quote(settings.vhost, safe="")
        if settings.queue is not None:
            payload = await self._get(f"/api/queues/{vhost}/{quote(settings.queue, safe='')}")
            if payload is None:
                raise await self._not_found(settings, f"queue {settings.queue!r}")
            local = None
            if scope is Scope.LOCAL and self._pod_ip is not None:
                local = await self._local_share(payload.get("consumer_details") or [])
            return RabbitMQSnapshot(queues=(queue_stats_from_api(payload),), via="management", local=local)
        queues = await self._matching_queues(settings)
        if not queues:
            return self._unmatched(settings)
        return RabbitMQSnapshot(queues=tuple(queues), via="management")

    def _unmatched(self, settings: RabbitMQSettings) -> RabbitMQSnapshot:
        """A pattern matching no queue of an existing vhost: no queue, no message waiting, so 0 (KEDA
        reads 0 too, silently); said in a NoQueueMatched warning, since a wrong pattern reads the same."""
        how = "anywhere in a name" if settings.queue_match == "substring" else "whole names"
        warning = MeasurementWarning(
            reason="NoQueueMatched",
            message=(
                f"trigger {settings.name}: queue-pattern {settings.queue_pattern!r} ({how}) matches no queue "
                f"of vhost {settings.vhost!r} on {self._where}: it reads 0 and is idle, as in KEDA; if the "
                "queues exist, check the pattern and queue-match"
            ),
        )
        return RabbitMQSnapshot(queues=(), via="management", warnings=(warning,))

    async def _matching_queues(self, settings: RabbitMQSettings) -> list[QueueStats]:
        pattern = compile_linear(settings.queue_pattern or "")
        vhost = quote(settings.vhost, safe="")
        queues: list[QueueStats] = []
        page = 1
        while True:
            params = {
                "page": str(page),
                "page_size": str(_PAGE_SIZE),
                "name": settings.queue_pattern or "",
                "use_regex": "true",
                "columns": _PATTERN_COLUMNS,
            }
            body = await self._get(f"/api/queues/{vhost}", params)
            if body is None:
                raise await self._not_found(settings, f"queue matching {settings.queue_pattern!r}")
            # The server's regex search is unanchored (KEDA's substring matching): with queue-match
            # whole, keep only whole-name matches.
            queues.extend(
                queue_stats_from_api(item)
                for item in body.get("items", [])
                if _matches(pattern, str(item.get("name")), settings)
            )
            if page >= int(body.get("page_count") or 1):
                return queues
            page += 1

    async def _local_share(self, consumers: list[dict[str, Any]]) -> LocalShare:
        names = own_channels(consumers, self._pod_ip or "")
        unacked, rate = 0, 0.0
        for name in sorted(set(names)):
            channel = await self._get(f"/api/channels/{quote(name, safe='')}")
            if channel is None:
                continue  # closed since the queue was read
            unacked += int(channel.get("messages_unacknowledged") or 0)
            details = (channel.get("message_stats") or {}).get("deliver_get_details") or {}
            rate += float(details.get("rate") or 0.0)
        return LocalShare(consumers=len(names), unacked=unacked, deliver_rate=rate)

    async def _not_found(self, settings: RabbitMQSettings, what: str) -> SourceNotFound:
        vhost_exists = await self._get(f"/api/vhosts/{quote(settings.vhost, safe='')}") is not None
        if not vhost_exists:
            prefix = urlsplit(self._connection.management_url or "").path.strip("/")
            note = (
                f" (the management-url path {prefix!r} is used as a prefix of the API's paths, not as a "
                "vhost as KEDA reads it: name the vhost with vhost)"
                if prefix
                else ""
            )
            return SourceNotFound(f"{self._where} has no vhost {settings.vhost!r}: check vhost{note}")
        return SourceNotFound(
            f"{self._where} has no {what} in vhost {settings.vhost!r}: check the queue name and that "
            "the consumers declared it"
        )

    # -- AMQP -----------------------------------------------------------------------------------

    async def _amqp_snapshot(self, settings: RabbitMQSettings) -> RabbitMQSnapshot:
        import aio_pika.exceptions
        import aiormq.exceptions

        connection = await self._amqp_connection()
        self.requests += 1
        try:
            channel = await connection.channel()
            try:
                declared = await channel.declare_queue(settings.queue, passive=True)
                result = declared.declaration_result
            finally:
                if not channel.is_closed:
                    await channel.close()
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise SourceNotFound(
                f"{self._where} has no queue {settings.queue!r} in vhost {settings.vhost!r}: check the queue "
                "name and that the consumers declared it"
            ) from exc
        except (aiormq.exceptions.ConnectionClosed, aio_pika.exceptions.AMQPConnectionError, OSError) as exc:
            self._amqp = None
            raise BrokerUnreachable(f"lost the AMQP connection to {self._where}: {exc}") from exc
        except aiormq.exceptions.AMQPError as exc:
            raise SourceError(
                f"{self._where} refused a passive declare of {settings.queue!r}: {exc}"
            ) from exc
        stats = QueueStats(
            name=settings.queue or "",
            ready=int(result.message_count),
            unacked=None,
            consumers=int(result.consumer_count),
        )
        return RabbitMQSnapshot(queues=(stats,), via="amqp")

    async def _amqp_connection(self) -> Any:
        async with self._open_lock:
            if self._amqp is not None and not self._amqp.is_closed:
                return self._amqp
            import aio_pika
            import aiormq.exceptions

            settings = self._connection
            parts = urlsplit(settings.amqp_url or "")
            username, password = self._login(parts.username)
            self.requests += 1
            secure = parts.scheme == "amqps"
            extra: dict[str, Any] = {"auth": "external"} if settings.auth_mechanism == "external" else {}
            try:
                self._amqp = await aio_pika.connect(
                    host=parts.hostname or "localhost",
                    port=parts.port or _default_port(parts.scheme),
                    login=username or "guest",
                    password=password or "guest",
                    virtualhost=settings.vhost,
                    ssl=secure,
                    ssl_context=self._tls_context() if secure else None,
                    seconds=settings.timeout,
                    **extra,
                )
            except aiormq.exceptions.ProbableAuthenticationError as exc:
                raise BrokerAuthFailed(
                    f"{self._where} refused AMQP login for user {username or 'guest'!r} on vhost "
                    f"{settings.vhost!r}: check the username/password sources and the vhost permissions"
                ) from exc
            except (aiormq.exceptions.AMQPConnectionError, OSError, ConnectionError) as exc:
                if (untrusted := _untrusted_certificate(exc)) is not None:
                    from tidescale.sources._tls import ca_advice

                    raise BrokerAuthFailed(
                        f"the TLS certificate of {self._where} is not trusted ({untrusted.verify_message}): "
                        f"check {ca_advice(self._credentials)}"
                    ) from exc
                if isinstance(exc, aiormq.exceptions.AMQPConnectionError):
                    raise _amqp_connect_error(self._where, settings.vhost, exc) from exc
                raise BrokerUnreachable(
                    f"cannot reach {self._where} over AMQP ({exc}): check amqp-url, that the broker listens "
                    "there, and network policies"
                ) from exc
            return self._amqp

    def _tls_context(self) -> Any:
        """The TLS context of an amqps:// or https:// URL: the system's CAs or tls-ca-file, and the
        client certificate when given (the waker: the keys of credentials-secret instead); unusable
        material is a BrokerAuthFailed naming the fields or keys to check."""
        from tidescale.sources._tls import client_context, read_key_password

        settings = self._connection
        return client_context(
            where=self._where,
            credentials=self._credentials,
            ca_file=settings.tls_ca_file,
            cert_file=settings.tls_cert_file,
            key_file=settings.tls_key_file,
            key_password=read_key_password(settings.tls_key_password_env, settings.tls_key_password_file),
        )


def _untrusted_certificate(exc: BaseException) -> Any:
    """The certificate verification failure behind ``exc`` (clients wrap it), or None."""
    import ssl

    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        todo.extend(
            x for x in (current.__cause__, current.__context__, *current.args) if isinstance(x, BaseException)
        )
    return None


def _matches(pattern: Any, name: str, settings: RabbitMQSettings) -> bool:
    """Whether queue-pattern matches ``name`` the way queue-match says."""
    if settings.queue_match == "substring":
        return pattern.search(name) is not None
    return pattern.fullmatch(name) is not None


def _amqp_connect_error(where: str, vhost: str, exc: Exception) -> SourceError:
    text = str(exc)
    if "NOT_ALLOWED" in text or "vhost" in text.lower():
        return SourceNotFound(
            f"{where} refused vhost {vhost!r} ({text}): check vhost and the user's permissions on it"
        )
    if "ACCESS_REFUSED" in text or "auth" in text.lower():
        return BrokerAuthFailed(
            f"{where} refused the AMQP login ({text}): check the username and password sources"
        )
    return BrokerUnreachable(f"cannot open an AMQP connection to {where} ({text}): check amqp-url")


def _default_port(scheme: str) -> int:
    return {"http": 80, "https": 443, "amqp": 5672, "amqps": 5671}.get(scheme, 0)


def _netloc_without_user(parts: Any) -> str:
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port}" if parts.port else host


def _env(name: str) -> str:
    value = os.environ.get(name)
    if value is None:
        raise BrokerAuthFailed(
            f"the environment variable {name} (named by a *-env hint) is not set in the agent"
        )
    return value


def _password(settings: RabbitMQSettings) -> str | None:
    if settings.password_file is not None:
        try:
            return Path(settings.password_file).read_text().strip()
        except OSError as exc:
            raise BrokerAuthFailed(
                f"cannot read the password file {settings.password_file}: {exc.strerror}"
            ) from exc
    if settings.password_env is not None:
        return _env(settings.password_env)
    return None
