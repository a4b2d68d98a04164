"""A container's environment as the kubelet builds it: envFrom, env (with the downward API and
$(VAR) references), the kubernetes Service variables; and $(VAR) expansion in command and args."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Any

Json = dict[str, Any]

_SUFFIXES = {
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
    "Pi": Decimal(2**50), "Ei": Decimal(2**60),
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
    "P": Decimal("1e15"), "E": Decimal("1e18"),
}  # fmt: skip
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")


class EnvError(ValueError):
    """A reference in the env could not be resolved (the kubelet reports CreateContainerConfigError)."""


def quantity(text: str) -> Decimal:
    match = _QUANTITY.match(str(text).strip())
    if match is None:
        raise EnvError(f"{text!r} is not a Kubernetes quantity such as 500m, 2 or 128Mi")
    number, suffix = match.groups()
    return Decimal(number) * _SUFFIXES[suffix or ""]


def node_allocatable() -> dict[str, str]:
    """This machine's CPU and memory, as the Node advertises them and limits default to."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpu": str(os.cpu_count() or 1),
        "memory": str(memory),
        "ephemeral-storage": "100Gi",
        "pods": "110",
    }


def resource_field(container: Json, ref: Json) -> str:
    """requests.cpu, limits.memory, ...: ceil(value / divisor); an unset limit is the node's allocatable."""
    section, _, resource = ref["resource"].partition(".")
    resources = container.get("resources") or {}
    value = (resources.get(section) or {}).get(resource)
    if value is None and section == "requests":
        value = (resources.get("limits") or {}).get(resource)  # requests default to limits
    if value is None:
        value = node_allocatable()[resource] if section == "limits" else "0"
    divisor = quantity(ref.get("divisor") or "1")
    return str(math.ceil(quantity(value) / divisor))


def field_ref(pod: Json, path: str) -> str:
    metadata, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    key = re.match(r"^metadata\.(labels|annotations)\['(.+)'\]$", path)
    if key is not None:
        return str((metadata.get(key.group(1)) or {}).get(key.group(2), ""))
    simple = {
        "metadata.name": metadata.get("name"),
        "metadata.namespace": metadata.get("namespace"),
        "metadata.uid": metadata.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
        "status.podIPs": ",".join(ip["ip"] for ip in status.get("podIPs") or []),
        "status.hostIPs": ",".join(ip["ip"] for ip in status.get("hostIPs") or []),
    }
    if path == "metadata.labels":
        return "\n".join(f'{k}="{v}"' for k, v in sorted((metadata.get("labels") or {}).items()))
    if path == "metadata.annotations":
        return "\n".join(f'{k}="{v}"' for k, v in sorted((metadata.get("annotations") or {}).items()))
    if path not in simple:
        raise EnvError(f"fieldRef {path!r} is not a field the downward API offers")
    return str(simple[path] or "")


_REFERENCE = re.compile(r"\$\((\w+)\)|\$\$")


def expand(text: str, env: Mapping[str, str]) -> str:
    """$(VAR) -> its value when defined, $$ -> $, an undefined $(VAR) stays as written."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(one, text)


Fetch = Callable[[str, str], Awaitable[Json | None]]  # (kind "secrets"/"configmaps", name) -> object


def _data(obj: Json) -> dict[str, str]:
    import base64

    values: dict[str, str] = {}
    for key, value in (obj.get("data") or {}).items():
        values[key] = base64.b64decode(value).decode() if obj.get("kind") == "Secret" else value
    for key, value in (obj.get("binaryData") or {}).items():
        values[key] = base64.b64decode(value).decode(errors="replace")
    return values


async def container_env(
    pod: Json, container: Json, *, fetch: Fetch, service_host: str, service_port: int
) -> dict[str, str]:
    """The variables the container's process gets (without the base PATH/HOME the runner adds)."""
    env: dict[str, str] = {
        "HOSTNAME": pod["metadata"]["name"],
        "KUBERNETES_SERVICE_HOST": service_host,
        "KUBERNETES_SERVICE_PORT": str(service_port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(service_port),
        "KUBERNETES_PORT": f"tcp://{service_host}:{service_port}",
        "KUBERNETES_PORT_443_TCP": f"tcp://{service_host}:{service_port}",
        "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
        "KUBERNETES_PORT_443_TCP_PORT": str(service_port),
        "KUBERNETES_PORT_443_TCP_ADDR": service_host,
    }
    for source in container.get("envFrom") or []:
        kind, ref = (
            ("configmaps", source["configMapRef"])
            if "configMapRef" in source
            else ("secrets", source["secretRef"])
        )
        obj = await fetch(kind, ref["name"])
        if obj is None:
            if ref.get("optional"):
                continue
            raise EnvError(f"{kind[:-1]} {ref['name']!r} not found (envFrom)")
        for key, value in _data(obj).items():
            env[source.get("prefix", "") + key] = value
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), env)
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[name] = field_ref(pod, source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            target = container
            if ref.get("containerName"):
                everyone = [*(pod["spec"].get("initContainers") or []), *pod["spec"]["containers"]]
                target = next(c for c in everyone if c["name"] == ref["containerName"])
            env[name] = resource_field(target, ref)
        else:
            kind, ref = (
                ("configmaps", source["configMapKeyRef"])
                if "configMapKeyRef" in source
                else ("secrets", source["secretKeyRef"])
            )
            obj = await fetch(kind, ref["name"])
            values = _data(obj) if obj is not None else {}
            if ref["key"] in values:
                env[name] = values[ref["key"]]
            elif not ref.get("optional"):
                raise EnvError(f"{kind[:-1]} {ref['name']!r} key {ref['key']!r} not found (env {name})")
    return env
