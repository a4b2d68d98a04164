"""Properties of the rate estimator: it recovers a steady rate, never goes negative, ignores idle
time, rebalances, resets, the warm-up and what fell out of the window, and says "unknown"
until it has enough busy time."""

from __future__ import annotations

import math

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tidescale._rates import ProgressSnapshot, RateSettings, measure_rates

EXAMPLES = settings(max_examples=200, deadline=None)
SETTINGS = RateSettings(window=60.0, warm_up=15.0, min_coverage=10.0)

gaps = st.lists(st.floats(0.2, 5.0), min_size=1, max_size=60)


def steady_series(
    *, rate: float, arrival: float, gaps_: list[float], consumers: int = 1, start: float = 0.0
) -> list[ProgressSnapshot]:
    """A busy group processing ``rate`` per consumer and receiving ``arrival``, sampled after each gap."""
    snapshots = []
    moment = start
    for gap in [0.0, *gaps_]:
        moment += gap
        elapsed = moment - start
        done = math.floor(rate * consumers * elapsed)
        produced = 1_000_000 + math.floor(arrival * elapsed)
        snapshots.append(
            ProgressSnapshot(
                taken_at=moment,
                consumed={"orders/0": done},
                produced={"orders/0": produced},
                lag={"orders/0": float(produced - done)},
                consumers=consumers,
            )
        )
    return snapshots


@EXAMPLES
@given(rate=st.floats(1.0, 5000.0), consumers=st.integers(1, 8), gaps_=gaps, arrival=st.floats(0.0, 5000.0))
def test_a_steady_busy_group_is_measured_at_its_true_rate_per_consumer(
    rate: float, consumers: int, gaps_: list[float], arrival: float
) -> None:
    series = steady_series(rate=rate, arrival=arrival, gaps_=gaps_, consumers=consumers)
    rates = measure_rates(series, now=series[-1].taken_at, settings=SETTINGS)
    if rates.per_consumer is None:
        assert rates.busy_seconds < SETTINGS.min_coverage
        return
    # Counters are whole messages: the measured span can be off by one message at each end.
    tolerance = 2.0 / (rates.busy_seconds * consumers)
    assert abs(rates.per_consumer - rate) <= tolerance + 1e-9
    assert rates.throughput is not None
    assert abs(rates.throughput - rate * consumers) <= 2.0 / rates.busy_seconds + 1e-9
    assert rates.arrival is not None
    # The arrival is the median of blocks of >= arrival_block seconds, each off by less than one
    # message over its length.
    assert abs(rates.arrival - arrival) <= 1.0 / SETTINGS.arrival_block + 1e-9


@EXAMPLES
@given(
    gaps_=gaps,
    counters=st.lists(st.integers(0, 10**12), min_size=61, max_size=61),
    lags=st.lists(st.floats(-10.0, 1e6), min_size=61, max_size=61),
    consumers=st.lists(st.integers(0, 5), min_size=61, max_size=61),
)
def test_no_sequence_of_counters_gives_a_negative_rate(
    gaps_: list[float], counters: list[int], lags: list[float], consumers: list[int]
) -> None:
    moments = [0.0]
    for gap in gaps_:
        moments.append(moments[-1] + gap)
    series = [
        ProgressSnapshot(
            taken_at=moment,
            consumed={"q": counters[index]},
            produced={"q": counters[-1 - index]},
            lag={"q": lags[index]},
            consumers=consumers[index],
        )
        for index, moment in enumerate(moments)
    ]
    rates = measure_rates(series, now=moments[-1], settings=SETTINGS)
    for value in (rates.throughput, rates.per_consumer, rates.arrival):
        assert value is None or (value >= 0 and math.isfinite(value))


@EXAMPLES
@given(rate=st.floats(1.0, 1000.0), gaps_=gaps, idle=st.lists(st.floats(0.5, 5.0), min_size=1, max_size=10))
def test_idle_time_without_lag_does_not_lower_the_processing_rate(
    rate: float, gaps_: list[float], idle: list[float]
) -> None:
    busy = steady_series(rate=rate, arrival=rate, gaps_=gaps_, start=100.0)
    last = busy[-1]
    waiting = []
    moment = last.taken_at
    for gap in idle:
        moment += gap
        waiting.append(
            ProgressSnapshot(
                taken_at=moment, consumed=last.consumed, produced=last.produced, lag={"orders/0": 0.0}
            )
        )
    wide = RateSettings(window=10_000.0, warm_up=0.0, min_coverage=1.0)
    assert (
        measure_rates([*busy, *waiting], now=moment, settings=wide).per_consumer
        == measure_rates(busy, now=moment, settings=wide).per_consumer
    )


@EXAMPLES
@given(rate=st.floats(1.0, 1000.0), gaps_=gaps, garbage=st.integers(0, 10**9))
def test_snapshots_older_than_the_window_do_not_count(rate: float, gaps_: list[float], garbage: int) -> None:
    series = steady_series(rate=rate, arrival=0.0, gaps_=gaps_, start=1000.0)
    now = series[-1].taken_at
    ancient = ProgressSnapshot(
        taken_at=now - SETTINGS.window - 1.0, consumed={"orders/0": garbage}, lag={"orders/0": 5.0}
    )
    first_kept = [snapshot for snapshot in series if snapshot.taken_at >= max(now - SETTINGS.window, 0)]
    # The warm-up is counted from the first snapshot, so the ancient one must be long past it.
    assume(first_kept[0].taken_at >= ancient.taken_at + SETTINGS.warm_up)
    assert measure_rates([ancient, *series], now=now, settings=SETTINGS) == measure_rates(
        [ProgressSnapshot(taken_at=ancient.taken_at, consumed={}), *series], now=now, settings=SETTINGS
    )


@EXAMPLES
@given(rate=st.floats(1.0, 1000.0), gaps_=gaps)
def test_a_new_pod_has_no_rate_before_its_warm_up_and_coverage(rate: float, gaps_: list[float]) -> None:
    series = steady_series(rate=rate, arrival=0.0, gaps_=gaps_)
    span = series[-1].taken_at - series[0].taken_at
    rates = measure_rates(series, now=series[-1].taken_at, settings=SETTINGS)
    if span < SETTINGS.warm_up + SETTINGS.min_coverage:
        assert rates.per_consumer is None
        assert rates.throughput is None
        assert rates.arrival is None
    elif span >= SETTINGS.warm_up + SETTINGS.min_coverage + 2 * 5.0:  # two of the longest gaps
        assert rates.per_consumer is not None


@EXAMPLES
@given(rate=st.floats(1.0, 1000.0), gaps_=gaps, before=st.integers(1, 8), after=st.integers(1, 8))
def test_an_interval_in_which_the_consumer_count_changed_does_not_enter_the_per_consumer_rate(
    rate: float, gaps_: list[float], before: int, after: int
) -> None:
    assume(before != after)
    first = steady_series(rate=rate, arrival=0.0, gaps_=gaps_, consumers=before)
    # A rebalance: a long pause in which everything was consumed by nobody, then a new count.
    offset = first[-1].consumed["orders/0"]
    second = [
        ProgressSnapshot(
            taken_at=snapshot.taken_at + first[-1].taken_at + 30.0,
            consumed={"orders/0": offset + snapshot.consumed["orders/0"]},
            lag={"orders/0": 1e9},
            consumers=after,
        )
        for snapshot in steady_series(rate=rate, arrival=0.0, gaps_=gaps_, consumers=after)
    ]
    wide = RateSettings(window=10_000.0, warm_up=0.0, min_coverage=0.1)
    rates = measure_rates([*first, *second], now=second[-1].taken_at, settings=wide)
    assert rates.per_consumer is not None
    # Each segment's counters are floored separately: up to a message off at each of its ends.
    steady_seconds = 2 * sum(gaps_)
    assert abs(rates.per_consumer - rate) <= 4.0 / steady_seconds + 1e-9


def test_a_counter_that_went_backwards_voids_its_interval() -> None:
    series = [
        ProgressSnapshot(taken_at=0.0, consumed={"q": 0}, lag={"q": 10.0}),
        ProgressSnapshot(taken_at=10.0, consumed={"q": 1000}, lag={"q": 10.0}),
        ProgressSnapshot(taken_at=20.0, consumed={"q": 5}, lag={"q": 10.0}),
        ProgressSnapshot(taken_at=30.0, consumed={"q": 1005}, lag={"q": 10.0}),
    ]
    rates = measure_rates(series, now=30.0, settings=RateSettings(window=60.0, warm_up=0.0, min_coverage=1.0))
    assert rates.per_consumer == 100.0
    assert rates.busy_seconds == 20.0


@EXAMPLES
@given(
    arrival=st.floats(0.0, 500.0),
    burst=st.integers(1, 1_000_000),
    at=st.integers(1, 75),
)
def test_a_burst_is_left_out_of_the_arrival_rate_so_the_drain_formula_counts_it_once(
    arrival: float, burst: int, at: int
) -> None:
    """A burst's messages are in the backlog; averaging them over the window as arrival too would
    double the drain recommendation for a minute after every burst."""
    series = steady_series(rate=1000.0, arrival=arrival, gaps_=[1.0] * 75)
    bursty = [
        snapshot
        if index < at
        else ProgressSnapshot(
            taken_at=snapshot.taken_at,
            consumed=snapshot.consumed,
            produced={"orders/0": snapshot.produced["orders/0"] + burst},
            lag={"orders/0": snapshot.lag["orders/0"] + burst},
            consumers=snapshot.consumers,
        )
        for index, snapshot in enumerate(series)
    ]
    rates = measure_rates(bursty, now=bursty[-1].taken_at, settings=SETTINGS)
    assert rates.arrival is not None
    assert abs(rates.arrival - arrival) <= 1.0 / SETTINGS.arrival_block + 1e-9
