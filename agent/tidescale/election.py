"""The Lease elector: one leader among the agents of a Deployment, and fenced writes.

One ``coordination.k8s.io/v1`` Lease per Deployment (:func:`lease_name`), the pod name
as ``holderIdentity``, client-go's rules (see ``decide``), plus what client-go lacks:
release on cancel, followers that watch instead of poll, and a fence for writes.

Why two agents never write in one term
--------------------------------------
A term begins with a successful write of the Lease naming its holder (create, take
over, or the first renewal after restart) and is identified by :class:`Term`.

1. The holder counts its hold from the moment it *sent* its last successful renewal,
   S, on its own monotonic clock, and believes it leads only while
   ``now < S + renew_deadline`` (:func:`holds`). The API server applied that renewal
   at some real time W >= S.
2. Another agent takes over only with an update carrying the resourceVersion of the
   record it observed, so it succeeds only if that record is still current: it must be
   the holder's last successful write, received at O >= W. It sends the update only
   once ``lease_duration`` has passed on its own monotonic clock since O.
3. With clock rates within a factor (1 +- rho) of real time, the holder's belief ends
   by S + renew_deadline / (1 - rho) and the taker's begins no earlier than
   W + lease_duration / (1 + rho). Since S <= W, the two never overlap as long as
   ``renew_deadline / (1 - rho) < lease_duration / (1 + rho)``: rho < 20 % with the
   defaults (15 s / 10 s). Wall clocks (renewTime) play no part; only the rates of
   the monotonic clocks do. A released Lease (no holder) is taken at once, but its
   holder stopped believing before it sent the release.
4. :meth:`LeaseElector.fenced` starts a write only while the hold is provable and
   cancels it when the hold ends, so every write is sent inside its term. A write sent
   inside the term can still be applied by the API server later; the gap between the
   end of one belief and the start of the next (lease_duration - renew_deadline, 5 s
   by default) absorbs that, and the scale write's own resourceVersion precondition
   (read inside the term) turns any remaining straggler into a 409 for the next leader
   rather than a lost update.

``tests/unit/test_election_properties.py`` checks points 1-3 by simulation with
random delays, lost answers and drifting clocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import TypeVar

from tidescale import _wallclock
from tidescale.errors import HintError, KubeConflict, KubeError, KubeNotFound, LeadershipLost
from tidescale.kube import KubeClient, Lease, LeaseSpec, format_micro_time, parse_time

__all__ = [
    "Action",
    "Decision",
    "LeaseElector",
    "LeaseRecord",
    "LeaseTiming",
    "Term",
    "decide",
    "holds",
    "lease_name",
    "next_spec",
    "released_spec",
]

_log = logging.getLogger("tidescale.election")
_T = TypeVar("_T")


def lease_name(deployment: str) -> str:
    """The name of the Lease the agents of ``deployment`` elect their leader with."""
    return f"tidescale-{deployment}"[:253]


@dataclass(frozen=True, kw_only=True, slots=True)
class LeaseTiming:
    """client-go's three durations, in seconds, with its validity rule."""

    duration: float = 15.0
    """How long a follower waits, after it last saw the record change, before taking over."""
    renew_deadline: float = 10.0
    """How long the leader believes it leads after sending its last successful renewal."""
    retry_period: float = 2.0
    """How often the leader renews, and how long a follower waits after a failed attempt."""

    def __post_init__(self) -> None:
        if not self.retry_period > 0:
            raise HintError("tidescale.io/lease-retry-period", str(self.retry_period), "a duration above 0")
        if not self.renew_deadline > 1.2 * self.retry_period:
            raise HintError(
                "tidescale.io/lease-renew-deadline",
                str(self.renew_deadline),
                f"more than 1.2 x lease-retry-period ({1.2 * self.retry_period:g}s)",
            )
        if not self.duration > self.renew_deadline:
            raise HintError(
                "tidescale.io/lease-duration",
                str(self.duration),
                f"more than lease-renew-deadline ({self.renew_deadline:g}s)",
            )

    @property
    def duration_seconds(self) -> int:
        """leaseDurationSeconds is whole seconds: round up, never below what the holder assumes."""
        return math.ceil(self.duration)


@dataclass(frozen=True, kw_only=True, slots=True)
class LeaseRecord:
    """What a Lease says, as the elector reads it."""

    holder: str | None
    duration_seconds: int
    acquire_time: datetime | None
    renew_time: datetime | None
    transitions: int
    resource_version: str

    @classmethod
    def from_lease(cls, lease: Lease) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return cls(
            holder=spec.get("holderIdentity") or None,
            duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=parse_time(spec.get("acquireTime")),
            renew_time=parse_time(spec.get("renewTime")),
            transitions=int(spec.get("leaseTransitions") or 0),
            resource_version=str((lease.get("metadata") or {}).get("resourceVersion") or ""),
        )

    def same_content(self, other: LeaseRecord | None) -> bool:
        """Whether ``other`` holds the same spec: client-go's test for "the record changed"."""
        return (
            other is not None
            and self.holder == other.holder
            and self.duration_seconds == other.duration_seconds
            and self.acquire_time == other.acquire_time
            and self.renew_time == other.renew_time
            and self.transitions == other.transitions
        )


class Action(Enum):
    CREATE = "create"
    """No Lease yet: create it naming us."""
    ACQUIRE = "acquire"
    """Free or expired: take it over (a new term, transitions + 1)."""
    RENEW = "renew"
    """It names us: renew it (keeping acquireTime and transitions)."""
    WAIT = "wait"
    """Someone else holds it: wait until ``until`` or until the record changes."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    action: Action
    until: float | None = None
    """For WAIT: the monotonic time at which the holder's lease expires, as we see it."""


def decide(record: LeaseRecord | None, *, identity: str, observed_at: float, now: float) -> Decision:
    """client-go's tryAcquireOrRenew, without the I/O.

    ``observed_at`` is when (our monotonic clock) we first saw ``record``'s content; the
    record's own leaseDurationSeconds applies, so a released Lease (duration 1 s, no
    holder) is free at once whatever our own settings are.
    """
    if record is None:
        return Decision(action=Action.CREATE)
    if record.holder == identity:
        return Decision(action=Action.RENEW)
    expires = observed_at + record.duration_seconds
    if record.holder and now < expires:
        return Decision(action=Action.WAIT, until=expires)
    return Decision(action=Action.ACQUIRE)


def next_spec(record: LeaseRecord | None, *, identity: str, timing: LeaseTiming, now: datetime) -> LeaseSpec:
    """The spec to write for CREATE, ACQUIRE or RENEW at wall-clock ``now`` (stored in UTC)."""
    stamp = format_micro_time(now)
    ours = record is not None and record.holder == identity
    acquired = record.acquire_time if ours and record is not None and record.acquire_time else None
    transitions = 0 if record is None else record.transitions + (0 if ours else 1)
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": timing.duration_seconds,
        "acquireTime": format_micro_time(acquired) if acquired else stamp,
        "renewTime": stamp,
        "leaseTransitions": transitions,
    }


def released_spec(record: LeaseRecord, *, now: datetime) -> LeaseSpec:
    """client-go's ReleaseOnCancel record: no holder, 1 s, so any follower takes over at once."""
    stamp = format_micro_time(now)
    return {
        "holderIdentity": None,
        "leaseDurationSeconds": 1,
        "acquireTime": stamp,
        "renewTime": stamp,
        "leaseTransitions": record.transitions,
    }


def holds(*, renewed_at: float | None, now: float, renew_deadline: float) -> bool:
    """Provably held: less than ``renew_deadline`` since the last successful renewal was sent."""
    return renewed_at is not None and now < renewed_at + renew_deadline


def _newer(candidate: str, current: str) -> bool:
    """Whether resourceVersion ``candidate`` may replace ``current`` (watch events can lag a write).

    resourceVersions are opaque to clients, but every API server backed by etcd sends
    its revision: compare those as numbers and otherwise accept any different value.
    """
    if candidate.isdigit() and current.isdigit():
        return int(candidate) > int(current)
    return candidate != current


@dataclass(frozen=True, kw_only=True, slots=True)
class Term:
    """One holder's uninterrupted leadership, as fenced writes name it."""

    holder: str
    transitions: int
    resource_version: str
    """The Lease's resourceVersion written when the term began."""


class LeaseElector:
    """Takes part in the election for one Lease until :meth:`run` is cancelled.

    ``on_started_leading`` and ``on_stopped_leading`` are called (synchronously, on the
    event loop) with the term that starts or ends. ``release_on_cancel=False`` leaves the
    Lease to expire, as a crashed agent would (tests use it).
    """

    def __init__(
        self,
        client: KubeClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        timing: LeaseTiming | None = None,
        on_started_leading: Callable[[Term], object] | None = None,
        on_stopped_leading: Callable[[Term], object] | None = None,
        release_on_cancel: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing or LeaseTiming()
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._release_on_cancel = release_on_cancel
        self._clock = clock
        self._record: LeaseRecord | None = None
        self._known = False
        self._observed_at = 0.0
        self._term: Term | None = None
        self._renewed_at: float | None = None
        self._last_try = -math.inf
        self._changed = asyncio.Event()
        self._leading = asyncio.Event()

    # -- what others ask --

    def is_leader(self) -> bool:
        """True only while the lease is provably held (see the module docstring)."""
        return self._term is not None and holds(
            renewed_at=self._renewed_at, now=self._clock(), renew_deadline=self.timing.renew_deadline
        )

    def term(self) -> Term | None:
        """The current term while provably held, else ``None``."""
        return self._term if self.is_leader() else None

    @property
    def record(self) -> LeaseRecord | None:
        """The Lease as last seen (from our writes or the watch)."""
        return self._record

    async def wait_leading(self) -> Term:
        """Returns the term once this elector leads."""
        while True:
            await self._leading.wait()
            term = self.term()
            if term is not None:
                return term
            # Leading but no longer provably: the loop is about to notice; look again shortly.
            await asyncio.sleep(self.timing.retry_period / 4)

    async def fenced(self, write: Callable[[], Awaitable[_T]], *, term: Term | None = None) -> _T:
        """Runs ``write()`` only while the lease is provably held (in ``term``, if given).

        The write is cancelled when the hold would end; it then raises LeadershipLost,
        and the caller cannot know whether the API server applied it.
        """
        now = self._clock()
        current = self.term()
        if current is None or (term is not None and term != current) or self._renewed_at is None:
            raise LeadershipLost(
                f"{self.identity} does not hold lease {self.namespace}/{self.name}"
                + ("" if term is None else f" in term {term.transitions} ({term.holder})")
            )
        remaining = self._renewed_at + self.timing.renew_deadline - now
        scope = asyncio.timeout(remaining)
        try:
            async with scope:
                return await write()
        except TimeoutError as exc:
            if not scope.expired():
                raise
            raise LeadershipLost(
                f"a fenced write by {self.identity} did not finish while lease "
                f"{self.namespace}/{self.name} was provably held"
            ) from exc

    # -- the loop --

    async def run(self) -> None:
        """Campaigns, leads and follows until cancelled; then releases the Lease if held."""
        watch = asyncio.create_task(self._watch(), name=f"lease-watch-{self.name}")
        try:
            while True:
                await self._step()
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
            await self._release()

    async def _step(self) -> None:
        self._changed.clear()
        now = self._clock()
        timing = self.timing
        if self._term is not None and not holds(
            renewed_at=self._renewed_at, now=now, renew_deadline=timing.renew_deadline
        ):
            self._stop_leading(f"no renewal succeeded within {timing.renew_deadline:g}s")
        if not self._known:
            if not await self._refresh():
                await asyncio.sleep(timing.retry_period)
            return
        if self._term is not None:
            due = self._last_try + timing.retry_period
            if now < due:
                await self._wait_change(due - now)
            else:
                await self._write(Action.RENEW)
            return
        decision = decide(self._record, identity=self.identity, observed_at=self._observed_at, now=now)
        if decision.action is Action.WAIT:
            assert decision.until is not None
            await self._wait_change(decision.until - now)
            return
        # A failed attempt (not a lost race, which refreshes the record) waits a retry period.
        due = self._last_try + timing.retry_period
        if now < due:
            await self._wait_change(due - now)
            return
        await self._write(decision.action)

    async def _wait_change(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout=max(seconds, 0.0))

    async def _write(self, action: Action) -> None:
        record = self._record
        spec = next_spec(record, identity=self.identity, timing=self.timing, now=_wallclock.now())
        sent = self._clock()
        self._last_try = sent
        try:
            async with asyncio.timeout(self.timing.renew_deadline):
                if action is Action.CREATE or record is None:
                    lease = await self._client.create_lease(self.namespace, self.name, spec)
                else:
                    lease = await self._client.update_lease(
                        self.namespace, self.name, spec, resource_version=record.resource_version
                    )
        except KubeConflict:
            # Lost a race or renewed a stale copy: read the Lease again and decide afresh.
            self._last_try = -math.inf
            self._known = False
            return
        except (KubeError, TimeoutError) as exc:
            _log.warning("%s lease %s/%s failed: %s", action.value, self.namespace, self.name, exc)
            return
        written = LeaseRecord.from_lease(lease)
        self._observe(written)
        self._renewed_at = sent
        if self._term is None:
            self._term = Term(
                holder=self.identity,
                transitions=written.transitions,
                resource_version=written.resource_version,
            )
            self._leading.set()
            _log.info(
                "%s leads %s/%s (transitions %d)",
                self.identity,
                self.namespace,
                self.name,
                written.transitions,
            )
            if self._on_started is not None:
                self._on_started(self._term)

    async def _refresh(self) -> bool:
        try:
            lease = await self._client.get_lease(self.namespace, self.name)
        except KubeNotFound:
            self._observe(None)
            return True
        except KubeError as exc:
            _log.warning("reading lease %s/%s failed: %s", self.namespace, self.name, exc)
            return False
        self._observe(LeaseRecord.from_lease(lease), force=True)
        return True

    def _observe(self, record: LeaseRecord | None, *, force: bool = False) -> None:
        """Takes in a newer view of the Lease (from a read, our own write or the watch)."""
        current = self._record
        if (
            not force
            and record is not None
            and current is not None
            and not _newer(record.resource_version, current.resource_version)
        ):
            return  # a watch event older than what our own write already told us
        if record is None or not record.same_content(current):
            self._observed_at = self._clock()
        self._record = record
        self._known = True
        if self._term is not None and (record is None or record.holder != self.identity):
            holder = "nobody" if record is None else (record.holder or "nobody")
            self._stop_leading(f"the lease now names {holder}")
        self._changed.set()

    def _stop_leading(self, why: str) -> None:
        term, self._term, self._renewed_at = self._term, None, None
        self._leading.clear()
        if term is None:
            return
        _log.info("%s stopped leading %s/%s: %s", self.identity, self.namespace, self.name, why)
        if self._on_stopped is not None:
            self._on_stopped(term)

    async def _watch(self) -> None:
        """Follows the Lease so that a release or a change is seen at once, without polling."""
        while True:
            try:
                async with contextlib.aclosing(self._client.watch_lease(self.namespace, self.name)) as events:
                    async for kind, lease in events:
                        self._observe(None if kind == "DELETED" else LeaseRecord.from_lease(lease))
            except KubeError as exc:
                # Without the watch the elector still works, by timers and 409s: keep trying.
                _log.warning("watching lease %s/%s failed: %s", self.namespace, self.name, exc)
                await asyncio.sleep(self.timing.duration)

    async def _release(self) -> None:
        """Stops leading first (no fenced write can start after), then frees the Lease."""
        self._stop_leading("released" if self._release_on_cancel else "stopped")
        record = self._record
        if not self._release_on_cancel or record is None or record.holder != self.identity:
            return
        try:
            async with asyncio.timeout(self.timing.renew_deadline):
                lease = await self._client.update_lease(
                    self.namespace,
                    self.name,
                    released_spec(record, now=_wallclock.now()),
                    resource_version=record.resource_version,
                )
            self._record = LeaseRecord.from_lease(lease)
            _log.info("%s released %s/%s", self.identity, self.namespace, self.name)
        except (KubeError, TimeoutError) as exc:
            _log.warning("releasing lease %s/%s failed (it will expire): %s", self.namespace, self.name, exc)
