"""What a source folder gives the registry: one :class:`SourceKind`, built from cheap imports only.

Each source is a package ``tidescale/sources/<name>/`` whose ``__init__`` defines ``KIND``. The
``__init__`` imports the settings module (pure parsing) and nothing that talks to a broker: the
client (aiokafka, aio-pika, redis, ...) is imported by ``open`` the first time a connection opens,
so an agent pays only for the source its Deployment uses (the agent runs in every pod).
docs/sources.md walks through writing one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from tidescale.credentials import Credentials
from tidescale.sources._fields import FieldDoc
from tidescale.sources.base import Source, TriggerSettings

__all__ = ["AddressCheck", "Endpoint", "OpenOptions", "SettingsParser", "SourceKind"]

SettingsParser = Callable[[str, Mapping[str, str]], TriggerSettings]
"""``parse(trigger_name, {field: value})`` -> frozen settings, or HintsInvalid listing every bad field."""

AddressCheck = Callable[[str, int], Awaitable[str | None]]
"""``check(host, port)``: why a connection there is refused, or None to allow it (the waker's)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Endpoint:
    """One address a trigger makes the process connect to, and the field that names it."""

    field: str
    """The trigger field without prefix, e.g. ``bootstrap-servers``."""
    host: str
    port: int


@dataclass(frozen=True, kw_only=True, slots=True)
class OpenOptions:
    """How a source is opened: what the registry passes to :attr:`SourceKind.open`."""

    pod_ip: str | None = None
    """This pod's address, to find its own share of the work (its group member, its consumer)."""
    credentials: Credentials | None = None
    """The waker's, from the trigger's ``credentials-secret``: replace every ``*-env``/``*-file`` field."""
    address_check: AddressCheck | None = None
    """The waker's: vets each address before connecting (a source that learns more addresses from the
    server, as Kafka does, checks those too)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SourceKind:
    """One trigger type: its settings, their documentation, and how to open a source for them."""

    type_name: str
    """The trigger type in hints (``tidescale.io/<trigger>.type`` or the shorthand prefix)."""
    settings_class: type
    """The frozen dataclass ``parse`` returns; hashable, with a ``cluster_key`` property (triggers with
    equal keys share one connection) and a ``name`` (the trigger's name)."""
    fields: tuple[FieldDoc, ...]
    """Every field, in the order of the generated hints reference."""
    parse: SettingsParser
    open: Callable[[TriggerSettings, OpenOptions], Source]
    """A new, unshared source; nothing connects yet. Imports the client library here, not at top."""
    endpoints: Callable[[TriggerSettings], list[Endpoint]]
    """The addresses the waker would connect to for these settings (checked against its networks
    before any connection). An empty list for a source that connects nowhere (cron)."""
