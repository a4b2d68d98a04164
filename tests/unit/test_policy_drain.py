"""The drain-time recommendation as the policy's recommend step: it replaces a measured trigger's
threshold arithmetic, and stabilization, rate limits and the clamp still apply after it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tidescale._drain import DrainInputs, DrainRecommendation, recommend_drain
from tidescale._rates import ProgressSnapshot
from tidescale._stall import StallState, observe_stall
from tidescale.hints import Hints, parse_hints
from tidescale.policy import History, Limit, decide
from tidescale.sources.base import Measurement, MeasurementFailure

P = "tidescale.io/"


def hints(**extra: str) -> Hints:
    annotations = {
        P + "kafka.bootstrap-servers": "k:9092",
        P + "kafka.consumer-group": "g",
        P + "kafka.topic": "orders",
        P + "kafka.drain-time": "60s",
        P + "max-replicas": "20",
        P + "scale-down-stabilization": "0s",
        P + "scale-up-policies": "1000 pods/1s",
        P + "scale-down-policies": "1000 pods/1s",
    }
    annotations.update({P + key: value for key, value in extra.items()})
    return parse_hints(annotations)


def lag(value: float, *, at: float = 0.0) -> Measurement:
    return Measurement(trigger="kafka", value=value, target=10.0, active=value > 0, taken_at=at)


def drain_for(backlog: float, *, rate: float = 220.0, arrival: float = 350.0) -> DrainRecommendation:
    return recommend_drain(
        DrainInputs(
            backlog=backlog, arrival_rate=arrival, per_pod_rate=rate, target_seconds=60, cap=20, current=2
        )
    )


def test_a_measured_trigger_with_a_drain_recommendation_scales_to_its_count_not_the_threshold() -> None:
    decision = decide(
        [lag(48_000)],
        current=2,
        hints=hints(),
        now=0.0,
        history=History(),
        drain={"kafka": drain_for(48_000)},
    )
    assert decision.desired == 6  # the threshold (10 per pod) alone would say 4,800, capped at 20
    assert decision.reason.startswith(
        "backlog 48,000, arriving 350/s, each pod 220/s: 6 pods clear it in 50 s (target 60 s)"
        " on kafka: 2 -> 6"
    )


def test_the_scale_down_stabilization_window_still_holds_a_lower_drain_recommendation() -> None:
    held = hints(**{"scale-down-stabilization": "300s"})
    first = decide(
        [lag(48_000)], current=2, hints=held, now=0.0, history=History(), drain={"kafka": drain_for(48_000)}
    )
    assert first.desired == 6
    second = decide(
        [lag(100, at=30.0)],
        current=6,
        hints=held,
        now=30.0,
        history=first.history,
        drain={"kafka": drain_for(100)},
    )
    assert drain_for(100).replicas == 2
    assert second.desired == 6


def test_the_max_replicas_clamp_applies_after_the_drain_recommendation() -> None:
    big = recommend_drain(
        DrainInputs(backlog=10**7, arrival_rate=0, per_pod_rate=1, target_seconds=60, cap=None, current=2)
    )
    decision = decide(
        [lag(10**7)], current=2, hints=hints(), now=0.0, history=History(), drain={"kafka": big}
    )
    assert decision.desired == 20


def test_a_trigger_in_fallback_keeps_the_fallback_count_whatever_the_drain_recommendation_says() -> None:
    failure = MeasurementFailure(trigger="kafka", error="broker down", taken_at=0.0)
    with_fallback = hints(**{"fallback-failure-threshold": "0", "fallback-replicas": "4"})
    decision = decide(
        [failure],
        current=3,
        hints=with_fallback,
        now=0.0,
        history=History(),
        drain={"kafka": drain_for(48_000)},
    )
    assert decision.recommendations[0].state == "fallback"
    assert decision.desired == 4


@settings(max_examples=100, deadline=None)
@given(
    backlog=st.integers(0, 10**6),
    rate=st.floats(1.0, 1000.0),
    arrival=st.floats(0.0, 1000.0),
    current=st.integers(1, 20),
)
def test_without_windows_or_limits_the_decision_is_the_drain_count_within_min_and_max(
    backlog: int, rate: float, arrival: float, current: int
) -> None:
    recommendation = drain_for(backlog, rate=rate, arrival=arrival)
    decision = decide(
        [lag(backlog)],
        current=current,
        hints=hints(),
        now=0.0,
        history=History(),
        drain={"kafka": recommendation},
    )
    assert decision.desired == min(max(recommendation.replicas, 1), 20)


def stalled_state(*, since: float = 0.0) -> StallState:
    state = StallState()
    for moment in (since, since + 300.0):
        snapshot = ProgressSnapshot(
            taken_at=moment, consumed={"orders/0": 7, "orders/1": 9}, lag={"orders/0": 0.0, "orders/1": 40.0}
        )
        state = observe_stall(state, snapshot, pods_ready=True, stall_after=300.0)
    assert state.stalled
    return state


def test_a_stalled_group_is_held_at_its_count_with_the_stuck_partitions_named() -> None:
    decision = decide(
        [lag(48_000, at=300.0)], current=3, hints=hints(), now=300.0, history=History(), stall=stalled_state()
    )
    assert decision.desired == 3
    assert decision.capped_by is not None
    assert decision.capped_by.limit is Limit.CONSUMER_STALLED
    assert decision.reason.endswith(
        "stays at 3, held by a stalled consumer group (orders/1: no progress for 5m)"
    )


def test_a_group_that_is_not_stalled_scales_as_usual() -> None:
    decision = decide([lag(48_000)], current=3, hints=hints(), now=0.0, history=History(), stall=StallState())
    assert decision.desired == 20


def test_a_stalled_group_above_max_replicas_still_comes_down_to_max() -> None:
    decision = decide(
        [lag(48_000, at=300.0)],
        current=30,
        hints=hints(),
        now=300.0,
        history=History(),
        stall=stalled_state(),
    )
    assert decision.desired == 20
