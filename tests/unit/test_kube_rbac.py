"""The agent's Role manifest and the permission list the agent checks are the same set."""

from __future__ import annotations

from pathlib import Path

import yaml

from tidescale.rbac import REQUIRED, Permission, describe_missing

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "agent-rbac.yaml"


def _role_rules() -> set[tuple[str, str, str, str]]:
    documents = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    (role,) = [d for d in documents if d["kind"] == "Role"]
    granted: set[tuple[str, str, str, str]] = set()
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                name, _, sub = resource.partition("/")
                granted.update((verb, group, name, sub) for verb in rule["verbs"])
    return granted


def test_the_role_grants_exactly_what_the_agent_checks() -> None:
    needed = {(p.verb, p.group, p.resource, p.subresource) for p in REQUIRED}
    assert _role_rules() == needed


def test_the_example_binding_refers_to_the_role() -> None:
    documents = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    (binding,) = [d for d in documents if d["kind"] == "RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "tidescale-agent",
    }


def test_the_report_names_verb_resource_and_service_account() -> None:
    missing = (
        Permission(verb="update", group="coordination.k8s.io", resource="leases", why="leader election"),
    )
    message = describe_missing(missing, namespace="shop", service_account="orders")
    assert "update leases (coordination.k8s.io) for leader election" in message
    assert "ServiceAccount orders in namespace shop" in message
