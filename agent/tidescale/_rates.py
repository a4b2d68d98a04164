"""Processing and arrival rates, measured from what the agents already read from the broker.

A :class:`ProgressSnapshot` is one reading of cumulative counters per unit (a Kafka partition
``topic/3``, a RabbitMQ queue): ``consumed`` is the committed offset (Kafka) or the ack count
(RabbitMQ), ``produced`` the log-end offset or the publish count, ``lag`` what is waiting now.
:func:`measure_rates` turns the snapshots of a sliding window into rates. Pure.

The estimator, and why each rule is there:

- Only the snapshots of the last ``window`` seconds count; averaging over the window is the
  smoothing (one slow batch or one late commit moves the estimate by its share of the window,
  not all of it).
- The processing rate is a capacity: it is measured only over *busy* intervals, where lag was
  above zero at both ends. A consumer that waits for messages consumes at the arrival rate, not
  at the rate it could; counting its idle time would make every quiet period look like a slow
  consumer and scale up for nothing.
- The per-consumer rate divides by the number of consumers, and only over intervals in which
  that number did not change (a join or leave is a rebalance: nobody consumes for a while, and
  the interval says nothing about a pod's speed). For one pod's own series the count is 1.
- A counter that went backwards (an offset reset, a recreated queue, a broker restart for
  RabbitMQ's counters) makes the whole interval unusable (leaving only that unit out would
  count the time without the messages); a unit present at only one end (a partition reassigned
  away) is left out of that interval. Neither can make a rate negative.
- The arrival rate is the steady one: the window's intervals are grouped into blocks of at least
  ``arrival_block`` seconds and the arrival is the time-weighted median of the blocks' rates. A
  burst lands in one or two blocks and moves the median not at all: its messages are already in
  the backlog, and averaging them over the window as well would count them twice (the drain
  formula adds the arrival rate to backlog / target). Arrival that is high in most blocks is
  steady, and the median follows it.
- Warm-up: the first ``warm_up`` seconds after the first snapshot are not used (a new pod
  connects, joins its group and warms its caches there, and would look slow). The rate stays
  unknown (None) until ``min_coverage`` seconds of usable intervals remain; the caller then
  falls back (docs/policy.md, "Drain-time target").
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["ProgressSnapshot", "RateSettings", "Rates", "measure_rates"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ProgressSnapshot:
    """Cumulative counters of one trigger at one instant."""

    taken_at: float
    """Seconds of the caller's monotonic clock."""
    consumed: Mapping[str, int]
    """Per unit: committed offset (Kafka) or messages acknowledged so far (RabbitMQ)."""
    produced: Mapping[str, int] = field(default_factory=dict)
    """Per unit: log-end offset (Kafka) or messages published so far (RabbitMQ)."""
    lag: Mapping[str, float] = field(default_factory=dict)
    """Per unit: messages waiting now (Kafka lag, RabbitMQ ready + unacknowledged)."""
    consumers: int = 1
    """Consumers sharing the units: group members (Kafka), queue consumers (RabbitMQ), 1 for a pod."""

    @property
    def backlog(self) -> float:
        return sum(max(0.0, value) for value in self.lag.values() if math.isfinite(value))


@dataclass(frozen=True, kw_only=True, slots=True)
class RateSettings:
    window: float = 60.0
    """Seconds of history the rates average over."""
    warm_up: float = 15.0
    """Seconds after the first snapshot that are not used (joining, rebalancing, cold caches)."""
    min_coverage: float = 10.0
    """Seconds of usable intervals needed before a rate is known."""
    arrival_block: float = 5.0
    """Shortest block of intervals whose arrival rate is one sample of the median (the last
    block, if shorter, joins the one before)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Rates:
    """Rates in messages per second; None while not measurable (see the module docstring)."""

    throughput: float | None
    """Messages the consumers together processed per second while busy."""
    per_consumer: float | None
    """Messages one consumer processed per second while busy: the rate the drain target uses."""
    arrival: float | None
    """Messages produced per second, steadily (a burst is in the backlog, not here)."""
    busy_seconds: float
    """Seconds of usable busy intervals behind ``throughput`` and ``per_consumer``."""
    covered_seconds: float
    """Seconds of usable intervals behind ``arrival``."""


def measure_rates(snapshots: Sequence[ProgressSnapshot], *, now: float, settings: RateSettings) -> Rates:
    """Rates over the snapshots taken in ``[now - window, now]`` after the warm-up, in time order."""
    if not snapshots:
        return Rates(throughput=None, per_consumer=None, arrival=None, busy_seconds=0.0, covered_seconds=0.0)
    ordered = sorted(snapshots, key=lambda snapshot: snapshot.taken_at)
    start = max(now - settings.window, ordered[0].taken_at + settings.warm_up)
    usable = [snapshot for snapshot in ordered if start <= snapshot.taken_at <= now]
    consumed = busy = per_consumer_sum = per_consumer_seconds = 0.0
    arrivals: list[tuple[float, float]] = []
    for before, after in itertools.pairwise(usable):
        seconds = after.taken_at - before.taken_at
        if seconds <= 0:
            continue
        arrived = _advance(before.produced, after.produced)
        if arrived is not None:
            arrivals.append((seconds, arrived))
        done = _advance(before.consumed, after.consumed)
        if done is None or before.backlog <= 0 or after.backlog <= 0:
            continue
        consumed += done
        busy += seconds
        if before.consumers == after.consumers and after.consumers > 0:
            per_consumer_sum += done / after.consumers
            per_consumer_seconds += seconds
    enough_busy = busy >= settings.min_coverage
    covered = sum(seconds for seconds, _ in arrivals)
    return Rates(
        throughput=consumed / busy if enough_busy else None,
        per_consumer=(
            per_consumer_sum / per_consumer_seconds if per_consumer_seconds >= settings.min_coverage else None
        ),
        arrival=_steady_arrival(arrivals, block=settings.arrival_block)
        if covered >= settings.min_coverage
        else None,
        busy_seconds=busy,
        covered_seconds=covered,
    )


def _steady_arrival(arrivals: Sequence[tuple[float, float]], *, block: float) -> float:
    """The time-weighted median of the arrival rates of blocks of at least ``block`` seconds
    (``arrivals``: (seconds, messages) per interval, in time order, at least one)."""
    blocks: list[tuple[float, float]] = []
    seconds = messages = 0.0
    for interval_seconds, arrived in arrivals:
        seconds, messages = seconds + interval_seconds, messages + arrived
        if seconds >= block:
            blocks.append((seconds, messages))
            seconds = messages = 0.0
    if seconds > 0:
        if blocks:
            last_seconds, last_messages = blocks.pop()
            seconds, messages = seconds + last_seconds, messages + last_messages
        blocks.append((seconds, messages))
    by_rate = sorted((messages / seconds, seconds) for seconds, messages in blocks)
    half, weight = sum(seconds for _, seconds in by_rate) / 2, 0.0
    for rate, seconds in by_rate:
        weight += seconds
        if weight >= half:
            return rate
    return by_rate[-1][0]


def _advance(before: Mapping[str, int], after: Mapping[str, int]) -> float | None:
    """How far the counters of the units present at both ends moved; None when nothing is
    comparable or a counter went backwards (a reset: the interval says nothing)."""
    common = before.keys() & after.keys()
    if not common:
        return None
    total = 0
    for unit in common:
        step = after[unit] - before[unit]
        if step < 0:
            return None
        total += step
    return float(total)
