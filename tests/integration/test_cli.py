"""The people-facing commands against the rig, run as a person runs them: ``tidescale status``,
``explain`` (with ``--what-if``) and ``check`` as processes with the admin kubeconfig, against real
Deployments scaled by running agents, a real injector behind registered webhooks and a real waker."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.rigkube import (
    WAKER_NAMESPACE,
    apply,
    consumer_deployment,
    get,
    kafka_hints,
    namespace_with_agent_rbac,
    produce,
    unique,
    wait_for,
    waker_argv,
    waker_rbac,
)
from tests.integration.test_agent import lease_holder, replicas_of, running_pods
from tests.integration.test_injector import start_injector
from tests.rig.certs import CertificateAuthority
from tests.rig.controlplane import ControlPlane
from tests.rig.kafka import Kafka
from tests.rig.paths import REPO_ROOT
from tests.rig.podrunner import PodRunner
from tests.rig.processes import Supervisor

pytestmark = pytest.mark.rig

PARTITIONS = 8


def tidescale(plane: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a process, with the admin's kubeconfig, as on a laptop."""
    return subprocess.run(
        [sys.executable, "-m", "tidescale.cli", *args, "--kubeconfig", str(plane.admin_kubeconfig)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
        timeout=60,
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class Scaled:
    namespace: str
    name: str
    leader: str


@pytest.fixture(scope="module")
def scaled(
    control_plane: ControlPlane, pod_runner: PodRunner, kafka: Kafka, rig_run_dir: Path
) -> Iterator[Scaled]:
    """A consumer Deployment its agents scaled from 1 to 3 on a burst of 300 messages; a long
    scale-down window keeps it at 3 while the tests read it."""
    namespace, name = unique("cli"), "orders"
    topic, group = unique("orders"), unique("orders-group")
    kafka.create_topic(topic, PARTITIONS)
    namespace_with_agent_rbac(control_plane, namespace)
    annotations = kafka_hints(
        kafka,
        topic,
        group,
        {
            "min-replicas": "1",
            "max-replicas": "6",
            "kafka.lag-threshold": "100",
            "scale-up-policies": "10 pods/1s",
            "scale-down-stabilization": "10m",
        },
    )
    deployment = consumer_deployment(
        name,
        kafka=kafka,
        topic=topic,
        group=group,
        annotations=annotations,
        record_file=rig_run_dir / f"{namespace}-consumed.txt",
    )
    deployment["spec"]["template"]["metadata"]["labels"]["tidescale.io/inject"] = "true"
    apply(control_plane, deployment, namespace=namespace)
    wait_for(
        "the first consumer pod to run", lambda: running_pods(control_plane, namespace, name), timeout=60
    )
    wait_for("an agent to lead", lambda: lease_holder(control_plane, namespace, name), timeout=60)
    produce(kafka, topic, [f"m{i:04d}" for i in range(300)])
    wait_for("scale-up to 3", lambda: replicas_of(control_plane, namespace, name) == 3, timeout=60)

    def status_says_3() -> bool:
        annotations = get(control_plane, "deployment", name, namespace)["metadata"]["annotations"]
        written = json.loads(annotations.get("tidescale.io/status", "{}"))
        return bool((written.get("lastChange") or {}).get("to") == 3)

    wait_for("the status annotation to record the change", status_says_3, timeout=30)
    leader = lease_holder(control_plane, namespace, name)
    assert leader is not None
    yield Scaled(namespace=namespace, name=name, leader=leader)
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false")


def test_status_shows_the_scaled_deployment_its_leader_and_why_it_changed(
    control_plane: ControlPlane, scaled: Scaled
) -> None:
    table = tidescale(control_plane, "status", "-n", scaled.namespace)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split()[:4] == ["NAME", "REPLICAS", "TRIGGERS", "LEADER"]
    assert row.split()[:2] == ["orders", "3/3"]
    assert "kafka=" in row
    assert scaled.leader in row
    assert "1->3" in row
    assert "over threshold 100 on kafka" in row

    as_json = tidescale(control_plane, "status", "-n", scaled.namespace, "orders", "-o", "json")
    assert as_json.returncode == 0, as_json.stderr
    (view,) = json.loads(as_json.stdout)
    assert view["replicas"]["spec"] == 3
    assert view["lease"]["holder"] == scaled.leader
    assert view["lease"]["live"] is True
    assert view["lastChange"]["from"] == 1
    assert view["lastChange"]["to"] == 3

    everywhere = tidescale(control_plane, "status", "-A")
    assert everywhere.returncode == 0, everywhere.stderr
    assert any(line.split()[:2] == [scaled.namespace, "orders"] for line in everywhere.stdout.splitlines())


def test_status_of_a_missing_deployment_fails_naming_it(control_plane: ControlPlane, scaled: Scaled) -> None:
    result = tidescale(control_plane, "status", "-n", scaled.namespace, "nope")
    assert result.returncode == 1
    assert "deployment 'nope' not found" in result.stderr


def test_explain_says_why_three_and_what_comes_next(control_plane: ControlPlane, scaled: Scaled) -> None:
    result = tidescale(control_plane, "explain", f"{scaled.namespace}/{scaled.name}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{scaled.namespace}/orders: 3 replica(s)")
    assert f"leader {scaled.leader}" in lines[0]
    assert any(line.strip().startswith("kafka  lag ") and "/ 100" in line for line in lines)
    assert any(line.startswith("Last change: 1->3") and "over threshold 100" in line for line in lines)
    assert any(line.startswith("Next: ") for line in lines)
    assert "Park: not parked" in lines


def test_explain_what_if_replays_the_policy_offline_up_and_down(
    control_plane: ControlPlane, scaled: Scaled
) -> None:
    up = tidescale(control_plane, "explain", "-n", scaled.namespace, scaled.name, "--what-if", "kafka=550")
    assert up.returncode == 0, up.stderr
    assert "What if kafka=550: 3 -> 6" in up.stdout
    down = tidescale(control_plane, "explain", f"{scaled.namespace}/{scaled.name}", "--what-if", "kafka=0")
    assert down.returncode == 0, down.stderr
    assert "What if kafka=0: 3 -> 3" in down.stdout
    assert "held by scale-down stabilization 10m" in down.stdout
    # Nothing was written: the count is still the agents'.
    assert replicas_of(control_plane, scaled.namespace, scaled.name) == 3
    unknown = tidescale(
        control_plane, "explain", f"{scaled.namespace}/{scaled.name}", "--what-if", "rabbit=3"
    )
    assert unknown.returncode == 1
    assert "this Deployment's triggers are kafka" in unknown.stderr


# ---------------------------------------------------------------- check


def lines_of(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """Check lines by what they check (the text between the mark and the colon)."""
    found = {}
    for line in result.stdout.splitlines():
        if line.startswith("["):
            mark, _, rest = line.partition("] ")
            found[rest.split(":", 1)[0].strip()] = mark.strip("[ ").strip()
    return found


def hook(
    name: str, url: str, ca_pem: bytes, path: str, namespace: str, rules: dict[str, Any]
) -> dict[str, Any]:
    return {
        "name": name,
        "clientConfig": {"url": url + path, "caBundle": base64.b64encode(ca_pem).decode()},
        "rules": [rules],
        "namespaceSelector": {
            "matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [namespace]}
            ]
        },
        "failurePolicy": "Ignore",
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": 5,
    }


def test_check_passes_with_webhooks_waker_and_binding_and_names_what_is_missing(
    control_plane: ControlPlane, rig_supervisor: Supervisor, tmp_path: Path
) -> None:
    namespace = unique("check")
    namespace_with_agent_rbac(control_plane, namespace)  # binds the Role to ServiceAccount "workload"
    lease = unique("tidescale-waker")

    bare = tidescale(control_plane, "check", "-n", namespace, "--waker-lease", lease)
    assert bare.returncode == 1, bare.stdout
    found = lines_of(bare)
    assert found["API server answers"] == "ok"
    assert found["API server version"] == "ok"
    assert found[f"waker leading (Lease {lease})"] == "FAIL"
    assert found[f"agent RoleBinding in namespace {namespace}"] == "ok", bare.stdout  # the Role is bound

    # A Deployment whose pods run as a ServiceAccount the Role is not bound to: the exact fix line.
    orphan = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "billing", "annotations": {"tidescale.io/max-replicas": "3"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "billing"}},
            "template": {
                "metadata": {"labels": {"app": "billing", "tidescale.io/inject": "true"}},
                "spec": {"serviceAccountName": "billing", "containers": [{"name": "c", "image": "x"}]},
            },
        },
    }
    apply(control_plane, orphan, namespace=namespace)
    missing = tidescale(control_plane, "check", "-n", namespace, "--waker-lease", lease)
    assert lines_of(missing)[f"agent RoleBinding in namespace {namespace}"] == "FAIL"
    assert (
        f"fix: kubectl create rolebinding tidescale-agent --clusterrole=tidescale-agent "
        f"--serviceaccount={namespace}:billing -n {namespace}"
    ) in missing.stdout

    # Now the real thing: an injector behind webhooks with the chart's names, a waker leading.
    ca = CertificateAuthority.create(tmp_path / "ca")
    injector = start_injector(control_plane, rig_supervisor, ca, unique("cli-injector"))
    configs = [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": f"{namespace}-inject"},
            "webhooks": [
                hook(
                    "inject.tidescale.io",
                    injector.url,
                    ca.cert_pem,
                    "/mutate",
                    namespace,
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                    },
                )
            ],
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": f"{namespace}-validate"},
            "webhooks": [
                hook(
                    "validate.tidescale.io",
                    injector.url,
                    ca.cert_pem,
                    "/validate",
                    namespace,
                    {
                        "apiGroups": ["apps"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["deployments"],
                    },
                )
            ],
        },
    ]
    apply(control_plane, *configs)
    waker_config = waker_rbac(control_plane)
    # Stopped at the end: a waker acts on every parked Deployment of the cluster, so one left
    # running would ack and wake other tests' Deployments.
    waker = rig_supervisor.start(
        unique("cli-waker"), waker_argv(waker_config, identity="cli-waker-1", lease_name=lease)
    )
    orphan["spec"]["template"]["spec"]["serviceAccountName"] = "workload"
    apply(control_plane, orphan, namespace=namespace)
    try:
        last: list[subprocess.CompletedProcess[str]] = []

        def all_pass() -> subprocess.CompletedProcess[str] | None:
            result = tidescale(control_plane, "check", "-n", namespace, "--waker-lease", lease)
            last[:] = [result]
            return result if result.returncode == 0 else None

        # The API server picks webhook configurations up from an informer, the waker needs its Lease.
        try:
            passed = wait_for("every check to pass", all_pass, timeout=60, interval=1.0)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{last[-1].stdout}{last[-1].stderr}") from None
        found = lines_of(passed)
        assert found["mutating webhook inject.tidescale.io registered"] == "ok"
        assert found["mutating webhook answers (dry-run Pod)"] == "ok"
        # The injector read the API server's version with the thin client: native sidecars.
        assert "the agent was injected (native sidecar)" in passed.stdout
        assert found["validating webhook answers (dry-run Deployment)"] == "ok"
        assert found[f"waker leading (Lease {lease})"] == "ok"
        assert "cli-waker-1 in " + WAKER_NAMESPACE in passed.stdout
        assert found[f"agent RoleBinding in namespace {namespace}"] == "ok"
        # Dry runs store nothing.
        pods = json.loads(control_plane.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
        assert pods == []
    finally:
        waker.stop()
        for config in configs:
            control_plane.kubectl(
                "delete", config["kind"].lower(), config["metadata"]["name"], "--ignore-not-found"
            )
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false")


def test_the_leaders_log_is_one_json_object_a_line_naming_its_namespace_deployment_and_pod(
    pod_runner: PodRunner, scaled: Scaled
) -> None:
    log = pod_runner.log_path(scaled.namespace, scaled.leader, "tidescale-agent").read_text()
    lines = [json.loads(line) for line in log.splitlines() if not line.startswith("--- ")]
    assert lines, log
    for line in lines:
        assert {"time", "level", "logger", "msg"} <= set(line), line
        assert (line["namespace"], line["deployment"], line["pod"]) == (
            scaled.namespace,
            "orders",
            scaled.leader,
        )
    assert any(line["msg"].startswith("scaled orders: ") for line in lines)
    # httpx's per-request lines are debug detail: not at the default level.
    assert not any(line["logger"] == "httpx" for line in lines)


def test_the_cli_follows_a_chosen_context_whose_user_gets_a_token_from_an_exec_plugin(
    control_plane: ControlPlane, scaled: Scaled, tmp_path: Path
) -> None:
    """As on EKS, GKE or AKS: the kubeconfig's user runs a credential plugin (client.authentication.k8s.io
    ExecCredential) for a bearer token. The current context points elsewhere; --context picks ours."""
    account = "cli-reader"
    token = control_plane.service_account_token(scaled.namespace, account)
    apply(
        control_plane,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": account},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            },
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": scaled.namespace}],
        },
        namespace=scaled.namespace,
    )
    calls = tmp_path / "plugin-calls"
    plugin = tmp_path / "credential-plugin.py"
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": token},
    }
    plugin.write_text(
        "import json, pathlib\n"
        f"pathlib.Path({str(calls)!r}).open('a').write('called\\n')\n"
        f"print(json.dumps({credential!r}))\n"
    )
    admin = json.loads(control_plane.admin_kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "elsewhere",
                "clusters": [
                    {"name": "rig", "cluster": cluster},
                    {
                        "name": "nowhere",
                        "cluster": {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True},
                    },
                ],
                "users": [
                    {
                        "name": "plugin-user",
                        "user": {
                            "exec": {
                                "apiVersion": "client.authentication.k8s.io/v1",
                                "command": sys.executable,
                                "args": [str(plugin)],
                                "interactiveMode": "Never",
                            }
                        },
                    }
                ],
                "contexts": [
                    {"name": "elsewhere", "context": {"cluster": "nowhere", "user": "plugin-user"}},
                    {
                        "name": "rig-exec",
                        "context": {"cluster": "rig", "user": "plugin-user", "namespace": scaled.namespace},
                    },
                ],
            }
        )
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tidescale.cli", *args, "--kubeconfig", str(kubeconfig)],
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO_ROOT,
            timeout=60,
        )

    # The context's own namespace applies: no -n.
    result = cli("status", "--context", "rig-exec", "orders", "-o", "json")
    assert result.returncode == 0, result.stderr
    (view,) = json.loads(result.stdout)
    assert (view["namespace"], view["replicas"]["spec"]) == (scaled.namespace, 3)
    assert calls.read_text().count("called") >= 1
    # Without --context, the current context's unreachable server is used, and said so.
    elsewhere = cli("status", "-n", scaled.namespace, "--request-timeout", "3")
    assert elsewhere.returncode == 1
    assert "https://127.0.0.1:1" in elsewhere.stderr
