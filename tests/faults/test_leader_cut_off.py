"""Fault: the leader's pod is cut off from the network (the host end of its veth taken down),
then reconnected.

The cut-off leader's renewals fail; it stops believing it leads at its renew deadline and
another pod takes the Lease once it runs out, and scales on a burst meanwhile. Reconnected,
the old leader has stepped down (its log says so) and writes nothing out of term:
every write follows the Lease (the audit log), replicas stay in [min, max], nothing is lost.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from tests.faults.invariants import (
    check_replicas_within,
    check_writes_follow_the_lease,
    lease_holder,
    lease_writes,
)
from tests.faults.prologue import MakeLedKafka
from tests.integration.rigkube import wait_for
from tests.rig.controlplane import ControlPlane
from tests.rig.podrunner import PodRunner

pytestmark = pytest.mark.rig

MIN, MAX = 2, 3


def host_veth(runner: PodRunner, namespace: str, pod: str) -> str:
    """The host end of the pod's veth pair: the rig names namespace tsrig-S-I and veth tsvSxI."""
    _, slot, index = runner.pod_netns()[f"{namespace}/{pod}"].split("-")
    return f"tsv{slot}x{index}"


def link_up(veth: str, *, check: bool) -> None:
    subprocess.run(["ip", "link", "set", veth, "up"], check=check)


def test_a_leader_cut_off_from_the_network_is_replaced_and_writes_nothing_out_of_term_once_reconnected(
    led_kafka: MakeLedKafka,
    control_plane: ControlPlane,
    pod_runner: PodRunner,
    teardown: list[Callable[[], None]],
) -> None:
    led = led_kafka("fault-cutoff", min_replicas=MIN, max_replicas=MAX)
    setup, ids, settled, leader = led.setup, led.ids, led.settled, led.leader
    namespace, name, observer = setup.namespace, setup.name, setup.observer
    veth = host_veth(pod_runner, namespace, leader)

    cut = datetime.now(UTC)
    subprocess.run(["ip", "link", "set", veth, "down"], check=True)
    try:
        teardown.append(lambda: link_up(veth, check=False))
        takeover = wait_for(
            "another pod to take the Lease",
            lambda: next(
                (w for w in lease_writes(control_plane, namespace, name, after=cut) if w["pod"] != leader),
                None,
            ),
            timeout=60,
        )
        assert takeover["pod"] != leader
        burst = ids.send(120)
        observer.wait(
            f"scaled to {MAX} by the new leader", lambda s: s.replicas == MAX, timeout=60, after=settled
        )
    finally:
        link_up(veth, check=True)

    # It stepped down on its own, at its renew deadline, while still cut off (it may be gone by
    # now: scaling down, the ReplicaSet removes the pod that was unready first).
    log = pod_runner.log_path(namespace, leader, "tidescale-agent").read_text()
    assert f"{leader} stopped leading" in log, "the cut-off leader never stepped down"
    assert "no renewal succeeded" in log
    setup.wait_consumed(set(burst), timeout=120)
    led.wait_no_lag()
    assert lease_holder(control_plane, namespace, name) != leader or lease_writes(
        control_plane, namespace, name, after=cut
    )
    assert check_writes_follow_the_lease(control_plane, namespace, name) >= 2
    check_replicas_within(observer, MIN, MAX, after=settled)
