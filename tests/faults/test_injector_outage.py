"""Fault: the sidecar injector hangs (SIGSTOP) or is down, with the webhook's failurePolicy and
timeoutSeconds as the chart's values.yaml ships them (Ignore, 5 s).

Pods are still created (fail open: the API server counts each in
``apiserver_admission_webhook_fail_open_count``), without the agent; once the injector is back,
new pods get the agent again. Catching up the pods created meanwhile is a rollout restart
(docs/reliability.md), which this test also does.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.rigkube import wait_for
from tests.integration.test_injector import (
    HOOK,
    apply,
    deployment,
    has_agent,
    mutating_config,
    namespace,
    start_injector,
)
from tests.rig.certs import CertificateAuthority
from tests.rig.controlplane import ControlPlane
from tests.rig.paths import REPO_ROOT
from tests.rig.processes import Supervisor

pytestmark = pytest.mark.rig

CHART_VALUES = REPO_ROOT / "charts" / "tidescale" / "values.yaml"


def as_the_chart_ships_it(config: dict[str, Any]) -> dict[str, Any]:
    """The mutating webhook configuration with the chart's default failurePolicy and timeout."""
    injector = yaml.safe_load(CHART_VALUES.read_text())["injector"]
    for hook in config["webhooks"]:
        hook["failurePolicy"] = injector["failurePolicy"]
        hook["timeoutSeconds"] = injector["timeoutSeconds"]
    return config


def live_pods(plane: ControlPlane, ns: str, app: str) -> list[dict[str, object]]:
    listed = json.loads(plane.kubectl("get", "pods", "-n", ns, "-l", f"app={app}", "-o", "json").stdout)
    return [p for p in listed["items"] if not p["metadata"].get("deletionTimestamp")]


def fail_open_count(plane: ControlPlane, hook: str) -> float:
    total = 0.0
    for line in plane.apiserver_metrics().splitlines():
        if line.startswith("apiserver_admission_webhook_fail_open_count{") and f'name="{hook}"' in line:
            total += float(line.split()[-1])
    return total


def test_pods_are_created_without_the_agent_while_the_injector_hangs_or_is_down_and_with_it_once_it_is_back(
    control_plane: ControlPlane, rig_supervisor: Supervisor, tmp_path: Path
) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca")
    injector = start_injector(control_plane, rig_supervisor, ca, f"injector-fault-{uuid.uuid4().hex[:6]}")
    ns = namespace(control_plane, "fault-injector")
    hook = f"fault-{ns}.{HOOK}"
    config = as_the_chart_ships_it(mutating_config(hook, injector, [ns]))
    apply(control_plane, config)
    try:
        app = "worker"
        workload = deployment(app, ns, {}, replicas=1)
        # Its pods never become Ready here (no image to run): Recreate lets a rollout restart finish.
        workload["spec"]["strategy"] = {"type": "Recreate"}
        apply(control_plane, workload)
        wait_for(
            "an injected pod",
            lambda: any(has_agent(p) for p in live_pods(control_plane, ns, app)),
            timeout=60,
        )

        def scale_and_wait(replicas: int) -> list[dict[str, object]]:
            control_plane.kubectl("scale", "deployment", app, "-n", ns, f"--replicas={replicas}")
            return wait_for(
                f"{replicas} pods",
                lambda: p if len(p := live_pods(control_plane, ns, app)) == replicas else None,
                timeout=90,
            )

        # Hung: each create waits out the 5 s timeout, then goes through without the agent.
        os.kill(injector.process.pid, signal.SIGSTOP)
        try:
            opened = fail_open_count(control_plane, hook)
            pods = scale_and_wait(3)
            assert sum(not has_agent(p) for p in pods) == 2, "the two pods made while it hung have no agent"
            assert fail_open_count(control_plane, hook) >= opened + 2
        finally:
            os.kill(injector.process.pid, signal.SIGCONT)

        # Back: new pods get the agent again.
        pods = scale_and_wait(4)
        assert sum(has_agent(p) for p in pods) == 2

        # Down (connection refused): the same, at once.
        injector.process.stop()
        opened = fail_open_count(control_plane, hook)
        pods = scale_and_wait(5)
        assert sum(not has_agent(p) for p in pods) == 3
        assert fail_open_count(control_plane, hook) >= opened + 1

        # Caught up once an injector serves again: a rollout restart replaces every pod.
        injector = start_injector(control_plane, rig_supervisor, ca, f"injector-fault-{uuid.uuid4().hex[:6]}")
        apply(control_plane, as_the_chart_ships_it(mutating_config(hook, injector, [ns])))
        wait_for(
            "the webhook to point at the new injector",
            lambda: (
                injector.url
                in control_plane.kubectl("get", "mutatingwebhookconfiguration", "-o", "json").stdout
            ),
            timeout=30,
        )
        control_plane.kubectl("rollout", "restart", "deployment", app, "-n", ns)
        wait_for(
            "every pod replaced by one with the agent",
            lambda: len(p := live_pods(control_plane, ns, app)) == 5 and all(has_agent(x) for x in p),
            timeout=120,
            interval=1.0,
        )
    finally:
        control_plane.kubectl(
            "delete", "mutatingwebhookconfiguration", config["metadata"]["name"], "--ignore-not-found"
        )
        injector.process.stop()
        control_plane.kubectl("delete", "namespace", ns, "--wait=false")
