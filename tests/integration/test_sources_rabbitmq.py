"""Our RabbitMQ numbers against rabbitmqctl, on the rig's real broker."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import aio_pika
import pytest

from tests.rig.rabbitmq import RabbitMQ
from tidescale.errors import BrokerAuthFailed, SourceError, SourceNotFound
from tidescale.sources.base import Measurement, MeasurementFailure, Scope
from tidescale.sources.rabbitmq._source import RabbitMQSettings, RabbitMQSource, parse_rabbitmq_settings

pytestmark = pytest.mark.rig

PASSWORD_ENV = "TIDESCALE_TEST_RABBITMQ_PASSWORD"


@dataclass(frozen=True, kw_only=True, slots=True)
class CtlRow:
    messages: int
    ready: int
    unacked: int
    consumers: int


def _queue_name() -> str:
    return f"src-jobs-{uuid.uuid4().hex[:8]}"


def _ctl(rabbitmq: RabbitMQ, queue: str) -> CtlRow:
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
        name, *numbers = line.split("\t")
        if name == queue:
            messages, ready, unacked, consumers = (int(n) for n in numbers)
            return CtlRow(messages=messages, ready=ready, unacked=unacked, consumers=consumers)
    raise AssertionError(f"rabbitmqctl list_queues does not show {queue}:\n{output}")


@pytest.fixture
def credentials(rabbitmq: RabbitMQ, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    # The password goes through the environment, as hints require (a URL with one is refused).
    monkeypatch.setenv(PASSWORD_ENV, rabbitmq.password)
    return {"password-env": PASSWORD_ENV}


def _http(rabbitmq: RabbitMQ, credentials: dict[str, str], **fields: str) -> RabbitMQSettings:
    url = rabbitmq.management_url.replace("://", f"://{rabbitmq.username}@", 1)
    return parse_rabbitmq_settings("rabbitmq", {"management-url": url, **credentials, **fields})


def _amqp(rabbitmq: RabbitMQ, credentials: dict[str, str], **fields: str) -> RabbitMQSettings:
    url = f"amqp://{rabbitmq.username}@{rabbitmq.host}:{rabbitmq.amqp_port}"
    return parse_rabbitmq_settings("rabbitmq", {"amqp-url": url, **credentials, **fields})


@asynccontextmanager
async def _queue_with_held_messages(
    rabbitmq: RabbitMQ, *, published: int, held: int, kind: str = "classic"
) -> AsyncIterator[str]:
    """A queue of ``published`` messages, ``held`` of them delivered to one consumer and not acked."""
    name = _queue_name()
    connection = await aio_pika.connect(rabbitmq.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(name, durable=True, arguments={"x-queue-type": kind})
        for i in range(published):
            await channel.default_exchange.publish(aio_pika.Message(f"{i}".encode()), routing_key=name)
        consumer = await connection.channel()
        await consumer.set_qos(prefetch_count=held)
        queue = await consumer.get_queue(name)
        deliveries: list[aio_pika.abc.AbstractIncomingMessage] = []
        all_held = asyncio.Event()

        async def hold(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            deliveries.append(message)
            if len(deliveries) == held:
                all_held.set()

        await queue.consume(hold)
        await asyncio.wait_for(all_held.wait(), timeout=10)
        yield name


async def _settled(
    source: RabbitMQSource, settings: RabbitMQSettings, scope: Scope, done: Callable[[Measurement], bool]
) -> Measurement:
    """The management API samples statistics (every second on the rig): read until they catch up, or
    15 s. A queue just declared has no statistics yet (a SourceError) until the first sample."""
    deadline = time.monotonic() + 15
    while True:
        try:
            m = await source.measure(settings, scope)
        except SourceError:
            if time.monotonic() > deadline:
                raise
        else:
            if done(m) or time.monotonic() > deadline:
                return m
        await asyncio.sleep(0.25)


async def test_management_counts_equal_rabbitmqctl(rabbitmq: RabbitMQ, credentials: dict[str, str]) -> None:
    async with _queue_with_held_messages(rabbitmq, published=7, held=3) as queue:
        row = await asyncio.to_thread(_ctl, rabbitmq, queue)
        total = _http(rabbitmq, credentials, queue=queue)
        ready = _http(rabbitmq, credentials, queue=queue, **{"exclude-unacknowledged": "true"})
        source = RabbitMQSource(total, pod_ip=rabbitmq.host)
        try:
            m_total = await _settled(source, total, Scope.GROUP, lambda m: m.value == row.messages)
            m_ready = await source.measure(ready, Scope.GROUP)
            m_local = await _settled(
                source, total, Scope.LOCAL, lambda m: m.detail.get("local:unacked") == row.unacked
            )
            stats = (await source.snapshot(total, Scope.GROUP)).queues[0]
        finally:
            await source.close()

    assert row == CtlRow(messages=7, ready=4, unacked=3, consumers=1)
    assert m_total.value == row.messages
    assert m_ready.value == row.ready
    assert (stats.ready, stats.unacked, stats.consumers) == (row.ready, row.unacked, row.consumers)
    # The test process is this "pod": its consumer's share is the whole queue's in-flight work.
    assert m_local.detail["local:consumers"] == row.consumers
    assert m_local.detail["local:unacked"] == row.unacked


async def test_amqp_counts_ready_messages_only_as_rabbitmqctl_does(
    rabbitmq: RabbitMQ, credentials: dict[str, str]
) -> None:
    async with _queue_with_held_messages(rabbitmq, published=6, held=2) as queue:
        row = await asyncio.to_thread(_ctl, rabbitmq, queue)
        settings = _amqp(rabbitmq, credentials, queue=queue)
        source = RabbitMQSource(settings)
        try:
            m = await source.measure(settings, Scope.GROUP)
            stats = (await source.snapshot(settings, Scope.GROUP)).queues[0]
        finally:
            await source.close()

    assert m.value == row.ready == 4
    assert stats.consumers == row.consumers


async def test_a_pattern_sums_every_matching_queue(rabbitmq: RabbitMQ, credentials: dict[str, str]) -> None:
    prefix = f"pat-{uuid.uuid4().hex[:6]}"
    connection = await aio_pika.connect(rabbitmq.amqp_url)
    async with connection:
        channel = await connection.channel()
        for suffix, count in (("a", 2), ("b", 5), ("ignored-x", 9)):
            await channel.declare_queue(f"{prefix}-{suffix}")
            for _ in range(count):
                await channel.default_exchange.publish(
                    aio_pika.Message(b"x"), routing_key=f"{prefix}-{suffix}"
                )
        settings = _http(rabbitmq, credentials, **{"queue-pattern": f"{prefix}-[ab]", "operation": "sum"})
        source = RabbitMQSource(settings)
        try:
            m = await _settled(source, settings, Scope.GROUP, lambda m: m.value == 7)
        finally:
            await source.close()
    assert m.detail == {f"{prefix}-a": 2.0, f"{prefix}-b": 5.0}
    assert m.value == 7.0


async def test_a_pattern_matching_no_queue_reads_zero_with_a_warning_and_rabbitmqctl_lists_none(
    rabbitmq: RabbitMQ, credentials: dict[str, str]
) -> None:
    prefix = f"none-{uuid.uuid4().hex[:6]}"
    settings = _http(rabbitmq, credentials, **{"queue-pattern": f"{prefix}-.*", "mode": "message-rate"})
    elsewhere = _http(rabbitmq, credentials, **{"queue-pattern": f"{prefix}-.*", "vhost": f"{prefix}-vh"})
    source = RabbitMQSource(settings)
    try:
        m = await source.measure(settings, Scope.GROUP)
        with pytest.raises(SourceNotFound, match="no vhost"):  # a missing vhost is still an error
            await source.measure(elsewhere, Scope.GROUP)
    finally:
        await source.close()
    listed = await asyncio.to_thread(rabbitmq.rabbitmqctl, "-q", "--no-table-headers", "list_queues", "name")
    assert not [name for name in listed.split() if name.startswith(prefix)]
    assert (m.value, m.active, m.detail) == (0.0, False, {"total:backlog": 0.0})
    (warning,) = m.warnings
    assert warning.reason == "NoQueueMatched"
    assert f"'{prefix}-.*' (whole names) matches no queue of vhost '/'" in warning.message


async def test_an_unknown_queue_and_an_unknown_vhost_are_told_apart(
    rabbitmq: RabbitMQ, credentials: dict[str, str]
) -> None:
    queue_missing = _http(rabbitmq, credentials, queue="no-such-queue")
    vhost_missing = _http(rabbitmq, credentials, queue="q", vhost="no-such-vhost")
    source = RabbitMQSource(queue_missing)
    try:
        with pytest.raises(SourceNotFound, match="no queue 'no-such-queue'"):
            await source.measure(queue_missing, Scope.GROUP)
        with pytest.raises(SourceNotFound, match="no vhost 'no-such-vhost'"):
            await source.measure(vhost_missing, Scope.GROUP)
    finally:
        await source.close()


async def test_an_unknown_queue_over_amqp_is_source_not_found(
    rabbitmq: RabbitMQ, credentials: dict[str, str]
) -> None:
    settings = _amqp(rabbitmq, credentials, queue="no-such-queue")
    source = RabbitMQSource(settings)
    try:
        with pytest.raises(SourceNotFound, match="no-such-queue"):
            await source.measure(settings, Scope.GROUP)
        # The connection survives a failed passive declare: the next measurement still works.
        with pytest.raises(SourceNotFound):
            await source.measure(settings, Scope.GROUP)
    finally:
        await source.close()


@pytest.mark.parametrize("via", ["management", "amqp"])
async def test_a_wrong_password_is_broker_auth_failed(
    rabbitmq: RabbitMQ, monkeypatch: pytest.MonkeyPatch, via: str
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    credentials = {"password-env": PASSWORD_ENV}
    settings = (_http if via == "management" else _amqp)(rabbitmq, credentials, queue="q")
    source = RabbitMQSource(settings)
    try:
        with pytest.raises(BrokerAuthFailed, match=rabbitmq.username):
            await source.measure(settings, Scope.GROUP)
    finally:
        await source.close()


async def test_a_quorum_queue_counts_equal_rabbitmqctl(
    rabbitmq: RabbitMQ, credentials: dict[str, str]
) -> None:
    async with _queue_with_held_messages(rabbitmq, published=8, held=3, kind="quorum") as queue:
        # A quorum queue's counts reach rabbitmqctl through its periodic metrics: wait for them.
        deadline = time.monotonic() + 15
        while (row := await asyncio.to_thread(_ctl, rabbitmq, queue)).messages != 8:
            assert time.monotonic() < deadline, f"rabbitmqctl never showed 8 messages: {row}"
            await asyncio.sleep(0.5)
        settings = _http(rabbitmq, credentials, queue=queue)
        source = RabbitMQSource(settings)
        try:
            m = await _settled(source, settings, Scope.GROUP, lambda m: m.value == row.messages)
            ready = await source.measure(replace(settings, exclude_unacknowledged=True), Scope.GROUP)
        finally:
            await source.close()
    assert (row.messages, row.ready, row.unacked) == (8, 5, 3)
    assert m.value == row.messages
    assert ready.value == row.ready


async def test_a_stream_queue_is_refused_rather_than_counting_its_retained_log(
    rabbitmq: RabbitMQ, credentials: dict[str, str]
) -> None:
    name = _queue_name()
    connection = await aio_pika.connect(rabbitmq.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "stream"})
        for i in range(3):
            await channel.default_exchange.publish(aio_pika.Message(f"{i}".encode()), routing_key=name)
    settings = _http(rabbitmq, credentials, queue=name)
    source = RabbitMQSource(settings)
    try:
        with pytest.raises(SourceError, match="is a stream"):
            await _settled(source, settings, Scope.GROUP, lambda m: False)
        batched = (await source.measure_many([settings]))[settings]
    finally:
        await source.close()
    assert isinstance(batched, MeasurementFailure)
    assert "is a stream" in batched.error


async def test_queue_match_substring_selects_what_keda_selects_and_whole_what_the_pattern_says(
    rabbitmq: RabbitMQ, credentials: dict[str, str]
) -> None:
    prefix = f"match-{uuid.uuid4().hex[:6]}"
    counts = {
        f"{prefix}-orders": 2,
        f"{prefix}-orders-dlq": 3,
        f"old-{prefix}-orders": 4,
        f"{prefix}-other": 9,
    }
    connection = await aio_pika.connect(rabbitmq.amqp_url)
    async with connection:
        channel = await connection.channel()
        for name, count in counts.items():
            await channel.declare_queue(name)
            for _ in range(count):
                await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=name)
        pattern = f"{prefix}-orders"
        whole = _http(rabbitmq, credentials, **{"queue-pattern": pattern})
        substring = _http(rabbitmq, credentials, **{"queue-pattern": pattern, "queue-match": "substring"})
        source = RabbitMQSource(whole)
        try:
            m_whole = await _settled(source, whole, Scope.GROUP, lambda m: m.value == 2)
            m_sub = await _settled(source, substring, Scope.GROUP, lambda m: m.value == 9)
            batched = await source.measure_many([whole, substring])
        finally:
            await source.close()
        rows = {name: (await asyncio.to_thread(_ctl, rabbitmq, name)).messages for name in counts}
    assert m_whole.detail == {f"{prefix}-orders": float(rows[f"{prefix}-orders"])}
    assert m_sub.detail == {name: float(rows[name]) for name in counts if pattern in name}
    assert m_sub.value == 2 + 3 + 4
    # The waker's batched reading carries no progress counters (only a leader's drain-time and
    # stall detection use them); everything else is the same reading.
    assert batched[whole].progress is None
    assert batched[whole] == replace(m_whole, taken_at=batched[whole].taken_at, progress=None)
    assert batched[substring] == replace(m_sub, taken_at=batched[substring].taken_at, progress=None)


async def test_the_vhost_named_by_the_amqp_url_path_is_the_one_measured(
    rabbitmq: RabbitMQ, credentials: dict[str, str]
) -> None:
    vhost, queue = f"vh-{uuid.uuid4().hex[:6]}", _queue_name()
    await asyncio.to_thread(rabbitmq.rabbitmqctl, "add_vhost", vhost)
    await asyncio.to_thread(
        rabbitmq.rabbitmqctl, "set_permissions", "-p", vhost, rabbitmq.username, ".*", ".*", ".*"
    )
    base = f"amqp://{rabbitmq.username}:{rabbitmq.password}@{rabbitmq.host}:{rabbitmq.amqp_port}"
    connection = await aio_pika.connect(f"{base}/{vhost}")
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True)
        for _ in range(4):
            await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue)
    url = f"amqp://{rabbitmq.username}@{rabbitmq.host}:{rabbitmq.amqp_port}/{vhost}"
    settings = parse_rabbitmq_settings("rabbitmq", {"amqp-url": url, "queue": queue, **credentials})
    source = RabbitMQSource(settings)
    try:
        m = await source.measure(settings, Scope.GROUP)
    finally:
        await source.close()
    ctl = await asyncio.to_thread(
        rabbitmq.rabbitmqctl, "-q", "--no-table-headers", "list_queues", "-p", vhost, "name", "messages"
    )
    assert settings.vhost == vhost
    assert f"{queue}\t4" in ctl
    assert m.value == 4.0
