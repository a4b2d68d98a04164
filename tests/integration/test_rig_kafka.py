"""The rig's Kafka is a real broker: groups commit offsets, and its own tool agrees with a client."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tests.rig.kafka import GroupRow, Kafka, KafkaToolError, parse_group_table
from tests.rig.network import Network
from tests.rig.processes import Supervisor

PARTITIONS = 3
PRODUCED = {0: 4, 1: 3, 2: 3}  # messages sent to each partition


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _produce(kafka: Kafka, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
    await producer.start()
    try:
        for partition, count in PRODUCED.items():
            for i in range(count):
                await producer.send_and_wait(topic, f"{partition}:{i}".encode(), partition=partition)
    finally:
        await producer.stop()


async def _consume_and_commit(kafka: Kafka, topic: str, group: str, wanted: int) -> dict[int, int]:
    """Reads ``wanted`` messages as member of ``group``, commits, returns messages read per partition."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap,
        group_id=group,
        client_id="rig-test-consumer",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    read: dict[int, int] = {}
    try:
        async with asyncio.timeout(60):  # a broken broker fails the test instead of hanging it
            while sum(read.values()) < wanted:
                batch = await consumer.getmany(timeout_ms=2000, max_records=wanted - sum(read.values()))
                for tp, records in batch.items():
                    read[tp.partition] = read.get(tp.partition, 0) + len(records)
        await consumer.commit()
    finally:
        await consumer.stop()
    return read


async def _committed(kafka: Kafka, group: str) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in offsets.items()}


@pytest.mark.rig
async def test_committed_offsets_of_a_consumer_group_are_read_back_by_an_admin_client(kafka: Kafka) -> None:
    topic, group = _name("rig-orders"), _name("rig-group")
    kafka.create_topic(topic, PARTITIONS)
    await _produce(kafka, topic)

    read = await _consume_and_commit(kafka, topic, group, wanted=7)
    committed = await _committed(kafka, group)

    # A committed offset is the next offset to read: the count read from that partition.
    assert {tp.partition: offset for tp, offset in committed.items() if offset > 0} == {
        p: n for p, n in read.items() if n > 0
    }
    assert sum(committed.values()) == 7
    assert {tp.topic for tp in committed} == {topic}


@pytest.mark.rig
async def test_the_consumer_group_tool_agrees_with_the_admin_client(kafka: Kafka) -> None:
    topic, group = _name("rig-orders"), _name("rig-group")
    kafka.create_topic(topic, PARTITIONS)
    await _produce(kafka, topic)
    await _consume_and_commit(kafka, topic, group, wanted=5)
    committed = await _committed(kafka, group)

    rows = kafka.consumer_groups_describe(group)

    assert sorted(row.partition for row in rows) == list(range(PARTITIONS))
    for row in rows:
        assert row.topic == topic
        assert row.log_end_offset == PRODUCED[row.partition]
        # A partition the consumer never positioned on has no committed offset on either side.
        assert row.current_offset == committed.get(TopicPartition(topic, row.partition))
        expected_lag = None if row.current_offset is None else row.log_end_offset - row.current_offset
        assert row.lag == expected_lag
        assert row.consumer_id is None  # the consumer left: the group has no members


@pytest.mark.rig
async def test_the_consumer_group_tool_shows_an_active_member_and_the_address_it_connects_from(
    kafka: Kafka,
) -> None:
    topic, group = _name("rig-orders"), _name("rig-group")
    kafka.create_topic(topic, 1)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap,
        group_id=group,
        client_id="rig-active-member",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        await consumer.getmany(timeout_ms=3000)  # joins the group and gets its assignment
        rows = kafka.consumer_groups_describe(group)
    finally:
        await consumer.stop()

    assert len(rows) == 1
    (row,) = rows
    assert row.client_id == "rig-active-member"
    assert row.consumer_id is not None
    assert row.consumer_id.startswith("rig-active-member")
    # The test runs on the node itself, so the broker sees the bridge address as the client host.
    assert row.host == kafka.host
    assert row.current_offset is None  # nothing committed yet
    assert row.lag is None


@pytest.mark.rig
def test_the_consumer_group_tool_fails_loudly_for_an_unknown_group(kafka: Kafka) -> None:
    with pytest.raises(KafkaToolError, match="not found"):
        kafka.consumer_groups_describe(_name("no-such-group"))


def test_the_group_table_parser_reads_dashes_as_missing_values() -> None:
    output = (
        "\nConsumer group 'g' has no active members.\n\n"
        "GROUP  TOPIC  PARTITION  CURRENT-OFFSET  LOG-END-OFFSET  LAG  CONSUMER-ID  HOST  CLIENT-ID\n"
        "g      t      1          -               5               -    c-1-ab       /10.213.1.7  c-1\n"
        "g      t      0          4               4               0    -            -     -\n"
    )

    assert parse_group_table(output) == [
        GroupRow(
            topic="t",
            partition=1,
            current_offset=None,
            log_end_offset=5,
            lag=None,
            consumer_id="c-1-ab",
            host="10.213.1.7",
            client_id="c-1",
        ),
        GroupRow(
            topic="t",
            partition=0,
            current_offset=4,
            log_end_offset=4,
            lag=0,
            consumer_id=None,
            host=None,
            client_id=None,
        ),
    ]


@pytest.mark.rig
def test_a_second_broker_runs_beside_the_first_and_stopping_it_leaves_no_listener(
    kafka: Kafka, rig_network: Network, rig_run_dir: Path
) -> None:
    supervisor = Supervisor(run_dir=rig_run_dir / "second-kafka")
    try:
        second = Kafka.start(supervisor, rig_network, supervisor.run_dir)
        assert second.bootstrap != kafka.bootstrap
        second.create_topic(_name("rig-second"), 1)
        second.stop()
        assert second.open_listeners() == []
        assert not second.process.alive()
    finally:
        supervisor.stop_all()
    assert kafka.open_listeners() == [kafka.bootstrap, f"127.0.0.1:{kafka.controller_port}"]
