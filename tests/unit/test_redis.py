"""Redis: the settings parser, the bounded RESP2 codec and the list/stream arithmetic (no server)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidescale.errors import HintsInvalid, SourceError, SourceNotFound
from tidescale.sources.redis._length import (
    MISSING_GROUP_KEY,
    UNKNOWN_LAG_KEY,
    RedisSnapshot,
    groups_from_xinfo,
    redis_measurement,
    stream_snapshot,
)
from tidescale.sources.redis._resp import (
    MAX_DEPTH,
    Reply,
    RespError,
    encode_command,
    read_reply,
)
from tidescale.sources.redis._settings import RedisSettings, parse_redis_settings

LIST = {"address": "redis.cache:6379", "list": "jobs"}
STREAM = {"address": "redis.cache:6379", "stream": "orders", "consumer-group": "workers"}


def _problems(raw: dict[str, str]) -> dict[str, str]:
    with pytest.raises(HintsInvalid) as caught:
        parse_redis_settings("jobs", raw)
    return {p.annotation: str(p) for p in caught.value.problems}


# -- settings ---------------------------------------------------------------------------------------


def test_a_list_trigger_defaults_to_keda_s_target_of_five() -> None:
    s = parse_redis_settings("redis", LIST)
    assert s == RedisSettings(name="redis", address="redis.cache:6379", list_name="jobs")
    assert (s.host, s.port, s.database, s.value, s.activation_value, s.timeout) == (
        "redis.cache",
        6379,
        0,
        5.0,
        0.0,
        5.0,
    )


def test_a_stream_with_a_group_measures_pending_entries_and_without_one_its_length() -> None:
    assert parse_redis_settings("r", STREAM).stream_metric == "pending"
    assert parse_redis_settings("r", {"address": "r:1", "stream": "s"}).stream_metric == "length"
    assert parse_redis_settings("r", {**STREAM, "stream-metric": "LAG"}).stream_metric == "lag"


def test_every_field_parses_to_its_type() -> None:
    s = parse_redis_settings(
        "r",
        {
            **STREAM,
            "address": "[fd00::1]:6380",
            "database": "3",
            "username": "autoscaler",
            "password-file": "/etc/redis/password",
            "credentials-secret": "redis-credentials",
            "enable-tls": "true",
            "tls-ca-file": "/etc/redis/ca.crt",
            "value": "2.5",
            "activation-value": "1",
            "timeout": "2s",
        },
    )
    assert (s.host, s.port, s.database, s.username, s.password_file, s.credentials_secret) == (
        "fd00::1",
        6380,
        3,
        "autoscaler",
        "/etc/redis/password",
        "redis-credentials",
    )
    assert (s.enable_tls, s.tls_ca_file, s.value, s.activation_value, s.timeout) == (
        True,
        "/etc/redis/ca.crt",
        2.5,
        1.0,
        2.0,
    )


@pytest.mark.parametrize(
    ("raw", "annotation", "words"),
    [
        ({"list": "jobs"}, "address", "required"),
        ({**LIST, "address": "redis.cache"}, "address", "host:port"),
        ({**LIST, "address": "redis:99999"}, "address", "host:port"),
        ({"address": "r:1"}, "list", "exactly one of list and stream"),
        ({**LIST, "stream": "s"}, "stream", "exactly one of list and stream"),
        ({**LIST, "consumer-group": "g"}, "consumer-group", "only with stream"),
        ({"address": "r:1", "stream": "s", "stream-metric": "lag"}, "consumer-group", "a consumer group's"),
        ({**LIST, "list": "x" * 1025}, "list", "1 to 1024 bytes"),
        ({**STREAM, "consumer-group": "two words"}, "consumer-group", "no blanks"),
        ({**LIST, "database": "65536"}, "database", "0 to 65535"),
        ({**LIST, "value": "0"}, "value", "above 0"),
        ({**LIST, "tls-ca-file": "/ca.crt"}, "tls-ca-file", "enable-tls"),
        ({**LIST, "password-env": "P", "password-file": "/p"}, "password-file", "not both"),
        ({**LIST, "listName": "jobs"}, "listName", "known field of a redis trigger"),
    ],
)
def test_a_bad_field_is_named_with_what_was_expected(
    raw: dict[str, str], annotation: str, words: str
) -> None:
    problems = _problems(raw)
    assert words in problems[f"tidescale.io/jobs.{annotation}"]


def test_every_problem_is_reported_at_once() -> None:
    problems = _problems({"address": "nope", "value": "-1", "database": "x"})
    assert {"tidescale.io/jobs.address", "tidescale.io/jobs.value", "tidescale.io/jobs.database"} <= set(
        problems
    )


def test_connections_are_shared_by_server_database_and_login_only() -> None:
    a = parse_redis_settings("a", LIST)
    b = parse_redis_settings("b", {**STREAM, "stream-metric": "lag"})
    assert a.cluster_key == b.cluster_key
    assert a.cluster_key != parse_redis_settings("c", {**LIST, "database": "1"}).cluster_key
    assert a.cluster_key != parse_redis_settings("d", {**LIST, "password-env": "P"}).cluster_key


# -- RESP2 ------------------------------------------------------------------------------------------


def _encode_reply(reply: Reply) -> bytes:
    """The server side of RESP2, for the tests."""
    if reply is None:
        return b"$-1\r\n"
    if isinstance(reply, RespError):
        return b"-" + reply.message.encode() + b"\r\n"
    if isinstance(reply, int):
        return b":%d\r\n" % reply
    if isinstance(reply, bytes):
        return b"$%d\r\n%s\r\n" % (len(reply), reply)
    return b"*%d\r\n" % len(reply) + b"".join(_encode_reply(item) for item in reply)


async def _parse(data: bytes, **bounds: int) -> Reply:
    reader = asyncio.StreamReader(limit=1 << 16)
    reader.feed_data(data)
    reader.feed_eof()
    return await read_reply(reader, **bounds)


_replies: st.SearchStrategy[Reply] = st.recursive(
    st.none()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.binary(max_size=64)
    | st.builds(RespError, st.from_regex(r"[A-Z]{2,9} [a-z ]{0,20}", fullmatch=True)),
    lambda inner: st.lists(inner, max_size=5),
    max_leaves=20,
)


def _depth(reply: Reply) -> int:
    return 1 + max((_depth(item) for item in reply), default=0) if isinstance(reply, list) else 0


@given(_replies)
async def test_any_reply_within_the_bounds_reads_back_as_it_was_sent(reply: Reply) -> None:
    if _depth(reply) > MAX_DEPTH:
        return
    assert await _parse(_encode_reply(reply)) == reply


def test_a_command_is_an_array_of_bulk_strings() -> None:
    assert (
        encode_command("XINFO", "GROUPS", "a b", 3)
        == b"*4\r\n$5\r\nXINFO\r\n$6\r\nGROUPS\r\n$3\r\na b\r\n$1\r\n3\r\n"
    )


async def test_a_string_announced_larger_than_the_bound_is_refused_before_it_is_read() -> None:
    with pytest.raises(SourceError, match="larger than"):
        await _parse(b"$1000000000\r\n", max_bytes=1 << 20)


async def test_an_array_with_too_many_items_is_refused() -> None:
    with pytest.raises(SourceError, match="more than"):
        await _parse(b"*200000\r\n" + b":1\r\n" * 10)


async def test_arrays_nested_past_the_depth_bound_are_refused() -> None:
    with pytest.raises(SourceError, match="deeper"):
        await _parse(b"*1\r\n" * (MAX_DEPTH + 1) + b":1\r\n")


@pytest.mark.parametrize(
    "data", [b"HTTP/1.1 400 Bad Request\r\n", b":12x\r\n", b"$3\r\nabcd\r\n", b"$-5\r\n"]
)
async def test_an_answer_that_is_not_resp_is_a_source_error(data: bytes) -> None:
    with pytest.raises(SourceError):
        await _parse(data)


async def test_a_connection_closed_mid_reply_is_an_incomplete_read() -> None:
    with pytest.raises(asyncio.IncompleteReadError):
        await _parse(b"$10\r\nabc")


# -- arithmetic -------------------------------------------------------------------------------------

LIST_SETTINGS = parse_redis_settings("r", LIST)


def _stream(metric: str, **extra: str) -> RedisSettings:
    return parse_redis_settings("r", {**STREAM, "stream-metric": metric, **extra})


def _group(name: bytes, pending: int, lag: int | None, *, with_lag: bool = True) -> Reply:
    fields: list[Reply] = [b"name", name, b"consumers", 1, b"pending", pending, b"last-delivered-id", b"1-0"]
    if with_lag:
        fields += [b"entries-read", 3, b"lag", lag]
    return fields


@given(st.integers(min_value=0, max_value=10**9), st.floats(min_value=0, max_value=1e9))
def test_a_list_is_active_exactly_when_its_length_is_above_the_activation_value(
    length: int, activation: float
) -> None:
    settings = parse_redis_settings("r", {**LIST, "activation-value": repr(activation)})
    m = redis_measurement(RedisSnapshot(length=length), settings, 1.0)
    assert (m.value, m.target, m.active, m.replica_cap) == (float(length), 5.0, length > activation, None)


@given(
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=0, max_value=10**6),
)
def test_each_stream_metric_reads_its_own_number(length: int, pending: int, lag: int) -> None:
    snapshot = stream_snapshot([_group(b"other", 7, 7), _group(b"workers", pending, lag)], length, "orders")
    assert redis_measurement(snapshot, _stream("length"), 0.0).value == length
    assert redis_measurement(snapshot, _stream("pending"), 0.0).value == pending
    measured = redis_measurement(snapshot, _stream("lag"), 0.0)
    assert (measured.value, measured.active) == (lag, lag > 0)
    assert measured.detail["group:pending"] == pending


def test_a_lag_the_server_cannot_compute_counts_the_whole_stream_and_keeps_the_trigger_active() -> None:
    snapshot = stream_snapshot([_group(b"workers", 0, None)], 12, "orders")
    m = redis_measurement(snapshot, _stream("lag", **{"activation-value": "100"}), 0.0)
    assert (m.value, m.active, m.detail[UNKNOWN_LAG_KEY]) == (12.0, True, 1.0)


def test_a_group_not_created_yet_has_the_whole_stream_as_its_lag() -> None:
    m = redis_measurement(stream_snapshot([], 9, "orders"), _stream("lag"), 0.0)
    assert (m.value, m.active, m.detail[MISSING_GROUP_KEY]) == (9.0, True, 1.0)


def test_lag_from_a_server_older_than_redis_7_is_an_error_naming_the_version() -> None:
    snapshot = stream_snapshot([_group(b"workers", 0, None, with_lag=False)], 5, "orders")
    with pytest.raises(SourceError, match="Redis >= 7"):
        redis_measurement(snapshot, _stream("lag"), 0.0)


def test_pending_entries_of_a_missing_group_are_not_found() -> None:
    with pytest.raises(SourceNotFound, match="no consumer group 'workers'"):
        redis_measurement(stream_snapshot([], 5, "orders"), _stream("pending"), 0.0)


def test_a_missing_stream_is_not_found_rather_than_empty() -> None:
    with pytest.raises(SourceNotFound, match="no stream 'orders'"):
        stream_snapshot(RespError("ERR no such key"), 0, "orders")


@pytest.mark.parametrize(
    "reply",
    [b"nope", [[b"name"]], [[b"name", b"g", b"pending", -1]], [[b"name", b"g", b"pending", 1, b"lag", b"x"]]],
)
def test_a_malformed_group_listing_is_a_source_error(reply: Reply) -> None:
    with pytest.raises(SourceError):
        groups_from_xinfo(reply, "orders")


def test_events_name_the_redis_metric_a_trigger_scales_on() -> None:
    from tidescale.hints import parse_hints

    p, address = "tidescale.io/", {"address": "r:6379"}
    raw = {
        "jobs": {**address, "list": "jobs"},
        "grown": {**address, "stream": "s"},
        "held": {**address, "stream": "s", "consumer-group": "g"},
        "behind": {**address, "stream": "s", "consumer-group": "g", "stream-metric": "lag"},
    }
    annotations = {f"{p}{name}.type": "redis" for name in raw}
    annotations |= {f"{p}{name}.{k}": v for name, fields in raw.items() for k, v in fields.items()}
    assert dict(parse_hints(annotations).trigger_metrics) == {
        "jobs": "list length",
        "grown": "stream length",
        "held": "pending entries",
        "behind": "lag",
    }
