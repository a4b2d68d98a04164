"""Our Kafka lag against Kafka's own consumer-group tool, on the rig's real broker."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from tests.rig.kafka import GroupRow, Kafka, KafkaToolError
from tidescale.errors import BrokerUnreachable, SourceNotFound, SourceTimeout
from tidescale.sources.base import Measurement, Scope
from tidescale.sources.kafka._source import KafkaSettings, KafkaSource, parse_kafka_settings
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


async def test_persistent_lag_drops_out_of_the_metric_once_the_commit_stood_still_for_the_window(
    kafka: Kafka,
) -> None:
    topic, group = await _topic_with_messages(kafka), _name("persistent")
    await _commit(kafka, group, {TopicPartition(topic, 0): 2})
    settings = _settings(
        kafka,
        group,
        topic=topic,
        partitions="0",
        **{"exclude-persistent-lag": "true", "persistent-lag-window": "2s"},
    )
    source = KafkaSource(settings)
    try:
        first = await source.measure(settings, Scope.GROUP)
        soon = await source.measure(settings, Scope.GROUP)  # within the window: still counts
        await asyncio.sleep(2.1)
        later = await source.measure(settings, Scope.GROUP)
        await _commit(kafka, group, {TopicPartition(topic, 0): 5})
        moved = await source.measure(settings, Scope.GROUP)
    finally:
        await source.close()
    assert (first.value, first.active) == (7.0, True)
    assert (soon.value, soon.active) == (7.0, True)
    assert (later.value, later.active) == (0.0, True)
    assert moved.value == 4.0


async def test_steady_state_costs_three_requests_for_a_single_broker(kafka: Kafka) -> None:
    topic, group = await _topic_with_messages(kafka), _name("cost")
    await _commit(kafka, group, {TopicPartition(topic, 0): 1})
    settings = _settings(kafka, group, topic=topic)
    source = KafkaSource(settings)
    try:
        await source.measure(settings, Scope.GROUP)
        before = source.requests
        await source.measure(settings, Scope.GROUP)
        # OffsetFetch + ListOffsets latest and earliest; the layout comes from the cache (the
        # latest ListOffsets asks for the partition past it: partitions added are still seen).
        assert source.requests - before == 3
    finally:
        await source.close()


async def test_a_commit_below_log_start_counts_from_log_start_after_kafka_delete_records(
    kafka: Kafka,
) -> None:
    topic, group = await _topic_with_messages(kafka), _name("trimmed")
    await _commit(kafka, group, {TopicPartition(topic, p): 1 for p in range(3)})
    # Kafka's own tool trims partitions 0 and 2 past the commits (as retention would).
    plan = kafka.directory / f"{topic}-delete.json"
    plan.write_text(
        json.dumps(
            {
                "version": 1,
                "partitions": [
                    {"topic": topic, "partition": 0, "offset": 6},
                    {"topic": topic, "partition": 2, "offset": 7},
                ],
            }
        )
    )
    await asyncio.to_thread(
        kafka.run_tool,
        "org.apache.kafka.tools.DeleteRecordsCommand",
        "--bootstrap-server",
        kafka.bootstrap,
        "--offset-json-file",
        str(plan),
    )

    m = await _measure(kafka, _settings(kafka, group, topic=topic), Scope.GROUP)
    rows = {r.partition: r for r in await _tool(kafka, group) if r.topic == topic}

    # The tool's LAG is log-end minus the commit, deleted messages included: 9-1, 4-1, 7-1.
    assert {p: rows[p].lag for p in range(3)} == {0: 8, 1: 3, 2: 6}
    # What a consumer resuming there can still read: from log-start 6 and 7 on partitions 0 and 2.
    assert {p: m.detail[f"{topic}/{p}"] for p in range(3)} == {0: 3.0, 1: 3.0, 2: 0.0}
    assert m.value == 3 + 3 + 0 + 1  # partition 3 has no commit: 1 under latest


@pytest.mark.parametrize("via", ["measure", "batch"])
async def test_partitions_added_while_measuring_are_seen_by_the_next_measurement(
    kafka: Kafka, via: str
) -> None:
    topic, group = await _topic_with_messages(kafka), _name("grown")
    await _commit(kafka, group, {TopicPartition(topic, p): PRODUCED[p] for p in range(4)})
    settings = _settings(kafka, group, topic=topic)
    source = KafkaSource(settings)

    async def measure() -> Measurement:
        if via == "measure":
            return await source.measure(settings, Scope.GROUP)
        found = (await source.measure_many([settings]))[settings]
        assert isinstance(found, Measurement), found
        return found

    try:
        before = await measure()
        # Within the cached layout's 30 s: only the probe past the cached count can see the change.
        cached_at = source._metadata_at
        await asyncio.to_thread(
            kafka.run_tool,
            "org.apache.kafka.tools.TopicCommand",
            "--bootstrap-server",
            kafka.bootstrap,
            "--alter",
            "--topic",
            topic,
            "--partitions",
            "6",
        )
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
        await producer.start()
        try:
            for _ in range(5):
                await producer.send_and_wait(topic, b"new", partition=5)
        finally:
            await producer.stop()
        after = await measure()
        refreshed = source._metadata_at > cached_at
    finally:
        await source.close()
    assert refreshed
    assert (before.value, before.replica_cap, len(before.detail)) == (0.0, 4, 4)
    # Partitions 4 (empty) and 5 (5 new messages) have no commit: 1 each under latest. Kafka's tool
    # lists only the partitions a member-less group committed, so it has nothing to say of them.
    rows = {r.partition: r for r in await _tool(kafka, group) if r.topic == topic}
    assert {p: r.lag for p, r in rows.items()} == {p: 0 for p in range(4)}
    assert (after.detail[f"{topic}/4"], after.detail[f"{topic}/5"]) == (1.0, 1.0)
    assert (after.value, after.replica_cap, after.active) == (2.0, 6, True)


async def test_a_group_whose_offsets_expired_still_wakes_a_trigger_without_topic(kafka: Kafka) -> None:
    topic, group = await _topic_with_messages(kafka), _name("expired")
    await _commit(kafka, group, {TopicPartition(topic, p): PRODUCED[p] for p in range(4)})
    settings = _settings(kafka, group)
    source = KafkaSource(settings)
    try:
        caught_up = await source.measure(settings, Scope.GROUP)
        # What offsets.retention.minutes does to an empty group, done now by Kafka's own tool.
        await asyncio.to_thread(
            kafka.run_tool,
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            "--bootstrap-server",
            kafka.bootstrap,
            "--delete",
            "--group",
            group,
        )
        with pytest.raises(KafkaToolError, match="not found"):
            await _tool(kafka, group)
        expired = await source.measure(settings, Scope.GROUP)
        batched = (await source.measure_many([settings]))[settings]
    finally:
        await source.close()
    assert (caught_up.value, caught_up.active) == (0.0, False)
    # Every partition is uncommitted now: latest counts 1 each, so the trigger is active.
    assert expired.detail == {f"{topic}/{p}": 1.0 for p in range(4)}
    assert expired.active
    assert isinstance(batched, Measurement)
    assert batched.detail == expired.detail


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


async def test_read_committed_lag_reaches_zero_for_a_consumer_that_read_everything_it_can_see(
    kafka: Kafka,
) -> None:
    topic, group = _name("txn"), _name("txn-group")
    await asyncio.to_thread(kafka.create_topic, topic, 1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, transactional_id=_name("txn-producer"))
    await producer.start()
    open_transaction = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, transactional_id=_name("txn-open"))
    await open_transaction.start()
    try:
        # Offsets: 0-2 data, 3 commit marker; 4-5 aborted data, 6 abort marker; 7-8 data, 9 commit marker.
        for records, commit in ((3, True), (2, False), (2, True)):
            await producer.begin_transaction()
            for i in range(records):
                await producer.send_and_wait(topic, f"{i}".encode(), partition=0)
            await (producer.commit_transaction() if commit else producer.abort_transaction())
        # And a transaction still open at the tail (offset 10): above the last stable offset.
        await open_transaction.begin_transaction()
        await open_transaction.send_and_wait(topic, b"pending", partition=0)

        # What a read_committed consumer sees from offset 3: the two records of the last transaction.
        reader = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, isolation_level="read_committed")
        await reader.start()
        try:
            tp = TopicPartition(topic, 0)
            reader.assign([tp])
            reader.seek(tp, 3)
            seen = [r.offset for batch in (await reader.getmany(tp, timeout_ms=2000)).values() for r in batch]
        finally:
            await reader.stop()
        assert seen == [7, 8]

        settings = _settings(kafka, group, topic=topic, **{"isolation-level": "read-committed"})
        plain = _settings(kafka, group, topic=topic)
        source = KafkaSource(settings)
        readings: dict[int, tuple[float, float, float]] = {}
        try:
            # 3: after the first transaction; 9: after record 8, as an exactly-once consumer commits.
            for committed in (3, 9):
                await _commit(kafka, group, {TopicPartition(topic, 0): committed})
                rc = await source.measure(settings, Scope.GROUP)
                batched = (await source.measure_many([settings]))[settings]
                assert isinstance(batched, Measurement)
                ru = await source.measure(plain, Scope.GROUP)
                readings[committed] = (rc.value, batched.value, ru.value)
            rows = await _tool(kafka, group)
        finally:
            await source.close()
    finally:
        await open_transaction.abort_transaction()
        await open_transaction.stop()
        await producer.stop()

    assert readings[3] == (2.0, 2.0, 8.0)  # read-uncommitted counts markers, aborted and open records
    assert readings[9] == (0.0, 0.0, 2.0)
    # Kafka's tool counts to the high watermark, as read-uncommitted does.
    assert [(r.current_offset, r.log_end_offset, r.lag) for r in rows] == [(9, 11, 2)]
