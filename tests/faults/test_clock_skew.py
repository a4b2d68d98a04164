"""Fault: the agents of one Deployment disagree about the time.

The first agent to start runs with its wall clock 6 s behind, every later one (here: the same
pod's agent after a SIGKILL, as after a reschedule onto another node) 6 s ahead
(``TIDESCALE_CLOCK_OFFSET_SECONDS``, a test-only hook; the monotonic clock is untouched). The
new leader restores the policy state its predecessor wrote with the other clock; skew smaller
than the cooldown is the dangerous kind (a larger one makes the state look older than the
cooldown, which restarts it). Asserted, from outside tidescale:

- nothing parks early: the park request comes no sooner than one cooldown after the first
  leader began (its start counts as activity, and nothing was active since);
- no double ack: the waker acknowledged each park epoch once (its own counter), one Parked Event;
- one writer per term, replicas in bounds (0 only while parked), the wake consumes every message.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.faults._agent_variants import kafka_setup_with_chosen_agent
from tests.faults.invariants import (
    agent_pid,
    check_replicas_within,
    check_writes_follow_the_lease,
    lease_holder,
    lease_writes,
)
from tests.integration.rigkube import get, wait_for
from tests.integration.test_scale_to_zero import Background, arm, events
from tests.rig.controlplane import ControlPlane
from tests.rig.kafka import Kafka
from tests.rig.podrunner import PodRunner
from tests.rig.processes import Supervisor
from tidescale.parking import PARK_RECORD_ANNOTATION, ParkRecord

pytestmark = pytest.mark.rig

SKEW = 6.0
COOLDOWN = 30.0


def waker_acks(argv: list[str]) -> float:
    """tidescale_waker_acks_total from the waker's own /metrics."""
    port = argv[argv.index("--port") + 1]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    return sum(
        float(line.split()[-1]) for line in body.splitlines() if line.startswith("tidescale_waker_acks_total")
    )


def test_agents_with_skewed_wall_clocks_park_no_earlier_than_the_cooldown_and_the_waker_acks_once(
    control_plane: ControlPlane,
    pod_runner: PodRunner,
    kafka: Kafka,
    rig_supervisor: Supervisor,
    rig_run_dir: Path,
    background: Background,
    teardown: list[Callable[[], None]],
) -> None:
    setup, ids = kafka_setup_with_chosen_agent(
        control_plane,
        rig_supervisor,
        background,
        kafka,
        rig_run_dir,
        "fault-skew",
        chosen={"TIDESCALE_CLOCK_OFFSET_SECONDS": str(-SKEW)},
        others={"TIDESCALE_CLOCK_OFFSET_SECONDS": str(SKEW)},
        per="process",
        extra={"max-replicas": "1", "cooldown": f"{COOLDOWN:g}s"},
    )
    arm(teardown, control_plane, setup, ids)
    namespace, name, observer = setup.namespace, setup.name, setup.observer
    setup.waker.start()

    leader = wait_for("a leader", lambda: lease_holder(control_plane, namespace, name), timeout=60)
    first_lead = lease_writes(control_plane, namespace, name)[0]["received"]

    def policy_state() -> dict[str, Any]:
        annotations = get(control_plane, "deployment", name, namespace)["metadata"].get("annotations") or {}
        return dict(json.loads(annotations.get("tidescale.io/policy-state", "{}")))

    def idle_state_written() -> bool:
        state = policy_state()
        return bool(state.get("a") is not None and state["a"] >= 500)

    # The first leader (clock 6 s behind) writes its state on change: a new threshold is one, and
    # by then its only activity (its start) is a poll or more behind it.
    wait_for("the first leader's policy state", lambda: "a" in policy_state(), timeout=30)
    time.sleep(1.5)
    control_plane.kubectl(
        "annotate", "deployment", name, "-n", namespace, "--overwrite", "tidescale.io/kafka.lag-threshold=21"
    )
    wait_for("the first leader's idle policy state", idle_state_written, timeout=30)
    killed_pid = agent_pid(pod_runner, namespace, leader)
    os.kill(killed_pid, signal.SIGKILL)

    # The same pod's agent, restarted with its clock 6 s ahead, leads on.
    def restarted() -> bool:
        try:
            return agent_pid(pod_runner, namespace, leader) != killed_pid
        except (AssertionError, KeyError):
            return False  # between the kill and the restart: no agent process in the pod

    wait_for("the restarted agent", restarted, timeout=60)

    requested = observer.wait_label("requested", timeout=90)
    record = ParkRecord.from_json(
        get(control_plane, "deployment", name, namespace)["metadata"]["annotations"][PARK_RECORD_ANNOTATION]
    )
    parked = observer.wait_parked(timeout=60, after=requested)
    # requestedAt is the requester's clock: the restarted agent's, SKEW ahead of the API server's.
    requested_at = record.requested_at - timedelta(seconds=SKEW)
    earliest = first_lead + timedelta(seconds=COOLDOWN)
    assert requested_at >= earliest, (
        f"park requested at {requested_at}, {(earliest - requested_at).total_seconds():.1f}s before "
        f"the cooldown that began with the first leader ({first_lead}) ended"
    )

    sent = ids.send(3)
    observer.wait_awake(timeout=60, after=parked)
    setup.wait_consumed(set(sent), timeout=90)

    assert waker_acks(setup.waker._argv) == 1  # one park epoch, acknowledged once
    parked_events = events(control_plane, namespace, "Parked")
    assert sum(int(e.get("count") or 1) for e in parked_events) == 1
    assert check_writes_follow_the_lease(control_plane, namespace, name) >= 2
    check_replicas_within(observer, 1, 1)
