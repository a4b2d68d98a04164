"""Our Kafka lag against Kafka's own consumer-group tool, on the rig's real broker."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from tests.rig.kafka import GroupRow, Kafka
from tidescale.errors import BrokerUnreachable, SourceNotFound, SourceTimeout
from tidescale.sources.base import Measurement, Scope
from tidescale.sources.kafka import KafkaSettings, KafkaSource, parse_kafka_settings
from tidescale.sources.registry import SourcePool, measure_safely

pytestmark = pytest.mark.rig

PRODUCED = {0: 9, 1: 4, 2: 7, 3: 0}


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _settings(kafka: Kafka, group: str, **fields: str) -> KafkaSettings:
    return parse_kafka_settings(
        "kafka", {"bootstrap-servers": kafka.bootstrap, "consumer-group": group, **fields}
    )


async def _measure(
    kafka: Kafka, settings: KafkaSettings, scope: Scope, *, pod_ip: str | None = None
) -> Measurement:
    source = KafkaSource(settings, pod_ip=pod_ip)
    try:
        return await source.measure(settings, scope)
    finally:
        await source.close()


async def _topic_with_messages(kafka: Kafka, produced: dict[int, int] = PRODUCED) -> str:
    topic = _name("lag")
    await asyncio.to_thread(kafka.create_topic, topic, len(produced))
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
    await producer.start()
    try:
        for partition, count in produced.items():
            for i in range(count):
                await producer.send(topic, f"{i}".encode(), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()
    return topic


@asynccontextmanager
async def _members(
    kafka: Kafka, topic: str, group: str, client_ids: list[str]
) -> AsyncIterator[list[AIOKafkaConsumer]]:
    """Group members that have joined and own every partition between them; nothing is committed."""
    consumers = [
        AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka.bootstrap,
            group_id=group,
            client_id=client_id,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=30000,
        )
        for client_id in client_ids
    ]
    for consumer in consumers:
        await consumer.start()
    try:
        partitions = len(PRODUCED)
        for _ in range(100):
            await asyncio.gather(*(c.getmany(timeout_ms=100) for c in consumers))
            owned = [c.assignment() for c in consumers]
            if all(owned) and sum(len(a) for a in owned) == partitions:
                break
        else:
            pytest.fail(f"the group never settled: assignments {[c.assignment() for c in consumers]}")
        yield consumers
    finally:
        for consumer in consumers:
            await consumer.stop()


async def _commit(kafka: Kafka, group: str, offsets: dict[TopicPartition, int]) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))  # manual assignment: commits without joining the group
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


async def _tool(kafka: Kafka, group: str) -> list[GroupRow]:
    # In a thread: the JVM takes seconds and the members must keep heartbeating meanwhile.
    return await asyncio.to_thread(kafka.consumer_groups_describe, group)


async def test_per_partition_and_total_lag_equal_the_lag_column_of_kafkas_tool(kafka: Kafka) -> None:
    topic, group = await _topic_with_messages(kafka), _name("committed")
    await _commit(
        kafka, group, {TopicPartition(topic, 0): 3, TopicPartition(topic, 1): 4, TopicPartition(topic, 2): 1}
    )

    m = await _measure(kafka, _settings(kafka, group, topic=topic), Scope.GROUP)
    rows = await _tool(kafka, group)

    committed_rows = {f"{r.topic}/{r.partition}": r.lag for r in rows if r.lag is not None}
    assert committed_rows == {f"{topic}/0": 6, f"{topic}/1": 0, f"{topic}/2": 6}
    for key, lag in committed_rows.items():
        assert m.detail[key] == lag
    # Partition 3 has no committed offset: the tool prints "-", latest counts 1.
    assert m.detail[f"{topic}/3"] == 1
    assert m.value == sum(committed_rows.values()) + 1
    assert m.replica_cap == len(PRODUCED)


async def test_without_a_topic_every_topic_the_group_committed_is_measured(kafka: Kafka) -> None:
    topic, other = await _topic_with_messages(kafka), await _topic_with_messages(kafka)
    group = _name("all-topics")
    await _commit(kafka, group, {TopicPartition(t, p): 1 for t in (topic, other) for p in range(3)})

    m = await _measure(kafka, _settings(kafka, group), Scope.GROUP)
    rows = await _tool(kafka, group)

    tool = {f"{r.topic}/{r.partition}": r.lag for r in rows}
    assert {k for k, v in tool.items() if v is not None} == {
        f"{t}/{p}" for t in (topic, other) for p in range(3)
    }
    for key, lag in tool.items():
        assert m.detail[key] == (1 if lag is None else lag)
    assert m.value == sum(m.detail.values())


@pytest.mark.parametrize("policy", ["latest", "earliest"])
async def test_a_group_with_no_committed_offsets_follows_the_reset_policy(kafka: Kafka, policy: str) -> None:
    topic, group = await _topic_with_messages(kafka), _name(f"fresh-{policy}")
    # Retention-style trimming of partition 0: the 4 oldest messages are gone.
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(before_offset=4)})
    finally:
        await admin.close()

    async with _members(kafka, topic, group, ["fresh"]):
        rows = await _tool(kafka, group)
        m = await _measure(
            kafka, _settings(kafka, group, topic=topic, **{"offset-reset-policy": policy}), Scope.GROUP
        )

    assert all(r.current_offset is None and r.lag is None for r in rows)
    log_end = {f"{r.topic}/{r.partition}": r.log_end_offset for r in rows}
    assert log_end == {f"{topic}/{p}": n for p, n in PRODUCED.items()}
    if policy == "latest":
        assert m.detail == {key: 1.0 for key in log_end}
    else:
        # The fix: retained messages only, so partition 0 counts 9 - 4, not the 9 KEDA would.
        assert m.detail == {
            key: float(end - (4 if key.endswith("/0") else 0)) for key, end in log_end.items()
        }
    assert m.value == sum(m.detail.values())


async def test_local_scope_measures_only_the_partitions_of_this_pods_members(kafka: Kafka) -> None:
    topic, group = await _topic_with_messages(kafka), _name("local")
    await _commit(kafka, group, {TopicPartition(topic, p): 1 for p in range(3)})

    async with _members(kafka, topic, group, ["mine", "theirs"]):
        rows = await _tool(kafka, group)
        by_pattern = await _measure(
            kafka, _settings(kafka, group, **{"member-client-id-pattern": "mine"}), Scope.LOCAL
        )
        by_ip = await _measure(kafka, _settings(kafka, group, topic=topic), Scope.LOCAL, pod_ip=kafka.host)
        elsewhere = await _measure(
            kafka, _settings(kafka, group, topic=topic), Scope.LOCAL, pod_ip="10.213.255.254"
        )

    mine = {f"{r.topic}/{r.partition}": r.lag for r in rows if r.client_id == "mine"}
    assert mine
    assert by_pattern.detail == {key: float(1 if lag is None else lag) for key, lag in mine.items()}
    # Every member of this test connects from the node's address.
    assert set(by_ip.detail) == {f"{topic}/{p}" for p in PRODUCED}
    assert (elsewhere.value, elsewhere.detail, elsewhere.active) == (0.0, {}, False)
    # The cap is the topic's, not the pod's share.
    assert by_pattern.replica_cap == by_ip.replica_cap == len(PRODUCED)


async def test_persistent_lag_drops_out_of_the_metric_on_the_second_measurement(kafka: Kafka) -> None:
    topic, group = await _topic_with_messages(kafka), _name("persistent")
    await _commit(kafka, group, {TopicPartition(topic, 0): 2})
    settings = _settings(kafka, group, topic=topic, partitions="0", **{"exclude-persistent-lag": "true"})
    source = KafkaSource(settings)
    try:
        first = await source.measure(settings, Scope.GROUP)
        second = await source.measure(settings, Scope.GROUP)
        await _commit(kafka, group, {TopicPartition(topic, 0): 5})
        third = await source.measure(settings, Scope.GROUP)
    finally:
        await source.close()
    assert (first.value, first.active) == (7.0, True)
    assert (second.value, second.active) == (0.0, True)
    assert third.value == 4.0


async def test_steady_state_costs_two_requests_for_a_single_broker(kafka: Kafka) -> None:
    topic, group = await _topic_with_messages(kafka), _name("cost")
    await _commit(kafka, group, {TopicPartition(topic, 0): 1})
    settings = _settings(kafka, group, topic=topic)
    source = KafkaSource(settings)
    try:
        await source.measure(settings, Scope.GROUP)
        before = source.requests
        await source.measure(settings, Scope.GROUP)
        assert source.requests - before == 2  # OffsetFetch + one ListOffsets
    finally:
        await source.close()


async def test_the_pool_shares_one_connection_per_cluster_and_closes_it_with_the_last_trigger(
    kafka: Kafka,
) -> None:
    topic = await _topic_with_messages(kafka)
    first, second = _name("pool-a"), _name("pool-b")
    await _commit(kafka, first, {TopicPartition(topic, 0): 1})
    await _commit(kafka, second, {TopicPartition(topic, 0): 2})
    a = _settings(kafka, first, topic=topic, partitions="0")
    b = parse_kafka_settings(
        "other", {"bootstrap-servers": kafka.bootstrap, "consumer-group": second, "topic": topic}
    )
    pool = SourcePool()
    source = await pool.acquire(a)
    assert source is await pool.acquire(b)
    assert isinstance(source, KafkaSource)
    m_a, m_b = await asyncio.gather(source.measure(a, Scope.GROUP), source.measure(b, Scope.GROUP))
    assert (m_a.detail[f"{topic}/0"], m_b.detail[f"{topic}/0"]) == (8.0, 7.0)
    client = source._client
    await pool.release(a)
    assert source._client is client  # still in use by the other trigger
    await pool.release(b)
    assert source._client is None
    assert pool.open_clusters() == 0
    failure = await measure_safely(source, a, Scope.GROUP)
    assert "closed" in getattr(failure, "error", "")


async def test_an_unknown_topic_is_source_not_found_naming_it(kafka: Kafka) -> None:
    with pytest.raises(SourceNotFound, match="no-such-topic"):
        await _measure(kafka, _settings(kafka, _name("g"), topic="no-such-topic"), Scope.GROUP)


async def test_a_group_without_offsets_and_without_topic_is_source_not_found(kafka: Kafka) -> None:
    group = _name("empty")
    with pytest.raises(SourceNotFound, match=group):
        await _measure(kafka, _settings(kafka, group), Scope.GROUP)


async def test_a_closed_port_is_broker_unreachable_naming_the_server() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = parse_kafka_settings("k", {"bootstrap-servers": f"127.0.0.1:{port}", "consumer-group": "g"})
    source = KafkaSource(settings)
    try:
        with pytest.raises(BrokerUnreachable, match=f"127.0.0.1:{port}"):
            await source.measure(settings, Scope.GROUP)
    finally:
        await source.close()


async def test_a_broker_that_never_answers_is_a_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accept and say nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = parse_kafka_settings(
        "k", {"bootstrap-servers": f"127.0.0.1:{port}", "consumer-group": "g", "timeout": "1s"}
    )
    source = KafkaSource(settings)
    try:
        with pytest.raises(SourceTimeout, match="did not answer within 1s"):
            await source.measure(settings, Scope.GROUP)
    finally:
        await source.close()
        server.close()
