"""The Helm chart, rendered by the rig's helm (`helm template`, no cluster): what each value changes.

These need only the helm binary from the rig cache; without it they fail in one line saying so.
The helpers here (``helm``, ``render``, ``Rendered``) are shared with the chart's rig tests.
"""

from __future__ import annotations

import base64
import functools
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from tests.rig.paths import (
    REPO_ROOT,
    VERSIONS,
    RigNotBuilt,
    helm_binary,
    kubernetes_minor,
    kubernetes_version,
)

CHART = REPO_ROOT / "charts" / "tidescale"
RELEASE, NAMESPACE = "demo", "tidescale-system"
INJECTOR, WAKER = "demo-tidescale-injector", "demo-tidescale-waker"
SECRET_VALUES = ("--set", "certificates.mode=secret", "--set", "certificates.existingSecret=my-tls")
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
DIGEST = "sha256:" + "ab" * 32
# Rendered for the Kubernetes the rig runs: without it the rig's helm (built without Helm's release
# ldflags) assumes 1.20, older than the chart's kubeVersion.
KUBE_VERSION = ("--kube-version", kubernetes_version())


@functools.cache
def helm() -> Path:
    """The rig's helm binary, or a test failure in one line naming what is missing."""
    try:
        return helm_binary()
    except RigNotBuilt as exc:
        missing = str(exc)
    pytest.fail(f"helm cannot run: {missing}", pytrace=False)


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm()), *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class Rendered:
    """The documents of one `helm template`, looked up by kind and name."""

    text: str
    docs: tuple[dict[str, Any], ...]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)} in {self.kinds()}"
        return found[0]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def has(self, kind: str, name: str) -> bool:
        return any(d["kind"] == kind and d["metadata"]["name"] == name for d in self.docs)

    def kinds(self) -> list[str]:
        return sorted(f"{d['kind']}/{d['metadata']['name']}" for d in self.docs)


def render(*args: str, release: str = RELEASE, namespace: str = NAMESPACE) -> Rendered:
    result = run_helm("template", release, str(CHART), "--namespace", namespace, *KUBE_VERSION, *args)
    assert result.returncode == 0, result.stderr
    docs = tuple(d for d in yaml.safe_load_all(result.stdout) if d)
    return Rendered(text=result.stdout, docs=docs)


def render_error(*args: str) -> str:
    result = run_helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *KUBE_VERSION, *args)
    assert result.returncode != 0, "expected the chart to refuse these values"
    return result.stderr


def sets(**values: str) -> tuple[str, ...]:
    """``sets(**{"injector.replicas": "3"})`` -> ("--set", "injector.replicas=3")."""
    return tuple(arg for key, value in values.items() for arg in ("--set", f"{key}={value}"))


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(only)


def env(deployment: dict[str, Any]) -> dict[str, str]:
    """Plain env values of the Deployment's container (downward API entries left out)."""
    return {e["name"]: e["value"] for e in container(deployment).get("env", []) if "value" in e}


def webhook(rendered: Rendered, kind: str) -> dict[str, Any]:
    (hook,) = rendered.get(kind, INJECTOR)["webhooks"]
    return dict(hook)


@pytest.fixture(scope="module")
def default() -> Rendered:
    return render()


# -- defaults ---------------------------------------------------------------------------------


def test_the_default_render_has_the_injector_the_waker_and_the_agent_role(default: Rendered) -> None:
    assert default.kinds() == sorted(
        [
            f"Deployment/{INJECTOR}",
            f"Service/{INJECTOR}",
            f"PodDisruptionBudget/{INJECTOR}",
            f"ServiceAccount/{INJECTOR}",
            f"ClusterRole/{INJECTOR}",
            f"ClusterRoleBinding/{INJECTOR}",
            f"Secret/{INJECTOR}-tls",
            f"MutatingWebhookConfiguration/{INJECTOR}",
            f"ValidatingWebhookConfiguration/{INJECTOR}",
            f"Deployment/{WAKER}",
            f"PodDisruptionBudget/{WAKER}",
            f"ServiceAccount/{WAKER}",
            f"ClusterRole/{WAKER}",
            f"ClusterRoleBinding/{WAKER}",
            f"Role/{WAKER}-lease",
            f"RoleBinding/{WAKER}-lease",
            "ClusterRole/tidescale-agent",
            "ClusterRole/tidescale-agent-binder",
            "ValidatingAdmissionPolicy/tidescale-agent",
            "ValidatingAdmissionPolicyBinding/tidescale-agent",
            "ValidatingAdmissionPolicy/tidescale-agent-pods",
            "ValidatingAdmissionPolicyBinding/tidescale-agent-pods",
            f"NetworkPolicy/{INJECTOR}",
            f"NetworkPolicy/{WAKER}",
        ]
    )


def test_every_resource_carries_the_recommended_labels_and_namespaced_ones_the_release_namespace(
    default: Rendered,
) -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"}
    cluster_scoped |= {
        "ValidatingWebhookConfiguration",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    for doc in default.docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "tidescale", doc["metadata"]["name"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/component"] in {"injector", "waker", "agent"}
        if doc["kind"] not in cluster_scoped:
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]


@pytest.mark.parametrize("name", [INJECTOR, WAKER])
def test_both_deployments_run_two_replicas_spread_over_nodes_under_the_restricted_profile(
    default: Rendered, name: str
) -> None:
    deployment = default.get("Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container(deployment)["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert (
        term["podAffinityTerm"]["labelSelector"]["matchLabels"]
        == deployment["spec"]["selector"]["matchLabels"]
    )
    assert container(deployment)["resources"]["requests"]


def test_the_injector_probes_its_health_endpoints_over_https_and_mounts_its_certificate(
    default: Rendered,
) -> None:
    deployment = default.get("Deployment", INJECTOR)
    main = container(deployment)
    assert main["args"] == ["injector"]
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "https", "scheme": "HTTPS"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "https", "scheme": "HTTPS"}
    assert main["ports"] == [{"name": "https", "containerPort": 8443, "protocol": "TCP"}]
    assert main["volumeMounts"] == [{"name": "tls", "mountPath": "/etc/tidescale/tls", "readOnly": True}]
    (volume,) = deployment["spec"]["template"]["spec"]["volumes"]
    assert volume == {"name": "tls", "secret": {"secretName": f"{INJECTOR}-tls"}}
    service = default.get("Service", INJECTOR)
    assert service["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_the_waker_probes_its_plain_http_health_endpoints_on_its_metrics_port(default: Rendered) -> None:
    main = container(default.get("Deployment", WAKER))
    assert main["ports"] == [{"name": "metrics", "containerPort": 9465, "protocol": "TCP"}]
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}


def test_the_mutating_webhook_selects_opted_in_pods_outside_kube_system_and_its_own_namespace(
    default: Rendered,
) -> None:
    hook = webhook(default, "MutatingWebhookConfiguration")
    assert hook["objectSelector"] == {"matchLabels": {"tidescale.io/inject": "true"}}
    assert hook["namespaceSelector"] == {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", NAMESPACE]}
        ]
    }
    assert hook["failurePolicy"] == "Ignore"
    assert hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["sideEffects"] == "None"
    assert hook["timeoutSeconds"] == 5
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["rules"] == [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    assert hook["clientConfig"]["service"] == {
        "name": INJECTOR,
        "namespace": NAMESPACE,
        "path": "/mutate",
        "port": 443,
    }


def test_the_validating_webhook_checks_deployment_creates_and_updates(default: Rendered) -> None:
    hook = webhook(default, "ValidatingWebhookConfiguration")
    assert hook["rules"] == [
        {
            "apiGroups": ["apps"],
            "apiVersions": ["v1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["deployments"],
            "scope": "Namespaced",
        }
    ]
    assert hook["clientConfig"]["service"]["path"] == "/validate"
    assert hook["sideEffects"] == "None"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert "objectSelector" not in hook  # hints sit on Deployments whatever their labels


def test_the_generated_certificate_names_the_service_and_is_signed_by_the_ca_in_both_ca_bundles(
    default: Rendered,
) -> None:
    secret = default.get("Secret", f"{INJECTOR}-tls")
    assert secret["type"] == "kubernetes.io/tls"
    ca_b64 = secret["data"]["ca.crt"]
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        assert webhook(default, kind)["clientConfig"]["caBundle"] == ca_b64
    ca = x509.load_pem_x509_certificate(base64.b64decode(ca_b64))
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"{INJECTOR}.{NAMESPACE}.svc" in names.get_values_for_type(x509.DNSName)
    validity = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 364 <= validity.days <= 366  # one year (issue 11: it was ten)
    not_after = datetime.fromisoformat(
        secret["metadata"]["annotations"]["tidescale.io/certificate-not-after"]
    )
    assert abs((not_after - cert.not_valid_after_utc).total_seconds()) < 120


def test_the_injector_environment_parses_into_the_injector_config_the_values_describe(
    default: Rendered,
) -> None:
    from tidescale_injector.config import parse_settings

    environ = {**env(default.get("Deployment", INJECTOR)), "POD_NAMESPACE": NAMESPACE}
    settings, config = parse_settings([], environ)
    assert (settings.host, settings.port) == ("0.0.0.0", 8443)
    assert settings.cert_file == Path("/etc/tidescale/tls/tls.crt")
    assert settings.sidecar_mode == "auto"
    assert config.image == "ghcr.io/tidescale/tidescale:0.1.0"
    assert config.port == 9464
    assert config.strict is False
    assert config.excluded_namespaces == {"kube-system", NAMESPACE}
    r = config.resources
    assert (r.cpu_request, r.cpu_limit, r.memory_request, r.memory_limit) == (
        10,
        200,
        48 * 2**20,
        128 * 2**20,
    )
    assert (r.cpu_bounds.minimum, r.cpu_bounds.maximum) == (1, 2000)
    assert (r.memory_bounds.minimum, r.memory_bounds.maximum) == (32 * 2**20, 2**30)


def test_changed_agent_defaults_reach_the_injector_config(tmp_path: Path) -> None:
    from tidescale_injector.config import parse_settings

    rendered = render(
        *sets(
            **{
                "agent.image.repository": "registry.local/ts",
                "agent.image.tag": "9.9",
                "agent.port": "9500",
                "agent.resources.requests.cpu": "20m",
                "agent.resources.limits.cpu": "1",
                "agent.resources.requests.memory": "64Mi",
                "agent.resources.limits.memory": "256Mi",
                "agent.resourceBounds.cpu.min": "5m",
                "agent.resourceBounds.cpu.max": "500m",
                "agent.resourceBounds.memory.min": "40Mi",
                "agent.resourceBounds.memory.max": "512Mi",
                "injector.sidecarMode": "false",
                "injector.strict": "true",
                "injector.port": "9443",
                "injector.certReloadInterval": "2",
                "image.pullPolicy": "Always",
                "injector.excludedNamespaces": "{kube-system,legacy}",
            }
        )
    )
    settings, config = parse_settings([], env(rendered.get("Deployment", INJECTOR)))
    assert config.image == "registry.local/ts:9.9"
    assert config.image_pull_policy == "Always"
    assert config.port == 9500
    assert config.native_sidecars is False
    assert settings.sidecar_mode == "false"
    assert config.strict is True
    assert settings.port == 9443
    assert settings.cert_reload_interval == 2.0
    assert config.excluded_namespaces == {"kube-system", "legacy"}
    r = config.resources
    assert (r.cpu_request, r.cpu_limit, r.memory_request, r.memory_limit) == (
        20,
        1000,
        64 * 2**20,
        256 * 2**20,
    )
    assert (r.cpu_bounds.minimum, r.cpu_bounds.maximum) == (5, 500)
    assert (r.memory_bounds.minimum, r.memory_bounds.maximum) == (40 * 2**20, 512 * 2**20)
    deployment = rendered.get("Deployment", INJECTOR)
    assert container(deployment)["ports"][0]["containerPort"] == 9443
    hook = webhook(rendered, "MutatingWebhookConfiguration")
    assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == ["kube-system", "legacy", NAMESPACE]


def test_the_waker_environment_parses_into_the_waker_arguments_the_values_describe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tidescale import waker

    rendered = render(
        *sets(
            **{
                "waker.interval": "3",
                "waker.leaseName": "wake",
                "waker.secretNamespaces": "{shop,pay}",
                "waker.port": "9500",
            }
        )
    )
    deployment = rendered.get("Deployment", WAKER)
    assert container(deployment)["args"] == ["waker"]
    names = {e["name"] for e in container(deployment)["env"]}
    assert {"POD_NAME", "POD_NAMESPACE"} <= names  # identity and the Lease's namespace
    for name, value in env(deployment).items():
        monkeypatch.setenv(name, value)
    args = waker._arguments([])
    assert (args.interval, args.lease_name, args.secret_namespaces) == (3.0, "wake", "shop,pay")
    assert args.port == 9500 == container(deployment)["ports"][0]["containerPort"]
    assert not args.no_election


def test_the_agent_cluster_role_has_exactly_the_rules_of_deploy_agent_rbac(default: Rendered) -> None:
    role = yaml.safe_load_all((REPO_ROOT / "deploy" / "agent-rbac.yaml").read_text())
    expected = next(r for r in role if r["kind"] == "Role")["rules"]
    assert default.get("ClusterRole", "tidescale-agent")["rules"] == expected


def test_the_agent_cluster_role_grants_what_the_agent_checks_at_start(default: Rendered) -> None:
    from tidescale.rbac import REQUIRED

    granted = {
        (verb, group, resource)
        for rule in default.get("ClusterRole", "tidescale-agent")["rules"]
        for verb in rule["verbs"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    needed = {
        (p.verb, p.group, f"{p.resource}/{p.subresource}" if p.subresource else p.resource) for p in REQUIRED
    }
    assert granted == needed


def test_the_waker_roles_have_exactly_the_rules_of_deploy_waker_rbac() -> None:
    rendered = render(*sets(**{"waker.secretNamespaces": "{shop}"}))
    reference = {
        (d["kind"], d["metadata"]["name"]): d
        for d in yaml.safe_load_all((REPO_ROOT / "deploy" / "waker-rbac.yaml").read_text())
    }
    assert (
        rendered.get("ClusterRole", WAKER)["rules"] == reference[("ClusterRole", "tidescale-waker")]["rules"]
    )
    assert (
        rendered.get("Role", f"{WAKER}-lease")["rules"]
        == reference[("Role", "tidescale-waker-lease")]["rules"]
    )
    credentials = reference[("ClusterRole", "tidescale-waker-credentials")]["rules"]
    assert rendered.get("ClusterRole", f"{WAKER}-credentials")["rules"] == credentials
    subject = {"kind": "ServiceAccount", "name": WAKER, "namespace": NAMESPACE}
    for kind, name in (("ClusterRoleBinding", WAKER), ("RoleBinding", f"{WAKER}-lease")):
        assert rendered.get(kind, name)["subjects"] == [subject]
    (binding,) = [d for d in rendered.all("RoleBinding") if d["metadata"]["name"] == f"{WAKER}-credentials"]
    assert binding["metadata"]["namespace"] == "shop"
    assert binding["subjects"] == [subject]


def test_the_agent_policy_is_exactly_deploy_agent_policy_and_keys_on_the_marker_rule(
    default: Rendered,
) -> None:
    reference = {
        (d["kind"], d["metadata"]["name"]): d
        for d in yaml.safe_load_all((REPO_ROOT / "deploy" / "agent-policy.yaml").read_text())
    }
    for name in ("tidescale-agent", "tidescale-agent-pods"):
        for kind in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
            assert default.get(kind, name)["spec"] == reference[(kind, name)]["spec"], (kind, name)
        assert default.get("ValidatingAdmissionPolicyBinding", name)["spec"]["validationActions"] == ["Deny"]
    assert len(reference) == 4
    policy = default.get("ValidatingAdmissionPolicy", "tidescale-agent")
    # The marker the policy's match condition checks is a rule of the agent ClusterRole.
    marker = {"apiGroups": ["tidescale.io"], "resources": ["agentscopes"], "verbs": ["confine"]}
    assert marker in default.get("ClusterRole", "tidescale-agent")["rules"]
    condition = next(c for c in policy["spec"]["matchConditions"] if c["name"] == "bound-to-the-agent-role")
    assert "resource('agentscopes')" in condition["expression"]
    assert "check('confine')" in condition["expression"]


def test_namespace_admins_may_bind_the_agent_cluster_role_and_nothing_else(default: Rendered) -> None:
    binder = default.get("ClusterRole", "tidescale-agent-binder")
    assert binder["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert binder["rules"] == [
        {
            "apiGroups": ["rbac.authorization.k8s.io"],
            "resources": ["clusterroles"],
            "verbs": ["bind"],
            "resourceNames": ["tidescale-agent"],
        }
    ]


def test_the_validating_webhook_sees_only_objects_with_tidescale_keys_and_fails_open(
    default: Rendered,
) -> None:
    hook = webhook(default, "ValidatingWebhookConfiguration")
    assert hook["failurePolicy"] == "Ignore"
    (condition,) = hook["matchConditions"]
    for place in (
        "object.metadata.annotations",
        "object.metadata.labels",
        "object.spec.template.metadata.labels",
        "object.spec.template.metadata.annotations",
    ):
        assert f"{place}.exists(k, k.startsWith('tidescale.io/'))" in condition["expression"]
    assert "matchConditions" not in webhook(default, "MutatingWebhookConfiguration")


@pytest.mark.parametrize(
    ("mode_values", "source"),
    [
        ((), {"secret": {"name": f"{INJECTOR}-tls", "key": "ca.crt"}}),
        (
            (*SECRET_VALUES, "--set-string", f"certificates.caBundle={CA_PEM}"),
            {"configMap": {"name": f"{INJECTOR}-ca", "key": "ca.crt"}},
        ),
    ],
    ids=["helm", "secret-with-ca-bundle"],
)
def test_the_service_monitor_verifies_the_injector_with_the_webhooks_ca(
    mode_values: tuple[str, ...], source: dict[str, Any]
) -> None:
    rendered = render(*mode_values, *sets(**{"metrics.serviceMonitor.enabled": "true"}))
    (endpoint,) = rendered.get("ServiceMonitor", INJECTOR)["spec"]["endpoints"]
    assert endpoint["tlsConfig"] == {"serverName": f"{INJECTOR}.{NAMESPACE}.svc", "ca": source}
    assert "insecureSkipVerify" not in rendered.text
    if "configMap" in source:
        assert rendered.get("ConfigMap", f"{INJECTOR}-ca")["data"]["ca.crt"] == CA_PEM


def test_a_renewal_window_as_long_as_the_validity_is_refused_with_the_reason() -> None:
    error = render_error(*sets(**{"certificates.validityDays": "30", "certificates.renewBeforeDays": "30"}))
    assert "certificates.renewBeforeDays (30) must be less than certificates.validityDays (30)" in error


# -- certificate modes ------------------------------------------------------------------------


def test_cert_manager_mode_bootstraps_a_ca_and_has_the_ca_injected_into_both_webhooks() -> None:
    rendered = render(*sets(**{"certificates.mode": "certManager"}))
    assert not rendered.all("Secret")
    certificate = rendered.get("Certificate", INJECTOR)
    assert certificate["apiVersion"] == "cert-manager.io/v1"
    assert certificate["spec"]["secretName"] == f"{INJECTOR}-tls"
    assert f"{INJECTOR}.{NAMESPACE}.svc" in certificate["spec"]["dnsNames"]
    assert certificate["spec"]["issuerRef"] == {
        "name": f"{INJECTOR}-ca",
        "kind": "Issuer",
        "group": "cert-manager.io",
    }
    ca = rendered.get("Certificate", f"{INJECTOR}-ca")
    assert ca["spec"]["isCA"] is True
    assert (
        ca["spec"]["issuerRef"]["name"]
        == rendered.get("Issuer", f"{INJECTOR}-selfsigned")["metadata"]["name"]
    )
    assert rendered.get("Issuer", f"{INJECTOR}-ca")["spec"] == {
        "ca": {"secretName": ca["spec"]["secretName"]}
    }
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        config = rendered.get(kind, INJECTOR)
        assert config["metadata"]["annotations"] == {
            "cert-manager.io/inject-ca-from": f"{NAMESPACE}/{INJECTOR}"
        }
        assert "caBundle" not in config["webhooks"][0]["clientConfig"]


def test_cert_manager_mode_with_a_named_issuer_uses_it_and_makes_no_ca() -> None:
    rendered = render(
        *sets(
            **{
                "certificates.mode": "certManager",
                "certificates.certManager.issuerRef.name": "corp",
                "certificates.certManager.issuerRef.kind": "ClusterIssuer",
                "certificates.certManager.issuerRef.group": "example.io",
            }
        )
    )
    assert [d["metadata"]["name"] for d in rendered.all("Certificate")] == [INJECTOR]
    assert not rendered.all("Issuer")
    issuer = {"name": "corp", "kind": "ClusterIssuer", "group": "example.io"}
    assert rendered.get("Certificate", INJECTOR)["spec"]["issuerRef"] == issuer


def test_secret_mode_mounts_the_existing_secret_and_trusts_the_given_ca() -> None:
    rendered = render(*SECRET_VALUES, "--set-string", f"certificates.caBundle={CA_PEM}")
    assert not rendered.all("Secret")
    assert not rendered.all("Certificate")
    (volume,) = rendered.get("Deployment", INJECTOR)["spec"]["template"]["spec"]["volumes"]
    assert volume["secret"]["secretName"] == "my-tls"
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        assert base64.b64decode(webhook(rendered, kind)["clientConfig"]["caBundle"]).decode() == CA_PEM


def test_secret_mode_without_a_secret_name_or_a_ca_is_refused_with_the_reason() -> None:
    assert "certificates.existingSecret is required" in render_error(*sets(**{"certificates.mode": "secret"}))
    assert "needs certificates.caBundle" in render_error(*SECRET_VALUES)


def test_the_validity_of_the_generated_certificate_follows_its_value() -> None:
    rendered = render(*sets(**{"certificates.validityDays": "30", "certificates.renewBeforeDays": "7"}))
    cert = x509.load_pem_x509_certificate(
        base64.b64decode(rendered.get("Secret", f"{INJECTOR}-tls")["data"]["tls.crt"])
    )
    assert 29 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 31
    cm = render(
        *sets(
            **{
                "certificates.mode": "certManager",
                "certificates.validityDays": "30",
                "certificates.renewBeforeDays": "7",
            }
        )
    )
    assert cm.get("Certificate", f"{INJECTOR}-ca")["spec"]["duration"] == "720h"


# -- every other value ------------------------------------------------------------------------

Check = Callable[[Rendered], object]


def _pod(rendered: Rendered, name: str = INJECTOR) -> dict[str, Any]:
    return dict(rendered.get("Deployment", name)["spec"]["template"]["spec"])


_ZONE_TERM = (
    ".".join(
        ("affinity.nodeAffinity", "requiredDuringSchedulingIgnoredDuringExecution", "nodeSelectorTerms[0]")
    )
    + ".matchExpressions[0]"
)

CASES: list[tuple[tuple[str, ...], Check]] = [
    (
        sets(**{"image.repository": "reg.local/ts", "image.tag": "1.2.3"}),
        lambda r: (
            container(r.get("Deployment", WAKER))["image"] == "reg.local/ts:1.2.3"
            and env(r.get("Deployment", INJECTOR))["TIDESCALE_AGENT_IMAGE"] == "reg.local/ts:1.2.3"
        ),
    ),
    (
        sets(**{"image.pullPolicy": "Never"}),
        lambda r: container(r.get("Deployment", INJECTOR))["imagePullPolicy"] == "Never",
    ),
    (
        sets(**{"imagePullSecrets[0]": "pull", "imagePullSecrets[1].name": "other"}),
        lambda r: _pod(r, WAKER)["imagePullSecrets"] == [{"name": "pull"}, {"name": "other"}],
    ),
    (sets(nameOverride="ts"), lambda r: r.has("Deployment", "demo-ts-injector")),
    (sets(fullnameOverride="scale"), lambda r: r.has("Deployment", "scale-waker")),
    (
        sets(**{"commonLabels.team": "pay"}),
        lambda r: all(d["metadata"]["labels"]["team"] == "pay" for d in r.docs),
    ),
    (
        sets(**{"rbac.create": "false"}),
        lambda r: not r.all("ClusterRole") and not r.all("Role") and not r.all("RoleBinding"),
    ),
    (sets(logLevel="debug"), lambda r: env(r.get("Deployment", WAKER))["TIDESCALE_LOG_LEVEL"] == "debug"),
    (sets(**{"injector.replicas": "3"}), lambda r: r.get("Deployment", INJECTOR)["spec"]["replicas"] == 3),
    (
        # Injection follows the value; the validating webhook always fails open (issue 11, item 9).
        sets(**{"injector.failurePolicy": "Fail"}),
        lambda r: (
            webhook(r, "MutatingWebhookConfiguration")["failurePolicy"] == "Fail"
            and webhook(r, "ValidatingWebhookConfiguration")["failurePolicy"] == "Ignore"
        ),
    ),
    (
        sets(**{"injector.reinvocationPolicy": "Never"}),
        lambda r: webhook(r, "MutatingWebhookConfiguration")["reinvocationPolicy"] == "Never",
    ),
    (
        sets(**{"injector.timeoutSeconds": "2"}),
        lambda r: (
            webhook(r, "MutatingWebhookConfiguration")["timeoutSeconds"] == 2
            and webhook(r, "ValidatingWebhookConfiguration")["timeoutSeconds"] == 2
        ),
    ),
    (
        sets(**{"injector.serviceAccount.name": "hooks", "injector.serviceAccount.annotations.a": "b"}),
        lambda r: (
            _pod(r)["serviceAccountName"] == "hooks"
            and r.get("ServiceAccount", "hooks")["metadata"]["annotations"] == {"a": "b"}
        ),
    ),
    (
        sets(**{"injector.serviceAccount.create": "false"}),
        lambda r: _pod(r)["serviceAccountName"] == "default" and not r.has("ServiceAccount", INJECTOR),
    ),
    (
        sets(**{"injector.podDisruptionBudget.enabled": "false"}),
        lambda r: not r.has("PodDisruptionBudget", INJECTOR),
    ),
    (
        sets(**{"injector.podDisruptionBudget.minAvailable": "50%"}),
        lambda r: r.get("PodDisruptionBudget", INJECTOR)["spec"]["minAvailable"] == "50%",
    ),
    (
        sets(
            **{
                "injector.resources.requests.cpu": "75m",
                "injector.resources.requests.memory": "100Mi",
                "injector.resources.limits.memory": "300Mi",
            }
        ),
        lambda r: (
            container(r.get("Deployment", INJECTOR))["resources"]
            == {"requests": {"cpu": "75m", "memory": "100Mi"}, "limits": {"memory": "300Mi"}}
        ),
    ),
    (
        sets(
            **{
                "agent.clusterRoleName": "ts-agent",
                "agent.bindings[0].namespace": "shop",
                "agent.bindings[0].serviceAccount": "web",
            }
        ),
        lambda r: (
            r.has("ClusterRole", "ts-agent")
            and r.get("RoleBinding", "ts-agent-web")["metadata"]["namespace"] == "shop"
            and r.get("RoleBinding", "ts-agent-web")["roleRef"]["name"] == "ts-agent"
            and r.get("RoleBinding", "ts-agent-web")["subjects"]
            == [{"kind": "ServiceAccount", "name": "web", "namespace": "shop"}]
        ),
    ),
    (
        sets(**{"waker.enabled": "false"}),
        lambda r: not any(d["metadata"]["labels"]["app.kubernetes.io/component"] == "waker" for d in r.docs),
    ),
    (sets(**{"waker.replicas": "3"}), lambda r: r.get("Deployment", WAKER)["spec"]["replicas"] == 3),
    (
        sets(**{"waker.serviceAccount.name": "wk", "waker.serviceAccount.annotations.x": "y"}),
        lambda r: (
            _pod(r, WAKER)["serviceAccountName"] == "wk"
            and r.get("ClusterRoleBinding", WAKER)["subjects"][0]["name"] == "wk"
            and r.get("ServiceAccount", "wk")["metadata"]["annotations"] == {"x": "y"}
        ),
    ),
    (
        sets(**{"waker.serviceAccount.create": "false", "waker.serviceAccount.name": "existing"}),
        lambda r: (
            _pod(r, WAKER)["serviceAccountName"] == "existing" and not r.has("ServiceAccount", "existing")
        ),
    ),
    (
        sets(**{"waker.podDisruptionBudget.enabled": "false"}),
        lambda r: not r.has("PodDisruptionBudget", WAKER),
    ),
    (
        sets(**{"waker.podDisruptionBudget.minAvailable": "0"}),
        lambda r: r.get("PodDisruptionBudget", WAKER)["spec"]["minAvailable"] == 0,
    ),
    (
        sets(
            **{
                "waker.resources.requests.cpu": "30m",
                "waker.resources.requests.memory": "128Mi",
                "waker.resources.limits.memory": "400Mi",
            }
        ),
        lambda r: (
            container(r.get("Deployment", WAKER))["resources"]
            == {"requests": {"cpu": "30m", "memory": "128Mi"}, "limits": {"memory": "400Mi"}}
        ),
    ),
    (
        sets(
            **{
                "metrics.serviceMonitor.enabled": "true",
                "metrics.serviceMonitor.interval": "15s",
                "metrics.serviceMonitor.labels.release": "prom",
            }
        ),
        lambda r: (
            r.get("ServiceMonitor", INJECTOR)["spec"]["endpoints"][0]["interval"] == "15s"
            and r.get("ServiceMonitor", INJECTOR)["spec"]["endpoints"][0]["port"] == "https"
            and r.get("ServiceMonitor", INJECTOR)["metadata"]["labels"]["release"] == "prom"
        ),
    ),
    (
        sets(
            **{
                "metrics.podMonitor.enabled": "true",
                "metrics.podMonitor.interval": "10s",
                "metrics.podMonitor.labels.release": "prom",
            }
        ),
        lambda r: (
            r.get("PodMonitor", "demo-tidescale-agents")["spec"]["podMetricsEndpoints"]
            == [{"port": "tidescale", "path": "/metrics", "interval": "10s"}]
            and r.get("PodMonitor", "demo-tidescale-agents")["spec"]["selector"]
            == {"matchLabels": {"tidescale.io/inject": "true"}}
            and r.get("PodMonitor", "demo-tidescale-agents")["metadata"]["labels"]["release"] == "prom"
            and r.get("PodMonitor", WAKER)["spec"]["podMetricsEndpoints"]
            == [{"port": "metrics", "path": "/metrics", "interval": "10s"}]
            and r.get("PodMonitor", WAKER)["spec"]["selector"]["matchLabels"]
            == r.get("Deployment", WAKER)["spec"]["selector"]["matchLabels"]
            and r.get("PodMonitor", WAKER)["metadata"]["labels"]["release"] == "prom"
        ),
    ),
    (
        sets(**{"metrics.podMonitor.enabled": "true", "waker.enabled": "false"}),
        lambda r: r.has("PodMonitor", "demo-tidescale-agents") and not r.has("PodMonitor", WAKER),
    ),
    (sets(**{"networkPolicy.enabled": "false"}), lambda r: not r.all("NetworkPolicy")),
    (
        sets(**{"image.digest": DIGEST}),
        lambda r: (
            container(r.get("Deployment", WAKER))["image"] == f"ghcr.io/tidescale/tidescale@{DIGEST}"
            and container(r.get("Deployment", INJECTOR))["image"] == f"ghcr.io/tidescale/tidescale@{DIGEST}"
            and env(r.get("Deployment", INJECTOR))["TIDESCALE_AGENT_IMAGE"]
            == f"ghcr.io/tidescale/tidescale@{DIGEST}"
        ),
    ),
    (
        sets(**{"image.digest": DIGEST, "agent.image.tag": "9.9"}),
        lambda r: (
            env(r.get("Deployment", INJECTOR))["TIDESCALE_AGENT_IMAGE"] == "ghcr.io/tidescale/tidescale:9.9"
        ),
    ),
    (
        sets(**{"agent.image.repository": "reg.local/agent", "agent.image.digest": DIGEST}),
        lambda r: (
            env(r.get("Deployment", INJECTOR))["TIDESCALE_AGENT_IMAGE"] == f"reg.local/agent@{DIGEST}"
            and container(r.get("Deployment", WAKER))["image"].endswith(":0.1.0")
        ),
    ),
    (
        sets(**{"agent.confinement.enabled": "false"}),
        lambda r: not r.all("ValidatingAdmissionPolicy") and not r.all("ValidatingAdmissionPolicyBinding"),
    ),
    (
        sets(**{"agent.adminsMayBind": "false"}),
        lambda r: (
            not r.has("ClusterRole", "tidescale-agent-binder") and r.has("ClusterRole", "tidescale-agent")
        ),
    ),
    (
        sets(**{"networkPolicy.enabled": "true", "networkPolicy.metricsFrom[0].ipBlock.cidr": "10.1.0.0/16"}),
        lambda r: (
            r.get("NetworkPolicy", WAKER)["spec"]["ingress"][0]["from"]
            == [{"ipBlock": {"cidr": "10.1.0.0/16"}}]
            and "from" not in r.get("NetworkPolicy", INJECTOR)["spec"]["ingress"][0]
        ),
    ),
    (
        sets(**{"networkPolicy.enabled": "true", "networkPolicy.webhookFrom[0].ipBlock.cidr": "10.0.0.0/8"}),
        lambda r: (
            r.get("NetworkPolicy", INJECTOR)["spec"]["ingress"][0]["from"]
            == [{"ipBlock": {"cidr": "10.0.0.0/8"}}]
        ),
    ),
    (
        sets(**{"podLabels.team": "pay", "podAnnotations.note": "x"}),
        lambda r: all(
            r.get("Deployment", n)["spec"]["template"]["metadata"]["labels"]["team"] == "pay"
            and r.get("Deployment", n)["spec"]["template"]["metadata"]["annotations"] == {"note": "x"}
            for n in (INJECTOR, WAKER)
        ),
    ),
    (
        sets(
            **{
                "nodeSelector.pool": "system",
                "tolerations[0].key": "dedicated",
                "tolerations[0].operator": "Exists",
            }
        ),
        lambda r: (
            _pod(r, WAKER)["nodeSelector"] == {"pool": "system"}
            and _pod(r)["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
        ),
    ),
    (
        sets(**{f"{_ZONE_TERM}.key": "zone", f"{_ZONE_TERM}.operator": "Exists"}),
        lambda r: (
            "podAntiAffinity" not in _pod(r)["affinity"] and "nodeAffinity" in _pod(r, WAKER)["affinity"]
        ),
    ),
]


def _holds(check: Check, rendered: Rendered) -> bool:
    """Whether ``check`` holds; a missing key or object (as with the defaults) means it does not."""
    try:
        return bool(check(rendered))
    except (KeyError, IndexError, AssertionError):
        return False


def _case_id(case: tuple[tuple[str, ...], Check]) -> str:
    return ",".join(arg.split("=")[0] for arg in case[0] if arg != "--set")


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_the_value_changes_what_the_chart_renders(
    case: tuple[tuple[str, ...], Check], default: Rendered
) -> None:
    args, check = case
    assert not _holds(check, default), "the check already holds with the default values: it tests nothing"
    assert check(render(*args))


def _leaves(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _leaves(value, path + ".")
        else:
            yield path


def test_every_value_of_the_chart_is_exercised_by_a_test() -> None:
    """A value that no test sets is either dead or unchecked; both are bugs. The chart's render
    tests may live in any tests/unit/test_*chart*.py (the waker's are in test_waker_chart.py)."""
    source = "".join(path.read_text() for path in sorted(Path(__file__).parent.glob("test_*chart*.py")))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    untested = [leaf for leaf in _leaves(values) if f'"{leaf}' not in source and f"{leaf}=" not in source]
    assert untested == []


# -- schema -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "misspelled"),
    [
        ("injector.replcas=3", "replcas"),
        ("agent.resources.request.cpu=1m", "request"),
        ("waker.enable=false", "enable"),
        ("certificate.mode=helm", "certificate"),
        ("metrics.podMonitor.enable=true", "enable"),
    ],
)
def test_the_schema_rejects_a_misspelled_key_at_any_depth(key: str, misspelled: str) -> None:
    assert f"additional properties '{misspelled}' not allowed" in render_error("--set", key)


@pytest.mark.parametrize(
    "value",
    [
        "injector.timeoutSeconds=31",
        "injector.sidecarMode=yes",
        "certificates.mode=vault",
        "agent.resources.requests.cpu=lots",
        "injector.reinvocationPolicy=Always",
        "agent.bindings[0].namespace=shop",
        "waker.port=0",
        "image.digest=latest",
        "certificates.renewBeforeDays=0",
    ],
)
def test_the_schema_rejects_a_value_of_the_wrong_form(value: str) -> None:
    assert "values don't meet the specifications of the schema" in render_error("--set", value)


def test_every_value_is_documented_where_it_is_defined() -> None:
    """Each key has a comment on the line above it, or sits inside a key that has one
    (cpu/memory under a documented ``resources``)."""
    undocumented = []
    ancestors: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    previous = ""
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith(("#", "-")):
            indent = len(line) - len(line.lstrip())
            while ancestors and ancestors[-1][0] >= indent:
                ancestors.pop()
            documented = previous.startswith("#") or any(doc for _, doc in ancestors)
            is_leaf = not stripped.endswith(":")
            if is_leaf and not documented:
                undocumented.append(stripped)
            ancestors.append((indent, previous.startswith("#") or bool(ancestors and ancestors[-1][1])))
        if stripped:
            previous = stripped
    assert undocumented == []


def test_the_injector_may_only_ask_subject_access_reviews_and_names_the_agent_role_it_warns_about(
    default: Rendered,
) -> None:
    assert default.get("ClusterRole", INJECTOR)["rules"] == [
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]}
    ]
    subject = default.get("ClusterRoleBinding", INJECTOR)["subjects"][0]
    assert (subject["kind"], subject["name"]) == ("ServiceAccount", INJECTOR)
    (container,) = default.get("Deployment", INJECTOR)["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TIDESCALE_AGENT_CLUSTER_ROLE"] == "tidescale-agent"


def test_the_charts_kube_version_admits_the_oldest_kubernetes_tested_and_refuses_the_minor_before() -> None:
    oldest = VERSIONS["KUBERNETES_OLDEST_VERSION"]
    minor = kubernetes_minor(oldest)
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">=1.{minor}.0-0"

    on_oldest = run_helm("template", RELEASE, str(CHART), "--kube-version", oldest)
    older = run_helm("template", RELEASE, str(CHART), "--kube-version", f"v1.{minor - 1}.99")

    assert on_oldest.returncode == 0, on_oldest.stderr
    assert older.returncode != 0
    assert f"chart requires kubeVersion: >=1.{minor}.0-0" in older.stderr
