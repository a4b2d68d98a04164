"""NATS JetStream consumer backlogs from the server's monitoring endpoint (httpx, imported the first
time a client opens), as KEDA reads them.

One :class:`NatsJetStreamSource` is one HTTP client to the monitoring endpoints of one server or
cluster (see the pool in ``registry``). A measurement is one ``GET /jsz?acc=<account>&consumers=true``
per listed server: the account's streams and their consumers in one answer, read with a size cap
(:data:`MAX_RESPONSE_BYTES`). A batch (:meth:`NatsJetStreamSource.measure_many`, the waker's poll)
reads ``/jsz`` once per account per listed server for every trigger, whatever their number.

A cluster: only the server leading a consumer keeps its pending count (a follower reports 0
for a replicated consumer), so monitoring-endpoint lists every server, each is read, and the
leader's answer is used (``_backlog.leader_backlog``); a follower's is never used. KEDA finds the
servers through ``/varz`` instead; here the addresses are the hints', so the waker checks them all
and learns none from the server (docs/keda-mapping.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from tidescale.credentials import Credentials
from tidescale.errors import SourceError, SourceTimeout
from tidescale.sources._http import plain_http_context, quoted, read_capped, tls_context, transport_error
from tidescale.sources.base import Measurement, MeasurementFailure, Scope, TriggerSettings
from tidescale.sources.nats_jetstream._backlog import leader_backlog, nats_jetstream_measurement
from tidescale.sources.nats_jetstream._settings import NatsJetStreamSettings

__all__ = ["BATCH_CONCURRENCY", "MAX_RESPONSE_BYTES", "NatsJetStreamSource"]

MAX_RESPONSE_BYTES = 8 << 20
"""Most bytes read of one /jsz answer: about 13,000 consumers of one account (~600 bytes each)."""
BATCH_CONCURRENCY = 4
"""Most /jsz reads in flight to one server during a batch (one per account)."""


class NatsJetStreamSource:
    """An HTTP client to one NATS monitoring endpoint; measures any trigger naming it."""

    def __init__(self, settings: NatsJetStreamSettings, *, credentials: Credentials | None = None) -> None:
        self._connection = settings
        self._credentials = credentials
        """Given (by the waker): its Secret's ca.crt replaces tls-ca-file."""
        self._http: Any = None
        self._open_lock = asyncio.Lock()
        self._closed = False
        self.requests = 0
        """/jsz reads sent so far (tests and the bench count them)."""

    @property
    def _where(self) -> str:
        return (
            "the NATS monitoring endpoint"
            + ("s " if len(self._connection.urls) > 1 else " ")
            + ", ".join(self._connection.urls)
        )

    async def measure(self, settings: TriggerSettings, scope: Scope) -> Measurement:
        """Scope makes no difference: a consumer's backlog is the same for every pod."""
        s = _own(settings)
        if self._closed:
            raise SourceError("the NATS JetStream source is closed", trigger=s.name)
        answers = await self._answers(s.account, s.timeout)
        try:
            backlog = leader_backlog(answers, s)
        except SourceError as exc:
            raise type(exc)(str(exc), trigger=s.name) from exc
        return nats_jetstream_measurement(backlog, s, time.monotonic())

    async def measure_many(
        self, settings: Iterable[TriggerSettings]
    ) -> dict[NatsJetStreamSettings, Measurement | MeasurementFailure]:
        """Measurements of many triggers of this server (the waker's poll): one /jsz per account per
        listed server, at most BATCH_CONCURRENCY accounts at a time. Never raises a SourceError."""
        by_account: dict[str, list[NatsJetStreamSettings]] = {}
        for s in dict.fromkeys(settings):
            by_account.setdefault(_own(s).account, []).append(_own(s))
        gate = asyncio.Semaphore(BATCH_CONCURRENCY)
        results: dict[NatsJetStreamSettings, Measurement | MeasurementFailure] = {}

        async def one(account: str, members: list[NatsJetStreamSettings]) -> None:
            async with gate:
                answers = await self._answers(account, max(s.timeout for s in members))
            taken_at = time.monotonic()
            for s in members:
                try:
                    results[s] = nats_jetstream_measurement(leader_backlog(answers, s), s, taken_at)
                except SourceError as exc:
                    results[s] = MeasurementFailure(trigger=s.name, error=str(exc), taken_at=taken_at)

        await asyncio.gather(*(one(account, members) for account, members in by_account.items()))
        return results

    async def _answers(self, account: str, limit: float) -> list[tuple[str, Any]]:
        """(where, the /jsz answer or the SourceError) of every listed server, read concurrently,
        each within ``limit`` seconds."""

        async def one(url: str) -> tuple[str, Any]:
            where = f"the NATS monitoring endpoint {url}"
            try:
                async with asyncio.timeout(limit):
                    return where, await self._jsz(url, account)
            except TimeoutError:
                return where, SourceTimeout(
                    f"{where} did not answer /jsz for account {account!r} within {limit:g}s: check the "
                    "server's load, or raise timeout"
                )
            except SourceError as exc:
                return where, exc

        return list(await asyncio.gather(*(one(url) for url in self._connection.urls)))

    def forget(self, settings: TriggerSettings) -> None:
        """Nothing is kept per trigger."""

    async def close(self) -> None:
        self._closed = True
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    async def _jsz(self, url: str, account: str) -> Any:
        """The parsed /jsz answer of one server for one account; every failure a SourceError (the one
        place client exceptions are translated, so none escapes ``measure``)."""
        try:
            return await self._get_jsz(url, account)
        except (SourceError, asyncio.CancelledError, TimeoutError):
            raise
        except Exception as exc:
            raise SourceError(
                f"the NATS monitoring endpoint {url} gave an unusable answer ({type(exc).__name__})"
            ) from exc

    async def _get_jsz(self, url: str, account: str) -> Any:
        import httpx

        client = await self._http_client()
        where = f"the NATS monitoring endpoint {url}"
        self.requests += 1
        try:
            async with client.stream(
                "GET", f"{url}/jsz", params={"acc": account, "consumers": "true"}
            ) as response:
                status = response.status_code
                body = await read_capped(
                    response,
                    where=where,
                    limit=MAX_RESPONSE_BYTES,
                    advice="an account with more consumers than that is not supported",
                )
        except httpx.TimeoutException as exc:
            raise SourceTimeout(f"{where} timed out on /jsz") from exc
        except httpx.HTTPError as exc:
            raise transport_error(
                where, exc, check="monitoring-endpoint and use-https", credentials=self._credentials
            ) from exc
        if status != 200:
            text = quoted(body[:300].decode("utf-8", "replace"))
            raise SourceError(
                f"{where} answered /jsz with HTTP {status} ({text or 'no reason given'}): check "
                "monitoring-endpoint (the server's http_port) and that JetStream is enabled"
            )
        import orjson

        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise SourceError(
                f"{where} answered /jsz with something not JSON: check monitoring-endpoint (the "
                "server's http_port, not its client port)"
            ) from exc

    async def _http_client(self) -> Any:
        async with self._open_lock:
            if self._closed:
                raise SourceError("the NATS JetStream source is closed")
            if self._http is None:
                import httpx

                settings = self._connection
                verify: Any = plain_http_context()
                if settings.use_https:
                    verify = self._tls_context()
                self._http = httpx.AsyncClient(
                    headers={"accept": "application/json"},
                    timeout=settings.timeout,
                    verify=verify,
                    follow_redirects=False,  # a redirect would lead past the waker's address check
                    trust_env=False,  # no proxy from the environment: the address is the hint's
                )
            return self._http

    def _tls_context(self) -> Any:
        return tls_context(
            where=self._where, ca_file=self._connection.tls_ca_file, credentials=self._credentials
        )


def _own(settings: TriggerSettings) -> NatsJetStreamSettings:
    if not isinstance(settings, NatsJetStreamSettings):
        raise TypeError(f"NatsJetStreamSource cannot measure {type(settings).__name__}")
    return settings
