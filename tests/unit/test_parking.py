"""The handoff protocol, step by step: records, merge-patch bodies, epochs, both sides' decisions."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tidescale.parking import (
    PARK_EPOCH_ANNOTATION,
    PARK_LABEL,
    PARK_RECORD_ANNOTATION,
    POLICY_STATE_ANNOTATION,
    PROTOCOL_VERSION,
    STATUS_ANNOTATION,
    DeploymentSnapshot,
    LeaderAction,
    ParkRecord,
    ParkState,
    Probe,
    WakerAction,
    format_time,
    leader_step,
    parse_time,
    waker_step,
)

T0 = datetime(2026, 11, 28, 3, 0, 0, tzinfo=UTC)


def record(state: ParkState = ParkState.REQUESTED, *, epoch: int = 4, requester: str = "web-1") -> ParkRecord:
    return ParkRecord(
        epoch=epoch,
        state=state,
        requester=requester,
        lease_transitions=2,
        requested_at=T0,
        triggers=("kafka",),
        last_offsets={"kafka": {"orders/0": 120}},
        acked_by="waker-0" if state is not ParkState.REQUESTED else None,
        acked_at=T0 + timedelta(seconds=1) if state is not ParkState.REQUESTED else None,
        parked_at=T0 + timedelta(seconds=2) if state is ParkState.PARKED else None,
    )


def snapshot(
    rec: ParkRecord | None = None, *, replicas: int = 1, rv: str = "100", **annotations: str
) -> DeploymentSnapshot:
    annots = dict(annotations)
    labels = {"app": "web"}
    if rec is not None:
        annots[PARK_RECORD_ANNOTATION] = rec.to_json()
        labels[PARK_LABEL] = rec.state.value
    return DeploymentSnapshot(
        namespace="shop",
        name="web",
        resource_version=rv,
        replicas=replicas,
        labels=labels,
        annotations=annots,
    )


def lead(
    snap: DeploymentSnapshot, *, my_epoch: int | None = 4, idle: bool = True, now: datetime = T0, **kw: Any
):
    return leader_step(snap, me="web-1", lease_transitions=2, my_epoch=my_epoch, idle=idle, now=now, **kw)


def wake(snap: DeploymentSnapshot, probe: Probe | None, *, wake_replicas: int = 2):
    return waker_step(
        snap, waker="waker-0", probe=probe, wake_replicas=wake_replicas, now=T0 + timedelta(seconds=1)
    )


# -- records ------------------------------------------------------------------------------------


def test_a_record_survives_its_json_form_unchanged() -> None:
    for state in ParkState:
        assert ParkRecord.from_json(record(state).to_json()) == record(state)


def test_the_record_json_uses_the_documented_camel_case_keys() -> None:
    raw = json.loads(record(ParkState.PARKED).to_json())
    assert set(raw) == {
        "epoch", "state", "requester", "leaseTransitions", "requestedAt", "triggers",
        "lastOffsets", "ackedBy", "ackedAt", "parkedAt", "version",
    }  # fmt: skip
    assert raw["version"] == PROTOCOL_VERSION == 1
    assert raw["requestedAt"] == "2026-11-28T03:00:00.000000Z"
    assert raw["lastOffsets"] == {"kafka": {"orders/0": 120}}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "{}",
        '{"epoch": 0, "state": "parked"}',
        '{"epoch": "1"}',
        record().to_json().replace("requested", "x"),
    ],
)
def test_anything_but_a_record_we_wrote_is_refused(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 -- any ValueError: the caller treats all alike
        ParkRecord.from_json(text)


def test_times_are_utc_with_a_z_and_read_back_at_second_precision_too() -> None:
    assert parse_time(format_time(T0)) == T0
    assert parse_time("2026-11-28T03:00:00Z") == T0
    with pytest.raises(ValueError, match="zone"):
        parse_time("2026-11-28T03:00:00")


def test_a_snapshot_is_read_from_the_api_servers_json() -> None:
    obj = {
        "metadata": {
            "namespace": "shop",
            "name": "web",
            "resourceVersion": "7",
            "labels": {PARK_LABEL: "parked"},
        },
        "spec": {},
    }
    snap = DeploymentSnapshot.from_object(obj)
    assert (snap.key, snap.resource_version, snap.replicas, snap.label) == (("shop", "web"), "7", 1, "parked")
    assert snap.unreadable  # a label without a record


def test_a_label_that_disagrees_with_the_record_makes_the_state_unreadable() -> None:
    snap = snapshot(record(ParkState.WATCHING))
    assert not snap.unreadable
    mixed = DeploymentSnapshot(
        namespace="shop",
        name="web",
        resource_version="1",
        replicas=1,
        labels={PARK_LABEL: "parked"},
        annotations=dict(snap.annotations),
    )
    assert mixed.unreadable


def test_the_last_epoch_is_the_larger_of_the_counter_and_the_record() -> None:
    assert snapshot().last_epoch == 0
    assert snapshot(**{PARK_EPOCH_ANNOTATION: "9"}).last_epoch == 9
    assert snapshot(record(epoch=4), **{PARK_EPOCH_ANNOTATION: "3"}).last_epoch == 4


# -- the leader ---------------------------------------------------------------------------------


def test_an_idle_leader_requests_with_the_next_epoch_in_one_conditioned_patch() -> None:
    snap = snapshot(rv="55", **{PARK_EPOCH_ANNOTATION: "6"})
    decision = lead(snap, my_epoch=None, triggers=("kafka",), last_offsets={"kafka": {"orders/0": 9}})
    assert decision.action is LeaderAction.REQUEST
    assert decision.epoch == 7
    assert decision.write is not None
    meta = decision.write["metadata"]
    assert meta["resourceVersion"] == "55"
    assert meta["labels"] == {PARK_LABEL: "requested"}
    assert meta["annotations"][PARK_EPOCH_ANNOTATION] == "7"
    written = ParkRecord.from_json(meta["annotations"][PARK_RECORD_ANNOTATION])
    assert (written.epoch, written.state, written.requester, written.lease_transitions) == (
        7, ParkState.REQUESTED, "web-1", 2,
    )  # fmt: skip
    assert written.last_offsets == {"kafka": {"orders/0": 9}}
    assert "spec" not in decision.write


def test_a_busy_leader_with_no_record_writes_nothing() -> None:
    assert lead(snapshot(), my_epoch=None, idle=False).write is None


def test_after_the_ack_a_still_idle_leader_parks_with_replicas_zero_in_the_same_fenced_write() -> None:
    decision = lead(snapshot(record(ParkState.WATCHING), replicas=3, rv="80"), now=T0 + timedelta(seconds=3))
    assert decision.action is LeaderAction.PARK
    assert decision.fenced
    assert decision.write is not None
    assert decision.write["spec"] == {"replicas": 0}
    meta = decision.write["metadata"]
    assert (meta["resourceVersion"], meta["labels"]) == ("80", {PARK_LABEL: "parked"})
    parked = ParkRecord.from_json(meta["annotations"][PARK_RECORD_ANNOTATION])
    assert parked.state is ParkState.PARKED
    assert parked.parked_at == T0 + timedelta(seconds=3)
    assert decision.event is not None
    assert decision.event.reason == "Parked"


def test_after_the_ack_a_busy_leader_removes_its_record_and_keeps_its_replicas() -> None:
    decision = lead(snapshot(record(ParkState.WATCHING)), idle=False)
    assert decision.action is LeaderAction.ABORT
    assert decision.write is not None
    assert decision.write["metadata"]["labels"] == {PARK_LABEL: None}
    assert decision.write["metadata"]["annotations"] == {PARK_RECORD_ANNOTATION: None}
    assert "spec" not in decision.write
    assert decision.epoch is None


def test_the_leader_waits_for_the_ack_until_the_timeout() -> None:
    snap = snapshot(record(ParkState.REQUESTED))
    waiting = lead(snap, now=T0 + timedelta(seconds=9.9), ack_timeout=10.0)
    assert (waiting.action, waiting.write, waiting.epoch) == (LeaderAction.NONE, None, 4)


def test_no_ack_in_time_leaves_the_deployment_running_with_a_waker_unavailable_event() -> None:
    decision = lead(snapshot(record(ParkState.REQUESTED)), now=T0 + timedelta(seconds=30))
    assert decision.action is LeaderAction.ABORT
    assert decision.write is not None
    assert "spec" not in decision.write
    assert decision.event is not None
    assert (decision.event.reason, decision.event.type) == ("WakerUnavailable", "Warning")


def test_a_new_leader_clears_a_record_it_did_not_write() -> None:
    for rec, my_epoch in [(record(requester="web-0"), 4), (record(epoch=3), 4), (record(), None)]:
        decision = lead(snapshot(rec), my_epoch=my_epoch)
        assert decision.action is LeaderAction.CLEAR, (rec, my_epoch)
        assert decision.write is not None
        assert decision.write["metadata"]["annotations"][PARK_RECORD_ANNOTATION] is None


def test_a_leader_with_the_same_name_but_another_lease_term_treats_the_record_as_foreign() -> None:
    decision = leader_step(snapshot(record()), me="web-1", lease_transitions=3, my_epoch=4, idle=True, now=T0)
    assert decision.action is LeaderAction.CLEAR


def test_no_leader_touches_a_deployment_at_zero_replicas() -> None:
    for rec in [record(ParkState.PARKED), record(ParkState.WATCHING, requester="web-0"), None]:
        decision = lead(snapshot(rec, replicas=0), my_epoch=None)
        assert (decision.action, decision.write) == (LeaderAction.NONE, None)


def test_a_leader_whose_record_vanished_forgets_its_epoch() -> None:
    decision = lead(snapshot(), my_epoch=4)
    assert (decision.action, decision.write, decision.epoch) == (LeaderAction.FORGET, None, None)


def test_a_leader_releases_its_own_parked_record_when_scaled_by_hand() -> None:
    decision = lead(snapshot(record(ParkState.PARKED), replicas=2))
    assert decision.action is LeaderAction.ABORT


def test_the_epoch_counter_survives_a_cleared_record() -> None:
    cleared = lead(snapshot(record(ParkState.WATCHING)), idle=False)
    assert cleared.write is not None
    assert PARK_EPOCH_ANNOTATION not in cleared.write["metadata"]["annotations"]  # left as it was


# -- the waker ----------------------------------------------------------------------------------


def test_the_waker_acks_only_after_measuring_the_requested_epoch() -> None:
    snap = snapshot(record(epoch=4), rv="31")
    assert wake(snap, None).action is WakerAction.NONE
    assert wake(snap, Probe(epoch=3, active=False)).action is WakerAction.NONE
    decision = wake(snap, Probe(epoch=4, active=False))
    assert decision.action is WakerAction.ACK
    assert decision.track
    assert decision.write is not None
    meta = decision.write["metadata"]
    assert (meta["resourceVersion"], meta["labels"]) == ("31", {PARK_LABEL: "watching"})
    acked = ParkRecord.from_json(meta["annotations"][PARK_RECORD_ANNOTATION])
    assert (acked.state, acked.acked_by, acked.epoch) == (ParkState.WATCHING, "waker-0", 4)


def test_activation_at_zero_wakes_to_the_wake_count_and_removes_the_record() -> None:
    for state in ParkState:
        decision = wake(
            snapshot(record(state), replicas=0, rv="9"), Probe(epoch=1, active=True, summary="lag 3")
        )
        assert decision.action is WakerAction.WAKE, state
        assert decision.write is not None
        assert decision.write["spec"] == {"replicas": 2}
        meta = decision.write["metadata"]
        assert meta == {
            "resourceVersion": "9",
            "labels": {PARK_LABEL: None},
            # the parking leader's "idle past the cooldown" must not reach the next leader
            "annotations": {PARK_RECORD_ANNOTATION: None, POLICY_STATE_ANNOTATION: None},
        }
        assert decision.event is not None
        assert (decision.event.reason, decision.event.message) == ("Woken", "scaled 0 -> 2: lag 3")


def test_activation_during_the_handoff_ends_it_without_touching_running_replicas() -> None:
    for state in (ParkState.REQUESTED, ParkState.WATCHING):
        decision = wake(snapshot(record(state), replicas=1), Probe(epoch=4, active=True))
        assert decision.action is WakerAction.WAKE
        assert decision.write is not None
        assert "spec" not in decision.write
        assert decision.event is not None
        assert decision.event.reason == "ParkCancelled"


def test_a_parked_deployment_scaled_by_hand_is_released() -> None:
    decision = wake(snapshot(record(ParkState.PARKED), replicas=3), Probe(epoch=4, active=False))
    assert decision.action is WakerAction.RELEASE
    assert decision.write is not None
    assert "spec" not in decision.write
    assert decision.write["metadata"]["labels"] == {PARK_LABEL: None}


def test_an_idle_parked_deployment_stays_parked_and_measured() -> None:
    decision = wake(snapshot(record(ParkState.PARKED), replicas=0), Probe(epoch=4, active=False))
    assert (decision.action, decision.write, decision.track) == (WakerAction.NONE, None, True)


def test_a_failed_measurement_never_acks_and_never_wakes() -> None:
    for state in ParkState:
        decision = wake(snapshot(record(state), replicas=0), None)
        assert (decision.action, decision.track) == (WakerAction.NONE, True)


def test_unreadable_park_state_is_released_when_running_and_woken_at_zero() -> None:
    garbage = {PARK_RECORD_ANNOTATION: "{not json"}
    running = DeploymentSnapshot(
        namespace="a",
        name="b",
        resource_version="1",
        replicas=1,
        labels={PARK_LABEL: "parked"},
        annotations=garbage,
    )
    assert wake(running, None).action is WakerAction.RELEASE
    at_zero = DeploymentSnapshot(
        namespace="a",
        name="b",
        resource_version="1",
        replicas=0,
        labels={PARK_LABEL: "parked"},
        annotations=garbage,
    )
    decision = wake(at_zero, None)
    assert decision.action is WakerAction.WAKE
    assert decision.write is not None
    assert decision.write["spec"] == {"replicas": 2}


def test_a_deployment_without_park_state_is_not_the_wakers_business() -> None:
    decision = wake(snapshot(), Probe(epoch=0, active=True))
    assert (decision.action, decision.write, decision.track) == (WakerAction.NONE, None, False)


# -- protocol versions --------------------------------------------------------------------------


def with_version(rec: ParkRecord, version: int | None) -> str:
    raw = json.loads(rec.to_json())
    if version is None:
        del raw["version"]
    else:
        raw["version"] = version
    return json.dumps(raw)


def versioned(rec: ParkRecord, version: int | None, *, replicas: int = 1) -> DeploymentSnapshot:
    base = snapshot(rec, replicas=replicas)
    return DeploymentSnapshot(
        namespace=base.namespace,
        name=base.name,
        resource_version=base.resource_version,
        replicas=base.replicas,
        labels=base.labels,
        annotations={**base.annotations, PARK_RECORD_ANNOTATION: with_version(rec, version)},
    )


def test_a_record_without_a_version_is_read_as_version_1_as_every_earlier_build_wrote_it() -> None:
    rec = record(ParkState.WATCHING)
    assert ParkRecord.from_json(with_version(rec, None)) == rec
    assert versioned(rec, None).newer_protocol is None


def test_a_record_of_a_newer_version_makes_the_leader_hold_instead_of_clearing_it() -> None:
    foreign = record(ParkState.REQUESTED, requester="web-2")
    assert leader_step(versioned(foreign, None), me="web-1", lease_transitions=2, my_epoch=None, idle=True,
                       now=T0).action is LeaderAction.CLEAR  # fmt: skip
    step = leader_step(
        versioned(foreign, 2), me="web-1", lease_transitions=2, my_epoch=None, idle=True, now=T0
    )
    assert step.action is LeaderAction.HOLD
    assert step.write is None
    assert "version 2" in step.why


def test_a_status_of_a_newer_version_makes_the_leader_hold() -> None:
    base = snapshot(None)
    newer = DeploymentSnapshot(
        namespace="shop",
        name="web",
        resource_version="100",
        replicas=1,
        annotations={STATUS_ANNOTATION: json.dumps({"version": 2, "leader": "web-9"})},
    )
    assert leader_step(base, me="web-1", lease_transitions=2, my_epoch=None, idle=True,
                       now=T0).action is LeaderAction.REQUEST  # fmt: skip
    step = leader_step(newer, me="web-1", lease_transitions=2, my_epoch=None, idle=True, now=T0)
    assert step.action is LeaderAction.HOLD
    assert step.write is None


@pytest.mark.parametrize("active", [True, False])
def test_a_record_of_a_newer_version_makes_the_waker_hold_neither_acking_nor_waking(active: bool) -> None:
    for state, replicas in ((ParkState.REQUESTED, 1), (ParkState.PARKED, 0)):
        rec = record(state)
        decision = waker_step(
            versioned(rec, 2, replicas=replicas),
            waker="waker-0",
            probe=Probe(epoch=rec.epoch, active=active),
            wake_replicas=1,
            now=T0,
        )
        assert decision.action is WakerAction.HOLD
        assert decision.write is None
        assert decision.event is not None
        assert decision.event.reason == "ProtocolTooNew"
        same = waker_step(
            versioned(rec, 1, replicas=replicas),
            waker="waker-0",
            probe=Probe(epoch=rec.epoch, active=active),
            wake_replicas=1,
            now=T0,
        )
        if active or state is ParkState.REQUESTED:
            assert same.write is not None  # version 1 is spoken here: woken, or acked


def test_the_ack_timeout_runs_on_the_leaders_own_clock_when_it_gives_one() -> None:
    rec = record(ParkState.REQUESTED)
    args: dict[str, Any] = {"me": "web-1", "lease_transitions": 2, "my_epoch": 4, "idle": True}
    # The wall clock jumped an hour ahead; 5 s have passed on the monotonic clock.
    later = T0 + timedelta(hours=1)
    assert leader_step(snapshot(rec), **args, now=later).action is LeaderAction.ABORT
    assert leader_step(snapshot(rec), **args, now=later, requested_ago=5.0).action is LeaderAction.NONE
    assert leader_step(snapshot(rec), **args, now=T0, requested_ago=31.0).action is LeaderAction.ABORT
