"""The 17 rows of issue 12: where the engine differed from the HPA controller (kubernetes v1.37
``pkg/controller/podautoscaler``) and KEDA (``pkg/scaling/executor``, ``pkg/fallback``,
``pkg/scalers/kafka_scaler.go``). Each test names the function whose behaviour it pins.
T = a target (lag threshold) of 100 per replica throughout."""

from __future__ import annotations

from collections.abc import Iterable

from tidescale.hints import Hints, parse_hints
from tidescale.policy import Decision, History, decide
from tidescale.sources.base import Measurement, MeasurementFailure

P = "tidescale.io/"


def kafka_hints(**knobs: str) -> Hints:
    annotations = {
        P + "orders.type": "kafka",
        P + "orders.bootstrap-servers": "kafka:9092",
        P + "orders.consumer-group": "billing",
        P + "orders.topic": "orders",
    }
    annotations.update({P + name.replace("_", "-"): value for name, value in knobs.items()})
    return parse_hints(annotations)


def lag(value: float, *, at: float, active: bool | None = None, cap: int | None = None) -> Measurement:
    return Measurement(
        trigger="orders",
        value=value,
        target=100,
        active=value > 0 if active is None else active,
        replica_cap=cap,
        taken_at=at,
    )


def failure(at: float) -> MeasurementFailure:
    return MeasurementFailure(trigger="orders", error="broker kafka:9092 unreachable", taken_at=at)


class Run:
    """One HPA sync per call; a decision's count is written (and its history kept) every time."""

    def __init__(self, hints: Hints, current: int, history: History | None = None) -> None:
        self.hints, self.current, self.history = hints, current, history or History()

    def poll(
        self, now: float, readings: Iterable[Measurement | MeasurementFailure], **extra: int
    ) -> Decision:
        decision = decide(
            readings, current=self.current, hints=self.hints, now=now, history=self.history, **extra
        )
        self.history, self.current = decision.history, decision.desired
        return decision

    def lag(self, now: float, value: float, **kwargs: object) -> Decision:
        return self.poll(now, [lag(value, at=now, **kwargs)])  # type: ignore[arg-type]

    def fail(self, now: float) -> Decision:
        return self.poll(now, [failure(now)])


def test_row_1_a_failed_sync_records_no_recommendation() -> None:
    """horizontal.go reconcileAutoscaler: computeReplicasForMetrics returns -1 when every metric
    is invalid, and the sync returns before normalizeDesiredReplicasWithBehaviors records anything."""
    run = Run(kafka_hints(scale_down_stabilization="60s"), current=6)
    assert run.lag(0, 600).desired == 6
    assert run.lag(30, 200).desired == 6  # 6 of t0 still in the window
    assert run.fail(45).desired == 6
    assert run.lag(61, 200).desired == 2  # the window (1, 61] holds {2, 2}


def test_row_2_a_failed_sync_does_not_hold_the_scale_up_window() -> None:
    """horizontal.go stabilizeRecommendationWithBehaviors: only recorded recommendations count,
    and a failed sync records none; then the default scale-up policies (defaults.go) limit 2 -> 6."""
    run = Run(kafka_hints(scale_up_stabilization="60s", max_replicas="20"), current=2)
    assert run.lag(0, 200).desired == 2
    assert run.fail(50).desired == 2
    assert run.lag(70, 1000).desired == 6  # window {10}; max(2 + 4 pods, 2 x 100%)


def test_row_3_nothing_is_recorded_at_zero_so_the_wake_count_does_not_cap_the_up_window() -> None:
    """horizontal.go reconcileAutoscaler: at 0 replicas (KEDA's HPA has minReplicas >= 1) scaling
    is disabled and nothing is recorded; KEDA's scaleFromZeroOrIdle writes 1 without the HPA."""
    run = Run(kafka_hints(min_replicas="0", scale_up_stabilization="60s", max_replicas="50"), current=1)
    run.lag(-1000, 0, active=False)  # the HPA knew the Deployment before it went to zero
    run.current = 0
    run.lag(0, 4000)
    run.current = 1  # the waker's wake
    assert run.lag(15, 4000).desired == 5
    assert run.lag(30, 4000).desired == 10
    assert run.lag(61, 4000).desired == 20


def test_row_4_no_behaviour_hint_takes_the_hpa_nil_behaviour_path() -> None:
    """horizontal.go normalizeDesiredReplicas -> convertDesiredReplicasWithRules and
    calculateScaleUpLimit: max(2 x current, 4) when spec.behavior is nil (KEDA's default)."""
    run = Run(kafka_hints(max_replicas="50"), current=1)
    assert [run.lag(t, 4000).desired for t in (0, 15, 30)] == [4, 8, 16]
    assert Run(kafka_hints(max_replicas="50"), current=3).lag(0, 4000).desired == 6


def test_row_5_a_count_below_min_goes_to_min_without_reading_metrics() -> None:
    """horizontal.go reconcileAutoscaler: currentReplicas < minReplicas -> desired = minReplicas,
    needsMetricComputation = false (no recommendation recorded)."""
    decision = Run(kafka_hints(min_replicas="3"), current=1).lag(0, 800)
    assert decision.desired == 3
    assert [r.replicas for r in decision.history.recommendations] == [1]  # only the initial one


def test_row_6_a_count_above_max_goes_to_max() -> None:
    """horizontal.go reconcileAutoscaler: currentReplicas > MaxReplicas -> desired = MaxReplicas."""
    decision = Run(kafka_hints(max_replicas="10", scale_down_stabilization="0s"), current=15).lag(0, 200)
    assert decision.desired == 10


def test_row_7_an_outdated_scale_up_event_slot_is_reused() -> None:
    """horizontal.go storeScaleEvent + markScaleEventsOutdated: the t0 scale-up event is older
    than the longest scale-up period (15s) at t20 and its slot is reused; the scale-down limit
    (calculateScaleDownLimitWithBehaviors) then starts the period at 18 - 4 = 14: int(12.6) = 12."""
    run = Run(
        kafka_hints(scale_down_policies="10%/1m", scale_down_stabilization="0s", max_replicas="50"),
        current=10,
    )
    assert run.lag(0, 1400).desired == 14
    assert run.lag(20, 1800).desired == 18
    assert run.lag(30, 100).desired == 12


def test_row_8_percent_scale_up_uses_float_arithmetic() -> None:
    """horizontal.go calculateScaleUpLimitWithScalingRules: ceil(float64(50) * (1 + 10/100)) is
    ceil(55.00000000000001) = 56."""
    decision = Run(kafka_hints(scale_up_policies="10%/1m", max_replicas="100"), current=50).lag(0, 10000)
    assert decision.desired == 56


def test_row_9_average_value_tolerance_is_measured_against_the_pods_that_exist() -> None:
    """replica_calculator.go GetExternalPerPodMetricReplicas(statusReplicas, ...): 850 / (100 x 8)
    is within tolerance -> statusReplicas (8)."""
    run = Run(kafka_hints(scale_down_stabilization="0s"), current=10)
    assert run.poll(0, [lag(850, at=0)], pods=8).desired == 8


def test_row_10_tolerance_can_differ_by_direction() -> None:
    """horizontal.go tolerancesForHpa + replica_calculator.go Tolerances.isWithin:
    (1 - down) <= ratio <= (1 + up), per-direction from spec.behavior (GA in 1.37)."""
    hints = kafka_hints(
        scale_up_tolerance="0.05",
        scale_down_tolerance="0.2",
        scale_down_stabilization="0s",
        max_replicas="20",
    )
    assert Run(hints, current=10).lag(0, 1080).desired == 11
    assert Run(hints, current=10).lag(0, 850).desired == 10


def test_row_11_the_partition_cap_lowers_the_metric_value_not_the_replicas() -> None:
    """kafka_scaler.go getTotalLag: (totalLag / lagThreshold) > upperBound -> totalLag =
    upperBound x lagThreshold = 1100, within tolerance of 10 replicas."""
    decision = Run(kafka_hints(max_replicas="20"), current=10).lag(0, 5000, cap=11)
    assert decision.desired == 10


def test_row_12_a_capped_value_within_tolerance_keeps_a_count_above_the_partitions() -> None:
    """kafka_scaler.go getTotalLag, then GetExternalPerPodMetricReplicas: 1100 / 1200 is within."""
    decision = Run(kafka_hints(max_replicas="20", scale_down_stabilization="0s"), current=12).lag(
        0, 5000, cap=11
    )
    assert decision.desired == 12


def test_row_13_the_partition_cap_uses_integer_division() -> None:
    """kafka_scaler.go getTotalLag: 1250 / 100 = 12 (int64) is not above 12 partitions: no cap,
    and ceil(12.5) = 13."""
    decision = Run(kafka_hints(max_replicas="20"), current=10).lag(0, 1250, cap=12)
    assert decision.desired == 13


def test_row_14_fallback_needs_more_failures_than_the_threshold() -> None:
    """fallback.go GetMetricsWithFallback: NumberOfFailures > FailureThreshold."""
    run = Run(
        kafka_hints(fallback_failure_threshold="3", fallback_replicas="6", max_replicas="20"), current=4
    )
    assert [run.fail(t).desired for t in (0, 1, 2)] == [4, 4, 4]
    assert run.fail(3).desired == 6


def test_row_15_the_fallback_value_goes_through_tolerance() -> None:
    """fallback.go doFallback reports fallback x target as the metric; the HPA's
    GetExternalPerPodMetricReplicas finds 11 / 10 within tolerance -> 10."""
    run = Run(
        kafka_hints(fallback_failure_threshold="0", fallback_replicas="11", max_replicas="20"), current=10
    )
    assert run.fail(0).desired == 10


def test_row_16_a_zero_fallback_falls_through_to_scale_to_zero() -> None:
    """scale_scaledobjects.go RequestScale: the inactive branch holds only for
    `isError && Fallback != nil && Fallback.Replicas != 0` (or no fallback); a fallback of 0
    falls through to scaleToZeroOrIdle."""
    hints = kafka_hints(
        min_replicas="0", cooldown="60s", fallback_failure_threshold="100", fallback_replicas="0"
    )
    run = Run(hints, current=1)
    run.lag(0, 50)
    assert run.fail(30).wants_zero is False
    assert run.fail(61).wants_zero is True


def test_row_16_a_non_zero_fallback_or_none_keeps_a_failing_deployment_running() -> None:
    """scale_scaledobjects.go RequestScale: `isError && Fallback.Replicas != 0` and
    `isError && Fallback == nil` do nothing."""
    for knobs in ({"fallback_failure_threshold": "100", "fallback_replicas": "2"}, {}):
        run = Run(kafka_hints(min_replicas="0", cooldown="60s", **knobs), current=1)
        run.lag(0, 50)
        assert run.fail(61).wants_zero is False


def test_row_17_the_cooldown_needs_strictly_more_time_than_its_length() -> None:
    """scale_scaledobjects.go scaleToZeroOrIdle: LastActiveTime.Add(cooldownPeriod).Before(now)."""
    run = Run(kafka_hints(min_replicas="0", cooldown="60s"), current=1)
    run.lag(0, 50)
    assert run.lag(60, 0, active=False).wants_zero is False
    assert run.lag(60.5, 0, active=False).wants_zero is True
