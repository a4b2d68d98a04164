"""Faults of the control plane, each longer than the agents' 4 s renew deadline:

- kube-apiserver stops and starts again (etcd and the controller manager keep running, so no
  state is lost);
- etcd is paused (SIGSTOP) and resumed: the API server is up but cannot answer writes.

While it lasts nobody can write; the leader's hold runs out and it stops believing it leads.
Once it is back the agents re-watch and elect a leader, a burst scales the Deployment, every
write still follows the Lease (so none comes from a leader whose hold ran out during the
fault), and replicas never leave [min, max].
"""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime

import pytest

from tests.faults.invariants import (
    check_replicas_within,
    check_writes_follow_the_lease,
    lease_writes,
    wait_for_scale_write,
)
from tests.faults.prologue import MakeLedKafka
from tests.integration.rigkube import get, wait_for
from tests.rig.controlplane import ControlPlane
from tests.rig.processes import Supervisor

pytestmark = pytest.mark.rig

MIN, MAX = 1, 3
DOWN_SECONDS = 8.0  # more than the 4 s renew deadline, more than the 6 s lease


def pause_etcd(plane: ControlPlane) -> None:
    etcd = next(p for p in plane.processes if p.name == "etcd")
    os.kill(etcd.pid, signal.SIGSTOP)
    try:
        time.sleep(DOWN_SECONDS)
    finally:
        os.kill(etcd.pid, signal.SIGCONT)


@pytest.mark.parametrize("fault", ["apiserver-restart", "etcd-paused"])
def test_after_a_control_plane_outage_the_agents_elect_again_and_a_burst_scales_with_every_write_in_a_term(
    fault: str,
    led_kafka: MakeLedKafka,
    control_plane: ControlPlane,
    rig_supervisor: Supervisor,
) -> None:
    led = led_kafka(f"fault-{fault}", min_replicas=MIN, max_replicas=MAX)
    setup, ids = led.setup, led.ids
    namespace, name, observer = setup.namespace, setup.name, setup.observer
    wait_for(
        "the leader's status",
        lambda: (
            "tidescale.io/status"
            in get(control_plane, "deployment", name, namespace)["metadata"]["annotations"]
        ),
        timeout=30,
    )

    began = datetime.now(UTC)
    if fault == "apiserver-restart":
        control_plane.restart_apiserver(rig_supervisor, down_seconds=DOWN_SECONDS)
    else:
        pause_etcd(control_plane)
    before_burst = len(observer.states)
    burst = ids.send(120)
    at_max = observer.wait(
        f"scaled to max {MAX} after the {fault}", lambda s: s.replicas == MAX, timeout=90, after=before_burst
    )
    # Leadership was renewed or taken again and the scale-up written after the fault began; that
    # every write (these included) came from the Lease's holder is checked below.
    assert lease_writes(control_plane, namespace, name, after=began), (
        f"nobody wrote the Lease after the {fault}"
    )
    wait_for_scale_write(control_plane, namespace, name, after=began, what=f"a scale write after the {fault}")

    setup.wait_consumed(set(burst), timeout=120)
    led.wait_no_lag()
    observer.wait(f"back to min {MIN}", lambda s: s.replicas == MIN, timeout=90, after=at_max)
    assert check_writes_follow_the_lease(control_plane, namespace, name) >= 2
    check_replicas_within(observer, MIN, MAX)
