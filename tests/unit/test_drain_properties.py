"""Properties of the drain-time recommendation: the fewest pods that meet the target, monotone in
the backlog, the target and the rate, never above the cap, and the stated fallback while the
per-pod rate is unknown."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from tidescale._drain import MAX_REPLICAS, DrainInputs, recommend_drain

EXAMPLES = settings(max_examples=150, deadline=None)

backlogs = st.integers(0, 10**9).map(float)  # lag is a count of messages
arrivals = st.floats(0.0, 1e5)
rates = st.floats(0.01, 1e5)
targets = st.floats(1.0, 86400.0)
caps = st.one_of(st.none(), st.integers(0, 1000))


def inputs(
    *,
    backlog: float,
    arrival: float,
    rate: float | None,
    target: float,
    cap: int | None,
    current: int = 3,
    threshold: float | None = None,
) -> DrainInputs:
    return DrainInputs(
        backlog=backlog,
        arrival_rate=arrival,
        per_pod_rate=rate,
        target_seconds=target,
        cap=cap,
        current=current,
        threshold=threshold,
    )


def meets(replicas: int, *, backlog: float, arrival: float, rate: float, target: float) -> bool:
    """Whether ``replicas`` pods clear the backlog within the target (with float slack)."""
    return replicas * rate * (1 + 1e-6) >= arrival + backlog / target


@EXAMPLES
@given(backlog=backlogs, arrival=arrivals, rate=rates, target=targets)
def test_the_recommendation_is_the_fewest_pods_that_clear_the_backlog_within_the_target(
    backlog: float, arrival: float, rate: float, target: float
) -> None:
    replicas = recommend_drain(
        inputs(backlog=backlog, arrival=arrival, rate=rate, target=target, cap=None)
    ).replicas
    if replicas < MAX_REPLICAS:  # else saturated at Kubernetes' int32: the formula asks for more
        assert meets(replicas, backlog=backlog, arrival=arrival, rate=rate, target=target)
    if replicas > 0:
        assert (replicas - 1) * rate * (1 - 1e-6) < arrival + backlog / target


@EXAMPLES
@given(small=backlogs, large=backlogs, arrival=arrivals, rate=rates, target=targets, cap=caps)
def test_more_backlog_never_asks_for_fewer_pods(
    small: float, large: float, arrival: float, rate: float, target: float, cap: int | None
) -> None:
    small, large = sorted((small, large))
    fewer = recommend_drain(inputs(backlog=small, arrival=arrival, rate=rate, target=target, cap=cap))
    more = recommend_drain(inputs(backlog=large, arrival=arrival, rate=rate, target=target, cap=cap))
    assert fewer.replicas <= more.replicas


@EXAMPLES
@given(backlog=backlogs, arrival=arrivals, rate=rates, short=targets, long=targets, cap=caps)
def test_a_longer_target_never_asks_for_more_pods(
    backlog: float, arrival: float, rate: float, short: float, long: float, cap: int | None
) -> None:
    short, long = sorted((short, long))
    hurried = recommend_drain(inputs(backlog=backlog, arrival=arrival, rate=rate, target=short, cap=cap))
    patient = recommend_drain(inputs(backlog=backlog, arrival=arrival, rate=rate, target=long, cap=cap))
    assert patient.replicas <= hurried.replicas


@EXAMPLES
@given(backlog=backlogs, arrival=arrivals, slow=rates, fast=rates, target=targets, cap=caps)
def test_faster_pods_never_ask_for_more_pods(
    backlog: float, arrival: float, slow: float, fast: float, target: float, cap: int | None
) -> None:
    slow, fast = sorted((slow, fast))
    for_slow = recommend_drain(inputs(backlog=backlog, arrival=arrival, rate=slow, target=target, cap=cap))
    for_fast = recommend_drain(inputs(backlog=backlog, arrival=arrival, rate=fast, target=target, cap=cap))
    assert for_fast.replicas <= for_slow.replicas


@EXAMPLES
@given(
    backlog=backlogs,
    arrival=arrivals,
    rate=st.one_of(st.none(), rates),
    target=targets,
    cap=st.integers(0, 1000),
    threshold=st.one_of(st.none(), st.floats(0.5, 1e6)),
    current=st.integers(0, 5000),
)
def test_the_recommendation_never_exceeds_the_cap(
    backlog: float,
    arrival: float,
    rate: float | None,
    target: float,
    cap: int,
    threshold: float | None,
    current: int,
) -> None:
    recommendation = recommend_drain(
        inputs(
            backlog=backlog,
            arrival=arrival,
            rate=rate,
            target=target,
            cap=cap,
            threshold=threshold,
            current=current,
        )
    )
    assert 0 <= recommendation.replicas <= cap


@EXAMPLES
@given(backlog=backlogs, arrival=arrivals, rate=rates, target=targets, cap=caps)
def test_uncapped_pods_clear_the_backlog_within_the_target_they_report(
    backlog: float, arrival: float, rate: float, target: float, cap: int | None
) -> None:
    recommendation = recommend_drain(
        inputs(backlog=backlog, arrival=arrival, rate=rate, target=target, cap=cap)
    )
    uncapped = recommend_drain(inputs(backlog=backlog, arrival=arrival, rate=rate, target=target, cap=None))
    if recommendation.replicas == uncapped.replicas == MAX_REPLICAS:
        return  # saturated at Kubernetes' int32 (a per-pod rate near zero): no promise made
    if recommendation.replicas == uncapped.replicas:
        assert recommendation.clears_in is not None
        assert recommendation.clears_in <= target * (1 + 1e-6)
    else:
        assert recommendation.replicas < uncapped.replicas
        assert "capped" in recommendation.reason


@EXAMPLES
@given(
    backlog=backlogs,
    arrival=arrivals,
    target=targets,
    threshold=st.floats(0.5, 1e6),
    rate=st.sampled_from([None, 0.0, -1.0, math.nan]),
)
def test_while_the_rate_is_unknown_a_given_threshold_decides(
    backlog: float, arrival: float, target: float, threshold: float, rate: float | None
) -> None:
    recommendation = recommend_drain(
        inputs(backlog=backlog, arrival=arrival, rate=rate, target=target, cap=None, threshold=threshold)
    )
    assert not recommendation.measured
    assert recommendation.replicas == math.ceil(backlog / threshold)


@EXAMPLES
@given(backlog=backlogs, target=targets, current=st.integers(0, 1000))
def test_while_the_rate_is_unknown_without_a_threshold_the_count_holds_with_one_pod_for_a_backlog(
    backlog: float, target: float, current: int
) -> None:
    recommendation = recommend_drain(
        inputs(backlog=backlog, arrival=0.0, rate=None, target=target, cap=None, current=current)
    )
    assert recommendation.replicas == (max(current, 1) if backlog > 0 else current)
    assert "not measured yet" in recommendation.reason


def test_an_exact_fit_is_not_rounded_up_by_floating_point() -> None:
    # 0.9 / 0.03 is 30.000000000000004 in floating point; 30 pods keep up exactly.
    recommendation = recommend_drain(
        DrainInputs(backlog=0, arrival_rate=0.9, per_pod_rate=0.03, target_seconds=60, cap=None, current=1)
    )
    assert recommendation.replicas == 30


def test_a_fraction_of_a_message_waiting_counts_as_a_whole_one() -> None:
    recommendation = recommend_drain(
        DrainInputs(backlog=0.25, arrival_rate=0, per_pod_rate=0.5, target_seconds=1, cap=None, current=0)
    )
    assert recommendation.replicas == 2


def test_the_reason_speaks_in_backlog_arrivals_and_pod_rates() -> None:
    recommendation = recommend_drain(
        DrainInputs(
            backlog=48_000, arrival_rate=350, per_pod_rate=220, target_seconds=60, cap=None, current=2
        )
    )
    # (350 + 48000/60) / 220 = 5.23 -> 6 pods; 48000 / (6*220 - 350) = 49.5 s.
    assert recommendation.replicas == 6
    assert (
        recommendation.reason
        == "backlog 48,000, arriving 350/s, each pod 220/s: 6 pods clear it in 50 s (target 60 s)"
    )


def test_a_capped_count_below_the_arrival_rate_says_it_cannot_keep_up() -> None:
    recommendation = recommend_drain(
        DrainInputs(backlog=1000, arrival_rate=1000, per_pod_rate=100, target_seconds=60, cap=4, current=2)
    )
    assert recommendation.replicas == 4
    assert recommendation.clears_in is None
    assert recommendation.reason.endswith("4 pods (capped) cannot keep up (target 60 s)")
