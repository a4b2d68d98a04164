"""scaling-modifiers in the policy engine, as KEDA's ``advanced.scalingModifiers``: one composite
metric (``composite-metric``) computed by the formula replaces the triggers' metrics for the HPA
(``controllers/keda/hpa.go``), fails when a trigger fails (``scale_handler.go``
``GetScaledObjectMetrics``), is the fallback value while a trigger is in fallback
(``modifiers/formula.go`` ``HandleScalingModifiers``) and decides activity against the activation
target (``scale_handler.go`` ``getScaledObjectState``). Targets are 100 per replica throughout."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidescale.hints import Hints, parse_hints
from tidescale.policy import COMPOSITE, Decision, History, composite_active, decide
from tidescale.sources.base import Measurement, MeasurementFailure

P = "tidescale.io/"


def hints(formula: str | None, **knobs: str) -> Hints:
    annotations: dict[str, str] = {}
    for trigger in ("orders", "payments"):
        annotations |= {
            P + f"{trigger}.type": "kafka",
            P + f"{trigger}.bootstrap-servers": "kafka:9092",
            P + f"{trigger}.consumer-group": "billing",
            P + f"{trigger}.topic": trigger,
        }
    if formula is not None:
        annotations[P + "scaling-modifiers-formula"] = formula
        annotations.setdefault(P + "scaling-modifiers-target", "100")
    annotations |= {P + name.replace("_", "-"): value for name, value in knobs.items()}
    annotations.setdefault(P + "max-replicas", "50")
    return parse_hints(annotations)


def reading(
    trigger: str, value: float | None, *, at: float = 0.0, cap: int | None = None
) -> Measurement | MeasurementFailure:
    if value is None:
        return MeasurementFailure(trigger=trigger, error=f"{trigger} broker unreachable", taken_at=at)
    return Measurement(
        trigger=trigger, value=value, target=100, active=value > 0, replica_cap=cap, taken_at=at
    )


def lag(trigger: str, value: float) -> Measurement:
    return Measurement(trigger=trigger, value=value, target=100, active=value > 0, taken_at=0.0)


def once(
    h: Hints, orders: float | None, payments: float | None, *, current: int, pods: int | None = None
) -> Decision:
    readings = [reading("orders", orders), reading("payments", payments)]
    return decide(readings, current=current, hints=h, now=0.0, history=History(), pods=pods)


@dataclass(frozen=True)
class Row:
    name: str
    formula: str | None
    orders: float | None
    payments: float | None
    current: int
    desired: int
    knobs: tuple[tuple[str, str], ...] = ()
    pods: int | None = None


ROWS = [
    Row("without a formula the largest trigger wins", None, 300, 200, current=3, desired=3),
    Row("the sum of two triggers is one metric", "orders + payments", 300, 200, current=3, desired=5),
    Row("the mean of two triggers", "(orders + payments) / 2", 300, 200, current=3, desired=3),
    Row("a ternary picks a trigger", "orders > 250 ? orders : payments", 300, 200, current=1, desired=3),
    Row("a ternary's other branch", "orders > 350 ? orders : payments", 300, 200, current=1, desired=2),
    Row("the composite goes through tolerance", "orders + payments", 600, 450, current=10, desired=10),
    Row("the composite's target is its own", "orders + payments", 300, 300, current=1, desired=2,
        knobs=(("scaling_modifiers_target", "300"),)),
    Row("a Value composite scales the pods by the ratio", "orders + payments", 150, 0, current=4,
        desired=6, knobs=(("scaling_modifiers_metric_type", "Value"),)),
    Row("the triggers' metric-type does not apply to the composite", "orders + payments", 300, 200,
        current=3, desired=5, knobs=(("metric_type", "Value"),)),
    Row("a failing trigger fails the composite: no opinion", "orders + payments", 3000, None,
        current=3, desired=3),
    Row("any failing trigger fails the composite, even one the formula does not read", "orders * 2", 3000,
        None, current=3, desired=3),
    Row("without a formula a failing trigger does not stop a scale up", None, 3000, None,
        current=3, desired=6),
    Row("a formula with no value fails the composite", "orders / payments", 300, 0, current=3, desired=3),
    Row("a guarded division has a value", "payments > 0 ? orders / payments : orders", 300, 0,
        current=2, desired=3),
    Row("the composite is limited like any metric (nil behaviour: max(2 x 2, 4))", "orders * 10", 300, 0,
        current=2, desired=4),
]  # fmt: skip


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_a_formula_replaces_the_triggers_opinions_with_one_composite(row: Row) -> None:
    decision = once(
        hints(row.formula, **dict(row.knobs)), row.orders, row.payments, current=row.current, pods=row.pods
    )
    assert decision.desired == row.desired, decision.reason


def test_the_decision_carries_one_recommendation_the_composite() -> None:
    decision = once(hints("orders + payments"), 300, 200, current=3)
    (composite,) = decision.recommendations
    assert (composite.trigger, composite.state, composite.value, composite.target) == (
        COMPOSITE,
        "ok",
        500,
        100,
    )
    assert "composite-metric" in decision.reason


def test_a_failing_trigger_is_named_in_the_composite_failure() -> None:
    decision = once(hints("orders + payments"), 300, None, current=3)
    (composite,) = decision.recommendations
    assert composite.state == "failing"
    assert "payments" in (composite.error or "")


def test_a_division_by_zero_is_reported_as_the_composite_failure() -> None:
    (composite,) = once(hints("orders / payments"), 300, 0, current=3).recommendations
    assert composite.state == "failing"
    assert "division by zero" in (composite.error or "")


def test_the_formula_reads_the_value_after_kafkas_partition_cap() -> None:
    """kafka_scaler.go getTotalLag caps the published value (11 partitions x 100) before the
    formula sees it: 1100 from 8 -> 11 (50 uncapped)."""
    h = hints("orders + payments")
    readings = [reading("orders", 5000, cap=11), reading("payments", 0)]
    decision = decide(readings, current=8, hints=h, now=0.0, history=History())
    assert decision.desired == 11


def idle_run(h: Hints, orders: float, payments: float) -> Decision:
    """Last active at start (0 s), then the same readings after the 60 s cooldown."""
    history = decide(
        [reading("orders", 500), reading("payments", 500)], current=2, hints=h, now=0.0, history=History()
    ).history
    later = [reading("orders", orders, at=61.0), reading("payments", payments, at=61.0)]
    return decide(later, current=2, hints=h, now=61.0, history=history)


ZERO = {"min_replicas": "0", "cooldown": "60s"}


def test_below_the_activation_target_the_composite_is_idle_though_each_trigger_is_active() -> None:
    decision = idle_run(hints("orders + payments", scaling_modifiers_activation_target="50", **ZERO), 20, 20)
    assert decision.wants_zero
    assert not decision.recommendations[0].active


def test_above_the_activation_target_the_composite_is_active_though_no_trigger_is() -> None:
    """The triggers' own activation no longer counts: values 0 are inactive triggers, but the
    formula's constant is above the activation target."""
    decision = idle_run(
        hints("orders + payments + 60", scaling_modifiers_activation_target="50", **ZERO), 0, 0
    )
    assert not decision.wants_zero
    assert decision.recommendations[0].active


def test_the_activation_target_is_strict_and_defaults_to_zero() -> None:
    assert idle_run(hints("orders + payments", **ZERO), 0, 0).wants_zero
    assert idle_run(
        hints("orders + payments - 1", scaling_modifiers_activation_target="1", **ZERO), 1, 1
    ).wants_zero
    assert not idle_run(hints("orders + payments", **ZERO), 1, 0).wants_zero


FALLBACK = {"fallback_failure_threshold": "1", "fallback_replicas": "4"}


def test_in_fallback_the_composite_is_fallback_replicas_times_its_target() -> None:
    """HandleScalingModifiers: while fallback is active the composite is the fallback metric,
    replicas x scalingModifiers.target (fallback.go doFallback): 4 x 250 against 250 -> 4."""
    h = hints("orders + payments", scaling_modifiers_target="250", **FALLBACK)
    history = History()
    for now in (0.0, 1.0):
        decision = decide(
            [reading("orders", None, at=now), reading("payments", 100, at=now)],
            current=2,
            hints=h,
            now=now,
            history=history,
        )
        history = decision.history
    (composite,) = decision.recommendations
    assert (composite.state, composite.value, composite.target) == ("fallback", 1000, 250)
    assert decision.desired == 4
    assert composite.active


def test_a_trigger_failing_under_the_threshold_beside_one_in_fallback_leaves_the_composite_inactive() -> None:
    """getScaledObjectState: any scaler error resets the composite's activity to false, while
    the HPA still reads the fallback value."""
    h = hints("orders + payments", **FALLBACK, fallback_failure_interval="10s")
    history = History()
    orders_fail = [reading("orders", None, at=0.0), reading("payments", 100, at=0.0)]
    history = decide(orders_fail, current=2, hints=h, now=0.0, history=history).history
    both_fail = [reading("orders", None, at=11.0), reading("payments", None, at=11.0)]
    decision = decide(both_fail, current=2, hints=h, now=11.0, history=history)
    (composite,) = decision.recommendations
    assert composite.state == "fallback"
    assert not composite.active
    assert decision.desired == 4


def test_the_waker_s_question_is_answered_by_the_composite_not_by_the_triggers() -> None:
    h = hints("orders + payments", scaling_modifiers_activation_target="50")
    assert composite_active([lag("orders", 30), lag("payments", 30)], h) is True
    assert composite_active([lag("orders", 20), lag("payments", 20)], h) is False


def test_the_waker_s_question_is_no_when_a_trigger_has_no_reading_and_moot_without_a_formula() -> None:
    h = hints("orders + 100")
    assert composite_active([lag("orders", 0)], h) is False
    assert composite_active([lag("orders", 0), lag("payments", 0)], h) is True
    assert composite_active([lag("orders", 5)], hints(None)) is None


_FORMULAS = [
    "orders + payments",
    "(orders + payments) / 2",
    "orders > 100 ? orders : payments",
    "orders / payments",
    "orders % payments",
    "payments > 0 ? orders / payments * 100 : 0",
    "max(orders, payments) - min(orders, payments) * 3",
    "-orders",
    "orders ** 2",
]
_values = st.one_of(st.none(), st.sampled_from([0.0, 1.0, 99.0, 100.0]), st.floats(0, 1e9))


@settings(max_examples=300, deadline=None)
@given(
    formula=st.sampled_from(_FORMULAS),
    orders=_values,
    payments=_values,
    current=st.integers(1, 50),
    target=st.sampled_from(["0.5", "1", "100", "12345"]),
)
def test_a_formula_never_breaks_a_decision_and_the_count_stays_within_bounds(
    formula: str, orders: float | None, payments: float | None, current: int, target: str
) -> None:
    decision = once(hints(formula, scaling_modifiers_target=target), orders, payments, current=current)
    (composite,) = decision.recommendations
    assert 1 <= decision.desired <= 50
    if orders is None or payments is None:
        assert composite.state == "failing"
        assert decision.desired == current
