"""Scale-down removes the idlest pods (issue 18 part 3), on the rig, under deploy/agent-rbac.yaml and
deploy/agent-policy.yaml:

* the real ReplicaSet controller deletes exactly the pods the marking chose, even when they are
  the oldest (which it would keep by its own ranking), and a stale tidescale mark on a pod that
  must stay is cleared. The marks are written as the agent writes them (``mark_for_scale_down``
  with one of the Deployment's pods' own bound token); the facts (which pods hold lag) are given,
  as the leader's peers would report them;
* end to end: an elected agent leader scaling its Deployment down marks pods through the
  admission policy, and the pods the ReplicaSet removes are exactly those it marked.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.rigkube import (
    REPO_ROOT,
    apply,
    consumer_deployment,
    items,
    kafka_hints,
    namespace_with_agent_rbac,
    unique,
    wait_for,
)
from tests.integration.test_agent_least_privilege import (
    AsPod,
    echo_deployment,
    pod_path,
    pod_token,
    refused_by_policy,
)
from tests.rig.controlplane import ControlPlane
from tests.rig.kafka import Kafka
from tests.rig.podrunner import PodRunner
from tidescale._deletion_cost import (
    DELETION_COST_ANNOTATION,
    MARK_BASE,
    is_tidescale_mark,
    mark_for_scale_down,
)
from tidescale.kube import KubeClient, KubeConfig

pytestmark = pytest.mark.rig

POLICY = REPO_ROOT / "deploy" / "agent-policy.yaml"


@pytest.fixture(scope="module")
def agent_policy(control_plane: ControlPlane) -> Iterator[None]:
    control_plane.kubectl("apply", "-f", str(POLICY))
    try:
        yield
    finally:
        control_plane.kubectl("delete", "-f", str(POLICY), "--ignore-not-found", check=False)


def live_pods(plane: ControlPlane, namespace: str, app: str) -> list[dict[str, Any]]:
    """The app's pods not being deleted, oldest first."""
    pods = [
        p for p in items(plane, "pods", namespace, f"app={app}") if not p["metadata"].get("deletionTimestamp")
    ]
    return sorted(pods, key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"]))


def ready_count(plane: ControlPlane, namespace: str, app: str, count: int) -> list[str] | None:
    pods = live_pods(plane, namespace, app)
    ready = [
        p
        for p in pods
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p.get("status", {}).get("conditions") or []
        )
    ]
    return [p["metadata"]["name"] for p in pods] if len(pods) == count and len(ready) == count else None


def test_a_scale_down_removes_exactly_the_marked_pods_even_the_oldest(
    control_plane: ControlPlane, pod_runner: PodRunner, agent_policy: None
) -> None:
    namespace, app = unique("marking"), "web"
    namespace_with_agent_rbac(control_plane, namespace)
    apply(control_plane, echo_deployment(app, "workload"), namespace=namespace)
    control_plane.kubectl("scale", "deployment", app, "--replicas=2", "-n", namespace)
    old = wait_for("2 ready pods", lambda: ready_count(control_plane, namespace, app, 2), timeout=90)
    # Two newer pods: the ReplicaSet, left to itself, would remove these first.
    control_plane.kubectl("scale", "deployment", app, "--replicas=4", "-n", namespace)
    pods = wait_for("4 ready pods", lambda: ready_count(control_plane, namespace, app, 4), timeout=90)
    new = [name for name in pods if name not in old]
    assert len(new) == 2
    # A mark left by an earlier scale-down that did not happen, on a pod that must now stay.
    control_plane.kubectl(
        "annotate", "pod", new[0], f"{DELETION_COST_ANNOTATION}={MARK_BASE}", "-n", namespace
    )

    token = pod_token(pod_runner, namespace, old[0])
    as_pod = AsPod(control_plane, token)
    try:
        wait_for(
            "the pods policy to refuse a label change",
            lambda: refused_by_policy(
                as_pod.patch(pod_path(namespace, new[1]), {"metadata": {"labels": {"a": "b"}}})
            ),
            timeout=60,
        )
    finally:
        as_pod.close()

    async def mark_and_scale() -> tuple[tuple[str, ...], tuple[str, ...], str | None]:
        config = KubeConfig(server=control_plane.server, ca_file=control_plane.ca_file, token=token)
        async with KubeClient(config) as kube:

            async def unfenced(write: Any) -> Any:
                return await write()

            # The newer pods hold lag on their partitions; the older ones are idle.
            outcome = await mark_for_scale_down(
                kube,
                namespace=namespace,
                selector=f"app={app}",
                remove=2,
                lag={old[0]: 0.0, old[1]: 0.0, new[0]: 40.0, new[1]: 25.0},
                leader=new[1],
                fenced=unfenced,
            )
            if outcome.refused is None:
                await kube.patch_scale(namespace, app, 2)
            return outcome.plan.chosen, outcome.written, outcome.refused

    chosen, written, refused = asyncio.run(mark_and_scale())
    assert refused is None
    assert sorted(chosen) == sorted(old)
    assert sorted(written) == sorted([new[0], *old])  # the stale mark cleared, two marks written

    survivors = wait_for(
        "the ReplicaSet to remove 2 pods",
        lambda: (
            names
            if len(names := [p["metadata"]["name"] for p in live_pods(control_plane, namespace, app)]) == 2
            else None
        ),
        timeout=60,
    )
    assert sorted(survivors) == sorted(new), (
        f"removed {sorted(set(pods) - set(survivors))}, marked {sorted(old)}"
    )
    kept = {
        p["metadata"]["name"]: p["metadata"].get("annotations") or {}
        for p in live_pods(control_plane, namespace, app)
    }
    assert all(DELETION_COST_ANNOTATION not in annotations for annotations in kept.values()), kept
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false")


def watched_pods(output: str) -> list[tuple[str, dict[str, Any]]]:
    """The (event type, pod) pairs that ``kubectl get pods -w --output-watch-events -o json`` printed."""
    decoder, events, at = json.JSONDecoder(), [], 0
    while (at := output.find("{", at)) != -1:
        event, at = decoder.raw_decode(output, at)
        events.append((event["type"], event["object"]))
    return events


def three_consumers_led_by_an_agent(
    plane: ControlPlane, kafka: Kafka, rig_run_dir: Path, namespace: str, app: str
) -> list[str]:
    """A Deployment of 3 Kafka consumers with the agent, held at 3 by min-replicas until the test
    lowers it; returns its pods once they are Ready and a leader has written the status."""
    topic, group = unique("orders"), unique("orders-group")
    kafka.create_topic(topic, 3)
    hints = {
        "min-replicas": "3",
        "max-replicas": "3",
        "kafka.lag-threshold": "50",
        "scale-down-stabilization": "0s",
    }
    deployment = consumer_deployment(
        app,
        kafka=kafka,
        topic=topic,
        group=group,
        annotations=kafka_hints(kafka, topic, group, hints),
        record_file=rig_run_dir / f"{namespace}-consumed.txt",
        replicas=3,
    )
    apply(plane, deployment, namespace=namespace)
    pods = wait_for("3 ready pods", lambda: ready_count(plane, namespace, app, 3), timeout=90)
    wait_for(
        "a leader that has written its status",
        lambda: (
            "tidescale.io/status"
            in plane.kubectl("get", "deployment", app, "-n", namespace, "-o", "json").stdout
        ),
        timeout=60,
    )
    return pods


def scale_down_to_one(plane: ControlPlane, namespace: str, app: str) -> list[str]:
    """Lowers min-replicas to 1; returns the one pod left once the ReplicaSet removed the others."""
    plane.kubectl(
        "annotate", "--overwrite", "deployment", app, "tidescale.io/min-replicas=1", "-n", namespace
    )
    return wait_for(
        "the leader to scale down to 1 and the ReplicaSet to remove 2 pods",
        lambda: (
            names
            if len(names := [p["metadata"]["name"] for p in live_pods(plane, namespace, app)]) == 1
            else None
        ),
        timeout=60,
    )


def test_an_agent_leader_scaling_down_removes_exactly_the_pods_it_marked(
    control_plane: ControlPlane, pod_runner: PodRunner, kafka: Kafka, rig_run_dir: Path, agent_policy: None
) -> None:
    namespace, app = unique("marking-agent"), "orders"
    namespace_with_agent_rbac(control_plane, namespace)
    pods = three_consumers_led_by_an_agent(control_plane, kafka, rig_run_dir, namespace, app)
    watch = subprocess.Popen(  # every change to the pods, in order, from here on
        [
            "kubectl",
            "--kubeconfig",
            str(control_plane.admin_kubeconfig),
            "get",
            "pods",
            "-n",
            namespace,
            "-l",
            f"app={app}",
            "-w",
            "--output-watch-events",
            "-o",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        survivors = scale_down_to_one(control_plane, namespace, app)
    finally:
        watch.terminate()
        output, _ = watch.communicate(timeout=10)
    events = watched_pods(output)
    marked = {
        pod["metadata"]["name"]
        for _, pod in events
        if is_tidescale_mark((pod["metadata"].get("annotations") or {}).get(DELETION_COST_ANNOTATION))
    }
    removed = set(pods) - set(survivors)
    assert len(removed) == 2
    assert marked == removed, f"marked {sorted(marked)}, removed {sorted(removed)}"
    refusals = [
        e for e in items(control_plane, "events", namespace) if e.get("reason") == "ScaleDownMarkingRefused"
    ]
    assert refusals == []
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false")


def test_an_agent_without_the_pod_patch_permission_still_scales_down_and_says_what_it_needs(
    control_plane: ControlPlane, pod_runner: PodRunner, kafka: Kafka, rig_run_dir: Path, agent_policy: None
) -> None:
    namespace, app = unique("marking-old-rbac"), "orders"
    namespace_with_agent_rbac(control_plane, namespace)
    # The agent Role of an install from before scale-down marking: no "patch pods".
    role = json.loads(
        control_plane.kubectl("get", "role", "tidescale-agent", "-n", namespace, "-o", "json").stdout
    )
    role["rules"] = [
        rule
        for rule in role["rules"]
        if rule != {"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}
    ]
    control_plane.kubectl("replace", "-f", "-", input=json.dumps(role))
    three_consumers_led_by_an_agent(control_plane, kafka, rig_run_dir, namespace, app)
    scale_down_to_one(control_plane, namespace, app)
    refusals = wait_for(
        "the ScaleDownMarkingRefused Event",
        lambda: [
            e
            for e in items(control_plane, "events", namespace)
            if e.get("reason") == "ScaleDownMarkingRefused"
        ],
        timeout=30,
    )
    assert len(refusals) == 1
    assert refusals[0]["type"] == "Warning"
    message = refusals[0]["message"]
    assert "forbidden" in message
    assert "Scaling anyway" in message
    assert f"patch on pods in {namespace}" in message
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false")
