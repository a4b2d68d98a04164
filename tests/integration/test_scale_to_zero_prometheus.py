"""Scale to zero on a Prometheus query: the real agent beside each pod, the real waker process,
the rig's Prometheus (basic auth: the agent reads the login from its environment, the waker from
the namespace's Secret) scraping a gauge this test sets."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration import test_scale_to_zero as stz
from tests.integration.rigkube import apply, namespace_with_agent_rbac, unique, waker_rbac
from tests.integration.test_scale_to_zero import FAST, Background, Observer, WakerProcess, events
from tests.rig.controlplane import ControlPlane
from tests.rig.podrunner import PodRunner
from tests.rig.processes import Supervisor
from tests.rig.prometheus import Prometheus
from tidescale.kube import KubeConfig

pytestmark = pytest.mark.rig

SECRET = "prometheus-credentials"

# The scale-to-zero module's fixtures: a loop in a thread for the watch, and undo steps.
background = stz.background
teardown = stz.teardown


def _deployment(name: str, annotations: dict[str, str]) -> dict[str, Any]:
    from tests.integration.rigkube import agent_container

    def secret_key(key: str) -> dict[str, Any]:
        return {"valueFrom": {"secretKeyRef": {"name": SECRET, "key": key}}}

    agent = agent_container(name)
    agent["env"] = [
        *agent["env"],
        {"name": "PROMETHEUS_USERNAME", **secret_key("username")},
        {"name": "PROMETHEUS_PASSWORD", **secret_key("password")},
    ]
    web = {"name": "web", "image": "tidescale-test/echo", "args": ["--port", "8080"]}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"serviceAccountName": "workload", "terminationGracePeriodSeconds": 5,
                         "containers": [web, agent]},
            },
        },
    }  # fmt: skip


def test_a_prometheus_deployment_parks_below_activation_and_wakes_when_the_gauge_rises_above_it(
    control_plane: ControlPlane,
    pod_runner: PodRunner,
    prometheus: Prometheus,
    rig_supervisor: Supervisor,
    rig_run_dir: Path,
    background: Background,
    teardown: list[Callable[[], None]],
) -> None:
    namespace, name = unique("stz-prom"), "web"
    gauge = f"tidescale_stz_{uuid.uuid4().hex[:8]}"
    query = f"sum({gauge})"
    # Busy enough for one replica (ceil(2 / 10)), not active: below activation 5, so it parks.
    prometheus.exporter.set(gauge, 2.0)
    prometheus.wait_value(query, 2.0)
    namespace_with_agent_rbac(control_plane, namespace)
    kubeconfig = waker_rbac(control_plane, [namespace])
    control_plane.kubectl(
        "create", "secret", "generic", SECRET, "-n", namespace,
        f"--from-literal=username={prometheus.username}", f"--from-literal=password={prometheus.password}",
    )  # fmt: skip
    hints = {f"tidescale.io/{key}": value for key, value in FAST.items()}
    hints.update(
        {
            "tidescale.io/polling-interval": "1s",
            "tidescale.io/prometheus.server-address": prometheus.url,
            "tidescale.io/prometheus.query": query,
            "tidescale.io/prometheus.threshold": "10",
            "tidescale.io/prometheus.activation-threshold": "5",
            "tidescale.io/prometheus.username-env": "PROMETHEUS_USERNAME",
            "tidescale.io/prometheus.password-env": "PROMETHEUS_PASSWORD",
            "tidescale.io/prometheus.credentials-secret": SECRET,
        }
    )
    observer = Observer(
        background, KubeConfig.from_kubeconfig(control_plane.admin_kubeconfig), namespace, name
    )
    waker = WakerProcess(rig_supervisor, kubeconfig, namespace)
    teardown.append(
        lambda: control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    )
    teardown.append(waker.stop)
    apply(control_plane, _deployment(name, hints), namespace=namespace)
    waker.start()

    requested = observer.wait_label("requested", timeout=60)
    watching = observer.wait_label("watching", timeout=15, after=requested)
    parked = observer.wait_parked(timeout=15, after=watching)
    time.sleep(2.0)  # several waker rounds reading 2, below activation: still parked
    assert observer.replicas_now() == 0

    prometheus.exporter.set(gauge, 12.0)  # above activation: the waker wakes it
    prometheus.wait_value(query, 12.0)
    observer.wait_awake(timeout=30, after=parked)
    assert events(control_plane, namespace, "Parked")
    woken = events(control_plane, namespace, "Woken")
    assert woken
    assert prometheus.password not in str(events(control_plane, namespace, "Woken"))
    observer.check_invariants()
