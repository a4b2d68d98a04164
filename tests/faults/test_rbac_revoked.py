"""Fault: the agents' RoleBinding is deleted mid-run, then restored.

Without it no agent write succeeds (the audit log shows only refusals), the leader's hold runs
out and every agent reports ``tidescale_leader 0`` and logs the refusal; nothing scales. Once
the binding is back, an agent leads again and a burst scales, every write following the Lease.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.faults.invariants import (
    check_replicas_within,
    check_writes_follow_the_lease,
    lease_holder,
    pod_writes,
    wait_for_scale_write,
)
from tests.integration.rigkube import AGENT_PORT, apply, get, items, wait_for
from tests.integration.test_scale_to_zero import Background, arm, kafka_setup
from tests.rig.controlplane import ControlPlane
from tests.rig.kafka import Kafka
from tests.rig.podrunner import PodRunner
from tests.rig.processes import Supervisor

pytestmark = pytest.mark.rig

MIN, MAX = 1, 3


def leader_gauges(plane: ControlPlane, namespace: str, app: str) -> dict[str, float | None]:
    """Each running pod's ``tidescale_leader`` gauge (None when its /metrics does not answer)."""
    found: dict[str, float | None] = {}
    for pod in items(plane, "pods", namespace, f"app={app}"):
        ip = pod.get("status", {}).get("podIP")
        if pod.get("status", {}).get("phase") != "Running" or not ip:
            continue
        try:
            text = httpx.get(f"http://{ip}:{AGENT_PORT}/metrics", timeout=2.0).text
        except httpx.HTTPError:
            found[pod["metadata"]["name"]] = None
            continue
        values = [
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith(("tidescale_leader ", "tidescale_leader{"))
        ]
        found[pod["metadata"]["name"]] = values[0] if values else None
    return found


def test_with_the_agents_rolebinding_deleted_nothing_is_written_and_scaling_resumes_once_it_is_restored(
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
        "fault-rbac",
        work_seconds=0.2,
        extra={"min-replicas": str(MIN), "max-replicas": str(MAX), "scale-up-policies": "10 pods/1s"},
    )
    arm(teardown, control_plane, setup, ids)
    namespace, name, observer = setup.namespace, setup.name, setup.observer
    leader = wait_for("a leader", lambda: lease_holder(control_plane, namespace, name), timeout=60)
    binding = get(control_plane, "rolebinding", "tidescale-agent", namespace)

    control_plane.kubectl("delete", "rolebinding", "tidescale-agent", "-n", namespace)
    revoked = datetime.now(UTC)
    wait_for(
        "no agent leading (every tidescale_leader gauge 0)",
        lambda: (g := leader_gauges(control_plane, namespace, name)) and all(v == 0.0 for v in g.values()),
        timeout=60,
        interval=1.0,
    )
    log = pod_runner.log_path(namespace, leader, "tidescale-agent").read_text().lower()
    assert "403" in log or "forbidden" in log, "the leader's log does not say it was refused"
    restoring = datetime.now(UTC)
    assert not [
        w for w in pod_writes(control_plane, namespace, after=revoked) if w["received"] < restoring
    ], "an agent write succeeded without the RoleBinding"

    restored = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "tidescale-agent"},
        "roleRef": binding["roleRef"],
        "subjects": binding["subjects"],
    }
    apply(control_plane, restored, namespace=namespace)
    before = len(observer.states)
    burst = ids.send(120)
    at_max = observer.wait(
        f"scaled to {MAX} once restored", lambda s: s.replicas == MAX, timeout=120, after=before
    )
    wait_for_scale_write(control_plane, namespace, name, after=restoring, what="a scale write once restored")
    setup.wait_consumed(set(burst), timeout=120)
    observer.wait(f"back to min {MIN}", lambda s: s.replicas == MIN, timeout=90, after=at_max)
    assert check_writes_follow_the_lease(control_plane, namespace, name) >= 2
    check_replicas_within(observer, MIN, MAX)
