"""A small asyncio HTTP/1.1 server for the agent's and the injector's few endpoints.

Standard library only, so the agent (one per pod) pays for no web framework. It
serves exact-path routes, keeps connections alive (the API server and the leader
reuse theirs), and bounds everything a client controls: header size and count,
body size, how long a request may take to arrive, how long a connection may sit
idle, and how many connections are open. Garbage gets a 4xx and a closed
connection; a handler that raises gets a 500; the server itself never stops
because of what a client sent.

TLS is optional and chosen at construction. Every handshake switches to whatever
:attr:`HttpServer.ssl_context` holds at that moment (from the listener's SNI callback,
which OpenSSL calls with or without SNI), so a caller reloading its certificate assigns
a new context and every new connection uses it, without a restart, without a moment
of not listening, and without touching open connections. (Upgrading plain streams
with ``start_tls`` instead races the client's hello into the stream buffer under uvloop.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus

__all__ = ["Handler", "HttpServer", "Limits", "Request", "Response"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    """What one client may cost the server. Defaults suit the agent; the injector raises the body size."""

    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    max_body_bytes: int = 1024 * 1024
    # From the first byte of a request to its last: a slow sender cannot hold a slot forever.
    request_timeout: float = 10.0
    # Longer than Go's 90 s idle-connection timeout, so the API server closes first and
    # never sends a request on a connection we are closing at the same moment.
    keepalive_timeout: float = 120.0
    handshake_timeout: float = 10.0
    write_timeout: float = 10.0
    max_connections: int = 512
    max_requests_per_connection: int = 10_000


@dataclass(frozen=True, kw_only=True, slots=True)
class Request:
    """One parsed request. Header names are lower case; ``query`` is the raw text after ``?``."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class Response:
    """What a handler returns."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Awaitable[Response]]


class _Reject(Exception):
    """Internal: the request cannot be served; answer ``status`` and close. Never leaves this module."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class HttpServer:
    """Serves ``routes`` (path -> {method -> handler}) on ``host``:``port`` (0 picks a free port)."""

    def __init__(
        self,
        routes: Mapping[str, Mapping[str, Handler]],
        *,
        host: str = "0.0.0.0",  # noqa: S104 - a pod's server listens on the pod's address
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        limits: Limits | None = None,
    ) -> None:
        self._routes = {path: dict(methods) for path, methods in routes.items()}
        self._host = host
        self._port = port
        self.ssl_context = ssl_context
        self.limits = limits or Limits()
        self._server: asyncio.Server | None = None
        self.connections_accepted = 0
        self._connections: set[asyncio.Task[None]] = set()
        self._busy: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The port actually bound (useful after ``port=0``)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        listener_context = None
        if self.ssl_context is not None:
            listener_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            listener_context.minimum_version = ssl.TLSVersion.TLSv1_2
            listener_context.sni_callback = self._switch_context
        # The stream limit doubles as the header limit: readuntil() refuses to buffer past it.
        self._server = await asyncio.start_server(
            self._accept,
            self._host,
            self._port,
            limit=self.limits.max_header_bytes,
            reuse_address=True,
            ssl=listener_context,
            ssl_handshake_timeout=self.limits.handshake_timeout if listener_context else None,
        )

    def _switch_context(self, connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        if self.ssl_context is not None:
            connection.context = self.ssl_context

    async def stop(self, grace: float = 5.0) -> None:
        """Stop listening, close idle connections, give requests in flight ``grace`` seconds."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections - self._busy):
            task.cancel()
        if self._busy:
            await asyncio.wait(list(self._busy), timeout=grace)
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=1.0)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= self.limits.max_connections:
            writer.transport.abort()
            return
        self._connections.add(task)
        self.connections_accepted += 1
        try:
            await self._serve_connection(reader, writer, task)
        except asyncio.CancelledError:
            pass
        except (ConnectionError, TimeoutError, ssl.SSLError, OSError) as exc:
            _log.debug("connection ended: %r", exc)
        except Exception:
            _log.exception("http connection failed")
        finally:
            self._connections.discard(task)
            self._busy.discard(task)
            writer.close()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, task: asyncio.Task[None]
    ) -> None:
        limits = self.limits
        for served in range(limits.max_requests_per_connection):
            # An idle connection waits for the first byte of its next request under the
            # keep-alive timeout; from that byte on, the whole request is under request_timeout.
            try:
                async with asyncio.timeout(limits.keepalive_timeout if served else limits.request_timeout):
                    first = await reader.read(1)
            except TimeoutError:
                return
            if not first:
                return
            self._busy.add(task)
            try:
                last = served + 1 >= limits.max_requests_per_connection
                keep = await self._serve_one(first, reader, writer, last=last)
            finally:
                self._busy.discard(task)
            if not keep:
                return

    async def _serve_one(
        self, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, last: bool
    ) -> bool:
        limits = self.limits
        try:
            async with asyncio.timeout(limits.request_timeout):
                request, keep_alive = await self._read_request(first, reader)
        except _Reject as reject:
            await self._write(
                writer, Response(status=reject.status, body=reject.message.encode()), False, False
            )
            return False
        except TimeoutError:
            await self._write(writer, Response(status=408, body=b"request took too long"), False, False)
            return False
        except asyncio.IncompleteReadError:
            return False
        response = await self._dispatch(request)
        keep_alive = keep_alive and not last
        await self._write(writer, response, keep_alive, request.method == "HEAD")
        return keep_alive

    async def _read_request(self, first: bytes, reader: asyncio.StreamReader) -> tuple[Request, bool]:
        try:
            head = first + await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as exc:
            raise _Reject(431, "request header too large") from exc
        if len(head) > self.limits.max_header_bytes:
            raise _Reject(431, "request header too large")
        text = head.decode("latin-1")  # every byte decodes; odd bytes fail the checks below
        lines = text[:-4].split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[0].isalpha() or not parts[1].startswith("/"):
            raise _Reject(400, "malformed request line")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise _Reject(505, "only HTTP/1.0 and HTTP/1.1 are served")
        if len(lines) - 1 > self.limits.max_headers:
            raise _Reject(431, "too many request headers")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _Reject(400, "malformed header line")
            key = name.lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        if "transfer-encoding" in headers:
            raise _Reject(411, "send a Content-Length; chunked bodies are not accepted")
        body = b""
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit() or len(length_text) > 12:
            raise _Reject(400, "malformed Content-Length")
        length = int(length_text)
        if length > self.limits.max_body_bytes:
            raise _Reject(413, f"body of {length} bytes exceeds the limit of {self.limits.max_body_bytes}")
        if length:
            body = await reader.readexactly(length)
        path, _, query = target.partition("?")
        connection = headers.get("connection", "").lower()
        keep_alive = version == "HTTP/1.1" and "close" not in connection
        return Request(method=method.upper(), path=path, query=query, headers=headers, body=body), keep_alive

    async def _dispatch(self, request: Request) -> Response:
        methods = self._routes.get(request.path)
        if methods is None:
            return Response(status=404, body=b"not found")
        handler = methods.get(request.method)
        if handler is None and request.method == "HEAD":
            handler = methods.get("GET")
        if handler is None:
            allow = ", ".join(sorted(methods))
            return Response(status=405, body=b"method not allowed", headers={"Allow": allow})
        try:
            return await handler(request)
        except Exception:
            _log.exception("handler for %s %s failed", request.method, request.path)
            return Response(status=500, body=b"internal error")

    async def _write(
        self, writer: asyncio.StreamWriter, response: Response, keep_alive: bool, head: bool
    ) -> None:
        try:
            reason = HTTPStatus(response.status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [
            f"HTTP/1.1 {response.status} {reason}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
        ]
        lines.extend(f"{name}: {value}" for name, value in response.headers.items())
        if not keep_alive:
            lines.append("Connection: close")
        # One write, so a small response leaves in one TLS record and one segment.
        header = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        writer.write(header if head else header + response.body)
        async with asyncio.timeout(self.limits.write_timeout):
            await writer.drain()
