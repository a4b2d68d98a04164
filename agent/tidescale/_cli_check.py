"""``tidescale check``: preflight, one line per check, exit status 1 when any fails.

- the API server answers, and its version runs the agent as a native sidecar (1.29+);
- the mutating and validating webhooks are registered, and answer: a server-side
  dry-run of a labelled Pod comes back with the agent injected, and of a Deployment
  with a bad hint comes back with tidescale's warning (both write nothing);
- the waker leads: its Lease has a holder that renewed within the lease duration;
- the namespace has a RoleBinding to the agent Role, and every tidescale Deployment's
  ServiceAccount is among its subjects.

The judgements are pure functions of the objects read (unit-tested); :func:`main`
fetches them.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from tidescale._cli_kube import Api, add_kube_arguments, connect
from tidescale._cli_view import INJECT_LABEL, is_tidescale, parse_moment
from tidescale.errors import KubeError, KubeForbidden, TidescaleError

__all__ = [
    "Check",
    "check_agent_binding",
    "check_version",
    "check_waker",
    "check_webhooks_registered",
    "main",
]

Outcome = Literal["ok", "warn", "fail"]
_MARK = {"ok": "[ok]  ", "warn": "[warn]", "fail": "[FAIL]"}
_INJECTOR_FIX = "kubectl get pods -A -l app.kubernetes.io/component=injector; read the injector's logs"
AGENT_CONTAINER = "tidescale-agent"

EXAMPLES = """\
examples:
  # everything, for the current namespace's workloads
  tidescale check

  # a team's namespace, another cluster
  tidescale check -n shop --context prod-eu

  # a chart installed with other names
  tidescale check --waker-lease my-waker --agent-role my-agent-role

exit status: 0 when no check fails (warnings allowed), 1 otherwise.
"""


@dataclass(frozen=True, kw_only=True, slots=True)
class Check:
    outcome: Outcome
    what: str
    detail: str = ""
    fix: str = ""

    def line(self) -> str:
        text = f"{_MARK[self.outcome]} {self.what}"
        if self.detail:
            text += f": {self.detail}"
        if self.fix and self.outcome != "ok":
            text += f"\n         fix: {self.fix}"
        return text


# ---------------------------------------------------------------- judgements (pure)


def check_version(version: Mapping[str, Any]) -> Check:
    """Native sidecars (restartPolicy: Always init containers) are on by default from 1.29."""
    major = int(re.sub(r"\D", "", str(version.get("major", ""))) or 0)
    minor = int(re.sub(r"\D", "", str(version.get("minor", ""))) or 0)
    shown = str(version.get("gitVersion") or f"v{major}.{minor}")
    if (major, minor) >= (1, 29):
        return Check(outcome="ok", what="API server version", detail=f"{shown}: native sidecars")
    return Check(
        outcome="warn",
        what="API server version",
        detail=f"{shown}: older than 1.29, so the agent runs as a classic sidecar container "
        "(it starts after and may stop before the workload's containers)",
        fix="upgrade the control plane to 1.29 or newer",
    )


def _hooks(configurations: Sequence[Mapping[str, Any]], name: str) -> list[tuple[str, Mapping[str, Any]]]:
    found = []
    for configuration in configurations:
        for hook in configuration.get("webhooks") or []:
            if hook.get("name") == name:
                found.append((str((configuration.get("metadata") or {}).get("name")), hook))
    return found


def _client_words(hook: Mapping[str, Any]) -> str:
    client = hook.get("clientConfig") or {}
    if client.get("url"):
        return str(client["url"])
    service = client.get("service") or {}
    where = f"{service.get('namespace')}/{service.get('name')}:{service.get('port', 443)}"
    return f"service {where}{service.get('path', '')}"


def check_webhooks_registered(
    mutating: Sequence[Mapping[str, Any]], validating: Sequence[Mapping[str, Any]]
) -> list[Check]:
    checks = []
    for kind, configurations, name in (
        ("mutating", mutating, "inject.tidescale.io"),
        ("validating", validating, "validate.tidescale.io"),
    ):
        found = _hooks(configurations, name)
        if not found:
            checks.append(
                Check(
                    outcome="fail",
                    what=f"{kind} webhook {name} registered",
                    detail="no webhook configuration has it",
                    fix="install the chart (helm install tidescale charts/tidescale), see docs/install.md",
                )
            )
            continue
        configuration, hook = found[0]
        policy = hook.get("failurePolicy", "Fail")
        checks.append(
            Check(
                outcome="ok",
                what=f"{kind} webhook {name} registered",
                detail=f"in {configuration}, calls {_client_words(hook)}, failurePolicy {policy}",
            )
        )
    return checks


def judge_injection(pod: Mapping[str, Any] | None, error: str | None) -> Check:
    what = "mutating webhook answers (dry-run Pod)"
    if error is not None:
        return Check(outcome="warn", what=what, detail=f"could not try: {error}")
    spec = (pod or {}).get("spec") or {}
    names = [c.get("name") for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])]
    if AGENT_CONTAINER in names:
        native = any(c.get("name") == AGENT_CONTAINER for c in spec.get("initContainers") or [])
        return Check(
            outcome="ok",
            what=what,
            detail=f"the agent was injected ({'native' if native else 'classic'} sidecar)",
        )
    return Check(
        outcome="fail",
        what=what,
        detail="a labelled Pod came back without the agent: the webhook was not reached (failurePolicy "
        "Ignore lets pods through unchanged) or this namespace is excluded",
        fix=_INJECTOR_FIX,
    )


def judge_validation(warnings: Sequence[str], error: str | None) -> Check:
    what = "validating webhook answers (dry-run Deployment)"
    if error is not None:
        if "tidescale" in error:
            return Check(outcome="ok", what=what, detail="refused the bad hint (strict mode)")
        return Check(outcome="warn", what=what, detail=f"could not try: {error}")
    if any("tidescale" in w for w in warnings):
        return Check(outcome="ok", what=what, detail="warned about the bad hint")
    return Check(
        outcome="fail",
        what=what,
        detail="a Deployment with a bad hint came back without tidescale's warning: "
        "the webhook was not reached",
        fix=_INJECTOR_FIX,
    )


def check_waker(leases: Sequence[Mapping[str, Any]], *, name: str, now: datetime) -> Check:
    what = f"waker leading (Lease {name})"
    if not leases:
        return Check(
            outcome="fail",
            what=what,
            detail="no such Lease in any namespace: no waker has run, so nothing can be parked at zero",
            fix="enable the waker in the chart (waker.enabled=true), or keep min-replicas >= 1",
        )
    best: Check | None = None
    for lease in leases:
        spec = lease.get("spec") or {}
        where = f"{(lease.get('metadata') or {}).get('namespace')}/{name}"
        holder = spec.get("holderIdentity")
        renewed = parse_moment(spec.get("renewTime"))
        duration = spec.get("leaseDurationSeconds") or 15
        if holder and renewed is not None and (now - renewed).total_seconds() <= float(duration):
            age = max(0, int((now - renewed).total_seconds()))
            return Check(outcome="ok", what=what, detail=f"{holder} in {where}, renewed {age}s ago")
        best = Check(
            outcome="fail",
            what=what,
            detail=f"{where} has no live holder (holder {holder or 'none'}, "
            f"renewed {spec.get('renewTime') or 'never'})",
            fix="kubectl get pods -l app.kubernetes.io/component=waker -A; check the waker's logs",
        )
    assert best is not None
    return best


def _bound_accounts(
    bindings: Sequence[Mapping[str, Any]], namespace: str, role: str
) -> tuple[list[str], set[str]]:
    names, accounts = [], set()
    for binding in bindings:
        ref = binding.get("roleRef") or {}
        if ref.get("name") != role or ref.get("kind") not in ("Role", "ClusterRole"):
            continue
        names.append(str((binding.get("metadata") or {}).get("name")))
        for subject in binding.get("subjects") or []:
            if subject.get("kind") == "ServiceAccount":
                accounts.add(f"{subject.get('namespace') or namespace}/{subject.get('name')}")
            elif subject.get("kind") == "Group" and subject.get("name") in (
                "system:serviceaccounts",
                f"system:serviceaccounts:{namespace}",
            ):
                accounts.add(f"{namespace}/*")
    return names, accounts


def rolebinding_command(namespace: str, service_account: str, role: str) -> str:
    return (
        f"kubectl create rolebinding {role} --clusterrole={role} "
        f"--serviceaccount={namespace}:{service_account} -n {namespace}"
    )


def check_agent_binding(
    bindings: Sequence[Mapping[str, Any]],
    deployments: Sequence[Mapping[str, Any]],
    *,
    namespace: str,
    role: str,
) -> Check:
    what = f"agent RoleBinding in namespace {namespace}"
    names, accounts = _bound_accounts(bindings, namespace, role)
    scaled = [d for d in deployments if is_tidescale(d)]
    needed = sorted(
        {
            str(
                ((d.get("spec") or {}).get("template") or {}).get("spec", {}).get("serviceAccountName")
                or "default"
            )
            for d in scaled
        }
    )
    missing = [
        sa for sa in needed if f"{namespace}/{sa}" not in accounts and f"{namespace}/*" not in accounts
    ]
    if missing:
        return Check(
            outcome="fail",
            what=what,
            detail=f"ServiceAccount(s) {', '.join(missing)} run tidescale Deployments but are not bound to "
            f"{role}: their agents cannot elect a leader or scale",
            fix="; ".join(rolebinding_command(namespace, sa, role) for sa in missing),
        )
    if not names:
        return Check(
            outcome="warn",
            what=what,
            detail=f"none binds {role} (no tidescale Deployment here yet)",
            fix=rolebinding_command(namespace, "SERVICE_ACCOUNT", role),
        )
    bound = ", ".join(sorted(a.split("/", 1)[1] for a in accounts if a.startswith(f"{namespace}/"))) or "none"
    return Check(
        outcome="ok",
        what=what,
        detail=f"{', '.join(sorted(names))} binds {role} to {bound}"
        + (f"; {len(scaled)} tidescale Deployment(s) covered" if scaled else ""),
    )


# ---------------------------------------------------------------- fetching


def _probe_pod(namespace: str) -> dict[str, Any]:
    """A labelled pod as a Deployment's ReplicaSet makes it (the injector names the Deployment from its
    owner), for a server-side dry run."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "tidescale-check-5d8f7-",
            "namespace": namespace,
            "labels": {INJECT_LABEL: "true", "pod-template-hash": "5d8f7"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "tidescale-check-5d8f7",
                    "uid": str(uuid.uuid4()),
                    "controller": True,
                }
            ],
        },
        "spec": {"containers": [{"name": "probe", "image": "registry.k8s.io/pause:3.10"}]},
    }


def _probe_deployment(namespace: str) -> dict[str, Any]:
    labels = {"app": "tidescale-check"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "generateName": "tidescale-check-",
            "namespace": namespace,
            "annotations": {"tidescale.io/cooldown": "300"},
        },
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": {**labels, INJECT_LABEL: "true"}},
                "spec": {"containers": [{"name": "probe", "image": "registry.k8s.io/pause:3.10"}]},
            },
        },
    }


async def _dry_run(
    api: Api, path: str, body: Mapping[str, Any], what: str
) -> tuple[dict[str, Any] | None, list[str], str | None]:
    """A server-side dry-run create: (the object as admitted, the warnings, an error)."""
    try:
        created, warnings = await api.create_dry_run(path, body, what=what)
    except KubeError as error:
        return None, [], str(error)
    return created, warnings, None


async def run_checks(api: Api, *, namespace: str, waker_lease: str, agent_role: str) -> list[Check]:
    checks: list[Check] = []
    try:
        version = await api.get("/version", what="read the API server version")
    except KubeError as error:
        return [
            Check(
                outcome="fail",
                what=f"API server {api.target.server} answers",
                detail=str(error),
                fix="check --kubeconfig / --context and your credentials (kubectl get --raw /version)",
            )
        ]
    checks.append(Check(outcome="ok", what="API server answers", detail=api.target.server))
    checks.append(check_version(version))

    async def listing(
        path: str, what: str, params: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]] | str:
        try:
            return await api.items(path, what=what, params=params)
        except KubeError as error:
            return str(error)

    mutating, validating, leases, bindings, deployments = await asyncio.gather(
        listing(
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", "list mutating webhooks"
        ),
        listing(
            "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
            "list validating webhooks",
        ),
        listing(
            "/apis/coordination.k8s.io/v1/leases",
            "list leases",
            {"fieldSelector": f"metadata.name={waker_lease}"},
        ),
        listing(
            f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings", "list rolebindings"
        ),
        listing(f"/apis/apps/v1/namespaces/{namespace}/deployments", "list deployments"),
    )
    if isinstance(mutating, str) or isinstance(validating, str):
        problem = mutating if isinstance(mutating, str) else validating
        checks.append(
            Check(outcome="warn", what="webhooks registered", detail=f"cannot list them: {problem}")
        )
    else:
        checks += check_webhooks_registered(mutating, validating)
    pod, _, pod_error = await _dry_run(
        api, f"/api/v1/namespaces/{namespace}/pods", _probe_pod(namespace), "dry-run pod"
    )
    checks.append(judge_injection(pod, pod_error))
    _, warnings, deployment_error = await _dry_run(
        api,
        f"/apis/apps/v1/namespaces/{namespace}/deployments",
        _probe_deployment(namespace),
        "dry-run deployment",
    )
    checks.append(judge_validation(warnings, deployment_error))
    if isinstance(leases, str):
        checks.append(
            Check(
                outcome="warn", what=f"waker leading (Lease {waker_lease})", detail=f"cannot read: {leases}"
            )
        )
    else:
        checks.append(check_waker(leases, name=waker_lease, now=datetime.now(UTC)))
    if isinstance(bindings, str) or isinstance(deployments, str):
        unread = bindings if isinstance(bindings, str) else deployments
        checks.append(
            Check(
                outcome="warn",
                what=f"agent RoleBinding in namespace {namespace}",
                detail=f"cannot read: {unread}",
            )
        )
    else:
        checks.append(check_agent_binding(bindings, deployments, namespace=namespace, role=agent_role))
    return checks


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tidescale check",
        description="Preflight: is tidescale installed and working for this namespace? One line per check.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--waker-lease", default="tidescale-waker", help="the waker's Lease name (chart: waker.leaseName)"
    )
    parser.add_argument(
        "--agent-role",
        default="tidescale-agent",
        help="the agent's (Cluster)Role name (chart: agent.clusterRoleName)",
    )
    add_kube_arguments(parser)
    args = parser.parse_args(argv)
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    try:
        async with await connect(args) as api:
            namespace = api.target.namespace
            context = f" (context {api.target.context})" if api.target.context else ""
            print(f"tidescale check: {api.target.server}{context}, namespace {namespace}")
            checks = await run_checks(
                api, namespace=namespace, waker_lease=args.waker_lease, agent_role=args.agent_role
            )
    except KubeForbidden as error:
        print(f"tidescale check: {error}", file=sys.stderr)
        return 1
    except TidescaleError as error:
        print(f"tidescale check: {error}", file=sys.stderr)
        return 1
    for check in checks:
        print(check.line())
    failed = sum(1 for c in checks if c.outcome == "fail")
    warned = sum(1 for c in checks if c.outcome == "warn")
    print(f"{len(checks)} checks: {failed} failed, {warned} warning(s)")
    return 1 if failed else 0
