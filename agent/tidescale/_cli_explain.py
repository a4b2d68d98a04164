"""``tidescale explain NS/DEPLOYMENT [--what-if TRIGGER=VALUE,...]``: why N replicas, and what next.

Reads the same objects as ``status`` and says, for a person in a hurry: each
trigger's value and target and the replicas it asks for, what the last change was and
why, which window or policy holds the count and until when, the park state and its
epoch, and what the policy engine would decide now. ``--what-if`` replays
:func:`tidescale.policy.decide` offline with other trigger values: the live hints,
the live count, and the history the leader persisted (``tidescale.io/policy-state``)
or, without it, the history rebuilt from the last change.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tidescale._cli_kube import add_kube_arguments, connect
from tidescale._cli_status import fetch_views
from tidescale._cli_view import DeploymentView, format_age, parse_moment
from tidescale.errors import HintsInvalid, KubeNotFound, TidescaleError
from tidescale.hints import Hints, parse_hints

__all__ = ["Replay", "explain_text", "main", "parse_what_if", "replay"]

POLICY_STATE_ANNOTATION = "tidescale.io/policy-state"

EXAMPLES = """\
examples:
  # why is shop/orders at its count, and what will it do next?
  tidescale explain shop/orders

  # the namespace from -n (or the context) and the name alone
  tidescale explain -n shop orders

  # what would the policy do if the lag were 5000? (offline: nothing is written)
  tidescale explain shop/orders --what-if kafka=5000

  # two triggers at once, one of them failing
  tidescale explain shop/orders --what-if orders=0,refunds=error
"""


def parse_what_if(text: str) -> dict[str, float | None]:
    """``kafka=500,refunds=error`` -> {kafka: 500.0, refunds: None (a failed measurement)}."""
    values: dict[str, float | None] = {}
    for item in text.split(","):
        name, equals, value = item.strip().partition("=")
        name, value = name.strip(), value.strip()
        if not equals or not name or not value:
            raise ValueError(f"--what-if {text!r}: expected TRIGGER=VALUE[,TRIGGER=VALUE...], e.g. kafka=500")
        if value.lower() == "error":
            values[name] = None
            continue
        try:
            number = float(value)
        except ValueError as exc:
            raise ValueError(
                f"--what-if {name}={value!r}: expected a number (or 'error' for a failed measurement)"
            ) from exc
        if number < 0 or number != number or number in (float("inf"), float("-inf")):
            raise ValueError(f"--what-if {name}={value!r}: expected a number of 0 or more")
        values[name] = number
    return values


@dataclass(frozen=True, kw_only=True, slots=True)
class Replay:
    desired: int
    reason: str
    wants_zero: bool
    capped_by: str | None
    """What held or capped the count, in words."""
    history_source: str
    per_trigger: tuple[tuple[str, str], ...]
    """(trigger, what it asked for) in words."""


def _target_of(settings: Any) -> float | None:
    for attribute in ("lag_threshold", "value", "target"):
        number = getattr(settings, attribute, None)
        if isinstance(number, int | float) and not isinstance(number, bool):
            return float(number)
    return None


def _activation_of(settings: Any) -> float:
    for attribute in ("activation_lag_threshold", "activation_value", "activation"):
        number = getattr(settings, attribute, None)
        if isinstance(number, int | float) and not isinstance(number, bool):
            return float(number)
    return 0.0


def _persisted_history(annotations: Mapping[str, str], now: float) -> tuple[Any | None, str]:
    """The history the leader persisted (``tidescale.io/policy-state``), read with the agent's own
    decoder on the wall clock (``now`` is wall-clock seconds here); None and why when there is none."""
    text = annotations.get(POLICY_STATE_ANNOTATION)
    if not text:
        return None, "the leader persisted none"
    from tidescale._policy_state import PolicyStateInvalid, decode

    try:
        history, elapsed = decode(text, now=now, wall=now)
    except PolicyStateInvalid as exc:
        return None, f"{POLICY_STATE_ANNOTATION} unreadable: {exc}"
    return history, f"persisted by the leader {format_age(elapsed)} ago"


def _rebuilt_history(view: DeploymentView, now: float, wall: datetime) -> Any:
    """What the leader's history must at least hold: its last change (a scale event and that
    recommendation) and, with a trigger active now, activity now. Built from whichever fields
    the engine's History has, so it follows the engine's own shape."""
    from dataclasses import fields

    from tidescale.policy import History, Recommendation, ScaleEvent

    names = {f.name for f in fields(History)}
    change = view.last_change
    values: dict[str, Any] = {"last_active": now}
    if change is not None and change.at is not None and change.after is not None:
        at = now - (wall - change.at).total_seconds()
        values["recommendations"] = (Recommendation(at=at, replicas=change.after),)
        if "seeded" in names:
            values["seeded"] = True
        step = 0 if change.before is None else change.after - change.before
        if step and "scale_up_events" in names:
            key = "scale_up_events" if step > 0 else "scale_down_events"
            values[key] = (ScaleEvent(at=at, change=abs(step)),)
        elif step and "scale_events" in names:
            values["scale_events"] = (ScaleEvent(at=at, change=step),)
        if not any(t.active for t in view.triggers):
            values["last_active"] = at
    return History(**{k: v for k, v in values.items() if k in names})


def replay(
    view: DeploymentView,
    hints: Hints,
    *,
    wall: datetime,
    overrides: Mapping[str, float | None] | None = None,
) -> Replay:
    """:func:`tidescale.policy.decide` now, on the status' readings (or ``overrides``). Pure."""
    from tidescale._drain import DrainRecommendation
    from tidescale.policy import decide
    from tidescale.sources.base import Measurement, MeasurementFailure

    now = wall.timestamp()
    settings = {s.name: s for s in hints.triggers}
    unknown = sorted(set(overrides or {}) - set(settings))
    if unknown:
        known = ", ".join(sorted(settings)) or "none"
        raise ValueError(
            f"--what-if names trigger(s) {', '.join(unknown)}: this Deployment's triggers are {known}"
        )
    readings: list[Measurement | MeasurementFailure] = []
    seen = {t.name: t for t in view.triggers}
    for name, trigger_settings in settings.items():
        shown = seen.get(name)
        if overrides is not None and name in overrides:
            value = overrides[name]
            if value is None:
                readings.append(MeasurementFailure(trigger=name, error="failing (what-if)", taken_at=now))
                continue
            target = (shown.target if shown and shown.target else None) or _target_of(trigger_settings)
            if target is None:
                raise ValueError(f"trigger {name}: no target known (no status yet and none in its hints)")
            active = value > _activation_of(trigger_settings)
            readings.append(
                Measurement(trigger=name, value=value, target=target, active=active, taken_at=now)
            )
        elif shown is None or shown.error is not None:
            error = shown.error if shown and shown.error else "no measurement in the status annotation"
            readings.append(MeasurementFailure(trigger=name, error=error, taken_at=now))
        else:
            readings.append(
                Measurement(
                    trigger=name,
                    value=shown.value or 0.0,
                    target=shown.target or _target_of(trigger_settings) or 1.0,
                    active=bool(shown.active),
                    taken_at=now,
                )
            )
    history, source = _persisted_history(view.annotations, now)
    if history is None:
        history = _rebuilt_history(view, now, wall)
        source = f"rebuilt from the last change ({source})"
    # A drain-time trigger's count is the leader's last estimate (its rates are not in the status to
    # recompute from); a what-if value for it replays the threshold arithmetic instead.
    drain = {
        t.name: DrainRecommendation(replicas=t.drain_replicas, measured=True, clears_in=None, reason=t.drain)
        for t in view.triggers
        if t.drain is not None and t.drain_replicas is not None and t.name not in (overrides or {})
    }
    decision = decide(
        readings, current=view.spec_replicas, hints=hints, now=now, history=history, drain=drain
    )
    per_trigger = []
    for recommendation in decision.recommendations:
        if recommendation.state == "ok":
            words = f"{recommendation.replicas}"
            if recommendation.within_tolerance:
                words += " (within tolerance)"
            if recommendation.capped is not None:
                words += f" (capped at {recommendation.capped})"
        else:
            words = f"{recommendation.state}: {recommendation.error} -> {recommendation.replicas}"
        per_trigger.append((recommendation.trigger, words))
    return Replay(
        desired=decision.desired,
        reason=decision.reason,
        wants_zero=decision.wants_zero,
        capped_by=None if decision.capped_by is None else str(decision.capped_by),
        history_source=source,
        per_trigger=tuple(per_trigger),
    )


def _ago(wall: datetime, moment: datetime | None) -> str:
    return "at an unknown time" if moment is None else f"{format_age((wall - moment).total_seconds())} ago"


def _number(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def explain_text(
    view: DeploymentView, *, wall: datetime, what_if: Mapping[str, float | None] | None = None
) -> str:
    """The explanation, a few short lines. Raises ValueError for a what-if that does not fit."""
    out: list[str] = []
    head = f"{view.namespace}/{view.name}: {view.spec_replicas} replica(s), {view.ready_replicas} ready"
    if view.lease_live(wall):
        head += f"; leader {view.lease_holder}"
        if view.lease_transitions is not None:
            head += f" (lease transitions {view.lease_transitions})"
    elif view.spec_replicas == 0:
        head += "; no leader (no pods: the waker owns zero)"
    else:
        head += "; NO LEADER (no agent holds the Lease: are the pods injected and bound to the agent Role?)"
    out.append(head)
    if not view.labelled:
        out.append(
            '  ! the pod template lacks the label tidescale.io/inject: "true": no agent runs, nothing scales'
        )
    if view.dry_run:
        out.append("  dry-run: decisions are reported (DryRun Events), never written")
    hints: Hints | None = None
    try:
        hints = parse_hints(view.annotations)
    except HintsInvalid as invalid:
        out.append("  ! the hints do not parse; the agents keep the last good ones:")
        out += [f"    - {problem}" for problem in invalid.problems]
    if view.status_problem:
        out.append(f"  ! {view.status_problem}")
    elif view.status is None:
        out.append("  no status yet: no leader has written tidescale.io/status")
    else:
        updated = f", written {_ago(wall, view.updated)}" if view.updated else ""
        out.append(f"  status by {view.leader}{updated}")

    if view.triggers:
        out.append("Triggers (value / target per replica):")
        width = max(len(t.name) for t in view.triggers)
        for trigger in view.triggers:
            metric = (
                hints.metric_of(trigger.name) if hints and trigger.name in hints.trigger_types else "value"
            )
            if trigger.error is not None:
                line = f"failing: {trigger.error}"
            else:
                wants = ""
                if trigger.drain_replicas is not None:
                    wants = f" -> wants {trigger.drain_replicas} (drain-time target)"
                elif trigger.value is not None and trigger.target:
                    wants = f" -> wants {max(0, math.ceil(trigger.value / trigger.target - 1e-9))}"
                line = f"{metric} {_number(trigger.value)} / {_number(trigger.target)}{wants}"
                line += ", active" if trigger.active else ", inactive"
            out.append(f"  {trigger.name.ljust(width)}  {line}")
            if trigger.drain is not None:
                out.append(f"  {' ' * width}  drain: {trigger.drain}")
            if trigger.stalled is not None:
                out.append(
                    f"  {' ' * width}  STALLED: {trigger.stalled}: the count is held (ConsumerStalled)"
                )

    change = view.last_change
    if change is not None:
        out.append(
            f"Last change: {change.arrow()} {_ago(wall, change.at)} ({change.source}): {change.reason}"
        )
    else:
        out.append("Last change: none recorded")
    if view.held_by:
        out.append(f"Held by: {view.held_by}")
    park = view.parked_words(wall)
    if park == "no":
        out.append("Park: not parked")
    else:
        record = view.park_record or {}
        owner = (
            "the waker owns it and wakes it on activity"
            if record.get("state") == "parked"
            else "handoff in progress"
        )
        out.append(f"Park: {park}; {owner}")
    if view.park_epoch is not None and park == "no":
        out[-1] += f" (last park epoch {view.park_epoch})"

    if hints is not None and hints.triggers:
        if view.spec_replicas == 0:
            out.append(
                "Next: at zero the waker decides: it wakes to "
                f"{hints.wake_replicas} replica(s) when a trigger becomes active"
            )
        else:
            now_replay = replay(view, hints, wall=wall)
            out.append(
                f"Next: {now_replay.reason}" + (" (hand over to the waker)" if now_replay.wants_zero else "")
            )
            if what_if is not None:
                result = replay(view, hints, wall=wall, overrides=what_if)
                shown = ", ".join(f"{k}={'error' if v is None else _number(v)}" for k, v in what_if.items())
                out.append(f"What if {shown}: {view.spec_replicas} -> {result.desired}")
                out.append(f"  {result.reason}")
                for name, words in result.per_trigger:
                    out.append(f"  {name} asks for {words}")
                out.append(f"  (offline replay of policy.decide; history {result.history_source})")
    elif what_if is not None:
        raise ValueError("--what-if needs hints that parse and at least one trigger")

    recent = view.events[:5]
    if recent:
        out.append("Recent events:")
        for event in recent:
            stamp = parse_moment(
                event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp")
            )
            count = int(event.get("count") or 1)
            times = f" (x{count})" if count > 1 else ""
            message = str(event.get("message") or event.get("note") or "").splitlines()[0][:160]
            kind = str(event.get("type", ""))[:7]
            out.append(f"  {_ago(wall, stamp):>9}  {kind:<7} {event.get('reason')}{times}: {message}")
    return "\n".join(out)


def _target(text: str, namespace: str | None) -> tuple[str | None, str]:
    if "/" in text:
        ns, _, name = text.partition("/")
        if not ns or not name or "/" in name:
            raise ValueError(f"{text!r}: expected NAMESPACE/DEPLOYMENT or DEPLOYMENT")
        return ns, name
    return namespace, text


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tidescale explain",
        description="Why a Deployment is at its replica count, and what tidescale will do next.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("deployment", metavar="[NAMESPACE/]DEPLOYMENT")
    parser.add_argument(
        "--what-if",
        metavar="TRIGGER=VALUE,...",
        help="replay the policy offline with these trigger values ('error' for a failed measurement)",
    )
    add_kube_arguments(parser)
    args = parser.parse_args(argv)
    try:
        what_if = parse_what_if(args.what_if) if args.what_if else None
        namespace, name = _target(args.deployment, args.namespace)
    except ValueError as error:
        parser.error(str(error))
    return asyncio.run(_run(args, namespace, name, what_if))


async def _run(
    args: argparse.Namespace, namespace: str | None, name: str, what_if: Mapping[str, float | None] | None
) -> int:
    where = f"{namespace or '?'}/{name}"
    try:
        async with await connect(args) as api:
            namespace = namespace or api.target.namespace
            where = f"{namespace}/{name}"
            views = await fetch_views(api, namespace=namespace, name=name)
        text = explain_text(views[0], wall=datetime.now(UTC), what_if=what_if)
    except KubeNotFound:
        print(f"tidescale explain: deployment {where} not found", file=sys.stderr)
        return 1
    except (TidescaleError, ValueError) as error:
        print(f"tidescale explain: {error}", file=sys.stderr)
        return 1
    print(text)
    return 0
