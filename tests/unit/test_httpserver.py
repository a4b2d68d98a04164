"""The small HTTP server: routing, keep-alive, every limit, garbage, TLS and its swap."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.rig.certs import CertificateAuthority
from tidescale.httpserver import HttpServer, Limits, Request, Response, _BodyBudget


async def echo(request: Request) -> Response:
    return Response(body=request.method.encode() + b" " + request.body)


async def boom(request: Request) -> Response:
    raise RuntimeError("handler bug")


async def ok(request: Request) -> Response:
    return Response(body=b"ok")


ROUTES = {"/echo": {"POST": echo, "GET": echo}, "/boom": {"GET": boom}, "/readyz": {"GET": ok}}
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


async def test_at_the_connection_limit_a_new_connection_closes_the_longest_idle_one(
    server: HttpServer,
) -> None:
    held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(LIMITS.max_connections)]
    await asyncio.sleep(0.05)
    evicted_before = server.connections_evicted
    response = await exchange(server.port, b"GET /readyz HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert status_of(response) == 200
    assert server.connections_evicted == evicted_before + 1
    # The one closed is the first opened: it has been idle longest.
    async with asyncio.timeout(3):
        assert await held[0][0].read(-1) == b""
    for _, w in held:
        w.close()


@pytest_asyncio.fixture(loop_scope="session")
async def patient_server() -> AsyncIterator[HttpServer]:
    """Slow requests stay busy for seconds; two reserved connections past the limit of four."""
    limits = Limits(
        max_body_bytes=100,
        max_inflight_body_bytes=150,
        body_wait_timeout=0.3,
        request_timeout=5.0,
        max_connections=4,
        reserved_connections=2,
    )
    http = HttpServer(ROUTES, host="127.0.0.1", port=0, limits=limits)
    await http.start()
    try:
        yield http
    finally:
        await http.stop(grace=0.1)


async def busy_connections(port: int, count: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """Connections each in the middle of a request (a header line that never ends)."""
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(count)]
    for _, writer in held:
        writer.write(b"GET /echo HTTP/1.1\r\nX-Slow: ")
        await writer.drain()
    await asyncio.sleep(0.1)
    return held


async def test_when_every_connection_is_busy_reserved_ones_answer_probes_and_nothing_else(
    patient_server: HttpServer,
) -> None:
    held = await busy_connections(patient_server.port, 4)
    try:
        probe = await exchange(patient_server.port, b"GET /readyz HTTP/1.1\r\n\r\n")
        assert status_of(probe) == 200
        assert b"Connection: close" in probe  # one request per reserved connection
        other = await exchange(patient_server.port, b"GET /echo HTTP/1.1\r\n\r\n")
        assert status_of(other) == 503
        assert b"only probes" in other
        more = await busy_connections(patient_server.port, 2)  # the two reserved slots, held
        reader, writer = await asyncio.open_connection("127.0.0.1", patient_server.port)
        writer.write(b"GET /readyz HTTP/1.1\r\n\r\n")
        answer = b""
        async with asyncio.timeout(3):
            with contextlib.suppress(ConnectionResetError):  # aborted: a reset, or a plain close
                answer = await reader.read(-1)
        assert answer == b""
        assert patient_server.connections_refused >= 1
        held += more
    finally:
        for _, w in held:
            w.close()
    await asyncio.sleep(0.1)
    again = await exchange(patient_server.port, b"GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert status_of(again) == 200


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
        b"GET /readyz HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
        b"DELETE /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
        b"POST /nowhere HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
    ],
    ids=["get-with-body", "probe-with-huge-body", "method-without-handler", "unknown-path"],
)
async def test_a_body_sent_where_none_is_taken_is_refused_before_it_is_read(
    patient_server: HttpServer, raw: bytes
) -> None:
    # No body bytes follow the headers: the answer can only come from the headers alone.
    response = await exchange(patient_server.port, raw)
    assert status_of(response) == 413
    assert b"takes no request body" in response
    assert b"Connection: close" in response


async def test_bodies_in_flight_never_exceed_the_budget_and_a_late_one_gets_a_503(
    patient_server: HttpServer,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", patient_server.port)
    writer.write(b"POST /echo HTTP/1.1\r\nContent-Length: 100\r\n\r\n" + b"a" * 10)
    await writer.drain()
    await asyncio.sleep(0.1)
    assert patient_server.body_bytes_in_flight == 100
    late = await exchange(
        patient_server.port, b"POST /echo HTTP/1.1\r\nContent-Length: 60\r\n\r\n" + b"b" * 60
    )
    assert status_of(late) == 503
    assert patient_server.body_bytes_in_flight == 100
    small = await exchange(
        patient_server.port,
        b"POST /echo HTTP/1.1\r\nContent-Length: 50\r\nConnection: close\r\n\r\n" + b"c" * 50,
    )
    assert status_of(small) == 200
    writer.write(b"a" * 90)
    head, body = await read_response(reader)
    assert head.startswith(b"HTTP/1.1 200")
    assert body == b"POST " + b"a" * 100
    writer.close()
    await asyncio.sleep(0.05)
    assert patient_server.body_bytes_in_flight == 0


async def test_a_body_waiting_for_room_is_read_once_room_is_made(patient_server: HttpServer) -> None:
    first_reader, first = await asyncio.open_connection("127.0.0.1", patient_server.port)
    first.write(b"POST /echo HTTP/1.1\r\nContent-Length: 100\r\n\r\n")
    await first.drain()
    await asyncio.sleep(0.05)
    second = asyncio.create_task(
        exchange(
            patient_server.port,
            b"POST /echo HTTP/1.1\r\nContent-Length: 100\r\nConnection: close\r\n\r\n" + b"z" * 100,
        )
    )
    await asyncio.sleep(0.05)
    first.write(b"y" * 100)
    await read_response(first_reader)
    first.close()
    assert status_of(await second) == 200


def test_a_budget_smaller_than_one_body_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match=r"max_inflight_body_bytes .* must be at least max_body_bytes"):
        Limits(max_body_bytes=10, max_inflight_body_bytes=5)


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
        assert answer == b"" or status_of(answer) in (400, 404, 405, 408, 411, 413, 431, 503, 505)
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


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=100), min_size=1, max_size=40),
    total=st.integers(min_value=100, max_value=400),
    holds=st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=40),
)
def test_the_body_budget_never_holds_more_than_its_total_and_every_waiter_gets_room(
    sizes: list[int], total: int, holds: list[int]
) -> None:
    async def scenario() -> tuple[int, int]:
        budget = _BodyBudget(total)
        peak = 0

        async def one(index: int, size: int) -> None:
            nonlocal peak
            await budget.acquire(size)
            peak = max(peak, budget.used)
            for _ in range(holds[index % len(holds)]):
                await asyncio.sleep(0)
            budget.release(size)

        async with asyncio.timeout(5):
            await asyncio.gather(*(one(i, size) for i, size in enumerate(sizes)))
        return peak, budget.used

    peak, left = asyncio.run(scenario())
    assert peak <= total
    assert left == 0


async def test_one_client_address_holds_at_most_its_share_of_the_reserved_connections() -> None:
    limits = Limits(request_timeout=5.0, max_connections=2, reserved_connections=4, reserved_per_peer=1)
    http = HttpServer(ROUTES, host="127.0.0.1", port=0, limits=limits)
    await http.start()
    held = []
    for _ in range(3):  # two regular, then one reserved: all from 127.0.0.1, each busy before the next
        held += await busy_connections(http.port, 1)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", http.port)
        writer.write(b"GET /readyz HTTP/1.1\r\n\r\n")
        answer = b""
        async with asyncio.timeout(3):
            with contextlib.suppress(ConnectionResetError):
                answer = await reader.read(-1)
        assert answer == b""  # refused: this address already holds its one reserved connection
        assert http.connections_refused == 1
    finally:
        for _, w in held:
            w.close()
        await http.stop(grace=0.1)
