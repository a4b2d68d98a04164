"""The policy engine: measurements + hints + history -> how many replicas, and why.

Pure: no I/O and no clock. The caller keeps the engine's :class:`History` (a frozen value)
and passes it back with every call, so the same inputs always give the same
:class:`Decision`. One call is one sync of the HPA controller with KEDA in front of it, and
by default it writes what they would write (docs/policy.md walks through every step):

1. **measure** (:func:`_latest`, :func:`_count_failures`): the newest reading per trigger; a
   failed, missing or stale one is a failure, counted as KEDA's fallback counts them
   (``fallback.go`` ``GetMetricsWithFallback``);
2. **recommend** (:func:`_recommend`): per trigger, the HPA's replica calculator
   (``replica_calculator.go`` ``GetExternalPerPodMetricReplicas`` for AverageValue,
   ``GetExternalMetricReplicas`` for Value) on the value KEDA would publish (partition cap on the
   value, fallback value); a failing trigger has no opinion; the largest opinion wins, and
   none at all when a trigger fails and the rest would scale down (``computeReplicasForMetrics``);
   with scaling-modifiers (:func:`_compose`), one composite metric, the formula over the
   triggers' values, takes the place of their opinions, as KEDA's ``scalingModifiers`` does;
3. **stabilize** (:func:`_stabilize`, :func:`_stabilize_legacy`): the recommendation windows;
4. **limit by policy** (:func:`_limit_by_policy`, :func:`_limit_legacy`): rate policies and the
   min/max clamp (``convertDesiredReplicasWithBehaviorRate``), or, with no behaviour hint, the
   HPA's nil-behaviour rules (``convertDesiredReplicasWithRules``);
5. **clamp** (:func:`_out_of_range`): a count outside [min, max] goes straight to the bound,
   before any metric is looked at (``reconcileAutoscaler``);
6. **zero handoff** (:func:`_zero_handoff`): KEDA's executor (``scale_scaledobjects.go``
   ``RequestScale``): idle for strictly longer than the cooldown with min-replicas 0 sets
   :attr:`Decision.wants_zero`, asking the caller to hand the Deployment to the waker, which
   owns zero (and waking from it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import Literal

from tidescale._drain import DrainRecommendation
from tidescale._formula import FormulaEvaluationError
from tidescale._stall import StallState
from tidescale.hints import Fallback, Hints, RatePolicy, ScalingRules, format_duration
from tidescale.sources.base import Measurement, MeasurementFailure

__all__ = [
    "COMPOSITE",
    "STALE_INTERVALS",
    "Cap",
    "Decision",
    "FailureCount",
    "History",
    "Limit",
    "Recommendation",
    "ScaleEvent",
    "TriggerRecommendation",
    "composite_active",
    "decide",
]

STALE_INTERVALS = 3
"""A measurement older than this many polling intervals counts as a failure."""

COMPOSITE = "composite-metric"
"""The name of scaling-modifiers' one metric (KEDA's ``CompositeMetricName``)."""

_MAX_INT32 = 2**31 - 1


# ---------------------------------------------------------------- values


@dataclass(frozen=True, kw_only=True, slots=True)
class Recommendation:
    """One raw (unstabilized) recommendation, remembered for the stabilization windows."""

    at: float
    replicas: int


@dataclass(frozen=True, kw_only=True, slots=True)
class ScaleEvent:
    """One scale write in one direction (the HPA's ``timestampedScaleEvent``)."""

    at: float
    change: int
    """Replicas added (in the up list) or removed (in the down list): always positive."""
    outdated: bool = False
    """Older than the direction's longest policy period at the last write: its slot is reused."""


@dataclass(frozen=True, kw_only=True, slots=True)
class FailureCount:
    """Consecutive failures of one trigger, and when the last one was counted."""

    trigger: str
    count: int
    at: float


@dataclass(frozen=True, kw_only=True, slots=True)
class History:
    """What the engine remembers between calls. Start with ``History()``."""

    recommendations: tuple[Recommendation, ...] = ()
    """In the HPA's slot order (an old slot is reused rather than a new one appended)."""
    scale_up_events: tuple[ScaleEvent, ...] = ()
    scale_down_events: tuple[ScaleEvent, ...] = ()
    failures: tuple[FailureCount, ...] = ()
    """Only triggers failing right now."""
    last_active: float | None = None
    """When the triggers were last seen active without an error (KEDA's lastActiveTime)."""
    seeded: bool = False
    """False until the first decision records the current count (``recordInitialRecommendation``)."""

    def failures_of(self, trigger: str) -> int:
        return next((f.count for f in self.failures if f.trigger == trigger), 0)


class Limit(Enum):
    """What held or capped a decision."""

    MAX_REPLICAS = "max-replicas"
    MIN_REPLICAS = "min-replicas"
    RUNNING_FLOOR = "running floor"
    REPLICA_CAP = "replica cap"
    SCALE_UP_STABILIZATION = "scale-up stabilization"
    SCALE_DOWN_STABILIZATION = "scale-down stabilization"
    SCALE_UP_POLICY = "scale-up policy"
    SCALE_DOWN_POLICY = "scale-down policy"
    SCALE_UP_DISABLED = "scale-up disabled"
    SCALE_DOWN_DISABLED = "scale-down disabled"
    SCALE_UP_LIMIT = "scale-up limit"
    """The HPA's nil-behaviour limit: max(2 x current, 4)."""
    CONSUMER_STALLED = "consumer stalled"
    """The group consumes nothing with lag and Ready pods (``_stall``): more pods would not help."""


_WORDS: Mapping[Limit, str] = {
    Limit.MAX_REPLICAS: "max-replicas {detail}",
    Limit.MIN_REPLICAS: "min-replicas {detail}",
    Limit.RUNNING_FLOOR: "1 replica while running (zero is the waker's)",
    Limit.REPLICA_CAP: "{detail}",
    Limit.SCALE_UP_STABILIZATION: "scale-up stabilization {detail}",
    Limit.SCALE_DOWN_STABILIZATION: "scale-down stabilization {detail}",
    Limit.SCALE_UP_POLICY: "scale-up policy {detail}",
    Limit.SCALE_DOWN_POLICY: "scale-down policy {detail}",
    Limit.SCALE_UP_DISABLED: "{detail}",
    Limit.SCALE_DOWN_DISABLED: "{detail}",
    Limit.SCALE_UP_LIMIT: "the scale-up limit {detail} (twice the replicas, at least 4)",
    Limit.CONSUMER_STALLED: "a stalled consumer group ({detail})",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class Cap:
    """The limit that last changed the count, and its words (``scale-up policy 4 pods/15s``)."""

    limit: Limit
    detail: str = ""

    @property
    def holds(self) -> bool:
        """A stabilization window holds the count back rather than capping it."""
        return self.limit in (
            Limit.SCALE_UP_STABILIZATION,
            Limit.SCALE_DOWN_STABILIZATION,
            Limit.CONSUMER_STALLED,
        )

    def __str__(self) -> str:
        return _WORDS[self.limit].format(detail=self.detail)


TriggerState = Literal["ok", "failing", "fallback"]


@dataclass(frozen=True, kw_only=True, slots=True)
class TriggerRecommendation:
    """What one trigger asked for in one decision."""

    trigger: str
    state: TriggerState
    """``failing``: no opinion (a failed HPA metric query); ``fallback``: KEDA's fallback value."""
    replicas: int
    """The trigger's raw recommendation (the current count when it has no opinion)."""
    active: bool
    value: float | None = None
    """The measured value (before a partition cap); in fallback, the fallback's value."""
    target: float | None = None
    within_tolerance: bool = False
    capped: int | None = None
    """The cap (Kafka: partitions) that lowered the value or the recommendation, when one did."""
    error: str | None = None
    consecutive_failures: int = 0
    drain_reason: str | None = None
    """Set when a drain-time recommendation (``_drain``) gave ``replicas``: its reason."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    """The engine's answer for one moment."""

    desired: int
    """The replica count to write (never 0 from >= 1 replicas, except when pinned there)."""
    reason: str
    """One line for an Event: what drove the decision, old -> new, what held it back."""
    wants_zero: bool
    """Idle past the cooldown with min-replicas 0: hand over to the waker."""
    capped_by: Cap | None
    """The limit that last changed the count, if any."""
    recommendations: tuple[TriggerRecommendation, ...]
    history: History
    """The history to pass to the next call once ``desired`` has been written."""
    history_unapplied: History
    """The history to pass instead when ``desired`` was not written (dry-run, failed write)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class _Tolerances:
    up: float
    down: float

    def within(self, ratio: float) -> bool:
        # replica_calculator.go Tolerances.isWithin; NaN (0/0) is never within, as in Go.
        return (1.0 - self.down) <= ratio <= (1.0 + self.up)


# ---------------------------------------------------------------- the pipeline


def decide(
    measurements: Iterable[Measurement | MeasurementFailure],
    *,
    current: int,
    hints: Hints,
    now: float,
    history: History,
    pods: int | None = None,
    drain: Mapping[str, DrainRecommendation] | None = None,
    stall: StallState | None = None,
) -> Decision:
    """The desired replica count for ``current`` (spec) replicas at monotonic time ``now``.

    ``pods``: the scale subresource's ``status.replicas`` (pods that exist; None: ``current``),
    the base of the AverageValue tolerance and the ready-pod count of Value metrics.
    ``drain``: per trigger with a drain-time target, its recommendation (``_drain``): it replaces
    that trigger's threshold arithmetic as the recommend step, when the trigger measured; the
    stabilization, rate limits and clamp apply after it unchanged. Not used under scaling
    modifiers (the composite replaces the triggers' opinions).
    ``stall``: the stall detector's state (``_stall``); while stalled the count is held where it
    is (within min and max), after the other steps, so their windows keep recording."""
    pods = current if pods is None else pods
    history = _seed(history, current=current, now=now)
    latest = _latest(measurements, hints=hints, now=now)
    failures = _count_failures(latest, hints=hints, now=now, history=history)
    triggers = _recommend(latest, failures, current=current, pods=pods, hints=hints)
    triggers = _with_drain(triggers, drain or {})
    triggers = _compose(triggers, current=current, pods=pods, hints=hints)
    active = any(t.active for t in triggers)
    failing = any(t.state == "failing" for t in triggers)
    # KEDA updates lastActiveTime only when a trigger is active and none errs.
    history = replace(
        history, failures=failures, last_active=now if active and not failing else history.last_active
    )
    if hints.paused:
        return _paused(triggers, current=current, hints=hints, history=history)
    if current == 0:
        return _at_zero(triggers, hints=hints, history=history)

    out_of_range = _out_of_range(current, hints)
    raw = None if out_of_range is not None else _combine(triggers, current=current)
    cap: Cap | None
    if out_of_range is not None:
        (desired, cap), recorded = out_of_range, history
    elif raw is None:
        desired, cap, recorded = current, None, history
    else:
        desired, cap, recorded = _normalize(raw, current=current, hints=hints, now=now, history=history)
        cap = cap or _replica_cap(triggers, hints=hints, raw=raw, desired=desired)
        if stall is not None and stall.stalled and desired != current:
            desired, cap = current, _stall_cap(stall, now=now)

    wants_zero = _zero_handoff(triggers, current=current, hints=hints, now=now, history=history)
    applied = _store_scale_event(recorded, current=current, desired=desired, hints=hints, now=now)
    reason = _reason(
        triggers,
        hints=hints,
        current=current,
        desired=desired,
        cap=cap,
        no_opinion=raw is None and out_of_range is None,
    )
    if wants_zero:
        reason = _zero_words(current=current, desired=desired, hints=hints, now=now, history=history)
    return Decision(
        desired=desired,
        reason=reason,
        wants_zero=wants_zero,
        capped_by=cap,
        recommendations=triggers,
        history=applied,
        history_unapplied=recorded,
    )


# ---------------------------------------------------------------- 1. measure


def _seed(history: History, *, current: int, now: float) -> History:
    """The HPA's recordInitialRecommendation; and a fresh leader counts its start as activity
    (KEDA, with no lastActiveTime, would go to zero at once: tidescale waits one cooldown)."""
    if history.seeded:
        return history
    return replace(
        history,
        seeded=True,
        recommendations=(*history.recommendations, Recommendation(at=now, replicas=current)),
        last_active=now if history.last_active is None else history.last_active,
    )


def _latest(
    measurements: Iterable[Measurement | MeasurementFailure], *, hints: Hints, now: float
) -> dict[str, Measurement | str]:
    """Per trigger of the hints, its newest measurement, or why there is none usable."""
    newest: dict[str, Measurement | MeasurementFailure] = {}
    for given in measurements:
        seen = newest.get(given.trigger)
        if seen is None or given.taken_at >= seen.taken_at:
            newest[given.trigger] = given
    stale_after = STALE_INTERVALS * hints.polling_interval
    result: dict[str, Measurement | str] = {}
    for settings in hints.triggers:
        reading = newest.get(settings.name)
        if reading is None:
            result[settings.name] = "no measurement"
        elif isinstance(reading, MeasurementFailure):
            result[settings.name] = reading.error
        elif now - reading.taken_at > stale_after:
            result[settings.name] = (
                f"measurement is {format_duration(round(now - reading.taken_at, 3))} old "
                f"(more than {STALE_INTERVALS} polling intervals)"
            )
        else:
            result[settings.name] = reading
    return result


def _count_failures(
    latest: Mapping[str, Measurement | str], *, hints: Hints, now: float, history: History
) -> tuple[FailureCount, ...]:
    """KEDA's NumberOfFailures: +1 per failed query, reset by a success. With a failure
    interval, at most one failure counts per interval (KEDA counts per HPA query and per poll)."""
    interval = hints.fallback.failure_interval if hints.fallback is not None else 0.0
    counts = []
    for trigger, reading in latest.items():
        if isinstance(reading, Measurement):
            continue
        before = next((f for f in history.failures if f.trigger == trigger), None)
        if before is None:
            counts.append(FailureCount(trigger=trigger, count=1, at=now))
        elif interval <= 0 or now - before.at >= interval:
            counts.append(FailureCount(trigger=trigger, count=before.count + 1, at=now))
        else:
            counts.append(before)
    return tuple(counts)


# ---------------------------------------------------------------- 2. recommend


def _recommend(
    latest: Mapping[str, Measurement | str],
    failures: tuple[FailureCount, ...],
    *,
    current: int,
    pods: int,
    hints: Hints,
) -> tuple[TriggerRecommendation, ...]:
    counts = {f.trigger: f.count for f in failures}
    tolerances = _tolerances(hints)
    result = []
    for trigger, reading in latest.items():
        if isinstance(reading, Measurement):
            result.append(
                _from_measurement(reading, current=current, pods=pods, hints=hints, tolerances=tolerances)
            )
            continue
        failed = counts.get(trigger, 0)
        fallback = hints.fallback
        fallback_value = (
            None
            if fallback is None or failed <= fallback.failure_threshold
            else _fallback_value(fallback, hints=hints, current=current, pods=pods)
        )
        if fallback_value is None:
            result.append(
                TriggerRecommendation(
                    trigger=trigger,
                    state="failing",
                    replicas=current,
                    active=False,
                    error=reading,
                    consecutive_failures=failed,
                )
            )
            continue
        value, target = fallback_value
        replicas, within = _replicas_for(
            _milli(value), _milli(target), current=current, pods=pods, hints=hints, tolerances=tolerances
        )
        result.append(
            TriggerRecommendation(
                trigger=trigger,
                state="fallback",
                replicas=replicas,
                # scale_handler.go getScalerState: "When fallback is active, the scaler should be
                # considered active".
                active=True,
                value=value,
                target=target,
                within_tolerance=within,
                error=reading,
                consecutive_failures=failed,
            )
        )
    return tuple(result)


def _with_drain(
    triggers: tuple[TriggerRecommendation, ...], drain: Mapping[str, DrainRecommendation]
) -> tuple[TriggerRecommendation, ...]:
    """A measured trigger with a drain-time recommendation takes its count; a failing or fallback
    trigger keeps its own (no measurement, no backlog to drain)."""
    return tuple(
        replace(
            trigger,
            replicas=drain[trigger.trigger].replicas,
            within_tolerance=False,
            drain_reason=drain[trigger.trigger].reason,
        )
        if trigger.state == "ok" and trigger.trigger in drain
        else trigger
        for trigger in triggers
    )


def _from_measurement(
    reading: Measurement, *, current: int, pods: int, hints: Hints, tolerances: _Tolerances
) -> TriggerRecommendation:
    value, target = max(reading.value, 0.0), reading.target
    base = TriggerRecommendation(
        trigger=reading.trigger,
        state="ok",
        replicas=current,
        active=reading.active,
        value=value,
        target=target,
    )
    if _milli(target) <= 0:  # a source bug: refuse to divide, no opinion
        return replace(base, state="failing", active=False, error=f"target {target:g} is not above 0")
    cap = reading.replica_cap
    capped = None
    if cap is not None and hints.replica_cap == "metric-value" and value // target > cap:
        # kafka_scaler.go getTotalLag: if (totalLag / lagThreshold) > upperBound (integer division)
        value, capped = cap * target, cap
    replicas, within = _replicas_for(
        _milli(value), _milli(target), current=current, pods=pods, hints=hints, tolerances=tolerances
    )
    if cap is not None and hints.replica_cap == "replicas" and replicas > cap:
        replicas, capped = cap, cap
    return replace(base, replicas=replicas, within_tolerance=within, capped=capped)


def _replicas_for(
    usage: int, target: int, *, current: int, pods: int, hints: Hints, tolerances: _Tolerances
) -> tuple[int, bool]:
    """The HPA's replica calculator on milli-values: (replicas, within tolerance)."""
    if hints.metric_type == "AverageValue":
        # GetExternalPerPodMetricReplicas: the tolerance base is status.replicas (pods that exist).
        ratio = usage / (target * pods) if pods else (math.inf if usage else math.nan)
        if tolerances.within(ratio):
            return pods, True
        return _int32_ceil(usage / target), False
    # GetExternalMetricReplicas -> getUsageRatioReplicaCount: the ratio scales the ready pods.
    ratio = usage / target
    if current == 0:
        return _int32_ceil(ratio), False
    if tolerances.within(ratio):
        return current, True
    return _int32_ceil(ratio * pods), False


def _fallback_value(
    fallback: Fallback, *, hints: Hints, current: int, pods: int
) -> tuple[float, float] | None:
    """fallback.go doFallback: (value, target) reported in place of a failing trigger's, or
    None when there is none (a Value metric with no ready pod)."""
    replicas = float(fallback.replicas)
    if fallback.behavior == "currentReplicas":
        replicas = float(current)
    elif fallback.behavior == "currentReplicasIfHigher":
        replicas = float(max(current, fallback.replicas))
    elif fallback.behavior == "currentReplicasIfLower":
        replicas = float(min(current, fallback.replicas))
    # Every trigger of a Deployment shares the fallback; its target is the trigger's own, which
    # a failing trigger cannot report: tidescale reports replicas x 1 against a target of 1.
    target = 1.0
    if hints.metric_type == "Value":
        if pods == 0:
            return None
        replicas /= float(pods)
    return target * replicas, target


def _compose(
    triggers: tuple[TriggerRecommendation, ...], *, current: int, pods: int, hints: Hints
) -> tuple[TriggerRecommendation, ...]:
    """scaling-modifiers (KEDA's ``advanced.scalingModifiers``): the triggers' opinions give way to
    one composite metric, the formula over their values, with its own target, metric type and
    activation (``modifiers/formula.go`` ``HandleScalingModifiers``, ``hpa.go``, and
    ``scale_handler.go`` ``getScaledObjectState``):

    - a trigger in fallback: the composite is fallback replicas x the composite's target, active
      when above the activation target and no other trigger fails;
    - else a failing trigger (or a formula with no value, e.g. a division by zero): the composite
      fails, no opinion and not active (the metrics server answers the HPA with an error);
    - else the formula over each trigger's value as KEDA publishes it (partition cap applied,
      milli-quantised), active when strictly above the activation target.
    """
    modifiers = hints.scaling_modifiers
    if modifiers is None:
        return triggers
    as_composite = replace(hints, metric_type=modifiers.metric_type)
    base = TriggerRecommendation(
        trigger=COMPOSITE, state="failing", replicas=current, active=False, target=modifiers.target
    )
    failing = [t for t in triggers if t.state == "failing"]
    in_fallback = [t for t in triggers if t.state == "fallback"]
    value: float
    if in_fallback:
        assert hints.fallback is not None  # only a fallback puts a trigger in state "fallback"
        per_target = _fallback_value(hints.fallback, hints=as_composite, current=current, pods=pods)
        if per_target is None:  # a Value metric with no ready pod: fallback.go has no metric either
            return (replace(base, error="fallback for a Value composite with no ready pod"),)
        value = per_target[0] * modifiers.target
        base = replace(
            base,
            state="fallback",
            error="; ".join(f"{t.trigger}: {t.error}" for t in in_fallback),
            consecutive_failures=max(t.consecutive_failures for t in in_fallback),
        )
    elif failing:
        return (
            replace(
                base,
                error="; ".join(f"{t.trigger}: {t.error}" for t in failing),
                consecutive_failures=max(t.consecutive_failures for t in failing),
            ),
        )
    else:
        try:
            value = modifiers.formula.evaluate({t.trigger: _published(t, hints) for t in triggers})
        except FormulaEvaluationError as exc:
            return (replace(base, error=str(exc)),)
    replicas, within = _replicas_for(
        _milli(value),
        _milli(modifiers.target),
        current=current,
        pods=pods,
        hints=as_composite,
        tolerances=_tolerances(hints),
    )
    return (
        replace(
            base,
            state="ok" if base.state == "failing" else base.state,
            replicas=replicas,
            within_tolerance=within,
            value=value,
            active=not failing and value > modifiers.activation_target,
        ),
    )


def composite_active(measurements: Iterable[Measurement], hints: Hints) -> bool | None:
    """For the waker at zero: with scaling-modifiers, whether the composite metric is active
    for these readings (KEDA's ``getScaledObjectState`` at zero replicas: no trigger may lack a
    reading, and the triggers' own activation does not count); None without scaling-modifiers,
    when any active trigger wakes."""
    if hints.scaling_modifiers is None:
        return None
    newest = {m.trigger: m for m in measurements}
    if any(t.name not in newest for t in hints.triggers):
        return False
    tolerances = _tolerances(hints)
    triggers = tuple(
        _from_measurement(newest[t.name], current=0, pods=0, hints=hints, tolerances=tolerances)
        for t in hints.triggers
    )
    (composite,) = _compose(triggers, current=0, pods=0, hints=hints)
    return composite.active


def _published(trigger: TriggerRecommendation, hints: Hints) -> float:
    """The value KEDA's metrics server would publish for ``trigger``: the partition cap applied
    (the replicas rule has no per-trigger recommendation to cap here), milli-quantised."""
    value = trigger.value or 0.0
    if trigger.capped is not None and trigger.target is not None and hints.replica_cap == "metric-value":
        value = trigger.capped * trigger.target
    return _milli(value) / 1000


def _combine(triggers: tuple[TriggerRecommendation, ...], *, current: int) -> int | None:
    """computeReplicasForMetrics: the largest opinion; None (no opinion, nothing recorded) when
    every trigger failed, or some did and the rest would scale down."""
    valid = [t.replicas for t in triggers if t.state != "failing"]
    invalid = len(triggers) - len(valid)
    replicas = max(valid, default=0)
    if invalid >= len(triggers) or (invalid > 0 and replicas < current):
        return None
    return replicas


def _replica_cap(
    triggers: tuple[TriggerRecommendation, ...], *, hints: Hints, raw: int, desired: int
) -> Cap | None:
    """The partition cap, when it is what set the count (nothing after it changed it)."""
    driver = max(triggers, key=lambda t: t.replicas if t.state != "failing" else -1, default=None)
    if driver is None or driver.capped is None or desired != raw:
        return None
    return Cap(limit=Limit.REPLICA_CAP, detail=_cap_words(driver, hints))


def _normalize(
    raw: int, *, current: int, hints: Hints, now: float, history: History
) -> tuple[int, Cap | None, History]:
    """normalizeDesiredReplicasWithBehaviors or, with no behaviour, normalizeDesiredReplicas:
    stabilize (recording ``raw``), then limit; the history returned has ``raw`` recorded."""
    if _has_behavior(hints):
        up, down = _rules(hints)
        stabilized, held, recorded = _stabilize(
            raw, current=current, up=up, down=down, now=now, history=history
        )
        desired, limited = _limit_by_policy(
            stabilized, current=current, hints=hints, up=up, down=down, now=now, history=history
        )
    else:
        stabilized, held, recorded = _stabilize_legacy(
            raw, window=hints.scale_down.stabilization, now=now, history=history
        )
        desired, limited = _limit_legacy(stabilized, current=current, hints=hints)
    return desired, limited or held, recorded


# ---------------------------------------------------------------- 3. stabilize


def _stabilize(
    raw: int, *, current: int, up: ScalingRules, down: ScalingRules, now: float, history: History
) -> tuple[int, Cap | None, History]:
    """stabilizeRecommendationWithBehaviors: ``current`` brought within [lowest of the up
    window, highest of the down window]; ``raw`` recorded (reusing an old slot)."""
    up_cut, down_cut = now - up.stabilization, now - down.stabilization
    lowest = highest = raw
    old: int | None = None
    for index, rec in enumerate(history.recommendations):
        if rec.at > up_cut:
            lowest = min(lowest, rec.replicas)
        if rec.at > down_cut:
            highest = max(highest, rec.replicas)
        if rec.at < up_cut and rec.at < down_cut:
            old = index
    stabilized = min(max(current, lowest), highest)
    recorded = replace(
        history, recommendations=_put(history.recommendations, old, Recommendation(at=now, replicas=raw))
    )
    cap = None
    if stabilized < raw:
        cap = Cap(limit=Limit.SCALE_UP_STABILIZATION, detail=format_duration(up.stabilization))
    elif stabilized > raw:
        cap = Cap(limit=Limit.SCALE_DOWN_STABILIZATION, detail=format_duration(down.stabilization))
    return stabilized, cap, recorded


def _stabilize_legacy(
    raw: int, *, window: float, now: float, history: History
) -> tuple[int, Cap | None, History]:
    """stabilizeRecommendation (nil behaviour): the highest recommendation of the down window,
    whose cutoff is inclusive here (``Before(cutoff)`` is what drops a sample)."""
    cut = now - window
    highest = raw
    old: int | None = None
    for index, rec in enumerate(history.recommendations):
        if rec.at < cut:
            old = index
        elif rec.replicas > highest:
            highest = rec.replicas
    recorded = replace(
        history, recommendations=_put(history.recommendations, old, Recommendation(at=now, replicas=raw))
    )
    cap = Cap(limit=Limit.SCALE_DOWN_STABILIZATION, detail=format_duration(window)) if highest > raw else None
    return highest, cap, recorded


def _put(
    items: tuple[Recommendation, ...], index: int | None, item: Recommendation
) -> tuple[Recommendation, ...]:
    if index is None:
        return (*items, item)
    return (*items[:index], item, *items[index + 1 :])


# ---------------------------------------------------------------- 4. limit by policy


def _rules(hints: Hints) -> tuple[ScalingRules, ScalingRules]:
    """The behaviour's rules; KEDA's paused-scale-in/out set a direction's selectPolicy to Disabled."""
    up, down = hints.scale_up, hints.scale_down
    if hints.paused_scale_out:
        up = replace(up, select="disabled")
    if hints.paused_scale_in:
        down = replace(down, select="disabled")
    return up, down


def _limit_by_policy(
    wanted: int,
    *,
    current: int,
    hints: Hints,
    up: ScalingRules,
    down: ScalingRules,
    now: float,
    history: History,
) -> tuple[int, Cap | None]:
    """convertDesiredReplicasWithBehaviorRate: the rate limit of the direction, then min/max."""
    floor = _floor(hints)
    if wanted > current:
        limit, cap = _rate_limit(up, "up", current=current, now=now, history=history)
        limit = max(
            limit, current
        )  # "We shouldn't scale up further until the scaleUpEvents will be cleaned up"
        if hints.max_replicas <= limit:
            limit, cap = hints.max_replicas, Cap(limit=Limit.MAX_REPLICAS, detail=str(hints.max_replicas))
        return (limit, cap) if wanted > limit else (wanted, None)
    if wanted < current:
        limit, cap = _rate_limit(down, "down", current=current, now=now, history=history)
        limit = min(limit, current)
        if floor >= limit:
            limit, cap = floor, _floor_cap(hints)
        return (limit, cap) if wanted < limit else (wanted, None)
    return wanted, None


def _rate_limit(
    rules: ScalingRules, direction: Literal["up", "down"], *, current: int, now: float, history: History
) -> tuple[int, Cap]:
    """calculateScaleUpLimitWithScalingRules / calculateScaleDownLimitWithBehaviors."""
    if rules.select == "disabled":
        limit = Limit.SCALE_UP_DISABLED if direction == "up" else Limit.SCALE_DOWN_DISABLED
        return current, Cap(limit=limit, detail=f"scale-{direction}-select disabled")
    # "max" selects the policy allowing the most change: the highest limit up, the lowest down.
    pick_higher = (direction == "up") == (rules.select == "max")
    best: tuple[int, RatePolicy | None] = (-_MAX_INT32 - 1 if pick_higher else _MAX_INT32, None)
    for policy in rules.policies:
        added = sum(e.change for e in history.scale_up_events if e.at > now - policy.period)
        removed = sum(e.change for e in history.scale_down_events if e.at > now - policy.period)
        start = current - added + removed
        if direction == "up":
            proposed = (
                start + policy.value
                if policy.kind == "pods"
                else math.ceil(start * (1 + policy.value / 100))  # float64 arithmetic, as the HPA's
            )
        else:
            proposed = (
                start - policy.value if policy.kind == "pods" else int(start * (1 - policy.value / 100))
            )
        if best[1] is None or (proposed > best[0] if pick_higher else proposed < best[0]):
            best = (proposed, policy)
    limit = Limit.SCALE_UP_POLICY if direction == "up" else Limit.SCALE_DOWN_POLICY
    return best[0], Cap(limit=limit, detail="(no policy)" if best[1] is None else str(best[1]))


def _limit_legacy(wanted: int, *, current: int, hints: Hints) -> tuple[int, Cap | None]:
    """convertDesiredReplicasWithRules (nil behaviour): up to max(2 x current, 4), no rate down."""
    floor = _floor(hints)
    up_limit = int(max(2.0 * current, 4.0))
    if hints.max_replicas > up_limit:
        most, cap = up_limit, Cap(limit=Limit.SCALE_UP_LIMIT, detail=str(up_limit))
    else:
        most, cap = hints.max_replicas, Cap(limit=Limit.MAX_REPLICAS, detail=str(hints.max_replicas))
    if wanted < floor:
        return floor, _floor_cap(hints)
    if wanted > most:
        return most, cap
    return wanted, None


# ---------------------------------------------------------------- 5. clamp


def _floor(hints: Hints) -> int:
    """KEDA's HPA has minReplicas max(min-replicas, 1): zero is KEDA's (here: the waker's)."""
    return max(hints.min_replicas, 1)


def _floor_cap(hints: Hints) -> Cap:
    if hints.min_replicas:
        return Cap(limit=Limit.MIN_REPLICAS, detail=str(hints.min_replicas))
    return Cap(limit=Limit.RUNNING_FLOOR)


def _out_of_range(current: int, hints: Hints) -> tuple[int, Cap] | None:
    """reconcileAutoscaler: outside [min, max], straight to the bound, no metric read, nothing recorded."""
    if current > hints.max_replicas:
        return hints.max_replicas, Cap(limit=Limit.MAX_REPLICAS, detail=str(hints.max_replicas))
    if current < _floor(hints):
        return _floor(hints), _floor_cap(hints)
    return None


# ---------------------------------------------------------------- 6. zero handoff


def _zero_handoff(
    triggers: tuple[TriggerRecommendation, ...], *, current: int, hints: Hints, now: float, history: History
) -> bool:
    """RequestScale's inactive branch: an erring trigger with a non-zero fallback (or no
    fallback) keeps the count; otherwise scaleToZeroOrIdle once lastActive + cooldown is
    strictly before now, unless scale-in is paused."""
    if hints.min_replicas != 0 or current == 0 or not triggers or hints.paused_scale_in:
        return False
    if any(t.active for t in triggers):
        return False
    if any(t.state == "failing" for t in triggers) and (
        hints.fallback is None or hints.fallback.replicas != 0
    ):
        return False
    return history.last_active is None or history.last_active + hints.cooldown < now


# ---------------------------------------------------------------- the other cases


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


def _at_zero(triggers: tuple[TriggerRecommendation, ...], *, hints: Hints, history: History) -> Decision:
    """At zero the HPA records nothing (its scaling is disabled) and KEDA's executor acts: it
    lifts a count below min-replicas to min-replicas (RequestScale); waking a Deployment with
    min-replicas 0 is the waker's (tidescale's agent never acts at zero)."""
    active = [t for t in triggers if t.active]
    if hints.min_replicas > 0 and not hints.paused_scale_out:
        desired, why = hints.min_replicas, f"below min-replicas {hints.min_replicas}"
        reason = f"{why}: 0 -> {desired}"
    else:
        desired = 0
        why = (
            f"{_describe(active[0], hints)} is active"
            if active
            else "no trigger active"
            if triggers
            else "no triggers"
        )
        reason = f"{why}: stays at 0" + (" (waking is the waker's)" if active else "")
    return Decision(
        desired=desired,
        reason=reason,
        wants_zero=False,
        capped_by=None,
        recommendations=triggers,
        history=history,
        history_unapplied=history,
    )


def _store_scale_event(history: History, *, current: int, desired: int, hints: Hints, now: float) -> History:
    """storeScaleEvent: only with a behaviour; marks the direction's events older than its
    longest policy period outdated and reuses the last outdated slot."""
    if desired == current or not _has_behavior(hints):
        return history
    up, down = _rules(hints)
    rules, events = (up, history.scale_up_events) if desired > current else (down, history.scale_down_events)
    longest = max((p.period for p in rules.policies), default=0.0)
    marked = tuple(replace(e, outdated=True) if e.at < now - longest else e for e in events)
    old = next((i for i in range(len(marked) - 1, -1, -1) if marked[i].outdated), None)
    event = ScaleEvent(at=now, change=abs(desired - current))
    stored = (*marked, event) if old is None else (*marked[:old], event, *marked[old + 1 :])
    if desired > current:
        return replace(history, scale_up_events=stored)
    return replace(history, scale_down_events=stored)


# ---------------------------------------------------------------- arithmetic


def _milli(value: float) -> int:
    """What the HPA reads: KEDA publishes NewMilliQuantity(int64(value * 1000))."""
    return min(int(value * 1000), 2**63 - 1)


def _int32_ceil(value: float) -> int:
    return _MAX_INT32 if value > _MAX_INT32 else math.ceil(value)


def _has_behavior(hints: Hints) -> bool:
    """Whether KEDA's HPA has a spec.behavior: one is given, or paused-scale-in/out makes one."""
    return hints.behavior or hints.paused_scale_in or hints.paused_scale_out


def _tolerances(hints: Hints) -> _Tolerances:
    """tolerancesForHpa: the behaviour's per-direction tolerances, else the controller's."""
    if not _has_behavior(hints):
        return _Tolerances(up=hints.tolerance, down=hints.tolerance)
    return _Tolerances(
        up=hints.tolerance if hints.tolerance_up is None else hints.tolerance_up,
        down=hints.tolerance if hints.tolerance_down is None else hints.tolerance_down,
    )


# ---------------------------------------------------------------- words


def _cap_words(trigger: TriggerRecommendation, hints: Hints) -> str:
    if hints.trigger_types.get(trigger.trigger) == "kafka":
        return f"{trigger.capped} partitions of {trigger.trigger}"
    return f"replica cap {trigger.capped} of {trigger.trigger}"


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def _describe(trigger: TriggerRecommendation, hints: Hints) -> str:
    if trigger.state == "ok" and trigger.drain_reason is not None:
        return f"{trigger.drain_reason} on {trigger.trigger}"
    if trigger.state == "ok" and trigger.value is not None and trigger.target is not None:
        side = "over" if trigger.value > trigger.target else "under"
        return (
            f"{hints.metric_of(trigger.trigger)} {_number(trigger.value)} {side} threshold "
            f"{_number(trigger.target)} on {trigger.trigger}"
        )
    if trigger.state == "fallback":
        return (
            f"{trigger.trigger} failed {trigger.consecutive_failures} times in a row ({trigger.error}), "
            f"fallback {_number(trigger.value or 0.0)} replicas"
        )
    return f"{trigger.trigger} failing ({trigger.error}), no opinion"


def _reason(
    triggers: tuple[TriggerRecommendation, ...],
    *,
    hints: Hints,
    current: int,
    desired: int,
    cap: Cap | None,
    no_opinion: bool,
) -> str:
    opinions = [t for t in triggers if t.state != "failing"]
    failing = [t for t in triggers if t.state == "failing"]
    if not triggers:
        what = "no triggers"
    elif (no_opinion or not opinions) and failing:
        what = _describe(failing[0], hints)
    else:
        what = _describe(max(opinions, key=lambda t: t.replicas), hints)
    change = f"{current} -> {desired}" if desired != current else f"stays at {current}"
    parts = [f"{what}: {change}"]
    if cap is not None:
        parts.append(f"{'held by' if cap.holds else 'capped by'} {cap}")
    elif opinions and max(opinions, key=lambda t: t.replicas).within_tolerance:
        band = _tolerances(hints)
        words = f"{band.up:g}" if band.up == band.down else f"-{band.down:g}/+{band.up:g}"
        parts.append(f"within tolerance {words}")
    return ", ".join(parts)


def _stall_cap(stall: StallState, *, now: float) -> Cap:
    since = now if stall.since is None else stall.since
    where = ", ".join(stall.units) if stall.units else "every unit"
    return Cap(
        limit=Limit.CONSUMER_STALLED,
        detail=f"{where}: no progress for {format_duration(round(max(0.0, now - since), 3))}",
    )


def _zero_words(*, current: int, desired: int, hints: Hints, now: float, history: History) -> str:
    since = now if history.last_active is None else history.last_active
    idle = (
        f"no trigger active for {format_duration(round(now - since, 3))} "
        f"(cooldown {format_duration(hints.cooldown)})"
    )
    # The waker parks from the count the HPA arithmetic reaches: above it, this write is a step down.
    if desired == current:
        return f"{idle}: {current} -> 0, handing over to the waker"
    return f"{idle}: {current} -> {desired} first, then zero through the waker"
