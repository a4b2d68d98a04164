"""The small HTTP server: routing, keep-alive, every limit, garbage, TLS and its swap."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.rig.certs import CertificateAuthority
from tidescale.httpserver import HttpServer, Limits, Request, Response


async def echo(request: Request) -> Response:
    return Response(body=request.method.encode() + b" " + request.body)


async def boom(request: Request) -> Response:
    raise RuntimeError("handler bug")


ROUTES = {"/echo": {"POST": echo, "GET": echo}, "/boom": {"GET": boom}}
LIMITS = Limits(
    max_header_bytes=1024,
    max_headers=10,
    max_body_bytes=100,
    request_timeout=0.5,
    keepalive_timeout=0.5,
    max_connections=4,
)


@pytest_asyncio.fixture(loop_scope="session")
async def server() -> AsyncIterator[HttpServer]:
    http = HttpServer(ROUTES, host="127.0.0.1", port=0, limits=LIMITS)
    await http.start()
    try:
        yield http
    finally:
        await http.stop()


async def exchange(port: int, raw: bytes, *, context: ssl.SSLContext | None = None) -> bytes:
    """Send ``raw``, then read until the server closes (or 3 s pass)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    writer.write(raw)
    await writer.drain()
    try:
        async with asyncio.timeout(3):
            return await reader.read(-1)
    finally:
        writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    return head, await reader.readexactly(length)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


async def test_a_route_answers_with_its_handlers_body(server: HttpServer) -> None:
    response = await exchange(
        server.port, b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    )
    assert status_of(response) == 200
    assert response.endswith(b"\r\n\r\nPOST hello")


async def test_two_requests_share_one_kept_alive_connection(server: HttpServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for body in (b"one", b"two"):
            writer.write(b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\n\r\n" + body)
            head, answer = await read_response(reader)
            assert head.startswith(b"HTTP/1.1 200")
            assert answer == b"POST " + body
    finally:
        writer.close()


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout(server: HttpServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /echo HTTP/1.1\r\n\r\n")
    await read_response(reader)
    async with asyncio.timeout(3):
        assert await reader.read(-1) == b""
    writer.close()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /nowhere HTTP/1.1\r\n\r\n", 404),
        (b"DELETE /echo HTTP/1.1\r\n\r\n", 405),
        (b"GET /echo HTTP/1.1\r\nX: " + b"a" * 2000 + b"\r\n\r\n", 431),
        (b"GET /echo HTTP/1.1\r\n" + b"X-A: b\r\n" * 11 + b"\r\n", 431),
        (b"POST /echo HTTP/1.1\r\nContent-Length: 101\r\n\r\n", 413),
        (b"POST /echo HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
        (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 411),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
        (b"GET /echo HTTP/2.0\r\n\r\n", 505),
        (b"GET /echo HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET /boom HTTP/1.1\r\n\r\n", 500),
    ],
)
async def test_bad_requests_get_a_4xx_and_a_failing_handler_a_500(
    server: HttpServer, raw: bytes, status: int
) -> None:
    response = await exchange(server.port, raw)
    assert status_of(response) == status
    if status >= 400 and status not in (404, 405, 500):
        assert b"Connection: close" in response


async def test_a_request_that_arrives_too_slowly_is_cut_off(server: HttpServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /echo HTTP/1.1\r\nContent-Length: 50\r\n\r\nonly part")
    async with asyncio.timeout(3):
        response = await reader.read(-1)
    writer.close()
    assert status_of(response) == 408


async def test_head_gets_headers_without_a_body(server: HttpServer) -> None:
    response = await exchange(server.port, b"HEAD /echo HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert status_of(response) == 200
    assert response.endswith(b"\r\n\r\n")


async def test_http_1_0_closes_after_one_response(server: HttpServer) -> None:
    response = await exchange(server.port, b"GET /echo HTTP/1.0\r\n\r\n")
    assert status_of(response) == 200
    assert b"Connection: close" in response


async def test_connections_beyond_the_limit_are_dropped_and_the_server_recovers(server: HttpServer) -> None:
    held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(LIMITS.max_connections)]
    await asyncio.sleep(0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /echo HTTP/1.1\r\n\r\n")
    answer = b""
    async with asyncio.timeout(3):
        with contextlib.suppress(ConnectionResetError):  # aborted: a reset, or a plain close
            answer = await reader.read(-1)
    assert answer == b""
    for _, w in held:
        w.close()
    await asyncio.sleep(0.1)
    response = await exchange(server.port, b"GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert status_of(response) == 200


async def test_random_garbage_never_stops_the_server(server: HttpServer) -> None:
    import random

    rng = random.Random(7)
    for _ in range(200):
        garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(garbage)
        writer.write_eof()
        async with asyncio.timeout(3):
            answer = await reader.read(-1)
        writer.close()
        assert answer == b"" or status_of(answer) in (400, 404, 405, 408, 411, 413, 431, 505)
    response = await exchange(server.port, b"GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert status_of(response) == 200


def client_context(ca: CertificateAuthority) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.cert_file))
    context.check_hostname = True
    return context


def server_context(ca: CertificateAuthority, name: str) -> ssl.SSLContext:
    pair = ca.issue_serving_cert(name, dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pair.cert_file, pair.key_file)
    return context


async def tls_swap_scenario(tmp_path: Path) -> None:
    old_ca = CertificateAuthority.create(tmp_path / "old")
    new_ca = CertificateAuthority.create(tmp_path / "new")
    (tmp_path / "old").mkdir(exist_ok=True)
    http = HttpServer(
        ROUTES, host="127.0.0.1", port=0, ssl_context=server_context(old_ca, "a"), limits=LIMITS
    )
    await http.start()
    try:
        kept_reader, kept_writer = await asyncio.open_connection(
            "127.0.0.1", http.port, ssl=client_context(old_ca)
        )
        request = b"GET /echo HTTP/1.1\r\n\r\n"
        kept_writer.write(request)
        assert (await read_response(kept_reader))[1] == b"GET "

        http.ssl_context = server_context(new_ca, "b")
        response = await exchange(
            http.port, b"GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n", context=client_context(new_ca)
        )
        assert status_of(response) == 200
        with pytest.raises(ssl.SSLCertVerificationError):
            await exchange(http.port, b"GET /echo HTTP/1.1\r\n\r\n", context=client_context(old_ca))
        # The connection opened before the swap keeps working.
        kept_writer.write(request)
        assert (await read_response(kept_reader))[1] == b"GET "
        kept_writer.close()
    finally:
        await http.stop()


async def test_tls_serves_and_a_swapped_context_takes_effect_for_new_connections(tmp_path: Path) -> None:
    await tls_swap_scenario(tmp_path)


def test_the_tls_swap_also_works_under_uvloop_as_in_the_agent(tmp_path: Path) -> None:
    import uvloop

    uvloop.run(tls_swap_scenario(tmp_path))


async def test_plain_http_on_a_tls_port_is_dropped_and_the_server_keeps_serving(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path)
    http = HttpServer(ROUTES, host="127.0.0.1", port=0, ssl_context=server_context(ca, "a"), limits=LIMITS)
    await http.start()
    try:
        answer = await exchange(http.port, b"GET /echo HTTP/1.1\r\n\r\n")
        assert b"200" not in answer
        response = await exchange(
            http.port, b"GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n", context=client_context(ca)
        )
        assert status_of(response) == 200
    finally:
        await http.stop()
