"""Kafka lag arithmetic: every row of the lag rules, the earliest fix, caps, activation, subsets."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tidescale.sources.base import Scope
from tidescale.sources.kafka._source import (
    GroupMember,
    KafkaSettings,
    KafkaSnapshot,
    PartitionOffsets,
    decode_assignment,
    kafka_measurement,
    local_partitions,
    partition_lag,
    select_partitions,
    track_commits,
)

BASE = KafkaSettings(name="kafka", bootstrap_servers=("k:9092",), consumer_group="g", topics=("orders",))


def _offsets(
    partition: int = 0,
    *,
    committed: int | None,
    log_end: int | None,
    log_start: int | None = None,
    topic: str = "orders",
) -> PartitionOffsets:
    return PartitionOffsets(
        topic=topic, partition=partition, committed=committed, log_end=log_end, log_start=log_start
    )


def _snapshot(*partitions: PartitionOffsets, total: int | None = None) -> KafkaSnapshot:
    return KafkaSnapshot(partitions=partitions, topic_partitions=len(partitions) if total is None else total)


def _measure(settings: KafkaSettings, *partitions: PartitionOffsets):
    return kafka_measurement(_snapshot(*partitions), settings, taken_at=1.0)


def _unchanged_for(seconds: float, snapshot: KafkaSnapshot, now: float = 100.0):
    """The commit history of ``snapshot`` as if every committed offset had stood still ``seconds``."""
    return track_commits(track_commits({}, snapshot, now - seconds), snapshot, now)


# -- one partition: the rows of the table ---------------------------------------------------------


def test_lag_is_log_end_minus_committed_offset() -> None:
    assert partition_lag(_offsets(committed=40, log_end=100), BASE).metric == 60


@pytest.mark.parametrize("policy", ["latest", "earliest"])
def test_committed_offset_wins_over_the_reset_policy(policy: str) -> None:
    settings = replace(BASE, offset_reset_policy=policy)  # type: ignore[arg-type]
    assert partition_lag(_offsets(committed=7, log_end=10, log_start=5), settings).metric == 3


def test_a_committed_offset_ahead_of_log_end_counts_zero_not_negative() -> None:
    assert partition_lag(_offsets(committed=12, log_end=10), BASE).metric == 0


def test_no_committed_offset_under_latest_counts_one() -> None:
    assert partition_lag(_offsets(committed=None, log_end=500), BASE).metric == 1


def test_no_committed_offset_under_latest_counts_zero_with_scale_to_zero_on_invalid_offset() -> None:
    settings = replace(BASE, scale_to_zero_on_invalid_offset=True)
    lag = partition_lag(_offsets(committed=None, log_end=500), settings)
    assert (lag.metric, lag.activation) == (0, 0)


def test_no_committed_offset_under_earliest_counts_retained_messages_only() -> None:
    # The fix: KEDA says 500 here, counting 300 messages retention already deleted.
    settings = replace(BASE, offset_reset_policy="earliest")
    assert partition_lag(_offsets(committed=None, log_end=500, log_start=300), settings).metric == 200


def test_no_committed_offset_under_earliest_on_an_untrimmed_log_counts_log_end() -> None:
    settings = replace(BASE, offset_reset_policy="earliest")
    assert partition_lag(_offsets(committed=None, log_end=500, log_start=0), settings).metric == 500


def test_no_committed_offset_under_earliest_counts_zero_with_scale_to_zero_on_invalid_offset() -> None:
    settings = replace(BASE, offset_reset_policy="earliest", scale_to_zero_on_invalid_offset=True)
    assert partition_lag(_offsets(committed=None, log_end=500, log_start=300), settings).metric == 0


def test_a_commit_below_log_start_counts_only_the_retained_messages() -> None:
    # Retention deleted offsets 40..299: the consumer resumes at 300. KEDA counts 460.
    assert partition_lag(_offsets(committed=40, log_end=500, log_start=300), BASE).metric == 200


def test_a_commit_at_or_above_log_start_counts_from_the_commit() -> None:
    assert partition_lag(_offsets(committed=300, log_end=500, log_start=300), BASE).metric == 200
    assert partition_lag(_offsets(committed=301, log_end=500, log_start=300), BASE).metric == 199


def test_a_partition_the_broker_left_out_of_list_offsets_reads_zero_as_keda_reads_it() -> None:
    lag = partition_lag(_offsets(committed=40, log_end=None), BASE)
    assert (lag.metric, lag.activation) == (0, 0)
    earliest = replace(BASE, offset_reset_policy="earliest")
    assert partition_lag(_offsets(committed=None, log_end=None), earliest).metric == 0


def test_an_uncommitted_partition_left_out_of_list_offsets_still_counts_one_under_latest() -> None:
    assert partition_lag(_offsets(committed=None, log_end=None), BASE).metric == 1


def test_persistent_lag_counts_zero_for_the_metric_but_not_for_activation() -> None:
    lag = partition_lag(
        _offsets(committed=40, log_end=100), replace(BASE, exclude_persistent_lag=True), persistent=True
    )
    assert (lag.metric, lag.activation) == (0, 60)


def test_a_commit_unmoved_for_the_whole_window_is_persistent() -> None:
    settings = replace(BASE, exclude_persistent_lag=True, persistent_lag_window=15.0)
    snapshot = _snapshot(_offsets(committed=40, log_end=100))
    m = kafka_measurement(snapshot, settings, commits=_unchanged_for(15.0, snapshot), taken_at=100.0)
    assert (m.value, m.active) == (0.0, True)


def test_a_commit_unmoved_for_less_than_the_window_still_counts() -> None:
    # A consumer committing every 5 s, polled every second: KEDA's previous-poll rule drops it.
    settings = replace(BASE, exclude_persistent_lag=True, persistent_lag_window=15.0)
    snapshot = _snapshot(_offsets(committed=40, log_end=100))
    m = kafka_measurement(snapshot, settings, commits=_unchanged_for(4.0, snapshot), taken_at=100.0)
    assert m.value == 60.0


def test_a_commit_that_moved_restarts_the_window() -> None:
    settings = replace(BASE, exclude_persistent_lag=True, persistent_lag_window=15.0)
    before = _snapshot(_offsets(committed=40, log_end=100))
    after = _snapshot(_offsets(committed=41, log_end=100))
    seen = track_commits(track_commits({}, before, 0.0), after, 99.0)
    assert seen == {"orders/0": (41, 99.0)}
    assert kafka_measurement(after, settings, commits=seen, taken_at=100.0).value == 59.0


def test_the_first_measurement_counts_all_lag_with_exclude_persistent_lag() -> None:
    settings = replace(BASE, exclude_persistent_lag=True)
    snapshot = _snapshot(_offsets(committed=40, log_end=100))
    assert (
        kafka_measurement(snapshot, settings, commits=track_commits({}, snapshot, 5.0), taken_at=5.0).value
        == 60
    )


def test_unchanged_offsets_count_without_exclude_persistent_lag() -> None:
    snapshot = _snapshot(_offsets(committed=40, log_end=100))
    assert (
        kafka_measurement(snapshot, BASE, commits=_unchanged_for(60.0, snapshot), taken_at=100.0).value == 60
    )


# -- the measurement --------------------------------------------------------------------------------


def test_value_is_the_total_lag_and_target_the_lag_threshold() -> None:
    m = _measure(
        replace(BASE, lag_threshold=25),
        _offsets(0, committed=0, log_end=30),
        _offsets(1, committed=5, log_end=25),
    )
    assert (m.value, m.target) == (50.0, 25.0)
    assert m.detail == {"orders/0": 30.0, "orders/1": 20.0}
    assert m.trigger == "kafka"


def test_trigger_is_active_only_above_the_activation_threshold() -> None:
    settings = replace(BASE, activation_lag_threshold=10)
    assert not _measure(settings, _offsets(committed=0, log_end=10)).active
    assert _measure(settings, _offsets(committed=0, log_end=11)).active


def test_no_lag_at_all_is_inactive_with_the_default_threshold() -> None:
    assert not _measure(BASE, _offsets(committed=10, log_end=10)).active
    assert _measure(BASE, _offsets(committed=9, log_end=10)).active


def test_persistent_lag_keeps_the_trigger_active_while_the_metric_drops_to_zero() -> None:
    settings = replace(BASE, exclude_persistent_lag=True)
    first = _snapshot(_offsets(committed=40, log_end=100))
    second = _snapshot(_offsets(committed=40, log_end=120))
    seen = track_commits(track_commits({}, first, 0.0), second, 20.0)
    m = kafka_measurement(second, settings, commits=seen, taken_at=20.0)
    assert (m.value, m.active) == (0.0, True)


def test_replicas_are_capped_at_the_topic_partitions() -> None:
    m = kafka_measurement(_snapshot(_offsets(committed=0, log_end=1000), total=6), BASE, taken_at=0)
    assert m.replica_cap == 6


def test_idle_consumers_lift_the_cap() -> None:
    settings = replace(BASE, allow_idle_consumers=True)
    assert _measure(settings, _offsets(committed=0, log_end=1000)).replica_cap is None


def test_the_cap_is_the_partitions_with_lag_with_limit_to_partitions_with_lag() -> None:
    settings = replace(BASE, limit_to_partitions_with_lag=True)
    m = _measure(
        settings,
        _offsets(0, committed=0, log_end=100),
        _offsets(1, committed=100, log_end=100),
        _offsets(2, committed=5, log_end=100),
    )
    assert m.replica_cap == 2


def test_the_cap_never_drops_below_one_with_limit_to_partitions_with_lag() -> None:
    settings = replace(BASE, limit_to_partitions_with_lag=True)
    assert _measure(settings, _offsets(committed=100, log_end=100)).replica_cap == 1


def test_taken_at_is_the_callers_clock() -> None:
    m = kafka_measurement(_snapshot(_offsets(committed=0, log_end=1)), BASE, taken_at=42.5)
    assert m.taken_at == 42.5


lag_rows = st.builds(
    lambda partition, start, retained, committed_at, missing: _offsets(
        partition,
        committed=None if committed_at is None else max(0, start + committed_at),
        log_start=start,
        log_end=None if missing else start + retained,
    ),
    st.integers(0, 999),
    st.integers(0, 10**9),
    st.integers(0, 10**6),
    # Committed offsets anywhere: none, below log-start (retention deleted past them), inside the
    # retained log, or past log-end (a commit the listing has not caught up with).
    st.none() | st.integers(-(10**7), 2 * 10**6),
    st.sampled_from([False, False, False, True]),  # now and then left out of ListOffsets
)

settings_variants = st.builds(
    lambda policy, zero, persist, threshold: replace(
        BASE,
        offset_reset_policy=policy,
        scale_to_zero_on_invalid_offset=zero,
        exclude_persistent_lag=persist,
        lag_threshold=threshold,
    ),
    st.sampled_from(["latest", "earliest"]),
    st.booleans(),
    st.booleans(),
    st.integers(1, 1000),
)


@given(
    rows=st.lists(lag_rows, max_size=40, unique_by=lambda p: p.partition),
    settings=settings_variants,
    unmoved_for=st.floats(0, 100),
)
def test_total_lag_is_the_sum_of_the_per_partition_lags_it_reports(
    rows: list[PartitionOffsets], settings: KafkaSettings, unmoved_for: float
) -> None:
    snapshot = _snapshot(*rows)
    m = kafka_measurement(snapshot, settings, commits=_unchanged_for(unmoved_for, snapshot), taken_at=100.0)
    assert m.value == sum(m.detail.values())
    assert len(m.detail) == len(rows)
    assert all(v >= 0 for v in m.detail.values())


@given(
    rows=st.lists(lag_rows, min_size=1, max_size=40, unique_by=lambda p: p.partition),
    settings=settings_variants,
    unmoved_for=st.floats(0, 100),
)
def test_excluding_persistent_lag_never_raises_the_metric_nor_changes_activation(
    rows: list[PartitionOffsets], settings: KafkaSettings, unmoved_for: float
) -> None:
    snapshot = _snapshot(*rows)
    commits = _unchanged_for(unmoved_for, snapshot)
    plain = kafka_measurement(
        snapshot, replace(settings, exclude_persistent_lag=False), commits=commits, taken_at=100.0
    )
    excluded = kafka_measurement(
        snapshot, replace(settings, exclude_persistent_lag=True), commits=commits, taken_at=100.0
    )
    assert excluded.value <= plain.value
    assert excluded.active == plain.active


@given(
    rows=st.lists(lag_rows, min_size=1, max_size=40, unique_by=lambda p: p.partition),
    settings=settings_variants,
)
def test_a_partition_never_counts_more_than_the_messages_a_consumer_could_still_read(
    rows: list[PartitionOffsets], settings: KafkaSettings
) -> None:
    # What is left to read: from where the consumer resumes (its commit, or log-start when retention
    # deleted past it, or log-start under earliest with no commit) to log-end. The one exception is
    # KEDA's rule that an uncommitted partition under latest counts 1, so that the workload wakes.
    for row in rows:
        lag = partition_lag(row, settings).metric
        start = row.log_start or 0
        if row.committed is None and settings.offset_reset_policy == "latest":
            assert lag == (0 if settings.scale_to_zero_on_invalid_offset else 1)
            continue
        resume = start if row.committed is None else max(row.committed, start)
        readable = 0 if row.log_end is None else max(0, row.log_end - resume)
        assert lag <= readable


@given(rows=st.lists(lag_rows, min_size=1, max_size=40, unique_by=lambda p: p.partition))
def test_a_committed_partition_counts_exactly_what_is_left_to_read(rows: list[PartitionOffsets]) -> None:
    for row in rows:
        if row.committed is None or row.log_end is None:
            continue
        resume = max(row.committed, row.log_start or 0)
        assert partition_lag(row, BASE).metric == max(0, row.log_end - resume)


# -- partition subsets and this pod's share --------------------------------------------------------


def test_partitions_filter_keeps_only_the_listed_numbers_of_every_topic() -> None:
    settings = replace(BASE, topics=("a", "b"), partitions=frozenset({0, 2, 5}))
    assert select_partitions({"a": 3, "b": 2, "c": 4}, settings) == (("a", 0), ("a", 2), ("b", 0))


def test_no_topic_setting_keeps_every_topic() -> None:
    settings = replace(BASE, topics=())
    assert select_partitions([("z", 1), ("a", 0)], settings) == (("a", 0), ("z", 1))


def _assignment(pairs: dict[str, list[int]], *, version: int = 0, user_data: bytes = b"") -> bytes:
    out = struct.pack(">hi", version, len(pairs))
    for topic, partitions in pairs.items():
        raw = topic.encode()
        out += (
            struct.pack(">h", len(raw))
            + raw
            + struct.pack(f">i{len(partitions)}i", len(partitions), *partitions)
        )
    return out + struct.pack(">i", len(user_data)) + user_data


def test_an_assignment_decodes_to_its_topic_partitions() -> None:
    blob = _assignment({"orders": [0, 3], "refunds": [1]}, version=3, user_data=b"xyz")
    assert decode_assignment(blob) == (("orders", 0), ("orders", 3), ("refunds", 1))


@pytest.mark.parametrize("blob", [b"", b"\x00\x00", b"\x00\x00\x00\x00\x00\x01\x00\x09abc"])
def test_an_empty_or_truncated_assignment_owns_nothing(blob: bytes) -> None:
    assert decode_assignment(blob) == ()


@hypothesis_settings(
    deadline=None
)  # the first example imports aiokafka, which takes longer than the default 200 ms
@given(
    st.dictionaries(
        st.text("abc.-_", min_size=1, max_size=20), st.lists(st.integers(0, 2**31 - 1), max_size=20)
    )
)
def test_assignments_encoded_by_aiokafka_decode_to_the_same_pairs(pairs: dict[str, list[int]]) -> None:
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

    blob = ConsumerProtocolMemberAssignment(0, sorted(pairs.items()), b"").encode()
    assert decode_assignment(blob) == tuple((t, p) for t, ps in sorted(pairs.items()) for p in ps)


def _member(host: str, client_id: str, pairs: dict[str, list[int]]) -> GroupMember:
    return GroupMember(
        member_id=f"{client_id}-1", client_id=client_id, client_host=host, assignment=_assignment(pairs)
    )


MEMBERS = [
    _member("/10.213.0.5", "worker-a", {"orders": [0, 1]}),
    _member("/10.213.0.6", "worker-b", {"orders": [2]}),
    _member("/10.213.0.5", "sidecar", {"audit": [4]}),
]


def test_this_pods_partitions_are_those_of_members_connecting_from_its_ip() -> None:
    assert local_partitions(MEMBERS, pod_ip="10.213.0.5", client_id_pattern=None) == (
        ("audit", 4),
        ("orders", 0),
        ("orders", 1),
    )


def test_a_client_id_pattern_replaces_the_ip_rule_and_matches_whole_ids() -> None:
    assert local_partitions(MEMBERS, pod_ip="10.213.0.5", client_id_pattern="worker-.") == (
        ("orders", 0),
        ("orders", 1),
        ("orders", 2),
    )
    assert local_partitions(MEMBERS, pod_ip=None, client_id_pattern="worker") == ()


def test_without_pod_ip_or_pattern_no_member_is_ours() -> None:
    assert local_partitions(MEMBERS, pod_ip=None, client_id_pattern=None) == ()


def test_a_local_snapshot_keeps_the_topic_wide_cap() -> None:
    snapshot = KafkaSnapshot(
        partitions=(_offsets(committed=0, log_end=50),), topic_partitions=12, scope=Scope.LOCAL
    )
    m = kafka_measurement(snapshot, BASE, taken_at=0)
    assert (m.value, m.replica_cap) == (50.0, 12)
