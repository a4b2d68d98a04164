"""Kafka offsets snapshots as the rate estimator and the stall detector see them."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tidescale._progress import kafka_progress
from tidescale._rates import RateSettings, measure_rates
from tidescale.sources.kafka._lag import KafkaSnapshot, PartitionOffsets

offsets = st.builds(
    PartitionOffsets,
    topic=st.sampled_from(["orders", "refunds"]),
    partition=st.integers(0, 5),
    committed=st.one_of(st.none(), st.integers(0, 10**6)),
    log_end=st.one_of(st.none(), st.integers(0, 10**6)),
)


@settings(max_examples=100, deadline=None)
@given(partitions=st.lists(offsets, max_size=12, unique_by=lambda offsets_: offsets_.key))
def test_only_committed_partitions_are_watched_and_lag_is_never_negative(
    partitions: list[PartitionOffsets],
) -> None:
    progress = kafka_progress(
        KafkaSnapshot(partitions=tuple(partitions), topic_partitions=12), consumers=2, taken_at=5.0
    )
    committed = {p.key: p.committed for p in partitions if p.committed is not None}
    assert progress.consumed == committed
    assert set(progress.produced) == {
        p.key for p in partitions if p.committed is not None and p.log_end is not None
    }
    assert set(progress.lag) == set(progress.produced)
    assert all(value >= 0 for value in progress.lag.values())


def test_a_group_committing_steadily_behind_its_log_end_is_measured_at_its_rate() -> None:
    series = []
    for second in range(0, 40, 2):
        partitions = tuple(
            PartitionOffsets(
                topic="orders", partition=number, committed=100 * second, log_end=10_000 + 30 * second
            )
            for number in range(3)
        )
        snapshot = KafkaSnapshot(partitions=partitions, topic_partitions=3)
        series.append(kafka_progress(snapshot, consumers=3, taken_at=float(second)))
    rates = measure_rates(
        series, now=38.0, settings=RateSettings(window=60.0, warm_up=0.0, min_coverage=10.0)
    )
    assert rates.per_consumer == 100.0
    assert rates.throughput == 300.0
    assert rates.arrival == 90.0
