"""What on-call sees, on the rig: a failing trigger's Event and its recovery, the state label
and the status annotation's updatedAt, the leader's labelled metrics, and an Event repeat counted
on the first Event by the real API server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from tests.integration.rigkube import (
    AGENT_PORT,
    apply,
    consumer_deployment,
    get,
    items,
    kafka_hints,
    namespace_with_agent_rbac,
    unique,
    wait_for,
)
from tests.rig.controlplane import ControlPlane
from tests.rig.kafka import Kafka
from tests.rig.podrunner import PodRunner
from tidescale._events import EventRecorder
from tidescale.kube import KubeClient, KubeConfig

pytestmark = pytest.mark.rig


def events(plane: ControlPlane, namespace: str, reason: str) -> list[dict[str, object]]:
    return [e for e in items(plane, "events", namespace) if e.get("reason") == reason]


def state_label(plane: ControlPlane, namespace: str, name: str) -> str | None:
    labels = get(plane, "deployment", name, namespace)["metadata"].get("labels") or {}
    return labels.get("tidescale.io/state")


def leader_metrics(plane: ControlPlane, namespace: str, name: str) -> str | None:
    lease = get(plane, "lease", f"tidescale-{name}", namespace)
    holder = lease["spec"].get("holderIdentity")
    if not holder:
        return None
    ip = get(plane, "pod", holder, namespace).get("status", {}).get("podIP")
    try:
        return httpx.get(f"http://{ip}:{AGENT_PORT}/metrics", timeout=2.0).text
    except httpx.HTTPError:
        return None


def test_a_failing_trigger_is_an_event_a_label_and_a_metric_and_its_recovery_too(
    control_plane: ControlPlane, pod_runner: PodRunner, kafka: Kafka, rig_run_dir: Path
) -> None:
    namespace, name = unique("observe"), "orders"
    topic, group = unique("orders"), unique("group")
    kafka.create_topic(topic, 2)
    namespace_with_agent_rbac(control_plane, namespace)
    good = kafka_hints(kafka, topic, group, {"min-replicas": "1", "max-replicas": "3"})
    host = kafka.bootstrap.rpartition(":")[0]
    broken = {**good, "tidescale.io/kafka.bootstrap-servers": f"{host}:1"}  # nothing listens there
    deployment = consumer_deployment(
        name,
        kafka=kafka,
        topic=topic,
        group=group,
        annotations=broken,
        record_file=rig_run_dir / f"{namespace}.txt",
    )
    apply(control_plane, deployment, namespace=namespace)

    failing = wait_for(
        "a TriggerFailing Event", lambda: events(control_plane, namespace, "TriggerFailing"), timeout=90
    )
    assert failing[0]["type"] == "Warning"
    assert failing[0]["source"] == {"component": "tidescale-agent", "host": failing[0]["source"]["host"]}  # type: ignore[index]
    wait_for(
        "the state label error", lambda: state_label(control_plane, namespace, name) == "error", timeout=30
    )

    def failing_gauge() -> str | None:
        text = leader_metrics(control_plane, namespace, name)
        return text if text and "tidescale_trigger_failing{" in text else None

    text = wait_for("the leader's trigger_failing gauge", failing_gauge, timeout=30)
    assert (
        f'tidescale_trigger_failing{{deployment="{name}",namespace="{namespace}",'
        'trigger="kafka",type="kafka"} 1' in text
    )

    control_plane.kubectl(
        "annotate",
        "deployment",
        name,
        "-n",
        namespace,
        "--overwrite",
        f"tidescale.io/kafka.bootstrap-servers={kafka.bootstrap}",
    )
    wait_for("a Recovered Event", lambda: events(control_plane, namespace, "Recovered"), timeout=60)
    wait_for(
        "the state label scaling",
        lambda: state_label(control_plane, namespace, name) == "scaling",
        timeout=30,
    )
    status = json.loads(
        get(control_plane, "deployment", name, namespace)["metadata"]["annotations"]["tidescale.io/status"]
    )
    assert status["updatedAt"].endswith("Z")
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false")


def test_a_repeated_event_is_counted_on_the_first_by_the_api_server(control_plane: ControlPlane) -> None:
    namespace = unique("events")
    control_plane.kubectl("create", "namespace", namespace)

    async def emit_three() -> None:
        async with KubeClient(KubeConfig.from_kubeconfig(control_plane.admin_kubeconfig)) as client:
            recorder = EventRecorder(client, instance="test", component="tidescale-waker")
            involved = {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "namespace": namespace,
                "name": "orders",
            }
            for _ in range(3):
                await recorder.emit(involved, reason="ParkCancelled", message="same words")  # type: ignore[arg-type]

    asyncio.run(emit_three())
    found = events(control_plane, namespace, "ParkCancelled")
    assert len(found) == 1
    assert found[0]["count"] == 3
    assert found[0]["reportingComponent"] == "tidescale-waker"
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false")
