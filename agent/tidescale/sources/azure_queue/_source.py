"""Azure Storage Queue depth over HTTP: Get Queue Metadata (and Peek Messages for visible-only).

One :class:`AzureQueueSource` is one httpx client for one Queue service endpoint and one set of
credential sources (see the pool in ``registry``); httpx is imported on the first request.

Requests per measurement: ``all``, one GET ``<queue>?comp=metadata``; ``visible-only``, one GET
``<queue>/messages?peekonly=true&numofmessages=32``, plus the metadata GET when 32 came back.
The Queue service reads one queue per request, so a batch (:meth:`AzureQueueSource.measure_many`,
the waker's poll) sends them concurrently, at most :data:`CONCURRENCY` at a time.
Requests are signed with the account key (Shared Key), or carry a SAS token in their query.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tidescale.credentials import Credentials, CredentialsUnusable
from tidescale.errors import BrokerAuthFailed, BrokerUnreachable, SourceError, SourceTimeout
from tidescale.sources._secret_read import read_secret
from tidescale.sources.azure_queue._depth import (
    PEEK_MOST,
    count_from_header,
    count_peeked,
    error_from_answer,
    queue_measurement,
)
from tidescale.sources.azure_queue._settings import SECRET_KEYS, AzureQueueSettings
from tidescale.sources.azure_queue._sharedkey import (
    authorization,
    connection_string_credentials,
    decode_key,
    rfc1123,
    string_to_sign,
)
from tidescale.sources.base import Measurement, MeasurementFailure, Scope, TriggerSettings, within_timeout

__all__ = ["API_VERSION", "CONCURRENCY", "MAX_ANSWER_BYTES", "AzureQueueSource"]

API_VERSION = "2021-12-02"
CONCURRENCY = 8
"""Most requests in flight at once from one source (one endpoint)."""
MAX_ANSWER_BYTES = 4 << 20
"""Most bytes read of one answer: 32 peeked messages of 64 KiB, base64-encoded, fit."""


@dataclass(frozen=True, slots=True)
class _Auth:
    key: bytes | None
    sas: str | None

    def __repr__(self) -> str:
        return "_Auth(***)"


@dataclass(frozen=True, kw_only=True, slots=True)
class _Answer:
    status: int
    code: str | None
    count: str | None
    body: bytes


class AzureQueueSource:
    """An HTTP client for one Queue service endpoint; measures any azure-queue trigger naming it."""

    def __init__(self, settings: AzureQueueSettings, *, credentials: Credentials | None = None) -> None:
        self._connection = settings
        self._credentials = credentials
        """Given (by the waker): the key, SAS or connection string of its Secret; no *-env/*-file then."""
        self._http: Any = None
        self._gate = asyncio.Semaphore(CONCURRENCY)
        self._closed = False
        self.requests = 0
        """Requests sent so far (tests and benchmarks count them)."""

    @property
    def _where(self) -> str:
        parts = urlsplit(self._connection.endpoint)
        return f"Azure Queue service at {parts.netloc}{parts.path}"

    async def measure(self, settings: TriggerSettings, scope: Scope) -> Measurement:
        """The queue's depth; the scope does not matter (a queue has no per-consumer share)."""
        if not isinstance(settings, AzureQueueSettings):
            raise TypeError(f"AzureQueueSource cannot measure {type(settings).__name__}")
        if self._closed:
            raise SourceError("the Azure queue source is closed", trigger=settings.name)
        return await within_timeout(
            self._measure(settings),
            trigger=settings.name,
            seconds=settings.timeout,
            waiting_for=f"{self._where} for queue {settings.queue_name!r}",
            advice="check the network path to the endpoint, or raise timeout",
        )

    async def measure_many(
        self, settings: Iterable[TriggerSettings]
    ) -> dict[AzureQueueSettings, Measurement | MeasurementFailure]:
        """Every trigger's measurement (the waker's poll): one or two requests per queue, CONCURRENCY
        at a time. Equal settings are measured once. Never raises a SourceError."""
        batch: list[AzureQueueSettings] = []
        for s in dict.fromkeys(settings):
            if not isinstance(s, AzureQueueSettings):
                raise TypeError(f"AzureQueueSource cannot measure {type(s).__name__}")
            batch.append(s)
        results: dict[AzureQueueSettings, Measurement | MeasurementFailure] = {}

        async def one(s: AzureQueueSettings) -> None:
            try:
                results[s] = await self.measure(s, Scope.GROUP)
            except SourceError as exc:
                results[s] = MeasurementFailure(trigger=s.name, error=str(exc), taken_at=time.monotonic())

        await asyncio.gather(*(one(s) for s in batch))
        return results

    def forget(self, settings: TriggerSettings) -> None:
        """Nothing is kept per trigger."""

    async def close(self) -> None:
        self._closed = True
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    async def _measure(self, settings: AzureQueueSettings) -> Measurement:
        auth = self._auth()
        queue = settings.queue_name
        peeked: int | None = None
        if settings.strategy == "visible-only":
            answer = await self._get(
                auth, f"/{queue}/messages", [("numofmessages", str(PEEK_MOST)), ("peekonly", "true")]
            )
            self._check(answer, queue)
            peeked = count_peeked(answer.body, queue=queue)
        approximate: int | None = None
        if peeked is None or peeked >= PEEK_MOST:
            answer = await self._get(auth, f"/{queue}", [("comp", "metadata")])
            self._check(answer, queue)
            approximate = count_from_header(answer.count, queue=queue)
        return queue_measurement(settings, peeked=peeked, approximate=approximate, taken_at=time.monotonic())

    def _check(self, answer: _Answer, queue: str) -> None:
        if answer.status >= 400:
            raise error_from_answer(answer.status, answer.code, where=self._where, queue=queue)

    async def _get(self, auth: _Auth, suffix: str, query: list[tuple[str, str]]) -> _Answer:
        import httpx

        endpoint = urlsplit(self._connection.endpoint)
        path = endpoint.path.rstrip("/") + suffix
        headers = {"x-ms-date": rfc1123(datetime.now(UTC)), "x-ms-version": API_VERSION}
        params = list(query)
        if auth.key is not None:
            text = string_to_sign(
                method="GET", account=self._connection.account_name, path=path, query=query, headers=headers
            )
            headers["authorization"] = authorization(self._connection.account_name, auth.key, text)
        elif auth.sas is not None:
            params += parse_qsl(auth.sas, keep_blank_values=True)
        client = self._client()
        async with self._gate:
            self.requests += 1
            try:
                async with client.stream("GET", path, params=params, headers=headers) as response:
                    body = await self._read_capped(response)
                    return _Answer(
                        status=response.status_code,
                        code=response.headers.get("x-ms-error-code"),
                        count=response.headers.get("x-ms-approximate-messages-count"),
                        body=body,
                    )
            except httpx.TimeoutException as exc:
                raise SourceTimeout(f"{self._where} timed out") from exc
            except httpx.HTTPError as exc:
                # The exception's text may carry the URL, and with it a SAS token: only its kind.
                raise BrokerUnreachable(
                    f"cannot reach {self._where} ({type(exc).__name__}): check endpoint (or account-name and "
                    "cloud) and network policies"
                ) from None

    async def _read_capped(self, response: Any) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise SourceError(
                    f"{self._where} answered with more than {MAX_ANSWER_BYTES >> 20} MiB: refused"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _client(self) -> Any:
        if self._http is None:
            import httpx

            parts = urlsplit(self._connection.endpoint)
            self._http = httpx.AsyncClient(
                base_url=f"{parts.scheme}://{parts.netloc}",
                timeout=self._connection.timeout,
                follow_redirects=False,
            )
        return self._http

    def _auth(self) -> _Auth:
        """The waker's Secret, else the agent's *-env / *-file source (read on every request, so a
        rotated key or a renewed SAS token is used at the next poll)."""
        s = self._connection
        if self._credentials is not None:
            return self._secret_auth(self._credentials)
        connection = read_secret(s.connection_string_env, s.connection_string_file)
        if connection is not None:
            where = s.connection_string_env or s.connection_string_file or ""
            key, sas = connection_string_credentials(
                connection, account=s.account_name, endpoint=s.endpoint, where=where
            )
            return _Auth(key, sas)
        key_text = read_secret(s.account_key_env, s.account_key_file)
        if key_text is not None:
            return _Auth(decode_key(key_text, where=s.account_key_env or s.account_key_file or ""), None)
        sas = read_secret(s.sas_token_env, s.sas_token_file)
        if sas is not None:
            return _Auth(None, sas.lstrip("?"))
        raise BrokerAuthFailed("no credential source: set connection-string-*, account-key-* or sas-token-*")

    def _secret_auth(self, credentials: Credentials) -> _Auth:
        s = self._connection
        where = str(credentials)
        connection = credentials.get("AZURE_STORAGE_CONNECTION_STRING")
        if connection is not None:
            key, sas = connection_string_credentials(
                connection, account=s.account_name, endpoint=s.endpoint, where=where
            )
            return _Auth(key, sas)
        key_text = credentials.get("AZURE_STORAGE_KEY")
        if key_text is not None:
            return _Auth(decode_key(key_text, where=where), None)
        sas = credentials.get("AZURE_STORAGE_SAS_TOKEN")
        if sas is not None:
            return _Auth(None, sas.strip().lstrip("?"))
        raise CredentialsUnusable(f"{where} has none of the keys {', '.join(SECRET_KEYS)}")
