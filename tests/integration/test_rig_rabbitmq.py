"""The rig's RabbitMQ is real: messages round-trip, and the management API agrees with rabbitmqctl."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import TypedDict

import aio_pika
import httpx
import pytest

from tests.rig.network import Network
from tests.rig.processes import Supervisor
from tests.rig.rabbitmq import RabbitMQ


class QueueCounts(TypedDict):
    messages: int
    messages_ready: int
    messages_unacknowledged: int
    consumers: int


def _queue_name() -> str:
    return f"rig-jobs-{uuid.uuid4().hex[:8]}"


async def _publish(channel: aio_pika.abc.AbstractChannel, queue: str, bodies: list[bytes]) -> None:
    for body in bodies:
        await channel.default_exchange.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue
        )


def _api_counts(rabbitmq: RabbitMQ, queue: str) -> QueueCounts | None:
    response = httpx.get(
        f"{rabbitmq.management_url}/api/queues", auth=(rabbitmq.username, rabbitmq.password), timeout=10
    )
    response.raise_for_status()
    for entry in response.json():
        if entry["name"] == queue and entry["vhost"] == "/":
            return {
                "messages": entry.get("messages", -1),
                "messages_ready": entry.get("messages_ready", -1),
                "messages_unacknowledged": entry.get("messages_unacknowledged", -1),
                "consumers": entry.get("consumers", -1),
            }
    return None


def _ctl_counts(rabbitmq: RabbitMQ, queue: str) -> QueueCounts | None:
    output = rabbitmq.rabbitmqctl(
        "-q",
        "--no-table-headers",
        "list_queues",
        "name",
        "messages",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
    )
    for line in output.splitlines():
        fields = line.split("\t")
        if fields[0] == queue:
            messages, ready, unacked, consumers = (int(f) for f in fields[1:])
            return {
                "messages": messages,
                "messages_ready": ready,
                "messages_unacknowledged": unacked,
                "consumers": consumers,
            }
    return None


async def _api_counts_once_settled(
    rabbitmq: RabbitMQ, queue: str, expected: QueueCounts
) -> QueueCounts | None:
    """The management API's counts, once they reach ``expected`` or after 15 s.

    Its statistics are sampled (every second in the rig's config), so a count read
    right after a publish can be one sample old.
    """
    deadline = time.monotonic() + 15
    while True:
        counts = await asyncio.to_thread(_api_counts, rabbitmq, queue)
        if counts == expected or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.2)


@pytest.mark.rig
async def test_published_messages_are_consumed_in_order(rabbitmq: RabbitMQ) -> None:
    queue_name = _queue_name()
    bodies = [f"job-{i}".encode() for i in range(5)]
    connection = await aio_pika.connect_robust(rabbitmq.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, durable=True)
        await _publish(channel, queue_name, bodies)

        received: list[bytes] = []
        async with asyncio.timeout(30), queue.iterator() as messages:
            async for message in messages:
                async with message.process():
                    received.append(message.body)
                if len(received) == len(bodies):
                    break

    assert received == bodies


@pytest.mark.rig
async def test_the_management_api_and_rabbitmqctl_agree_on_ready_and_unacknowledged_messages(
    rabbitmq: RabbitMQ,
) -> None:
    queue_name = _queue_name()
    connection = await aio_pika.connect_robust(rabbitmq.amqp_url)
    async with connection:
        publisher = await connection.channel()
        await publisher.declare_queue(queue_name, durable=True)
        await _publish(publisher, queue_name, [b"a", b"b", b"c", b"d", b"e"])

        # A consumer that holds two deliveries without acknowledging them.
        consumer = await connection.channel()
        await consumer.set_qos(prefetch_count=2)
        queue = await consumer.get_queue(queue_name)
        held: list[aio_pika.abc.AbstractIncomingMessage] = []
        got_two = asyncio.Event()

        async def hold(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            held.append(message)
            if len(held) == 2:
                got_two.set()

        tag = await queue.consume(hold)
        await asyncio.wait_for(got_two.wait(), timeout=10)

        expected: QueueCounts = {
            "messages": 5,
            "messages_ready": 3,
            "messages_unacknowledged": 2,
            "consumers": 1,
        }
        from_ctl = await asyncio.to_thread(_ctl_counts, rabbitmq, queue_name)
        from_api = await _api_counts_once_settled(rabbitmq, queue_name, expected)

        await queue.cancel(tag)
        for message in held:
            await message.ack()

    assert from_ctl == expected
    assert from_api == from_ctl


@pytest.mark.rig
def test_the_management_api_refuses_requests_without_credentials(rabbitmq: RabbitMQ) -> None:
    response = httpx.get(f"{rabbitmq.management_url}/api/queues", timeout=10)

    assert response.status_code == 401


@pytest.mark.rig
def test_a_second_node_runs_beside_the_first_and_stopping_it_ends_its_epmd_too(
    rabbitmq: RabbitMQ, rig_network: Network, rig_run_dir: Path
) -> None:
    supervisor = Supervisor(run_dir=rig_run_dir / "second-rabbitmq")
    try:
        second = RabbitMQ.start(supervisor, rig_network, supervisor.run_dir)
        assert second.node != rabbitmq.node
        assert "tidescale" in second.rabbitmqctl("-q", "--no-table-headers", "list_users")
        second.stop()
        assert second.open_listeners() == []
        assert not second.process.alive()
        assert not second.epmd.alive()
    finally:
        supervisor.stop_all()
    assert len(rabbitmq.open_listeners()) == 4
