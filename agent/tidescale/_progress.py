"""Broker snapshots -> :class:`~tidescale._rates.ProgressSnapshot`, the input of the rate
estimator and the stall detector. Pure.

Kafka: per partition, the group's committed offset is ``consumed`` and the log-end offset
``produced``; the lag is their difference. A partition the group never committed to is left
out: there is no counter to watch move until its first commit (the policy's lag rules still
count it, ``sources/kafka/_lag.py``). A partition the broker gave no log-end for keeps its
committed offset (progress is still seen) but counts no lag.

RabbitMQ: per queue, the messages consumed since its statistics began (acks, plus auto-acked
deliveries and gets) are ``consumed``, the publish count ``produced``, ready + unacknowledged
the lag. A queue without consumed counters (statistics off, or nothing consumed yet) is left out
of ``consumed``; a broker restart resets the counters, which the estimator treats as a reset.
The consumers are the queues' consumers added up.
"""

from __future__ import annotations

from collections.abc import Sequence

from tidescale._rates import ProgressSnapshot
from tidescale.sources.kafka._lag import KafkaSnapshot
from tidescale.sources.rabbitmq._depth import QueueStats

__all__ = ["kafka_progress", "rabbitmq_progress"]


def kafka_progress(snapshot: KafkaSnapshot, *, consumers: int, taken_at: float) -> ProgressSnapshot:
    """``consumers``: the group's members (GROUP scope) or 1 (one pod's LOCAL snapshot)."""
    consumed: dict[str, int] = {}
    produced: dict[str, int] = {}
    lag: dict[str, float] = {}
    for offsets in snapshot.partitions:
        if offsets.committed is None:
            continue
        consumed[offsets.key] = offsets.committed
        if offsets.log_end is not None:
            produced[offsets.key] = offsets.log_end
            lag[offsets.key] = float(max(0, offsets.log_end - offsets.committed))
    return ProgressSnapshot(
        taken_at=taken_at, consumed=consumed, produced=produced, lag=lag, consumers=max(consumers, 0)
    )


def rabbitmq_progress(queues: Sequence[QueueStats], *, taken_at: float) -> ProgressSnapshot:
    return ProgressSnapshot(
        taken_at=taken_at,
        consumed={queue.name: queue.consumed_total for queue in queues if queue.consumed_total is not None},
        produced={queue.name: queue.published_total for queue in queues if queue.published_total is not None},
        lag={queue.name: float(queue.messages) for queue in queues if queue.known},
        consumers=sum(max(queue.consumers, 0) for queue in queues),
    )
