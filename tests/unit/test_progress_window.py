"""The leader's progress window: the snapshots it keeps per trigger, the rates and drain
recommendation it hands the policy, and the stall clock, fed one tick's readings at a time."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from tidescale._drain import DrainInputs, recommend_drain
from tidescale._progress_window import (
    MAX_SNAPSHOTS,
    REMEMBER_RATE_SECONDS,
    DrainEstimate,
    ProgressWindow,
    merged_stall,
)
from tidescale._rates import ProgressSnapshot, RateSettings
from tidescale._stall import StallState
from tidescale.sources.base import Measurement, MeasurementFailure


def reading(
    *,
    consumed: int,
    produced: int,
    trigger: str = "orders",
    partitions: int = 1,
    cap: int | None = 12,
    target: float = 100.0,
) -> Measurement:
    """A group-wide reading with ``partitions`` partitions sharing the counters evenly."""
    units = [f"orders/{number}" for number in range(partitions)]
    per_consumed = {unit: consumed // partitions for unit in units}
    per_produced = {unit: produced // partitions for unit in units}
    lag = {unit: float(per_produced[unit] - per_consumed[unit]) for unit in units}
    return Measurement(
        trigger=trigger,
        value=sum(lag.values()),
        target=target,
        active=True,
        replica_cap=cap,
        taken_at=-1.0,  # the window restamps with the leader's clock
        progress=ProgressSnapshot(taken_at=-1.0, consumed=per_consumed, produced=per_produced, lag=lag),
    )


@settings(max_examples=60, deadline=None)
@given(interval=st.floats(0.05, 20.0), ticks=st.integers(1, 600))
def test_the_window_keeps_a_bounded_number_of_snapshots_whatever_the_polling_interval(
    interval: float, ticks: int
) -> None:
    window = ProgressWindow()
    for tick in range(ticks):
        window.update(
            [reading(consumed=tick * 10, produced=10**6 + tick * 5)],
            drain_times={"orders": 60.0},
            stall_after=300.0,
            now=tick * interval,
            current=2,
            ready=2,
            max_replicas=10,
        )
    assert window.kept <= MAX_SNAPSHOTS + 2


@settings(max_examples=60, deadline=None)
@given(
    interval=st.sampled_from([0.5, 1.0, 2.0, 5.0, 10.0]),
    per_pod=st.integers(1, 500),
    pods=st.integers(1, 8),
    arrival=st.integers(0, 2000),
    partitions=st.integers(1, 6),
)
def test_a_steady_group_is_measured_at_its_per_pod_and_arrival_rates_on_every_tick_once_warm(
    interval: float, per_pod: int, pods: int, arrival: int, partitions: int
) -> None:
    """The thinning never drops the start of the window back into a warm-up: once the rates are
    known they stay known, and equal the true ones, for as long as the group keeps busy."""
    window, rate_settings = ProgressWindow(), RateSettings()
    # Twice the drawn rates, so that counters at half-second ticks stay whole messages per partition.
    per_pod, arrival = 2 * per_pod, 2 * arrival
    step = per_pod * pods * partitions
    backlog = 10**9
    # Known once min_coverage follows the warm-up, give or take one kept snapshot's spacing.
    spacing = max(interval, 2 * (rate_settings.window + rate_settings.warm_up) / MAX_SNAPSHOTS)
    known_from = rate_settings.warm_up + rate_settings.min_coverage + spacing + interval
    for tick in range(int(400 / interval)):
        now = tick * interval
        progress = window.update(
            [
                reading(
                    consumed=int(step * now),
                    produced=backlog + int(arrival * partitions * now),
                    partitions=partitions,
                )
            ],
            drain_times={"orders": 60.0},
            stall_after=300.0,
            now=now,
            current=pods,
            ready=pods,
            max_replicas=1000,
        )
        rates = progress.drain["orders"].rates
        if now >= known_from:
            assert rates.per_consumer is not None, now
            assert math.isclose(rates.per_consumer, per_pod * partitions, rel_tol=1e-9)
            assert rates.arrival is not None
            assert math.isclose(rates.arrival, arrival * partitions, rel_tol=1e-9, abs_tol=1e-9)
        if now >= rate_settings.window + rate_settings.warm_up + spacing:
            # The whole window counts, not a window shortened by a warm-up after each pruning.
            assert rates.busy_seconds >= rate_settings.window - 2 * spacing, now


@settings(max_examples=100, deadline=None)
@given(
    backlog=st.integers(0, 10**6),
    rate=st.integers(1, 1000),
    arrival=st.integers(0, 1000),
    target=st.sampled_from([5.0, 30.0, 60.0, 600.0]),
    cap=st.one_of(st.none(), st.integers(1, 50)),
    max_replicas=st.integers(1, 100),
    current=st.integers(1, 20),
)
def test_the_recommendation_handed_to_the_policy_is_the_formula_on_the_measured_inputs(
    backlog: int,
    rate: int,
    arrival: int,
    target: float,
    cap: int | None,
    max_replicas: int,
    current: int,
) -> None:
    window = ProgressWindow(RateSettings(window=60.0, warm_up=0.0, min_coverage=2.0))
    start = rate * current * 5 + backlog + 1  # lag above zero all along: busy, so measured
    progress = None
    for second in range(6):
        progress = window.update(
            [
                reading(
                    consumed=rate * current * second, produced=start + arrival * second, cap=cap, target=7.0
                )
            ],
            drain_times={"orders": target},
            stall_after=0.0,
            now=float(second),
            current=current,
            ready=current,
            max_replicas=max_replicas,
        )
    assert progress is not None
    estimate = progress.drain["orders"]
    expected = recommend_drain(
        DrainInputs(
            backlog=start + arrival * 5 - rate * current * 5,
            arrival_rate=estimate.rates.arrival,
            per_pod_rate=estimate.rates.per_consumer,
            target_seconds=target,
            cap=max_replicas if cap is None else min(cap, max_replicas),
            current=current,
            threshold=7.0,
        )
    )
    assert estimate.rates.per_consumer == rate
    assert estimate.rates.arrival == arrival
    assert estimate.recommendation == expected
    assert progress.recommendations() == {"orders": expected}


def test_until_the_rate_is_measured_the_threshold_decides() -> None:
    window = ProgressWindow()
    progress = window.update(
        [reading(consumed=0, produced=4800, target=100.0, cap=None)],
        drain_times={"orders": 60.0},
        stall_after=300.0,
        now=0.0,
        current=1,
        ready=1,
        max_replicas=100,
    )
    recommendation = progress.drain["orders"].recommendation
    assert not recommendation.measured
    assert recommendation.replicas == 48
    assert "threshold 100 per pod" in recommendation.reason


def stall_ticks(
    window: ProgressWindow, consumed: list[int], *, ready: int = 3, stall_after: float = 30.0
) -> list[StallState | None]:
    states = []
    for second, done in enumerate(consumed):
        progress = window.update(
            [reading(consumed=done, produced=10_000 + 10 * second)],
            drain_times={},
            stall_after=stall_after,
            now=float(second),
            current=3,
            ready=ready,
            max_replicas=10,
        )
        states.append(progress.stall.get("orders"))
    return states


def test_a_group_that_commits_nothing_while_lag_grows_and_pods_are_ready_is_stalled_after_stall_after() -> (
    None
):
    states = stall_ticks(ProgressWindow(), [500] * 40)
    assert [bool(state and state.stalled) for state in states].index(True) == 30
    last = states[-1]
    assert last is not None
    assert last.units == ("orders/0",)


def test_pods_that_are_not_all_ready_never_count_as_a_stall() -> None:
    states = stall_ticks(ProgressWindow(), [500] * 60, ready=2)
    assert not any(state and state.stalled for state in states)


def test_progress_ends_a_stall_at_once() -> None:
    states = stall_ticks(ProgressWindow(), [500] * 40 + [501])
    assert states[-2] is not None
    assert states[-2].stalled
    assert states[-1] is not None
    assert not states[-1].stalled


def test_stall_after_zero_keeps_no_stall_state() -> None:
    states = stall_ticks(ProgressWindow(), [500] * 40, stall_after=0.0)
    assert states == [None] * 40


def test_a_reading_without_consumed_counters_is_never_called_stalled() -> None:
    """AMQP-only RabbitMQ reports no ack counts: nothing to see move is not the same as no progress."""
    window = ProgressWindow()
    silent = Measurement(
        trigger="jobs",
        value=50.0,
        target=10.0,
        active=True,
        taken_at=0.0,
        progress=ProgressSnapshot(taken_at=0.0, consumed={}, lag={"jobs": 50.0}),
    )
    for second in range(100):
        progress = window.update(
            [silent], drain_times={}, stall_after=10.0, now=float(second), current=2, ready=2, max_replicas=5
        )
        assert progress.stall == {}


def test_a_failed_reading_leaves_the_stall_clock_and_the_window_as_they_were() -> None:
    window = ProgressWindow()
    stall_ticks(window, [500] * 20)
    before = window.kept
    progress = window.update(
        [MeasurementFailure(trigger="orders", error="broker down", taken_at=20.0)],
        drain_times={},
        stall_after=30.0,
        now=20.0,
        current=3,
        ready=3,
        max_replicas=10,
    )
    assert window.kept == before
    assert progress.stall["orders"].since == 0.0


def test_the_merged_stall_names_every_stalled_trigger_s_units_from_the_earliest_clock() -> None:
    merged = merged_stall(
        {
            "refunds": StallState(stalled=True, since=12.0, units=("refunds/0",)),
            "orders": StallState(stalled=True, since=5.0, units=("orders/1", "orders/0")),
        }
    )
    assert merged == StallState(stalled=True, since=5.0, units=("orders/0", "orders/1", "refunds/0"))
    assert merged_stall({}) is None


def test_a_burst_after_a_quiet_spell_is_sized_by_the_rate_measured_before_it() -> None:
    """The rate is measured only while there is a backlog: a burst after a quiet minute finds no
    busy interval in the window, and is sized by the last rate measured (not the fallback
    threshold), for as long as that rate is young enough."""
    window = ProgressWindow()

    def tick(now: float, consumed: int, produced: int) -> DrainEstimate:
        return window.update(
            [reading(consumed=consumed, produced=produced, target=10.0)],
            drain_times={"orders": 60.0},
            stall_after=0.0,
            now=now,
            current=2,
            ready=2,
            max_replicas=12,
        ).drain["orders"]

    consumed, now = 0, 0.0
    for _ in range(60):  # busy: 2 pods at 50/s each, a backlog that never runs out
        now, consumed = now + 1.0, consumed + 100
        estimate = tick(now, consumed, 10**6)
    assert estimate.per_pod_rate == 50.0
    assert estimate.rate_age == 0.0
    for _ in range(120):  # quiet: nothing waiting, nothing consumed
        now += 1.0
        estimate = tick(now, 10**6, 10**6)
    consumed = 10**6
    estimate = tick(now + 1.0, consumed, consumed + 6_000)  # a burst of 6,000
    assert estimate.rates.per_consumer is None
    assert estimate.per_pod_rate == 50.0
    # 6,000 within 60 s at 50/s per pod: 2 pods, not 600 (the threshold of 10's answer).
    assert estimate.recommendation.replicas == 2
    assert estimate.recommendation.measured
    # Too old: the fallback decides again.
    stale = tick(now + 2.0 + REMEMBER_RATE_SECONDS + 1.0, consumed, consumed + 6_000)
    assert stale.per_pod_rate is None
    assert not stale.recommendation.measured
