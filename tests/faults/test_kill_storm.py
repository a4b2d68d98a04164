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
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.invariants import (
    agent_pid,
    check_replicas_within,
    check_writes_follow_the_lease,
    group_lag,
    lease_holder,
)
from tests.integration.rigkube import get, wait_for
from tests.integration.test_scale_to_zero import Background, arm, kafka_setup
from tests.rig.controlplane import ControlPlane
from tests.rig.kafka import Kafka
from tests.rig.podrunner import PodRunner
from tests.rig.processes import Supervisor

pytestmark = [pytest.mark.rig, pytest.mark.long]

MIN, MAX = 2, 3
SEED = 20261202


def test_leaders_killed_over_and_over_during_bursts_lose_nothing_and_never_write_out_of_term(
    control_plane: ControlPlane,
    pod_runner: PodRunner,
    kafka: Kafka,
    rig_supervisor: Supervisor,
    rig_run_dir: Path,
    background: Background,
    teardown: list[Callable[[], None]],
) -> None:
    seconds = float(os.environ.get("FAULTS_LONG_SECONDS", "300"))
    rng = random.Random(SEED)
    setup, ids = kafka_setup(
        control_plane,
        rig_supervisor,
        background,
        kafka,
        rig_run_dir,
        "fault-storm",
        work_seconds=0.1,
        extra={"min-replicas": str(MIN), "max-replicas": str(MAX), "scale-up-policies": "10 pods/1s"},
    )
    arm(teardown, control_plane, setup, ids)
    namespace, name, observer = setup.namespace, setup.name, setup.observer
    group = get(control_plane, "deployment", name, namespace)["metadata"]["annotations"][
        "tidescale.io/kafka.consumer-group"
    ]
    index = settled = observer.wait(f"the minimum {MIN}", lambda s: s.replicas == MIN, timeout=60)
    ends = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < ends:
        leader = wait_for("a leader", lambda: lease_holder(control_plane, namespace, name), timeout=90)
        pid = wait_for(
            "the leader's agent", lambda pod=leader: _pid_or_none(pod_runner, namespace, pod), timeout=60
        )
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
    wait_for(
        "no lag left in Kafka's own view", lambda: group_lag(kafka, group) == 0, timeout=60, interval=1.0
    )
    assert rounds >= 1
    assert check_writes_follow_the_lease(control_plane, namespace, name) >= 2 * rounds
    check_replicas_within(observer, MIN, MAX, after=settled)


def _pid_or_none(runner: PodRunner, namespace: str, pod: str) -> int | None:
    try:
        return agent_pid(runner, namespace, pod)
    except (AssertionError, KeyError, FileNotFoundError):
        return None
