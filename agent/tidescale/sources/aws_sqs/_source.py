"""SQS queue depth over HTTP: one SigV4-signed GetQueueAttributes (JSON protocol) per measurement.

One :class:`AwsSqsSource` is one httpx client for one SQS endpoint and one set of credential
sources (see the pool in ``registry``); httpx is imported when the first request is made.

Requests: one POST per trigger measured (SQS has no call that reads the attributes of several
queues). A batch (:meth:`AwsSqsSource.measure_many`, the waker's poll) sends them concurrently,
at most :data:`CONCURRENCY` at a time, each within its trigger's timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from tidescale.credentials import Credentials
from tidescale.errors import BrokerAuthFailed, BrokerUnreachable, SourceError, SourceTimeout
from tidescale.sources._secret_read import read_secret
from tidescale.sources.aws_sqs._depth import (
    attribute_names,
    attributes_from_answer,
    error_from_answer,
    sqs_measurement,
)
from tidescale.sources.aws_sqs._settings import AwsSqsSettings
from tidescale.sources.aws_sqs._sigv4 import AwsCredentials, sign
from tidescale.sources.base import Measurement, MeasurementFailure, Scope, TriggerSettings, within_timeout

__all__ = ["CONCURRENCY", "MAX_ANSWER_BYTES", "AwsSqsSource"]

CONCURRENCY = 8
"""Most GetQueueAttributes requests in flight at once from one source (one endpoint)."""
MAX_ANSWER_BYTES = 64 << 10
"""Most bytes read of one answer: a GetQueueAttributes answer is a few hundred bytes."""
_TARGET = "AmazonSQS.GetQueueAttributes"
_CONTENT_TYPE = "application/x-amz-json-1.0"


class AwsSqsSource:
    """An HTTP client for one SQS endpoint; measures any aws-sqs trigger naming it."""

    def __init__(self, settings: AwsSqsSettings, *, credentials: Credentials | None = None) -> None:
        self._connection = settings
        self._credentials = credentials
        """Given (by the waker): the access key from its Secret; no *-env or *-file is read then."""
        self._http: Any = None
        self._gate = asyncio.Semaphore(CONCURRENCY)
        self._closed = False
        self.requests = 0
        """Requests sent so far (tests and benchmarks count them)."""

    @property
    def _where(self) -> str:
        parts = urlsplit(self._connection.endpoint)
        return f"SQS at {parts.netloc}"

    async def measure(self, settings: TriggerSettings, scope: Scope) -> Measurement:
        """The queue's depth; the scope does not matter (SQS has no per-consumer share)."""
        if not isinstance(settings, AwsSqsSettings):
            raise TypeError(f"AwsSqsSource cannot measure {type(settings).__name__}")
        if self._closed:
            raise SourceError("the SQS source is closed", trigger=settings.name)
        attributes = await within_timeout(
            self._attributes(settings),
            trigger=settings.name,
            seconds=settings.timeout,
            waiting_for=f"{self._where} for queue {settings.queue_name!r}",
            advice="check the network path to the endpoint, or raise timeout",
        )
        try:
            return sqs_measurement(attributes, settings, time.monotonic())
        except SourceError as exc:
            raise SourceError(str(exc), trigger=settings.name) from exc

    async def measure_many(
        self, settings: Iterable[TriggerSettings]
    ) -> dict[AwsSqsSettings, Measurement | MeasurementFailure]:
        """Every trigger's measurement (the waker's poll): one request per queue, CONCURRENCY at a
        time. Equal settings are measured once. Never raises a SourceError."""
        batch: list[AwsSqsSettings] = []
        for s in dict.fromkeys(settings):
            if not isinstance(s, AwsSqsSettings):
                raise TypeError(f"AwsSqsSource cannot measure {type(s).__name__}")
            batch.append(s)
        results: dict[AwsSqsSettings, Measurement | MeasurementFailure] = {}

        async def one(s: AwsSqsSettings) -> None:
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

    async def _attributes(self, settings: AwsSqsSettings) -> dict[str, str]:
        import httpx
        import orjson

        body = orjson.dumps(
            {"QueueUrl": settings.queue_url, "AttributeNames": list(attribute_names(settings))}
        )
        endpoint = urlsplit(self._connection.endpoint)
        signed = sign(
            method="POST",
            host=endpoint.netloc,
            path="/",
            headers={"content-type": _CONTENT_TYPE, "x-amz-target": _TARGET},
            body=body,
            credentials=self._access_key(),
            region=self._connection.region,
            service="sqs",
            now=datetime.now(UTC),
        )
        client = self._client()
        async with self._gate:
            self.requests += 1
            try:
                async with client.stream(
                    "POST", "/", content=body, headers={"host": endpoint.netloc, **signed.headers}
                ) as response:
                    answer = await self._read_capped(response)
                    status = response.status_code
            except httpx.TimeoutException as exc:
                raise SourceTimeout(f"{self._where} timed out on GetQueueAttributes") from exc
            except httpx.HTTPError as exc:
                raise BrokerUnreachable(
                    f"cannot reach {self._where} ({exc or type(exc).__name__}): check aws-endpoint (or the "
                    "queue URL's host) and network policies"
                ) from exc
        try:
            decoded: object = orjson.loads(answer) if answer else None
        except orjson.JSONDecodeError:
            decoded = None
        if status >= 400:
            raise error_from_answer(status, decoded, where=self._where, queue=settings.queue_name)
        if decoded is None:
            raise SourceError(f"{self._where} answered GetQueueAttributes with something not JSON")
        return attributes_from_answer(decoded)

    async def _read_capped(self, response: Any) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise SourceError(
                    f"{self._where} answered GetQueueAttributes with more than {MAX_ANSWER_BYTES >> 10} KiB: "
                    "refused"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _client(self) -> Any:
        if self._http is None:
            import httpx

            self._http = httpx.AsyncClient(
                base_url=self._connection.endpoint,
                timeout=self._connection.timeout,
                follow_redirects=False,
            )
        return self._http

    def _access_key(self) -> AwsCredentials:
        """The waker's Secret, else the agent's *-env / *-file sources (read on every request, so a
        rotated Secret or a renewed session token is picked up)."""
        if self._credentials is not None:
            return AwsCredentials(
                self._credentials.require("AWS_ACCESS_KEY_ID"),
                self._credentials.require("AWS_SECRET_ACCESS_KEY"),
                self._credentials.get("AWS_SESSION_TOKEN"),
            )
        s = self._connection
        key_id = read_secret(s.access_key_id_env, s.access_key_id_file)
        secret = read_secret(s.secret_access_key_env, s.secret_access_key_file)
        if key_id is None or secret is None:
            raise BrokerAuthFailed("no access key: set access-key-id-* and secret-access-key-*")
        return AwsCredentials(key_id, secret, read_secret(s.session_token_env, s.session_token_file))
