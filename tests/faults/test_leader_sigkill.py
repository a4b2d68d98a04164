"""Fault: the leading agent is SIGKILLed (nothing released), and a burst arrives at once.

The new leader (the pod runner's restart of the same agent, or a follower once the lease runs
out) must see the burst and scale; every write follows the Lease; replicas stay in bounds; every
message is consumed (the consumers' record and Kafka's own group tool agree).
"""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime

import pytest

from tests.faults.invariants import (
    agent_pid,
    check_replicas_within,
    check_writes_follow_the_lease,
    lease_writes,
    wait_for_scale_write,
)
from tests.faults.prologue import MakeLedKafka
from tests.rig.controlplane import ControlPlane
from tests.rig.podrunner import PodRunner

pytestmark = pytest.mark.rig

MIN, MAX = 2, 3


def test_a_burst_right_after_the_leader_is_sigkilled_still_scales_and_every_write_follows_the_lease(
    led_kafka: MakeLedKafka,
    control_plane: ControlPlane,
    pod_runner: PodRunner,
) -> None:
    led = led_kafka("fault-sigkill", min_replicas=MIN, max_replicas=MAX)
    setup, ids, settled, leader = led.setup, led.ids, led.settled, led.leader
    namespace, name, observer = setup.namespace, setup.name, setup.observer
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
    led.wait_no_lag()
    observer.wait(f"back to min {MIN} once drained", lambda s: s.replicas == MIN, timeout=90, after=at_max)
    assert check_writes_follow_the_lease(control_plane, namespace, name) >= 2
    check_replicas_within(observer, MIN, MAX, after=settled)
