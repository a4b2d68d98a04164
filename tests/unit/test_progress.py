"""Kafka offsets and RabbitMQ queue statistics as the rate estimator and the stall detector see them."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tidescale._progress import kafka_progress, rabbitmq_progress
from tidescale._rates import RateSettings, measure_rates
from tidescale.sources.kafka._lag import KafkaSnapshot, PartitionOffsets
from tidescale.sources.rabbitmq._depth import queue_stats_from_api

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


def test_rabbitmq_consumed_counts_acks_and_auto_acked_deliveries_and_publishes_are_produced() -> None:
    stats = queue_stats_from_api(
        {
            "name": "jobs",
            "messages_ready": 30,
            "messages_unacknowledged": 4,
            "consumers": 2,
            "message_stats": {"ack": 100, "deliver_no_ack": 20, "get_no_ack": 1, "publish": 155},
        }
    )
    progress = rabbitmq_progress([stats], taken_at=3.0)
    assert progress.consumed == {"jobs": 121}
    assert progress.produced == {"jobs": 155}
    assert progress.lag == {"jobs": 34.0}
    assert progress.consumers == 2


@settings(max_examples=100, deadline=None)
@given(
    ack=st.one_of(st.none(), st.booleans(), st.floats(), st.integers(-(10**6), 10**12), st.text(max_size=5)),
    publish=st.one_of(
        st.none(), st.booleans(), st.floats(), st.integers(-(10**6), 10**12), st.text(max_size=5)
    ),
)
def test_a_hostile_rabbitmq_counter_is_never_taken_for_a_count(ack: object, publish: object) -> None:
    stats = queue_stats_from_api(
        {
            "name": "jobs",
            "messages_ready": 1,
            "messages_unacknowledged": 0,
            "message_stats": {"ack": ack, "publish": publish},
        }
    )
    for counter, given_value in ((stats.consumed_total, ack), (stats.published_total, publish)):
        if isinstance(given_value, int) and not isinstance(given_value, bool) and given_value >= 0:
            assert counter == given_value
        else:
            assert counter is None


def test_a_queue_without_consumed_counters_is_not_watched() -> None:
    stats = queue_stats_from_api({"name": "jobs", "messages_ready": 5, "messages_unacknowledged": 0})
    progress = rabbitmq_progress([stats], taken_at=0.0)
    assert progress.consumed == {}
    assert progress.lag == {"jobs": 5.0}
