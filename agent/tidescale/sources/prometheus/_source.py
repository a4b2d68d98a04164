"""Prometheus instant queries over HTTP (httpx, imported the first time a client opens).

One :class:`PrometheusSource` is one HTTP client to one server with one identity (see the pool in
``registry``). A measurement is one ``GET <server-address>/api/v1/query``; the answer is read with a
size cap (:data:`MAX_RESPONSE_BYTES`). Prometheus has no endpoint answering several queries, so a
batch (:meth:`PrometheusSource.measure_many`, the waker's poll) sends one request per distinct
question (query, namespace, parameters, headers), at most :data:`BATCH_CONCURRENCY` at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from tidescale.credentials import Credentials
from tidescale.errors import BrokerAuthFailed, SourceError, SourceNotFound, SourceTimeout
from tidescale.sources._http import plain_http_context, read_capped, tls_context, transport_error
from tidescale.sources._secret_read import read_secret
from tidescale.sources.base import Measurement, MeasurementFailure, Scope, TriggerSettings, within_timeout
from tidescale.sources.prometheus._result import QueryValue, prometheus_measurement, query_value
from tidescale.sources.prometheus._settings import PrometheusSettings

__all__ = ["BATCH_CONCURRENCY", "MAX_RESPONSE_BYTES", "PrometheusSource"]

MAX_RESPONSE_BYTES = 1 << 20
"""Most bytes read of one query answer: a one-series answer is well under 1 KiB; a query giving
thousands of series is refused (it would be refused for its series count anyway)."""
BATCH_CONCURRENCY = 4
"""Most queries in flight to one server during a batch: a thousand parked Deployments must not
be a thousand concurrent queries on a tenant's Prometheus."""
_QUERY_PATH = "/api/v1/query"


class PrometheusSource:
    """An HTTP client to one Prometheus server; measures any trigger naming it."""

    def __init__(self, settings: PrometheusSettings, *, credentials: Credentials | None = None) -> None:
        self._connection = settings
        self._credentials = credentials
        """Given (by the waker): the token or username and password; no *-env or *-file is read then."""
        self._http: Any = None
        self._open_lock = asyncio.Lock()
        self._closed = False
        self.requests = 0
        """Queries sent so far (tests and the bench count them)."""

    @property
    def _where(self) -> str:
        parts = urlsplit(self._connection.server_address)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"Prometheus at {parts.hostname}:{port}"

    async def measure(self, settings: TriggerSettings, scope: Scope) -> Measurement:
        """Scope makes no difference: a query's value is the same for every pod."""
        s = self._own(settings)
        if self._closed:
            raise SourceError("the Prometheus source is closed", trigger=s.name)
        found = await within_timeout(
            self._query(s),
            trigger=s.name,
            seconds=s.timeout,
            waiting_for=f"{self._where} for query {s.shown_query}",
            advice="check the server's load and the query's cost, or raise timeout",
        )
        return prometheus_measurement(found, s, time.monotonic())

    async def measure_many(
        self, settings: Iterable[TriggerSettings]
    ) -> dict[PrometheusSettings, Measurement | MeasurementFailure]:
        """Measurements of many triggers of this server (the waker's poll). Triggers asking the same
        question share one request; the distinct questions go at most BATCH_CONCURRENCY at a time.
        Never raises a SourceError."""
        by_request: dict[tuple[object, ...], list[PrometheusSettings]] = {}
        for s in dict.fromkeys(settings):
            by_request.setdefault(self._own(s).request_key, []).append(self._own(s))
        gate = asyncio.Semaphore(BATCH_CONCURRENCY)
        results: dict[PrometheusSettings, Measurement | MeasurementFailure] = {}

        async def one(members: list[PrometheusSettings]) -> None:
            first = members[0]
            answer: Any = None
            failure: SourceError | None = None
            async with gate:
                limit = max(s.timeout for s in members)
                try:
                    async with asyncio.timeout(limit):
                        answer = await self._ask(first)
                except TimeoutError:
                    failure = SourceTimeout(
                        f"{self._where} did not answer the query {first.shown_query} within {limit:g}s: "
                        "check the server's load and the query's cost, or raise timeout"
                    )
                except SourceError as exc:
                    failure = exc
            taken_at = time.monotonic()
            for s in members:
                # Settings differing only in threshold or null handling read the same answer.
                if failure is not None:
                    results[s] = MeasurementFailure(trigger=s.name, error=str(failure), taken_at=taken_at)
                    continue
                try:
                    found = query_value(answer, s, where=self._where)
                    results[s] = prometheus_measurement(found, s, taken_at)
                except SourceError as exc:
                    results[s] = MeasurementFailure(trigger=s.name, error=str(exc), taken_at=taken_at)

        await asyncio.gather(*(one(members) for members in by_request.values()))
        return results

    def forget(self, settings: TriggerSettings) -> None:
        """Nothing is kept per trigger."""

    async def close(self) -> None:
        self._closed = True
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    # -- I/O --------------------------------------------------------------------------------------

    def _own(self, settings: TriggerSettings) -> PrometheusSettings:
        if not isinstance(settings, PrometheusSettings):
            raise TypeError(f"PrometheusSource cannot measure {type(settings).__name__}")
        return settings

    async def _query(self, settings: PrometheusSettings) -> QueryValue:
        return query_value(await self._ask(settings), settings, where=self._where)

    async def _ask(self, settings: PrometheusSettings) -> Any:
        """The parsed answer to the query; every failure a SourceError (the one place client
        exceptions are translated, so none escapes ``measure``)."""
        try:
            return await self._get(settings)
        except (SourceError, asyncio.CancelledError, TimeoutError):
            raise
        except Exception as exc:
            raise SourceError(f"{self._where} gave an unusable answer ({type(exc).__name__})") from exc

    async def _get(self, settings: PrometheusSettings) -> Any:
        import httpx

        client = await self._http_client()
        params: list[tuple[str, str]] = [("query", settings.query)]
        if settings.namespace is not None:
            params.append(("namespace", settings.namespace))
        params.extend(settings.query_parameters)
        self.requests += 1
        try:
            async with client.stream(
                "GET", _QUERY_PATH, params=params, headers=dict(settings.custom_headers)
            ) as response:
                status = response.status_code
                if status in (401, 403):
                    raise BrokerAuthFailed(
                        f"{self._where} refused the request (HTTP {status}, auth-mode "
                        f"{self._connection.auth_mode}): check auth-mode, the token or username/password "
                        "sources, and credentials-secret for the waker"
                    )
                if status == 404:
                    raise SourceNotFound(
                        f"{self._where} has no {urlsplit(str(response.url)).path} (HTTP 404): check "
                        "server-address (the base URL the API's /api/v1 hangs below)"
                    )
                body = await read_capped(
                    response,
                    where=self._where,
                    limit=MAX_RESPONSE_BYTES,
                    advice="a query giving one number answers in well under 1 KiB: aggregate the query",
                )
        except httpx.TimeoutException as exc:
            raise SourceTimeout(f"{self._where} timed out on the query {settings.shown_query}") from exc
        except httpx.HTTPError as exc:
            raise transport_error(
                self._where, exc, check="server-address", credentials=self._credentials
            ) from exc
        import orjson

        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise SourceError(
                f"{self._where} answered HTTP {status} with something not JSON: check server-address "
                "(is it a Prometheus HTTP API?)"
            ) from exc
        if status >= 400 and (not isinstance(answer, dict) or answer.get("status") != "error"):
            raise SourceError(f"{self._where} answered HTTP {status} to the query {settings.shown_query}")
        return answer

    async def _http_client(self) -> Any:
        async with self._open_lock:
            if self._closed:
                raise SourceError("the Prometheus source is closed")
            if self._http is None:
                import httpx

                settings = self._connection
                headers = {"accept": "application/json"}
                auth: Any = None
                if settings.auth_mode == "bearer":
                    headers["authorization"] = f"Bearer {self._token()}"
                elif settings.auth_mode == "basic":
                    username, password = self._login()
                    auth = httpx.BasicAuth(username, password)
                verify: Any = plain_http_context()
                if settings.server_address.lower().startswith("https://"):
                    verify = self._tls_context()
                self._http = httpx.AsyncClient(
                    base_url=settings.server_address.rstrip("/"),
                    auth=auth,
                    headers=headers,
                    timeout=settings.timeout,
                    verify=verify,
                    follow_redirects=False,  # a redirect would lead past the waker's address check
                    trust_env=False,  # no proxy from the environment: the address is the hint's
                )
            return self._http

    def _token(self) -> str:
        if self._credentials is not None:
            return self._credentials.require("token").strip()
        settings = self._connection
        return _required(read_secret(settings.bearer_token_env, settings.bearer_token_file), "bearer token")

    def _login(self) -> tuple[str, str]:
        if self._credentials is not None:
            return self._credentials.username, self._credentials.password
        settings = self._connection
        username = _required(read_secret(settings.username_env, None), "username")
        return username, _required(read_secret(settings.password_env, settings.password_file), "password")

    def _tls_context(self) -> Any:
        return tls_context(
            where=self._where, ca_file=self._connection.tls_ca_file, credentials=self._credentials
        )


def _required(value: str | None, what: str) -> str:
    if value is None:  # the settings parser requires one source for each: only a bug gets here
        raise BrokerAuthFailed(f"no {what} is named by the trigger's hints")
    return value
