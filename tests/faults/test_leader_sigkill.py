"""Fault: the leading agent is SIGKILLed (nothing released), and a burst arrives at once.

The new leader (the pod runner's restart of the same agent, or a follower once the lease runs
out) must see the burst and scale; every write follows the Lease; replicas stay in bounds; every
message is consumed (the consumers' record and Kafka's own group tool agree).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.faults.invariants import (
    agent_pid,
    check_replicas_within,
    check_writes_follow_the_lease,
    group_lag,
    lease_holder,
    lease_writes,
    wait_for_scale_write,
)
from tests.integration.rigkube import get, wait_for
from tests.integration.test_scale_to_zero import Background, arm, kafka_setup
from tests.rig.controlplane import ControlPlane
from tests.rig.kafka import Kafka
from tests.rig.podrunner import PodRunner
from tests.rig.processes import Supervisor

pytestmark = pytest.mark.rig

MIN, MAX = 2, 3


def test_a_burst_right_after_the_leader_is_sigkilled_still_scales_and_every_write_follows_the_lease(
    control_plane: ControlPlane,
    pod_runner: PodRunner,
    kafka: Kafka,
    rig_supervisor: Supervisor,
    rig_run_dir: Path,
    background: Background,
    teardown: list[Callable[[], None]],
) -> None:
    setup, ids = kafka_setup(
        control_plane,
        rig_supervisor,
        background,
        kafka,
        rig_run_dir,
        "fault-sigkill",
        work_seconds=0.2,  # slow enough that the burst is still there when the new leader looks
        extra={"min-replicas": str(MIN), "max-replicas": str(MAX), "scale-up-policies": "10 pods/1s"},
    )
    arm(teardown, control_plane, setup, ids)
    namespace, name, observer = setup.namespace, setup.name, setup.observer
    group = get(control_plane, "deployment", name, namespace)["metadata"]["annotations"][
        "tidescale.io/kafka.consumer-group"
    ]
    settled = observer.wait(f"the minimum {MIN} applied", lambda s: s.replicas == MIN, timeout=60)
    leader = wait_for("a leader", lambda: lease_holder(control_plane, namespace, name), timeout=60)
    pid = agent_pid(pod_runner, namespace, leader)

    killed = datetime.now(UTC)
    os.kill(pid, signal.SIGKILL)
    burst = ids.send(120)  # lag 120 over threshold 20: the policy wants more than max

    at_max = observer.wait(f"scaled to max {MAX} after the kill", lambda s: s.replicas == MAX, timeout=60)
    # A new process leads (the dead one can send nothing the API server receives after the kill),
    # and the scale-up was written by that leader after the kill.
    assert lease_writes(control_plane, namespace, name, after=killed), "nobody renewed after the kill"
    wait_for_scale_write(control_plane, namespace, name, after=killed, what="a scale write after the kill")

    setup.wait_consumed(set(burst), timeout=120)
    wait_for(
        "no lag left in Kafka's own view", lambda: group_lag(kafka, group) == 0, timeout=60, interval=1.0
    )
    observer.wait(f"back to min {MIN} once drained", lambda s: s.replicas == MIN, timeout=90, after=at_max)
    assert check_writes_follow_the_lease(control_plane, namespace, name) >= 2
    check_replicas_within(observer, MIN, MAX, after=settled)
