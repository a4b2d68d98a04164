"""The Kafka trigger's settings parser: defaults, every field, and every problem at once."""

from __future__ import annotations

import pytest

from tidescale.errors import HintsInvalid
from tidescale.sources.kafka._source import KafkaSettings, parse_kafka_settings

REQUIRED = {"bootstrap-servers": "kafka-0:9092, kafka-1:9092", "consumer-group": "workers"}


def _problems(raw: dict[str, str], trigger: str = "kafka") -> dict[str, str]:
    with pytest.raises(HintsInvalid) as caught:
        parse_kafka_settings(trigger, raw)
    return {p.annotation: str(p) for p in caught.value.problems}


def test_defaults_match_the_contract() -> None:
    s = parse_kafka_settings("kafka", REQUIRED)
    assert s == KafkaSettings(
        name="kafka", bootstrap_servers=("kafka-0:9092", "kafka-1:9092"), consumer_group="workers"
    )
    assert (s.lag_threshold, s.activation_lag_threshold, s.offset_reset_policy, s.timeout) == (
        10,
        0,
        "latest",
        5.0,
    )
    assert (s.topics, s.partitions, s.sasl) == ((), None, "none")


def test_every_field_parses_to_its_type() -> None:
    s = parse_kafka_settings(
        "orders",
        {
            **REQUIRED,
            "topic": "orders,refunds",
            "lag-threshold": "50",
            "activation-lag-threshold": "3",
            "offset-reset-policy": "Earliest",
            "exclude-persistent-lag": "true",
            "scale-to-zero-on-invalid-offset": "yes",
            "limit-to-partitions-with-lag": "true",
            "partitions": "0,2,10-12",
            "tls": "true",
            "tls-ca-file": "/tls/ca.crt",
            "tls-cert-file": "/tls/tls.crt",
            "tls-key-file": "/tls/tls.key",
            "sasl": "SCRAM-SHA-512",
            "sasl-username-env": "KAFKA_USER",
            "sasl-password-file": "/sasl/password",
            "credentials-secret": "kafka-creds",
            "member-client-id-pattern": "orders-.*",
            "timeout": "2500ms",
            "type": "kafka",
        },
    )
    assert s.name == "orders"
    assert s.topics == ("orders", "refunds")
    assert (s.lag_threshold, s.activation_lag_threshold, s.offset_reset_policy) == (50, 3, "earliest")
    assert (s.exclude_persistent_lag, s.scale_to_zero_on_invalid_offset, s.limit_to_partitions_with_lag) == (
        True,
        True,
        True,
    )
    assert s.partitions == frozenset({0, 2, 10, 11, 12})
    assert (s.tls, s.tls_ca_file, s.tls_cert_file, s.tls_key_file) == (
        True,
        "/tls/ca.crt",
        "/tls/tls.crt",
        "/tls/tls.key",
    )
    assert (s.sasl, s.sasl_username_env, s.sasl_password_file) == (
        "scram-sha-512",
        "KAFKA_USER",
        "/sasl/password",
    )
    assert (s.credentials_secret, s.member_client_id_pattern, s.timeout) == ("kafka-creds", "orders-.*", 2.5)


def test_settings_are_frozen_and_hashable() -> None:
    s = parse_kafka_settings("kafka", REQUIRED)
    with pytest.raises(AttributeError):
        s.lag_threshold = 3  # type: ignore[misc]
    assert hash(s) == hash(parse_kafka_settings("kafka", REQUIRED))


def test_all_problems_are_reported_at_once_each_naming_its_annotation() -> None:
    problems = _problems({"lag-threshold": "0", "timeout": "5", "topic": "a,,b"}, trigger="orders")
    assert set(problems) == {
        "tidescale.io/orders.bootstrap-servers",
        "tidescale.io/orders.consumer-group",
        "tidescale.io/orders.lag-threshold",
        "tidescale.io/orders.timeout",
        "tidescale.io/orders.topic",
    }
    assert "is missing" in problems["tidescale.io/orders.consumer-group"]
    assert "'0'" in problems["tidescale.io/orders.lag-threshold"]


def test_an_unknown_field_suggests_the_closest_known_one() -> None:
    problems = _problems({**REQUIRED, "lagThreshold": "5", "topics": "a"})
    assert 'did you mean "tidescale.io/kafka.lag-threshold"' in problems["tidescale.io/kafka.lagThreshold"]
    assert 'did you mean "tidescale.io/kafka.topic"' in problems["tidescale.io/kafka.topics"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("bootstrap-servers", "kafka-0"),
        ("bootstrap-servers", "kafka-0:99999"),
        ("consumer-group", "two words"),
        ("topic", "bad/topic"),
        ("activation-lag-threshold", "-1"),
        ("offset-reset-policy", "none"),
        ("partitions", "3-1"),
        ("sasl", "gssapi"),
        ("sasl-password-env", "1BAD"),
        ("tls-ca-file", "relative/ca.crt"),
        ("member-client-id-pattern", "(unclosed"),
        ("credentials-secret", "Not_A_Name"),
        ("timeout", "0s"),
    ],
)
def test_a_malformed_value_is_refused(field: str, value: str) -> None:
    assert f"tidescale.io/kafka.{field}" in _problems({**REQUIRED, field: value})


def test_brackets_make_an_ipv6_bootstrap_server() -> None:
    assert parse_kafka_settings(
        "kafka", {**REQUIRED, "bootstrap-servers": "[fd00::1]:9092"}
    ).bootstrap_servers == ("[fd00::1]:9092",)


def test_limit_to_partitions_with_lag_contradicts_idle_consumers() -> None:
    problems = _problems({**REQUIRED, "limit-to-partitions-with-lag": "true", "allow-idle-consumers": "true"})
    assert "tidescale.io/kafka.limit-to-partitions-with-lag" in problems


def test_sasl_needs_a_username_and_password_source() -> None:
    problems = _problems({**REQUIRED, "sasl": "plain"})
    assert {"tidescale.io/kafka.sasl-username-env", "tidescale.io/kafka.sasl-password-file"} <= set(problems)


def test_sasl_credentials_without_a_mechanism_are_refused() -> None:
    assert "tidescale.io/kafka.sasl" in _problems(
        {**REQUIRED, "sasl-username-env": "U", "sasl-password-env": "P"}
    )


def test_a_credentials_secret_alone_is_refused_for_sasl_because_the_agent_cannot_read_it() -> None:
    problems = _problems({**REQUIRED, "sasl": "plain", "credentials-secret": "kafka"})
    assert "credentials-secret serves the waker only" in problems["tidescale.io/kafka.sasl-username-env"]
    assert "credentials-secret serves the waker only" in problems["tidescale.io/kafka.sasl-password-file"]


def test_a_credentials_secret_beside_the_agents_own_sources_is_accepted_for_sasl() -> None:
    s = parse_kafka_settings(
        "kafka",
        {
            **REQUIRED,
            "sasl": "scram-sha-256",
            "sasl-username-env": "KAFKA_USER",
            "sasl-password-env": "KAFKA_PASSWORD",
            "credentials-secret": "kafka",
        },
    )
    assert (s.sasl, s.credentials_secret) == ("scram-sha-256", "kafka")


def test_the_persistent_lag_window_defaults_to_kedas_fifteen_seconds_and_parses_durations() -> None:
    assert parse_kafka_settings("kafka", REQUIRED).persistent_lag_window == 15.0
    assert (
        parse_kafka_settings("kafka", {**REQUIRED, "persistent-lag-window": "1m"}).persistent_lag_window == 60
    )
    assert "tidescale.io/kafka.persistent-lag-window" in _problems(
        {**REQUIRED, "persistent-lag-window": "0s"}
    )


def test_tls_files_need_tls_and_the_cert_needs_its_key() -> None:
    problems = _problems({**REQUIRED, "tls-cert-file": "/tls/tls.crt"})
    assert {"tidescale.io/kafka.tls-cert-file", "tidescale.io/kafka.tls-key-file"} <= set(problems)


def test_triggers_on_the_same_brokers_share_a_cluster_key() -> None:
    a = parse_kafka_settings("a", {**REQUIRED, "consumer-group": "one"})
    b = parse_kafka_settings("b", {"bootstrap-servers": "kafka-1:9092,kafka-0:9092", "consumer-group": "two"})
    c = parse_kafka_settings("c", {**REQUIRED, "tls": "true"})
    assert a.cluster_key == b.cluster_key != c.cluster_key


def test_a_key_password_source_needs_the_key_it_decrypts_and_only_one_source() -> None:
    alone = _problems({**REQUIRED, "tls": "true", "tls-key-password-env": "KEY_PASSWORD"})
    assert "tls-key-file" in alone["tidescale.io/kafka.tls-key-password-env"]
    both = _problems(
        {
            **REQUIRED,
            "tls": "true",
            "tls-cert-file": "/tls/tls.crt",
            "tls-key-file": "/tls/tls.key",
            "tls-key-password-env": "KEY_PASSWORD",
            "tls-key-password-file": "/tls/password",
        }
    )
    assert "not both" in both["tidescale.io/kafka.tls-key-password-file"]


def test_an_encrypted_client_key_with_its_password_source_parses() -> None:
    s = parse_kafka_settings(
        "kafka",
        {
            **REQUIRED,
            "tls": "true",
            "tls-cert-file": "/tls/tls.crt",
            "tls-key-file": "/tls/tls.key",
            "tls-key-password-file": "/tls/password",
        },
    )
    assert (s.tls_key_file, s.tls_key_password_file, s.tls_key_password_env) == (
        "/tls/tls.key",
        "/tls/password",
        None,
    )
