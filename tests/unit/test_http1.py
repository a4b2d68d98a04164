"""The API client's HTTP/1.1 transport, against a scripted server on 127.0.0.1: bodies by length,
by chunks and to the close, keep-alive reuse, a connection the server closed while idle, long
watch lines, bounded headers."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.rig.certs import CertificateAuthority
from tidescale._http1 import HEADER_LIMIT, BodyTooLarge, HttpClient, HttpError

Answer = Callable[[str], bytes]
"""The raw response to a request line."""


class Server:
    def __init__(self, answer: Answer, *, close_after_each: bool = False) -> None:
        self.answer = answer
        self.close_after_each = close_after_each
        self.connections = 0
        self.requests: list[tuple[str, dict[str, str], bytes]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                headers: dict[str, str] = {}
                while (header := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = header.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append((line.decode().strip(), headers, body))
                writer.write(self.answer(line.decode()))
                await writer.drain()
                if self.close_after_each:
                    return
        finally:
            writer.close()


@asynccontextmanager
async def serving(
    server: Server,
    *,
    server_tls: ssl.SSLContext | None = None,
    client_tls: ssl.SSLContext | None = None,
) -> AsyncIterator[HttpClient]:
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=server_tls)
    port = listener.sockets[0].getsockname()[1]
    scheme = "https" if server_tls is not None else "http"
    client = HttpClient(
        f"{scheme}://127.0.0.1:{port}", ssl_context=client_tls, headers={"User-Agent": "test"}
    )
    try:
        yield client
    finally:
        await client.aclose()
        listener.close()


def _length(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def _chunked(*chunks: bytes) -> bytes:
    framed = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks)
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + framed + b"0\r\n\r\n"


async def test_two_requests_share_one_kept_alive_connection_and_send_headers_params_and_body() -> None:
    server = Server(lambda _: _length(b'{"ok":true}'))
    async with serving(server) as client:
        first = await client.request("GET", "/api", params={"labelSelector": "app=a,b", "x": "1 2"})
        second = await client.request("PATCH", "/apis/x", body=b'{"a":1}', headers={"Content-Type": "j"})
    assert (first.status, first.content, second.content) == (200, b'{"ok":true}', b'{"ok":true}')
    assert server.connections == 1
    (line, headers, _), (_, patch_headers, body) = server.requests
    assert unquote(line.split()[1]) == "/api?labelSelector=app=a,b&x=1 2"
    assert headers["user-agent"] == "test"
    assert headers["host"].startswith("127.0.0.1:")
    assert (patch_headers["content-type"], body) == ("j", b'{"a":1}')


async def test_a_chunked_body_is_put_together() -> None:
    async with serving(Server(lambda _: _chunked(b'{"a":', b"1}"))) as client:
        assert (await client.request("GET", "/")).content == b'{"a":1}'


async def test_a_connection_the_server_closed_while_idle_is_replaced_without_an_error() -> None:
    server = Server(lambda _: _length(b"x"), close_after_each=True)
    async with serving(server) as client:
        for _ in range(3):
            assert (await client.request("GET", "/")).content == b"x"
            await asyncio.sleep(0.05)  # the server's close arrives while the connection is idle
    assert server.connections == 3


async def test_a_stream_yields_lines_longer_than_a_read_split_across_chunks() -> None:
    long_line = b"y" * (3 * HEADER_LIMIT)
    answer = _chunked(b'{"type":"A"}\n' + long_line[:1000], long_line[1000:] + b"\n", b"tail")
    async with serving(Server(lambda _: answer)) as client, client.stream("GET", "/watch") as response:
        lines = [line async for line in response.lines()]
    assert lines == [b'{"type":"A"}', long_line, b"tail"]


async def test_a_body_up_to_the_close_is_read_and_the_connection_not_reused() -> None:
    server = Server(lambda _: b"HTTP/1.1 200 OK\r\n\r\nall of it", close_after_each=True)
    async with serving(server) as client:
        assert (await client.request("GET", "/")).content == b"all of it"
        assert (await client.request("GET", "/")).content == b"all of it"
    assert server.connections == 2


async def test_headers_past_the_limit_are_an_error_not_a_memory_sink() -> None:
    huge = "X-Filler: " + "z" * 1000 + "\r\n"
    answer = ("HTTP/1.1 200 OK\r\n" + huge * (HEADER_LIMIT // 1000 + 2) + "\r\n").encode()
    async with serving(Server(lambda _: answer, close_after_each=True)) as client:
        with pytest.raises(HttpError, match="headers pass"):
            await client.request("GET", "/")


async def test_a_body_cut_short_is_an_error() -> None:
    server = Server(lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", close_after_each=True)
    async with serving(server) as client:
        with pytest.raises(HttpError, match="closed inside the body"):
            await client.request("GET", "/")


async def test_nothing_listening_is_an_http_error() -> None:
    client = HttpClient("http://127.0.0.1:1", ssl_context=None, headers={})
    with pytest.raises(HttpError):
        await client.request("GET", "/")


def _tls(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for 127.0.0.1, and a client context trusting its CA."""
    ca = CertificateAuthority.create(tmp_path / name)
    pair = ca.issue_serving_cert("api", dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pair.cert_file, pair.key_file)
    return server, ssl.create_default_context(cafile=str(ca.cert_file))


async def test_https_to_an_ip_address_checks_the_certificate_against_the_given_ca(tmp_path: Path) -> None:
    server_tls, client_tls = _tls(tmp_path, "a")
    _, other_ca = _tls(tmp_path, "b")
    async with serving(
        Server(lambda _: _length(b"x")), server_tls=server_tls, client_tls=client_tls
    ) as client:
        assert (await client.request("GET", "/")).content == b"x"
    async with serving(Server(lambda _: _length(b"x")), server_tls=server_tls, client_tls=other_ca) as client:
        with pytest.raises(HttpError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.request("GET", "/")


async def test_a_body_past_the_callers_limit_is_refused_and_the_connection_dropped() -> None:
    server = Server(lambda _: _chunked(b"a" * 600, b"b" * 600))
    async with serving(server) as client:
        with pytest.raises(BodyTooLarge):
            await client.request("GET", "/", limit=1000)
        assert (await client.request("GET", "/", limit=1200)).content == b"a" * 600 + b"b" * 600
    assert server.connections == 2


async def test_requests_at_once_beyond_the_limit_wait_for_a_connection_instead_of_opening_more() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)  # all six are in flight before the first answer
        await server_handle(reader, writer)

    server = Server(lambda _: _length(b"x"))
    server_handle = server.handle
    listener = await asyncio.start_server(slow, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    client = HttpClient(f"http://127.0.0.1:{port}", ssl_context=None, headers={}, max_requests=2)
    try:
        answers = await asyncio.gather(*(client.request("GET", "/") for _ in range(6)))
    finally:
        await client.aclose()
        listener.close()
    assert [a.content for a in answers] == [b"x"] * 6
    assert server.connections == 2
