"""The whole path through the chart on the rig: `helm install`, a team opts a namespace in with the
one line NOTES.txt prints, a labelled Deployment gets its agents from the injector (called by the
API server through the chart's Service) and scales with its Kafka lag; `helm upgrade` keeps the
generated certificate and the webhook keeps injecting; `helm uninstall` leaves no webhook behind.

No hand wiring: the injector and the waker run as the chart's pods under the pod runner (the image
maps to .venv/bin/tidescale), with the chart's ServiceAccounts, RBAC and certificate.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.integration.rigkube import (
    apply,
    consumer_deployment,
    get,
    items,
    kafka_hints,
    produce,
    unique,
    wait_for,
)
from tests.rig.controlplane import ControlPlane
from tests.rig.helm import CHART, Helm
from tests.rig.kafka import Kafka
from tests.rig.podrunner import PodRunner

pytestmark = pytest.mark.rig

AGENT = "tidescale-agent"
INJECT_LABEL = {"tidescale.io/inject": "true"}
VALIDATE_EXCLUDED = re.compile(
    r'apiserver_admission_match_condition_exclusions_total\{[^}]*name="validate\.tidescale\.io"[^}]*\} [1-9]'
)


def ready_pods(plane: ControlPlane, namespace: str, component: str) -> list[str]:
    return sorted(
        pod["metadata"]["name"]
        for pod in items(plane, "pods", namespace, f"app.kubernetes.io/component={component}")
        if not pod["metadata"].get("deletionTimestamp")
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in pod.get("status", {}).get("conditions", [])
        )
    )


def injected(pod: dict[str, Any]) -> bool:
    spec = pod["spec"]
    return any(c["name"] == AGENT for c in spec.get("initContainers", []) + spec["containers"])


def workload_pods(plane: ControlPlane, namespace: str, app: str) -> list[dict[str, Any]]:
    return [
        p for p in items(plane, "pods", namespace, f"app={app}") if not p["metadata"].get("deletionTimestamp")
    ]


def consumer(name: str, *, kafka: Kafka, topic: str, group: str, record: Path) -> dict[str, Any]:
    """The rig's sample consumer opted in by label and hints only: no agent written into it."""
    extra = {"min-replicas": "1", "max-replicas": "4", "kafka.lag-threshold": "100"}
    extra["scale-up-policies"] = "10 pods/1s"
    deployment = consumer_deployment(
        name,
        kafka=kafka,
        topic=topic,
        group=group,
        annotations=kafka_hints(kafka, topic, group, extra),
        record_file=record,
    )
    template = deployment["spec"]["template"]
    template["metadata"]["labels"].update(INJECT_LABEL)
    template["spec"]["containers"] = [c for c in template["spec"]["containers"] if c["name"] != AGENT]
    return deployment


def replicas_of(plane: ControlPlane, namespace: str, name: str) -> int:
    return int(get(plane, "deployment", name, namespace)["spec"]["replicas"])


def lease_holder(plane: ControlPlane, namespace: str, lease: str) -> str | None:
    for found in items(plane, "lease", namespace):
        if found["metadata"]["name"] == lease:
            holder = found["spec"].get("holderIdentity")
            return str(holder) if holder else None
    return None


def rolebinding_line(notes: str, namespace: str, service_account: str) -> list[str]:
    """The `kubectl create rolebinding` line of NOTES.txt, filled in for this namespace and account."""
    (line,) = [ln.strip() for ln in notes.splitlines() if ln.strip().startswith("kubectl create rolebinding")]
    line = line.replace("NS:SA", f"{namespace}:{service_account}").replace("-n NS", f"-n {namespace}")
    assert not re.search(r"\bNS\b|\bSA\b", line), line
    return shlex.split(line)[1:]


def webhook_configurations(plane: ControlPlane, release: str) -> list[str]:
    out = plane.kubectl(
        "get",
        "mutatingwebhookconfigurations,validatingwebhookconfigurations",
        "-l",
        f"app.kubernetes.io/instance={release}",
        "-o",
        "name",
    ).stdout
    return out.split()


@pytest.mark.smoke
def test_helm_install_opt_in_scale_upgrade_and_uninstall_on_the_rig(
    control_plane: ControlPlane, pod_runner: PodRunner, kafka: Kafka, rig_run_dir: Path, tmp_path: Path
) -> None:
    release = unique("ts")
    system, team = f"{release}-system", f"{release}-shop"
    helm_ = Helm(control_plane, tmp_path / "helm")
    secret_name = f"{release}-tidescale-injector-tls"
    install = helm_(
        "install",
        release,
        str(CHART),
        "--namespace",
        system,
        "--create-namespace",
        "--set",
        f"agent.clusterRoleName={release}-agent",
        "--set",
        "logLevel=debug",
    )
    try:
        injectors = wait_for(
            "two ready injector pods",
            lambda: len(ready_pods(control_plane, system, "injector")) == 2,
            timeout=90,
        )
        assert injectors
        wait_for(
            "a waker to hold its Lease",
            lambda: lease_holder(control_plane, system, "tidescale-waker"),
            timeout=60,
        )
        first_secret = get(control_plane, "secret", secret_name, system)["data"]

        # A team opts in by itself: the NOTES line, then a labelled Deployment with hints.
        control_plane.kubectl("create", "namespace", team)
        apply(
            control_plane,
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "workload"}},
            namespace=team,
        )
        control_plane.kubectl(*rolebinding_line(install.stdout, team, "workload"))
        topic, group = unique("orders"), unique("orders-group")
        kafka.create_topic(topic, 8)
        record = rig_run_dir / f"{team}-consumed.txt"
        apply(
            control_plane,
            consumer("orders", kafka=kafka, topic=topic, group=group, record=record),
            namespace=team,
        )

        # A Deployment without any tidescale.io/ key is never sent to the validating webhook: the
        # API server's match condition excludes it (issue 11, item 9).
        plain = consumer("plain", kafka=kafka, topic=topic, group=unique("plain"), record=record)
        plain["spec"]["template"]["metadata"]["labels"] = {"app": "plain"}
        plain["spec"]["selector"] = {"matchLabels": {"app": "plain"}}
        plain["metadata"]["annotations"] = {}
        plain["spec"]["replicas"] = 0
        apply(control_plane, plain, namespace=team)
        wait_for(
            "the API server to count a match-condition exclusion of validate.tidescale.io",
            lambda: VALIDATE_EXCLUDED.search(control_plane.apiserver_metrics()),
            timeout=30,
        )

        pods = wait_for("the first pod", lambda: workload_pods(control_plane, team, "orders"), timeout=60)
        assert injected(pods[0]), pods[0]["spec"]
        wait_for(
            "an agent to lead", lambda: lease_holder(control_plane, team, "tidescale-orders"), timeout=90
        )
        produce(kafka, topic, [f"m{i:04d}" for i in range(300)])
        wait_for(
            "the Deployment to scale up with its lag",
            lambda: replicas_of(control_plane, team, "orders") >= 2,
            timeout=90,
        )
        scaled = wait_for(
            "every new pod to carry an agent",
            lambda: (
                pods
                if len(pods := workload_pods(control_plane, team, "orders")) >= 2 and all(map(injected, pods))
                else None
            ),
            timeout=60,
        )
        assert len(scaled) >= 2

        # Upgrade: the pod template changes (the injectors roll), the certificate stays.
        helm_(
            "upgrade", release, str(CHART), "--namespace", system, "--reuse-values", "--set", "logLevel=info"
        )
        assert get(control_plane, "secret", secret_name, system)["data"] == first_secret
        for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
            config = control_plane.kubectl("get", kind, f"{release}-tidescale-injector", "-o", "json").stdout
            (hook,) = json.loads(config)["webhooks"]
            assert hook["clientConfig"]["caBundle"] == first_secret["ca.crt"]
        wait_for(
            "two ready injectors of the new revision",
            lambda: (
                len(
                    [
                        p
                        for p in items(control_plane, "pods", system, "app.kubernetes.io/component=injector")
                        if not p["metadata"].get("deletionTimestamp")
                        and {"name": "TIDESCALE_LOG_LEVEL", "value": "info"}
                        in p["spec"]["containers"][0]["env"]
                        and any(
                            c["type"] == "Ready" and c["status"] == "True"
                            for c in p["status"].get("conditions", [])
                        )
                    ]
                )
                == 2
            ),
            timeout=120,
        )
        control_plane.kubectl("rollout", "restart", "deployment/orders", "-n", team)
        wait_for(
            "a pod of the restarted Deployment, injected by the upgraded injectors",
            lambda: [
                p
                for p in workload_pods(control_plane, team, "orders")
                if "kubectl.kubernetes.io/restartedAt" in (p["metadata"].get("annotations") or {})
                and injected(p)
            ],
            timeout=60,
        )
    finally:
        uninstall = helm_("uninstall", release, "--namespace", system, "--wait", check=False)
        control_plane.kubectl("delete", "namespace", team, "--wait=false", check=False)
    assert uninstall.returncode == 0, uninstall.stderr
    assert webhook_configurations(control_plane, release) == []
    wait_for("the release's pods to go", lambda: not items(control_plane, "pods", system), timeout=60)


def certificates_in(pem_b64: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(base64.b64decode(pem_b64))


def test_helm_upgrade_renews_the_generated_certificate_only_when_it_nears_expiry(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    release = unique("cert")
    system = f"{release}-system"
    helm_ = Helm(control_plane, tmp_path / "helm")
    secret_name = f"{release}-tidescale-injector-tls"
    options = (
        "--set",
        "waker.enabled=false",
        "--set",
        "injector.replicas=1",
        "--set",
        f"agent.clusterRoleName={release}-agent",
    )
    helm_("install", release, str(CHART), "--namespace", system, "--create-namespace", *options)
    try:
        first = get(control_plane, "secret", secret_name, system)
        (first_ca,) = certificates_in(first["data"]["ca.crt"])
        cert = x509.load_pem_x509_certificate(base64.b64decode(first["data"]["tls.crt"]))
        assert 364 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 366

        # Far from expiry: kept byte for byte.
        helm_("upgrade", release, str(CHART), "--namespace", system, "--reuse-values")
        assert get(control_plane, "secret", secret_name, system)["data"] == first["data"]

        # Ten days left (less than renewBeforeDays, 30): a new pair, the old CA still trusted.
        soon = (datetime.now(UTC) + timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
        control_plane.kubectl(
            "annotate",
            "secret",
            secret_name,
            "-n",
            system,
            "--overwrite",
            f"tidescale.io/certificate-not-after={soon}",
        )
        helm_("upgrade", release, str(CHART), "--namespace", system, "--reuse-values")
        renewed = get(control_plane, "secret", secret_name, system)
        assert renewed["data"]["tls.crt"] != first["data"]["tls.crt"]
        new_ca, old_ca = certificates_in(renewed["data"]["ca.crt"])
        assert old_ca == first_ca
        x509.load_pem_x509_certificate(
            base64.b64decode(renewed["data"]["tls.crt"])
        ).verify_directly_issued_by(new_ca)
        for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
            config = control_plane.kubectl("get", kind, f"{release}-tidescale-injector", "-o", "json").stdout
            (hook,) = json.loads(config)["webhooks"]
            assert hook["clientConfig"]["caBundle"] == renewed["data"]["ca.crt"]

        # And kept again on the next upgrade: the bundle does not grow.
        helm_("upgrade", release, str(CHART), "--namespace", system, "--reuse-values")
        assert get(control_plane, "secret", secret_name, system)["data"] == renewed["data"]
    finally:
        helm_("uninstall", release, "--namespace", system, check=False)
        control_plane.kubectl("delete", "namespace", system, "--wait=false", check=False)
