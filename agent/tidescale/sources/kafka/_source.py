"""Kafka consumer-group lag: settings, the pure arithmetic, and the broker I/O that snapshots offsets.

One :class:`KafkaSource` is one connection to one cluster (see the pool in
``registry``); it measures any trigger naming that cluster. aiokafka is imported
the first time a connection opens, never at module import.

Requests per measurement (the coordinator and topic metadata are cached, so
steady state is the lower figure):

- GROUP scope: OffsetFetch (1) + ListOffsets latest and earliest (2 per partition leader, sent
  together: log-start bounds the lag of a commit that retention has overtaken).
- LOCAL scope: DescribeGroups (1) + the same, restricted to this pod's partitions.
- Cache misses add FindCoordinator (1) and Metadata (1); the layout is read again at most every
  ``_METADATA_MAX_AGE`` seconds, or at once when a broker says it moved.
- A batch (:meth:`KafkaSource.measure_many`, the waker's poll), GROUP scope, any number of
  triggers: OffsetFetch v8 (1 per group coordinator, every group it coordinates in one request)
  + ListOffsets latest and earliest (2 per partition leader, for the union of every trigger's
  partitions), + Metadata when the cache misses (triggers without topic naming topics not yet
  cached).

Partitions added to a topic are seen by the first GROUP measurement (or batch) after they are,
with no Metadata request per measurement: the log-end ListOffsets also asks each topic for the
partition just past the cached count, and a broker that knows that partition (offsets, or
NOT_LEADER_OR_FOLLOWER) makes the source read the layout again and measure again at once
(see ``_list_offsets``). A GROUP measurement without ``topic`` also does so when the group has
committed on a partition the cache lacks. A LOCAL measurement reads the layout again when this
pod's assignment names a partition it lacks.

A trigger without ``topic`` finds its topics in the group's committed offsets. When those
expire (``offsets.retention.minutes`` after the group emptied, 7 days by default) the source
measures the topics it last saw for that group, every partition uncommitted, so the offset
reset policy decides (latest: lag 1 per partition, so the workload wakes). A process that
never saw the group's topics cannot know them: that is a SourceError asking for ``topic``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import ssl
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from tidescale._progress import kafka_progress
from tidescale.credentials import Credentials
from tidescale.errors import BrokerAuthFailed, BrokerUnreachable, SourceError, SourceNotFound, SourceTimeout
from tidescale.sources.base import Measurement, MeasurementFailure, Scope, TriggerSettings, within_timeout
from tidescale.sources.kafka._frames import cap_answers, refused_answer
from tidescale.sources.kafka._lag import (
    TAIL_LIMIT,
    CommitSeen,
    GroupMember,
    KafkaSnapshot,
    PartitionLag,
    PartitionOffsets,
    assemble_snapshot,
    count_readable,
    decode_assignment,
    fetch_plan,
    kafka_measurement,
    local_partitions,
    needs_log_start,
    own_members,
    partition_lag,
    select_partitions,
    track_commits,
)
from tidescale.sources.kafka._settings import KAFKA_FIELDS, KafkaSettings, parse_kafka_settings

__all__ = [
    "KAFKA_FIELDS",
    "GroupMember",
    "KafkaSettings",
    "KafkaSnapshot",
    "KafkaSource",
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
    "parse_kafka_settings",
    "partition_lag",
    "select_partitions",
    "track_commits",
]

_log = logging.getLogger(__name__)

_METADATA_MAX_AGE = 30.0
"""Seconds a topic's partition layout is trusted; a leader change is also noticed from errors."""
_LATEST, _EARLIEST = -1, -2
_READ_UNCOMMITTED, _READ_COMMITTED = 0, 1
_TAIL_BYTES = 1 << 20
"""Most bytes of one partition's tail read for read-committed (1 MiB; 4 MiB per Fetch)."""
_COORDINATOR_NOT_AVAILABLE, _NOT_COORDINATOR, _LOAD_IN_PROGRESS = 15, 16, 14
_GROUP_AUTH_FAILED, _TOPIC_AUTH_FAILED, _UNKNOWN_TOPIC, _NOT_LEADER = 30, 29, 3, 6


class _Retry(Exception):
    """The coordinator moved or is loading: look it up again within the measurement's time."""


class _LayoutChanged(_Retry):
    """A topic has more partitions than the cached layout says: read the layout again and measure
    again at once (the coordinator has not moved)."""


class KafkaSource:
    """A connection to one Kafka cluster; measures consumer-group lag of any trigger naming it."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        pod_ip: str | None = None,
        credentials: Credentials | None = None,
        address_check: Callable[[str, int], Awaitable[str | None]] | None = None,
    ) -> None:
        self._connection = settings
        self._pod_ip = pod_ip
        self._credentials = credentials
        """Given (by the waker): the SASL username and password and the TLS material (keys ca.crt,
        tls.crt, tls.key, tls.key-password); no *-env or *-file is read then."""
        self._address_check = address_check
        """Given (by the waker): vets every broker the cluster advertises before a connection to it."""
        self._client: Any = None
        self._open_lock = asyncio.Lock()
        self._coordinators: dict[str, int] = {}
        self._metadata: Any = None
        self._metadata_topics: frozenset[str] = frozenset()
        self._metadata_at = 0.0
        self._previous: dict[tuple[KafkaSettings, Scope], dict[str, CommitSeen]] = {}
        """Per trigger and scope: each partition's commit and since when (exclude-persistent-lag)."""
        self._group_topics: dict[str, tuple[str, ...]] = {}
        """Topics last seen in each group's committed offsets (for triggers without topic)."""
        self._closed = False
        self.requests = 0
        """Broker requests sent so far (the benchmark reads it)."""

    @property
    def _servers(self) -> str:
        return ",".join(self._connection.bootstrap_servers)

    async def measure(self, settings: TriggerSettings, scope: Scope) -> Measurement:
        if not isinstance(settings, KafkaSettings):
            raise TypeError(f"KafkaSource cannot measure {type(settings).__name__}")
        if self._closed:
            raise SourceError("the Kafka source is closed", trigger=settings.name)
        snapshot = await within_timeout(
            self.snapshot(settings, scope),
            trigger=settings.name,
            seconds=settings.timeout,
            waiting_for=f"Kafka at {self._servers} while reading group {settings.consumer_group!r}",
            advice="check the brokers' load and network, or raise timeout",
        )
        measurement = self._measurement(snapshot, settings, scope, time.monotonic())
        if scope is not Scope.GROUP:
            return measurement
        # The leader's rate estimator and stall detector read the same offsets; the group's member
        # count is not read at this scope (the leader counts the Ready pods instead).
        progress = kafka_progress(snapshot, consumers=0, taken_at=measurement.taken_at)
        return replace(measurement, progress=progress)

    def _measurement(
        self, snapshot: KafkaSnapshot, settings: KafkaSettings, scope: Scope, taken_at: float
    ) -> Measurement:
        key = (settings, scope)
        commits = track_commits(self._previous.get(key, {}), snapshot, taken_at)
        self._previous[key] = commits
        missing = [p.key for p in snapshot.partitions if p.log_end is None]
        if missing:
            _log.warning(
                "trigger %s: Kafka at %s left partitions %s out of its ListOffsets answer; they read "
                "lag 0, as KEDA reads them",
                settings.name,
                self._servers,
                ", ".join(missing),
            )
        return kafka_measurement(snapshot, settings, commits=commits, taken_at=taken_at)

    async def measure_many(
        self, settings: Iterable[TriggerSettings]
    ) -> dict[KafkaSettings, Measurement | MeasurementFailure]:
        """Group-wide measurements of many triggers of this cluster in one batch (the waker's poll).

        Equal settings are measured once. Per round: one OffsetFetch per group coordinator for all
        the groups it coordinates (v8, several groups per request; one per group on brokers older
        than 3.0), one ListOffsets per partition leader for the union of every trigger's
        partitions (and one more for log-start offsets where the earliest rule needs them).
        Coordinator and metadata lookups are cached as for :meth:`measure`. A failure that
        concerns one group or topic fails only the triggers naming it; the batch's time limit is
        the longest ``timeout`` among the triggers. Never raises a SourceError."""
        batch: list[KafkaSettings] = []
        for s in dict.fromkeys(settings):
            if not isinstance(s, KafkaSettings):
                raise TypeError(f"KafkaSource cannot measure {type(s).__name__}")
            batch.append(s)
        if not batch:
            return {}
        outcomes: Mapping[KafkaSettings, KafkaSnapshot | SourceError]
        try:
            if self._closed:
                raise SourceError("the Kafka source is closed")
            limit = max(s.timeout for s in batch)
            try:
                async with asyncio.timeout(limit):
                    outcomes = await self.snapshot_many(batch)
            except TimeoutError as exc:
                raise SourceTimeout(
                    f"Kafka at {self._servers} did not answer within {limit:g}s while reading "
                    f"{len(batch)} triggers' groups: check the brokers' load and network, or raise timeout"
                ) from exc
        except SourceError as exc:
            outcomes = dict.fromkeys(batch, exc)
        results: dict[KafkaSettings, Measurement | MeasurementFailure] = {}
        taken_at = time.monotonic()
        for s in batch:
            outcome = outcomes[s]
            if isinstance(outcome, SourceError):
                results[s] = MeasurementFailure(trigger=s.name, error=str(outcome), taken_at=taken_at)
                continue
            results[s] = self._measurement(outcome, s, Scope.GROUP, taken_at)
        return results

    async def owners(self, settings: object) -> dict[str, str] | None:
        """Partition (``topic/partition``) -> the address of the group member it is assigned to,
        from one DescribeGroups: lets the leader attribute its group reading to pods without asking
        each pod (see tidescale._peer_share). None when the members are told apart by client id
        (member-client-id-pattern): their client host need not be their pod's address."""
        if not isinstance(settings, KafkaSettings):
            raise TypeError(f"KafkaSource cannot describe {type(settings).__name__}")
        if settings.member_client_id_pattern is not None:
            return None
        if self._closed:
            raise SourceError("the Kafka source is closed", trigger=settings.name)

        async def describe() -> list[GroupMember]:
            from aiokafka.errors import KafkaError

            try:
                await self._ensure_client()
                group = settings.consumer_group
                return await self._describe_group(group, await self._coordinator(group))
            except _Retry:
                self._coordinators.pop(settings.consumer_group, None)
                raise SourceError(
                    f"the coordinator of group {settings.consumer_group!r} moved", trigger=settings.name
                ) from None
            except KafkaError as exc:
                raise self._translate(exc, settings) from exc
            except OSError as exc:
                raise BrokerUnreachable(f"lost the connection to Kafka at {self._servers}: {exc}") from exc

        members = await within_timeout(
            describe(),
            trigger=settings.name,
            seconds=settings.timeout,
            waiting_for=f"Kafka at {self._servers} while describing group {settings.consumer_group!r}",
            advice="check the brokers' load and network, or raise timeout",
        )
        return {
            f"{topic}/{partition}": member.client_host.lstrip("/")
            for member in members
            for topic, partition in decode_assignment(member.assignment)
        }

    def forget(self, settings: TriggerSettings) -> None:
        """Drop the state kept for a removed trigger (its commit history)."""
        for key in [k for k in self._previous if k[0] == settings]:
            del self._previous[key]

    async def close(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        self._previous.clear()
        if client is not None:
            await client.close()

    async def snapshot(self, settings: KafkaSettings, scope: Scope) -> KafkaSnapshot:
        """Offsets of the trigger's partitions (all of them, or this pod's); raises SourceError."""
        from aiokafka.errors import KafkaError

        try:
            for attempt in range(5):
                try:
                    return await self._snapshot(settings, scope)
                except _LayoutChanged:
                    await asyncio.sleep(0.1 * attempt)  # at once, then let the brokers' metadata settle
                except _Retry:
                    self._coordinators.pop(settings.consumer_group, None)
                    await asyncio.sleep(0.1 * (attempt + 1))
            raise SourceTimeout(
                f"the coordinator of group {settings.consumer_group!r} on Kafka at {self._servers} stayed "
                "unavailable: check the brokers' logs (__consumer_offsets may still be loading)"
            )
        except KafkaError as exc:
            raise self._translate(exc, settings) from exc
        except OSError as exc:
            raise BrokerUnreachable(f"lost the connection to Kafka at {self._servers}: {exc}") from exc
        except (SourceError, TimeoutError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise SourceError(
                f"measuring group {settings.consumer_group!r} on Kafka at {self._servers} failed: {exc!r}"
            ) from exc

    async def snapshot_many(
        self, batch: Sequence[KafkaSettings]
    ) -> dict[KafkaSettings, KafkaSnapshot | SourceError]:
        """GROUP-scope snapshots of many triggers; raises a SourceError only for what fails them all."""
        from aiokafka.errors import KafkaError

        try:
            for attempt in range(5):
                try:
                    return await self._snapshot_batch(batch)
                except _LayoutChanged:
                    await asyncio.sleep(0.1 * attempt)
                except _Retry:
                    await asyncio.sleep(0.1 * (attempt + 1))
            raise SourceTimeout(
                f"a group coordinator or partition leader on Kafka at {self._servers} stayed unavailable: "
                "check the brokers' logs (__consumer_offsets may still be loading)"
            )
        except KafkaError as exc:
            raise self._translate(exc, batch[0]) from exc
        except OSError as exc:
            raise BrokerUnreachable(f"lost the connection to Kafka at {self._servers}: {exc}") from exc
        except (SourceError, TimeoutError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise SourceError(f"measuring on Kafka at {self._servers} failed: {exc!r}") from exc

    async def _snapshot_batch(
        self, batch: Sequence[KafkaSettings]
    ) -> dict[KafkaSettings, KafkaSnapshot | SourceError]:
        # Connect first: a cluster that cannot be reached fails the batch once, not once per group.
        await self._ensure_client()
        failed: dict[KafkaSettings, SourceError] = {}
        groups = sorted({s.consumer_group for s in batch})
        looked_up = await asyncio.gather(*map(self._coordinator_or_error, groups))
        coordinators = dict(zip(groups, looked_up, strict=True))
        for s in batch:
            if isinstance(found := coordinators[s.consumer_group], SourceError):
                failed[s] = found
        # Partitions of the triggers that name their topics; None for the others, whose topics
        # are those their group has committed offsets for.
        await self._ensure_metadata(frozenset(t for s in batch if s not in failed for t in s.topics))
        named: dict[KafkaSettings, Sequence[tuple[str, int]] | None] = {}
        for s in batch:
            if s in failed:
                continue
            try:
                named[s] = select_partitions(self._partition_counts(s.topics), s) if s.topics else None
            except SourceError as exc:
                failed[s] = exc
        plan = fetch_plan(named)
        committed = await self._committed_batch(
            {g: (cast(int, coordinators[g]), wanted) for g, wanted in plan.items()}
        )
        topics: dict[KafkaSettings, tuple[str, ...]] = {}
        for s in named:
            offsets = committed[s.consumer_group]
            if isinstance(offsets, SourceError):
                failed[s] = offsets
            elif s.topics:
                topics[s] = s.topics
            else:
                try:
                    topics[s] = self._topics_of_group(s.consumer_group, offsets)
                except SourceError as exc:
                    failed[s] = exc
        await self._ensure_metadata(frozenset(t for names in topics.values() for t in names))
        layouts: dict[KafkaSettings, dict[str, int]] = {}
        wanted: dict[KafkaSettings, tuple[tuple[str, int], ...]] = {}
        for s, names in topics.items():
            try:
                layouts[s] = self._partition_counts(names)
            except SourceError as exc:
                failed[s] = exc
                continue
            wanted[s] = select_partitions(layouts[s], s)
        topic_errors: dict[str, SourceError] = {}
        every = sorted({tp for parts in wanted.values() for tp in parts})
        stable_parts = sorted({tp for s, parts in wanted.items() if _committed_only(s) for tp in parts})
        log_end, log_start, stable = await asyncio.gather(
            self._list_offsets(every, _LATEST, topic_errors, probe=self._probe({t for t, _ in every})),
            self._list_offsets(every, _EARLIEST, topic_errors),
            self._list_offsets(stable_parts, _LATEST, topic_errors, isolation=_READ_COMMITTED),
        )
        resumes: dict[KafkaSettings, dict[tuple[str, int], int]] = {
            s: _tail_resumes(
                parts, cast(dict[tuple[str, int], int | None], committed[s.consumer_group]), log_start, stable
            )
            for s, parts in wanted.items()
            if _committed_only(s)
        }
        tails = await self._read_tails(
            {(tp, resume) for by_tp in resumes.values() for tp, resume in by_tp.items()}, stable
        )
        results: dict[KafkaSettings, KafkaSnapshot | SourceError] = dict(failed)
        for s, parts in wanted.items():
            if problem := next((topic_errors[t] for t, _ in parts if t in topic_errors), None):
                results[s] = problem
                continue
            results[s] = assemble_snapshot(
                s,
                layout=layouts[s],
                wanted=parts,
                committed=cast(dict[tuple[str, int], int | None], committed[s.consumer_group]),
                log_end=stable if _committed_only(s) else log_end,
                log_start=log_start,
                scope=Scope.GROUP,
                readable={tp: tails[(tp, resume)] for tp, resume in resumes.get(s, {}).items()},
            )
        return results

    async def _coordinator_or_error(self, group: str) -> int | SourceError:
        """The group's coordinator, or why it cannot be known (a _Retry still retries the batch)."""
        from aiokafka.errors import KafkaError

        try:
            return await self._coordinator(group)
        except SourceError as exc:
            return exc
        except KafkaError as exc:
            return SourceError(f"Kafka at {self._servers} answered FindCoordinator {group!r} with {exc!r}")

    async def _committed_batch(
        self, plan: Mapping[str, tuple[int, tuple[tuple[str, tuple[int, ...]], ...] | None]]
    ) -> dict[str, dict[tuple[str, int], int | None] | SourceError]:
        """Committed offsets of many groups: one OffsetFetch per coordinator (v8 takes several
        groups); on brokers without v8, one OffsetFetch per group, all sent at once."""
        from aiokafka.errors import IncompatibleBrokerVersion, KafkaError

        by_coordinator: dict[int, list[str]] = defaultdict(list)
        for group, (coordinator, _wanted) in sorted(plan.items()):
            by_coordinator[coordinator].append(group)
        results: dict[str, dict[tuple[str, int], int | None] | SourceError] = {}
        retry = False

        async def fetch(coordinator: int, groups: list[str]) -> None:
            nonlocal retry
            request = _offset_fetch_groups()([(g, plan[g][1]) for g in groups])
            try:
                response = await self._send(coordinator, request)
            except (IncompatibleBrokerVersion, NotImplementedError):
                answers = await asyncio.gather(
                    *(self._committed_one(g, coordinator, plan[g][1]) for g in groups)
                )
                results.update(zip(groups, answers, strict=True))
                return
            for group_id, topics, error_code, _tags in response.groups:
                # v8 partitions: (partition, offset, leader epoch, metadata, error code, tags)
                entries = [(t, [(p[0], p[1], p[3], p[4]) for p in parts]) for t, parts, _ in topics or ()]
                try:
                    results[group_id] = self._committed_of(group_id, error_code, entries)
                except _Retry:
                    self._coordinators.pop(group_id, None)
                    retry = True
                except SourceError as exc:
                    results[group_id] = exc
                except KafkaError as exc:
                    results[group_id] = SourceError(
                        f"Kafka at {self._servers} answered OffsetFetch {group_id!r} with {exc!r}"
                    )

        await asyncio.gather(*(fetch(c, groups) for c, groups in by_coordinator.items()))
        if retry:
            raise _Retry
        for group in plan.keys() - results.keys():
            results[group] = SourceError(f"Kafka at {self._servers} left group {group!r} out of its answer")
        return results

    async def _committed_one(
        self, group: str, coordinator: int, wanted: tuple[tuple[str, tuple[int, ...]], ...] | None
    ) -> dict[tuple[str, int], int | None] | SourceError:
        """One group's committed offsets through the single-group OffsetFetch (brokers before 3.0)."""
        partitions = None if wanted is None else [(t, p) for t, parts in wanted for p in parts]
        from aiokafka.errors import KafkaError

        try:
            return await self._committed(group, coordinator, partitions)
        except _Retry:
            self._coordinators.pop(group, None)
            raise
        except SourceError as exc:
            return exc
        except KafkaError as exc:
            return SourceError(f"Kafka at {self._servers} answered OffsetFetch {group!r} with {exc!r}")

    async def _snapshot(self, settings: KafkaSettings, scope: Scope) -> KafkaSnapshot:
        group = settings.consumer_group
        coordinator = await self._coordinator(group)
        if scope is Scope.LOCAL:
            members = await self._describe_group(group, coordinator)
            own = local_partitions(
                members, pod_ip=self._pod_ip, client_id_pattern=settings.member_client_id_pattern
            )
            topics = settings.topics or tuple(sorted({t for t, _ in own}))
            layout = await self._layout(topics)
            wanted = select_partitions(own, settings)
            committed = await self._committed(group, coordinator, wanted) if wanted else {}
        else:
            if settings.topics:
                layout = await self._layout(settings.topics)
                wanted = select_partitions(layout, settings)
                committed = await self._committed(group, coordinator, wanted)
            else:
                committed = await self._committed(group, coordinator, None)
                topics = self._topics_of_group(group, committed)
                layout = await self._layout(topics)
                if any(layout.get(t, 0) <= p for t, p in committed):
                    raise self._layout_changed()  # the group committed on a partition added since
                wanted = select_partitions(layout, settings)
        if any(layout.get(t, 0) <= p for t, p in wanted):
            # A partition the cached layout lacks (added since): read the layout again now.
            self._metadata_at = 0.0
            layout = await self._layout(layout)
        isolation = _READ_COMMITTED if _committed_only(settings) else _READ_UNCOMMITTED
        probe = self._probe({t for t, _ in wanted}) if scope is Scope.GROUP else None
        log_end, log_start = await asyncio.gather(
            self._list_offsets(wanted, _LATEST, isolation=isolation, probe=probe),
            self._list_offsets(wanted, _EARLIEST),
        )
        readable: dict[tuple[str, int], int] = {}
        if _committed_only(settings):
            resumes = _tail_resumes(wanted, committed, log_start, log_end)
            tails = await self._read_tails(set(resumes.items()), log_end)
            readable = {tp: tails[(tp, resume)] for tp, resume in resumes.items()}
        return assemble_snapshot(
            settings,
            layout=layout,
            wanted=wanted,
            committed=committed,
            log_end=log_end,
            log_start=log_start,
            scope=scope,
            readable=readable,
        )

    async def _read_tails(
        self, wanted: set[tuple[tuple[str, int], int]], stable: Mapping[tuple[str, int], int]
    ) -> dict[tuple[tuple[str, int], int], int]:
        """For each (partition, resume offset): the data records a read_committed consumer gets from
        there up to the partition's LSO (see ``count_readable``). One Fetch per partition leader,
        from the lowest resume offset asked of each partition; what the answer does not reach
        counts whole (LSO minus where the records stopped)."""
        if not wanted:
            return {}
        from aiokafka.errors import for_code
        from aiokafka.protocol.fetch import FetchRequest
        from aiokafka.record.memory_records import MemoryRecords
        from aiokafka.structs import TopicPartition

        lowest: dict[tuple[str, int], int] = {}
        for tp, resume in wanted:
            lowest[tp] = min(resume, lowest.get(tp, resume))
        by_leader: dict[int, dict[str, list[tuple[int, int, int]]]] = defaultdict(lambda: defaultdict(list))
        for (topic, partition), resume in sorted(lowest.items()):
            leader = self._metadata.leader_for_partition(TopicPartition(topic, partition))
            if leader is None or leader < 0:
                self._metadata_at = 0.0
                raise _Retry
            by_leader[leader][topic].append((partition, resume, _TAIL_BYTES))
        requests = [
            self._send(leader, FetchRequest(0, 0, _TAIL_BYTES * 4, _READ_COMMITTED, sorted(topics.items())))
            for leader, topics in by_leader.items()
        ]
        fetched: dict[
            tuple[str, int], tuple[list[tuple[int, int, bool, bool, int, list[int]]], list[Any]]
        ] = {}
        for response in await asyncio.gather(*requests):
            for topic, partitions in response.topics:
                for answer in partitions:
                    partition, error_code, data = answer[0], answer[1], answer[-1]
                    # v4: aborted transactions after the LSO; v5+ after log-start; v11 adds a field after.
                    aborted = next((x for x in answer[2:-1] if isinstance(x, list | tuple)), ())
                    if error_code in (6, 3):
                        self._metadata_at = 0.0
                        raise _Retry
                    if error_code:
                        raise for_code(error_code)(f"Fetch {topic}/{partition}")
                    records, batches = MemoryRecords(bytes(data or b"")), []
                    while (batch := records.next_batch()) is not None:
                        batches.append(
                            (
                                int(batch.base_offset),
                                int(batch.next_offset),
                                bool(getattr(batch, "is_transactional", False)),
                                bool(getattr(batch, "is_control_batch", False)),
                                int(getattr(batch, "producer_id", -1)),
                                [int(record.offset) for record in batch],
                            )
                        )
                    fetched[(topic, partition)] = (batches, list(aborted or ()))
        counts: dict[tuple[tuple[str, int], int], int] = {}
        for tp, resume in wanted:
            batches, aborted = fetched.get(tp, ([], []))
            count, reached = count_readable(batches, aborted, start=resume, stable=stable[tp])
            counts[(tp, resume)] = count + (stable[tp] - reached)
        return counts

    def _topics_of_group(
        self, group: str, committed: Mapping[tuple[str, int], int | None]
    ) -> tuple[str, ...]:
        """The topics a trigger without topic measures: those of the group's committed offsets, or,
        when they expired, those last seen (see the module docstring)."""
        found = tuple(sorted({t for t, _ in committed}))
        if found:
            self._group_topics[group] = found
            return found
        remembered = self._group_topics.get(group)
        if remembered:
            _log.warning(
                "consumer group %r has no committed offsets on Kafka at %s any more (expired?): measuring "
                "the topics it last committed to, %s, as uncommitted",
                group,
                self._servers,
                ", ".join(remembered),
            )
            return remembered
        raise SourceNotFound(
            f"consumer group {group!r} has no committed offsets on Kafka at {self._servers}, so there are "
            "no topics to measure (they expire offsets.retention.minutes after the group empties): check "
            "the group name, or set topic"
        )

    async def _ensure_client(self) -> Any:
        async with self._open_lock:
            if self._client is not None:
                return self._client
            from aiokafka.client import AIOKafkaClient
            from aiokafka.errors import KafkaConnectionError

            cap_answers()
            options = self._client_options()
            check = self._address_check
            client_class = AIOKafkaClient if check is None else _checked_client(check)
            client = client_class(
                bootstrap_servers=list(self._connection.bootstrap_servers),
                client_id="tidescale",
                request_timeout_ms=int(self._connection.timeout * 1000),
                metadata_max_age_ms=int(_METADATA_MAX_AGE * 1000),
                **options,
            )
            try:
                await client.bootstrap()
            except KafkaConnectionError as exc:
                await client.close()
                raise await self._diagnose_bootstrap(options) from exc
            self.requests += 1
            self._client = client
            return client

    def _client_options(self) -> dict[str, Any]:
        s = self._connection
        options: dict[str, Any] = {}
        if s.tls:
            from tidescale.sources._tls import client_context, read_key_password

            context = client_context(
                where=f"Kafka at {self._servers}",
                credentials=self._credentials,
                ca_file=s.tls_ca_file,
                cert_file=s.tls_cert_file,
                key_file=s.tls_key_file,
                key_password=read_key_password(s.tls_key_password_env, s.tls_key_password_file),
            )
            options["ssl_context"] = context
        if s.sasl != "none":
            options["security_protocol"] = "SASL_SSL" if s.tls else "SASL_PLAINTEXT"
            options["sasl_mechanism"] = {"plain": "PLAIN", "scram-sha-256": "SCRAM-SHA-256"}.get(
                s.sasl, "SCRAM-SHA-512"
            )
            if self._credentials is not None:
                options["sasl_plain_username"] = self._credentials.username
                options["sasl_plain_password"] = self._credentials.password
            else:
                options["sasl_plain_username"] = _env(s.sasl_username_env)
                options["sasl_plain_password"] = (
                    _read_secret_file(s.sasl_password_file)
                    if s.sasl_password_file
                    else _env(s.sasl_password_env)
                )
        elif s.tls:
            options["security_protocol"] = "SSL"
        return options

    async def _diagnose_bootstrap(self, options: dict[str, Any]) -> SourceError:
        """aiokafka reports every bootstrap failure alike; connect once more to say which it was."""
        from aiokafka.conn import create_conn
        from aiokafka.errors import KafkaError, SaslAuthenticationFailed, UnsupportedSaslMechanismError

        reasons: list[str] = []
        for server in self._connection.bootstrap_servers:
            host, _, port = server.rpartition(":")
            try:
                conn = await asyncio.wait_for(
                    create_conn(host.strip("[]"), int(port), **options), self._connection.timeout
                )
                conn.close()
                reasons.append(f"{server}: connected on retry")
            except ssl.SSLCertVerificationError as exc:
                from tidescale.sources._tls import ca_advice

                return BrokerAuthFailed(
                    f"the TLS certificate of Kafka at {server} is not trusted ({exc.verify_message}): check "
                    f"{ca_advice(self._credentials)}"
                )
            except (SaslAuthenticationFailed, UnsupportedSaslMechanismError, ssl.SSLError) as exc:
                return BrokerAuthFailed(
                    f"Kafka at {server} refused our credentials ({exc}): check sasl, the username "
                    "and password sources, and the TLS files"
                )
            except (OSError, TimeoutError, KafkaError) as exc:
                if (refused := refused_answer(exc)) is not None:
                    return refused
                reasons.append(f"{server}: {exc or type(exc).__name__}")
        return BrokerUnreachable(
            f"cannot reach any Kafka bootstrap server ({'; '.join(reasons)}): check bootstrap-servers, "
            "that the brokers are up and listening on those ports, and network policies"
        )

    async def _send(self, node_id: int, request: Any) -> Any:
        client = await self._ensure_client()
        self.requests += 1
        return await client.send(node_id, request)

    async def _coordinator(self, group: str) -> int:
        cached = self._coordinators.get(group)
        if cached is not None:
            return cached
        from aiokafka.errors import for_code
        from aiokafka.protocol.coordination import FindCoordinatorRequest

        client = await self._ensure_client()
        response = await self._send(client.get_random_node(), FindCoordinatorRequest(group, 0))
        if response.error_code in (_COORDINATOR_NOT_AVAILABLE, _NOT_COORDINATOR, _LOAD_IN_PROGRESS):
            raise _Retry
        if response.error_code == _GROUP_AUTH_FAILED:
            raise self._auth_error(f"group {group!r}")
        if response.error_code:
            raise for_code(response.error_code)(f"FindCoordinator for group {group!r}")
        self._coordinators[group] = int(response.coordinator_id)
        return int(response.coordinator_id)

    async def _describe_group(self, group: str, coordinator: int) -> list[GroupMember]:
        from aiokafka.errors import for_code
        from aiokafka.protocol.admin import DescribeGroupsRequest

        response = await self._send(coordinator, DescribeGroupsRequest([group]))
        members: list[GroupMember] = []
        for described in response.groups:
            error_code = described[0]
            if error_code in (_COORDINATOR_NOT_AVAILABLE, _NOT_COORDINATOR, _LOAD_IN_PROGRESS):
                raise _Retry
            if error_code == _GROUP_AUTH_FAILED:
                raise self._auth_error(f"group {group!r}")
            if error_code:
                raise for_code(error_code)(f"DescribeGroups {group!r}")
            for member in described[5]:
                # Read from the end: v4+ inserts group_instance_id after member_id.
                members.append(
                    GroupMember(
                        member_id=member[0],
                        client_id=member[-4],
                        client_host=member[-3],
                        assignment=bytes(member[-1] or b""),
                    )
                )
        return members

    async def _committed(
        self, group: str, coordinator: int, partitions: Iterable[tuple[str, int]] | None
    ) -> dict[tuple[str, int], int | None]:
        from aiokafka.protocol.commit import OffsetFetchRequest

        request_partitions: list[tuple[str, list[int]]] | None = None
        if partitions is not None:
            by_topic: dict[str, list[int]] = defaultdict(list)
            for topic, partition in partitions:
                by_topic[topic].append(partition)
            request_partitions = sorted(by_topic.items())
        response = await self._send(coordinator, OffsetFetchRequest(group, request_partitions))
        return self._committed_of(group, getattr(response, "error_code", 0), response.topics)

    def _committed_of(
        self, group: str, top_error: int, topics: Iterable[tuple[str, Iterable[tuple[int, int, Any, int]]]]
    ) -> dict[tuple[str, int], int | None]:
        """One group's part of an OffsetFetch answer, as (topic, [(partition, offset, metadata, error)])."""
        from aiokafka.errors import for_code

        if top_error in (_COORDINATOR_NOT_AVAILABLE, _NOT_COORDINATOR, _LOAD_IN_PROGRESS):
            raise _Retry
        if top_error == _GROUP_AUTH_FAILED:
            raise self._auth_error(f"group {group!r}")
        if top_error:
            raise for_code(top_error)(f"OffsetFetch {group!r}")
        committed: dict[tuple[str, int], int | None] = {}
        for topic, entries in topics:
            for partition, offset, _metadata, error_code in entries:
                if error_code == _TOPIC_AUTH_FAILED:
                    raise self._auth_error(f"topic {topic!r}")
                if error_code in (_UNKNOWN_TOPIC,):
                    continue
                if error_code:
                    raise for_code(error_code)(f"OffsetFetch {group!r} {topic}/{partition}")
                committed[(topic, partition)] = None if offset < 0 else int(offset)
        return committed

    async def _layout(self, topics: Iterable[str]) -> dict[str, int]:
        """Partition counts of ``topics``; refreshes the cached metadata when stale or incomplete."""
        wanted = frozenset(topics)
        if not wanted:
            return {}  # a pod whose members own nothing yet: no metadata to ask for
        await self._ensure_metadata(wanted)
        return self._partition_counts(wanted)

    async def _ensure_metadata(self, wanted: frozenset[str]) -> None:
        """Refresh the cached metadata when it is stale or lacks one of ``wanted``."""
        if not wanted:
            return
        fresh = time.monotonic() - self._metadata_at < _METADATA_MAX_AGE
        if self._metadata is None or not fresh or not wanted <= self._metadata_topics:
            await self._refresh_metadata(wanted | (self._metadata_topics if fresh else frozenset()))

    def _partition_counts(self, wanted: Iterable[str]) -> dict[str, int]:
        """Partition counts from the cached metadata; a topic it lacks is a SourceError."""
        metadata, wanted = self._metadata, tuple(wanted)
        missing = sorted(t for t in wanted if metadata.partitions_for_topic(t) is None)
        if missing and (missing_unauthorized := [t for t in missing if t in metadata.unauthorized_topics]):
            raise self._auth_error(f"topic {missing_unauthorized[0]!r}")
        if missing:
            raise SourceNotFound(
                f"Kafka at {self._servers} has no topic {', '.join(map(repr, missing))}: check topic "
                "(names are case-sensitive) and that the topic was created"
            )
        return {t: len(metadata.partitions_for_topic(t)) for t in wanted}

    async def _refresh_metadata(self, topics: frozenset[str]) -> None:
        from aiokafka.cluster import ClusterMetadata
        from aiokafka.protocol.metadata import MetadataRequest

        client = await self._ensure_client()
        # allow_auto_topic_creation False: measuring must never create the topic it looks for.
        response = await self._send(client.get_random_node(), MetadataRequest(sorted(topics), False))
        metadata = ClusterMetadata()
        metadata.update_metadata(response)
        self._metadata, self._metadata_topics, self._metadata_at = metadata, topics, time.monotonic()

    async def _list_offsets(
        self,
        partitions: Iterable[tuple[str, int]],
        timestamp: int,
        topic_errors: dict[str, SourceError] | None = None,
        *,
        isolation: int = 0,
        probe: Mapping[str, int] | None = None,
    ) -> dict[tuple[str, int], int]:
        """One ListOffsets request per partition leader, sent concurrently.

        A topic we may not read raises, unless ``topic_errors`` is given (a batch): then it is
        recorded there and only the triggers naming that topic fail.

        ``probe`` maps topics to the partition count the cached layout gives them: partition number
        ``count`` of each is asked for too, in a request already going to a leader of that topic. A
        broker answers UNKNOWN_TOPIC_OR_PARTITION for a partition that does not exist, and offsets
        or NOT_LEADER_OR_FOLLOWER for one that does: then the topic has grown, and _LayoutChanged
        makes the caller read the layout and measure again. So partitions added are seen by the
        first measurement after they are, without a Metadata request per measurement."""
        from aiokafka.errors import for_code
        from aiokafka.protocol.offset import OffsetRequest
        from aiokafka.structs import TopicPartition

        by_leader: dict[int, dict[str, list[tuple[int, int]]]] = defaultdict(lambda: defaultdict(list))
        for topic, partition in partitions:
            leader = self._metadata.leader_for_partition(TopicPartition(topic, partition))
            if leader is None or leader < 0:
                self._metadata_at = 0.0  # a leader election is under way: re-read the layout next time
                raise _Retry
            by_leader[leader][topic].append((partition, timestamp))
        probes: set[tuple[str, int]] = set()
        for topic, count in sorted((probe or {}).items()):
            leader = next((node for node, topics in by_leader.items() if topic in topics), None)
            if leader is not None:
                by_leader[leader][topic].append((count, timestamp))
                probes.add((topic, count))
        grown = False
        requests = [
            self._send(leader, OffsetRequest(-1, isolation, sorted(topics.items())))
            for leader, topics in by_leader.items()
        ]
        offsets: dict[tuple[str, int], int] = {}
        for response in await asyncio.gather(*requests):
            for topic, entries in response.topics:
                for partition, error_code, *rest in entries:
                    if (topic, partition) in probes:
                        grown = grown or error_code in (0, _NOT_LEADER)
                        continue
                    if error_code in (_NOT_LEADER, _UNKNOWN_TOPIC):  # the layout moved
                        self._metadata_at = 0.0
                        raise _Retry
                    if error_code and topic_errors is not None:
                        topic_errors[topic] = (
                            self._auth_error(f"topic {topic!r}")
                            if error_code == _TOPIC_AUTH_FAILED
                            else SourceError(
                                f"Kafka at {self._servers} answered ListOffsets {topic}/{partition} with "
                                f"{for_code(error_code).__name__}"
                            )
                        )
                        continue
                    if error_code == _TOPIC_AUTH_FAILED:
                        raise self._auth_error(f"topic {topic!r}")
                    if error_code:
                        raise for_code(error_code)(f"ListOffsets {topic}/{partition}")
                    offsets[(topic, partition)] = int(rest[-1])
        if grown:
            raise self._layout_changed()
        return offsets

    def _probe(self, topics: Iterable[str]) -> dict[str, int]:
        """The partition count the cached layout gives each of ``topics`` (see ``_list_offsets``)."""
        counts = {t: self._metadata.partitions_for_topic(t) for t in topics}
        return {t: len(parts) for t, parts in counts.items() if parts is not None}

    def _layout_changed(self) -> _LayoutChanged:
        self._metadata_at = 0.0
        _log.info("a topic on Kafka at %s has new partitions: reading its layout again", self._servers)
        return _LayoutChanged()

    def _auth_error(self, what: str) -> BrokerAuthFailed:
        who = self._connection.sasl_username_env or "the anonymous user"
        return BrokerAuthFailed(
            f"Kafka at {self._servers} denied access to {what} for {who}: check the ACLs "
            "(Describe and Read on the group and topics) and the credentials"
        )

    def _translate(self, exc: Exception, settings: KafkaSettings) -> SourceError:
        from aiokafka.errors import (
            KafkaConnectionError,
            KafkaTimeoutError,
            NodeNotReadyError,
            RequestTimedOutError,
        )

        if (refused := refused_answer(exc)) is not None:
            return refused
        if isinstance(exc, RequestTimedOutError | KafkaTimeoutError):
            return SourceTimeout(
                f"Kafka at {self._servers} timed out a request for group {settings.consumer_group!r}: "
                "check the brokers' load"
            )
        if isinstance(exc, KafkaConnectionError | NodeNotReadyError):
            # The broker may be gone: its partitions and the groups it coordinated have moved, so
            # the next measurement looks both up again instead of asking the dead broker forever.
            self._metadata_at = 0.0
            self._coordinators.clear()
            return BrokerUnreachable(
                f"lost the connection to a broker of Kafka at {self._servers} ({exc}): check that every "
                "broker's advertised listener is reachable from this pod"
            )
        return SourceError(f"Kafka at {self._servers} answered with an error: {exc!r}")


@functools.cache
def _offset_fetch_groups() -> Callable[
    [list[tuple[str, tuple[tuple[str, tuple[int, ...]], ...] | None]]], Any
]:
    """OffsetFetch v8 (KIP-709, Kafka 3.0+), which aiokafka lacks: several groups in one request.

    Built on first use so that importing this module never imports aiokafka. The negotiated
    version is v8 or, on older brokers, IncompatibleBrokerVersion / NotImplementedError at send."""
    from aiokafka.protocol.api import Request, RequestStruct, Response
    from aiokafka.protocol.types import (
        Boolean,
        CompactArray,
        CompactString,
        Int16,
        Int32,
        Int64,
        Schema,
        TaggedFields,
    )

    class OffsetFetchResponseV8(Response):  # type: ignore[misc]  # aiokafka is untyped here
        API_KEY = 9
        API_VERSION = 8
        SCHEMA = Schema(
            ("throttle_time_ms", Int32),
            (
                "groups",
                CompactArray(
                    ("group_id", CompactString("utf-8")),
                    (
                        "topics",
                        CompactArray(
                            ("name", CompactString("utf-8")),
                            (
                                "partitions",
                                CompactArray(
                                    ("partition_index", Int32),
                                    ("committed_offset", Int64),
                                    ("committed_leader_epoch", Int32),
                                    ("metadata", CompactString("utf-8")),
                                    ("error_code", Int16),
                                    ("tags", TaggedFields),
                                ),
                            ),
                            ("tags", TaggedFields),
                        ),
                    ),
                    ("error_code", Int16),
                    ("tags", TaggedFields),
                ),
            ),
            ("tags", TaggedFields),
        )

    class OffsetFetchRequestV8(RequestStruct):  # type: ignore[misc]
        FLEXIBLE_VERSION = True
        API_KEY = 9
        API_VERSION = 8
        RESPONSE_TYPE = OffsetFetchResponseV8
        SCHEMA = Schema(
            (
                "groups",
                CompactArray(
                    ("group_id", CompactString("utf-8")),
                    (
                        "topics",
                        CompactArray(
                            ("name", CompactString("utf-8")),
                            ("partition_indexes", CompactArray(Int32)),
                            ("tags", TaggedFields),
                        ),
                    ),
                    ("tags", TaggedFields),
                ),
            ),
            ("require_stable", Boolean),
            ("tags", TaggedFields),
        )

    class OffsetFetchGroupsRequest(Request[OffsetFetchRequestV8]):  # type: ignore[misc]
        API_KEY = 9

        def __init__(self, groups: list[tuple[str, tuple[tuple[str, tuple[int, ...]], ...] | None]]) -> None:
            self._groups = groups

        def build(self, request_struct_class: type[OffsetFetchRequestV8]) -> OffsetFetchRequestV8:
            groups: list[tuple[str, list[tuple[str, list[int], dict[int, bytes]]] | None, dict[int, bytes]]]
            groups = [
                (group, None if topics is None else [(t, list(parts), {}) for t, parts in topics], {})
                for group, topics in self._groups
            ]
            # require_stable False: the committed offsets as they are, as the single-group request reads them.
            return request_struct_class(groups, False, {})

    return OffsetFetchGroupsRequest


def _checked_client(check: Callable[[str, int], Awaitable[str | None]]) -> Any:
    """An AIOKafkaClient that asks ``check`` before connecting to a broker the metadata names: a
    cluster may advertise any address (169.254.169.254, the API server), and the bootstrap
    servers were the only ones vetted. A refused broker fails like one that cannot be reached."""
    import logging

    from aiokafka.client import AIOKafkaClient, ConnectionGroup

    log = logging.getLogger("tidescale.sources.kafka._source")

    class CheckedClient(AIOKafkaClient):  # type: ignore[misc]  # aiokafka is untyped
        async def _get_conn(
            self, node_id: Any, *, group: Any = ConnectionGroup.DEFAULT, no_hint: bool = False
        ) -> Any:
            if (node_id, group) not in self._conns:
                broker = self.cluster.broker_metadata(node_id)
                if broker is not None:
                    refused = await check(str(broker.host), int(broker.port))
                    if refused is not None:
                        log.warning("Kafka broker %s:%s refused: %s", broker.host, broker.port, refused)
                        return None
            return await super()._get_conn(node_id, group=group, no_hint=no_hint)

    return CheckedClient


_Batch = tuple[int, int, bool, bool, int, list[int]]
"""A record batch as ``count_readable`` reads it."""


def _committed_only(settings: KafkaSettings) -> bool:
    return settings.isolation_level == "read-committed"


def _tail_resumes(
    wanted: Iterable[tuple[str, int]],
    committed: Mapping[tuple[str, int], int | None],
    log_start: Mapping[tuple[str, int], int],
    stable: Mapping[tuple[str, int], int],
) -> dict[tuple[str, int], int]:
    """The partitions whose tail is read under read-committed, and from where: a committed partition
    whose consumer resumes (at its commit, or log-start past it) at most TAIL_LIMIT offsets short of
    the LSO, and not already there."""
    resumes: dict[tuple[str, int], int] = {}
    for tp in wanted:
        at, lso = committed.get(tp), stable.get(tp)
        if at is None or lso is None:
            continue
        resume = max(at, log_start.get(tp, 0))
        if 0 < lso - resume <= TAIL_LIMIT:
            resumes[tp] = resume
    return resumes


def _env(name: str | None) -> str | None:
    if name is None:
        return None
    value = os.environ.get(name)
    if value is None:
        raise BrokerAuthFailed(
            f"the environment variable {name} (named by a *-env hint) is not set in the agent"
        )
    return value


def _read_secret_file(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise BrokerAuthFailed(f"cannot read the password file {path}: {exc.strerror}") from exc
