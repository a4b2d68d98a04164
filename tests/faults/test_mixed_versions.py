"""Fault: an upgrade under way, pods of one Deployment running agents of two builds.

1. The previous build (``PREVIOUS``, the last commit before the park record and status carried a
   protocol version: it writes neither) beside this one: the first pod runs the previous build's
   agent from a ``git archive`` of that commit on PYTHONPATH, every later pod this build's. The
   previous build leads and scales up; hung (SIGSTOP), it hands over to a pod of this build; the
   Deployment drains, parks through the waker (of this build) and wakes. Every write follows the
   Lease, replicas stay in bounds, nothing is lost, and both builds wrote to the Deployment.
2. A park record of protocol version 2 (a build newer than this one): this build's leader and
   waker hold. Neither clears, acks nor scales; each says so with a ProtocolTooNew Warning
   Event; once the record is gone, the leader acts again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tarfile
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from tests.faults._agent_variants import kafka_setup_with_chosen_agent
from tests.faults.invariants import (
    agent_pid,
    check_replicas_within,
    check_writes_follow_the_lease,
    lease_holder,
    scale_writes,
)
from tests.integration.rigkube import REPO_ROOT, get, wait_for
from tests.integration.test_scale_to_zero import Background, arm, events, kafka_setup
from tests.rig.controlplane import ControlPlane
from tests.rig.kafka import Kafka
from tests.rig.podrunner import PodRunner
from tests.rig.processes import Supervisor
from tidescale.parking import PARK_LABEL, PARK_RECORD_ANNOTATION

pytestmark = pytest.mark.rig

PREVIOUS = "afe7718"
"""main before protocol versions: records and status without a version (read as 1)."""


@pytest.fixture
def previous_build(tmp_path: Path) -> Path:
    """The previous commit's agent package, unpacked from git (no worktree, nothing to clean in the
    repository); removed with tmp_path."""
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", "--format=tar", PREVIOUS, "agent/tidescale"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(tmp_path, filter="data")
    package = tmp_path / "agent"
    assert (package / "tidescale" / "agent.py").is_file()
    assert "PROTOCOL_VERSION" not in (package / "tidescale" / "parking.py").read_text()
    return package


def status_of(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any] | None:
    annotations = get(plane, "deployment", name, namespace)["metadata"].get("annotations") or {}
    text = annotations.get("tidescale.io/status")
    return None if text is None else dict(json.loads(text))


def test_agents_of_the_previous_build_and_this_one_elect_one_leader_scale_park_and_wake(
    control_plane: ControlPlane,
    pod_runner: PodRunner,
    kafka: Kafka,
    rig_supervisor: Supervisor,
    rig_run_dir: Path,
    background: Background,
    teardown: list[Callable[[], None]],
    previous_build: Path,
) -> None:
    setup, ids = kafka_setup_with_chosen_agent(
        control_plane,
        rig_supervisor,
        background,
        kafka,
        rig_run_dir,
        "fault-mixed",
        chosen={"PYTHONPATH": str(previous_build)},
        per="pod",
        work_seconds=0.5,  # a drain of ~20 s: the new leader takes over before it ends
        extra={"scale-up-policies": "10 pods/1s"},
    )
    arm(teardown, control_plane, setup, ids)
    namespace, name, observer = setup.namespace, setup.name, setup.observer
    setup.waker.start()

    # One pod: the previous build's agent, which leads and scales up on a burst.
    old = wait_for("a leader", lambda: lease_holder(control_plane, namespace, name), timeout=60)
    ids.send(120)
    at_max = observer.wait("scaled to 3", lambda s: s.replicas == 3, timeout=60)
    old_status = wait_for(
        "the leader's status", lambda: status_of(control_plane, namespace, name), timeout=30
    )
    assert old_status["leader"] == old
    assert "version" not in old_status, "the first pod is not running the previous build"

    # Hung, it loses the Lease to a pod of this build, which writes a versioned status.
    pid = agent_pid(pod_runner, namespace, old)
    os.kill(pid, signal.SIGSTOP)
    try:
        new = wait_for(
            "a leader of this build",
            lambda: (holder := lease_holder(control_plane, namespace, name)) != old and holder,
            timeout=60,
        )
        wait_for(
            "a status by this build",
            lambda: (status_of(control_plane, namespace, name) or {}).get("version") == 1,
            timeout=60,
        )
    finally:
        os.kill(pid, signal.SIGCONT)

    # Drained: scaled down, parked through the waker, woken by the next message.
    setup.wait_consumed(ids.produced, timeout=120)
    parked = observer.wait_parked(timeout=120, after=at_max)
    sent = ids.send(3)
    observer.wait_awake(timeout=60, after=parked)
    setup.wait_consumed(set(sent), timeout=90)

    writers = {write["pod"] for write in scale_writes(control_plane, namespace, name)}
    assert old in writers, "the previous build never wrote to the Deployment"
    assert new in writers, "this build never wrote to the Deployment"
    assert check_writes_follow_the_lease(control_plane, namespace, name) >= 4
    check_replicas_within(observer, 1, 3)


def test_a_park_record_of_a_newer_protocol_makes_this_builds_leader_and_waker_hold(
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
        "fault-newer",
        work_seconds=0.5,  # one pod drains the burst in 30 s: still there when the hold ends
        extra={"min-replicas": "1", "scale-up-policies": "10 pods/1s"},
    )
    arm(teardown, control_plane, setup, ids)
    namespace, name, observer = setup.namespace, setup.name, setup.observer
    setup.waker.start()
    wait_for("a leader", lambda: lease_holder(control_plane, namespace, name), timeout=60)
    wait_for("the leader's status", lambda: status_of(control_plane, namespace, name), timeout=30)

    newer = json.dumps(
        {
            "version": 2,
            "epoch": 1,
            "state": "requested",
            "requester": "a-newer-build",
            "leaseTransitions": 0,
            "requestedAt": "2026-01-01T00:00:00.000000Z",
            "someFieldOfVersion2": {"meaning": "unknown to this build"},
        }
    )
    patch = {
        "metadata": {"labels": {PARK_LABEL: "requested"}, "annotations": {PARK_RECORD_ANNOTATION: newer}}
    }
    control_plane.kubectl(
        "patch", "deployment", name, "-n", namespace, "--type=merge", "-p", json.dumps(patch)
    )
    ids.send(60)  # lag 60, threshold 20: the leader would scale to 3, and the waker ack, if they acted

    def holding_events() -> dict[str, str] | None:
        found = {
            e["reportingComponent"]: e["message"] for e in events(control_plane, namespace, "ProtocolTooNew")
        }
        return found if len(found) == 2 else None

    said = wait_for("ProtocolTooNew from the agent and the waker", holding_events, timeout=60)
    assert set(said) == {"tidescale-agent", "tidescale-waker"}
    assert all("protocol version 2" in message for message in said.values())
    deployment = get(control_plane, "deployment", name, namespace)
    assert deployment["metadata"]["annotations"][PARK_RECORD_ANNOTATION] == newer  # not cleared, not acked
    assert deployment["metadata"]["labels"][PARK_LABEL] == "requested"
    assert deployment["spec"]["replicas"] == 1  # not scaled

    held_until = len(observer.states)
    unpatch = {"metadata": {"labels": {PARK_LABEL: None}, "annotations": {PARK_RECORD_ANNOTATION: None}}}
    control_plane.kubectl(
        "patch", "deployment", name, "-n", namespace, "--type=merge", "-p", json.dumps(unpatch)
    )
    observer.wait(
        "scaled to 3 once the record is gone", lambda s: s.replicas == 3, timeout=60, after=held_until
    )
    assert all(seen.replicas == 1 for seen in observer.states[:held_until])
    setup.wait_consumed(ids.produced, timeout=120)
    assert check_writes_follow_the_lease(control_plane, namespace, name) >= 2
