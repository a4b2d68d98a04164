"""Kafka consumer-group lag: settings, the pure arithmetic, and the broker I/O that snapshots offsets.

One :class:`KafkaSource` is one connection to one cluster (see the pool in
``registry``); it measures any trigger naming that cluster. aiokafka is imported
the first time a connection opens, never at module import.

Requests per measurement (the coordinator and topic metadata are cached, so
steady state is the lower figure):

- GROUP scope: OffsetFetch (1) + ListOffsets latest (1 per partition leader)
  [+ ListOffsets earliest, per leader, only under earliest with uncommitted partitions].
- LOCAL scope: DescribeGroups (1) + the same, restricted to this pod's partitions.
- Cache misses add FindCoordinator (1) and Metadata (1).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tidescale.errors import BrokerAuthFailed, BrokerUnreachable, SourceError, SourceNotFound, SourceTimeout
from tidescale.sources._kafka_lag import (
    GroupMember,
    KafkaSnapshot,
    PartitionLag,
    PartitionOffsets,
    decode_assignment,
    kafka_measurement,
    local_partitions,
    own_members,
    partition_lag,
    select_partitions,
)
from tidescale.sources._kafka_settings import KAFKA_FIELDS, KafkaSettings, parse_kafka_settings
from tidescale.sources.base import Measurement, Scope, TriggerSettings

__all__ = [
    "KAFKA_FIELDS",
    "GroupMember",
    "KafkaSettings",
    "KafkaSnapshot",
    "KafkaSource",
    "PartitionLag",
    "PartitionOffsets",
    "decode_assignment",
    "kafka_measurement",
    "local_partitions",
    "own_members",
    "parse_kafka_settings",
    "partition_lag",
    "select_partitions",
]

_METADATA_MAX_AGE = 30.0
"""Seconds a topic's partition layout is trusted; a leader change is also noticed from errors."""
_LATEST, _EARLIEST = -1, -2
_COORDINATOR_NOT_AVAILABLE, _NOT_COORDINATOR, _LOAD_IN_PROGRESS = 15, 16, 14
_GROUP_AUTH_FAILED, _TOPIC_AUTH_FAILED, _UNKNOWN_TOPIC = 30, 29, 3


class _Retry(Exception):
    """The coordinator moved or is loading: look it up again within the measurement's time."""


class KafkaSource:
    """A connection to one Kafka cluster; measures consumer-group lag of any trigger naming it."""

    def __init__(self, settings: KafkaSettings, *, pod_ip: str | None = None) -> None:
        self._connection = settings
        self._pod_ip = pod_ip
        self._client: Any = None
        self._open_lock = asyncio.Lock()
        self._coordinators: dict[str, int] = {}
        self._metadata: Any = None
        self._metadata_topics: frozenset[str] = frozenset()
        self._metadata_at = 0.0
        self._previous: dict[tuple[KafkaSettings, Scope], KafkaSnapshot] = {}
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
        try:
            async with asyncio.timeout(settings.timeout):
                snapshot = await self.snapshot(settings, scope)
        except TimeoutError as exc:
            raise SourceTimeout(
                f"Kafka at {self._servers} did not answer within {settings.timeout:g}s while reading group "
                f"{settings.consumer_group!r}: check the brokers' load and network, or raise timeout",
                trigger=settings.name,
            ) from exc
        except SourceError as exc:
            if exc.trigger is None:
                raise type(exc)(str(exc), trigger=settings.name) from exc
            raise
        key = (settings, scope)
        measurement = kafka_measurement(
            snapshot, settings, previous=self._previous.get(key), taken_at=time.monotonic()
        )
        self._previous[key] = snapshot
        return measurement

    def forget(self, settings: TriggerSettings) -> None:
        """Drop the state kept for a removed trigger (its previous snapshots)."""
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
                topics = tuple(sorted({t for t, _ in committed}))
                if not topics:
                    raise SourceNotFound(
                        f"consumer group {group!r} has no committed offsets on Kafka at {self._servers}, "
                        "so there are no topics to measure: check the group name, or set topic"
                    )
                layout = await self._layout(topics)
                wanted = select_partitions(layout, settings)
        log_end = await self._list_offsets(wanted, _LATEST)
        uncommitted = [tp for tp in wanted if committed.get(tp) is None]
        needs_start = (
            settings.offset_reset_policy == "earliest" and not settings.scale_to_zero_on_invalid_offset
        )
        log_start = await self._list_offsets(uncommitted, _EARLIEST) if needs_start and uncommitted else {}
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

    async def _ensure_client(self) -> Any:
        async with self._open_lock:
            if self._client is not None:
                return self._client
            from aiokafka.client import AIOKafkaClient
            from aiokafka.errors import KafkaConnectionError

            options = self._client_options()
            client = AIOKafkaClient(
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
            try:
                context = ssl.create_default_context(cafile=s.tls_ca_file)
                if s.tls_cert_file is not None:
                    context.load_cert_chain(s.tls_cert_file, s.tls_key_file)
            except (OSError, ssl.SSLError) as exc:
                raise BrokerAuthFailed(
                    f"cannot load the TLS files for Kafka at {self._servers} ({exc}): check tls-ca-file, "
                    "tls-cert-file and tls-key-file"
                ) from exc
            options["ssl_context"] = context
        if s.sasl != "none":
            options["security_protocol"] = "SASL_SSL" if s.tls else "SASL_PLAINTEXT"
            options["sasl_mechanism"] = {"plain": "PLAIN", "scram-sha-256": "SCRAM-SHA-256"}.get(
                s.sasl, "SCRAM-SHA-512"
            )
            options["sasl_plain_username"] = _env(s.sasl_username_env)
            options["sasl_plain_password"] = (
                _read_secret_file(s.sasl_password_file) if s.sasl_password_file else _env(s.sasl_password_env)
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
            except (SaslAuthenticationFailed, UnsupportedSaslMechanismError, ssl.SSLError) as exc:
                return BrokerAuthFailed(
                    f"Kafka at {server} refused our credentials ({exc}): check sasl, the username "
                    "and password sources, and the TLS files"
                )
            except (OSError, TimeoutError, KafkaError) as exc:
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
        from aiokafka.errors import for_code
        from aiokafka.protocol.commit import OffsetFetchRequest

        request_partitions: list[tuple[str, list[int]]] | None = None
        if partitions is not None:
            by_topic: dict[str, list[int]] = defaultdict(list)
            for topic, partition in partitions:
                by_topic[topic].append(partition)
            request_partitions = sorted(by_topic.items())
        response = await self._send(coordinator, OffsetFetchRequest(group, request_partitions))
        top_error = getattr(response, "error_code", 0)
        if top_error in (_COORDINATOR_NOT_AVAILABLE, _NOT_COORDINATOR, _LOAD_IN_PROGRESS):
            raise _Retry
        if top_error == _GROUP_AUTH_FAILED:
            raise self._auth_error(f"group {group!r}")
        if top_error:
            raise for_code(top_error)(f"OffsetFetch {group!r}")
        committed: dict[tuple[str, int], int | None] = {}
        for topic, entries in response.topics:
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
        fresh = time.monotonic() - self._metadata_at < _METADATA_MAX_AGE
        if self._metadata is None or not fresh or not wanted <= self._metadata_topics:
            await self._refresh_metadata(wanted | (self._metadata_topics if fresh else frozenset()))
        metadata = self._metadata
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
        self, partitions: Iterable[tuple[str, int]], timestamp: int
    ) -> dict[tuple[str, int], int]:
        """One ListOffsets request per partition leader, sent concurrently."""
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
        requests = [
            self._send(leader, OffsetRequest(-1, 0, sorted(topics.items())))
            for leader, topics in by_leader.items()
        ]
        offsets: dict[tuple[str, int], int] = {}
        for response in await asyncio.gather(*requests):
            for topic, entries in response.topics:
                for partition, error_code, *rest in entries:
                    if error_code in (6, 3):  # NOT_LEADER / UNKNOWN_TOPIC: the layout moved
                        self._metadata_at = 0.0
                        raise _Retry
                    if error_code == _TOPIC_AUTH_FAILED:
                        raise self._auth_error(f"topic {topic!r}")
                    if error_code:
                        raise for_code(error_code)(f"ListOffsets {topic}/{partition}")
                    offsets[(topic, partition)] = int(rest[-1])
        return offsets

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

        if isinstance(exc, RequestTimedOutError | KafkaTimeoutError):
            return SourceTimeout(
                f"Kafka at {self._servers} timed out a request for group {settings.consumer_group!r}: "
                "check the brokers' load"
            )
        if isinstance(exc, KafkaConnectionError | NodeNotReadyError):
            self._metadata_at = 0.0
            return BrokerUnreachable(
                f"lost the connection to a broker of Kafka at {self._servers} ({exc}): check that every "
                "broker's advertised listener is reachable from this pod"
            )
        return SourceError(f"Kafka at {self._servers} answered with an error: {exc!r}")


def _env(name: str | None) -> str | None:
    if name is None:
        return None
    value = os.environ.get(name)
    if value is None:
        raise BrokerAuthFailed(
            f"the environment variable {name} (named by a sasl-*-env hint) is not set in the agent"
        )
    return value


def _read_secret_file(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise BrokerAuthFailed(f"cannot read the SASL password file {path}: {exc.strerror}") from exc
