"""RabbitMQ arithmetic: pure functions of queue statistics and the trigger's settings.

QueueLength counts ``messages`` (ready + unacknowledged) by default, so work in
flight keeps the workload up; ``messages_ready`` with exclude-unacknowledged, and
always over AMQP, which sees ready messages only. MessageRate is
``message_stats.publish_details.rate``. Queues matched by a pattern combine with
sum, avg or max.

A queue the management API has no statistics for yet makes the measurement fail
(a SourceError naming the queues): its counts are unknown, not 0. Failing is what
an unreachable broker does too: the agent holds its replicas (nothing parks on
counts nobody has seen) and the waker leaves a parked Deployment parked (nothing
wakes on them either) until the broker reports them, a few seconds after a queue
is declared.

A queue-pattern that matches no queue reads 0 and is idle, as in KEDA (no queue, no message
waiting: a message exists only in a queue), with a NoQueueMatched warning that the leader and
the waker turn into a Warning Event, so a pattern that matches nothing by mistake is seen.

Activation in message-rate mode holds while either the rate or the backlog (the
queue-length metric of the same queues) is above activation-value, as KEDA does:
on the rate alone a Deployment parks when publishing stops with messages still
queued, and parked, nothing is published to wake it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from tidescale.errors import SourceError
from tidescale.sources.base import Measurement, MeasurementWarning
from tidescale.sources.rabbitmq._settings import RabbitMQSettings

__all__ = [
    "LocalShare",
    "QueueStats",
    "RabbitMQSnapshot",
    "own_channels",
    "queue_length",
    "queue_metric",
    "queue_stats_from_api",
    "rabbitmq_measurement",
]

"""Detail key: how many queues had no statistics yet (present only when some had none)."""

BACKLOG_KEY = "total:backlog"
"""Detail key, in message-rate mode, of the combined queue length that activation also looks at."""

LOCAL_PREFIX = "local:"
"""Detail keys of this pod's own consumers' share (``local:consumers``, ``local:unacked``,
``local:deliver-rate``); every other detail key is a queue name."""


class RateDetails(TypedDict, total=False):
    rate: float


class MessageStats(TypedDict, total=False):
    publish_details: RateDetails
    deliver_get_details: RateDetails


class ChannelDetails(TypedDict, total=False):
    name: str
    peer_host: str
    connection_name: str


class ConsumerDetails(TypedDict, total=False):
    channel_details: ChannelDetails
    consumer_tag: str


class QueuePayload(TypedDict, total=False):
    """The fields read from ``GET /api/queues/{vhost}/{queue}``."""

    name: str
    type: str
    messages: int
    messages_ready: int
    messages_unacknowledged: int
    consumers: int
    message_stats: MessageStats
    consumer_details: list[ConsumerDetails]


@dataclass(frozen=True, kw_only=True, slots=True)
class QueueStats:
    name: str
    ready: int
    unacked: int | None
    """None over AMQP, which cannot see unacknowledged messages."""
    consumers: int
    publish_rate: float | None = None
    """Messages published per second; None when the broker reports no rate (no publishes yet, or AMQP)."""
    known: bool = True
    """False while the management API has no message counts for the queue (ready/unacked read 0)."""
    consumed_total: int | None = None
    """Messages consumed since the queue's statistics began (``message_stats`` ack + deliver_no_ack
    + get_no_ack); None when the broker reports none of them (the drain-time rate is then unknown)."""
    published_total: int | None = None
    """Messages published since the queue's statistics began (``message_stats.publish``); None if absent."""

    @property
    def messages(self) -> int:
        return self.ready + (self.unacked or 0)


@dataclass(frozen=True, kw_only=True, slots=True)
class LocalShare:
    """What this pod's own consumers hold of a queue."""

    consumers: int
    unacked: int
    deliver_rate: float


@dataclass(frozen=True, kw_only=True, slots=True)
class RabbitMQSnapshot:
    queues: tuple[QueueStats, ...]
    """Empty only for a queue-pattern that matched nothing (the metric reads 0, as in KEDA)."""
    via: Literal["management", "amqp"]
    local: LocalShare | None = None
    warnings: tuple[MeasurementWarning, ...] = ()


def queue_stats_from_api(payload: Mapping[str, Any]) -> QueueStats:
    """A queue of the management API. Its message counts are unknown, not 0, until the broker has
    published statistics for it (a few seconds after it is declared, or never with statistics
    collection off): ``rabbitmq_measurement`` then fails, so a workload never parks, nor wakes, on
    counts nobody has seen. A missing
    publish rate is no publishing (0). A stream queue raises a SourceError."""
    if payload.get("type") == "stream":
        raise SourceError(
            f"queue {payload.get('name', '')!r} is a stream: its message count is the retained log, which "
            "consuming never drains, so it cannot drive scaling; measure a classic or quorum queue"
        )
    known = all(payload.get(f) is not None for f in ("messages_ready", "messages_unacknowledged"))
    stats = payload.get("message_stats") or {}
    publish = stats.get("publish_details") if isinstance(stats, Mapping) else None
    rate = publish.get("rate") if isinstance(publish, Mapping) else None
    return QueueStats(
        name=str(payload.get("name", "")),
        ready=int(payload.get("messages_ready") or 0),
        unacked=int(payload.get("messages_unacknowledged") or 0),
        consumers=int(payload.get("consumers") or 0),
        publish_rate=float(rate) if isinstance(rate, int | float) else None,
        known=known,
        consumed_total=_counter_sum(stats, ("ack", "deliver_no_ack", "get_no_ack")),
        published_total=_counter_sum(stats, ("publish",)),
    )


def _counter_sum(stats: object, keys: tuple[str, ...]) -> int | None:
    """The sum of the whole, non-negative counters among ``keys``; None when none is there (a
    broker answer is hostile: a bool, a float or a negative number is not a counter)."""
    if not isinstance(stats, Mapping):
        return None
    counters = [
        value
        for value in (stats.get(key) for key in keys)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0
    ]
    return sum(counters) if counters else None


def own_channels(consumer_details: Iterable[Mapping[str, Any]], pod_ip: str) -> list[str]:
    """Names of the channels whose consumers connect from ``pod_ip`` (one per consumer, so repeats count)."""
    names: list[str] = []
    for consumer in consumer_details:
        channel = consumer.get("channel_details")
        if isinstance(channel, Mapping) and channel.get("peer_host") == pod_ip:
            names.append(str(channel.get("name", "")))
    return names


def queue_metric(queue: QueueStats, settings: RabbitMQSettings) -> float:
    if settings.mode == "message-rate":
        return queue.publish_rate or 0.0
    return queue_length(queue, settings)


def queue_length(queue: QueueStats, settings: RabbitMQSettings) -> float:
    """The queue-length metric of one queue, whatever the mode (message-rate activation reads it too)."""
    if settings.exclude_unacknowledged or queue.unacked is None:
        return float(queue.ready)
    return float(queue.messages)


def _combine(values: list[float], settings: RabbitMQSettings) -> float:
    if not values:
        return 0.0
    if settings.operation == "max":
        return max(values)
    if settings.operation == "avg":
        return sum(values) / len(values)
    return sum(values)


def rabbitmq_measurement(stats: RabbitMQSnapshot, settings: RabbitMQSettings, taken_at: float) -> Measurement:
    if unknown := sorted(q.name for q in stats.queues if not q.known):
        shown = ", ".join(repr(name) for name in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise SourceError(
            f"the management API has no message counts yet for queue {shown}: it reports them a few "
            "seconds after a queue is declared (collect_statistics_interval), or never with statistics "
            "collection off; holding until it does",
            trigger=settings.name,
        )
    per_queue = {q.name: queue_metric(q, settings) for q in stats.queues}
    value = _combine(list(per_queue.values()), settings)
    active = value > settings.activation_value
    detail: dict[str, float] = dict(per_queue)
    if settings.mode == "message-rate":
        backlog = _combine([queue_length(q, settings) for q in stats.queues], settings)
        active = active or backlog > settings.activation_value
        detail[BACKLOG_KEY] = backlog
    if stats.local is not None:
        detail[LOCAL_PREFIX + "consumers"] = float(stats.local.consumers)
        detail[LOCAL_PREFIX + "unacked"] = float(stats.local.unacked)
        detail[LOCAL_PREFIX + "deliver-rate"] = stats.local.deliver_rate
    return Measurement(
        trigger=settings.name,
        value=value,
        target=settings.value,
        active=active,
        replica_cap=None,
        detail=detail,
        taken_at=taken_at,
        warnings=stats.warnings,
    )
