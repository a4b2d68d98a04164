"""A small asyncio HTTP/1.1 server for the agent's and the injector's few endpoints.

Standard library only, so the agent (one per pod) pays for no web framework. It
serves exact-path routes, keeps connections alive (the API server and the leader
reuse theirs), and bounds everything a client controls: header size and count,
body size, how long a request may take to arrive, how long a connection may sit
idle, and how many connections are open. Garbage gets a 4xx and a closed
connection; a handler that raises gets a 500; the server itself never stops
because of what a client sent.

What one hostile client on the network can do is bounded too (issue 11):

* A request carries a body only to a route and method that take one (POST, PUT, PATCH
  with a handler); any other request with a body is refused from its headers, before a
  byte of the body is read, so a server of GET routes never buffers a body.
* Bodies in flight share one budget (:attr:`Limits.max_inflight_body_bytes`): a request
  whose body does not fit waits for room (within its deadline), then gets a 503; memory
  held by bodies never exceeds the budget, however many clients send at once.
* At the connection limit a new connection closes the connection that has been idle
  longest (an idle keep-alive connection may be closed at any time, RFC 9112 9.8), so
  held-open idle connections cannot lock out the kubelet's probes. When every
  connection is busy, a few reserved connections still answer the probe paths
  (:attr:`HttpServer.probe_paths`, one request each) and nothing else.

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
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus

__all__ = ["DEFAULT_PROBE_PATHS", "Handler", "HttpServer", "Limits", "Request", "Response"]

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
    # Past max_connections, when no connection is idle: this many more, for probe paths only.
    reserved_connections: int = 8
    # Of those, how many one client address may hold (a kubelet probes from its node's address).
    reserved_per_peer: int = 2
    # Bytes of request bodies held at once, over all connections; at least max_body_bytes.
    max_inflight_body_bytes: int = 4 * 1024 * 1024
    # How long a body may wait for room in that budget before its request gets a 503.
    body_wait_timeout: float = 5.0
    max_requests_per_connection: int = 10_000

    def __post_init__(self) -> None:
        if self.max_inflight_body_bytes < self.max_body_bytes:
            raise ValueError(
                f"max_inflight_body_bytes ({self.max_inflight_body_bytes}) must be at least "
                f"max_body_bytes ({self.max_body_bytes}), or a body of the largest size is never served"
            )
        if self.max_connections < 1 or self.reserved_connections < 0:
            raise ValueError("max_connections must be at least 1 and reserved_connections at least 0")


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


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
DEFAULT_PROBE_PATHS = ("/healthz", "/readyz")


class _BodyBudget:
    """Bytes of request bodies in memory: acquired before a body is read, released after its answer."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._waiters: list[asyncio.Future[None]] = []

    async def acquire(self, size: int) -> None:
        while self.used + size > self.total:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
        self.used += size

    def release(self, size: int) -> None:
        self.used -= size
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


@dataclass(slots=True)
class _Connection:
    """One open connection: reserved ones serve one probe request; ``idle_since`` is None while busy."""

    reserved: bool
    idle_since: float | None
    peer: str = ""


class HttpServer:
    """Serves ``routes`` (path -> {method -> handler}) on ``host``:``port`` (0 picks a free port).

    ``probe_paths`` are the paths the reserved connections serve when every other one is busy.
    """

    def __init__(
        self,
        routes: Mapping[str, Mapping[str, Handler]],
        *,
        host: str = "0.0.0.0",  # noqa: S104 - a pod's server listens on the pod's address
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        limits: Limits | None = None,
        probe_paths: Collection[str] = DEFAULT_PROBE_PATHS,
    ) -> None:
        self._routes = {path: {m.upper(): h for m, h in methods.items()} for path, methods in routes.items()}
        self.probe_paths = frozenset(probe_paths)
        self._host = host
        self._port = port
        self.ssl_context = ssl_context
        self.limits = limits or Limits()
        self._server: asyncio.Server | None = None
        self.connections_accepted = 0
        self.connections_evicted = 0
        """Idle connections closed to make room for a new one at the connection limit."""
        self.connections_refused = 0
        """Connections dropped because every slot, reserved ones included, was busy."""
        self._connections: dict[asyncio.Task[None], _Connection] = {}
        self._budget = _BodyBudget(self.limits.max_inflight_body_bytes)

    @property
    def body_bytes_in_flight(self) -> int:
        """Bytes of request bodies the server holds right now (never above the budget)."""
        return self._budget.used

    @property
    def open_connections(self) -> int:
        return len(self._connections)

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
        busy = [task for task, conn in self._connections.items() if conn.idle_since is None]
        for task, conn in list(self._connections.items()):
            if conn.idle_since is not None:
                task.cancel()
        if busy:
            await asyncio.wait(busy, timeout=grace)
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=1.0)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)
            self._server = None

    def _admit(self, peer: str) -> _Connection | None:
        """A slot for a new connection: a free one, one freed by closing the longest idle
        connection, or a reserved one (probe paths only, a few per client address); None when
        there is none."""
        now = asyncio.get_running_loop().time()
        regular = [(conn.idle_since, task) for task, conn in self._connections.items() if not conn.reserved]
        if len(regular) < self.limits.max_connections:
            return _Connection(reserved=False, idle_since=now)
        idle = [(since, task) for since, task in regular if since is not None]
        if idle:
            _, oldest = min(idle, key=lambda pair: pair[0])
            del self._connections[oldest]
            oldest.cancel()
            self.connections_evicted += 1
            return _Connection(reserved=False, idle_since=now)
        reserved = [conn.peer for conn in self._connections.values() if conn.reserved]
        if (
            len(reserved) < self.limits.reserved_connections
            and reserved.count(peer) < self.limits.reserved_per_peer
        ):
            return _Connection(reserved=True, idle_since=now, peer=peer)
        return None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peername = writer.get_extra_info("peername")
        conn = self._admit(str(peername[0]) if isinstance(peername, tuple) and peername else "")
        if conn is None:
            self.connections_refused += 1
            writer.transport.abort()
            return
        self._connections[task] = conn
        self.connections_accepted += 1
        try:
            await self._serve_connection(reader, writer, conn)
        except asyncio.CancelledError:
            pass
        except (ConnectionError, TimeoutError, ssl.SSLError, OSError) as exc:
            _log.debug("connection ended: %r", exc)
        except Exception:
            _log.exception("http connection failed")
        finally:
            self._connections.pop(task, None)
            writer.close()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Connection
    ) -> None:
        limits = self.limits
        per_connection = 1 if conn.reserved else limits.max_requests_per_connection
        for served in range(per_connection):
            # An idle connection waits for the first byte of its next request under the
            # keep-alive timeout; from that byte on, the whole request is under request_timeout.
            try:
                async with asyncio.timeout(limits.keepalive_timeout if served else limits.request_timeout):
                    first = await reader.read(1)
            except TimeoutError:
                return
            if not first:
                return
            conn.idle_since = None
            last = served + 1 >= per_connection
            keep = await self._serve_one(first, reader, writer, last=last, probes_only=conn.reserved)
            if not keep:
                return
            conn.idle_since = asyncio.get_running_loop().time()

    async def _serve_one(
        self,
        first: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        last: bool,
        probes_only: bool,
    ) -> bool:
        limits = self.limits
        try:
            async with asyncio.timeout(limits.request_timeout):
                request, keep_alive = await self._read_request(first, reader, probes_only=probes_only)
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
        try:
            response = await self._dispatch(request)
            keep_alive = keep_alive and not last
            await self._write(writer, response, keep_alive, request.method == "HEAD")
        finally:
            if request.body:
                self._budget.release(len(request.body))
        return keep_alive

    async def _read_body(self, reader: asyncio.StreamReader, length: int) -> bytes:
        """Reads a body once the budget has room for it; the caller releases it after the answer."""
        try:
            async with asyncio.timeout(self.limits.body_wait_timeout):
                await self._budget.acquire(length)
        except TimeoutError as exc:
            raise _Reject(503, "too many request bodies in flight; try again") from exc
        try:
            return await reader.readexactly(length)
        except BaseException:
            self._budget.release(length)
            raise

    async def _read_request(
        self, first: bytes, reader: asyncio.StreamReader, *, probes_only: bool = False
    ) -> tuple[Request, bool]:
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
        method = method.upper()
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
        path, _, query = target.partition("?")
        if probes_only and path not in self.probe_paths:
            raise _Reject(503, "the server is at its connection limit; only probes are answered")
        if length and not self._takes_body(method, path):
            raise _Reject(413, f"{method} {path} takes no request body")
        if length > self.limits.max_body_bytes:
            raise _Reject(413, f"body of {length} bytes exceeds the limit of {self.limits.max_body_bytes}")
        if length:
            body = await self._read_body(reader, length)
        connection = headers.get("connection", "").lower()
        keep_alive = version == "HTTP/1.1" and "close" not in connection
        return Request(method=method, path=path, query=query, headers=headers, body=body), keep_alive

    def _takes_body(self, method: str, path: str) -> bool:
        return method in _BODY_METHODS and method in self._routes.get(path, {})

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
