"""The policy engine: measurements + hints + history -> how many replicas, and why.

Pure: no I/O and no clock. The caller keeps the engine's :class:`History` (a frozen
value) and passes it back with every call, so the same inputs always give the same
:class:`Decision`. The arithmetic is the HPA's (``pkg/controller/podautoscaler``):

1. per trigger, ``ceil(value / target)`` (an AverageValue metric), unless the value is
   within ``tolerance`` of the target for the current replicas; capped at the
   measurement's ``replica_cap`` (Kafka: partitions);
2. several triggers -> the largest recommendation;
3. stabilization: up to the lowest recommendation of the scale-up window, down to the
   highest of the scale-down window (the raw recommendations are what is remembered);
4. rate policies (pods or percent per period, select max/min/disabled) measured
   against the scale events of each policy's period;
5. clamp to [max(min-replicas, 1), max-replicas].

On top, what the HPA leaves to KEDA: 0 <-> 1 by activation, the cooldown before
zero, fallback replicas after consecutive failures, pause. Going to zero is never a
plain ``desired = 0``: :attr:`Decision.wants_zero` asks the caller to hand the
Deployment to the waker, which owns zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

from tidescale.hints import Hints, RatePolicy, ScalingRules, format_duration
from tidescale.sources.base import Measurement, MeasurementFailure

__all__ = [
    "STALE_INTERVALS",
    "Decision",
    "History",
    "Recommendation",
    "ScaleEvent",
    "TriggerRecommendation",
    "decide",
]

STALE_INTERVALS = 3
"""A measurement older than this many polling intervals counts as a failure."""

_EPSILON = 1e-9  # 1.1 / 0.1 == 11.000000000000002 asks for 11 replicas; 440 / 400 is within 0.1 of 1


@dataclass(frozen=True, kw_only=True, slots=True)
class Recommendation:
    """One raw (unstabilized) recommendation, remembered for the stabilization windows."""

    at: float
    replicas: int


@dataclass(frozen=True, kw_only=True, slots=True)
class ScaleEvent:
    """A change of the replica count made on the engine's advice: +added or -removed."""

    at: float
    change: int


@dataclass(frozen=True, kw_only=True, slots=True)
class History:
    """What the engine remembers between calls. Start with ``History()``."""

    recommendations: tuple[Recommendation, ...] = ()
    scale_events: tuple[ScaleEvent, ...] = ()
    failures: tuple[tuple[str, int], ...] = ()
    """Consecutive failed measurements per trigger (only triggers with at least one)."""
    last_active: float | None = None
    """When a trigger was last seen active; None before the first decision."""

    def failures_of(self, trigger: str) -> int:
        return dict(self.failures).get(trigger, 0)


TriggerState = Literal["ok", "failing", "fallback"]


@dataclass(frozen=True, kw_only=True, slots=True)
class TriggerRecommendation:
    """What one trigger asked for in one decision."""

    trigger: str
    state: TriggerState
    replicas: int
    """The trigger's raw recommendation (before stabilization, rate limits and clamps)."""
    active: bool
    value: float | None = None
    target: float | None = None
    within_tolerance: bool = False
    capped: int | None = None
    """The replica cap that lowered the recommendation, when one did."""
    error: str | None = None
    consecutive_failures: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    """The engine's answer for one moment."""

    desired: int
    """The replica count to write (never 0 from >= 1 replicas, except when pinned there)."""
    reason: str
    """One line for an Event: what drove the decision, old -> new, what held it back."""
    wants_zero: bool
    """Every trigger has been inactive for the cooldown and min-replicas is 0: hand over to the waker."""
    capped_by: str | None
    """The limit that last changed the count (``scale-up policy 4 pods/15s``, ``max-replicas 10``, ...)."""
    recommendations: tuple[TriggerRecommendation, ...]
    history: History
    """The history to pass to the next call once ``desired`` has been written."""
    history_unapplied: History
    """The history to pass instead when ``desired`` was not written (dry-run, failed write)."""


def decide(
    measurements: Iterable[Measurement | MeasurementFailure],
    *,
    current: int,
    hints: Hints,
    now: float,
    history: History,
) -> Decision:
    """The desired replica count for ``current`` replicas at monotonic time ``now``."""
    fresh = history.last_active is None
    if fresh:
        # A new leader (or a restart) has seen no activity yet: count its start as activity,
        # and remember the current count, so that nothing scales down or to zero before
        # a full window of its own observations (the HPA seeds its window the same way).
        history = replace(
            history,
            last_active=now,
            recommendations=(Recommendation(at=now, replicas=current),) if current > 0 else (),
        )
    triggers = _recommend(measurements, current=current, hints=hints, now=now, history=history)
    counts = tuple((t.trigger, t.consecutive_failures) for t in triggers if t.consecutive_failures)
    any_active = any(t.active for t in triggers)
    any_failing = any(t.state != "ok" for t in triggers)
    history = replace(history, failures=counts, last_active=now if any_active else history.last_active)
    if hints.paused:
        return _paused(triggers, current=current, hints=hints, history=history)
    if current == 0:
        return _from_zero(triggers, hints=hints, now=now, history=history)
    return _from_running(
        triggers,
        current=current,
        hints=hints,
        now=now,
        history=history,
        idle=not any_active and not any_failing,
    )


# ---------------------------------------------------------------- per trigger


def _recommend(
    measurements: Iterable[Measurement | MeasurementFailure],
    *,
    current: int,
    hints: Hints,
    now: float,
    history: History,
) -> tuple[TriggerRecommendation, ...]:
    latest: dict[str, Measurement | MeasurementFailure] = {}
    for given in measurements:
        seen = latest.get(given.trigger)
        if seen is None or given.taken_at >= seen.taken_at:
            latest[given.trigger] = given
    stale_after = STALE_INTERVALS * hints.polling_interval
    result = []
    for settings in hints.triggers:
        name = settings.name
        reading = latest.get(name)
        error: str | None
        if reading is None:
            error = "no measurement"
        elif isinstance(reading, MeasurementFailure):
            error = reading.error
        elif now - reading.taken_at > stale_after:
            error = (
                f"measurement is {format_duration(round(now - reading.taken_at, 3))} old "
                f"(more than {STALE_INTERVALS} polling intervals)"
            )
        else:
            error = None
        if error is None and isinstance(reading, Measurement):
            result.append(_from_measurement(reading, current=current, tolerance=hints.tolerance))
            continue
        failures = history.failures_of(name) + 1
        fallback = hints.fallback
        if fallback is not None and failures >= fallback.failure_threshold:
            state: TriggerState = "fallback"
            replicas = fallback.replicas
        else:
            # As the HPA does with a metric it cannot read: hold, so that the other
            # triggers can still scale up but nothing scales down on missing data.
            state, replicas = "failing", current
        result.append(
            TriggerRecommendation(
                trigger=name,
                state=state,
                replicas=replicas,
                active=False,
                error=error,
                consecutive_failures=failures,
            )
        )
    return tuple(result)


def _from_measurement(reading: Measurement, *, current: int, tolerance: float) -> TriggerRecommendation:
    value = max(reading.value, 0.0)
    target = reading.target
    within = False
    if target <= 0:  # a source bug; refuse to divide, hold instead
        replicas = current
    else:
        replicas = max(0, math.ceil(value / target - _EPSILON))
        if current > 0 and abs(1.0 - value / (target * current)) <= tolerance + _EPSILON:
            replicas, within = current, True
    capped = None
    if reading.replica_cap is not None and replicas > reading.replica_cap:
        replicas = capped = reading.replica_cap
    return TriggerRecommendation(
        trigger=reading.trigger,
        state="ok",
        replicas=replicas,
        active=reading.active,
        value=reading.value,
        target=target,
        within_tolerance=within,
        capped=capped,
    )


# ---------------------------------------------------------------- the three cases


def _paused(
    triggers: tuple[TriggerRecommendation, ...], *, current: int, hints: Hints, history: History
) -> Decision:
    if hints.paused_replicas is not None:
        desired = hints.paused_replicas
        why = f"paused at {desired} replicas (tidescale.io/paused-replicas)"
    else:
        desired = current
        why = "paused (tidescale.io/paused)"
    change = f"{current} -> {desired}" if desired != current else f"stays at {current}"
    return Decision(
        desired=desired,
        reason=f"{why}: {change}",
        wants_zero=False,
        capped_by=None,
        recommendations=triggers,
        history=history,
        history_unapplied=history,
    )


def _from_zero(
    triggers: tuple[TriggerRecommendation, ...], *, hints: Hints, now: float, history: History
) -> Decision:
    active = [t for t in triggers if t.active]
    fallback = [t for t in triggers if t.state == "fallback" and t.replicas > 0]
    if active:
        why = f"{_describe(active[0], hints)} is active"
    elif fallback:
        why = _describe(fallback[0], hints)
    elif hints.min_replicas > 0:
        why = f"below min-replicas {hints.min_replicas}"
    else:
        why = "no trigger active" if triggers else "no triggers"
        return Decision(
            desired=0,
            reason=f"{why}: stays at 0",
            wants_zero=False,
            capped_by=None,
            recommendations=triggers,
            history=replace(history, recommendations=()),
            history_unapplied=history,
        )
    wanted = max([hints.wake_replicas, hints.min_replicas, *(t.replicas for t in fallback)])
    desired = min(wanted, hints.max_replicas)
    capped_by = f"max-replicas {hints.max_replicas}" if desired < wanted else None
    reason = f"{why}: 0 -> {desired}" + (f", capped by {capped_by}" if capped_by else "")
    # Remember the wake count so the scale-down window protects the woken replicas.
    woken = replace(history, recommendations=(Recommendation(at=now, replicas=desired),))
    return Decision(
        desired=desired,
        reason=reason,
        wants_zero=False,
        capped_by=capped_by,
        recommendations=triggers,
        history=woken,
        history_unapplied=history,
    )


def _from_running(
    triggers: tuple[TriggerRecommendation, ...],
    *,
    current: int,
    hints: Hints,
    now: float,
    history: History,
    idle: bool,
) -> Decision:
    driver = max(triggers, key=lambda t: t.replicas, default=None)
    raw = current if driver is None else driver.replicas
    capped_by = None
    if driver is not None and driver.capped is not None:
        capped_by = _cap_words(driver, hints)

    recommendations = (*history.recommendations, Recommendation(at=now, replicas=raw))
    stabilized, held_by = _stabilize(recommendations, raw=raw, current=current, hints=hints, now=now)
    if held_by is not None and stabilized != raw:
        capped_by = held_by

    floor = max(hints.min_replicas, 1)
    desired, limited_by = _rate_limit(stabilized, current=current, hints=hints, now=now, history=history)
    if limited_by is not None and desired != stabilized:
        capped_by = limited_by
    # Out-of-range counts (a hand edit, a lowered max) go straight to the bound, as in the HPA.
    if desired > hints.max_replicas:
        desired, capped_by = hints.max_replicas, f"max-replicas {hints.max_replicas}"
    elif desired < floor:
        desired = floor
        capped_by = (
            f"min-replicas {floor}" if hints.min_replicas else "1 replica while running (zero is the waker's)"
        )

    cooled = history.last_active is not None and now - history.last_active >= hints.cooldown
    wants_zero = hints.min_replicas == 0 and bool(triggers) and idle and cooled

    window = max(hints.scale_up.stabilization, hints.scale_down.stabilization)
    kept = tuple(r for r in recommendations if r.at > now - window or r.at == now)
    longest = max((p.period for p in (*hints.scale_up.policies, *hints.scale_down.policies)), default=0.0)
    events = tuple(e for e in history.scale_events if e.at > now - longest)
    unapplied = replace(history, recommendations=kept, scale_events=events)
    applied = unapplied
    if desired != current:
        applied = replace(unapplied, scale_events=(*events, ScaleEvent(at=now, change=desired - current)))

    reason = _reason(driver, hints=hints, current=current, desired=desired, capped_by=capped_by)
    if wants_zero:
        since = now if history.last_active is None else history.last_active
        idle_for = format_duration(round(now - since, 3))
        idle_words = f"no trigger active for {idle_for} (cooldown {format_duration(hints.cooldown)})"
        # Zero is reached from one replica only: above one, this decision's write is a step down.
        reason = (
            f"{idle_words}: {current} -> 0, handing over to the waker"
            if desired == current
            else f"{idle_words}: {current} -> {desired} first, then zero through the waker"
        )
    return Decision(
        desired=desired,
        reason=reason,
        wants_zero=wants_zero,
        capped_by=capped_by,
        recommendations=triggers,
        history=applied,
        history_unapplied=unapplied,
    )


# ---------------------------------------------------------------- HPA steps


def _stabilize(
    recommendations: tuple[Recommendation, ...], *, raw: int, current: int, hints: Hints, now: float
) -> tuple[int, str | None]:
    """The HPA's stabilizeRecommendationWithBehaviors: bring ``current`` within [lowest of the
    up window, highest of the down window]."""
    up_cut = now - hints.scale_up.stabilization
    down_cut = now - hints.scale_down.stabilization
    up = min([raw, *(r.replicas for r in recommendations if r.at > up_cut)])
    down = max([raw, *(r.replicas for r in recommendations if r.at > down_cut)])
    result = min(max(current, up), down)
    if result < raw:
        return result, f"scale-up stabilization {format_duration(hints.scale_up.stabilization)}"
    if result > raw:
        return result, f"scale-down stabilization {format_duration(hints.scale_down.stabilization)}"
    return result, None


def _rate_limit(
    wanted: int, *, current: int, hints: Hints, now: float, history: History
) -> tuple[int, str | None]:
    """The HPA's convertDesiredReplicasWithBehaviorRate, without the min/max clamp."""
    if wanted > current:
        limit, words = _limit(hints.scale_up, "up", current=current, now=now, history=history)
        limit = max(limit, current)  # past events can push the limit below current: then just hold
        return (limit, words) if wanted > limit else (wanted, None)
    if wanted < current:
        limit, words = _limit(hints.scale_down, "down", current=current, now=now, history=history)
        limit = min(limit, current)
        return (limit, words) if wanted < limit else (wanted, None)
    return wanted, None


def _limit(
    rules: ScalingRules, direction: Literal["up", "down"], *, current: int, now: float, history: History
) -> tuple[int, str]:
    if rules.select == "disabled" or not rules.policies:
        return current, f"scale-{direction}-select disabled"
    best: tuple[int, RatePolicy] | None = None
    for policy in rules.policies:
        recent = [e.change for e in history.scale_events if e.at > now - policy.period]
        added = sum(c for c in recent if c > 0)
        removed = -sum(c for c in recent if c < 0)
        start = current - added + removed
        if direction == "up":
            if policy.kind == "pods":
                proposed = start + policy.value
            else:
                # Rounded up, or a small count could never grow by a percentage.
                proposed = math.ceil(start * (1 + policy.value / 100) - _EPSILON)
        elif policy.kind == "pods":
            proposed = start - policy.value
        else:
            proposed = int(start * (1 - policy.value / 100))  # truncation, as the HPA's int32()
        # "max" selects the policy allowing the most change: the highest limit up, the lowest down.
        pick_higher = (direction == "up") == (rules.select == "max")
        if best is None or (proposed > best[0] if pick_higher else proposed < best[0]):
            best = (proposed, policy)
    assert best is not None
    return best[0], f"scale-{direction} policy {best[1]}"


# ---------------------------------------------------------------- words


def _cap_words(trigger: TriggerRecommendation, hints: Hints) -> str:
    if hints.trigger_types.get(trigger.trigger) == "kafka":
        return f"{trigger.capped} partitions of {trigger.trigger}"
    return f"replica cap {trigger.capped} of {trigger.trigger}"


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def _describe(trigger: TriggerRecommendation, hints: Hints) -> str:
    if trigger.state == "ok" and trigger.value is not None and trigger.target is not None:
        side = "over" if trigger.value > trigger.target else "under"
        return (
            f"{hints.metric_of(trigger.trigger)} {_number(trigger.value)} {side} threshold "
            f"{_number(trigger.target)} on {trigger.trigger}"
        )
    if trigger.state == "fallback":
        return (
            f"{trigger.trigger} failed {trigger.consecutive_failures} times in a row ({trigger.error}), "
            f"fallback {trigger.replicas} replicas"
        )
    return f"{trigger.trigger} failing ({trigger.error}), holding"


def _reason(
    driver: TriggerRecommendation | None, *, hints: Hints, current: int, desired: int, capped_by: str | None
) -> str:
    what = "no triggers" if driver is None else _describe(driver, hints)
    change = f"{current} -> {desired}" if desired != current else f"stays at {current}"
    parts = [f"{what}: {change}"]
    if capped_by is not None:
        verb = "held by" if "stabilization" in capped_by else "capped by"
        parts.append(f"{verb} {capped_by}")
    elif driver is not None and driver.within_tolerance:
        parts.append(f"within tolerance {hints.tolerance:g}")
    return ", ".join(parts)
