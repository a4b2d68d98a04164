"""The figures of bench/bench_drain_time.py, computed from what it sampled. Pure, so that the
unit tests (tests/unit/test_bench_drain_figures.py) can pin them down.

A series is a list of ``(seconds, value)`` samples in time order, on the bench's own clock
(seconds since the script began). Between two samples a value holds: a series is a step
function, the value of a sample lasting until the next one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "Burst",
    "Outcome",
    "best_configuration",
    "drain_time",
    "pod_seconds",
    "series_max",
]

Series = Sequence[tuple[float, float]]


@dataclass(frozen=True, kw_only=True, slots=True)
class Burst:
    """One burst of the script: ``messages`` produced at once, ``at`` seconds after the start."""

    at: float
    messages: int


def pod_seconds(series: Series, start: float, end: float) -> float:
    """The integral of a step series (Ready pods) over ``[start, end]``.

    Each sample's value holds from its time until the next sample's; before the first sample
    nothing is known and nothing is counted, and the last sample holds until ``end``."""
    if end <= start:
        return 0.0
    total = 0.0
    for index, (at, value) in enumerate(series):
        until = series[index + 1][0] if index + 1 < len(series) else end
        low, high = max(at, start), min(until, end)
        if high > low and math.isfinite(value):
            total += value * (high - low)
    return total


def series_max(series: Series, start: float, end: float) -> float | None:
    """The largest value the step series takes within ``[start, end)``, None if it has none:
    the sample in force at ``start`` counts as well as those taken inside."""
    found: float | None = None
    for index, (at, value) in enumerate(series):
        until = series[index + 1][0] if index + 1 < len(series) else math.inf
        if at < end and until > start and (found is None or value > found):
            found = value
    return found


def drain_time(lag: Series, *, burst_at: float, until: float, settled: float) -> float | None:
    """Seconds from ``burst_at`` to the first sample at which the lag is back to ``settled`` or
    less, after the burst lifted it above that; None when it is not back by ``until`` (the next
    burst, or the end of the run): the burst did not drain.

    The burst must first be seen: samples taken before the burst's messages reached the
    broker still show the old, low lag and are not a drain. A burst whose lag never rose above
    ``settled`` by ``until`` drained as fast as it came: 0."""
    risen = False
    for at, value in lag:
        if at < burst_at:
            continue
        if at > until:
            break
        if value > settled:
            risen = True
        elif risen:
            return at - burst_at
    return None if risen else 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class Outcome:
    """What one configuration achieved over the run."""

    misses: int
    """Bursts not drained within the target (or not drained at all)."""
    pod_seconds: float


def best_configuration(outcomes: Mapping[str, Outcome]) -> str | None:
    """The rule, fixed before any run was looked at: the fewest misses of the drain target, and
    among those the fewest pod-seconds (so a configuration that meets the target on every
    burst always beats one that misses, and among those that all meet it the cheapest wins).
    A tie on both goes to the first in ``outcomes``' order. None when there is nothing to pick."""
    best: str | None = None
    for label, outcome in outcomes.items():
        if best is None:
            best = label
            continue
        current = outcomes[best]
        if (outcome.misses, outcome.pod_seconds) < (current.misses, current.pod_seconds):
            best = label
    return best
