"""Fault: the agents' RoleBinding is deleted mid-run, then restored.

Without it no agent write succeeds (the audit log shows only refusals), the leader's hold runs
out and every agent reports ``tidescale_leader 0`` and logs the refusal; nothing scales. Once
the binding is back, an agent leads again and a burst scales, every write following the Lease.
"""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from tests.faults.invariants import (
    check_replicas_within,
    check_writes_follow_the_lease,
    pod_writes,
    wait_for_scale_write,
)
from tests.faults.prologue import MakeLedKafka
from tests.integration.rigkube import AGENT_PORT, apply, get, items, wait_for
from tests.rig.controlplane import ControlPlane
from tests.rig.podrunner import PodRunner

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
    led_kafka: MakeLedKafka,
    control_plane: ControlPlane,
    pod_runner: PodRunner,
) -> None:
    led = led_kafka("fault-rbac", min_replicas=MIN, max_replicas=MAX)
    setup, ids, leader = led.setup, led.ids, led.leader
    namespace, name, observer = setup.namespace, setup.name, setup.observer
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
