"""The drain-time benchmark's figures (bench/_drain_figures.py): pod-seconds, drain time of a
burst read from a lag series, and the rule that picks the best fixed threshold after the fact."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _drain_figures import (
    Outcome,
    best_configuration,
    drain_time,
    pod_seconds,
    series_max,
)

# -- pod-seconds


def test_pod_seconds_holds_each_sample_until_the_next_one() -> None:
    series = [(0.0, 1.0), (10.0, 3.0), (20.0, 2.0)]
    assert pod_seconds(series, 0.0, 30.0) == pytest.approx(1 * 10 + 3 * 10 + 2 * 10)


def test_pod_seconds_counts_only_the_part_inside_the_interval() -> None:
    series = [(0.0, 1.0), (10.0, 3.0), (20.0, 2.0)]
    assert pod_seconds(series, 5.0, 15.0) == pytest.approx(1 * 5 + 3 * 5)


def test_pod_seconds_counts_nothing_before_the_first_sample() -> None:
    assert pod_seconds([(10.0, 4.0)], 0.0, 20.0) == pytest.approx(40.0)


def test_pod_seconds_of_an_empty_or_reversed_interval_is_zero() -> None:
    assert pod_seconds([(0.0, 4.0)], 10.0, 10.0) == 0.0
    assert pod_seconds([(0.0, 4.0)], 10.0, 5.0) == 0.0
    assert pod_seconds([], 0.0, 10.0) == 0.0


steps = st.lists(
    st.tuples(st.floats(0, 1000, allow_nan=False), st.integers(0, 50).map(float)), min_size=1, max_size=30
).map(lambda samples: sorted(samples, key=lambda sample: sample[0]))


@given(series=steps, cut=st.floats(0, 1000, allow_nan=False))
def test_pod_seconds_of_two_adjacent_intervals_add_up(series: list[tuple[float, float]], cut: float) -> None:
    whole = pod_seconds(series, 0.0, 1000.0)
    assert pod_seconds(series, 0.0, cut) + pod_seconds(series, cut, 1000.0) == pytest.approx(whole, abs=1e-6)


@given(series=steps)
def test_pod_seconds_never_exceed_the_peak_times_the_interval(series: list[tuple[float, float]]) -> None:
    peak = max(value for _, value in series)
    assert 0.0 <= pod_seconds(series, 0.0, 1000.0) <= peak * 1000.0 + 1e-6


# -- the most replicas


def test_series_max_counts_the_value_in_force_at_the_start() -> None:
    series = [(0.0, 5.0), (10.0, 2.0), (20.0, 3.0)]
    assert series_max(series, 5.0, 25.0) == 5.0
    assert series_max(series, 10.0, 25.0) == 3.0
    assert series_max(series, 10.0, 20.0) == 2.0
    assert series_max([], 0.0, 10.0) is None


# -- drain time

LAG = [(0.0, 3.0), (1.0, 2.0), (2.0, 900.0), (3.0, 600.0), (4.0, 300.0), (5.0, 12.0), (6.0, 4.0)]


def test_drain_time_runs_from_the_burst_to_the_first_settled_sample_after_the_rise() -> None:
    assert drain_time(LAG, burst_at=0.5, until=10.0, settled=20.0) == pytest.approx(4.5)


def test_low_lag_before_the_burst_reaches_the_broker_is_not_a_drain() -> None:
    # The sample at 1.0 (lag 2) comes before the burst shows: the drain is the one at 5.0.
    assert drain_time(LAG, burst_at=0.9, until=10.0, settled=20.0) == pytest.approx(4.1)


def test_a_burst_not_drained_by_the_next_one_has_no_drain_time() -> None:
    assert drain_time(LAG, burst_at=0.5, until=4.5, settled=20.0) is None


def test_a_burst_the_consumers_swallowed_between_two_samples_drained_at_once() -> None:
    assert drain_time([(0.0, 1.0), (1.0, 5.0), (2.0, 0.0)], burst_at=0.5, until=5.0, settled=20.0) == 0.0


def test_samples_before_the_burst_are_ignored() -> None:
    lag = [(0.0, 500.0), (1.0, 0.0), (2.0, 400.0), (3.0, 0.0)]
    assert drain_time(lag, burst_at=1.5, until=5.0, settled=20.0) == pytest.approx(1.5)


# -- the best configuration after the fact


def test_meeting_the_target_on_every_burst_beats_any_saving_of_pod_seconds() -> None:
    outcomes = {
        "lag-threshold 500": Outcome(misses=0, pod_seconds=4000.0),
        "lag-threshold 2000": Outcome(misses=1, pod_seconds=1500.0),
    }
    assert best_configuration(outcomes) == "lag-threshold 500"


def test_among_those_meeting_the_target_the_fewest_pod_seconds_win() -> None:
    outcomes = {
        "lag-threshold 500": Outcome(misses=0, pod_seconds=4000.0),
        "lag-threshold 1000": Outcome(misses=0, pod_seconds=3000.0),
        "lag-threshold 4000": Outcome(misses=2, pod_seconds=1000.0),
    }
    assert best_configuration(outcomes) == "lag-threshold 1000"


def test_when_every_configuration_misses_the_fewest_misses_win_then_pod_seconds() -> None:
    outcomes = {
        "a": Outcome(misses=2, pod_seconds=1000.0),
        "b": Outcome(misses=1, pod_seconds=3000.0),
        "c": Outcome(misses=1, pod_seconds=2000.0),
    }
    assert best_configuration(outcomes) == "c"
    assert best_configuration({}) is None
