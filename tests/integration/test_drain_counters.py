"""The counters the drain-time rate estimator and the stall detector read, against a real broker:
RabbitMQ's management API reports the messages a queue had published and acknowledged."""

from __future__ import annotations

import asyncio
import time
import uuid

import aio_pika
import pytest

from tests.rig.rabbitmq import RabbitMQ
from tidescale._progress import rabbitmq_progress
from tidescale.errors import SourceError
from tidescale.sources.base import Scope
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
    deadline = time.monotonic() + 30  # the management API samples statistics every few seconds
    try:
        while time.monotonic() < deadline:
            try:
                stats = (await source.snapshot(settings, Scope.GROUP)).queues[0]
            except SourceError:
                stats = None
            if stats is not None and (stats.consumed_total, stats.published_total) == (5, 7):
                break
            await asyncio.sleep(0.5)
    finally:
        await source.close()
        await _delete(rabbitmq, queue)
    assert stats is not None
    assert (stats.consumed_total, stats.published_total, stats.messages) == (5, 7, 2)
    progress = rabbitmq_progress([stats], taken_at=0.0)
    assert (progress.consumed, progress.produced, progress.lag) == ({queue: 5}, {queue: 7}, {queue: 2.0})
