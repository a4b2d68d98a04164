"""Bounded work for any hint and any broker answer (issue 11, item 4 and 5): partition ranges,
linear-time patterns, caps on hints, capped and checked management API answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidescale._waker_guard import SecretCache, decode_secret
from tidescale.errors import HintError, KubeNotFound
from tidescale.hints import MAX_HINT_BYTES, MAX_HINT_KEYS, MAX_TRIGGERS, validate_hints
from tidescale.sources._fields import (
    MAX_PARTITION_RANGES,
    MAX_REGEX_LENGTH,
    PartitionRanges,
    compile_linear,
    parse_partitions,
    parse_regex,
)
from tidescale.sources.base import Measurement, MeasurementFailure
from tidescale.sources.rabbitmq._source import MAX_RESPONSE_BYTES, RabbitMQSource, parse_rabbitmq_settings

A = "tidescale.io/kafka.partitions"


# -- partitions --------------------------------------------------------------------------------------


def test_a_million_partitions_are_one_range_not_a_million_numbers() -> None:
    tracemalloc.start()
    try:
        ranges = parse_partitions(A, ",".join(["0-1000000"] * MAX_PARTITION_RANGES))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ranges.ranges == ((0, 1_000_000),)
    assert 999_999 in ranges
    assert 1_000_001 not in ranges
    assert peak < 1 << 20  # a set of a million ints is ~40 MiB


def test_more_partition_items_than_the_cap_are_refused_naming_the_cap() -> None:
    with pytest.raises(HintError, match=f"at most {MAX_PARTITION_RANGES} items"):
        parse_partitions(A, ",".join(["1"] * (MAX_PARTITION_RANGES + 1)))


@given(
    st.lists(st.tuples(st.integers(0, 60), st.integers(0, 20)), min_size=1, max_size=12), st.integers(-5, 100)
)
def test_membership_in_ranges_is_membership_in_the_numbers_they_name(
    items: list[tuple[int, int]], probe: int
) -> None:
    text = ",".join(f"{low}-{low + width}" for low, width in items)
    numbers = {n for low, width in items for n in range(low, low + width + 1)}
    ranges = parse_partitions(A, text)
    assert (probe in ranges) == (probe in numbers)
    assert ranges == frozenset(numbers)
    assert len(ranges) == len(numbers)


def test_ranges_are_equal_whatever_order_and_overlap_they_were_written_in() -> None:
    assert parse_partitions(A, "5-9,0-4, 7") == PartitionRanges([(0, 9)])
    assert hash(parse_partitions(A, "0-9")) == hash(parse_partitions(A, "5-9,0-4"))


# -- patterns ------------------------------------------------------------------------------------------


def test_a_catastrophic_backtracking_pattern_matches_in_linear_time_under_re2() -> None:
    pattern = compile_linear("(a|a)+(b|b)+$")
    assert pattern.fullmatch("a" * 100_000 + "c") is None  # Python's re would not finish


@pytest.mark.parametrize(
    ("pattern", "why"),
    [(r"(a)\1", "invalid escape sequence"), ("(?=a)a", "missing argument to repetition operator|invalid")],
)
def test_a_pattern_re2_cannot_run_in_linear_time_is_refused_with_re2s_reason(pattern: str, why: str) -> None:
    with pytest.raises(HintError, match="RE2 syntax") as caught:
        parse_regex("tidescale.io/rabbitmq.queue-pattern", pattern)
    assert caught.value.annotation == "tidescale.io/rabbitmq.queue-pattern"


def test_a_pattern_nested_deep_enough_to_exhaust_pythons_parser_is_refused_not_raised() -> None:
    with pytest.raises(HintError, match="nested"):
        parse_regex("tidescale.io/rabbitmq.queue-pattern", "(" * 500 + "a" + ")" * 500)


def test_a_pattern_longer_than_the_cap_is_refused() -> None:
    with pytest.raises(HintError, match=f"at most {MAX_REGEX_LENGTH} characters"):
        parse_regex("tidescale.io/rabbitmq.queue-pattern", "a" * (MAX_REGEX_LENGTH + 1))


def test_a_pattern_whose_program_is_too_large_is_refused() -> None:
    with pytest.raises(HintError, match="RE2"):
        parse_regex("tidescale.io/rabbitmq.queue-pattern", "((((a{100}){100}){100}){100})")


# -- caps on hints -------------------------------------------------------------------------------------


def test_more_triggers_than_the_cap_are_refused_before_any_is_parsed() -> None:
    hints = {f"tidescale.io/t{i}.type": "kafka" for i in range(MAX_TRIGGERS + 1)}
    (problem,) = validate_hints(hints)
    assert f"at most {MAX_TRIGGERS} triggers" in str(problem)


def test_a_hint_value_longer_than_the_cap_is_refused_and_not_quoted_whole() -> None:
    (problem,) = validate_hints({"tidescale.io/kafka.topic": "x" * (MAX_HINT_BYTES + 1)})
    assert problem.annotation == "tidescale.io/kafka.topic"
    assert f"at most {MAX_HINT_BYTES} bytes" in str(problem)
    assert len(str(problem)) < 300


def test_more_hints_than_the_cap_are_refused() -> None:
    hints = {f"tidescale.io/kafka.f{i}": "1" for i in range(MAX_HINT_KEYS + 1)}
    (problem,) = validate_hints(hints)
    assert f"at most {MAX_HINT_KEYS}" in str(problem)


def test_every_limit_is_in_the_generated_reference_with_its_error() -> None:
    from tidescale.hints import LIMIT_ROWS, reference_markdown
    from tidescale.sources._fields import LIMITS

    text = reference_markdown()
    for _, limit, error in (*LIMIT_ROWS, *((d.what, d.limit, d.error) for d in LIMITS)):
        assert limit in text
        assert error.replace("|", "\\|") in text


# -- Secrets ---------------------------------------------------------------------------------------------


async def test_a_failed_secret_read_is_retried_after_its_backoff_and_then_found() -> None:
    now = [0.0]
    reads: list[str] = []
    present: dict[str, Any] = {}

    async def fetch(namespace: str, name: str) -> dict[str, Any]:
        reads.append(name)
        if not present:
            raise KubeNotFound("not found")
        return present

    cache = SecretCache(fetch, first_retry=2.0, clock=lambda: now[0])
    for _ in range(3):
        with pytest.raises(Exception, match="not found"):
            await cache.get("ns", "creds")
    assert reads == ["creds"]
    present.update(decode_and_encode())
    now[0] = 2.5
    credentials = await cache.get("ns", "creds")
    assert credentials.username == "u"
    assert reads == ["creds", "creds"]


def decode_and_encode() -> dict[str, str]:
    return {"username": "dQ==", "password": "cA=="}


def test_a_secret_value_that_is_not_base64_or_not_utf8_is_named_without_its_value() -> None:
    for raw in ("%%%", "//79"):  # not base64; bytes ff fe fd
        with pytest.raises(Exception, match="key 'password' is not UTF-8 text") as caught:
            decode_secret("ns", "creds", {"username": "dQ==", "password": raw})
        assert raw not in str(caught.value)


# -- management API answers ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _source(body: bytes) -> AsyncIterator[RabbitMQSource]:
    """A source whose management API (a server on 127.0.0.1) answers every GET with ``body``."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    source = RabbitMQSource(parse_rabbitmq_settings("rabbitmq", {"management-url": url, "queue": "jobs"}))
    try:
        yield source
    finally:
        await source.close()
        server.close()


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"<html>not json</html>", "not JSON"),
        (b'"a string"', "not a JSON list"),
        (json.dumps([{"name": "jobs", "messages_ready": "x"}]).encode(), ""),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (b" " * (MAX_RESPONSE_BYTES + 1), "MiB"),
    ],
)
async def test_a_management_answer_that_is_not_a_listing_fails_its_triggers_without_raising(
    body: bytes, why: str
) -> None:
    async with _source(body) as source:
        settings = source._connection
        result = (await source.measure_many([settings]))[settings]
    assert isinstance(result, MeasurementFailure)
    assert why in result.error


async def test_a_good_listing_is_still_measured_through_the_capped_reader() -> None:
    listing = [{"name": "jobs", "messages_ready": 3, "messages_unacknowledged": 0, "consumers": 0}]
    async with _source(json.dumps(listing).encode()) as source:
        settings = source._connection
        result = (await source.measure_many([settings]))[settings]
    assert isinstance(result, Measurement)
    assert result.value == 3


# -- brokers a Kafka cluster advertises ----------------------------------------------------------------


async def test_a_broker_advertised_by_kafka_metadata_is_checked_before_any_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import aiokafka.client
    from aiokafka.cluster import BrokerMetadata

    from tidescale.sources.kafka._source import _checked_client

    asked: list[tuple[str, int]] = []
    dialled: list[str] = []

    async def check(host: str, port: int) -> str | None:
        asked.append((host, port))
        return (
            "169.254.169.254 is in the denied network 169.254.0.0/16" if host.startswith("169.254") else None
        )

    async def create_conn(host: str, port: int, **_: Any) -> None:
        dialled.append(host)
        raise OSError("not in a unit test")

    monkeypatch.setattr(aiokafka.client, "create_conn", create_conn)
    client = _checked_client(check)(bootstrap_servers="10.213.1.1:9092")
    brokers = {
        1: BrokerMetadata(1, "169.254.169.254", 80, None),
        2: BrokerMetadata(2, "10.213.1.1", 9092, None),
    }
    monkeypatch.setattr(client.cluster, "broker_metadata", brokers.get)
    assert await client._get_conn(1) is None
    await client._get_conn(2)
    assert asked == [("169.254.169.254", 80), ("10.213.1.1", 9092)]
    assert dialled == ["10.213.1.1"]
