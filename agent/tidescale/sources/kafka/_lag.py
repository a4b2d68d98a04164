"""Kafka lag arithmetic: pure functions of an offsets snapshot and the trigger's settings.

Lag of one partition (KEDA's rules, see ../shared/anchors.md, with fixes marked *):

==========================  ==================  ======================================
committed offset            offset-reset-policy lag
==========================  ==================  ======================================
present, >= log-start       either              log-end - committed (never below 0)
present, < log-start *      either              log-end - log-start: retention deleted the
                                                rest, the consumer resumes at log-start.
                                                KEDA counts the deleted messages too.
absent                      latest              1 (0 with scale-to-zero-on-invalid-offset)
absent                      earliest            log-end - log-start (0 with scale-to-zero-
                                                on-invalid-offset). * KEDA counts log-end,
                                                which includes messages retention deleted.
==========================  ==================  ======================================

isolation-level read-committed: log-end is the last stable offset (LSO: nothing at or
past it is visible to a read_committed consumer yet), and where the tail between the
consumer's resume point and the LSO was read (``readable``), the lag is the number of
data records there that a read_committed consumer would get: transaction markers
(control batches) and records of aborted transactions left out. The LSO alone is not
enough: an exactly-once consumer commits the offset after its last record, which is the
commit marker's own offset, so LSO - committed stays 1 per partition forever.

A partition the broker left out of its ListOffsets answer (Azure Event Hubs does,
KEDA #7414) has no log-end: it reads as KEDA reads it, whose missing map entry is
0, so lag 0 (1 for an uncommitted partition under latest, which KEDA decides before
looking at log-end); the source logs a warning naming it.

exclude-persistent-lag: a partition whose committed offset has not moved for
``persistent-lag-window`` (default 15 s) counts 0 for the metric; activation still
sees its lag. KEDA compares with its previous read of the offsets, which with its
defaults is at most 15 s earlier (the HPA asks for the metric every 15 s, between
the operator's 30 s activation polls): a window of time keeps that meaning when we
poll every second, so a consumer committing every 5 s is never "persistent".
"""

from __future__ import annotations

import re
import struct
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from tidescale.sources.base import Measurement, Scope
from tidescale.sources.kafka._settings import KafkaSettings

__all__ = [
    "TAIL_LIMIT",
    "CommitSeen",
    "GroupMember",
    "KafkaSnapshot",
    "PartitionLag",
    "PartitionOffsets",
    "assemble_snapshot",
    "count_readable",
    "decode_assignment",
    "fetch_plan",
    "kafka_measurement",
    "local_partitions",
    "needs_log_start",
    "own_members",
    "partition_lag",
    "select_partitions",
    "track_commits",
]

TopicPartition = tuple[str, int]


@dataclass(frozen=True, kw_only=True, slots=True)
class PartitionOffsets:
    """What the broker said about one partition at snapshot time."""

    topic: str
    partition: int
    committed: int | None
    """The group's committed offset; None when the group never committed one."""
    log_end: int | None
    """The high watermark: offset of the next message to be written; None when the broker's
    ListOffsets answer left the partition out."""
    log_start: int | None = None
    """The earliest retained offset; None when the broker did not give it."""
    readable: int | None = None
    """read-committed only: data records a read_committed consumer can still read from its resume
    point to log-end (the LSO), counted in the log's tail; None when the tail was not read."""

    @property
    def key(self) -> str:
        return f"{self.topic}/{self.partition}"


@dataclass(frozen=True, kw_only=True, slots=True)
class KafkaSnapshot:
    """Offsets of the measured partitions, and how many partitions the trigger's topics have in all."""

    partitions: tuple[PartitionOffsets, ...]
    """The measured partitions: all of them (GROUP) or this pod's members' (LOCAL)."""
    topic_partitions: int
    """Every partition of the trigger's topics after the partitions filter, whatever the scope:
    the replica cap is a property of the topics, not of what one pod consumes."""
    scope: Scope = Scope.GROUP


@dataclass(frozen=True, kw_only=True, slots=True)
class PartitionLag:
    key: str
    metric: int
    """Counts towards the scaling metric (0 for persistent lag when excluded)."""
    activation: int
    """Counts towards activation (persistent lag included)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class GroupMember:
    """One member of a consumer group, as DescribeGroups reports it."""

    member_id: str
    client_id: str
    client_host: str
    """As the broker reports it, often with a leading "/" (``/10.213.0.5``)."""
    assignment: bytes
    """The consumer-protocol assignment blob; empty while the group rebalances."""


CommitSeen = tuple[int | None, float]
"""A partition's committed offset and since when (caller's clock) it has had that value."""


def track_commits(
    earlier: Mapping[str, CommitSeen], snapshot: KafkaSnapshot, now: float
) -> dict[str, CommitSeen]:
    """Since when each partition of ``snapshot`` has had its committed offset, given what was
    known before (``earlier``, this function's previous result for the same trigger and scope)."""
    seen: dict[str, CommitSeen] = {}
    for p in snapshot.partitions:
        before = earlier.get(p.key)
        seen[p.key] = before if before is not None and before[0] == p.committed else (p.committed, now)
    return seen


def partition_lag(
    offsets: PartitionOffsets, settings: KafkaSettings, *, persistent: bool = False
) -> PartitionLag:
    """One partition's lag under the rules of the module docstring. ``persistent``: its committed
    offset has not moved for the persistent-lag window (only read with exclude-persistent-lag)."""
    start = offsets.log_start or 0
    if offsets.committed is None:
        if settings.scale_to_zero_on_invalid_offset:
            lag = 0
        elif settings.offset_reset_policy == "latest":
            lag = 1
        else:
            lag = max(0, (offsets.log_end or 0) - start)
        return PartitionLag(key=offsets.key, metric=lag, activation=lag)
    if offsets.log_end is None:
        return PartitionLag(key=offsets.key, metric=0, activation=0)
    lag = max(0, offsets.log_end - max(offsets.committed, start))
    if offsets.readable is not None:
        lag = min(lag, max(0, offsets.readable))
    excluded = settings.exclude_persistent_lag and persistent
    return PartitionLag(key=offsets.key, metric=0 if excluded else lag, activation=lag)


def kafka_measurement(
    snapshot: KafkaSnapshot,
    settings: KafkaSettings,
    *,
    commits: Mapping[str, CommitSeen] | None = None,
    taken_at: float,
) -> Measurement:
    """The measurement of one snapshot. ``commits`` is :func:`track_commits` of this snapshot
    (exclude-persistent-lag reads since when each committed offset has not moved)."""
    seen = commits or {}

    def persistent(p: PartitionOffsets) -> bool:
        since = seen.get(p.key)
        return (
            p.committed is not None
            and since is not None
            and since[0] == p.committed
            and taken_at - since[1] >= settings.persistent_lag_window
        )

    lags = [partition_lag(p, settings, persistent=persistent(p)) for p in snapshot.partitions]
    value = sum(lag.metric for lag in lags)
    activation_total = sum(lag.activation for lag in lags)
    return Measurement(
        trigger=settings.name,
        value=float(value),
        target=float(settings.lag_threshold),
        active=activation_total > settings.activation_lag_threshold,
        replica_cap=_replica_cap(snapshot, settings, lags),
        detail={lag.key: float(lag.metric) for lag in lags},
        taken_at=taken_at,
    )


def _replica_cap(snapshot: KafkaSnapshot, settings: KafkaSettings, lags: list[PartitionLag]) -> int | None:
    if settings.limit_to_partitions_with_lag:
        # At least 1: an active trigger with no partition lagging by the metric (persistent lag
        # excluded) still keeps one consumer, which activation decides, not the cap.
        return max(1, sum(1 for lag in lags if lag.metric > 0))
    if settings.allow_idle_consumers:
        return None
    return max(1, snapshot.topic_partitions)


def decode_assignment(blob: bytes) -> tuple[tuple[str, int], ...]:
    """(topic, partition) pairs of a consumer-protocol MemberAssignment (any version: v1+ only append
    fields after the ones read here). Empty or truncated blobs give nothing: a member mid-rebalance
    owns no partition yet."""
    if len(blob) < 6:
        return ()
    try:
        (topic_count,) = struct.unpack_from(">i", blob, 2)
        position = 6
        pairs: list[tuple[str, int]] = []
        for _ in range(max(0, topic_count)):
            (length,) = struct.unpack_from(">h", blob, position)
            position += 2
            topic = blob[position : position + length].decode("utf-8")
            position += length
            (count,) = struct.unpack_from(">i", blob, position)
            position += 4
            partitions = struct.unpack_from(f">{max(0, count)}i", blob, position)
            position += 4 * max(0, count)
            pairs.extend((topic, p) for p in partitions)
    except (struct.error, UnicodeDecodeError):
        return ()
    return tuple(pairs)


def own_members(
    members: Iterable[GroupMember], *, pod_ip: str | None, client_id_pattern: str | None
) -> list[GroupMember]:
    """The members that are this pod's: by client id when a pattern is set, else by client host."""
    if client_id_pattern is not None:
        pattern = re.compile(client_id_pattern)
        return [m for m in members if pattern.fullmatch(m.client_id)]
    if pod_ip is None:
        return []
    return [m for m in members if m.client_host.lstrip("/") == pod_ip]


def local_partitions(
    members: Iterable[GroupMember], *, pod_ip: str | None, client_id_pattern: str | None
) -> tuple[tuple[str, int], ...]:
    """Partitions assigned to this pod's members, sorted."""
    pairs = {
        pair
        for m in own_members(members, pod_ip=pod_ip, client_id_pattern=client_id_pattern)
        for pair in decode_assignment(m.assignment)
    }
    return tuple(sorted(pairs))


def select_partitions(
    available: Mapping[str, int] | Iterable[tuple[str, int]], settings: KafkaSettings
) -> tuple[tuple[str, int], ...]:
    """Apply the trigger's topic list and partitions filter to (topic, partition) pairs."""
    pairs = (
        [(t, p) for t, n in available.items() for p in range(n)]
        if isinstance(available, Mapping)
        else list(available)
    )
    return tuple(
        sorted(
            (t, p)
            for t, p in pairs
            if (not settings.topics or t in settings.topics)
            and (settings.partitions is None or p in settings.partitions)
        )
    )


def needs_log_start(settings: KafkaSettings) -> bool:
    """Whether an uncommitted partition's lag needs its log-start offset (the earliest rule).
    Committed partitions always need it (a commit below log-start counts from log-start), so the
    sources read log-start for every partition; this only says whether uncommitted ones use it."""
    return settings.offset_reset_policy == "earliest" and not settings.scale_to_zero_on_invalid_offset


def assemble_snapshot(
    settings: KafkaSettings,
    *,
    layout: Mapping[str, int],
    wanted: Sequence[TopicPartition],
    committed: Mapping[TopicPartition, int | None],
    log_end: Mapping[TopicPartition, int],
    log_start: Mapping[TopicPartition, int],
    scope: Scope,
    readable: Mapping[TopicPartition, int] | None = None,
) -> KafkaSnapshot:
    """One trigger's snapshot from offsets read for it alone or for a whole batch (the maps may hold
    other triggers' partitions too: only ``wanted`` is read, so both paths give the same snapshot)."""
    return KafkaSnapshot(
        partitions=tuple(
            PartitionOffsets(
                topic=t,
                partition=p,
                committed=committed.get((t, p)),
                log_end=log_end.get((t, p)),
                log_start=log_start.get((t, p)),
                readable=(readable or {}).get((t, p)),
            )
            for t, p in wanted
        ),
        topic_partitions=len(select_partitions(layout, settings)),
        scope=scope,
    )


def fetch_plan(
    wanted: Mapping[KafkaSettings, Sequence[TopicPartition] | None],
) -> dict[str, tuple[tuple[str, tuple[int, ...]], ...] | None]:
    """What one batched OffsetFetch asks each consumer group for: the union of the partitions its
    triggers want, or None (every committed offset) when one of them names no topic and its topics are
    only known from the answer. ``wanted`` maps a trigger to its partitions, or None for no topic."""
    unions: dict[str, set[TopicPartition] | None] = {}
    for settings, partitions in wanted.items():
        group = settings.consumer_group
        if partitions is None:
            unions[group] = None
        elif group not in unions:
            unions[group] = set(partitions)
        elif (union := unions[group]) is not None:
            union.update(partitions)
    plan: dict[str, tuple[tuple[str, tuple[int, ...]], ...] | None] = {}
    for group, union in unions.items():
        if union is None:
            plan[group] = None
            continue
        by_topic: dict[str, list[int]] = defaultdict(list)
        for topic, partition in sorted(union):
            by_topic[topic].append(partition)
        plan[group] = tuple((topic, tuple(parts)) for topic, parts in sorted(by_topic.items()))
    return plan


TAIL_LIMIT = 1000
"""Most offsets between a read-committed consumer's resume point and the LSO for which the tail is
read; past it the lag is LSO minus the resume point (markers in it are a rounding error then)."""


def count_readable(
    batches: Iterable[tuple[int, int, bool, bool, int, Sequence[int]]],
    aborted: Iterable[tuple[int, int]],
    *,
    start: int,
    stable: int,
) -> tuple[int, int]:
    """Data records a read_committed consumer gets in offsets [start, stable) of one partition,
    and the offset the batches reach (``stable`` when they covered the whole range).

    ``batches``: (base offset, next offset, is transactional, is control, producer id, record
    offsets) in log order; ``aborted``: the Fetch answer's (producer id, first offset) of aborted
    transactions. As the Java consumer does: a producer's batches from an aborted transaction's
    first offset up to its abort marker are skipped, and control batches are never records."""
    pending = sorted(aborted, key=lambda a: a[1])
    aborting: set[int] = set()
    count, reached = 0, start
    for base, next_offset, transactional, control, producer, offsets in batches:
        if base >= stable:
            break
        while pending and pending[0][1] < next_offset:
            aborting.add(pending.pop(0)[0])
        if control:
            aborting.discard(producer)  # the marker ends the producer's transaction either way
        elif not (transactional and producer in aborting):
            count += sum(1 for o in offsets if start <= o < stable)
        reached = max(reached, next_offset)
    return count, min(reached, stable)
