"""The contract between event sources and everything that uses their numbers.

A source turns a trigger's settings into a :class:`Measurement`: the metric the
policy engine scales on (1 <-> N) kept apart from whether the trigger is active
(0 <-> 1), the same split KEDA's scalers make. The arithmetic of each source is a
pure function of a broker snapshot and the settings; the I/O that takes the
snapshot lives beside it, behind :class:`Source`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol, TypeVar, runtime_checkable

from tidescale._rates import ProgressSnapshot
from tidescale.errors import SourceError, SourceTimeout

__all__ = [
    "Measurement",
    "MeasurementFailure",
    "MeasurementWarning",
    "Scope",
    "Source",
    "TriggerSettings",
    "within_timeout",
]

_T = TypeVar("_T")


class Scope(Enum):
    """What a measurement covers."""

    LOCAL = "local"
    """Only what this pod consumes (its group member's partitions, its consumer's share)."""
    GROUP = "group"
    """Everything the trigger names, whoever consumes it (leader gap filling, the waker)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MeasurementWarning:
    """Something a person should know about a reading that still counts (a queue-pattern matching
    no queue reads 0): the leader and the waker make it a Warning Event on the Deployment when it
    appears or changes, not once per poll. The message names hint values, never a credential."""

    reason: str
    """The Event's reason, CamelCase (``NoQueueMatched``)."""
    message: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Measurement:
    """One successful reading of one trigger."""

    trigger: str
    """The trigger's name in the hints (``kafka`` for the single-trigger shorthand)."""
    value: float
    """The metric: total lag, queue length or message rate."""
    target: float
    """Per-replica target for ``value`` (AverageValue): desired = ceil(value / target)."""
    active: bool
    """Whether the trigger wants at least one replica (value above the activation threshold)."""
    replica_cap: int | None = None
    """Most replicas that can do useful work (Kafka: partitions), or None for no cap."""
    detail: Mapping[str, float] = field(default_factory=dict)
    """Per-unit values, e.g. ``{"orders/3": 120}`` (topic/partition -> lag)."""
    taken_at: float
    """When the snapshot was taken, in seconds of the caller's monotonic clock."""
    warnings: tuple[MeasurementWarning, ...] = ()
    """What the reading's person should be told (see :class:`MeasurementWarning`)."""
    progress: ProgressSnapshot | None = None
    """The counters behind a group-wide reading (Kafka offsets, RabbitMQ ack and publish counts),
    built from what the source already read, for the leader's rate estimator and stall detector;
    None for sources without such counters and for one pod's own (LOCAL) reading."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MeasurementFailure:
    """A reading that failed; the policy engine counts these for the fallback rule."""

    trigger: str
    error: str
    """What went wrong, worded for a person (the SourceError's message)."""
    taken_at: float


class TriggerSettings(Protocol):
    """Typed, frozen settings of one trigger, parsed from hint strings."""

    @property
    def name(self) -> str: ...


@runtime_checkable
class Source(Protocol):
    """A live connection to one broker that measures triggers."""

    async def measure(self, settings: TriggerSettings, scope: Scope) -> Measurement:
        """Take a snapshot and compute the measurement; raises a SourceError on failure."""
        ...

    async def close(self) -> None:
        """Release every connection; measuring afterwards is an error."""
        ...


async def within_timeout(
    snapshot: Awaitable[_T], *, trigger: str, seconds: float, waiting_for: str, advice: str
) -> _T:
    """Awaits a broker snapshot within the trigger's timeout. Every failure names the trigger;
    a timeout says what was awaited (which broker, which group or queue) and what to check."""
    try:
        async with asyncio.timeout(seconds):
            return await snapshot
    except TimeoutError as exc:
        raise SourceTimeout(
            f"{waiting_for} did not answer within {seconds:g}s: {advice}", trigger=trigger
        ) from exc
    except SourceError as exc:
        if exc.trigger is None:
            raise type(exc)(str(exc), trigger=trigger) from exc
        raise
