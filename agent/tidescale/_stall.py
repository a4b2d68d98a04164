"""The stall detector: a backlog that nobody consumes, although the pods are Ready.

Adding pods to a group stuck on a poison message, a dead downstream or a rebalance loop costs
money and fixes nothing; the policy holds the replica count instead while a stall lasts.
:func:`observe_stall` folds one :class:`~tidescale._rates.ProgressSnapshot` into the state:

- progress is any consumed counter (committed offset, ack count) moving forward between two
  successive snapshots; it clears a stall at once;
- the stall clock runs only while there is lag and the pods are Ready; without lag nothing is
  owed, and pods that are not Ready are starting or failing, which their own probes report;
  either resets the clock;
- once the clock has run ``stall_after`` seconds the group is stalled, naming the units with
  lag (partitions, queue); ``stall_after`` 0 turns the detector off.

A counter that went backwards (an offset reset) counts as progress: the consumers were moved,
and the clock starts again rather than calling that a stall. Pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from tidescale._rates import ProgressSnapshot

__all__ = ["MAX_NAMED_UNITS", "StallState", "observe_stall"]

MAX_NAMED_UNITS = 20
"""Most units a stall names (an Event message stays short whatever the topic count)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class StallState:
    stalled: bool = False
    since: float | None = None
    """When the clock started: the last progress, or when lag appeared with Ready pods."""
    units: tuple[str, ...] = ()
    """While stalled: the units with lag, sorted, at most MAX_NAMED_UNITS."""
    last_consumed: Mapping[str, int] = field(default_factory=dict)
    last_taken_at: float | None = None


def observe_stall(
    state: StallState, snapshot: ProgressSnapshot, *, pods_ready: bool, stall_after: float
) -> StallState:
    """The state after ``snapshot``; snapshots older than the last one seen are ignored."""
    if state.last_taken_at is not None and snapshot.taken_at < state.last_taken_at:
        return state
    now = snapshot.taken_at
    moved = _moved(state.last_consumed, snapshot.consumed)
    if stall_after <= 0 or not pods_ready or snapshot.backlog <= 0 or moved or state.since is None:
        return StallState(since=now, last_consumed=dict(snapshot.consumed), last_taken_at=now)
    if now - state.since < stall_after:
        return StallState(since=state.since, last_consumed=dict(snapshot.consumed), last_taken_at=now)
    waiting = sorted(unit for unit, lag in snapshot.lag.items() if math.isfinite(lag) and lag > 0)
    return StallState(
        stalled=True,
        since=state.since,
        units=tuple(waiting[:MAX_NAMED_UNITS]),
        last_consumed=dict(snapshot.consumed),
        last_taken_at=now,
    )


def _moved(before: Mapping[str, int], after: Mapping[str, int]) -> bool:
    return any(unit in before and after[unit] != before[unit] for unit in after)
