"""The chart's manifests pass the rig's API server: a server-side dry run of `helm template` output
with the default values, each certificate mode and every optional resource the API server knows.

Objects of APIs the rig does not serve (cert-manager, Prometheus Operator) are left out of the dry
run; tests/unit/test_chart_render.py checks their structure.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.rig.controlplane import ControlPlane
from tests.unit.test_chart_render import CA_PEM, CHART, Rendered, render, run_helm, sets

pytestmark = pytest.mark.rig

ABSENT_GROUPS = ("cert-manager.io/", "monitoring.coreos.com/")
OPTIONAL = {
    "metrics.serviceMonitor.enabled": "true",
    "metrics.podMonitor.enabled": "true",
    "networkPolicy.enabled": "true",
}


def namespaces(plane: ControlPlane, *names: str) -> None:
    for name in names:
        plane.kubectl("create", "namespace", name)


def dry_run(plane: ControlPlane, docs: list[dict[str, Any]]) -> str:
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
    result = plane.kubectl("apply", "--dry-run=server", "-f", "-", input=body, check=False)
    assert result.returncode == 0, result.stderr
    return str(result.stdout)


def served(rendered: Rendered) -> list[dict[str, Any]]:
    return [d for d in rendered.docs if not d["apiVersion"].startswith(ABSENT_GROUPS)]


def check_accepted(plane: ControlPlane, rendered: Rendered) -> None:
    docs = served(rendered)
    out = dry_run(plane, docs)
    for doc in docs:
        assert f"{doc['metadata']['name']} created (server dry run)" in out, (doc["kind"], out)


@pytest.fixture
def release_ns(control_plane: ControlPlane) -> str:
    name = f"ts-chart-{uuid.uuid4().hex[:6]}"
    namespaces(control_plane, name)
    return name


def test_the_default_render_is_accepted_by_the_api_server(
    control_plane: ControlPlane, release_ns: str
) -> None:
    rendered = render(namespace=release_ns, release=release_ns)

    check_accepted(control_plane, rendered)


def test_the_render_with_every_optional_resource_and_binding_is_accepted(
    control_plane: ControlPlane, release_ns: str
) -> None:
    team = f"{release_ns}-team"
    namespaces(control_plane, team)
    rendered = render(
        *sets(
            **OPTIONAL,
            **{
                "agent.bindings[0].namespace": team,
                "agent.bindings[0].serviceAccount": "default",
                "agent.clusterRoleName": f"{release_ns}-agent",
                "waker.secretNamespaces": f"{{{team}}}",
                "networkPolicy.webhookFrom[0].ipBlock.cidr": "10.0.0.0/8",
                "injector.failurePolicy": "Fail",
                "injector.reinvocationPolicy": "Never",
                "injector.podDisruptionBudget.minAvailable": "50%",
            },
        ),
        namespace=release_ns,
        release=release_ns,
    )
    assert {d["kind"] for d in rendered.docs} >= {
        "RoleBinding",
        "NetworkPolicy",
        "PodMonitor",
        "ServiceMonitor",
    }

    check_accepted(control_plane, rendered)


def test_cert_manager_mode_is_accepted_apart_from_the_cert_manager_objects(
    control_plane: ControlPlane, release_ns: str
) -> None:
    rendered = render(*sets(**{"certificates.mode": "certManager"}), namespace=release_ns, release=release_ns)
    left_out = sorted(d["kind"] for d in rendered.docs if d["apiVersion"].startswith("cert-manager.io/"))
    assert left_out == ["Certificate", "Certificate", "Issuer", "Issuer"]

    check_accepted(control_plane, rendered)


def test_existing_secret_mode_is_accepted(control_plane: ControlPlane, release_ns: str) -> None:
    rendered = render(
        *sets(**{"certificates.mode": "secret", "certificates.existingSecret": "corp-tls"}),
        "--set-string",
        f"certificates.caBundle={CA_PEM}",
        namespace=release_ns,
        release=release_ns,
    )

    check_accepted(control_plane, rendered)


@pytest.mark.parametrize(
    "values",
    [
        sets(**{"certificates.mode": "helm"}),
        sets(**{"certificates.mode": "certManager"}),
        (
            *sets(**{"certificates.mode": "secret", "certificates.existingSecret": "t"}),
            "--set-string",
            f"certificates.caBundle={CA_PEM}",
        ),
    ],
    ids=["helm", "certManager", "secret"],
)
def test_the_chart_passes_strict_lint_in_each_certificate_mode(values: tuple[str, ...]) -> None:
    result = run_helm("lint", "--strict", str(CHART), *values)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout
