"""Kafka source errors that must never escape as anything but a SourceError (no broker needed)."""

from __future__ import annotations

from typing import Any

import pytest

from tidescale.errors import SourceError, SourceNotFound
from tidescale.sources.base import MeasurementFailure, Scope
from tidescale.sources.kafka._source import KafkaSettings, KafkaSource, assemble_snapshot, kafka_measurement
from tidescale.sources.registry import measure_safely

SETTINGS = KafkaSettings(name="kafka", bootstrap_servers=("k:9092",), consumer_group="g", topics=("orders",))


def test_a_partition_missing_from_the_list_offsets_answer_is_read_not_a_key_error() -> None:
    snapshot = assemble_snapshot(
        SETTINGS,
        layout={"orders": 2},
        wanted=(("orders", 0), ("orders", 1)),
        committed={("orders", 0): 5, ("orders", 1): 5},
        log_end={("orders", 0): 9},
        log_start={},
        scope=Scope.GROUP,
    )
    assert [p.log_end for p in snapshot.partitions] == [9, None]
    m = kafka_measurement(snapshot, SETTINGS, taken_at=0.0)
    assert m.detail == {"orders/0": 4.0, "orders/1": 0.0}


async def test_an_unexpected_exception_while_measuring_is_a_measurement_failure() -> None:
    source = KafkaSource(SETTINGS)

    async def broken(settings: KafkaSettings, scope: Scope) -> Any:
        raise ValueError("sasl_plain_username required for PLAIN sasl")

    source._snapshot = broken  # type: ignore[method-assign]
    reading = await measure_safely(source, SETTINGS, Scope.GROUP)
    assert isinstance(reading, MeasurementFailure)
    assert "sasl_plain_username required" in reading.error
    assert "group 'g'" in reading.error


async def test_an_unexpected_exception_in_a_batch_fails_its_triggers_not_the_caller() -> None:
    source = KafkaSource(SETTINGS)

    async def broken(batch: Any) -> Any:
        raise KeyError(("orders", 3))

    source._snapshot_batch = broken  # type: ignore[method-assign]
    results = await source.measure_many([SETTINGS])
    assert isinstance(results[SETTINGS], MeasurementFailure)


def test_a_group_whose_offsets_expired_is_measured_on_the_topics_last_seen() -> None:
    source = KafkaSource(SETTINGS)
    assert source._topics_of_group("g", {("orders", 0): 3, ("refunds", 1): None}) == ("orders", "refunds")
    assert source._topics_of_group("g", {}) == ("orders", "refunds")


def test_a_group_never_seen_with_offsets_asks_for_a_topic() -> None:
    source = KafkaSource(SETTINGS)
    with pytest.raises(SourceNotFound, match="set topic"):
        source._topics_of_group("g", {})
    assert issubclass(SourceNotFound, SourceError)


async def test_a_lost_connection_to_the_coordinator_makes_the_next_measurement_look_it_up_again() -> None:
    """A broker of a cluster is killed: the group's coordinator moves to another broker. The source
    must not keep asking the dead one."""
    from aiokafka.errors import KafkaConnectionError

    source = KafkaSource(SETTINGS)
    source._coordinators["g"] = 2
    asked: list[int] = []

    async def dead_coordinator(settings: KafkaSettings, scope: Scope) -> Any:
        asked.append(source._coordinators.get("g", -1))
        raise KafkaConnectionError("Connection at 10.213.1.1:9093 closed")

    source._snapshot = dead_coordinator  # type: ignore[method-assign]
    reading = await measure_safely(source, SETTINGS, Scope.GROUP)
    assert isinstance(reading, MeasurementFailure)
    assert "lost the connection to a broker" in reading.error
    assert asked == [2]
    assert "g" not in source._coordinators
