"""Our Redis numbers against redis-cli's, on the rig's real redis-server, and its errors."""

from __future__ import annotations

import uuid

import pytest

from tests.rig.processes import Supervisor
from tests.rig.redis import LIMITED_USER, Redis
from tidescale.credentials import Credentials, CredentialsUnusable
from tidescale.errors import BrokerAuthFailed, BrokerUnreachable, SourceError, SourceNotFound
from tidescale.sources.base import Measurement, MeasurementFailure, Scope
from tidescale.sources.redis._length import UNKNOWN_LAG_KEY
from tidescale.sources.redis._settings import RedisSettings, parse_redis_settings
from tidescale.sources.redis._source import RedisSource

pytestmark = pytest.mark.rig

PASSWORD_ENV = "TIDESCALE_TEST_REDIS_PASSWORD"


def _key(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def login(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv(PASSWORD_ENV, redis.password)
    return {"password-env": PASSWORD_ENV}


def _settings(redis: Redis, login: dict[str, str], **fields: str) -> RedisSettings:
    raw = {"address": redis.address, **login, **{k.replace("_", "-"): v for k, v in fields.items()}}
    return parse_redis_settings("redis", raw)


async def _measure(settings: RedisSettings, credentials: Credentials | None = None) -> Measurement:
    source = RedisSource(settings, credentials=credentials)
    try:
        return await source.measure(settings, Scope.GROUP)
    finally:
        await source.close()


def _stream_with_a_group(redis: Redis, *, entries: int, delivered: int, acked: int) -> str:
    """A stream of ``entries`` entries; group ``workers`` created at its start has had ``delivered``
    of them delivered to one consumer, which acknowledged ``acked``."""
    stream = _key("orders")
    for number in range(entries):
        redis.cli("XADD", stream, "*", "n", str(number))
    redis.cli("XGROUP", "CREATE", stream, "workers", "0")
    if delivered:
        ids = redis.cli(
            "XREADGROUP", "GROUP", "workers", "c1", "COUNT", str(delivered), "STREAMS", stream, ">"
        )
        delivered_ids = [line for line in ids.splitlines() if "-" in line and line[0].isdigit()]
        for entry_id in delivered_ids[:acked]:
            redis.cli("XACK", stream, "workers", entry_id)
    return stream


async def test_a_list_length_is_what_redis_cli_llen_says(redis: Redis, login: dict[str, str]) -> None:
    key = _key("jobs")
    redis.cli("RPUSH", key, *[f"job-{n}" for n in range(17)])
    measured = await _measure(_settings(redis, login, list=key, activation_value="16"))
    assert measured.value == int(redis.cli("LLEN", key)) == 17
    assert measured.active


async def test_a_missing_list_key_reads_as_the_empty_list_redis_makes_of_it(
    redis: Redis, login: dict[str, str]
) -> None:
    key = _key("jobs")
    redis.cli("RPUSH", key, "one")
    redis.cli("LPOP", key)  # Redis deletes the list with its last element
    measured = await _measure(_settings(redis, login, list=key))
    assert redis.cli("EXISTS", key) == "0"
    assert (measured.value, measured.active) == (0.0, False)


@pytest.mark.parametrize(
    ("fill", "count"),
    [
        (("SADD", "a", "b", "c"), "SCARD"),
        (("ZADD", "1", "a", "2", "b"), "ZCARD"),
        (("HSET", "f1", "v", "f2", "v", "f3", "v", "f4", "v"), "HLEN"),
    ],
)
async def test_a_set_sorted_set_or_hash_under_the_list_key_counts_its_members(
    redis: Redis, login: dict[str, str], fill: tuple[str, ...], count: str
) -> None:
    key = _key("jobs")
    redis.cli(fill[0], key, *fill[1:])
    measured = await _measure(_settings(redis, login, list=key))
    assert measured.value == int(redis.cli(count, key)) > 0


async def test_stream_length_pending_and_lag_are_what_xlen_and_xinfo_groups_say(
    redis: Redis, login: dict[str, str]
) -> None:
    stream = _stream_with_a_group(redis, entries=9, delivered=5, acked=2)
    group = redis.xinfo_groups(stream)["workers"]
    length = await _measure(_settings(redis, login, stream=stream))
    pending = await _measure(_settings(redis, login, stream=stream, consumer_group="workers"))
    lag = await _measure(
        _settings(redis, login, stream=stream, consumer_group="workers", stream_metric="lag")
    )
    assert length.value == int(redis.cli("XLEN", stream)) == 9
    assert pending.value == int(group["pending"]) == 3
    assert lag.value == int(group["lag"]) == 4


async def test_a_lag_redis_cannot_compute_reads_as_the_stream_length_and_stays_active(
    redis: Redis, login: dict[str, str]
) -> None:
    stream = _stream_with_a_group(redis, entries=6, delivered=2, acked=2)
    # Deleting an entry the group has not read yet leaves Redis unable to count the lag.
    last = redis.cli("XREVRANGE", stream, "+", "-", "COUNT", "1").splitlines()[0]
    redis.cli("XDEL", stream, last)
    assert redis.xinfo_groups(stream)["workers"]["lag"] == ""
    settings = _settings(
        redis, login, stream=stream, consumer_group="workers", stream_metric="lag", activation_value="100"
    )
    measured = await _measure(settings)
    assert measured.value == int(redis.cli("XLEN", stream)) == 5
    assert measured.active
    assert measured.detail[UNKNOWN_LAG_KEY] == 1.0


async def test_a_group_not_created_yet_lags_by_the_whole_stream(redis: Redis, login: dict[str, str]) -> None:
    stream = _key("orders")
    redis.cli("XADD", stream, "*", "n", "1")
    redis.cli("XADD", stream, "*", "n", "2")
    measured = await _measure(
        _settings(redis, login, stream=stream, consumer_group="late", stream_metric="lag")
    )
    assert measured.value == int(redis.cli("XLEN", stream)) == 2


async def test_a_missing_stream_or_group_is_not_found(redis: Redis, login: dict[str, str]) -> None:
    with pytest.raises(SourceNotFound, match="no stream"):
        await _measure(_settings(redis, login, stream=_key("nowhere")))
    stream = _stream_with_a_group(redis, entries=1, delivered=0, acked=0)
    with pytest.raises(SourceNotFound, match="no consumer group 'other'"):
        await _measure(_settings(redis, login, stream=stream, consumer_group="other"))


async def test_a_stream_named_as_a_list_is_an_error_naming_its_type(
    redis: Redis, login: dict[str, str]
) -> None:
    stream = _stream_with_a_group(redis, entries=1, delivered=0, acked=0)
    with pytest.raises(SourceError, match="holds a stream"):
        await _measure(_settings(redis, login, list=stream))


async def test_a_key_in_another_database_is_measured_there(redis: Redis, login: dict[str, str]) -> None:
    key = _key("jobs")
    redis.cli("-n", "3", "RPUSH", key, "a", "b")
    assert (await _measure(_settings(redis, login, list=key, database="3"))).value == 2
    assert (await _measure(_settings(redis, login, list=key))).value == 0
    with pytest.raises(SourceNotFound, match="check database"):
        await _measure(_settings(redis, login, list=key, database="999"))


async def test_a_wrong_password_or_none_is_refused_by_name(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    with pytest.raises(BrokerAuthFailed, match="refused the login of user 'default'"):
        await _measure(_settings(redis, {"password-env": PASSWORD_ENV}, list="jobs"))
    with pytest.raises(BrokerAuthFailed, match="NOAUTH"):
        await _measure(_settings(redis, {}, list="jobs"))


async def test_a_user_whose_acl_lacks_a_command_is_refused_naming_the_command(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, redis.limited_password)
    login = {"password-env": PASSWORD_ENV, "username": LIMITED_USER}
    key = _key("jobs")
    redis.cli("RPUSH", key, "a")
    assert (await _measure(_settings(redis, login, list=key))).value == 1
    with pytest.raises(BrokerAuthFailed, match="refused XINFO GROUPS for user 'lister'"):
        await _measure(_settings(redis, login, stream="jobs-stream"))


async def test_the_waker_s_credentials_come_from_the_secret_and_a_missing_key_is_named(redis: Redis) -> None:
    key = _key("jobs")
    redis.cli("RPUSH", key, "a", "b", "c")
    settings = _settings(redis, {"credentials-secret": "redis-credentials"}, list=key)
    secret = Credentials.of("team-a", "redis-credentials", {"password": redis.password})
    assert (await _measure(settings, secret)).value == 3
    with pytest.raises(CredentialsUnusable, match="has no key 'password'"):
        await _measure(settings, Credentials.of("team-a", "redis-credentials", {"pass": "x"}))


async def test_a_server_down_is_unreachable_and_the_next_measurement_reconnects(
    redis: Redis, login: dict[str, str], rig_supervisor: Supervisor
) -> None:
    settings = _settings(redis, login, list=_key("jobs"), timeout="3s")
    source = RedisSource(settings)
    try:
        assert (await source.measure(settings, Scope.GROUP)).value == 0
        redis.stop_server()
        try:
            with pytest.raises(BrokerUnreachable, match=f"Redis at {redis.address}"):
                await source.measure(settings, Scope.GROUP)
        finally:
            redis.start_again(rig_supervisor)
        redis.cli("RPUSH", settings.key, "x")
        assert (await source.measure(settings, Scope.GROUP)).value == 1
    finally:
        await source.close()


async def test_a_batch_of_many_triggers_is_one_round_trip_and_a_missing_stream_fails_only_itself(
    redis: Redis, login: dict[str, str]
) -> None:
    lists = []
    for size in range(1, 11):
        key = _key("jobs")
        redis.cli("RPUSH", key, *["x"] * size)
        lists.append(_settings(redis, login, list=key))
    stream = _stream_with_a_group(redis, entries=4, delivered=3, acked=1)
    streams = [
        _settings(redis, login, stream=stream, consumer_group="workers", stream_metric=metric)
        for metric in ("length", "pending", "lag")
    ]
    missing = _settings(redis, login, stream=_key("nowhere"))
    source = RedisSource(lists[0])
    try:
        await source.measure(lists[0], Scope.GROUP)  # opens and logs in
        before = source.round_trips
        found = await source.measure_many([*lists, *streams, missing])
        assert source.round_trips - before == 1
    finally:
        await source.close()
    for settings in lists:
        result = found[settings]
        assert isinstance(result, Measurement)
        assert result.value == int(redis.cli("LLEN", settings.key))
    group = redis.xinfo_groups(stream)["workers"]
    values = [found[s] for s in streams]
    assert [v.value for v in values if isinstance(v, Measurement)] == [
        int(redis.cli("XLEN", stream)),
        int(group["pending"]),
        int(group["lag"]),
    ]
    failure = found[missing]
    assert isinstance(failure, MeasurementFailure)
    assert "no stream" in failure.error


async def test_tls_with_the_server_s_ca_measures_and_without_it_is_an_untrusted_certificate(
    redis: Redis, login: dict[str, str]
) -> None:
    assert redis.tls_ca is not None
    key = _key("jobs")
    redis.cli("RPUSH", key, "a", "b")
    tls = {"address": redis.tls_address, "enable-tls": "true"}
    trusted = {**tls, "tls-ca-file": str(redis.tls_ca.cert_file)}
    assert (await _measure(_settings(redis, login, list=key, **_fields(trusted)))).value == 2
    with pytest.raises(BrokerAuthFailed, match="not trusted"):
        await _measure(_settings(redis, login, list=key, **_fields(tls)))


def _fields(raw: dict[str, str]) -> dict[str, str]:
    """Hint fields as keyword arguments of ``_settings`` (which turns _ back into -)."""
    return {k.replace("-", "_"): v for k, v in raw.items()}
