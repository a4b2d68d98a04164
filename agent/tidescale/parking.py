"""The scale-to-zero handoff between a Deployment's leader and the cluster-level waker. Pure.

With zero pods there is no agent, so zero belongs to the waker. Both sides keep every
bit of shared state on the Deployment itself (docs/scale-to-zero.md draws the sequence):

* label ``tidescale.io/park``: ``requested`` | ``watching`` | ``parked`` -- only so that the
  waker's watch (labelSelector ``tidescale.io/park``) sees parked Deployments and nothing else;
* annotation ``tidescale.io/park-record``: the JSON :class:`ParkRecord`;
* annotation ``tidescale.io/park-epoch``: the last epoch used. It outlives the record, so epochs
  keep increasing across park/wake cycles even though a wake removes the record.

Both the record and the leader's ``tidescale.io/status`` carry the protocol's major version
(:data:`PROTOCOL_VERSION`; absent means 1, what every earlier build wrote). A side that meets a
*newer* version than it speaks holds: it writes nothing to that Deployment (no clear, no ack, no
wake, no scale) and says so, rather than act on a record whose meaning it cannot know. Old
readers ignore fields they do not know, so a change that only adds a field keeps the version;
a change that old readers would misread raises it (docs/reliability.md, "Upgrades").

Every write is a JSON merge patch of the Deployment carrying ``metadata.resourceVersion``: the
API server applies it only if nothing changed since the read it was decided on, otherwise 409.
Writes are therefore serializable; a side that gets 409 re-reads and decides again with
:func:`leader_step` or :func:`waker_step`. The two functions are the whole protocol: each takes
a :class:`DeploymentSnapshot` (what was read) and what the side knows, and returns the one write
to make, or none.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NotRequired, TypedDict

__all__ = [
    "DEFAULT_ACK_TIMEOUT",
    "PARK_EPOCH_ANNOTATION",
    "PARK_LABEL",
    "PARK_RECORD_ANNOTATION",
    "POLICY_STATE_ANNOTATION",
    "PROTOCOL_VERSION",
    "STATUS_ANNOTATION",
    "DeploymentSnapshot",
    "Event",
    "LeaderAction",
    "LeaderDecision",
    "ParkRecord",
    "ParkState",
    "Probe",
    "WakerAction",
    "WakerDecision",
    "Write",
    "format_time",
    "leader_step",
    "newer_protocol",
    "parse_time",
    "waker_step",
]

PARK_LABEL = "tidescale.io/park"
PARK_RECORD_ANNOTATION = "tidescale.io/park-record"
PARK_EPOCH_ANNOTATION = "tidescale.io/park-epoch"
STATUS_ANNOTATION = "tidescale.io/status"
POLICY_STATE_ANNOTATION = "tidescale.io/policy-state"
"""The leader's windows, cooldown and failure counts (``tidescale._policy_state``). Defined here
because the waker removes it when it wakes a Deployment from zero."""
PROTOCOL_VERSION = 1
"""The major version of the park record and status this build writes and understands."""
DEFAULT_ACK_TIMEOUT = 30.0
"""Seconds the leader waits for the waker's ack before giving up (hint ``park-ack-timeout``)."""


class ParkState(StrEnum):
    REQUESTED = "requested"
    """The leader asks to park; the waker has not acknowledged yet."""
    WATCHING = "watching"
    """The waker measures the triggers' sources and will wake the Deployment on activation."""
    PARKED = "parked"
    """spec.replicas is 0 (written together with this state); the waker alone can bring it back."""


class RawParkRecord(TypedDict, total=False):
    """The record as stored in the annotation (camelCase, like the rest of a Kubernetes object)."""

    version: int
    epoch: int
    state: str
    requester: str
    leaseTransitions: int
    requestedAt: str
    triggers: list[str]
    lastOffsets: dict[str, dict[str, int]]
    ackedBy: str | None
    ackedAt: str | None
    parkedAt: str | None


def format_time(moment: datetime) -> str:
    """UTC, microseconds, ``Z``: the form of a Kubernetes MicroTime."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """Inverse of :func:`format_time`; also takes second precision (``...05Z``). Raises ValueError."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"time without a zone: {text!r}")
    return moment.astimezone(UTC)


@dataclass(frozen=True, kw_only=True, slots=True)
class ParkRecord:
    """One handoff, from the leader's request to the wake (which removes it)."""

    epoch: int
    state: ParkState
    requester: str
    """Pod name of the leader that asked."""
    lease_transitions: int
    """The Lease's leaseTransitions when it asked: tells two leaders with the same name apart."""
    requested_at: datetime
    triggers: tuple[str, ...]
    last_offsets: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """trigger -> "topic/partition" -> log-end offset at request time. Diagnostics, and a
    cross-check when the waker reports an activation (what moved since the request)."""
    acked_by: str | None = None
    acked_at: datetime | None = None
    parked_at: datetime | None = None
    version: int = PROTOCOL_VERSION

    def to_json(self) -> str:
        raw: RawParkRecord = {
            "version": self.version,
            "epoch": self.epoch,
            "state": self.state.value,
            "requester": self.requester,
            "leaseTransitions": self.lease_transitions,
            "requestedAt": format_time(self.requested_at),
            "triggers": list(self.triggers),
            "lastOffsets": {t: dict(offsets) for t, offsets in self.last_offsets.items()},
            "ackedBy": self.acked_by,
            "ackedAt": None if self.acked_at is None else format_time(self.acked_at),
            "parkedAt": None if self.parked_at is None else format_time(self.parked_at),
        }
        return json.dumps(raw, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ParkRecord:
        """Parse the annotation; raises ValueError on anything that is not a record we wrote."""
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict):
                raise ValueError("not a JSON object")
            version = raw.get("version", 1)
            if type(version) is not int or not 1 <= version <= PROTOCOL_VERSION:
                raise ValueError(f"protocol version {version!r}: this build reads 1 to {PROTOCOL_VERSION}")
            epoch, transitions = raw["epoch"], raw["leaseTransitions"]
            if type(epoch) is not int or epoch < 1 or type(transitions) is not int:
                raise ValueError("epoch must be a whole number >= 1, leaseTransitions a whole number")
            requester, triggers = raw["requester"], raw.get("triggers", [])
            if not isinstance(requester, str) or not all(isinstance(t, str) for t in triggers):
                raise ValueError("requester and triggers must be strings")
            offsets = raw.get("lastOffsets") or {}
            last_offsets = {
                str(trigger): {str(unit): int(offset) for unit, offset in units.items()}
                for trigger, units in offsets.items()
            }
            acked_by = raw.get("ackedBy")
            return cls(
                epoch=epoch,
                state=ParkState(raw["state"]),
                requester=requester,
                lease_transitions=transitions,
                requested_at=parse_time(raw["requestedAt"]),
                triggers=tuple(triggers),
                last_offsets=last_offsets,
                acked_by=acked_by if isinstance(acked_by, str) else None,
                acked_at=_optional_time(raw.get("ackedAt")),
                parked_at=_optional_time(raw.get("parkedAt")),
                version=version,
            )
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a park record: {exc}") from exc


def _version_of(text: str | None) -> int:
    """The protocol version a stored JSON object says it was written in (absent: 1; unreadable: 0)."""
    if text is None:
        return 0
    try:
        raw = json.loads(text)
    except ValueError:
        return 0
    if not isinstance(raw, dict):
        return 0
    version = raw.get("version", 1)
    return version if type(version) is int and version >= 1 else 0


def newer_protocol(annotations: Mapping[str, str]) -> str | None:
    """Why this build must hold on a Deployment: its park record or status says a newer protocol
    version than :data:`PROTOCOL_VERSION` (None: nothing newer)."""
    for annotation in (PARK_RECORD_ANNOTATION, STATUS_ANNOTATION):
        version = _version_of(annotations.get(annotation))
        if version > PROTOCOL_VERSION:
            return (
                f"{annotation} says protocol version {version}, newer than the {PROTOCOL_VERSION} "
                "this build speaks: holding (no write) until an agent of that version takes over"
            )
    return None


def _optional_time(value: object) -> datetime | None:
    return parse_time(value) if isinstance(value, str) else None


@dataclass(frozen=True, kw_only=True, slots=True)
class DeploymentSnapshot:
    """The parts of one read of a Deployment that the protocol looks at."""

    namespace: str
    name: str
    resource_version: str
    replicas: int
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> DeploymentSnapshot:
        """From a Deployment as the API server returns it (JSON)."""
        metadata: Mapping[str, Any] = obj.get("metadata") or {}
        spec: Mapping[str, Any] = obj.get("spec") or {}
        replicas = spec.get("replicas")
        return cls(
            namespace=str(metadata.get("namespace", "")),
            name=str(metadata.get("name", "")),
            resource_version=str(metadata.get("resourceVersion", "")),
            # The API server defaults an absent spec.replicas to 1.
            replicas=replicas if isinstance(replicas, int) else 1,
            labels=dict(metadata.get("labels") or {}),
            annotations=dict(metadata.get("annotations") or {}),
        )

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def label(self) -> str | None:
        return self.labels.get(PARK_LABEL)

    @property
    def record(self) -> ParkRecord | None:
        """The park record, or None when there is none or it cannot be read (see ``unreadable``)."""
        text = self.annotations.get(PARK_RECORD_ANNOTATION)
        if text is None:
            return None
        try:
            return ParkRecord.from_json(text)
        except ValueError:
            return None

    @property
    def newer_protocol(self) -> str | None:
        """Why to hold: the record or status is of a newer protocol version (see the module doc)."""
        return newer_protocol(self.annotations)

    @property
    def unreadable(self) -> bool:
        """Some park state is present but not a record we can trust: a label without a record,
        a record that does not parse, or a label that disagrees with the record's state."""
        text = self.annotations.get(PARK_RECORD_ANNOTATION)
        if text is None:
            return self.label is not None
        record = self.record
        return record is None or record.state.value != self.label

    @property
    def last_epoch(self) -> int:
        """The highest epoch ever used on this Deployment (the record's, or the counter's)."""
        record = self.record
        counter = self.annotations.get(PARK_EPOCH_ANNOTATION, "0")
        stored = int(counter) if counter.isdigit() else 0
        return max(stored, record.epoch if record is not None else 0)


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """A Kubernetes Event to emit on the Deployment after the write succeeds."""

    reason: str
    message: str
    type: str = "Normal"


class Write(TypedDict):
    """One PATCH of the Deployment, ``Content-Type: application/merge-patch+json``."""

    metadata: dict[str, Any]
    spec: NotRequired[dict[str, int]]


def _patch(
    snapshot: DeploymentSnapshot,
    *,
    record: ParkRecord | None,
    replicas: int | None = None,
    epoch: int | None = None,
) -> Write:
    """The merge patch that sets (or, with ``record=None``, removes) the record and label,
    conditioned on the snapshot's resourceVersion."""
    annotations: dict[str, Any] = {PARK_RECORD_ANNOTATION: None if record is None else record.to_json()}
    if epoch is not None:
        annotations[PARK_EPOCH_ANNOTATION] = str(epoch)
    body: Write = {
        "metadata": {
            "resourceVersion": snapshot.resource_version,
            "labels": {PARK_LABEL: None if record is None else record.state.value},
            "annotations": annotations,
        },
    }
    if replicas is not None:
        body["spec"] = {"replicas": replicas}
    return body


# -- the leader ---------------------------------------------------------------------------------


class LeaderAction(StrEnum):
    NONE = "none"
    """Nothing to write (no handoff wanted, or waiting for the ack)."""
    REQUEST = "request"
    """Write a new record, state requested, with the next epoch."""
    PARK = "park"
    """The ack is in and the triggers are still idle: spec.replicas 0 + state parked, fenced."""
    ABORT = "abort"
    """Our own request ends without parking (activity, or no ack in time): remove the record."""
    CLEAR = "clear"
    """A record this leader did not write (an earlier leader's): remove it and start over."""
    FORGET = "forget"
    """Our request is gone (the waker woke the Deployment, or someone cleared it): drop it."""
    HOLD = "hold"
    """The record or status is of a newer protocol version: write nothing, say why."""


@dataclass(frozen=True, kw_only=True, slots=True)
class LeaderDecision:
    action: LeaderAction
    write: Write | None = None
    fenced: bool = True
    """Make the write only while the Lease is provably held. Every leader write is: a deposed
    leader acting on a read made before it lost the Lease must not disturb its successor's
    handoff (resourceVersion alone would let it, when its read is still current)."""
    epoch: int | None = None
    """The epoch this leader's handoff has after the write (None: no handoff in progress)."""
    event: Event | None = None
    why: str = ""


def leader_step(
    snapshot: DeploymentSnapshot,
    *,
    me: str,
    lease_transitions: int,
    my_epoch: int | None,
    idle: bool,
    now: datetime,
    ack_timeout: float = DEFAULT_ACK_TIMEOUT,
    triggers: Sequence[str] = (),
    last_offsets: Mapping[str, Mapping[str, int]] | None = None,
    requested_ago: float | None = None,
) -> LeaderDecision:
    """What the leader writes next.

    ``idle``: min-replicas is 0 and every trigger has been inactive for the cooldown, measured
    *after* ``snapshot`` was read (after the ack, for the park write). ``my_epoch``: the epoch of
    the request this leader wrote and still follows, kept in memory (None after a restart, which
    makes any record foreign). The caller keeps ``decision.epoch`` as its new ``my_epoch``.
    ``requested_ago``: seconds since this leader sent its request, on its monotonic clock (None:
    the record's requestedAt against ``now``, which a wall-clock step would skew).
    """
    newer = snapshot.newer_protocol
    if newer is not None:
        return LeaderDecision(action=LeaderAction.HOLD, epoch=my_epoch, why=newer)
    record = snapshot.record
    mine = (
        record is not None
        and my_epoch is not None
        and record.epoch == my_epoch
        and record.requester == me
        and record.lease_transitions == lease_transitions
    )
    if snapshot.replicas == 0:
        # Pods still shutting down after the park write may win the Lease; they must not touch a
        # parked Deployment: clearing its record would leave it at zero with nobody watching.
        return LeaderDecision(action=LeaderAction.NONE, epoch=my_epoch, why="at zero: the waker owns it")
    if snapshot.unreadable:
        return LeaderDecision(
            action=LeaderAction.CLEAR,
            write=_patch(snapshot, record=None),
            why="park state on the Deployment is not a record we can read; clearing it",
        )
    if record is None:
        if my_epoch is not None:
            return LeaderDecision(
                action=LeaderAction.FORGET, why=f"park epoch {my_epoch} was ended by the waker"
            )
        if not idle:
            return LeaderDecision(action=LeaderAction.NONE)
        epoch = snapshot.last_epoch + 1
        request = ParkRecord(
            epoch=epoch,
            state=ParkState.REQUESTED,
            requester=me,
            lease_transitions=lease_transitions,
            requested_at=now,
            triggers=tuple(triggers),
            last_offsets=last_offsets or {},
        )
        return LeaderDecision(
            action=LeaderAction.REQUEST,
            write=_patch(snapshot, record=request, epoch=epoch),
            epoch=epoch,
            why=f"every trigger idle past the cooldown: asking the waker to take over (park epoch {epoch})",
        )
    if not mine:
        return LeaderDecision(
            action=LeaderAction.CLEAR,
            write=_patch(snapshot, record=None),
            why=f"park epoch {record.epoch} was requested by {record.requester}, not by this leader",
        )
    if record.state is ParkState.PARKED:
        # replicas > 0 here: someone scaled it by hand after our park write.
        return LeaderDecision(
            action=LeaderAction.ABORT,
            write=_patch(snapshot, record=None),
            why=f"scaled to {snapshot.replicas} by hand while parked: releasing it",
        )
    if not idle:
        return LeaderDecision(
            action=LeaderAction.ABORT,
            write=_patch(snapshot, record=None),
            why=f"a trigger is active again: park epoch {record.epoch} abandoned",
        )
    if record.state is ParkState.REQUESTED:
        waited = (now - record.requested_at).total_seconds() if requested_ago is None else requested_ago
        if waited < ack_timeout:
            return LeaderDecision(action=LeaderAction.NONE, epoch=my_epoch, why="waiting for the waker's ack")
        return LeaderDecision(
            action=LeaderAction.ABORT,
            write=_patch(snapshot, record=None),
            event=Event(
                reason="WakerUnavailable",
                type="Warning",
                message=f"no waker acknowledged park epoch {record.epoch} within {ack_timeout:g}s; "
                f"staying at {snapshot.replicas} replica(s)",
            ),
            why="no ack from the waker in time",
        )
    parked = replace(record, state=ParkState.PARKED, parked_at=now)
    return LeaderDecision(
        action=LeaderAction.PARK,
        write=_patch(snapshot, record=parked, replicas=0),
        epoch=my_epoch,
        event=Event(
            reason="Parked",
            message=f"scaled {snapshot.replicas} -> 0: every trigger idle past the cooldown; "
            f"{record.acked_by} wakes it (park epoch {record.epoch})",
        ),
        why="acknowledged and still idle",
    )


# -- the waker ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Probe:
    """The waker's latest successful measurement of every trigger of one Deployment."""

    epoch: int
    """The record's epoch when the waker began this measurement (0: no record then). An ack
    needs a probe of the requested epoch: proof the waker reached the sources since the request."""
    active: bool
    """Some trigger is above its activation threshold."""
    summary: str = ""
    """What was found, for the Event (e.g. "kafka: lag 3 on orders/0")."""


class WakerAction(StrEnum):
    NONE = "none"
    """Nothing to write; keep (or start) measuring if ``track``."""
    ACK = "ack"
    """state requested -> watching: the waker measures the sources from now on."""
    WAKE = "wake"
    """A trigger is active: record and label removed, and at zero spec.replicas = wake-replicas."""
    RELEASE = "release"
    """Replicas > 0 while parked (scaled by hand), or unreadable state: record and label removed."""
    HOLD = "hold"
    """The record is of a newer protocol version: write nothing, say why (a Warning Event)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class WakerDecision:
    action: WakerAction
    write: Write | None = None
    track: bool = False
    """Whether the waker should keep measuring this Deployment's triggers."""
    event: Event | None = None
    why: str = ""


def waker_step(
    snapshot: DeploymentSnapshot,
    *,
    waker: str,
    probe: Probe | None,
    wake_replicas: int,
    now: datetime,
) -> WakerDecision:
    """What the waker writes next for one Deployment it sees through its watch.

    ``probe``: the latest successful measurement (None: none yet, or the last one failed).
    Waking never depends on the probe's epoch: activity is activity, and an extra wake costs
    one pod for one cooldown; a missed one loses events.
    """
    version = _version_of(snapshot.annotations.get(PARK_RECORD_ANNOTATION))
    if version > PROTOCOL_VERSION:
        return WakerDecision(
            action=WakerAction.HOLD,
            event=Event(
                reason="ProtocolTooNew",
                type="Warning",
                message=f"{PARK_RECORD_ANNOTATION} says protocol version {version}, newer than the "
                f"{PROTOCOL_VERSION} this waker speaks: it neither acks nor wakes this Deployment "
                "until a waker of that version runs",
            ),
            why=f"park record of protocol version {version}",
        )
    record = snapshot.record
    if snapshot.unreadable:
        if snapshot.replicas > 0:
            return WakerDecision(
                action=WakerAction.RELEASE,
                write=_patch(snapshot, record=None),
                why="unreadable park state on a running Deployment: released",
            )
        # At zero with state we cannot read: bring it up so an agent starts the protocol afresh.
        return _wake(snapshot, wake_replicas, probe, why="unreadable park state at zero replicas")
    if record is None:
        return WakerDecision(action=WakerAction.NONE, why="not parked")
    if record.state is ParkState.PARKED and snapshot.replicas > 0:
        return WakerDecision(
            action=WakerAction.RELEASE,
            write=_patch(snapshot, record=None),
            event=Event(
                reason="Released",
                message=f"scaled to {snapshot.replicas} by hand while parked (epoch {record.epoch}): "
                "the waker lets go and the agents take over",
            ),
            why="scaled by hand while parked",
        )
    if probe is None:
        return WakerDecision(action=WakerAction.NONE, track=True, why="no measurement yet")
    if probe.active:
        return _wake(snapshot, wake_replicas, probe, why=f"activation in state {record.state.value}")
    if record.state is ParkState.REQUESTED and probe.epoch == record.epoch:
        acked = replace(record, state=ParkState.WATCHING, acked_by=waker, acked_at=now)
        return WakerDecision(
            action=WakerAction.ACK,
            write=_patch(snapshot, record=acked),
            track=True,
            why=f"watching the sources of park epoch {record.epoch}",
        )
    return WakerDecision(action=WakerAction.NONE, track=True, why="idle")


def _wake(
    snapshot: DeploymentSnapshot, wake_replicas: int, probe: Probe | None, *, why: str
) -> WakerDecision:
    found = f": {probe.summary}" if probe is not None and probe.summary else ""
    if snapshot.replicas > 0:
        # Pods run, so their leader's policy owns the count; the waker only ends the handoff
        # (the brief's max(current, wake-replicas) would raise a running 1 to wake-replicas).
        return WakerDecision(
            action=WakerAction.WAKE,
            write=_patch(snapshot, record=None),
            event=Event(reason="ParkCancelled", message=f"a trigger became active during the handoff{found}"),
            why=why,
        )
    write = _patch(snapshot, record=None, replicas=wake_replicas)
    # A wake from zero restarts the policy's history, as KEDA sets lastActiveTime when it scales
    # from zero: the state the parking leader wrote says "idle past the cooldown", and a leader
    # that restored it (a pod still shutting down whose consumer took the waking messages) would
    # park the Deployment again at once. The next leader starts fresh and waits one cooldown.
    write["metadata"]["annotations"][POLICY_STATE_ANNOTATION] = None
    return WakerDecision(
        action=WakerAction.WAKE,
        write=write,
        event=Event(reason="Woken", message=f"scaled 0 -> {wake_replicas}{found}"),
        why=why,
    )
