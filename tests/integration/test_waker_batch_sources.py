"""Batched measurements (the waker's poll) equal one-by-one measurements, for far fewer requests."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.rig.kafka import Kafka
from tidescale.sources.base import Measurement, MeasurementFailure, Scope
from tidescale.sources.kafka._source import KafkaSettings, KafkaSource, parse_kafka_settings

pytestmark = pytest.mark.rig

GROUPS = 12
PARTITIONS = 4


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _topic(kafka: Kafka, partitions: int, messages_per_partition: int) -> str:
    topic = _name("batch")
    await asyncio.to_thread(kafka.create_topic, topic, partitions)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
    await producer.start()
    try:
        for partition in range(partitions):
            for i in range(messages_per_partition):
                await producer.send(topic, f"{i}".encode(), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()
    return topic


async def _commit(kafka: Kafka, group: str, offsets: dict[tuple[str, int], int]) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(t, p) for t, p in offsets])
        await consumer.commit({TopicPartition(t, p): o for (t, p), o in offsets.items()})
    finally:
        await consumer.stop()


def _settings(kafka: Kafka, group: str, **fields: str) -> KafkaSettings:
    return parse_kafka_settings(
        "kafka", {"bootstrap-servers": kafka.bootstrap, "consumer-group": group, **fields}
    )


async def _varied_triggers(kafka: Kafka) -> list[KafkaSettings]:
    """Groups with different lags on two topics, named and unnamed topics, and both reset policies."""
    first, second = await _topic(kafka, PARTITIONS, 6), await _topic(kafka, PARTITIONS, 3)
    triggers: list[KafkaSettings] = []
    for i in range(GROUPS):
        group = _name(f"batch-{i}")
        if i % 4 != 3:  # every fourth group never committed: the reset policy decides
            await _commit(kafka, group, {(first, p): min(6, i + p) for p in range(PARTITIONS)})
        policy = "earliest" if i % 2 else "latest"
        if i % 3 == 0 and i % 4 != 3:
            triggers.append(_settings(kafka, group))  # topics: whatever the group committed
        else:
            topics = f"{first},{second}" if i % 2 else first
            triggers.append(_settings(kafka, group, topic=topics, **{"offset-reset-policy": policy}))
    # Two triggers of one group on different partitions: the group is still fetched once.
    shared = triggers[1].consumer_group
    triggers.append(_settings(kafka, shared, topic=first, partitions="0,1"))
    return triggers


async def test_a_batch_of_kafka_triggers_measures_what_each_measured_alone_measures(kafka: Kafka) -> None:
    triggers = await _varied_triggers(kafka)
    source = KafkaSource(triggers[0])
    try:
        alone = {s: await source.measure(s, Scope.GROUP) for s in triggers}
        batch = await source.measure_many(triggers)
    finally:
        await source.close()
    assert set(batch) == set(triggers)
    for settings in triggers:
        together = batch[settings]
        assert isinstance(together, Measurement), together
        single = alone[settings]
        assert (together.value, together.active, together.replica_cap, dict(together.detail)) == (
            single.value,
            single.active,
            single.replica_cap,
            dict(single.detail),
        ), settings.consumer_group
    assert any(m.active for m in alone.values())
    assert not all(m.active for m in alone.values())


async def test_a_batch_costs_three_broker_requests_per_round_not_three_per_trigger(
    kafka: Kafka,
) -> None:
    topic = await _topic(kafka, PARTITIONS, 2)
    triggers = []
    for i in range(40):
        group = _name(f"cost-{i}")
        await _commit(kafka, group, {(topic, p): 2 for p in range(PARTITIONS)})
        triggers.append(_settings(kafka, group, topic=topic))
    one_by_one, batched = KafkaSource(triggers[0]), KafkaSource(triggers[0])
    try:
        for source in (one_by_one, batched):  # warm: coordinators and metadata cached
            await source.measure_many(triggers)
        before = one_by_one.requests
        for settings in triggers:
            await one_by_one.measure(settings, Scope.GROUP)
        single_requests = one_by_one.requests - before
        before = batched.requests
        results = await batched.measure_many(triggers)
        batch_requests = batched.requests - before
    finally:
        await one_by_one.close()
        await batched.close()
    assert all(isinstance(r, Measurement) and not r.active for r in results.values())
    # The rig has one broker: it coordinates every group and leads every partition. A round is
    # one OffsetFetch and two ListOffsets (log-end, which also probes for partitions added, and
    # log-start), whatever the number of triggers; the layout comes from the cache.
    assert single_requests == 3 * len(triggers)
    assert batch_requests == 3


async def test_a_missing_topic_fails_only_the_triggers_that_name_it(kafka: Kafka) -> None:
    topic = await _topic(kafka, 1, 2)
    group = _name("partial")
    await _commit(kafka, group, {(topic, 0): 0})
    good = _settings(kafka, group, topic=topic)
    missing = _settings(kafka, group, topic=_name("absent"))
    never_committed = _settings(kafka, _name("nothing"))
    source = KafkaSource(good)
    try:
        results = await source.measure_many([good, missing, never_committed])
    finally:
        await source.close()
    measured, absent = results[good], results[missing]
    assert isinstance(measured, Measurement)
    assert measured.value == 2
    assert isinstance(absent, MeasurementFailure)
    assert "has no topic" in absent.error
    failure = results[never_committed]
    assert isinstance(failure, MeasurementFailure)
    assert "no committed offsets" in failure.error


async def test_a_batch_against_an_unreachable_cluster_fails_every_trigger_without_raising() -> None:
    nowhere = parse_kafka_settings(
        "kafka", {"bootstrap-servers": "127.0.0.1:9", "consumer-group": "g", "timeout": "2s"}
    )
    other = parse_kafka_settings(
        "kafka", {"bootstrap-servers": "127.0.0.1:9", "consumer-group": "h", "timeout": "2s"}
    )
    source = KafkaSource(nowhere)
    try:
        results = await source.measure_many([nowhere, other])
    finally:
        await source.close()
    assert set(results) == {nowhere, other}
    assert all(isinstance(r, MeasurementFailure) for r in results.values())
