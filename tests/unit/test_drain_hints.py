"""The drain-time and stall hints: what parses, into what, and what is refused with which words."""

from __future__ import annotations

import pytest

from tidescale.errors import HintsInvalid
from tidescale.hints import parse_hints, validate_hints

P = "tidescale.io/"
KAFKA = {
    P + "kafka.bootstrap-servers": "kafka-0.kafka:9092",
    P + "kafka.consumer-group": "billing",
    P + "kafka.topic": "orders",
}
RABBITMQ = {
    P + "jobs.type": "rabbitmq",
    P + "jobs.amqp-url": "amqp://rabbitmq:5672/",
    P + "jobs.queue": "jobs",
}


def test_a_kafka_trigger_takes_a_drain_time_target_beside_its_threshold() -> None:
    hints = parse_hints({**KAFKA, P + "kafka.drain-time": "1m30s", P + "kafka.lag-threshold": "50"})
    (settings,) = hints.triggers
    assert settings.drain_time == 90.0  # type: ignore[attr-defined]
    assert settings.lag_threshold == 50  # type: ignore[attr-defined]


def test_a_rabbitmq_trigger_takes_a_drain_time_target() -> None:
    (settings,) = parse_hints({**RABBITMQ, P + "jobs.drain-time": "45s"}).triggers
    assert settings.drain_time == 45.0  # type: ignore[attr-defined]


def test_without_a_drain_time_the_threshold_alone_decides() -> None:
    (settings,) = parse_hints(KAFKA).triggers
    assert settings.drain_time is None  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", ["60", "0s", "500ms", "25h", "soon", ""])
def test_a_drain_time_that_is_not_a_duration_from_a_second_to_a_day_is_refused(value: str) -> None:
    (problem,) = validate_hints({**KAFKA, P + "kafka.drain-time": value})
    assert problem.annotation == P + "kafka.drain-time"
    assert "a duration" in problem.expected
    assert "from 1s to 24h" in problem.expected


def test_stall_after_defaults_to_five_minutes() -> None:
    assert parse_hints(KAFKA).stall_after == 300.0


@pytest.mark.parametrize(("value", "seconds"), [("0", 0.0), ("0s", 0.0), ("10s", 10.0), ("2m", 120.0)])
def test_stall_after_takes_a_duration_or_zero_for_off(value: str, seconds: float) -> None:
    assert parse_hints({**KAFKA, P + "stall-after": value}).stall_after == seconds


@pytest.mark.parametrize("value", ["5s", "120", "-1m", "never", "2d"])
def test_a_stall_after_shorter_than_a_rebalance_or_not_a_duration_is_refused_naming_off(value: str) -> None:
    with pytest.raises(HintsInvalid) as caught:
        parse_hints({**KAFKA, P + "stall-after": value})
    (problem,) = caught.value.problems
    assert problem.annotation == P + "stall-after"
    assert problem.expected.startswith('"0" (off) or a duration')
    assert "from 10s" in problem.expected
