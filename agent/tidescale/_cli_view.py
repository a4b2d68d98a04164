"""What the API says about one scaled Deployment, gathered for ``status`` and ``explain``. Pure.

Read from the Deployment (hints, the leader's ``tidescale.io/status`` annotation, the
park label and record, the ``tidescale.io/state`` label when the agent writes it), its
agents' Lease (``tidescale-<deployment>``) and the Events about it. Nothing here
talks to the API server: :func:`view_of` takes the objects, so it is tested with
dicts, and the commands fetch them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from tidescale.hints import PREFIX

__all__ = [
    "INJECT_LABEL",
    "SCALING_EVENT_REASONS",
    "Change",
    "DeploymentView",
    "TriggerView",
    "format_age",
    "is_tidescale",
    "parse_moment",
    "view_of",
]

INJECT_LABEL = "tidescale.io/inject"
STATUS_ANNOTATION = "tidescale.io/status"
STATE_LABEL = "tidescale.io/state"
PARK_LABEL = "tidescale.io/park"
PARK_RECORD = "tidescale.io/park-record"
PARK_EPOCH = "tidescale.io/park-epoch"
SCALING_EVENT_REASONS = ("Scaled", "Woken", "Released", "ParkCancelled", "Parked", "DryRun")
"""Events that say the count changed (or, DryRun, would have), newest first wins for "last change"."""


def parse_moment(text: Any) -> datetime | None:
    """An RFC 3339 time (Kubernetes Time or MicroTime) as aware UTC; None when absent or unreadable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:
        return None


def format_age(seconds: float | None) -> str:
    """kubectl's short ages: ``45s``, ``3m20s`` under ten minutes, ``12m``, ``5h``, ``3d``."""
    if seconds is None:
        return "<unknown>"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 600:
        return f"{s // 60}m{s % 60}s" if s % 60 else f"{s // 60}m"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400 * 2:
        return f"{s // 3600}h{(s % 3600) // 60}m" if s < 36000 and (s % 3600) // 60 else f"{s // 3600}h"
    return f"{s // 86400}d"


_MAX_WORDS = 300
"""Longest text taken from the status for one line (anyone who can edit the Deployment can write it)."""


def _drain_words(drain: Any) -> str | None:
    if not isinstance(drain, Mapping) or not isinstance(drain.get("reason"), str):
        return None
    return str(drain["reason"])[:_MAX_WORDS]


def _drain_replicas(drain: Any) -> int | None:
    replicas = drain.get("replicas") if isinstance(drain, Mapping) else None
    return replicas if isinstance(replicas, int) and not isinstance(replicas, bool) else None


def _stall_words(stalled: Any) -> str | None:
    if not isinstance(stalled, Mapping):
        return None
    units = (
        [str(unit)[:100] for unit in (stalled.get("units") or [])[:20]]
        if isinstance(stalled.get("units"), list)
        else []
    )
    seconds = stalled.get("seconds")
    since = f" for {format_age(float(seconds))}" if isinstance(seconds, int | float) and seconds >= 0 else ""
    return f"no progress{since} on {', '.join(units) or 'its units'}"[:_MAX_WORDS]


@dataclass(frozen=True, kw_only=True, slots=True)
class TriggerView:
    name: str
    value: float | None = None
    target: float | None = None
    active: bool | None = None
    error: str | None = None
    drain: str | None = None
    """The drain-time target's reason (``backlog 48,000, arriving 350/s, ...``), when it has one."""
    drain_replicas: int | None = None
    stalled: str | None = None
    """While the trigger's consumers are stalled: the units and for how long, in words."""

    def short(self) -> str:
        if self.error is not None:
            return f"{self.name}=error"
        return f"{self.name}={_number(self.value)}/{_number(self.target)}"


@dataclass(frozen=True, kw_only=True, slots=True)
class Change:
    """The last change of the count: when, from, to, why, and who said so."""

    at: datetime | None
    before: int | None
    after: int | None
    reason: str
    source: str
    """``status`` (the leader's annotation) or ``event <Reason>``."""

    def arrow(self) -> str:
        if self.before is None or self.after is None:
            return "?"
        return f"{self.before}->{self.after}"


@dataclass(kw_only=True, slots=True)
class DeploymentView:
    namespace: str
    name: str
    created: datetime | None
    spec_replicas: int
    ready_replicas: int
    labelled: bool
    annotations: dict[str, str]
    status: dict[str, Any] | None
    status_problem: str | None
    leader: str | None
    lease_holder: str | None
    lease_renewed: datetime | None
    lease_duration: float | None
    lease_transitions: int | None
    triggers: list[TriggerView]
    desired: int | None
    dry_run: bool
    state: str | None
    park_label: str | None
    park_record: dict[str, Any] | None
    park_epoch: int | None
    held_by: str | None
    updated: datetime | None
    last_change: Change | None
    events: list[dict[str, Any]] = field(default_factory=list)

    def hints(self) -> dict[str, str]:
        return {k: v for k, v in self.annotations.items() if k.startswith(PREFIX)}

    def lease_live(self, now: datetime) -> bool:
        if not self.lease_holder or self.lease_renewed is None or self.lease_duration is None:
            return False
        return (now - self.lease_renewed).total_seconds() <= self.lease_duration

    def parked_words(self, now: datetime) -> str:
        if not self.park_label and not self.park_record:
            return "no"
        state = (self.park_record or {}).get("state") or self.park_label or "?"
        epoch = (self.park_record or {}).get("epoch", self.park_epoch)
        since = parse_moment(
            (self.park_record or {}).get("parkedAt") or (self.park_record or {}).get("requestedAt")
        )
        age = f", {format_age((now - since).total_seconds())}" if since else ""
        return f"{state} (epoch {epoch}{age})" if epoch is not None else f"{state}{age}"

    def as_json(self, now: datetime) -> dict[str, Any]:
        """Everything gathered, for ``-o json|yaml``."""
        change = self.last_change
        return {
            "namespace": self.namespace,
            "deployment": self.name,
            "age": format_age((now - self.created).total_seconds()) if self.created else None,
            "replicas": {"spec": self.spec_replicas, "ready": self.ready_replicas, "desired": self.desired},
            "labelled": self.labelled,
            "dryRun": self.dry_run,
            "state": self.state,
            "leader": self.leader,
            "lease": {
                "holder": self.lease_holder,
                "renewTime": _iso(self.lease_renewed),
                "durationSeconds": self.lease_duration,
                "transitions": self.lease_transitions,
                "live": self.lease_live(now),
            },
            "triggers": [
                {
                    k: v
                    for k, v in {
                        "name": t.name,
                        "value": t.value,
                        "target": t.target,
                        "active": t.active,
                        "error": t.error,
                    }.items()
                    if v is not None
                }
                for t in self.triggers
            ],
            "park": {"label": self.park_label, "record": self.park_record, "epoch": self.park_epoch},
            "heldBy": self.held_by,
            "updatedAt": _iso(self.updated),
            "lastChange": None
            if change is None
            else {
                "at": _iso(change.at),
                "from": change.before,
                "to": change.after,
                "reason": change.reason,
                "source": change.source,
            },
            "statusProblem": self.status_problem,
        }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _number(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"


def is_tidescale(deployment: Mapping[str, Any]) -> bool:
    """A Deployment tidescale has something to do with: hints, or the inject label on its pods."""
    metadata = deployment.get("metadata") or {}
    if any(str(k).startswith(PREFIX) for k in (metadata.get("annotations") or {})):
        return True
    return _labelled(deployment)


def _labelled(deployment: Mapping[str, Any]) -> bool:
    template = ((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}
    return (template.get("labels") or {}).get(INJECT_LABEL) == "true"


def _held_by(status: Mapping[str, Any]) -> str | None:
    """``heldBy`` as a phrase, whatever shape the leader wrote (a phrase, or {what, until})."""
    held = status.get("heldBy")
    if not held:
        return None
    if isinstance(held, str):
        return held
    if isinstance(held, Mapping):
        what = (
            held.get("by")
            or held.get("what")
            or held.get("window")
            or held.get("policy")
            or held.get("reason")
        )
        until = held.get("until")
        words = str(what) if what else "?"
        return f"{words} until {until}" if until else words
    return str(held)


def _change_from_status(status: Mapping[str, Any]) -> Change | None:
    last = status.get("lastChange")
    if not isinstance(last, Mapping):
        return None
    return Change(
        at=parse_moment(last.get("at")),
        before=last.get("from") if isinstance(last.get("from"), int) else None,
        after=last.get("to") if isinstance(last.get("to"), int) else None,
        reason=str(last.get("reason") or ""),
        source="status",
    )


def _event_time(event: Mapping[str, Any]) -> datetime | None:
    return (
        parse_moment(event.get("lastTimestamp"))
        or parse_moment(event.get("eventTime"))
        or parse_moment(event.get("firstTimestamp"))
        or parse_moment((event.get("metadata") or {}).get("creationTimestamp"))
    )


def _change_from_events(events: Sequence[Mapping[str, Any]]) -> Change | None:
    import re

    for event in events:  # newest first
        reason = str(event.get("reason") or "")
        if reason not in SCALING_EVENT_REASONS or reason == "DryRun":
            continue
        message = str(event.get("note") or event.get("message") or "")
        match = re.search(r"(\d+) -> (\d+)", message)
        return Change(
            at=_event_time(event),
            before=int(match[1]) if match else None,
            after=int(match[2]) if match else None,
            reason=message,
            source=f"event {reason}",
        )
    return None


def sort_events(events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Newest first."""
    epoch = datetime.fromtimestamp(0, UTC)
    return sorted((dict(e) for e in events), key=lambda e: _event_time(e) or epoch, reverse=True)


def view_of(
    deployment: Mapping[str, Any],
    *,
    lease: Mapping[str, Any] | None,
    events: Sequence[Mapping[str, Any]],
) -> DeploymentView:
    """Everything ``status`` and ``explain`` show about one Deployment, from the objects."""
    metadata = deployment.get("metadata") or {}
    annotations = {str(k): str(v) for k, v in (metadata.get("annotations") or {}).items()}
    labels = {str(k): str(v) for k, v in (metadata.get("labels") or {}).items()}
    status: dict[str, Any] | None = None
    problem: str | None = None
    if STATUS_ANNOTATION in annotations:
        try:
            loaded = orjson.loads(annotations[STATUS_ANNOTATION])
            if isinstance(loaded, dict):
                status = loaded
            else:
                problem = f"{STATUS_ANNOTATION} is not a JSON object"
        except orjson.JSONDecodeError as exc:
            problem = f"{STATUS_ANNOTATION} is not JSON ({exc})"
    record: dict[str, Any] | None = None
    if PARK_RECORD in annotations:
        try:
            loaded = orjson.loads(annotations[PARK_RECORD])
            record = loaded if isinstance(loaded, dict) else {"unreadable": annotations[PARK_RECORD]}
        except orjson.JSONDecodeError:
            record = {"unreadable": annotations[PARK_RECORD]}
    epoch_text = annotations.get(PARK_EPOCH, "")
    triggers = []
    for name, reading in sorted(_mapping((status or {}).get("triggers")).items()):
        reading = reading if isinstance(reading, Mapping) else {}
        triggers.append(
            TriggerView(
                name=str(name),
                value=_float(reading.get("value")),
                target=_float(reading.get("target")),
                active=reading.get("active") if isinstance(reading.get("active"), bool) else None,
                error=str(reading["error"]) if reading.get("error") is not None else None,
                drain=_drain_words(reading.get("drain")),
                drain_replicas=_drain_replicas(reading.get("drain")),
                stalled=_stall_words(reading.get("stalled")),
            )
        )
    replicas = _mapping((status or {}).get("replicas"))
    spec_replicas = int((deployment.get("spec") or {}).get("replicas", 1) or 0)
    lease_spec = (lease or {}).get("spec") or {}
    ordered = sort_events(events)
    from_status = _change_from_status(status or {})
    from_events = _change_from_events(ordered)
    change = from_status
    if from_events is not None and (
        change is None or (from_events.at and change.at and from_events.at > change.at) or change.at is None
    ):
        change = from_events
    return DeploymentView(
        namespace=str(metadata.get("namespace") or "default"),
        name=str(metadata.get("name") or "?"),
        created=parse_moment(metadata.get("creationTimestamp")),
        spec_replicas=spec_replicas,
        ready_replicas=int(((deployment.get("status") or {}).get("readyReplicas")) or 0),
        labelled=_labelled(deployment),
        annotations=annotations,
        status=status,
        status_problem=problem,
        leader=str((status or {}).get("leader")) if (status or {}).get("leader") else None,
        lease_holder=lease_spec.get("holderIdentity") or None,
        lease_renewed=parse_moment(lease_spec.get("renewTime")),
        lease_duration=_float(lease_spec.get("leaseDurationSeconds")),
        lease_transitions=lease_spec.get("leaseTransitions"),
        triggers=triggers,
        desired=replicas.get("desired") if isinstance(replicas.get("desired"), int) else None,
        dry_run=bool((status or {}).get("dryRun")),
        state=labels.get(STATE_LABEL),
        park_label=labels.get(PARK_LABEL),
        park_record=record,
        park_epoch=int(epoch_text) if epoch_text.isascii() and epoch_text.isdigit() else None,
        held_by=_held_by(status or {}),
        updated=parse_moment((status or {}).get("updatedAt")),
        last_change=change,
        events=ordered,
    )


def _mapping(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a JSON object, else empty: what the leader wrote may be anything."""
    return value if isinstance(value, Mapping) else {}


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
