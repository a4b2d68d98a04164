"""The policy engine against the worked examples of the Kubernetes HPA documentation and KEDA's
documented lag-to-replica behaviour, plus what tidescale adds: zero, cooldown, fallback, pause."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from tidescale.hints import Hints, parse_hints
from tidescale.policy import Decision, History, Limit, decide
from tidescale.sources.base import Measurement, MeasurementFailure

P = "tidescale.io/"
V2 = {"scale_up_select": "max"}
"""A behaviour knob at its default value: the HPA's behaviour path with the defaulted rules
(defaults.go), where no behaviour knob at all takes the nil-behaviour path (issue 12 row 4)."""


def kafka_hints(**knobs: str) -> Hints:
    """Hints with one Kafka trigger named ``orders`` plus the given knobs (``min_replicas="0"``)."""
    annotations = {
        P + "orders.type": "kafka",
        P + "orders.bootstrap-servers": "kafka:9092",
        P + "orders.consumer-group": "billing",
        P + "orders.topic": "orders",
    }
    annotations.update({P + name.replace("_", "-"): value for name, value in knobs.items()})
    return parse_hints(annotations)


def lag(
    value: float,
    *,
    at: float,
    threshold: float = 100,
    active: bool | None = None,
    cap: int | None = None,
    trigger: str = "orders",
) -> Measurement:
    return Measurement(
        trigger=trigger,
        value=value,
        target=threshold,
        active=value > 0 if active is None else active,
        replica_cap=cap,
        taken_at=at,
    )


def failure(at: float, trigger: str = "orders") -> MeasurementFailure:
    return MeasurementFailure(trigger=trigger, error="broker kafka:9092 unreachable", taken_at=at)


class Run:
    """Drives the engine like the agent: polls at given times and applies each decision."""

    def __init__(self, hints: Hints, current: int, history: History | None = None) -> None:
        self.hints = hints
        self.current = current
        self.history = history or History()

    def poll(
        self, now: float, readings: Iterable[Measurement | MeasurementFailure], **extra: int
    ) -> Decision:
        decision = decide(
            readings, current=self.current, hints=self.hints, now=now, history=self.history, **extra
        )
        self.history = decision.history
        self.current = decision.desired
        return decision

    def lag(self, now: float, value: float, **kwargs: object) -> Decision:
        return self.poll(now, [lag(value, at=now, **kwargs)])  # type: ignore[arg-type]


# ---------------------------------------------------------------- HPA: algorithm details


def test_hpa_doc_a_metric_at_twice_the_target_doubles_the_replicas() -> None:
    # "if the current metric value is 200m, and the desired value is 100m, the number of
    # replicas will be doubled": 4 replicas averaging 200 against a target of 100.
    decision = Run(kafka_hints(), current=4).lag(0, 4 * 200)
    assert decision.desired == 8


def test_hpa_doc_a_metric_at_half_the_target_halves_the_replicas() -> None:
    # "If the current value is instead 50m, you'll halve the number of replicas."
    decision = Run(kafka_hints(scale_down_stabilization="0s"), current=4).lag(0, 4 * 50)
    assert decision.desired == 2


@pytest.mark.parametrize(
    ("total", "desired"),
    [
        (440, 4),  # ratio 1.10: within tolerance 0.1, no change
        (360, 4),  # ratio 0.90: within tolerance
        (445, 5),  # ratio 1.1125: ceil(4.45)
        (350, 4),  # ratio 0.875: ceil(3.5) is 4 anyway
        (299, 3),  # ratio 0.7475: ceil(2.99)
    ],
)
def test_hpa_doc_a_ratio_within_tolerance_of_one_skips_scaling(total: float, desired: int) -> None:
    decision = Run(kafka_hints(scale_down_stabilization="0s"), current=4).lag(0, total)
    assert decision.desired == desired


def test_a_custom_tolerance_widens_the_dead_band() -> None:
    decision = Run(kafka_hints(tolerance="0.5"), current=4).lag(0, 590)
    assert decision.desired == 4
    assert "within tolerance 0.5" in decision.reason


# ---------------------------------------------------------------- HPA: default behavior


def test_hpa_doc_default_scale_up_adds_at_most_4_pods_or_100_percent_per_15s() -> None:
    # Default scaleUp: policies 4 Pods/15s and 100%/15s, selectPolicy Max, no stabilization.
    run = Run(kafka_hints(max_replicas="50", **V2), current=1)
    assert run.lag(0, 4000).desired == 5  # max(1 + 4, 1 * 2)
    assert run.lag(1, 4000).desired == 5  # the period that allowed +4 has not passed
    assert run.lag(14, 4000).desired == 5
    assert run.lag(15, 4000).desired == 10  # max(5 + 4, 5 * 2)
    assert run.lag(30, 4000).desired == 20  # max(10 + 4, 10 * 2)
    assert run.lag(45, 4000).desired == 40


def test_hpa_doc_default_scale_down_waits_300s_then_goes_to_the_highest_recommendation() -> None:
    # Default scaleDown: stabilization 300 s using the highest recommendation, 100%/15s.
    run = Run(kafka_hints(**V2), current=10)
    assert run.lag(0, 1000).desired == 10
    held = run.lag(60, 200)
    assert held.desired == 10
    assert held.reason == (
        "lag 200 over threshold 100 on orders: stays at 10, held by scale-down stabilization 5m"
    )
    assert run.lag(120, 500).desired == 10
    assert run.lag(299, 200).desired == 10  # the recommendation of 10 at t=0 is still in the window
    assert run.lag(300, 200).desired == 5  # the window is (0, 300]: its highest is 5, from t=120
    assert run.lag(419, 200).desired == 5
    assert run.lag(420, 200).desired == 2


# ---------------------------------------------------------------- HPA: scaling policies


def test_hpa_doc_scale_down_by_4_pods_or_10_percent_per_minute_takes_the_larger_change() -> None:
    # "if there are 80 replicas and the target has to be scaled down to 10 replicas then during
    # the first step 8 replicas will be reduced. In the next iteration when the number of
    # replicas is 72, 10% of the pods is 7.2 but the number is rounded up to 8."
    hints = kafka_hints(
        max_replicas="100",
        scale_down_stabilization="0s",
        scale_down_policies="4 pods/1m, 10%/1m",
    )
    run = Run(hints, current=80)
    steps = [run.lag(60 * minute, 1000).desired for minute in range(14)]
    # 10% (truncated, as the HPA's int32) is the larger change down to 40; then 4 pods is.
    assert steps == [72, 64, 57, 51, 45, 40, 36, 32, 28, 24, 20, 16, 12, 10]
    assert run.lag(60 * 13 + 30, 1000).desired == 10


def test_hpa_doc_limit_scale_down_to_10_percent_or_5_pods_per_minute_with_select_min() -> None:
    hints = kafka_hints(
        max_replicas="100",
        scale_down_stabilization="0s",
        scale_down_policies="10%/1m, 5 pods/1m",
        scale_down_select="min",
    )
    run = Run(hints, current=80)
    decision = run.lag(0, 1000)
    assert decision.desired == 75  # 10% would remove 8; the smaller change, 5 pods, applies
    assert str(decision.capped_by) == "scale-down policy 5 pods/1m"
    assert decision.capped_by is not None
    assert decision.capped_by.limit is Limit.SCALE_DOWN_POLICY
    assert run.lag(30, 1000).desired == 75
    assert run.lag(60, 1000).desired == 70


def test_hpa_doc_disabled_scale_down_never_removes_replicas() -> None:
    run = Run(kafka_hints(scale_down_select="disabled", scale_down_stabilization="0s"), current=6)
    decision = run.lag(0, 0, active=True)
    assert decision.desired == 6
    assert str(decision.capped_by) == "scale-down-select disabled"


def test_hpa_doc_a_60s_scale_down_window_scales_down_after_60s() -> None:
    run = Run(kafka_hints(scale_down_stabilization="1m"), current=5)
    assert run.lag(0, 500).desired == 5
    assert run.lag(30, 100).desired == 5
    assert run.lag(61, 100).desired == 1


def test_scale_up_stabilization_uses_the_lowest_recommendation_of_its_window() -> None:
    run = Run(kafka_hints(scale_up_stabilization="30s", max_replicas="50"), current=2)
    assert run.lag(0, 200).desired == 2
    held = run.lag(10, 2000)
    assert held.desired == 2
    assert str(held.capped_by) == "scale-up stabilization 30s"
    assert run.lag(31, 2000).desired == 6  # lowest since t=1 is 20, rate limit 2 + 4


def test_scale_up_select_min_applies_the_smaller_change() -> None:
    run = Run(kafka_hints(scale_up_select="min", max_replicas="50"), current=10)
    assert run.lag(0, 5000).desired == 14  # 4 pods is smaller than 100%


def test_a_count_above_max_goes_straight_to_max() -> None:
    decision = Run(kafka_hints(max_replicas="10"), current=15).lag(0, 2000)
    assert decision.desired == 10
    assert str(decision.capped_by) == "max-replicas 10"


def test_a_count_below_min_goes_straight_to_min() -> None:
    decision = Run(kafka_hints(min_replicas="3"), current=1).lag(0, 0, active=True)
    assert decision.desired == 3
    assert str(decision.capped_by) == "min-replicas 3"


# ---------------------------------------------------------------- KEDA: lag to replicas


@pytest.mark.parametrize(
    ("total_lag", "threshold", "desired"),
    [
        (95, 10, 10),  # ceil(9.5)
        (100, 10, 10),
        (101, 10, 11),
        (1, 10, 1),
        (4210, 100, 43),
    ],
)
def test_keda_desired_replicas_are_total_lag_over_lag_threshold_rounded_up(
    total_lag: float, threshold: float, desired: int
) -> None:
    run = Run(kafka_hints(max_replicas="100", scale_up_policies="100 pods/15s"), current=1)
    decision = run.lag(0, total_lag, threshold=threshold)
    assert decision.recommendations[0].replicas == desired
    assert decision.desired == desired


def test_keda_replicas_are_capped_at_the_partition_count() -> None:
    run = Run(kafka_hints(max_replicas="100", scale_up_policies="100 pods/15s"), current=1)
    decision = run.lag(0, 4210, cap=12)
    assert decision.desired == 12
    assert str(decision.capped_by) == "12 partitions of orders"
    assert decision.reason == (
        "lag 4,210 over threshold 100 on orders: 1 -> 12, capped by 12 partitions of orders"
    )


def test_the_reason_reads_well_in_an_event() -> None:
    decision = Run(kafka_hints(**V2), current=4).lag(0, 4210)
    assert decision.desired == 8
    assert decision.reason == (
        "lag 4,210 over threshold 100 on orders: 4 -> 8, capped by scale-up policy 4 pods/15s"
    )


def test_keda_an_inactive_trigger_leaves_a_deployment_at_zero() -> None:
    decision = Run(kafka_hints(min_replicas="0"), current=0).lag(0, 3, active=False)
    assert (decision.desired, decision.wants_zero) == (0, False)
    assert decision.reason == "no trigger active: stays at 0"


def test_at_zero_the_engine_leaves_waking_to_the_waker_and_records_nothing() -> None:
    # KEDA's HPA does not scale at 0 (horizontal.go: "scaling is disabled since the replica count
    # of the target is zero"); waking is the waker's, so the engine neither wakes nor remembers.
    run = Run(kafka_hints(min_replicas="0", wake_replicas="2"), current=0)
    decision = run.lag(0, 4210)
    assert decision.desired == 0
    assert (
        decision.reason
        == "lag 4,210 over threshold 100 on orders is active: stays at 0 (waking is the waker's)"
    )
    assert decision.history.recommendations == (type(decision.history.recommendations[0])(at=0, replicas=0),)


def test_a_running_deployment_never_scales_below_one_replica_by_arithmetic() -> None:
    run = Run(kafka_hints(min_replicas="0", scale_down_stabilization="0s"), current=3)
    decision = run.lag(0, 0, active=False)
    assert decision.desired == 1
    assert decision.wants_zero is False  # the cooldown has not passed


# ---------------------------------------------------------------- zero and cooldown


def test_cooldown_passes_before_handing_over_to_zero() -> None:
    run = Run(kafka_hints(min_replicas="0", cooldown="5m"), current=1)
    assert run.lag(0, 50).wants_zero is False
    assert run.lag(100, 0, active=False).wants_zero is False
    assert (
        run.lag(300, 0, active=False).wants_zero is False
    )  # KEDA: lastActive + cooldown strictly before now
    decision = run.lag(301, 0, active=False)
    assert decision.wants_zero is True
    assert decision.desired == 1  # zero is the waker's: desired stays at a running count
    assert decision.reason == "no trigger active for 5m1s (cooldown 5m): 1 -> 0, handing over to the waker"


def test_idle_past_the_cooldown_above_one_replica_says_it_steps_down_first() -> None:
    # The default 5m scale-down window holds 3 replicas as long as the cooldown runs.
    run = Run(kafka_hints(min_replicas="0", cooldown="5m"), current=3)
    assert run.lag(0, 0, active=False).desired == 3
    decision = run.lag(301, 0, active=False)
    assert decision.wants_zero is True
    assert decision.desired == 1
    assert decision.reason.endswith("3 -> 1 first, then zero through the waker")


def test_activity_restarts_the_cooldown() -> None:
    run = Run(kafka_hints(min_replicas="0", cooldown="60s"), current=1)
    run.lag(0, 0, active=False)
    run.lag(50, 5)
    assert run.lag(110, 0, active=False).wants_zero is False
    assert run.lag(111, 0, active=False).wants_zero is True


def test_a_fresh_leader_counts_its_start_as_activity() -> None:
    run = Run(kafka_hints(min_replicas="0", cooldown="60s"), current=1)
    assert run.lag(1000, 0, active=False).wants_zero is False
    assert run.lag(1061, 0, active=False).wants_zero is True


def test_a_fresh_leader_does_not_scale_down_within_the_window() -> None:
    run = Run(kafka_hints(), current=8)
    assert run.lag(5000, 0, active=True).desired == 8
    assert run.lag(5301, 0, active=True).desired == 1


def test_zero_is_never_wanted_with_min_replicas_above_zero() -> None:
    run = Run(kafka_hints(min_replicas="1", cooldown="0s"), current=1)
    assert run.lag(0, 0, active=False).wants_zero is False
    assert run.lag(1000, 0, active=False).wants_zero is False


def test_zero_is_never_wanted_while_a_trigger_fails_without_a_zero_fallback() -> None:
    run = Run(kafka_hints(min_replicas="0", cooldown="0s"), current=1)
    decision = run.poll(10, [failure(10)])
    assert decision.wants_zero is False
    assert decision.reason == "orders failing (broker kafka:9092 unreachable), no opinion: stays at 1"


def test_min_replicas_above_zero_lifts_a_deployment_found_at_zero() -> None:
    decision = Run(kafka_hints(min_replicas="2"), current=0).lag(0, 0, active=False)
    assert decision.desired == 2
    assert decision.reason == "below min-replicas 2: 0 -> 2"


# ---------------------------------------------------------------- failures, staleness, fallback


def test_a_failing_trigger_holds_the_count_but_another_can_scale_up() -> None:
    annotations = {
        P + "orders.type": "kafka",
        P + "orders.bootstrap-servers": "kafka:9092",
        P + "orders.consumer-group": "billing",
        P + "jobs.type": "rabbitmq",
        P + "jobs.management-url": "http://rabbitmq:15672",
        P + "jobs.queue": "jobs",
        P + "scale-down-stabilization": "0s",
    }
    run = Run(parse_hints(annotations), current=4)
    queue = Measurement(trigger="jobs", value=10, target=20, active=True, taken_at=0)
    assert run.poll(0, [failure(0), queue]).desired == 4  # no scale-down on missing data
    queue = Measurement(trigger="jobs", value=200, target=20, active=True, taken_at=1)
    decision = run.poll(1, [failure(1), queue])
    assert decision.desired == 8
    assert decision.reason.startswith("queue length 200 over threshold 20 on jobs: 4 -> 8")


def test_fallback_applies_once_the_failures_exceed_the_threshold() -> None:
    run = Run(kafka_hints(fallback_failure_threshold="3", fallback_replicas="6", **V2), current=2)
    assert [run.poll(t, [failure(t)]).desired for t in (0, 1, 2)] == [2, 2, 2]
    decision = run.poll(3, [failure(3)])
    assert decision.desired == 6
    assert decision.reason == (
        "orders failed 4 times in a row (broker kafka:9092 unreachable), fallback 6 replicas: 2 -> 6"
    )


def test_a_failure_interval_counts_at_most_one_failure_per_interval() -> None:
    # KEDA counts one failure per HPA metric request and per poll; a 10s interval makes a
    # threshold of 3 fall back after the 4th counted failure, 30s after the first.
    hints = kafka_hints(
        fallback_failure_threshold="3", fallback_replicas="6", fallback_failure_interval="10s", **V2
    )
    run = Run(hints, current=2)
    assert {run.poll(t, [failure(t)]).desired for t in range(30)} == {2}
    assert run.history.failures_of("orders") == 3
    assert run.poll(30, [failure(30)]).desired == 6


@pytest.mark.parametrize(
    ("behavior", "current", "desired"),
    [
        ("currentReplicas", 4, 4),
        ("currentReplicasIfHigher", 8, 8),
        ("currentReplicasIfHigher", 2, 6),
        ("currentReplicasIfLower", 8, 6),
        ("currentReplicasIfLower", 3, 3),
    ],
)
def test_keda_fallback_behaviours_pick_the_count_to_report(behavior: str, current: int, desired: int) -> None:
    # fallback.go doFallback: static, currentReplicas, currentReplicasIfHigher, currentReplicasIfLower.
    hints = kafka_hints(
        fallback_failure_threshold="0",
        fallback_replicas="6",
        fallback_behavior=behavior,
        scale_down_stabilization="0s",
    )
    assert Run(hints, current=current).poll(0, [failure(0)]).desired == desired


def test_a_success_resets_the_failure_count() -> None:
    run = Run(kafka_hints(fallback_failure_threshold="2", fallback_replicas="6"), current=2)
    run.poll(0, [failure(0)])
    run.lag(1, 200)
    assert run.history.failures_of("orders") == 0
    assert run.poll(2, [failure(2)]).desired == 2


def test_a_stale_measurement_counts_as_a_failure() -> None:
    run = Run(kafka_hints(polling_interval="1s", min_replicas="0", cooldown="0s"), current=3)
    decision = run.poll(10, [lag(5000, at=6.5)])
    assert decision.desired == 3
    assert decision.wants_zero is False
    assert decision.recommendations[0].state == "failing"
    assert "3.5s old" in decision.reason
    assert (
        run.poll(11, [lag(5000, at=8.0)]).desired == 6
    )  # fresh at three intervals; nil-behaviour limit 2 x 3


def test_a_trigger_without_a_measurement_counts_as_failing() -> None:
    decision = Run(kafka_hints(), current=3).poll(0, [])
    assert decision.recommendations[0].error == "no measurement"
    assert decision.desired == 3


def test_the_newest_reading_of_a_trigger_wins() -> None:
    decision = Run(kafka_hints(), current=1).poll(5, [lag(300, at=5), lag(100, at=4)])
    assert decision.desired == 3


# ---------------------------------------------------------------- several triggers, pause, history


def test_several_triggers_take_the_largest_recommendation() -> None:
    annotations = {
        P + "orders.type": "kafka",
        P + "orders.bootstrap-servers": "kafka:9092",
        P + "orders.consumer-group": "billing",
        P + "refunds.type": "kafka",
        P + "refunds.bootstrap-servers": "kafka:9092",
        P + "refunds.consumer-group": "refunds",
    }
    run = Run(parse_hints({**annotations, P + "scale-up-select": "max"}), current=2)
    decision = run.poll(0, [lag(300, at=0), lag(500, at=0, trigger="refunds")])
    assert decision.desired == 5
    assert "on refunds" in decision.reason


def test_paused_freezes_the_count_even_outside_the_bounds() -> None:
    decision = Run(kafka_hints(paused="true"), current=30).lag(0, 99999)
    assert decision.desired == 30
    assert decision.reason == "paused (tidescale.io/paused): stays at 30"


def test_paused_replicas_pins_the_count_even_to_zero() -> None:
    decision = Run(kafka_hints(paused_replicas="0"), current=4).lag(0, 99999)
    assert (decision.desired, decision.wants_zero) == (0, False)
    assert decision.reason == "paused at 0 replicas (tidescale.io/paused-replicas): 4 -> 0"


def test_no_triggers_hold_the_count_within_bounds() -> None:
    decision = Run(Hints(), current=4).poll(0, [])
    assert decision.desired == 4
    assert decision.reason == "no triggers: stays at 4"


def test_an_unwritten_decision_leaves_no_scale_event_behind() -> None:
    decision = Run(kafka_hints(**V2), current=1).lag(0, 4000)
    assert [e.change for e in decision.history.scale_up_events] == [4]
    assert decision.history_unapplied.scale_up_events == ()


def test_the_nil_behaviour_path_keeps_no_scale_events() -> None:
    # horizontal.go storeScaleEvent: "we should not store any event as they will not be used".
    decision = Run(kafka_hints(), current=1).lag(0, 4000)
    assert decision.desired == 4
    assert decision.history.scale_up_events == ()


def test_the_history_stays_bounded_over_a_long_run() -> None:
    # The HPA reuses one old slot per sync: a 300s window at 1 s keeps its 301 samples (the
    # nil-behaviour cutoff is inclusive), the newest, and the initial one that is never reused.
    for knobs in ({}, V2):
        run = Run(kafka_hints(max_replicas="50", **knobs), current=1)
        for second in range(5000):
            run.lag(second, (second % 700) * 10)
        assert len(run.history.recommendations) <= 303
        assert len(run.history.scale_up_events) + len(run.history.scale_down_events) <= 40


# ---------------------------------------------------------------- KEDA knobs added by issue 12


def test_paused_scale_in_never_scales_down_nor_to_zero() -> None:
    # KEDA sets the HPA's scaleDown selectPolicy to Disabled (controllers/keda/hpa.go) and
    # scaleToZeroOrIdle returns early on NeedToPauseScaleIn.
    run = Run(
        kafka_hints(min_replicas="0", cooldown="0s", paused_scale_in="true", scale_down_stabilization="0s"),
        current=5,
    )
    decision = run.lag(400, 0, active=False)
    assert (decision.desired, decision.wants_zero) == (5, False)
    assert decision.capped_by is not None
    assert decision.capped_by.limit is Limit.SCALE_DOWN_DISABLED
    assert run.lag(401, 4000).desired == 10  # scaling up is untouched


def test_paused_scale_out_never_scales_up() -> None:
    run = Run(kafka_hints(paused_scale_out="true", scale_down_stabilization="0s"), current=2)
    assert run.lag(0, 4000).desired == 2
    assert run.lag(1, 100).desired == 1


def test_a_value_metric_compares_the_total_with_the_target_for_the_ready_pods() -> None:
    # replica_calculator.go GetExternalMetricReplicas -> getUsageRatioReplicaCount:
    # ceil(usage / target x ready pods) = ceil(2 x 3) from 4 replicas of which 3 exist.
    run = Run(kafka_hints(metric_type="Value", max_replicas="20", **V2), current=4)
    decision = run.poll(
        0, [Measurement(trigger="orders", value=2000, target=1000, active=True, taken_at=0)], pods=3
    )
    assert decision.desired == 6
    within = Run(kafka_hints(metric_type="Value"), current=4).lag(0, 105)
    assert within.desired == 4  # 105 / 100 is within tolerance: the spec count stays


def test_the_replica_cap_rule_can_cap_the_recommendation_instead_of_the_value() -> None:
    # The rule tidescale had before issue 12, kept as a named option: 5000 lag, 11 partitions,
    # 10 replicas -> 11 (KEDA's metric-value rule gives 10: 1100 / 1000 is within tolerance).
    hints = kafka_hints(max_replicas="20", replica_cap="replicas")
    decision = Run(hints, current=10).lag(0, 5000, cap=11)
    assert decision.desired == 11
    assert str(decision.capped_by) == "11 partitions of orders"


def test_capped_by_is_a_structured_value_naming_the_limit() -> None:
    decision = Run(kafka_hints(max_replicas="50"), current=3).lag(0, 4000)
    assert decision.desired == 6
    assert decision.capped_by is not None
    assert decision.capped_by.limit is Limit.SCALE_UP_LIMIT
    assert not decision.capped_by.holds
    assert decision.reason.endswith("3 -> 6, capped by the scale-up limit 6 (twice the replicas, at least 4)")
