"""RabbitMQ: the settings parser and the queue arithmetic (no broker)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidescale.errors import HintsInvalid, SourceError
from tidescale.sources.rabbitmq._source import (
    LocalShare,
    QueueStats,
    RabbitMQSettings,
    RabbitMQSnapshot,
    own_channels,
    parse_rabbitmq_settings,
    queue_stats_from_api,
    rabbitmq_measurement,
)

HTTP = {"management-url": "http://rabbit:15672", "queue": "orders"}
BASE = RabbitMQSettings(name="rabbitmq", management_url="http://rabbit:15672", queue="orders")


def _problems(raw: dict[str, str]) -> dict[str, str]:
    with pytest.raises(HintsInvalid) as caught:
        parse_rabbitmq_settings("jobs", raw)
    return {p.annotation: str(p) for p in caught.value.problems}


# -- settings ---------------------------------------------------------------------------------------


def test_defaults_match_the_contract() -> None:
    s = parse_rabbitmq_settings("rabbitmq", HTTP)
    assert s == BASE
    assert (s.vhost, s.mode, s.value, s.activation_value, s.exclude_unacknowledged, s.timeout) == (
        "/",
        "queue-length",
        20.0,
        0.0,
        False,
        5.0,
    )


def test_every_field_parses_to_its_type() -> None:
    s = parse_rabbitmq_settings(
        "jobs",
        {
            "management-url": "https://rabbit.example:15671/prefix",
            "amqp-url": "amqps://worker@rabbit.example:5671",
            "vhost": "orders",
            "queue-pattern": "orders-.*",
            "operation": "MAX",
            "mode": "message-rate",
            "value": "7.5",
            "activation-value": "1",
            "exclude-unacknowledged": "true",
            "username-env": "RABBIT_USER",
            "password-file": "/creds/password",
            "credentials-secret": "rabbit-creds",
            "timeout": "3s",
        },
    )
    assert (s.vhost, s.queue, s.queue_pattern, s.operation, s.mode) == (
        "orders",
        None,
        "orders-.*",
        "max",
        "message-rate",
    )
    assert (s.value, s.activation_value, s.exclude_unacknowledged, s.timeout) == (7.5, 1.0, True, 3.0)
    assert (s.username_env, s.password_file, s.credentials_secret) == (
        "RABBIT_USER",
        "/creds/password",
        "rabbit-creds",
    )


def test_a_url_with_a_password_is_refused_without_echoing_the_password() -> None:
    problems = _problems({**HTTP, "management-url": "http://admin:hunter2@rabbit:15672"})
    message = problems["tidescale.io/jobs.management-url"]
    assert "hunter2" not in message
    assert "without a password" in message


def test_a_location_is_required() -> None:
    assert "tidescale.io/jobs.management-url" in _problems({"queue": "orders"})


def test_exactly_one_of_queue_and_queue_pattern() -> None:
    assert "tidescale.io/jobs.queue" in _problems({"management-url": "http://r:15672"})
    assert "tidescale.io/jobs.queue-pattern" in _problems({**HTTP, "queue-pattern": "o.*"})


def test_patterns_and_rates_need_the_management_api() -> None:
    problems = _problems({"amqp-url": "amqp://r", "queue-pattern": "o.*", "mode": "message-rate"})
    assert {"tidescale.io/jobs.queue-pattern", "tidescale.io/jobs.mode"} <= set(problems)


def test_an_unknown_field_suggests_the_closest_known_one() -> None:
    problems = _problems({**HTTP, "queueName": "x"})
    assert 'did you mean "tidescale.io/jobs.queue' in problems["tidescale.io/jobs.queueName"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("management-url", "ftp://rabbit"),
        ("amqp-url", "http://rabbit"),
        ("value", "0"),
        ("activation-value", "-1"),
        ("mode", "queue_length"),
        ("exclude-unacknowledged", "maybe"),
        ("timeout", "forever"),
        ("password-env", "A-B"),
    ],
)
def test_a_malformed_value_is_refused(field: str, value: str) -> None:
    assert f"tidescale.io/jobs.{field}" in _problems({**HTTP, field: value})


def test_triggers_on_one_management_api_share_a_cluster_key() -> None:
    a = parse_rabbitmq_settings("a", HTTP)
    b = parse_rabbitmq_settings(
        "b", {"management-url": "http://rabbit:15672/", "queue": "other", "vhost": "x"}
    )
    assert a.cluster_key == b.cluster_key
    assert (
        a.cluster_key != parse_rabbitmq_settings("c", {"amqp-url": "amqp://rabbit", "queue": "q"}).cluster_key
    )


# -- arithmetic -------------------------------------------------------------------------------------


def _queue(
    name: str = "orders", ready: int = 0, unacked: int | None = 0, rate: float | None = None
) -> QueueStats:
    return QueueStats(name=name, ready=ready, unacked=unacked, consumers=1, publish_rate=rate)


def _measure(
    settings: RabbitMQSettings, *queues: QueueStats, via: str = "management", local: LocalShare | None = None
):
    return rabbitmq_measurement(RabbitMQSnapshot(queues=queues, via=via, local=local), settings, 3.0)  # type: ignore[arg-type]


def test_unacknowledged_messages_count_by_default() -> None:
    m = _measure(BASE, _queue(ready=5, unacked=7))
    assert (m.value, m.target, m.active) == (12.0, 20.0, True)


def test_in_flight_work_alone_keeps_the_trigger_active() -> None:
    assert _measure(BASE, _queue(ready=0, unacked=1)).active


def test_exclude_unacknowledged_counts_ready_messages_only() -> None:
    assert _measure(replace(BASE, exclude_unacknowledged=True), _queue(ready=5, unacked=7)).value == 5.0


def test_amqp_counts_ready_messages_only() -> None:
    assert _measure(BASE, _queue(ready=5, unacked=None), via="amqp").value == 5.0


def test_message_rate_is_the_publish_rate() -> None:
    settings = replace(BASE, mode="message-rate")
    assert _measure(settings, _queue(ready=500, rate=3.5)).value == 3.5
    assert _measure(settings, _queue(ready=500, rate=None)).value == 0.0


def test_message_rate_stays_active_while_a_backlog_remains_after_publishing_stops() -> None:
    settings = replace(BASE, mode="message-rate", activation_value=2)
    m = _measure(settings, _queue(ready=3, unacked=0, rate=None))
    assert (m.value, m.active, m.detail["total:backlog"]) == (0.0, True, 3.0)
    assert not _measure(settings, _queue(ready=2, unacked=0, rate=None)).active
    assert not _measure(settings, _queue(ready=0, unacked=0, rate=1.0)).active


def test_message_rate_backlog_counts_messages_in_flight_unless_excluded() -> None:
    settings = replace(BASE, mode="message-rate")
    assert _measure(settings, _queue(ready=0, unacked=1, rate=0.0)).active
    assert not _measure(replace(settings, exclude_unacknowledged=True), _queue(ready=0, unacked=1)).active


@given(
    queues=st.lists(
        st.tuples(st.integers(0, 1000), st.integers(0, 1000), st.none() | st.floats(0, 1000)),
        min_size=1,
        max_size=10,
    ),
    activation=st.integers(0, 1000),
    operation=st.sampled_from(["sum", "avg", "max"]),
)
def test_message_rate_is_active_whenever_queue_length_mode_would_be(
    queues: list[tuple[int, int, float | None]], activation: int, operation: str
) -> None:
    stats = [_queue(f"q{i}", ready=r, unacked=u, rate=rate) for i, (r, u, rate) in enumerate(queues)]
    by_length = replace(
        BASE, queue=None, queue_pattern=".*", operation=operation, activation_value=activation
    )  # type: ignore[arg-type]
    by_rate = replace(by_length, mode="message-rate")
    if _measure(by_length, *stats).active:
        assert _measure(by_rate, *stats).active


def test_activation_is_strictly_above_the_activation_value() -> None:
    settings = replace(BASE, activation_value=4)
    assert not _measure(settings, _queue(ready=4)).active
    assert _measure(settings, _queue(ready=5)).active


@pytest.mark.parametrize(("operation", "expected"), [("sum", 12.0), ("avg", 4.0), ("max", 9.0)])
def test_pattern_queues_combine_by_operation(operation: str, expected: float) -> None:
    settings = replace(BASE, queue=None, queue_pattern="q.*", operation=operation)  # type: ignore[arg-type]
    m = _measure(settings, _queue("q1", ready=1), _queue("q2", ready=2), _queue("q3", ready=9))
    assert m.value == expected
    assert m.detail == {"q1": 1.0, "q2": 2.0, "q3": 9.0}


@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), min_size=1, max_size=30))
def test_avg_lies_between_zero_and_max_and_sum_is_the_total(counts: list[tuple[int, int]]) -> None:
    queues = [_queue(f"q{i}", ready=r, unacked=u) for i, (r, u) in enumerate(counts)]
    by = {
        op: _measure(replace(BASE, queue=None, queue_pattern=".*", operation=op), *queues).value  # type: ignore[arg-type]
        for op in ("sum", "avg", "max")
    }
    assert by["sum"] == sum(r + u for r, u in counts)
    assert 0 <= by["avg"] <= by["max"] <= by["sum"]


def test_the_local_share_appears_in_the_detail_and_not_in_the_value() -> None:
    m = _measure(BASE, _queue(ready=3, unacked=2), local=LocalShare(consumers=2, unacked=2, deliver_rate=1.5))
    assert m.value == 5.0
    assert m.detail == {
        "orders": 5.0,
        "local:consumers": 2.0,
        "local:unacked": 2.0,
        "local:deliver-rate": 1.5,
    }


def test_queue_stats_read_the_management_payload() -> None:
    payload = {
        "name": "orders",
        "messages": 12,
        "messages_ready": 5,
        "messages_unacknowledged": 7,
        "consumers": 3,
        "message_stats": {"publish_details": {"rate": 2.5}},
    }
    assert queue_stats_from_api(payload) == QueueStats(
        name="orders", ready=5, unacked=7, consumers=3, publish_rate=2.5
    )


@pytest.mark.parametrize(
    "payload",
    [
        {"name": "fresh"},
        {"name": "fresh", "messages_ready": 3},
        {"name": "fresh", "messages_unacknowledged": 0},
    ],
)
def test_a_queue_without_statistics_fails_the_measurement_rather_than_reading_as_empty(
    payload: dict[str, object],
) -> None:
    stats = queue_stats_from_api(payload)
    assert not stats.known
    with pytest.raises(SourceError, match="no message counts yet for queue 'fresh'"):
        _measure(replace(BASE, activation_value=5), stats, _queue("seen", ready=1))


def test_known_empty_queues_are_inactive() -> None:
    m = _measure(BASE, queue_stats_from_api({"name": "q", "messages_ready": 0, "messages_unacknowledged": 0}))
    assert not m.active


def test_a_queue_that_never_saw_a_publish_has_no_rate_but_known_counts() -> None:
    payload = {"name": "idle", "messages_ready": 0, "messages_unacknowledged": 0, "consumers": 1}
    assert queue_stats_from_api(payload) == QueueStats(name="idle", ready=0, unacked=0, consumers=1)


def test_own_channels_are_those_whose_peer_is_the_pod() -> None:
    consumers = [
        {"channel_details": {"name": "10.0.0.5:1 -> 10.0.0.1:5672 (1)", "peer_host": "10.0.0.5"}},
        {"channel_details": {"name": "10.0.0.6:1 -> 10.0.0.1:5672 (1)", "peer_host": "10.0.0.6"}},
        {"channel_details": {"name": "10.0.0.5:1 -> 10.0.0.1:5672 (1)", "peer_host": "10.0.0.5"}},
        {"channel_details": []},
    ]
    assert own_channels(consumers, "10.0.0.5") == ["10.0.0.5:1 -> 10.0.0.1:5672 (1)"] * 2


# -- migration traps ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "vhost"),
    [
        ("amqp://rabbit:5672", "/"),
        ("amqp://rabbit:5672/", "/"),
        ("amqp://rabbit:5672/orders", "orders"),
        ("amqps://rabbit/%2F", "/"),
        ("amqp://rabbit/team%2Forders", "team/orders"),
    ],
)
def test_the_vhost_is_read_from_the_amqp_url_path_as_keda_reads_it(url: str, vhost: str) -> None:
    assert parse_rabbitmq_settings("jobs", {"amqp-url": url, "queue": "q"}).vhost == vhost


def test_a_vhost_hint_contradicting_the_amqp_url_path_is_refused() -> None:
    problems = _problems({"amqp-url": "amqp://rabbit/orders", "queue": "q", "vhost": "billing"})
    assert "'orders'" in problems["tidescale.io/jobs.vhost"]
    s = parse_rabbitmq_settings("jobs", {"amqp-url": "amqp://rabbit/orders", "queue": "q", "vhost": "orders"})
    assert s.vhost == "orders"


def test_queue_match_defaults_to_whole_names_and_takes_substring() -> None:
    plain = parse_rabbitmq_settings("jobs", {"management-url": "http://r:15672", "queue-pattern": "o"})
    assert plain.queue_match == "whole"
    s = parse_rabbitmq_settings(
        "jobs", {"management-url": "http://r:15672", "queue-pattern": "o", "queue-match": "substring"}
    )
    assert s.queue_match == "substring"
    assert "tidescale.io/jobs.queue-match" in _problems({**HTTP, "queue-match": "substring"})


def test_queue_match_decides_which_names_a_pattern_selects() -> None:
    from tidescale.sources._fields import compile_linear
    from tidescale.sources.rabbitmq._source import _matches

    pattern = compile_linear("orders")
    names = ["orders", "orders-dlq", "old-orders", "refunds"]
    whole = replace(BASE, queue=None, queue_pattern="orders")
    substring = replace(whole, queue_match="substring")
    assert [n for n in names if _matches(pattern, n, whole)] == ["orders"]
    assert [n for n in names if _matches(pattern, n, substring)] == ["orders", "orders-dlq", "old-orders"]


def test_a_stream_queue_is_refused_with_the_reason() -> None:
    payload = {"name": "events", "type": "stream", "messages_ready": 900, "messages_unacknowledged": 0}
    with pytest.raises(SourceError, match="is a stream"):
        queue_stats_from_api(payload)


@pytest.mark.parametrize("kind", ["classic", "quorum"])
def test_classic_and_quorum_queues_are_measured(kind: str) -> None:
    payload = {"name": "jobs", "type": kind, "messages_ready": 4, "messages_unacknowledged": 1}
    assert queue_stats_from_api(payload).messages == 5


# -- TLS and EXTERNAL ---------------------------------------------------------------------------------


def test_tls_files_need_a_tls_url_and_the_certificate_its_key() -> None:
    problems = _problems({**HTTP, "tls-ca-file": "/tls/ca.crt", "tls-cert-file": "/tls/tls.crt"})
    assert "https:// or amqps://" in problems["tidescale.io/jobs.tls-ca-file"]
    assert "go together" in problems["tidescale.io/jobs.tls-key-file"]
    s = parse_rabbitmq_settings(
        "jobs",
        {
            "amqp-url": "amqps://worker@rabbit:5671",
            "queue": "q",
            "tls-ca-file": "/tls/ca.crt",
            "tls-cert-file": "/tls/tls.crt",
            "tls-key-file": "/tls/tls.key",
        },
    )
    assert (s.tls_ca_file, s.tls_cert_file, s.tls_key_file, s.auth_mechanism) == (
        "/tls/ca.crt",
        "/tls/tls.crt",
        "/tls/tls.key",
        "plain",
    )


def test_external_login_needs_amqps_without_management_and_a_client_certificate() -> None:
    problems = _problems({**HTTP, "auth-mechanism": "external"})
    assert "amqps:// amqp-url and no management-url" in problems["tidescale.io/jobs.auth-mechanism"]
    assert "tidescale.io/jobs.tls-cert-file" in problems
    s = parse_rabbitmq_settings(
        "jobs",
        {
            "amqp-url": "amqps://rabbit:5671",
            "queue": "q",
            "auth-mechanism": "external",
            "tls-cert-file": "/tls/tls.crt",
            "tls-key-file": "/tls/tls.key",
        },
    )
    assert s.auth_mechanism == "external"


def test_a_key_password_needs_the_key_it_decrypts_and_comes_from_one_place() -> None:
    tls = {"amqp-url": "amqps://worker@rabbit:5671", "queue": "q"}
    problems = _problems({**tls, "tls-key-password-env": "KEY_PASSWORD"})
    assert "together with tls-key-file" in problems["tidescale.io/jobs.tls-key-password-env"]
    pair = {"tls-cert-file": "/tls/tls.crt", "tls-key-file": "/tls/tls.key"}
    both = _problems({**tls, **pair, "tls-key-password-env": "P", "tls-key-password-file": "/tls/pw"})
    assert "not both" in both["tidescale.io/jobs.tls-key-password-file"]
    s = parse_rabbitmq_settings("jobs", {**tls, **pair, "tls-key-password-file": "/tls/pw"})
    assert (s.tls_key_password_file, s.tls_key_password_env) == ("/tls/pw", None)


# -- a pattern matching no queue --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["queue-length", "message-rate"])
def test_a_pattern_matching_no_queue_reads_zero_idle_and_carries_its_warning(mode: str) -> None:
    from tidescale.sources.base import MeasurementWarning

    settings = replace(BASE, queue=None, queue_pattern="orders-.*", mode=mode)  # type: ignore[arg-type]
    warning = MeasurementWarning(
        reason="NoQueueMatched", message="queue-pattern 'orders-.*' matches no queue"
    )
    m = rabbitmq_measurement(
        RabbitMQSnapshot(queues=(), via="management", warnings=(warning,)), settings, 1.0
    )
    assert (m.value, m.active, m.warnings) == (0.0, False, (warning,))
