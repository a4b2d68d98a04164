"""Fault: the active waker of two (elected through one Lease, as the chart runs them) is
SIGKILLed at each step of the handoff; the standby finishes it.

- ``requested``: the active waker is frozen before it acks, then killed; the standby takes the
  waker Lease once it runs out and acks, and the leader parks.
- ``watching``: killed after its ack; the leader parks without it, and the standby wakes the
  Deployment on a message produced while no waker leads.
- ``parked``: killed while parked; a message produced meanwhile is noticed by the standby.

Every message is consumed, replicas stay in [0, max] (0 only while parked), every agent write
follows the agents' Lease, and the Woken Event is reported by the standby.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from tests.faults.invariants import check_writes_follow_the_lease, lease_holder
from tests.faults.prologue import MakeArmedKafka
from tests.integration.rigkube import WAKER_NAMESPACE, items, wait_for
from tests.integration.test_scale_to_zero import WakerProcess, events, wait_no_pods
from tests.rig.controlplane import ControlPlane
from tests.rig.processes import Supervisor

pytestmark = pytest.mark.rig


def waker_lease_holder(plane: ControlPlane, lease: str) -> str | None:
    for found in items(plane, "lease", WAKER_NAMESPACE):
        if found["metadata"]["name"] == lease:
            holder = found["spec"].get("holderIdentity")
            return str(holder) if holder else None
    return None


@pytest.mark.parametrize("step", ["requested", "watching", "parked"])
def test_the_standby_waker_finishes_the_handoff_when_the_active_one_is_killed_at_each_step(
    step: str,
    armed_kafka: MakeArmedKafka,
    control_plane: ControlPlane,
    rig_supervisor: Supervisor,
    teardown: list[Callable[[], None]],
) -> None:
    armed = armed_kafka(f"fault-standby-{step}")
    setup, ids = armed.setup, armed.ids
    observer, active = setup.observer, setup.waker
    standby = WakerProcess(rig_supervisor, active.kubeconfig, setup.namespace, lease_name=active.lease_name)
    teardown.append(standby.stop)
    active.start()
    wait_for(
        "the first waker to lead",
        lambda: waker_lease_holder(control_plane, active.lease_name) == active.identity,
        timeout=60,
    )
    standby.start()
    wait_for("an agent to lead", lambda: lease_holder(control_plane, setup.namespace, setup.name), timeout=60)

    if step == "requested":
        active.signal(signal.SIGSTOP)  # it has seen nothing of the request when the kill comes
        at = observer.wait_label("requested", timeout=60)
        active.kill()
        parked = observer.wait_parked(timeout=60, after=at)  # acked by the standby
        wait_no_pods(control_plane, setup)
        sent = ids.send(3)
    elif step == "watching":
        at = observer.wait_label("watching", timeout=60)
        active.kill()
        parked = observer.wait_parked(timeout=30, after=at)
        wait_no_pods(control_plane, setup)
        sent = ids.send(3)  # while the standby waits for the Lease to run out
    else:
        parked = observer.wait_parked(timeout=60)
        active.kill()
        wait_no_pods(control_plane, setup)
        sent = ids.send(3)

    observer.wait_awake(timeout=60, after=parked)
    setup.wait_consumed(set(sent), timeout=60)
    assert waker_lease_holder(control_plane, active.lease_name) == standby.identity
    woken = events(control_plane, setup.namespace, "Woken")
    assert woken, "no Woken event"
    assert all(
        e.get("reportingInstance") == standby.identity or standby.identity in str(e.get("source"))
        for e in woken
    ), [(e.get("reportingInstance"), e.get("source")) for e in woken]
    assert check_writes_follow_the_lease(control_plane, setup.namespace, setup.name) >= 1
    observer.check_invariants()
