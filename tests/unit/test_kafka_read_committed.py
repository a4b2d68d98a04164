"""read-committed lag: what a read_committed consumer still gets from a partition's tail (no broker)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from tidescale.sources.kafka._source import KafkaSettings, PartitionOffsets, count_readable, partition_lag

BASE = KafkaSettings(name="kafka", bootstrap_servers=("k:9092",), consumer_group="g", topics=("orders",))

# The log of the rig test: 0-2 committed data, 3 commit marker; 4-5 aborted, 6 abort marker;
# 7-8 committed data, 9 commit marker. Producer 7 is transactional throughout.
LOG = [
    (0, 3, True, False, 7, [0, 1, 2]),
    (3, 4, True, True, 7, [3]),
    (4, 6, True, False, 7, [4, 5]),
    (6, 7, True, True, 7, [6]),
    (7, 9, True, False, 7, [7, 8]),
    (9, 10, True, True, 7, [9]),
]
ABORTED = [(7, 4)]


def test_markers_and_aborted_records_are_not_left_to_read() -> None:
    assert count_readable(LOG, ABORTED, start=3, stable=10) == (2, 10)
    assert count_readable(LOG, ABORTED, start=9, stable=10) == (0, 10)
    assert count_readable(LOG, ABORTED, start=0, stable=10) == (5, 10)


def test_without_the_abort_list_the_aborted_records_would_count() -> None:
    assert count_readable(LOG, [], start=3, stable=10) == (4, 10)


def test_records_at_or_past_the_last_stable_offset_are_not_counted() -> None:
    assert count_readable(LOG, ABORTED, start=0, stable=8) == (4, 8)


def test_batches_that_stop_short_of_the_stable_offset_say_where_they_stopped() -> None:
    assert count_readable(LOG[:3], ABORTED, start=0, stable=10) == (3, 6)


def test_a_non_transactional_producer_beside_an_aborted_one_still_counts() -> None:
    log = [(0, 2, True, False, 7, [0, 1]), (2, 4, False, False, 9, [2, 3]), (4, 5, True, True, 7, [4])]
    assert count_readable(log, [(7, 0)], start=0, stable=5) == (2, 5)


def test_a_tail_that_was_read_bounds_the_lag_of_a_committed_partition() -> None:
    settings = replace(BASE, isolation_level="read-committed")
    caught_up = PartitionOffsets(
        topic="orders", partition=0, committed=9, log_end=10, log_start=0, readable=0
    )
    assert partition_lag(caught_up, settings).metric == 0
    unread = replace(caught_up, readable=None)
    assert partition_lag(unread, settings).metric == 1


@given(
    batches=st.lists(
        st.tuples(st.integers(1, 5), st.booleans(), st.booleans(), st.sampled_from([1, 2, 3])), max_size=20
    ),
    aborted_pids=st.sets(st.sampled_from([1, 2, 3])),
    start=st.integers(0, 60),
    stable=st.integers(0, 120),
)
def test_readable_records_never_exceed_the_offsets_between_start_and_the_stable_offset(
    batches: list[tuple[int, bool, bool, int]], aborted_pids: set[int], start: int, stable: int
) -> None:
    log, offset = [], 0
    for size, transactional, control, pid in batches:
        size = 1 if control else size
        log.append(
            (
                offset,
                offset + size,
                transactional or control,
                control,
                pid,
                list(range(offset, offset + size)),
            )
        )
        offset += size
    count, reached = count_readable(log, [(p, 0) for p in aborted_pids], start=start, stable=stable)
    assert 0 <= count <= max(0, stable - start)
    assert reached <= max(start, stable)
