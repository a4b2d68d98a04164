"""The rig's control plane behaves as a cluster's: RBAC, controllers, tokens, clean teardown."""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from tests.rig.certs import CertificateAuthority
from tests.rig.controlplane import ControlPlane
from tests.rig.fixtures_controlplane import api_client, control_plane_binaries
from tests.rig.network import Network
from tests.rig.paths import kubernetes_version
from tests.rig.processes import Supervisor, free_port

pytestmark = pytest.mark.rig


def _namespace(control_plane: ControlPlane, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("create", "namespace", name)
    return name


async def _eventually(
    what: str,
    probe: Callable[[], Awaitable[Any]],
    within: float = 30.0,
    explain: Callable[[], str] = lambda: "",
) -> Any:
    """Awaits ``probe`` until it returns something truthy; fails naming ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.2)
    pytest.fail(f"{what} did not happen within {within:.0f}s (last seen: {last!r}) {explain()}")


def _deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                # A scheduler nobody runs: the pod runner, when the session has one, leaves
                # these pods alone, so they show the control plane's work and nothing else.
                "spec": {
                    "schedulerName": "nobody-schedules-this",
                    "containers": [{"name": "main", "image": "example.invalid/sleeper:1"}],
                },
            },
        },
    }


@pytest.mark.smoke
async def test_the_api_server_is_ready_and_reports_the_version_the_rig_was_asked_for(
    control_plane: ControlPlane,
) -> None:
    readyz = control_plane.kubectl("get", "--raw", "/readyz?verbose")
    assert "readyz check passed" in readyz.stdout
    assert control_plane.version == kubernetes_version()
    assert control_plane.server == f"https://{control_plane.node_address}:{control_plane.port}"


async def test_a_fresh_service_account_is_forbidden_to_list_pods_until_a_role_binding_allows_it(
    control_plane: ControlPlane, kube_api: Any
) -> None:
    namespace = _namespace(control_plane, "rbac")
    kubeconfig = control_plane.service_account_kubeconfig(namespace, "reader")
    restricted = await api_client(kubeconfig)
    try:
        with pytest.raises(ApiException) as denied:
            await client.CoreV1Api(restricted).list_namespaced_pod(namespace)
        assert denied.value.status == 403

        rbac = client.RbacAuthorizationV1Api(kube_api)
        await rbac.create_namespaced_role(
            namespace,
            client.V1Role(
                metadata=client.V1ObjectMeta(name="pod-reader"),
                rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get", "list"])],
            ),
        )
        await rbac.create_namespaced_role_binding(
            namespace,
            client.V1RoleBinding(
                metadata=client.V1ObjectMeta(name="reader-reads-pods"),
                role_ref=client.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="Role", name="pod-reader"
                ),
                subjects=[client.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=namespace)],
            ),
        )

        async def allowed() -> bool:
            # The RBAC authorizer reads bindings from an informer: allow it a moment.
            try:
                await client.CoreV1Api(restricted).list_namespaced_pod(namespace)
            except ApiException as exc:
                if exc.status != 403:
                    raise
                return False
            return True

        await _eventually("listing pods after the RoleBinding", allowed)
        # Still least privilege: the binding grants pods in this namespace only.
        with pytest.raises(ApiException) as still_denied:
            await client.CoreV1Api(restricted).list_namespaced_secret(namespace)
        assert still_denied.value.status == 403
    finally:
        await restricted.close()


async def test_a_service_account_kubeconfig_authenticates_as_that_account(
    control_plane: ControlPlane,
) -> None:
    namespace = _namespace(control_plane, "whoami")
    kubeconfig = control_plane.service_account_kubeconfig(namespace, "agent", expiration_seconds=600)
    answer = control_plane.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig)
    user = json.loads(answer.stdout)["status"]["userInfo"]
    assert user["username"] == f"system:serviceaccount:{namespace}:agent"
    assert f"system:serviceaccounts:{namespace}" in user["groups"]


async def test_a_deployment_yields_a_replica_set_and_pending_unscheduled_pods(
    control_plane: ControlPlane, kube_api: Any
) -> None:
    namespace = _namespace(control_plane, "deploy")
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(_deployment("web", 2)))
    apps = client.AppsV1Api(kube_api)
    core = client.CoreV1Api(kube_api)

    async def replica_sets() -> list[Any]:
        return list((await apps.list_namespaced_replica_set(namespace)).items)

    owned = await _eventually("a ReplicaSet for the Deployment", replica_sets)
    assert [ref.kind for ref in owned[0].metadata.owner_references] == ["Deployment"]

    async def two_pods() -> list[Any]:
        pods = list((await core.list_namespaced_pod(namespace, label_selector="app=web")).items)
        return pods if len(pods) == 2 else []

    pods = await _eventually("two Pods from the ReplicaSet", two_pods)
    # No scheduler and no kubelet: only the pod runner binds and runs pods, and not these.
    assert {pod.status.phase for pod in pods} == {"Pending"}
    assert {pod.spec.node_name for pod in pods} == {None}
    # The ServiceAccount admission plugin and the token controller worked: pods get a token volume.
    assert all(pod.spec.service_account_name == "default" for pod in pods)


async def test_scaling_through_the_scale_subresource_changes_the_pod_count_and_records_events(
    control_plane: ControlPlane, kube_api: Any
) -> None:
    namespace = _namespace(control_plane, "scale")
    apps = client.AppsV1Api(kube_api)
    core = client.CoreV1Api(kube_api)
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(_deployment("worker", 1)))
    await apps.patch_namespaced_deployment_scale("worker", namespace, {"spec": {"replicas": 3}})

    async def three_pods() -> bool:
        return len((await core.list_namespaced_pod(namespace)).items) == 3

    await _eventually("three Pods after scaling to 3", three_pods)
    scale = await apps.read_namespaced_deployment_scale("worker", namespace)
    assert scale.spec.replicas == 3

    async def scaling_events() -> list[str]:
        events = await core.list_namespaced_event(namespace)
        return [event.reason for event in events.items if event.reason == "ScalingReplicaSet"]

    await _eventually("a ScalingReplicaSet Event from the deployment controller", scaling_events)


async def test_leases_can_be_created_and_renewed(control_plane: ControlPlane, kube_api: Any) -> None:
    namespace = _namespace(control_plane, "lease")
    coordination = client.CoordinationV1Api(kube_api)
    created = await coordination.create_namespaced_lease(
        namespace,
        client.V1Lease(
            metadata=client.V1ObjectMeta(name="leader"),
            spec=client.V1LeaseSpec(holder_identity="a", lease_duration_seconds=15),
        ),
    )
    created.spec.holder_identity = "b"
    renewed = await coordination.replace_namespaced_lease("leader", namespace, created)
    assert renewed.spec.holder_identity == "b"
    stale = created  # carries the old resourceVersion: the API server must refuse it
    with pytest.raises(ApiException) as conflict:
        await coordination.replace_namespaced_lease("leader", namespace, stale)
    assert conflict.value.status == 409


async def test_the_api_server_metrics_count_requests(control_plane: ControlPlane) -> None:
    control_plane.kubectl("get", "namespaces")
    metrics = control_plane.apiserver_metrics()
    assert "apiserver_request_total{" in metrics


def test_the_api_server_certificate_holds_for_the_node_address_and_the_service_names(
    control_plane: ControlPlane,
) -> None:
    context = ssl.create_default_context(cafile=str(control_plane.ca_file))
    for name in (
        control_plane.node_address,
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ):
        with (
            socket.create_connection((control_plane.node_address, control_plane.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=name) as tls,
        ):
            assert tls.version() is not None


def test_a_webhook_serving_certificate_verifies_for_its_service_name(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path)
    pair = ca.issue_serving_cert("injector", dns_names=["tidescale-injector.tidescale.svc"])
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    verifier = (
        PolicyBuilder()
        .store(Store([x509.load_pem_x509_certificate(ca.cert_pem)]))
        .build_server_verifier(x509.DNSName("tidescale-injector.tidescale.svc"))
    )
    assert verifier.verify(cert, [])
    wrong_name = (
        PolicyBuilder().store(Store([ca.cert])).build_server_verifier(x509.DNSName("other.tidescale.svc"))
    )
    with pytest.raises(x509.verification.VerificationError):
        wrong_name.verify(cert, [])


def test_stopping_a_control_plane_ends_its_processes_and_leaves_no_listener(
    rig_network: Network, rig_run_dir: Path
) -> None:
    # Its own control plane and supervisor: stopping the session's would break other tests.
    run = rig_run_dir / "teardown-check"
    run.mkdir()
    supervisor = Supervisor(run_dir=run)
    try:
        plane = ControlPlane.start(supervisor, rig_network, run, binaries=control_plane_binaries())
        assert plane.open_listeners() == plane.listeners
        processes = list(plane.processes)
        plane.stop()
        assert [p.name for p in processes if p.alive()] == []
        assert plane.open_listeners() == []
    finally:
        supervisor.stop_all()


class _LabelingWebhook(http.server.BaseHTTPRequestHandler):
    """Admits every object with a JSON Patch adding the label rig-webhook=seen."""

    def do_POST(self) -> None:
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        patch = [{"op": "add", "path": "/metadata/labels", "value": {"rig-webhook": "seen"}}]
        answer = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {
                "uid": review["request"]["uid"],
                "allowed": True,
                "patchType": "JSONPatch",
                "patch": base64.b64encode(json.dumps(patch).encode()).decode(),
            },
        }
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


async def test_the_api_server_calls_a_mutating_webhook_through_its_service_endpoints(
    control_plane: ControlPlane, kube_api: Any, tmp_path: Path
) -> None:
    namespace = _namespace(control_plane, "hook")
    # A webhook on the node address stands in for a pod: the API server refuses loopback in Endpoints.
    ca = CertificateAuthority.create(tmp_path)
    pair = ca.issue_serving_cert("hook", dns_names=[f"hook.{namespace}.svc"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pair.cert_file, pair.key_file)
    port = free_port(control_plane.node_address)
    server = http.server.ThreadingHTTPServer((control_plane.node_address, port), _LabelingWebhook)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    webhook_name = f"{namespace}.rig.tidescale.dev"
    objects = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "hook", "namespace": namespace},
            "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]},
        },
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": "hook", "namespace": namespace},
            "subsets": [
                {
                    "addresses": [{"ip": control_plane.node_address}],
                    "ports": [{"name": "https", "port": port}],
                }
            ],
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": webhook_name},
            "webhooks": [
                {
                    "name": webhook_name,
                    "clientConfig": {
                        "service": {"namespace": namespace, "name": "hook", "path": "/mutate", "port": 443},
                        "caBundle": base64.b64encode(ca.cert_pem).decode(),
                    },
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["configmaps"],
                        }
                    ],
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                    "failurePolicy": "Fail",
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "timeoutSeconds": 5,
                }
            ],
        },
    ]
    try:
        control_plane.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
        )
        core = client.CoreV1Api(kube_api)
        refusals: list[str] = []

        async def labeled() -> bool:
            # The API server learns of the configuration and the Endpoints from informers, in
            # no fixed order: early creates may pass unlabeled, or be refused for want of the
            # Endpoints. Retry, keeping the refusals for the failure message.
            try:
                made = await core.create_namespaced_config_map(
                    namespace,
                    client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"probe-{uuid.uuid4().hex[:6]}")),
                )
            except ApiException as exc:
                refusals.append(str(exc.body))
                return False
            return bool((made.metadata.labels or {}).get("rig-webhook") == "seen")

        await _eventually(
            "a ConfigMap labeled by the webhook", labeled, explain=lambda: f"refusals: {refusals[-3:]}"
        )
        metrics = control_plane.apiserver_metrics()
        assert (
            f'apiserver_admission_webhook_admission_duration_seconds_count{{name="{webhook_name}"' in metrics
        )
    finally:
        control_plane.kubectl("delete", "mutatingwebhookconfiguration", webhook_name, "--ignore-not-found")
        server.shutdown()
        server.server_close()
