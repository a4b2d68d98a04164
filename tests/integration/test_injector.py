"""The injector behind a real kube-apiserver, called over TLS.

Two injector processes (``python -m tidescale_injector``) listen on the rig's bridge
address with a certificate for that address: one warns about bad hints, one is
strict. Webhook configurations reach them by ``url`` and select this module's
namespaces only.
"""

from __future__ import annotations

import base64
import copy
import json
import random
import re
import ssl
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jsonpatch
import pytest

from tests.rig.certs import CertificateAuthority
from tests.rig.controlplane import ControlPlane
from tests.rig.paths import REPO_ROOT
from tests.rig.processes import Managed, Supervisor, free_port, wait_until
from tests.unit.test_injector_fuzz import plausible_pod
from tidescale_injector.config import AGENT_NAME, InjectorConfig
from tidescale_injector.patch import TOKEN_MOUNT_PATH, build_patch

pytestmark = pytest.mark.rig

HOOK = "tidescale-test.injector.tidescale.io"
ANNOTATION_KEY = re.compile(r"([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


@dataclass(frozen=True, kw_only=True, slots=True)
class RunningInjector:
    url: str
    process: Managed
    ca: CertificateAuthority

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, verify=ssl.create_default_context(cafile=str(self.ca.cert_file)))


def start_injector(
    control_plane: ControlPlane, supervisor: Supervisor, ca: CertificateAuthority, name: str, *extra: str
) -> RunningInjector:
    host = control_plane.node_address
    port = free_port(host)
    pair = ca.issue_serving_cert(name, dns_names=["tidescale-injector.test"], ip_addresses=[host])
    process = supervisor.start(
        name,
        [
            sys.executable,
            "-m",
            "tidescale_injector",
            f"--listen={host}:{port}",
            f"--tls-cert-file={pair.cert_file}",
            f"--tls-key-file={pair.key_file}",
            f"--kubeconfig={control_plane.admin_kubeconfig}",
            "--agent-image=tidescale:it",
            "--native-sidecars=auto",
            *extra,
        ],
        cwd=REPO_ROOT,
    )
    injector = RunningInjector(url=f"https://{host}:{port}", process=process, ca=ca)
    wait_until(
        f"{name} /readyz", lambda: injector.get("/readyz").status_code == 200, timeout=30, process=process
    )
    return injector


def namespace(control_plane: ControlPlane, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("create", "namespace", name)
    return name


def apply(control_plane: ControlPlane, *objects: dict[str, Any], check: bool = True) -> Any:
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
    return control_plane.kubectl("apply", "-f", "-", input=body, check=check)


def webhook(
    name: str, injector: RunningInjector, path: str, namespaces: list[str], rules: dict[str, Any]
) -> dict[str, Any]:
    return {
        "name": name,
        "clientConfig": {
            "url": injector.url + path,
            "caBundle": base64.b64encode(injector.ca.cert_pem).decode(),
        },
        "rules": [rules],
        "namespaceSelector": {
            "matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces}
            ]
        },
        "failurePolicy": "Ignore",
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": 5,
    }


POD_RULES = {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}
DEPLOYMENT_RULES = {
    "apiGroups": ["apps"],
    "apiVersions": ["v1"],
    "operations": ["CREATE", "UPDATE"],
    "resources": ["deployments"],
}


@dataclass(frozen=True, kw_only=True, slots=True)
class Setup:
    control_plane: ControlPlane
    injector: RunningInjector
    strict: RunningInjector
    inject_ns: str
    strict_ns: str
    down_ns: str
    plain_ns: str


def mutating_config(name: str, injector: RunningInjector, namespaces: list[str]) -> dict[str, Any]:
    hook = webhook(name, injector, "/mutate", namespaces, POD_RULES)
    hook["objectSelector"] = {"matchLabels": {"tidescale.io/inject": "true"}}
    hook["reinvocationPolicy"] = "IfNeeded"
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [hook],
    }


def validating_config(name: str, injector: RunningInjector, namespaces: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [webhook(name, injector, "/validate", namespaces, DEPLOYMENT_RULES)],
    }


def probe_pod(name: str) -> dict[str, Any]:
    """A pod as a Deployment's ReplicaSet would make it (for server-side dry runs)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"app": "probe", "tidescale.io/inject": "true", "pod-template-hash": "5d8f7"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "probe-5d8f7",
                    "uid": str(uuid.uuid4()),
                    "controller": True,
                }
            ],
        },
        "spec": {"containers": [{"name": "main", "image": "example.invalid/worker:1"}]},
    }


def dry_run_pod(control_plane: ControlPlane, ns: str, pod: dict[str, Any]) -> dict[str, Any]:
    result = control_plane.kubectl(
        "create", "-n", ns, "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(pod)
    )
    created: dict[str, Any] = json.loads(result.stdout)
    return created


def eventually(what: str, probe: Callable[[], Any], within: float = 30.0) -> Any:
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.3)
    pytest.fail(f"{what} did not happen within {within:.0f}s (last seen: {last!r})")


def warned_in_dry_run(control_plane: ControlPlane, ns: str) -> bool:
    probe = deployment(f"probe-{uuid.uuid4().hex[:6]}", ns, {"tidescale.io/bogus": "1"})
    result = control_plane.kubectl(
        "create", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False
    )
    return "tidescale.io/bogus" in result.stderr


def has_agent(pod: dict[str, Any]) -> bool:
    spec = pod["spec"]
    return any(c["name"] == AGENT_NAME for c in (spec.get("initContainers") or []) + spec["containers"])


@pytest.fixture(scope="module")
def setup(
    control_plane: ControlPlane, rig_supervisor: Supervisor, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    ca = CertificateAuthority.create(tmp_path_factory.mktemp("injector-ca"))
    injector = start_injector(control_plane, rig_supervisor, ca, "injector")
    strict = start_injector(control_plane, rig_supervisor, ca, "injector-strict", "--strict=true")
    inject_ns = namespace(control_plane, "inject")
    strict_ns = namespace(control_plane, "strict")
    down_ns = namespace(control_plane, "down")
    plain_ns = namespace(control_plane, "plain")
    dead = RunningInjector(
        url=f"https://{control_plane.node_address}:{free_port(control_plane.node_address)}",
        process=injector.process,
        ca=ca,
    )
    configs = [
        mutating_config(f"inject.{HOOK}", injector, [inject_ns, strict_ns]),
        mutating_config(f"down.{HOOK}", dead, [down_ns]),
        validating_config(f"hints.{HOOK}", injector, [inject_ns]),
        validating_config(f"strict.{HOOK}", strict, [strict_ns]),
    ]
    apply(control_plane, *configs)
    # The API server picks configurations up from an informer: wait until a dry run is injected.
    eventually(
        "the mutating webhook to take effect",
        lambda: has_agent(dry_run_pod(control_plane, inject_ns, probe_pod(f"probe-{uuid.uuid4().hex[:6]}"))),
    )
    eventually("the validating webhooks to take effect", lambda: warned_in_dry_run(control_plane, inject_ns))
    eventually("the strict webhook to take effect", lambda: warned_in_dry_run(control_plane, strict_ns))
    yield Setup(
        control_plane=control_plane,
        injector=injector,
        strict=strict,
        inject_ns=inject_ns,
        strict_ns=strict_ns,
        down_ns=down_ns,
        plain_ns=plain_ns,
    )
    for config in configs:
        control_plane.kubectl(
            "delete", config["kind"].lower(), config["metadata"]["name"], "--ignore-not-found"
        )


def deployment(
    name: str, ns: str, annotations: dict[str, str], *, labelled: bool = True, replicas: int = 2
) -> dict[str, Any]:
    labels = {"app": name, **({"tidescale.io/inject": "true"} if labelled else {})}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "main", "image": "example.invalid/worker:1"}]},
            },
        },
    }


def pods_of(control_plane: ControlPlane, ns: str, app: str, count: int) -> list[dict[str, Any]]:
    def listed() -> list[dict[str, Any]] | None:
        result = control_plane.kubectl("get", "pods", "-n", ns, "-l", f"app={app}", "-o", "json")
        items: list[dict[str, Any]] = json.loads(result.stdout)["items"]
        return items if len(items) >= count else None

    found: list[dict[str, Any]] = eventually(f"{count} pods of {app}", listed)
    return found


@pytest.mark.smoke
def test_a_labelled_deployments_pods_carry_the_agent_as_a_native_sidecar(setup: Setup) -> None:
    cp = setup.control_plane
    apply(cp, deployment("worker", setup.inject_ns, {"tidescale.io/max-replicas": "5"}))
    pods = pods_of(cp, setup.inject_ns, "worker", 2)
    for pod in pods:
        [agent] = [c for c in pod["spec"].get("initContainers", []) if c["name"] == AGENT_NAME]
        assert agent["restartPolicy"] == "Always"
        assert agent["image"] == "tidescale:it"
        env = {e["name"]: e.get("value") for e in agent["env"]}
        assert env["TIDESCALE_DEPLOYMENT"] == "worker"
        assert env["TIDESCALE_PORT"] == "9464"
        assert pod["metadata"]["annotations"]["tidescale.io/injected"]
        # The service-account plugin runs before webhooks; it is reinvoked after our patch
        # and mounts the token into the agent too.
        assert TOKEN_MOUNT_PATH in [m["mountPath"] for m in agent.get("volumeMounts", [])]
        assert [c["name"] for c in pod["spec"]["containers"]] == ["main"]


def test_an_unlabelled_deployments_pods_are_untouched(setup: Setup) -> None:
    cp = setup.control_plane
    apply(cp, deployment("plainer", setup.inject_ns, {}, labelled=False))
    for pod in pods_of(cp, setup.inject_ns, "plainer", 2):
        assert not has_agent(pod)
        assert "tidescale.io/injected" not in (pod["metadata"].get("annotations") or {})


def test_with_the_webhook_down_pods_are_still_created_without_the_agent(setup: Setup) -> None:
    cp = setup.control_plane
    apply(cp, deployment("orphan", setup.down_ns, {}))
    for pod in pods_of(cp, setup.down_ns, "orphan", 2):
        assert not has_agent(pod)
    # The API server did call the dead webhook, and let the pods through because of Ignore.
    metrics = cp.apiserver_metrics()
    assert f'apiserver_admission_webhook_fail_open_count{{name="down.{HOOK}"' in metrics


def test_a_pod_that_opts_out_of_automount_gets_a_projected_token_the_api_server_accepts(setup: Setup) -> None:
    pod = probe_pod("no-automount")
    pod["spec"]["automountServiceAccountToken"] = False
    created = dry_run_pod(setup.control_plane, setup.inject_ns, pod)
    [agent] = [c for c in created["spec"]["initContainers"] if c["name"] == AGENT_NAME]
    assert agent["volumeMounts"][0]["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"
    assert "volumeMounts" not in created["spec"]["containers"][0]


@pytest.mark.parametrize("case", ["host-network", "not-a-controller-reference"])
def test_host_network_pods_and_pods_without_a_controller_replica_set_get_no_agent(
    setup: Setup, case: str
) -> None:
    pod = probe_pod(f"skip-{case}")
    if case == "host-network":
        pod["spec"]["hostNetwork"] = True
    else:
        pod["metadata"]["ownerReferences"][0]["controller"] = False
    created = dry_run_pod(setup.control_plane, setup.inject_ns, pod)
    assert not has_agent(created)
    skips = setup.injector.get("/metrics").text
    reason = "host-network" if case == "host-network" else "no-deployment"
    assert f'tidescale_injector_skips_total{{reason="{reason}"}}' in skips


def test_kubectl_apply_of_a_bad_hint_prints_a_warning_naming_the_annotation(setup: Setup) -> None:
    result = apply(
        setup.control_plane, deployment("typo", setup.inject_ns, {"tidescale.io/max-replica": "3"})
    )
    assert result.returncode == 0
    assert "Warning: tidescale.io/max-replica " in result.stderr
    assert "did you mean tidescale.io/max-replicas" in result.stderr


def test_kubectl_apply_warns_with_the_exact_rolebinding_line_when_the_pods_account_lacks_the_agent_role(
    setup: Setup,
) -> None:
    """The agent of an unbound ServiceAccount cannot even post an Event: the team hears it at apply."""
    plane, ns = setup.control_plane, setup.inject_ns
    hints = {"tidescale.io/max-replicas": "3"}
    unbound = apply(plane, deployment("unbound", ns, hints))
    line = (
        "kubectl create rolebinding tidescale-agent --clusterrole=tidescale-agent "
        f"--serviceaccount={ns}:default -n {ns}"
    )
    assert line in unbound.stderr
    # A ServiceAccount that may update Leases (what the agent role grants) is not warned about.
    plane.kubectl("create", "serviceaccount", "bound", "-n", ns)
    plane.kubectl("create", "role", "leases", "--verb=get,create,update,watch", "--resource=leases", "-n", ns)
    plane.kubectl(
        "create", "rolebinding", "leases", "--role=leases", f"--serviceaccount={ns}:bound", "-n", ns
    )
    bound = deployment("bound", ns, hints)
    bound["spec"]["template"]["spec"]["serviceAccountName"] = "bound"
    result = apply(plane, bound)
    assert "kubectl create rolebinding" not in result.stderr
    # No hints, no question asked and no warning.
    plain = apply(plane, deployment("no-hints", ns, {}))
    assert "rolebinding" not in plain.stderr


def test_strict_mode_refuses_a_deployment_with_a_bad_hint(setup: Setup) -> None:
    bad = deployment("strict-typo", setup.strict_ns, {"tidescale.io/min-replicas": "many"})
    result = apply(setup.control_plane, bad, check=False)
    assert result.returncode != 0
    assert "tidescale.io/min-replicas" in result.stderr
    assert "denied the request" in result.stderr
    good = deployment("strict-ok", setup.strict_ns, {"tidescale.io/min-replicas": "2"})
    assert apply(setup.control_plane, good).returncode == 0


def test_generated_patched_pods_pass_the_api_servers_validation(setup: Setup) -> None:
    rng = random.Random(5)
    pods = []
    for i in range(60):
        config = InjectorConfig(image="tidescale:it", native_sidecars=i % 2 == 0, version="0.1.0")
        pod = plausible_pod(rng)
        pod["metadata"].pop("generateName")
        pod["metadata"]["name"] = f"gen-{i}"
        pod["metadata"]["namespace"] = setup.plain_ns
        # The generator's awkward keys test escaping; only valid ones can go to the API server.
        annotations = pod["metadata"].get("annotations") or {}
        pod["metadata"]["annotations"] = {k: v for k, v in annotations.items() if ANNOTATION_KEY.fullmatch(k)}
        injection = build_patch(pod, config)
        assert injection.skipped is None
        pods.append(jsonpatch.JsonPatch(list(injection.ops)).apply(copy.deepcopy(pod)))
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": pods})
    result = setup.control_plane.kubectl("create", "--dry-run=server", "-f", "-", input=body, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("created (server dry run)") == len(pods)


def test_the_api_server_reports_webhook_latency_and_the_injector_counts_injections(setup: Setup) -> None:
    metrics = setup.control_plane.apiserver_metrics()
    assert f'apiserver_admission_webhook_admission_duration_seconds_count{{name="inject.{HOOK}"' in metrics
    own = setup.injector.get("/metrics").text
    assert 'tidescale_injector_injections_total{mode="native"}' in own
    assert 'tidescale_injector_admissions_total{webhook="validate",result="warned"}' in own
