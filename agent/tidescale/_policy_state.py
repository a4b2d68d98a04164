"""The policy engine's :class:`~tidescale.policy.History`, small and bounded, in an annotation.

Pure. The leader writes ``tidescale.io/policy-state`` together with ``tidescale.io/status``;
a new leader restores it, so a failover neither scales down before a stabilization window
ends, nor resets a cooldown, nor forgets failure counts (issue 12).

The engine's times are a monotonic clock, private to one process: the annotation holds ages
in milliseconds relative to the wall-clock time of the write, and a reader turns them back
into its own monotonic clock (node clock skew shifts them by that skew).

Bounded: only what can still count is kept. Recommendations outside both windows never
count again, and of those inside, one is dropped when a later one is at least as high (it
can never be the highest of a down window again) *and* a later one is at least as low (nor
the lowest of an up window): exact for the windows in force, at most one entry per distinct
count. Scale events older than the longest policy period never count again. Past
:data:`MAX_ITEMS` per list, the oldest go (documented in docs/policy.md). Anything unexpected
in the annotation (hostile or corrupt) is refused whole: the new leader starts empty and
logs why.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from tidescale.errors import TidescaleError
from tidescale.hints import Hints
from tidescale.parking import POLICY_STATE_ANNOTATION
from tidescale.policy import FailureCount, History, Recommendation, ScaleEvent

__all__ = [
    "MAX_ITEMS",
    "MAX_STATE_BYTES",
    "POLICY_STATE_ANNOTATION",
    "PolicyStateInvalid",
    "decode",
    "encode",
    "restore",
]

_log = logging.getLogger("tidescale.policy")

MAX_ITEMS = 64
"""Most entries kept per list (recommendations, scale-up events, scale-down events, failures)."""
MAX_STATE_BYTES = 8192
"""Longest annotation value read or written (4 lists x 64 entries fit well below it)."""
_VERSION = 1
_MAX_AGE_MS = 10 * 86400 * 1000
_MAX_COUNT = 10_000_000
_TRIGGER = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class PolicyStateInvalid(TidescaleError):
    """The annotation is not a state this version wrote; the message says what is wrong."""


def encode(history: History, *, hints: Hints, now: float, wall: float) -> str:
    """The annotation value for ``history`` at monotonic ``now`` and wall-clock ``wall``."""

    def age(at: float) -> int:
        return max(0, round((now - at) * 1000))

    window = max(hints.scale_up.stabilization, hints.scale_down.stabilization)
    recent = [r for r in history.recommendations if r.at >= now - window]
    longest = max((p.period for p in (*hints.scale_up.policies, *hints.scale_down.policies)), default=0.0)
    body = {
        "v": _VERSION,
        "w": round(wall, 3),
        "r": [[age(r.at), r.replicas] for r in _newest(_undominated(recent))],
        "u": [
            [age(e.at), e.change, int(e.outdated)]
            for e in _newest(_recent(history.scale_up_events, now, longest))
        ],
        "d": [
            [age(e.at), e.change, int(e.outdated)]
            for e in _newest(_recent(history.scale_down_events, now, longest))
        ],
        "f": [[f.trigger, f.count, age(f.at)] for f in history.failures[:MAX_ITEMS]],
        "a": None if history.last_active is None else age(history.last_active),
    }
    return json.dumps(body, separators=(",", ":"))


def decode(text: str, *, now: float, wall: float, observed_ago: float | None = None) -> tuple[History, float]:
    """The history an annotation holds, and how many seconds ago it was written by the wall
    clocks; raises :class:`PolicyStateInvalid` on anything this version did not write.

    ``observed_ago``: how long ago, on this process's monotonic clock, the reader first saw this
    very annotation value (None: not known). It cannot be longer ago than the write, so the
    history is placed no further back than that: a writer whose wall clock ran behind the
    reader's must not make the windows and the cooldown look older than they are (a park too
    early, a scale-down before its window ends). Ages are then at most underestimated: every
    window and cooldown lasts at least as long as it should."""
    if len(text) > MAX_STATE_BYTES:
        raise PolicyStateInvalid(f"{len(text)} characters: expected at most {MAX_STATE_BYTES}")
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise PolicyStateInvalid(f"not JSON ({exc})") from exc
    if not isinstance(body, dict) or body.get("v") != _VERSION:
        raise PolicyStateInvalid(f'expected a JSON object with "v": {_VERSION}')
    if set(body) != {"v", "w", "r", "u", "d", "f", "a"}:
        raise PolicyStateInvalid(f"unexpected keys {sorted(body)}: expected a, d, f, r, u, v, w")
    written = body["w"]
    if not isinstance(written, int | float) or isinstance(written, bool) or written != written:
        raise PolicyStateInvalid('"w" is not a time')
    elapsed = max(0.0, wall - float(written))  # a writer's clock ahead of ours: treat as written now
    shift = elapsed if observed_ago is None else min(elapsed, max(0.0, observed_ago))

    def at(age_ms: Any) -> float:
        return now - shift - _int(age_ms, 0, _MAX_AGE_MS, "an age") / 1000

    recommendations = tuple(
        Recommendation(at=at(a), replicas=_int(n, 0, _MAX_COUNT, "a replica count"))
        for a, n in _rows(body["r"], 2)
    )
    up, down = (
        tuple(
            ScaleEvent(
                at=at(a), change=_int(c, 1, _MAX_COUNT, "a change"), outdated=bool(_int(o, 0, 1, "a flag"))
            )
            for a, c, o in _rows(body[key], 3)
        )
        for key in ("u", "d")
    )
    failures = []
    for name, count, age_ms in _rows(body["f"], 3):
        if not isinstance(name, str) or not _TRIGGER.fullmatch(name):
            raise PolicyStateInvalid(f"{name!r} is not a trigger name")
        failures.append(
            FailureCount(trigger=name, count=_int(count, 1, _MAX_COUNT, "a count"), at=at(age_ms))
        )
    last_active = None if body["a"] is None else at(body["a"])
    history = History(
        recommendations=recommendations,
        scale_up_events=up,
        scale_down_events=down,
        failures=tuple(failures),
        last_active=last_active,
        seeded=True,
    )
    return history, elapsed


def restore(
    annotations: Mapping[str, str],
    *,
    hints: Hints,
    now: float,
    wall: float,
    observed_ago: float | None = None,
) -> History:
    """What a new leader starts with: the annotation's history, or an empty one (with a log line
    saying why) when there is none or it is refused. A state older than the cooldown (the
    Deployment was at zero, or leaderless for long) keeps all but last-active, which restarts
    now as a fresh leader's does: KEDA sets lastActiveTime when it scales from zero.

    A state whose writer was active when it wrote (last active less than half a polling interval
    before the write: at the tick that wrote it) says less than it seems: the leader writes on
    change and on a slow heartbeat, and the turn from active to idle is a change it writes, so
    its absence means the triggers stayed active while the old leader lived. That leader was
    alive (renewing) until at most one lease
    duration ago, so last-active is taken as no earlier than that. ``observed_ago``: see
    :func:`decode`."""
    text = annotations.get(POLICY_STATE_ANNOTATION)
    if text is None:
        return History()
    try:
        history, elapsed = decode(text, now=now, wall=wall, observed_ago=observed_ago)
    except PolicyStateInvalid as exc:
        _log.warning("ignoring %s (%s): starting with empty windows and counts", POLICY_STATE_ANNOTATION, exc)
        return History()
    shift = elapsed if observed_ago is None else min(elapsed, max(0.0, observed_ago))
    active_at_write = (
        history.last_active is not None and now - shift - history.last_active < hints.polling_interval / 2
    )
    if elapsed > hints.cooldown:
        history = replace(history, last_active=now)
    elif active_at_write and history.last_active is not None:
        history = replace(history, last_active=max(history.last_active, now - hints.lease.duration))
    _log.info(
        "restored policy state written %.1fs ago: %d recommendations, %d scale events, last active %s",
        elapsed,
        len(history.recommendations),
        len(history.scale_up_events) + len(history.scale_down_events),
        "never" if history.last_active is None else f"{now - history.last_active:.1f}s ago",
    )
    return history


def _undominated(recs: Sequence[Recommendation]) -> list[Recommendation]:
    """Drop a recommendation when a later one is as high or higher and a later one as low or lower."""
    kept: list[Recommendation] = []
    highest_after = lowest_after = None
    for rec in sorted(recs, key=lambda r: r.at, reverse=True):
        top = highest_after is None or rec.replicas > highest_after
        bottom = lowest_after is None or rec.replicas < lowest_after
        if top or bottom:
            kept.append(rec)
        highest_after = rec.replicas if highest_after is None else max(highest_after, rec.replicas)
        lowest_after = rec.replicas if lowest_after is None else min(lowest_after, rec.replicas)
    return sorted(kept, key=lambda r: r.at)


def _recent(events: Sequence[ScaleEvent], now: float, longest: float) -> list[ScaleEvent]:
    return [e for e in events if e.at > now - longest]


def _newest(items: Sequence[Any]) -> list[Any]:
    ordered = sorted(items, key=lambda item: item.at)
    return ordered[-MAX_ITEMS:]


def _rows(value: Any, width: int) -> list[list[Any]]:
    if not isinstance(value, list) or len(value) > MAX_ITEMS:
        raise PolicyStateInvalid(f"expected a list of at most {MAX_ITEMS} entries")
    for row in value:
        if not isinstance(row, list) or len(row) != width:
            raise PolicyStateInvalid(f"expected entries of {width} values, got {row!r:.40}")
    return value


def _int(value: Any, low: int, high: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise PolicyStateInvalid(f"{value!r:.40} is not {what} from {low} to {high}")
    return value
