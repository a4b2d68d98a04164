"""The agent's permissions: what it needs, and which of them its ServiceAccount lacks.

The set below is exactly the Role in ``deploy/agent-rbac.yaml``. At start the agent
asks the API server (SelfSubjectAccessReview, which every authenticated user may
call) about each one; what is missing is reported once, in a log line and an Event,
and the agent keeps serving its probes instead of crash-looping the workload's pod.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from tidescale.kube import KubeClient

__all__ = ["REQUIRED", "Permission", "describe_missing", "missing_permissions"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Permission:
    """One verb on one resource (or subresource) of one API group, in the agent's namespace."""

    verb: str
    group: str
    resource: str
    subresource: str = ""
    why: str = ""

    def __str__(self) -> str:
        resource = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        group = self.group or "core"
        return f"{self.verb} {resource} ({group})"


def _each(group: str, resource: str, verbs: str, why: str, subresource: str = "") -> tuple[Permission, ...]:
    return tuple(
        Permission(verb=verb, group=group, resource=resource, subresource=subresource, why=why)
        for verb in verbs.split()
    )


REQUIRED: tuple[Permission, ...] = (
    *_each("coordination.k8s.io", "leases", "get create update watch", "leader election"),
    *_each("apps", "deployments", "get watch", "reading the hints, live"),
    *_each("apps", "deployments", "patch", "the status annotation"),
    *_each("apps", "deployments", "get patch", "scaling", subresource="scale"),
    *_each("", "pods", "list watch", "finding the peers"),
    *_each("", "pods", "patch", "marking the idlest pods before a scale-down (pod-deletion-cost)"),
    *_each("", "events", "create", "reporting decisions"),
    *_each("", "events", "patch", "counting a repeated Event on the first one (aggregation)"),
    *_each(
        "tidescale.io",
        "agentscopes",
        "confine",
        "confinement to its own Deployment by the tidescale-agent admission policy",
    ),
)
"""Every permission the agent uses, in the agent's own namespace, and the marker rule that puts
its ServiceAccount under the tidescale-agent ValidatingAdmissionPolicy (deploy/agent-policy.yaml):
without it the agent works unconfined, so it is reported like a missing permission."""


async def missing_permissions(
    client: KubeClient, namespace: str, required: tuple[Permission, ...] = REQUIRED
) -> tuple[Permission, ...]:
    """The permissions in ``required`` that the API server says this client lacks in ``namespace``.

    Raises KubeError when the reviews themselves cannot be made (API server away).
    """
    reviews = await asyncio.gather(
        *(
            client.review_access(
                namespace=namespace,
                verb=p.verb,
                group=p.group,
                resource=p.resource,
                subresource=p.subresource,
            )
            for p in required
        )
    )
    return tuple(p for p, review in zip(required, reviews, strict=True) if not review.allowed)


def describe_missing(missing: tuple[Permission, ...], *, namespace: str, service_account: str) -> str:
    """One message for the log and the Event: what is missing, and whom to bind it to."""
    items = "; ".join(f"{p} for {p.why}" if p.why else str(p) for p in missing)
    account = service_account.rpartition(":")[2] or service_account
    return (
        f"ServiceAccount {service_account} in namespace {namespace} lacks {len(missing)} permission(s): "
        f"{items}. Bind it to the tidescale agent Role (deploy/agent-rbac.yaml, or the Helm chart's "
        f"agent RBAC) with a RoleBinding in {namespace}: kubectl create rolebinding tidescale-agent "
        f"--clusterrole=tidescale-agent --serviceaccount={namespace}:{account} -n {namespace}"
    )
