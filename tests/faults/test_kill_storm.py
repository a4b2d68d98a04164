"""Long fault run (``make test-faults-long``): leaders killed over and over while bursts arrive.

For FAULTS_LONG_SECONDS (default 300), each round kills the current leader's agent with a
signal picked by a seeded generator (SIGKILL, SIGTERM, or SIGSTOP held past the lease then
SIGCONT), sends a burst at once, and waits for the Deployment to reach its maximum. At the
end every message is consumed, Kafka's group shows no lag, every write followed the Lease,
and replicas never left [min, max].
"""

from __future__ import annotations

import os
import random
import signal
import time
from functools import partial

import pytest

from tests.faults.invariants import (
    agent_pid,
    check_replicas_within,
    check_writes_follow_the_lease,
    lease_holder,
)
from tests.faults.prologue import MakeLedKafka
from tests.integration.rigkube import wait_for
from tests.rig.controlplane import ControlPlane
from tests.rig.podrunner import PodRunner

pytestmark = [pytest.mark.rig, pytest.mark.long]

MIN, MAX = 2, 3
SEED = 20261202


def test_leaders_killed_over_and_over_during_bursts_lose_nothing_and_never_write_out_of_term(
    led_kafka: MakeLedKafka,
    control_plane: ControlPlane,
    pod_runner: PodRunner,
) -> None:
    seconds = float(os.environ.get("FAULTS_LONG_SECONDS", "300"))
    rng = random.Random(SEED)
    led = led_kafka("fault-storm", min_replicas=MIN, max_replicas=MAX, work_seconds=0.1)
    setup, ids = led.setup, led.ids
    namespace, name, observer = setup.namespace, setup.name, setup.observer
    index = settled = led.settled
    ends = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < ends:
        leader = wait_for("a leader", lambda: lease_holder(control_plane, namespace, name), timeout=90)
        pid = wait_for("the leader's agent", partial(_pid_or_none, pod_runner, namespace, leader), timeout=60)
        how = rng.choice([signal.SIGKILL, signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP])
        os.kill(pid, how)
        if how == signal.SIGSTOP:
            time.sleep(8.0)  # past the 6 s lease: a follower takes over
            os.kill(pid, signal.SIGCONT)
        ids.send(rng.randint(150, 300))  # outlasts a lease expiry at 2 pods (0.1 s each)
        index = observer.wait(
            f"max {MAX} in round {rounds}", lambda s: s.replicas == MAX, timeout=90, after=index
        )
        index = observer.wait(
            f"min {MIN} in round {rounds}", lambda s: s.replicas == MIN, timeout=120, after=index
        )
        rounds += 1
    setup.wait_consumed(ids.produced, timeout=180)
    led.wait_no_lag()
    assert rounds >= 1
    assert check_writes_follow_the_lease(control_plane, namespace, name) >= 2 * rounds
    check_replicas_within(observer, MIN, MAX, after=settled)


def _pid_or_none(runner: PodRunner, namespace: str, pod: str) -> int | None:
    try:
        return agent_pid(runner, namespace, pod)
    except (AssertionError, KeyError, FileNotFoundError):
        return None
