"""Batched RabbitMQ measurements (the waker's poll): one listing per vhost equals one GET per queue."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest

from tests.rig.rabbitmq import RabbitMQ
from tidescale.errors import SourceError
from tidescale.sources.base import Measurement, MeasurementFailure, Scope
from tidescale.sources.rabbitmq._source import RabbitMQSettings, RabbitMQSource, parse_rabbitmq_settings

pytestmark = pytest.mark.rig

PASSWORD_ENV = "TIDESCALE_TEST_RABBITMQ_BATCH_PASSWORD"
QUEUES = 8


@pytest.fixture
def credentials(rabbitmq: RabbitMQ, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv(PASSWORD_ENV, rabbitmq.password)
    return {"password-env": PASSWORD_ENV}


@pytest.fixture
async def queues(rabbitmq: RabbitMQ) -> AsyncIterator[dict[str, int]]:
    """QUEUES queues sharing one random prefix, queue i holding i ready messages; deleted afterwards."""
    prefix = f"batch-{uuid.uuid4().hex[:8]}"
    counts = {f"{prefix}-{i}": i for i in range(QUEUES)}
    connection = await aio_pika.connect(rabbitmq.amqp_url)
    async with connection:
        channel = await connection.channel()
        for name, count in counts.items():
            await channel.declare_queue(name, durable=True)
            for n in range(count):
                await channel.default_exchange.publish(aio_pika.Message(f"{n}".encode()), routing_key=name)
        yield counts
        for name in counts:
            await channel.queue_delete(name)


def _http(rabbitmq: RabbitMQ, credentials: dict[str, str], **fields: str) -> RabbitMQSettings:
    url = rabbitmq.management_url.replace("://", f"://{rabbitmq.username}@", 1)
    return parse_rabbitmq_settings("rabbitmq", {"management-url": url, **credentials, **fields})


async def _settled(source: RabbitMQSource, counts: dict[str, int], everything: RabbitMQSettings) -> None:
    """The management API samples statistics (every second on the rig): wait until every count shows.
    ``everything`` is a pattern trigger matching every queue of ``counts``."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            result = await source.measure(everything, Scope.GROUP)
        except SourceError:  # no counts yet for a fresh queue: a failed reading, not an empty queue
            result = None
        if result is not None and dict(result.detail) == {q: float(n) for q, n in counts.items()}:
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"the management API never showed the published counts {counts}")


def _pattern_of(counts: dict[str, int]) -> str:
    prefix = next(iter(counts)).rsplit("-", 1)[0]
    return f"{prefix}-[0-9]+"


async def test_a_batch_of_rabbitmq_triggers_measures_what_each_measured_alone_measures(
    rabbitmq: RabbitMQ, credentials: dict[str, str], queues: dict[str, int]
) -> None:
    triggers = [_http(rabbitmq, credentials, queue=name) for name in queues]
    pattern = _pattern_of(queues)
    triggers += [
        _http(rabbitmq, credentials, **{"queue-pattern": pattern, "operation": op})
        for op in ("sum", "avg", "max")
    ]
    triggers.append(_http(rabbitmq, credentials, queue=next(iter(queues)), **{"activation-value": "0"}))
    source = RabbitMQSource(triggers[0])
    try:
        await _settled(source, queues, triggers[QUEUES])
        alone = {s: await source.measure(s, Scope.GROUP) for s in triggers}
        batch = await source.measure_many(triggers)
    finally:
        await source.close()
    assert set(batch) == set(triggers)
    for settings in triggers:
        together, single = batch[settings], alone[settings]
        assert isinstance(together, Measurement), together
        assert (together.value, together.active, dict(together.detail)) == (
            single.value,
            single.active,
            dict(single.detail),
        )
    values = [r.value for s in triggers[:QUEUES] if isinstance(r := batch[s], Measurement)]
    assert values == [float(n) for n in queues.values()]


async def test_a_batch_costs_one_listing_per_vhost_not_one_get_per_queue(
    rabbitmq: RabbitMQ, credentials: dict[str, str], queues: dict[str, int]
) -> None:
    triggers = [_http(rabbitmq, credentials, queue=name) for name in queues]
    triggers.append(_http(rabbitmq, credentials, **{"queue-pattern": _pattern_of(queues)}))
    source = RabbitMQSource(triggers[0])
    try:
        await _settled(source, queues, triggers[-1])
        before = source.requests
        for settings in triggers:
            await source.measure(settings, Scope.GROUP)
        single_requests = source.requests - before
        before = source.requests
        results = await source.measure_many(triggers)
        batch_requests = source.requests - before
    finally:
        await source.close()
    assert all(isinstance(r, Measurement) for r in results.values())
    assert single_requests == len(triggers)
    assert batch_requests == 1


async def test_a_missing_queue_or_vhost_fails_only_its_own_triggers_and_an_unmatched_pattern_reads_zero(
    rabbitmq: RabbitMQ, credentials: dict[str, str], queues: dict[str, int]
) -> None:
    present = _http(rabbitmq, credentials, queue=next(iter(queues)))
    absent = _http(rabbitmq, credentials, queue=f"absent-{uuid.uuid4().hex[:8]}")
    nothing_matches = _http(rabbitmq, credentials, **{"queue-pattern": f"absent-{uuid.uuid4().hex[:8]}-.*"})
    elsewhere = _http(rabbitmq, credentials, queue="q", vhost=f"absent-{uuid.uuid4().hex[:8]}")
    source = RabbitMQSource(present)
    try:
        await _settled(source, queues, _http(rabbitmq, credentials, **{"queue-pattern": _pattern_of(queues)}))
        results = await source.measure_many([present, absent, nothing_matches, elsewhere])
    finally:
        await source.close()
    assert isinstance(results[present], Measurement)
    failure = results[absent]
    assert isinstance(failure, MeasurementFailure)
    assert "has no queue" in failure.error
    # As KEDA reads it: no queue matched, nothing waiting, 0 and idle; said in a warning.
    unmatched = results[nothing_matches]
    assert isinstance(unmatched, Measurement), unmatched
    assert (unmatched.value, unmatched.active) == (0.0, False)
    assert [w.reason for w in unmatched.warnings] == ["NoQueueMatched"]
    assert repr(nothing_matches.queue_pattern) in unmatched.warnings[0].message
    failure = results[elsewhere]
    assert isinstance(failure, MeasurementFailure)
    assert "has no vhost" in failure.error


async def test_amqp_triggers_in_a_batch_are_measured_by_passive_declares(
    rabbitmq: RabbitMQ, credentials: dict[str, str], queues: dict[str, int]
) -> None:
    url = f"amqp://{rabbitmq.username}@{rabbitmq.host}:{rabbitmq.amqp_port}"
    triggers = [
        parse_rabbitmq_settings("rabbitmq", {"amqp-url": url, "queue": name, **credentials})
        for name in queues
    ]
    source = RabbitMQSource(triggers[0])
    try:
        results = await source.measure_many(triggers)
    finally:
        await source.close()
    values = [r.value if isinstance(r, Measurement) else r for r in (results[s] for s in triggers)]
    assert values == [float(n) for n in queues.values()]
