"""Kafka lag arithmetic: pure functions of an offsets snapshot and the trigger's settings.

Lag of one partition (KEDA's rules, see ../shared/anchors.md, with one fix):

==========================  ==================  ======================================
committed offset            offset-reset-policy lag
==========================  ==================  ======================================
present                     either              log-end - committed (never below 0)
absent                      latest              1 (0 with scale-to-zero-on-invalid-offset)
absent                      earliest            log-end - log-start (0 with scale-to-zero-
                                                on-invalid-offset). KEDA counts log-end,
                                                which includes messages retention deleted.
==========================  ==================  ======================================

exclude-persistent-lag: a partition whose committed offset equals the one in the
previous snapshot counts 0 for the metric; activation still sees its lag.
"""

from __future__ import annotations

import re
import struct
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from tidescale.sources._kafka_settings import KafkaSettings
from tidescale.sources.base import Measurement, Scope

__all__ = [
    "GroupMember",
    "KafkaSnapshot",
    "PartitionLag",
    "PartitionOffsets",
    "assemble_snapshot",
    "decode_assignment",
    "fetch_plan",
    "kafka_measurement",
    "local_partitions",
    "needs_log_start",
    "own_members",
    "partition_lag",
    "select_partitions",
]

TopicPartition = tuple[str, int]


@dataclass(frozen=True, kw_only=True, slots=True)
class PartitionOffsets:
    """What the broker said about one partition at snapshot time."""

    topic: str
    partition: int
    committed: int | None
    """The group's committed offset; None when the group never committed one."""
    log_end: int
    """The high watermark: offset of the next message to be written."""
    log_start: int | None = None
    """The earliest retained offset; only fetched when a rule needs it (earliest, nothing committed)."""

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


def partition_lag(
    offsets: PartitionOffsets, settings: KafkaSettings, previous_committed: int | None
) -> PartitionLag:
    """One partition's lag under the rules of the module docstring."""
    if offsets.committed is None:
        if settings.scale_to_zero_on_invalid_offset:
            lag = 0
        elif settings.offset_reset_policy == "latest":
            lag = 1
        else:
            lag = max(0, offsets.log_end - (offsets.log_start or 0))
        return PartitionLag(key=offsets.key, metric=lag, activation=lag)
    lag = max(0, offsets.log_end - offsets.committed)
    persistent = settings.exclude_persistent_lag and previous_committed == offsets.committed
    return PartitionLag(key=offsets.key, metric=0 if persistent else lag, activation=lag)


def kafka_measurement(
    snapshot: KafkaSnapshot,
    settings: KafkaSettings,
    *,
    previous: KafkaSnapshot | None,
    taken_at: float,
) -> Measurement:
    """The measurement of one snapshot. ``previous`` is the last snapshot of the same trigger and scope
    (exclude-persistent-lag compares committed offsets with it)."""
    earlier: dict[str, int | None] = {}
    if previous is not None:
        earlier = {p.key: p.committed for p in previous.partitions}
    lags = [partition_lag(p, settings, earlier.get(p.key)) for p in snapshot.partitions]
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
    """Whether an uncommitted partition's lag needs its log-start offset (the earliest rule)."""
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
) -> KafkaSnapshot:
    """One trigger's snapshot from offsets read for it alone or for a whole batch (the maps may hold
    other triggers' partitions too: only ``wanted`` is read, so both paths give the same snapshot)."""
    return KafkaSnapshot(
        partitions=tuple(
            PartitionOffsets(
                topic=t,
                partition=p,
                committed=committed.get((t, p)),
                log_end=log_end[(t, p)],
                log_start=log_start.get((t, p)),
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
