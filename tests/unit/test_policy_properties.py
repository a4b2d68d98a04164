"""Properties of the policy engine that hold for every input: safety, monotonicity, stabilization."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from tidescale.hints import BEHAVIOR_KNOBS, Hints, parse_hints
from tidescale.policy import Decision, History, decide
from tidescale.sources.base import Measurement, MeasurementFailure

P = "tidescale.io/"
TRIGGERS = ("orders", "refunds")
EXAMPLES = settings(max_examples=200, deadline=None)


@st.composite
def hints_strategy(
    draw: st.DrawFn,
    *,
    allow_zero: bool = True,
    allow_pause: bool = True,
    free: bool = False,
    behavior: bool | None = None,
) -> Hints:
    """Random hints; ``free`` ones have no stabilization and no effective rate limit, so that
    every change of the raw recommendation shows in the decision. ``behavior`` False drops
    every behaviour knob (the HPA's nil-behaviour path), True keeps them, None draws."""
    low = draw(st.integers(0 if allow_zero else 1, 5))
    high = draw(st.integers(max(low, 1), max(low, 1) + 25))
    annotations = {
        P + "min-replicas": str(low),
        P + "max-replicas": str(high),
        P + "wake-replicas": str(draw(st.integers(1, high))),
        P + "polling-interval": "1s",
        P + "cooldown": draw(st.sampled_from(["0s", "30s", "300s"])),
        P + "tolerance": draw(st.sampled_from(["0", "0.1", "0.3"])),
        P + "scale-up-stabilization": draw(st.sampled_from(["0s", "20s", "60s"])),
        P + "scale-down-stabilization": draw(st.sampled_from(["0s", "30s", "300s"])),
        P + "scale-up-policies": draw(
            st.sampled_from(["4 pods/15s, 100%/15s", "1 pod/1m", "50%/30s, 2 pods/10s", "100 pods/1s"])
        ),
        P + "scale-up-select": draw(st.sampled_from(["max", "min", "disabled"])),
        P + "scale-down-policies": draw(
            st.sampled_from(["100%/15s", "10%/1m, 4 pods/1m", "1 pod/5s", "100 pods/1s"])
        ),
        P + "scale-down-select": draw(st.sampled_from(["max", "min", "disabled"])),
    }
    if free:
        for direction in ("up", "down"):
            annotations[P + f"scale-{direction}-stabilization"] = "0s"
            annotations[P + f"scale-{direction}-policies"] = "1000 pods/1s"
            annotations[P + f"scale-{direction}-select"] = "max"
    if behavior is False or (behavior is None and not free and draw(st.booleans())):
        annotations = {k: v for k, v in annotations.items() if k[len(P) :] not in BEHAVIOR_KNOBS}
    if draw(st.booleans()):
        annotations[P + "fallback-failure-threshold"] = str(draw(st.integers(0, 4)))
        annotations[P + "fallback-replicas"] = str(draw(st.integers(0, high)))
    if allow_pause:
        pause = draw(st.sampled_from(["none", "none", "none", "none", "paused", "pinned"]))
        if pause == "paused":
            annotations[P + "paused"] = "true"
        elif pause == "pinned":
            annotations[P + "paused-replicas"] = str(draw(st.integers(0, 40)))
    for name in TRIGGERS[: draw(st.integers(1, 2))]:
        annotations[P + f"{name}.type"] = "kafka"
        annotations[P + f"{name}.bootstrap-servers"] = "kafka:9092"
        annotations[P + f"{name}.consumer-group"] = name
    return parse_hints(annotations)


@dataclass(frozen=True, kw_only=True)
class Reading:
    """One trigger's reading in a step, before it is turned into a Measurement at a time."""

    fails: bool
    value: float
    """In quarters of the threshold, so recommendations land around the replica bounds."""
    threshold: float
    activation: float
    cap: int | None
    age: float

    def at(self, trigger: str, now: float, value: float | None = None) -> Measurement | MeasurementFailure:
        if self.fails:
            return MeasurementFailure(trigger=trigger, error="unreachable", taken_at=now - self.age)
        value = (self.value if value is None else value) * self.threshold / 4
        return Measurement(
            trigger=trigger,
            value=value,
            target=self.threshold,
            active=value > self.activation,
            replica_cap=self.cap,
            taken_at=now - self.age,
        )


readings = st.builds(
    Reading,
    fails=st.sampled_from([False, False, False, True]),
    value=st.one_of(st.just(0.0), st.integers(0, 200).map(float), st.floats(0, 200)),
    threshold=st.sampled_from([1.0, 10.0, 100.0, 2.5]),
    activation=st.sampled_from([0.0, 5.0, 50.0]),
    cap=st.one_of(st.none(), st.integers(1, 30)),
    age=st.sampled_from([0.0, 0.5, 2.9, 3.5]),  # more than 3 polling intervals is stale
)
steps = st.lists(
    st.tuples(
        st.sampled_from([0.0, 1.0, 5.0, 15.0, 29.5, 60.0, 301.0]),
        st.tuples(readings, readings),
        st.sampled_from([True, True, True, False]),
    ),
    max_size=15,
)


def check_safety(decision: Decision, *, current: int, hints: Hints) -> None:
    if hints.paused_replicas is not None:
        assert decision.desired == hints.paused_replicas
        assert not decision.wants_zero
        return
    if hints.paused:
        assert decision.desired == current
        assert not decision.wants_zero
        return
    assert hints.min_replicas <= decision.desired <= hints.max_replicas, decision
    if current >= 1:
        assert decision.desired >= 1, decision  # zero only through the waker
    # KEDA's RequestScale: an active trigger, or a failing one with a non-zero (or no) fallback,
    # keeps a Deployment off zero; a failing trigger whose fallback is 0 does not (issue 12 row 16).
    zero_fallback = hints.fallback is not None and hints.fallback.replicas == 0
    busy = any(t.active or (t.state == "failing" and not zero_fallback) for t in decision.recommendations)
    if decision.wants_zero:
        assert hints.min_replicas == 0
        assert not busy, decision
        assert current >= 1


@EXAMPLES
@given(hints_strategy(), st.integers(0, 40), steps)
def test_every_decision_keeps_within_bounds_and_never_goes_to_zero_while_busy(
    hints: Hints, start: int, plan: list[tuple[float, tuple[Reading, Reading], bool]]
) -> None:
    current, history, now = start, History(), 1000.0
    for dt, pair, applied in plan:
        now += dt
        taken = [r.at(t.name, now) for t, r in zip(hints.triggers, pair, strict=False)]
        decision = decide(taken, current=current, hints=hints, now=now, history=history)
        check_safety(decision, current=current, hints=hints)
        if applied:
            current, history = decision.desired, decision.history
        else:
            history = decision.history_unapplied


@EXAMPLES
@given(
    st.one_of(hints_strategy(allow_pause=False), hints_strategy(allow_pause=False, free=True)),
    st.integers(0, 40),
    steps,
    st.tuples(readings, readings),
    st.tuples(st.integers(0, 40), st.integers(0, 40)),
)
def test_more_lag_never_yields_fewer_replicas_at_the_same_moment(
    hints: Hints,
    start: int,
    plan: list[tuple[float, tuple[Reading, Reading], bool]],
    last: tuple[Reading, Reading],
    extra: tuple[int, int],
) -> None:
    current, history, now = start, History(), 1000.0
    for dt, pair, applied in plan:
        now += dt
        taken = [r.at(t.name, now) for t, r in zip(hints.triggers, pair, strict=False)]
        decision = decide(taken, current=current, hints=hints, now=now, history=history)
        current, history = (decision.desired, decision.history) if applied else (current, history)
    now += 1
    less = [r.at(t.name, now) for t, r in zip(hints.triggers, last, strict=False)]
    more = [r.at(t.name, now, r.value + e) for t, r, e in zip(hints.triggers, last, extra, strict=False)]
    low = decide(less, current=current, hints=hints, now=now, history=history)
    high = decide(more, current=current, hints=hints, now=now, history=history)
    assert high.desired >= low.desired, (low, high)
    assert high.wants_zero <= low.wants_zero


@EXAMPLES
@given(hints_strategy(allow_zero=False, allow_pause=False, behavior=True), st.integers(1, 40), steps)
def test_stabilization_keeps_each_change_within_its_windows_recommendations(
    hints: Hints, start: int, plan: list[tuple[float, tuple[Reading, Reading], bool]]
) -> None:
    current, history, now = start, History(), 1000.0
    seen = [(now, start)]  # the engine seeds its window with the count it first sees
    for dt, pair, _ in plan:
        now += dt
        taken = [r.at(t.name, now) for t, r in zip(hints.triggers, pair, strict=False)]
        decision = decide(taken, current=current, hints=hints, now=now, history=history)
        # What the HPA records (computeReplicasForMetrics): the largest valid opinion, unless the
        # count is out of range, every trigger failed, or one failed and the rest would scale down.
        valid = [t.replicas for t in decision.recommendations if t.state != "failing"]
        failed = len(valid) < len(decision.recommendations)
        in_range = max(hints.min_replicas, 1) <= current <= hints.max_replicas
        raw = max(valid, default=0)
        if not in_range or not valid or (failed and raw < current):
            current, history = decision.desired, decision.history
            continue
        down_window = [raw, *(r for at, r in seen if at > now - hints.scale_down.stabilization)]
        up_window = [raw, *(r for at, r in seen if at > now - hints.scale_up.stabilization)]
        seen.append((now, raw))
        if decision.desired < current:
            # a scale-down never goes below the highest recommendation of the window
            assert decision.desired >= min(max(down_window), hints.max_replicas), (decision, seen)
        if decision.desired > current:
            # a scale-up never goes above the lowest recommendation of its window
            assert decision.desired <= max(min(up_window), hints.min_replicas, 1), (decision, seen)
        current, history = decision.desired, decision.history
