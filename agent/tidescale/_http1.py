"""A small HTTP/1.1 client on asyncio streams: what the API client needs, nothing more.

The agent runs in every pod, and httpx in use (httpx, httpcore, h11, anyio and the standard
modules they pull in: email, http.cookiejar, urllib.request, mimetypes, ...) costs ~8 MiB of RSS
per process (bench/results/agent.md). The API client makes a handful of JSON calls and a few
long-lived watches over one TLS connection pool; this module does exactly that:

* one request at a time per connection, idle connections kept for reuse (keep-alive), a stale
  one (closed by the server while idle) retried once on a fresh connection;
* bodies by ``Content-Length``, ``Transfer-Encoding: chunked`` or up to the close;
* status line and headers bounded (:data:`HEADER_LIMIT`); bodies are the caller's to bound.

Failures are :class:`HttpError` (transport or protocol) and ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode, urlsplit

__all__ = ["HEADER_LIMIT", "BodyTooLarge", "HttpClient", "HttpError", "Response", "StreamedResponse"]

HEADER_LIMIT = 64 * 1024
"""Most bytes of a status line plus headers."""
_READ_SIZE = 64 * 1024
_IDLE_KEPT = 4


class HttpError(Exception):
    """The connection failed or the server broke HTTP/1.1."""


class BodyTooLarge(HttpError):
    """A response body passed the caller's ``limit``."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]
    """Header names in lower case."""
    content: bytes


@dataclass(slots=True, eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    reused: bool = False

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


@dataclass(slots=True, eq=False)
class StreamedResponse:
    """A response whose body is read as it arrives (a watch)."""

    status: int
    headers: Mapping[str, str]
    _body: AsyncIterator[bytes] = field(repr=False)

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self._body])

    async def lines(self) -> AsyncGenerator[bytes, None]:
        """The body split at newlines (the last line also without one); a line may be any length."""
        pending = b""
        async for chunk in self._body:
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield line
        if pending:
            yield pending


class HttpClient:
    """Requests to one origin (``http://`` or ``https://``), over a small pool of connections."""

    def __init__(
        self,
        base_url: str,
        *,
        ssl_context: ssl.SSLContext | None,
        headers: Mapping[str, str],
        max_requests: int = 16,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{base_url!r} is not an http(s) URL")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        self._prefix = parts.path.rstrip("/")
        authority = f"[{self._host}]" if ":" in self._host else self._host
        host_header = authority if parts.port is None else f"{authority}:{self._port}"
        self._headers = {"Host": host_header, **headers}
        self._idle: list[_Connection] = []
        self._closed = False
        # Requests in flight at once, each on its own connection (streams are not counted). Each TLS
        # connection costs ~0.3 MiB to set up, and the memory a burst of them took is not returned
        # to the system: an agent's start (a dozen access reviews at once) would keep it for good.
        self._slots = asyncio.Semaphore(max_requests)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        limit: int | None = None,
    ) -> Response:
        """One request and its whole response, refused (:class:`BodyTooLarge`) past ``limit`` bytes of
        body. The caller bounds the time (asyncio.timeout), waiting for a free slot included."""
        async with self._slots:
            return await self._request(method, path, params=params, body=body, headers=headers, limit=limit)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None,
        body: bytes | None,
        headers: Mapping[str, str] | None,
        limit: int | None,
    ) -> Response:
        for attempt in range(2):
            connection = await self._connection(fresh=attempt > 0)
            try:
                status, answer = await self._send(connection, method, path, params, body, headers)
            except (OSError, HttpError, asyncio.IncompleteReadError) as error:
                connection.close()
                # A kept-alive connection the server closed while idle fails before any answer:
                # once more on a new one. A fresh connection's failure is the answer.
                if connection.reused and attempt == 0:
                    continue
                raise _http_error(error) from error
            except BaseException:
                connection.close()
                raise
            try:
                content = await _gather(_body(connection, status, answer, method), limit)
            except (OSError, HttpError, asyncio.IncompleteReadError) as error:
                connection.close()
                raise _http_error(error) from error
            except BaseException:
                connection.close()
                raise
            self._release(connection, answer)
            return Response(status=status, headers=answer, content=content)
        raise AssertionError("unreachable")  # pragma: no cover

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[StreamedResponse]:
        """A request whose response body is read as it arrives; the connection is closed afterwards
        (a watch ends when the server ends it, or when its reader stops)."""
        connection = await self._connection(fresh=True)
        try:
            try:
                status, answer = await self._send(connection, method, path, params, None, headers)
            except (OSError, HttpError, asyncio.IncompleteReadError) as error:
                raise _http_error(error) from error
            body = _guarded(_body(connection, status, answer, method))
            yield StreamedResponse(status=status, headers=answer, _body=body)
        finally:
            connection.close()

    async def _connection(self, *, fresh: bool) -> _Connection:
        if self._closed:
            raise HttpError("the client is closed")
        while self._idle and not fresh:
            connection = self._idle.pop()
            if connection.usable():
                connection.reused = True
                return connection
            connection.close()
        try:
            reader, writer = await asyncio.open_connection(
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=self._host if self._ssl is not None else None,
                limit=HEADER_LIMIT,
            )
        except (OSError, ssl.SSLError) as error:
            raise _http_error(error) from error
        return _Connection(reader, writer)

    def _release(self, connection: _Connection, headers: Mapping[str, str]) -> None:
        keep = "close" not in headers.get("connection", "").lower() and connection.usable()
        if keep and not self._closed and len(self._idle) < _IDLE_KEPT:
            connection.reused = False
            self._idle.append(connection)
        else:
            connection.close()

    async def _send(
        self,
        connection: _Connection,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        body: bytes | None,
        headers: Mapping[str, str] | None,
    ) -> tuple[int, dict[str, str]]:
        target = self._prefix + path + (f"?{urlencode(params, quote_via=quote)}" if params else "")
        lines = [f"{method} {target} HTTP/1.1"]
        for name, value in {**self._headers, **(headers or {})}.items():
            if "\r" in value or "\n" in value:
                raise HttpError(f"header {name} holds a line break")
            lines.append(f"{name}: {value}")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}")
        connection.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        await connection.writer.drain()
        return await _read_head(connection.reader)


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The status and the headers (names in lower case) of one response; skips 1xx answers."""
    while True:
        used = 0
        try:
            status_line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as error:
            raise HttpError("the status line is too long") from error
        used += len(status_line)
        if not status_line.strip():
            raise HttpError("the server closed the connection without an answer")
        parts = status_line.decode("latin-1").split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HttpError(f"not an HTTP/1.1 status line: {status_line[:80]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as error:
                raise HttpError("a response header is too long") from error
            used += len(line)
            if used > HEADER_LIMIT:
                raise HttpError(f"the response headers pass {HEADER_LIMIT} bytes")
            if line in (b"\r\n", b"\n"):
                break
            name, colon, value = line.decode("latin-1").partition(":")
            if not colon:
                raise HttpError(f"not a header line: {line[:80]!r}")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        if not 100 <= status < 200:
            return status, headers


async def _body(
    connection: _Connection, status: int, headers: Mapping[str, str], method: str
) -> AsyncIterator[bytes]:
    reader = connection.reader
    if method == "HEAD" or status in (204, 304):
        return
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readuntil(b"\n")
            size_text = size_line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError as error:
                raise HttpError(f"not a chunk size: {size_line[:40]!r}") from error
            if size == 0:
                while (await reader.readuntil(b"\n")) not in (b"\r\n", b"\n"):
                    pass  # trailers
                return
            while size > 0:
                chunk = await reader.read(min(size, _READ_SIZE))
                if not chunk:
                    raise HttpError("the connection closed inside a chunk")
                size -= len(chunk)
                yield chunk
            await reader.readexactly(2)
    elif "content-length" in headers:
        text = headers["content-length"]
        if not text.isdigit():
            raise HttpError(f"not a Content-Length: {text[:40]!r}")
        left = int(text)
        while left > 0:
            chunk = await reader.read(min(left, _READ_SIZE))
            if not chunk:
                raise HttpError("the connection closed inside the body")
            left -= len(chunk)
            yield chunk
    else:  # up to the close: the connection is not reused (it is at its end)
        while chunk := await reader.read(_READ_SIZE):
            yield chunk


async def _gather(body: AsyncIterator[bytes], limit: int | None) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in body:
        size += len(chunk)
        if limit is not None and size > limit:
            raise BodyTooLarge(f"the response body passes {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _guarded(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for chunk in body:
            yield chunk
    except (OSError, HttpError, asyncio.IncompleteReadError) as error:
        raise _http_error(error) from error


def _http_error(error: BaseException) -> HttpError:
    if isinstance(error, HttpError):
        return error
    if isinstance(error, asyncio.IncompleteReadError):
        return HttpError("the connection closed in the middle of an answer")
    return HttpError(f"{type(error).__name__}: {error}")
