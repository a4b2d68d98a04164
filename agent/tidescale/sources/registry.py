"""From trigger type to source: settings parsers, field docs, and the per-process connection pool.

Each source is a folder, ``sources/<name>/``, whose ``__init__`` defines a
:class:`~tidescale.sources._kind.SourceKind` (``KIND``); the table below lists them.
Importing this module is cheap: it pulls in no source folder and no broker client
(aiokafka, aio-pika, httpx). A folder's settings module is imported the first time its
trigger type is named; its broker client the first time a connection opens, so a
Kafka-only pod never loads aio-pika, and a follower nobody asks for its lag never loads
aiokafka.

Connection pool
---------------
:class:`SourcePool` keeps ONE live :class:`~tidescale.sources.base.Source` per
broker cluster per process, shared by every trigger that names it. The cluster
key is the settings' ``cluster_key``: for Kafka the sorted bootstrap servers plus
TLS and SASL identity; for RabbitMQ the management URL (or the AMQP URL and
vhost) plus credentials. Each trigger holds one reference::

    pool = SourcePool(pod_ip="10.213.1.7")
    source = await pool.acquire(settings)        # opens the cluster's connection, or reuses it
    measurement = await measure_safely(source, settings, Scope.LOCAL)
    await pool.release(settings)                 # trigger removed: drop its reference and state
    await pool.close()                           # process exit: close everything

``acquire`` and ``release`` are counted per settings object (equal settings
count twice); when a cluster's count reaches zero its connection is closed, and
``release`` also drops the per-trigger state the source keeps (e.g. the previous
offsets used by exclude-persistent-lag), so removing a trigger leaks nothing.
Changing a trigger's hints is ``release(old)`` then ``acquire(new)``.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Callable
from typing import Final, cast

from tidescale.credentials import Credentials
from tidescale.errors import SourceError
from tidescale.sources._fields import LIMITS, FieldDoc, LimitDoc
from tidescale.sources._kind import AddressCheck, Endpoint, OpenOptions, SettingsParser, SourceKind
from tidescale.sources.base import Measurement, MeasurementFailure, Scope, Source, TriggerSettings

__all__ = [
    "LIMITS",
    "TRIGGER_TYPES",
    "Endpoint",
    "FieldDoc",
    "LimitDoc",
    "SourceKind",
    "SourcePool",
    "endpoints",
    "field_docs",
    "kind_of",
    "measure_safely",
    "open_source",
    "settings_parser",
]

# One line per source folder: trigger type -> the module whose KIND it is (docs/sources.md,
# "Registering it"). A module is imported the first time its type is used, so an agent loads the
# settings of the types its Deployment names, not all of them (~1 MiB and ~30 ms for all nine).
_KIND_MODULES: Final[dict[str, str]] = {
    "kafka": "tidescale.sources.kafka",
    "rabbitmq": "tidescale.sources.rabbitmq",
    "redis": "tidescale.sources.redis",
    "postgresql": "tidescale.sources.postgresql",
    "cron": "tidescale.sources.cron",
    "prometheus": "tidescale.sources.prometheus",
    "nats-jetstream": "tidescale.sources.nats_jetstream",
    "aws-sqs": "tidescale.sources.aws_sqs",
    "azure-queue": "tidescale.sources.azure_queue",
}
_KINDS: dict[str, SourceKind] = {}
"""The kinds imported so far."""

TRIGGER_TYPES: Final[tuple[str, ...]] = tuple(_KIND_MODULES)


def _kind(type_name: str) -> SourceKind:
    """The kind of one trigger type, importing its folder on first use; KeyError for an unknown type."""
    kind = _KINDS.get(type_name)
    if kind is None:
        kind = cast(SourceKind, importlib.import_module(_KIND_MODULES[type_name]).KIND)
        if kind.type_name != type_name:  # a folder registered under another folder's name
            module = _KIND_MODULES[type_name]
            raise TypeError(f"{module} defines the kind {kind.type_name!r}, not {type_name!r}")
        _KINDS[type_name] = kind
    return kind


def settings_parser(type_name: str) -> SettingsParser:
    """The parser of one trigger type: ``parser(trigger_name, {field: value})`` -> frozen settings.

    Raises :class:`~tidescale.errors.HintsInvalid` listing every bad field. ``KeyError`` for a type
    not in :data:`TRIGGER_TYPES` (the hints layer checks the type first).
    """
    return _kind(type_name).parse


def field_docs(type_name: str) -> list[FieldDoc]:
    """The fields of one trigger type, in reference order."""
    return list(_kind(type_name).fields)


def kind_of(settings: TriggerSettings) -> SourceKind:
    """The kind whose parser made ``settings``; TypeError for settings no registered kind makes."""
    # Settings made by a kind's parser have their kind imported already; settings made by the folder's
    # own parser (tests, tools) name it by their class's module.
    home = type(settings).__module__
    for type_name, module in _KIND_MODULES.items():
        if home == module or home.startswith(f"{module}."):
            _kind(type_name)
    for kind in list(_KINDS.values()):
        if isinstance(settings, kind.settings_class):
            return kind
    raise TypeError(f"no source for settings of type {type(settings).__name__}")


def endpoints(settings: TriggerSettings) -> list[Endpoint]:
    """Every address a source for ``settings`` would connect to first (the waker checks them)."""
    return kind_of(settings).endpoints(settings)


def open_source(
    settings: TriggerSettings,
    *,
    pod_ip: str | None = None,
    credentials: Credentials | None = None,
    address_check: AddressCheck | None = None,
) -> Source:
    """A new, unshared source for the cluster ``settings`` names; the caller closes it.

    Nothing connects yet: the connection opens on the first measurement, so this never fails on I/O.
    ``pod_ip`` is this pod's address, used to find its own Kafka group members and RabbitMQ consumers.
    ``credentials`` (the waker's, from a Secret) replace the settings' ``*-env`` and ``*-file`` sources.
    ``address_check`` (the waker's) vets each broker a Kafka cluster advertises before connecting to it.
    """
    options = OpenOptions(pod_ip=pod_ip, credentials=credentials, address_check=address_check)
    return kind_of(settings).open(settings, options)


def _cluster_key(settings: TriggerSettings) -> tuple[object, ...]:
    key = getattr(settings, "cluster_key", None)
    if not isinstance(key, tuple):
        raise TypeError(f"settings of type {type(settings).__name__} have no cluster_key")
    return cast(tuple[object, ...], key)


class SourcePool:
    """One source per broker cluster per process, reference-counted by trigger (see module docs)."""

    def __init__(self, *, pod_ip: str | None = None) -> None:
        self._pod_ip = pod_ip
        self._sources: dict[tuple[object, ...], Source] = {}
        self._refs: dict[tuple[object, ...], int] = {}
        self._lock = asyncio.Lock()

    async def acquire(self, settings: TriggerSettings) -> Source:
        """The shared source for ``settings``' cluster; take one reference."""
        key = _cluster_key(settings)
        async with self._lock:
            source = self._sources.get(key)
            if source is None:
                source = open_source(settings, pod_ip=self._pod_ip)
                self._sources[key] = source
            self._refs[key] = self._refs.get(key, 0) + 1
            return source

    async def release(self, settings: TriggerSettings) -> None:
        """Drop one reference and the trigger's state; closes the connection at zero. Idempotent past zero."""
        key = _cluster_key(settings)
        async with self._lock:
            source = self._sources.get(key)
            if source is None:
                return
            forget = getattr(source, "forget", None)
            if callable(forget):
                forget(settings)
            self._refs[key] -= 1
            if self._refs[key] > 0:
                return
            del self._sources[key], self._refs[key]
        await source.close()

    def open_clusters(self) -> int:
        """How many clusters have a live source (for tests and the agent's status)."""
        return len(self._sources)

    async def close(self) -> None:
        async with self._lock:
            sources = list(self._sources.values())
            self._sources.clear()
            self._refs.clear()
        for source in sources:
            await source.close()


async def measure_safely(
    source: Source, settings: TriggerSettings, scope: Scope, *, clock: Callable[[], float] = time.monotonic
) -> Measurement | MeasurementFailure:
    """Measure, turning a failure into a :class:`MeasurementFailure` for the policy engine's fallback rule."""
    try:
        return await source.measure(settings, scope)
    except SourceError as error:
        return MeasurementFailure(trigger=settings.name, error=str(error), taken_at=clock())
