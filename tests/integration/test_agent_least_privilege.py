"""The agent's confinement on the rig (issue 11, item 7): with deploy/agent-policy.yaml installed,
the API server itself refuses what the agent of Deployment A (or the workload sharing its pod's
token) must not do — write Deployment B, change A's pod template or other labels, take another
Lease, change anything of a pod but the deletion-cost annotation of A's pods (issue 18) — while
A's elected leader still scales A on Kafka lag. A ServiceAccount not bound to the agent Role is
left alone by the policy.

The requests are made with the pod's own bound token, read from the volume the pod runner
wrote for it: the token carries ``authentication.kubernetes.io/pod-name``, as a kubelet's does.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.rigkube import (
    REPO_ROOT,
    apply,
    consumer_deployment,
    get,
    items,
    kafka_hints,
    namespace_with_agent_rbac,
    produce,
    unique,
    wait_for,
)
from tests.rig.controlplane import ControlPlane
from tests.rig.kafka import Kafka
from tests.rig.podrunner import PodRunner

pytestmark = pytest.mark.rig

POLICY = REPO_ROOT / "deploy" / "agent-policy.yaml"
MERGE = "application/merge-patch+json"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
PARTITIONS = 4


@pytest.fixture(scope="module")
def agent_policy(control_plane: ControlPlane) -> Iterator[None]:
    """The policy and its binding, as deploy/ ships them; removed again after this module."""
    control_plane.kubectl("apply", "-f", str(POLICY))
    try:
        yield
    finally:
        control_plane.kubectl("delete", "-f", str(POLICY), "--ignore-not-found", check=False)


def echo_deployment(name: str, service_account: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "serviceAccountName": service_account,
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{"name": "echo", "image": "tidescale-test/echo"}],
                },
            },
        },
    }


def running_pod(plane: ControlPlane, namespace: str, app: str) -> str:
    def found() -> str | None:
        for pod in items(plane, "pods", namespace, f"app={app}"):
            if pod.get("status", {}).get("phase") == "Running" and not pod["metadata"].get(
                "deletionTimestamp"
            ):
                return str(pod["metadata"]["name"])
        return None

    return wait_for(f"a running pod of {app}", found, timeout=90)


def pod_token(runner: PodRunner, namespace: str, pod: str) -> str:
    """The bound token the pod runner mounted for the pod (its kube-api-access volume)."""
    volumes = runner.run_dir / "pods" / f"{namespace}_{pod}" / "volumes"
    tokens = wait_for(
        f"the token of pod {namespace}/{pod}",
        lambda: sorted(volumes.glob("kube-api-access-*/token")),
        timeout=30,
    )
    return tokens[0].read_text().strip()


class AsPod:
    """API requests made with one pod's token."""

    def __init__(self, plane: ControlPlane, token: str) -> None:
        self._client = httpx.Client(
            base_url=plane.server,
            verify=ssl.create_default_context(cafile=str(plane.ca_file)),
            headers={"Authorization": f"Bearer {token}"},
            timeout=10.0,
        )

    def close(self) -> None:
        self._client.close()

    def patch(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self._client.patch(path, content=json.dumps(body), headers={"Content-Type": MERGE})

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self._client.post(path, json=body)

    def put(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self._client.put(path, json=body)


def lease_holder(plane: ControlPlane, namespace: str, deployment: str) -> str | None:
    for found in items(plane, "lease", namespace):
        if found["metadata"]["name"] == f"tidescale-{deployment}":
            return found["spec"].get("holderIdentity") or None
    return None


def refused_by_policy(response: httpx.Response) -> bool:
    return response.status_code == 403 and "tidescale agent confinement" in response.text


def deployment_path(namespace: str, name: str) -> str:
    return f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}"


def pod_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods/{name}"


def deletion_cost(value: str | None) -> dict[str, Any]:
    return {"metadata": {"annotations": {DELETION_COST: value}}}


def lease_path(namespace: str, name: str = "") -> str:
    return f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases" + (f"/{name}" if name else "")


def lease(name: str, holder: str) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15},
    }


@pytest.mark.smoke
def test_the_api_server_refuses_the_agent_of_a_any_write_but_its_own_while_its_leader_still_scales_a(
    control_plane: ControlPlane, pod_runner: PodRunner, kafka: Kafka, rig_run_dir: Path, agent_policy: None
) -> None:
    namespace, a, b = unique("confined"), "orders", "billing"
    topic, group = unique("orders"), unique("orders-group")
    kafka.create_topic(topic, PARTITIONS)
    namespace_with_agent_rbac(control_plane, namespace)
    annotations = kafka_hints(
        kafka,
        topic,
        group,
        {
            "min-replicas": "1",
            "max-replicas": "3",
            "kafka.lag-threshold": "50",
            "scale-up-policies": "10 pods/1s",
        },
    )
    record = rig_run_dir / f"{namespace}-consumed.txt"
    apply(
        control_plane,
        consumer_deployment(
            a, kafka=kafka, topic=topic, group=group, annotations=annotations, record_file=record
        ),
        echo_deployment(b, "workload"),
        namespace=namespace,
    )
    pod_a = running_pod(control_plane, namespace, a)
    wait_for("an agent of A to lead", lambda: lease_holder(control_plane, namespace, a), timeout=60)
    as_a = AsPod(control_plane, pod_token(pod_runner, namespace, pod_a))
    try:
        # The policy takes a moment to be loaded after it is created: wait for its first refusal.
        wait_for(
            "the policy to refuse a write to Deployment B",
            lambda: refused_by_policy(
                as_a.patch(deployment_path(namespace, b) + "/scale", {"spec": {"replicas": 2}})
            ),
            timeout=60,
        )
        pod_b = running_pod(control_plane, namespace, b)
        wait_for(
            "the pods policy to refuse a deletion cost on B's pod",
            lambda: refused_by_policy(as_a.patch(pod_path(namespace, pod_b), deletion_cost("-1000"))),
            timeout=60,
        )
        refused = {
            "B's pod's deletion cost": as_a.patch(pod_path(namespace, pod_b), deletion_cost("-999")),
            "A's pod's labels": as_a.patch(
                pod_path(namespace, pod_a), {"metadata": {"labels": {"app": "x"}}}
            ),
            "another annotation of A's pod": as_a.patch(
                pod_path(namespace, pod_a), {"metadata": {"annotations": {"tidescale.io/status": "{}"}}}
            ),
            "A's pod's spec": as_a.patch(
                pod_path(namespace, pod_a), {"spec": {"activeDeadlineSeconds": 36000}}
            ),
            "A's pod's finalizers": as_a.patch(
                pod_path(namespace, pod_a), {"metadata": {"finalizers": ["example.com/keep"]}}
            ),
            "scale B": as_a.patch(deployment_path(namespace, b) + "/scale", {"spec": {"replicas": 3}}),
            "annotate B": as_a.patch(
                deployment_path(namespace, b), {"metadata": {"annotations": {"tidescale.io/status": "{}"}}}
            ),
            "A's pod template": as_a.patch(
                deployment_path(namespace, a),
                {"spec": {"template": {"metadata": {"annotations": {"evil": "yes"}}}}},
            ),
            "A's image": as_a.patch(
                deployment_path(namespace, a),
                {"spec": {"template": {"spec": {"containers": [{"name": "consumer", "image": "evil"}]}}}},
            ),
            "A's other labels": as_a.patch(
                deployment_path(namespace, a), {"metadata": {"labels": {"team": "x"}}}
            ),
            "B's Lease": as_a.post(lease_path(namespace), lease(f"tidescale-{b}", pod_a)),
            "another Lease": as_a.post(lease_path(namespace), lease("payments-leader", pod_a)),
        }
        answers = {
            what: (r.status_code, r.text[:300]) for what, r in refused.items() if not refused_by_policy(r)
        }
        assert answers == {}, f"writes the API server should have refused: {answers}"
        # A cost that is not an integer: the API server's own validation refuses it before the policy.
        not_integer = as_a.patch(pod_path(namespace, pod_a), deletion_cost("cheap"))
        assert not_integer.status_code in (403, 422), not_integer.text
        assert int(get(control_plane, "deployment", b, namespace)["spec"]["replicas"]) == 1
        template = get(control_plane, "deployment", a, namespace)["spec"]["template"]
        assert "evil" not in json.dumps(template)

        # What the agent needs stays allowed for the very same token.
        allowed = as_a.patch(
            deployment_path(namespace, a), {"metadata": {"annotations": {"tidescale.io/status": "{}"}}}
        )
        assert allowed.status_code == 200, allowed.text
        # The scale-down mark on a pod of A, and its removal (docs/scale-down.md).
        for cost in ("-1000", None):
            marked = as_a.patch(pod_path(namespace, pod_a), deletion_cost(cost))
            assert marked.status_code == 200, marked.text
        pod = get(control_plane, "pod", pod_a, namespace)
        assert DELETION_COST not in (pod["metadata"].get("annotations") or {})
        assert pod["metadata"]["labels"]["app"] == a
        assert "activeDeadlineSeconds" not in pod["spec"]
    finally:
        as_a.close()

    # A's leader, under the same policy, still scales A on its lag (its Lease renewals went through too).
    produce(kafka, topic, [f"m{i:04d}" for i in range(150)])
    wait_for(
        "A's leader to scale A up to ceil(150 / 50) = 3",
        lambda: int(get(control_plane, "deployment", a, namespace)["spec"]["replicas"]) == 3,
        timeout=60,
    )
    scaled = [e for e in items(control_plane, "events", namespace) if e.get("reason") == "Scaled"]
    assert scaled, "the leader's scale write and its Event went through"
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false")


def test_a_service_account_not_bound_to_the_agent_role_is_not_confined(
    control_plane: ControlPlane, pod_runner: PodRunner, agent_policy: None
) -> None:
    namespace = unique("unconfined")
    namespace_with_agent_rbac(control_plane, namespace)
    # "deployer" may patch Deployments (as a CI runner might) but holds no agent Role.
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "deployer"},
        "rules": [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "patch"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "deployer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "deployer"},
        "subjects": [{"kind": "ServiceAccount", "name": "deployer", "namespace": namespace}],
    }
    apply(
        control_plane,
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "deployer"}},
        role,
        binding,
        echo_deployment("ci", "deployer"),
        echo_deployment("web", "workload"),
        namespace=namespace,
    )
    pod_ci = running_pod(control_plane, namespace, "ci")
    pod_web = running_pod(control_plane, namespace, "web")
    as_ci = AsPod(control_plane, pod_token(pod_runner, namespace, pod_ci))
    as_web = AsPod(control_plane, pod_token(pod_runner, namespace, pod_web))
    try:
        # The confined identity is refused (so the policy is loaded) ...
        wait_for(
            "the policy to refuse the agent identity",
            lambda: refused_by_policy(
                as_web.patch(deployment_path(namespace, "ci"), {"metadata": {"labels": {"a": "b"}}})
            ),
            timeout=60,
        )
        # ... while the other ServiceAccount's pod writes another Deployment's template freely.
        response = as_ci.patch(
            deployment_path(namespace, "web"),
            {"spec": {"template": {"metadata": {"annotations": {"v": "2"}}}}},
        )
        assert response.status_code == 200, response.text
    finally:
        as_ci.close()
        as_web.close()
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false")
