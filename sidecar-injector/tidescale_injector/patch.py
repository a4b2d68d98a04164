"""Pure: a pod and the injector's settings in, the JSON Patch (RFC 6902) that adds the agent out.

Rules, each one tested:

- Only pods labelled ``tidescale.io/inject: "true"`` are touched (the webhook's objectSelector
  already filters; this is the second lock).
- A pod that already has a container named ``tidescale-agent`` (in ``containers`` or
  ``initContainers``) gets no operations, so reinvocation is safe.
- The agent goes in as a native sidecar (an ``initContainers`` entry with
  ``restartPolicy: Always``) when the API server supports it, else as an extra container.
- Arrays and maps the pod lacks are added whole: ``add`` to ``/spec/initContainers/-``
  on a pod without init containers would fail to apply.
- Annotation keys are JSON-Pointer escaped (``~`` -> ``~0``, ``/`` -> ``~1``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict

from tidescale_injector.config import (
    AGENT_NAME,
    Bounds,
    InjectorConfig,
    format_cpu,
    format_memory,
    parse_cpu,
    parse_memory,
)

__all__ = [
    "INJECTED_ANNOTATION",
    "INJECT_LABEL",
    "OVERRIDE_ANNOTATIONS",
    "POD_NAME_PREFIX_LIMIT",
    "SKIP_REASONS",
    "TOKEN_EXPIRY_SECONDS",
    "TOKEN_MOUNT_PATH",
    "TOKEN_VOLUME",
    "Injection",
    "PatchOp",
    "build_patch",
    "escape",
    "owning_deployment",
]

INJECT_LABEL = "tidescale.io/inject"
INJECTED_ANNOTATION = "tidescale.io/injected"
TOKEN_VOLUME = "tidescale-agent-token"  # noqa: S105 - a volume name
TOKEN_MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"  # noqa: S105 - a path
# One hour. Not 3607 s, the lifetime of the kube-api-access volumes: the API server treats
# exactly 3607 s as a legacy request it may extend to a year (--service-account-extend-token-expiration).
# The kubelet refreshes the file at 80 % of it.
TOKEN_EXPIRY_SECONDS = 3600
# The API server names a generated pod "<generateName[:58]><5 random characters>": a ReplicaSet
# name longer than this is cut, and the pod name no longer tells which Deployment it belongs to.
POD_NAME_PREFIX_LIMIT = 58
OVERRIDE_ANNOTATIONS = (
    "tidescale.io/agent-cpu-request",
    "tidescale.io/agent-cpu-limit",
    "tidescale.io/agent-memory-request",
    "tidescale.io/agent-memory-limit",
)


SKIP_REASONS: Mapping[str, str] = {
    "not-labelled": f'the pod is not labelled {INJECT_LABEL}: "true"',
    "already-injected": f"the pod already has a container named {AGENT_NAME}",
    "no-deployment": (
        "the pod has no controller ownerReference to a ReplicaSet named after a Deployment "
        "(<deployment>-<pod-template-hash>)"
    ),
    "host-network": "the pod uses the node's network (hostNetwork): its agent port would be the node's",
    "volume-conflict": f"the pod already has a volume named {TOKEN_VOLUME}",
    "malformed": "the pod's metadata, spec, containers or volumes are not what a pod has",
}
"""Why a pod gets no agent: short codes (metrics labels, logs) and what they mean."""


class PatchOp(TypedDict):
    op: Literal["add"]
    path: str
    value: NotRequired[Any]


@dataclass(frozen=True, kw_only=True, slots=True)
class Injection:
    """The patch for one pod. ``skipped`` is a :data:`SKIP_REASONS` key when nothing is injected."""

    ops: tuple[PatchOp, ...] = ()
    warnings: tuple[str, ...] = ()
    skipped: str | None = None


def escape(key: str) -> str:
    """One JSON Pointer reference token (RFC 6901): ``~`` first, then ``/``."""
    return key.replace("~", "~0").replace("/", "~1")


def owning_deployment(metadata: Mapping[str, Any]) -> str | None:
    """The Deployment that owns the pod's ReplicaSet, from names alone (no API lookup).

    A Deployment names its ReplicaSets ``<deployment>-<pod-template-hash>`` and puts the
    hash on the pods as a label; only the controller reference counts (a pod may list other
    owners, which do not run it); anything else (a bare ReplicaSet, a StatefulSet) is None.
    """
    owners = metadata.get("ownerReferences")
    labels = metadata.get("labels")
    if not isinstance(owners, list) or not isinstance(labels, Mapping):
        return None
    template_hash = labels.get("pod-template-hash")
    if not isinstance(template_hash, str) or not template_hash:
        return None
    for owner in owners:
        if not isinstance(owner, Mapping) or owner.get("controller") is not True:
            continue
        if owner.get("kind") != "ReplicaSet" or owner.get("apiVersion") != "apps/v1":
            continue
        name = owner.get("name")
        suffix = "-" + template_hash
        if isinstance(name, str) and name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _named(items: object) -> list[Mapping[str, Any]] | None:
    """A container or volume list as the API server sends it, or None when it is not one."""
    if items is None:
        return []
    if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
        return None
    return items


def _override(
    annotations: Mapping[str, Any], key: str, default: int, bounds: Bounds, parse: Any, unit: str
) -> tuple[int, str | None]:
    raw = annotations.get(key)
    if raw is None:
        return default, None
    value = parse(raw) if isinstance(raw, str) else None
    if value is None:
        return default, f"{key} is {raw!r}: expected a {unit} quantity; using the default"
    if value not in bounds:
        return default, f"{key} is {raw!r}: outside the allowed range; using the default"
    return int(value), None


def _resources(annotations: Mapping[str, Any], config: InjectorConfig) -> tuple[dict[str, Any], list[str]]:
    r = config.resources
    warnings: list[str] = []
    values: list[int] = []
    for key, default, bounds, parse, unit in (
        (OVERRIDE_ANNOTATIONS[0], r.cpu_request, r.cpu_bounds, parse_cpu, "CPU"),
        (OVERRIDE_ANNOTATIONS[1], r.cpu_limit, r.cpu_bounds, parse_cpu, "CPU"),
        (OVERRIDE_ANNOTATIONS[2], r.memory_request, r.memory_bounds, parse_memory, "memory"),
        (OVERRIDE_ANNOTATIONS[3], r.memory_limit, r.memory_bounds, parse_memory, "memory"),
    ):
        value, warning = _override(annotations, key, default, bounds, parse, unit)
        values.append(value)
        if warning:
            warnings.append(f"{warning} ({format_cpu(default) if unit == 'CPU' else format_memory(default)})")
    cpu_request, cpu_limit, memory_request, memory_limit = values
    if cpu_request > cpu_limit:
        warnings.append("the agent's CPU request exceeds its limit; using the default CPU request and limit")
        cpu_request, cpu_limit = r.cpu_request, r.cpu_limit
    if memory_request > memory_limit:
        warnings.append(
            "the agent's memory request exceeds its limit; using the default memory request and limit"
        )
        memory_request, memory_limit = r.memory_request, r.memory_limit
    return {
        "requests": {"cpu": format_cpu(cpu_request), "memory": format_memory(memory_request)},
        "limits": {"cpu": format_cpu(cpu_limit), "memory": format_memory(memory_limit)},
    }, warnings


def _field_env(name: str, field_path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": field_path}}}


def _agent_container(
    config: InjectorConfig, deployment: str, resources: dict[str, Any], *, own_token: bool
) -> dict[str, Any]:
    port = config.port
    container: dict[str, Any] = {
        "name": AGENT_NAME,
        "image": config.image,
        "imagePullPolicy": config.image_pull_policy,
        "args": ["agent"],
        "env": [
            _field_env("POD_NAME", "metadata.name"),
            _field_env("POD_NAMESPACE", "metadata.namespace"),
            _field_env("POD_IP", "status.podIP"),
            {"name": "TIDESCALE_DEPLOYMENT", "value": deployment},
            {"name": "TIDESCALE_PORT", "value": str(port)},
            # The chart's logLevel (and log format) reach the agent through the injector's own env.
            {"name": "TIDESCALE_LOG_LEVEL", "value": config.log_level},
            *([{"name": "TIDESCALE_LOG_FORMAT", "value": config.log_format}] if config.log_format else []),
        ],
        "ports": [{"name": "tidescale", "containerPort": port, "protocol": "TCP"}],
        "resources": resources,
        # No startupProbe: a native sidecar's startup probe gates the workload's start, and
        # the agent must never hold the workload back. /readyz and /healthz answer from the
        # agent's own process state only (never the broker's or the API server's), so an
        # outage elsewhere cannot un-ready the pod or restart the agent.
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": port, "scheme": "HTTP"},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": port, "scheme": "HTTP"},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if config.native_sidecars:
        container["restartPolicy"] = "Always"
    if own_token:
        container["volumeMounts"] = [{"name": TOKEN_VOLUME, "mountPath": TOKEN_MOUNT_PATH, "readOnly": True}]
    return container


def _token_volume() -> dict[str, Any]:
    return {
        "name": TOKEN_VOLUME,
        "projected": {
            "defaultMode": 0o444,
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": TOKEN_EXPIRY_SECONDS}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {
                    "downwardAPI": {
                        "items": [
                            {
                                "path": "namespace",
                                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                            }
                        ]
                    }
                },
            ],
        },
    }


def _append(ops: list[PatchOp], path: str, current: Sequence[Any], item: Any) -> None:
    if current:
        ops.append({"op": "add", "path": f"{path}/-", "value": item})
    else:
        # Absent, null or empty: add the whole array (an append to a missing array fails).
        ops.append({"op": "add", "path": path, "value": [item]})


def _uses_port(containers: Sequence[Mapping[str, Any]], port: int) -> bool:
    for container in containers:
        ports = container.get("ports")
        if isinstance(ports, list) and any(
            isinstance(p, Mapping) and p.get("containerPort") == port for p in ports
        ):
            return True
    return False


def build_patch(pod: object, config: InjectorConfig) -> Injection:
    """The JSON Patch that injects the agent into ``pod``, or why it does not."""
    if not isinstance(pod, Mapping):
        return Injection(skipped="malformed")
    metadata = pod.get("metadata")
    spec = pod.get("spec")
    if metadata is not None and not isinstance(metadata, Mapping):
        return Injection(skipped="malformed")
    metadata = metadata or {}
    labels = metadata.get("labels")
    if not isinstance(labels, Mapping) or labels.get(INJECT_LABEL) != "true":
        return Injection(skipped="not-labelled")
    if not isinstance(spec, Mapping):
        return Injection(skipped="malformed")
    containers = _named(spec.get("containers"))
    init_containers = _named(spec.get("initContainers"))
    volumes = _named(spec.get("volumes"))
    if containers is None or init_containers is None or volumes is None or not containers:
        return Injection(skipped="malformed")
    if any(c.get("name") == AGENT_NAME for c in [*containers, *init_containers]):
        return Injection(skipped="already-injected")
    if spec.get("hostNetwork") is True:
        return Injection(skipped="host-network")
    deployment = owning_deployment(metadata)
    if deployment is None:
        return Injection(skipped="no-deployment")
    annotations = metadata.get("annotations")
    if annotations is not None and not isinstance(annotations, Mapping):
        return Injection(skipped="malformed")
    annotations = annotations or {}

    resources, warnings = _resources(annotations, config)
    template_hash = str(labels.get("pod-template-hash", ""))
    if len(f"{deployment}-{template_hash}-") > POD_NAME_PREFIX_LIMIT:
        warnings.append(
            f"the Deployment name {deployment!r} is too long for its pods' names to carry it "
            f"(at most {POD_NAME_PREFIX_LIMIT - len(template_hash) - 2} characters with this template hash): "
            "the tidescale-agent admission policy will refuse this agent's scale writes"
        )
    if _uses_port([*containers, *init_containers], config.port):
        warnings.append(f"a container of this pod already uses port {config.port}, the agent's port")
    own_token = spec.get("automountServiceAccountToken") is False
    if own_token and any(v.get("name") == TOKEN_VOLUME for v in volumes):
        return Injection(skipped="volume-conflict")

    ops: list[PatchOp] = []
    if not pod.get("metadata"):
        ops.append(
            {
                "op": "add",
                "path": "/metadata",
                "value": {"annotations": {INJECTED_ANNOTATION: config.version}},
            }
        )
    elif not metadata.get("annotations"):
        ops.append(
            {"op": "add", "path": "/metadata/annotations", "value": {INJECTED_ANNOTATION: config.version}}
        )
    else:
        ops.append(
            {
                "op": "add",
                "path": f"/metadata/annotations/{escape(INJECTED_ANNOTATION)}",
                "value": config.version,
            }
        )
    if own_token:
        _append(ops, "/spec/volumes", volumes, _token_volume())
    agent = _agent_container(config, deployment, resources, own_token=own_token)
    if config.native_sidecars:
        _append(ops, "/spec/initContainers", init_containers, agent)
    else:
        _append(ops, "/spec/containers", containers, agent)
    return Injection(ops=tuple(ops), warnings=tuple(warnings))
