"""The drain-time recommendation: the fewest replicas that clear the backlog within a target.

With ``B`` messages waiting, ``a`` arriving per second and each pod processing ``r`` per second,
``n`` pods drain the backlog at ``n*r - a`` per second, so they clear it within ``T`` seconds
when ``n*r - a >= B/T``::

    n = ceil((a + B/T) / r)          then at most the cap (partitions, max-replicas)

While ``r`` is unknown (no pod has been busy long enough to measure it, see ``_rates``) the
recommendation falls back to the trigger's threshold, ``ceil(B / threshold)``, if one is given,
and otherwise holds the current count (at least one pod while there is a backlog, so that
there is someone to measure). The result is the recommend step of the policy pipeline:
stabilization, rate limits and the min/max clamp apply after it as to any trigger's.
Pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["MAX_REPLICAS", "DrainInputs", "DrainRecommendation", "recommend_drain"]

MAX_REPLICAS = 2**31 - 1
"""Kubernetes keeps replicas in an int32; a rate near zero must not ask for more (or overflow)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DrainInputs:
    backlog: float
    """Messages waiting now (lag, queue depth); a fraction counts as a whole message, negative or
    non-finite as 0."""
    arrival_rate: float | None
    """Messages arriving per second; None when not measured (then taken as 0)."""
    per_pod_rate: float | None
    """Messages one pod processes per second while busy; None while unknown."""
    target_seconds: float
    """The drain-time target, > 0."""
    cap: int | None
    """Most replicas that can help (min of partitions and max-replicas), or None."""
    current: int
    """Replicas now, for the fallback without a threshold."""
    threshold: float | None = None
    """The trigger's per-replica threshold, for the fallback while the rate is unknown."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DrainRecommendation:
    replicas: int
    measured: bool
    """False when the rate was unknown and a fallback decided."""
    clears_in: float | None
    """Seconds the recommended replicas need to clear the backlog; None if they cannot
    (capped below the arrival rate) or the rate is unknown."""
    reason: str
    """For Events and ``explain``."""


_SLACK = 1e-9
"""Relative slack on the pods' capacity: 30 pods at 0.03/s keep up with 0.9/s, although
30 * 0.03 is 0.8999999999999999 in floating point."""


def recommend_drain(inputs: DrainInputs) -> DrainRecommendation:
    # Messages are whole: a fraction (an averaged lag) is a message waiting.
    backlog = (
        float(math.ceil(inputs.backlog)) if math.isfinite(inputs.backlog) and inputs.backlog > 0 else 0.0
    )
    arrival = (
        inputs.arrival_rate
        if inputs.arrival_rate is not None and math.isfinite(inputs.arrival_rate) and inputs.arrival_rate > 0
        else 0.0
    )
    rate = inputs.per_pod_rate
    if rate is None or not math.isfinite(rate) or rate <= 0:
        return _fallback(inputs, backlog)
    fewest = _fewest(backlog=backlog, arrival=arrival, rate=rate, target=inputs.target_seconds)
    replicas = _capped(fewest, inputs.cap)
    net = _net_rate(replicas, rate=rate, arrival=arrival)
    clears_in = backlog / net if net > 0 else (0.0 if backlog == 0 else None)
    return DrainRecommendation(
        replicas=replicas,
        measured=True,
        clears_in=clears_in,
        reason=_measured_reason(
            backlog=backlog,
            arrival=arrival,
            rate=rate,
            replicas=replicas,
            clears_in=clears_in,
            target=inputs.target_seconds,
            capped=replicas < fewest,
        ),
    )


def _fewest(*, backlog: float, arrival: float, rate: float, target: float) -> int:
    """The smallest n with ``n*rate - arrival >= backlog/target`` (and draining at all when there
    is a backlog). The ceiling of the formula is within a pod of it; the steps correct what
    floating point gets wrong at an exact fit (5.0000000001 pods is 5)."""
    needed = (arrival + backlog / target) / rate
    if not math.isfinite(needed) or needed >= MAX_REPLICAS:
        return MAX_REPLICAS

    def clears(replicas: int) -> bool:
        net = _net_rate(replicas, rate=rate, arrival=arrival)
        return net >= backlog / target and (backlog == 0 or net > 0)

    replicas = max(0, math.ceil(needed))
    for _ in range(2):
        if replicas > 0 and clears(replicas - 1):
            replicas -= 1
    for _ in range(2):
        if not clears(replicas) and replicas < MAX_REPLICAS:
            replicas += 1
    return replicas


def _net_rate(replicas: int, *, rate: float, arrival: float) -> float:
    """How fast ``replicas`` pods shrink the backlog, with the slack on their capacity."""
    return replicas * rate * (1 + _SLACK) - arrival


def _fallback(inputs: DrainInputs, backlog: float) -> DrainRecommendation:
    if inputs.threshold is not None and inputs.threshold > 0:
        replicas = _capped(math.ceil(backlog / inputs.threshold), inputs.cap)
        words = f"threshold {_count(inputs.threshold)} per pod: {_pods(replicas)}"
    else:
        replicas = _capped(max(inputs.current, 1 if backlog > 0 else 0), inputs.cap)
        words = f"holding {_pods(replicas)} until it is"
    return DrainRecommendation(
        replicas=replicas,
        measured=False,
        clears_in=None,
        reason=f"backlog {_count(backlog)}, per-pod rate not measured yet: {words}",
    )


def _capped(replicas: int, cap: int | None) -> int:
    return replicas if cap is None else min(replicas, max(cap, 0))


def _measured_reason(
    *,
    backlog: float,
    arrival: float,
    rate: float,
    replicas: int,
    clears_in: float | None,
    target: float,
    capped: bool,
) -> str:
    head = f"backlog {_count(backlog)}, arriving {_count(arrival)}/s, each pod {_count(rate)}/s"
    cap_words = " (capped)" if capped else ""
    if clears_in is None:
        return f"{head}: {_pods(replicas)}{cap_words} cannot keep up (target {_seconds(target)})"
    return (
        f"{head}: {_pods(replicas)}{cap_words} clear it in {_seconds(clears_in)} (target {_seconds(target)})"
    )


def _count(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:,.3g}"


def _pods(replicas: int) -> str:
    return f"{replicas} pod" if replicas == 1 else f"{replicas} pods"


def _seconds(value: float) -> str:
    return f"{math.ceil(value)} s"
