"""The counters the drain-time rate estimator and the stall detector read, against real brokers:
Kafka's committed and log-end offsets, RabbitMQ's published and acknowledged counts."""

from __future__ import annotations

import asyncio
import time
import uuid

import aio_pika
import pytest
from aiokafka import TopicPartition

from tests.integration.test_sources_kafka import _commit, _settings, _topic_with_messages
from tests.rig.kafka import Kafka
from tests.rig.rabbitmq import RabbitMQ
from tidescale._progress import kafka_progress, rabbitmq_progress
from tidescale._stall import StallState, observe_stall
from tidescale.errors import SourceError
from tidescale.sources.base import Scope
from tidescale.sources.kafka._source import KafkaSource
from tidescale.sources.rabbitmq._depth import QueueStats
from tidescale.sources.rabbitmq._source import RabbitMQSource, parse_rabbitmq_settings

pytestmark = pytest.mark.rig

PASSWORD_ENV = "TIDESCALE_TEST_RABBITMQ_PASSWORD"


async def _publish_and_ack(rabbitmq: RabbitMQ, queue: str, *, published: int, acked: int) -> None:
    connection = await aio_pika.connect(rabbitmq.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True)
        for number in range(published):
            await channel.default_exchange.publish(aio_pika.Message(f"{number}".encode()), routing_key=queue)
        consumer = await connection.channel()
        declared = await consumer.get_queue(queue)
        for _ in range(acked):
            message = await declared.get(timeout=10)
            assert message is not None
            await message.ack()


async def _delete(rabbitmq: RabbitMQ, queue: str) -> None:
    connection = await aio_pika.connect(rabbitmq.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(queue)


async def test_the_management_api_counts_what_was_published_and_acknowledged(
    rabbitmq: RabbitMQ, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, rabbitmq.password)
    queue = f"drain-{uuid.uuid4().hex[:8]}"
    # The password goes through the environment, as hints require (a URL with one is refused).
    url = rabbitmq.management_url.replace("://", f"://{rabbitmq.username}@", 1)
    settings = parse_rabbitmq_settings(
        "rabbitmq", {"management-url": url, "password-env": PASSWORD_ENV, "queue": queue}
    )
    await _publish_and_ack(rabbitmq, queue, published=7, acked=5)
    source = RabbitMQSource(settings)
    stats: QueueStats | None = None
    # The management API samples statistics every few seconds, each figure on its own: wait until
    # all three show what was done (a loaded machine can take tens of seconds).
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            try:
                stats = (await source.snapshot(settings, Scope.GROUP)).queues[0]
            except SourceError:
                stats = None
            if stats is not None and (stats.consumed_total, stats.published_total, stats.messages) == (
                5,
                7,
                2,
            ):
                break
            await asyncio.sleep(0.5)
        # The group-wide measurement hands the leader the same counters, from the same listing.
        measured = await source.measure(settings, Scope.GROUP)
    finally:
        await source.close()
        await _delete(rabbitmq, queue)
    assert measured.progress is not None
    assert (measured.progress.consumed, measured.progress.produced) == ({queue: 5}, {queue: 7})
    assert stats is not None
    assert (stats.consumed_total, stats.published_total, stats.messages) == (5, 7, 2)
    progress = rabbitmq_progress([stats], taken_at=0.0)
    assert (progress.consumed, progress.produced, progress.lag) == ({queue: 5}, {queue: 7}, {queue: 2.0})


async def test_kafka_offsets_show_a_stall_on_the_partition_with_lag_and_its_end_at_the_next_commit(
    kafka: Kafka,
) -> None:
    topic = await _topic_with_messages(kafka, {0: 9, 1: 4})
    group = f"drain-{uuid.uuid4().hex[:8]}"
    await _commit(kafka, group, {TopicPartition(topic, 0): 3, TopicPartition(topic, 1): 4})
    settings = _settings(kafka, group, topic=topic)
    source = KafkaSource(settings)
    try:
        # The times are the detector's clock, given: what is under test is what the offsets say.
        first = kafka_progress(await source.snapshot(settings, Scope.GROUP), consumers=1, taken_at=0.0)
        unchanged = kafka_progress(await source.snapshot(settings, Scope.GROUP), consumers=1, taken_at=60.0)
        await _commit(kafka, group, {TopicPartition(topic, 0): 5})
        moved = kafka_progress(await source.snapshot(settings, Scope.GROUP), consumers=1, taken_at=61.0)
    finally:
        await source.close()

    assert first.consumed == {f"{topic}/0": 3, f"{topic}/1": 4}
    assert first.produced == {f"{topic}/0": 9, f"{topic}/1": 4}
    assert first.lag == {f"{topic}/0": 6.0, f"{topic}/1": 0.0}
    state = StallState()
    seen = []
    for snapshot in (first, unchanged, moved):
        state = observe_stall(state, snapshot, pods_ready=True, stall_after=30.0)
        seen.append((state.stalled, state.units))
    assert seen == [(False, ()), (True, (f"{topic}/0",)), (False, ())]


async def test_the_group_wide_kafka_measurement_carries_the_offsets_it_read_for_the_leader(
    kafka: Kafka,
) -> None:
    """What the leader's rate window and stall clock receive: the same offsets, read once."""
    topic = await _topic_with_messages(kafka, {0: 9, 1: 4})
    group = f"drain-{uuid.uuid4().hex[:8]}"
    await _commit(kafka, group, {TopicPartition(topic, 0): 3, TopicPartition(topic, 1): 4})
    settings = _settings(kafka, group, topic=topic)
    source = KafkaSource(settings)
    try:
        measurement = await source.measure(settings, Scope.GROUP)
    finally:
        await source.close()
    assert measurement.progress is not None
    assert measurement.progress.consumed == {f"{topic}/0": 3, f"{topic}/1": 4}
    assert measurement.progress.produced == {f"{topic}/0": 9, f"{topic}/1": 4}
    assert measurement.progress.lag == {f"{topic}/0": 6.0, f"{topic}/1": 0.0}
    assert measurement.progress.taken_at == measurement.taken_at
