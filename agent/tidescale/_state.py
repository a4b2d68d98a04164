"""What the leader says about its Deployment at a glance: ``heldBy`` and the state label. Pure.

``tidescale.io/state`` (for ``kubectl get deploy -L tidescale.io/state``):

* ``scaling``: tidescale follows the triggers (a change is being made, or none is needed);
* ``holding``: a stabilization window, a scaling policy or a stalled consumer group keeps the count
  from the recommendation, for more than one poll in a row (a cap that lasts a single poll, as
  between the steps of a rate-limited scale-up, is part of scaling: it would flip the label, a
  Deployment write, twice per step);
* ``parked``: handed to the waker (a park under way, or at zero);
* ``waking``: woken from zero, pods still starting;
* ``error``: the hints do not parse, or every trigger fails to measure.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from tidescale.hints import Hints
from tidescale.policy import Decision, Limit
from tidescale.sources.base import Measurement, MeasurementFailure

__all__ = ["STATES", "STATE_LABEL", "State", "held_by", "holds_count", "state_of"]

STATE_LABEL = "tidescale.io/state"
State = Literal["scaling", "holding", "parked", "waking", "error"]
STATES: tuple[State, ...] = ("scaling", "holding", "parked", "waking", "error")

_WINDOWS = (Limit.SCALE_UP_STABILIZATION, Limit.SCALE_DOWN_STABILIZATION)
_POLICIES = (
    Limit.SCALE_UP_POLICY,
    Limit.SCALE_DOWN_POLICY,
    Limit.SCALE_UP_LIMIT,
    Limit.SCALE_UP_DISABLED,
    Limit.SCALE_DOWN_DISABLED,
)


def _kind(limit: Limit) -> Literal["window", "policy", "limit"]:
    return "window" if limit in _WINDOWS else "policy" if limit in _POLICIES else "limit"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def held_by(decision: Decision, hints: Hints, *, now: float, wall: datetime) -> dict[str, Any] | None:
    """``heldBy`` of the status annotation: what held or capped the last decision, and until when.

    ``{"kind": "window" | "policy" | "limit", "by": "scale-down stabilization 5m", "until": ISO}``.
    ``until`` is given for the stabilization windows (when the recommendation holding the count
    leaves the window, if nothing new arrives); a policy or a bound holds as long as it applies.
    ``now`` is the engine's clock (``decision.history`` is on it), ``wall`` the same moment in UTC.
    """
    cap = decision.capped_by
    if cap is None:
        return None
    kind = _kind(cap.limit)
    held: dict[str, Any] = {"kind": kind, "by": str(cap)}
    if kind == "window":
        up = cap.limit is Limit.SCALE_UP_STABILIZATION
        window = hints.scale_up.stabilization if up else hints.scale_down.stabilization
        holding = [
            rec.at
            for rec in decision.history.recommendations
            if (rec.replicas <= decision.desired if up else rec.replicas >= decision.desired)
            and rec.at > now - window
        ]
        if holding:
            held["until"] = _iso(wall + timedelta(seconds=max(holding) + window - now))
    return held


def holds_count(decision: Decision | None, current: int, hints: Hints | None = None) -> bool:
    """Whether a window, a policy or a stall (not a bound) kept ``current`` from the recommendation.

    With ``hints``, a window or policy that only kept what the bounds would have kept anyway
    does not count (min = max = 1 under light load: the down window "holds" 1 against a
    recommendation of 0 that min-replicas lifts to 1 all the same; the label would flip at every
    poll whose lag crosses zero)."""
    cap = decision.capped_by if decision is not None else None
    if cap is None or decision is None or decision.desired != current:
        return False
    if cap.limit is Limit.CONSUMER_STALLED:
        return True  # the count is held against what the triggers ask, for as long as the stall lasts
    if _kind(cap.limit) == "limit":
        return False
    if hints is None or hints.scaling_modifiers is not None:
        return True  # a formula combines the triggers its own way: trust the engine's cap
    opinions = [rec.replicas for rec in decision.recommendations if rec.state != "failing"]
    if not opinions:
        return True
    floor = max(hints.min_replicas, 1)  # while running, zero is the waker's
    return min(max(max(opinions), floor), hints.max_replicas) != decision.desired


def state_of(
    *,
    hints_valid: bool,
    readings: Sequence[Measurement | MeasurementFailure],
    decision: Decision | None,
    current: int,
    ready: int | None,
    parking: bool,
    previous: str | None,
    held_last_tick: bool = True,
    hints: Hints | None = None,
) -> State:
    """The state label's value after one leader tick. ``held_last_tick``: whether the previous
    tick's decision was held too (:func:`holds_count`); holding needs two in a row. ``hints``:
    see :func:`holds_count`."""
    if not hints_valid or (readings and all(isinstance(r, MeasurementFailure) for r in readings)):
        return "error"
    if parking or current == 0:
        return "parked"
    if previous in ("parked", "waking") and (ready is None or ready < 1):
        return "waking"
    if holds_count(decision, current, hints) and held_last_tick:
        return "holding"
    return "scaling"
