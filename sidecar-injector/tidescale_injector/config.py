"""The injector's settings: what to inject (agent image, port, resources) and how to serve.

Everything comes from flags, each with an environment variable as its default so
the Helm chart can set either. Resource quantities are parsed here once, so the
patch builder works on checked numbers.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Literal

__all__ = [
    "AGENT_NAME",
    "DEFAULT_AGENT_PORT",
    "Bounds",
    "InjectorConfig",
    "Resources",
    "ServerSettings",
    "SidecarMode",
    "format_cpu",
    "format_memory",
    "parse_cpu",
    "parse_memory",
    "parse_settings",
    "version",
]

AGENT_NAME = "tidescale-agent"
DEFAULT_AGENT_PORT = 9464
SidecarMode = Literal["auto", "true", "false"]

_QUANTITY = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?P<suffix>m|k|M|G|T|Ki|Mi|Gi|Ti)?")
_SUFFIX = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
}


def version() -> str:
    """The installed tidescale version, written into the pod annotation ``tidescale.io/injected``."""
    try:
        return importlib.metadata.version("tidescale")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def _quantity(text: str) -> Decimal | None:
    match = _QUANTITY.fullmatch(text.strip())
    if match is None:
        return None
    try:
        return Decimal(match["number"]) * _SUFFIX[match["suffix"] or ""]
    except InvalidOperation:
        return None


def parse_cpu(text: str) -> int | None:
    """A Kubernetes CPU quantity ("10m", "0.5", "1") in millicores, rounded up; None if unparsable."""
    value = _quantity(text)
    if value is None or value <= 0:
        return None
    return math.ceil(value * 1000)


def parse_memory(text: str) -> int | None:
    """A Kubernetes memory quantity ("48Mi", "100M", "1Gi") in bytes, rounded up; None if unparsable."""
    value = _quantity(text)
    if value is None or value < 1:
        return None
    return math.ceil(value)


def format_cpu(millicores: int) -> str:
    return f"{millicores // 1000}" if millicores % 1000 == 0 else f"{millicores}m"


def format_memory(size: int) -> str:
    for suffix, unit in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


@dataclass(frozen=True, kw_only=True, slots=True)
class Bounds:
    """Inclusive range a per-pod override must fall in (millicores for CPU, bytes for memory)."""

    minimum: int
    maximum: int

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and self.minimum <= value <= self.maximum


@dataclass(frozen=True, kw_only=True, slots=True)
class Resources:
    """The agent's requests and limits, and the bounds on per-pod overrides.

    Defaults: the agent idles at a few millicores and targets 40 MiB RSS; the CPU limit
    leaves room for the interpreter's start-up, the memory limit for a broker client's
    buffers during a rebalance.
    """

    cpu_request: int = 10
    cpu_limit: int = 200
    memory_request: int = 48 * 2**20
    memory_limit: int = 128 * 2**20
    cpu_bounds: Bounds = field(default_factory=lambda: Bounds(minimum=1, maximum=2000))
    memory_bounds: Bounds = field(default_factory=lambda: Bounds(minimum=32 * 2**20, maximum=2**30))


@dataclass(frozen=True, kw_only=True, slots=True)
class InjectorConfig:
    """What the mutating webhook injects and where it refuses to."""

    image: str
    image_pull_policy: str = "IfNotPresent"
    port: int = DEFAULT_AGENT_PORT
    native_sidecars: bool = True
    strict: bool = False
    resources: Resources = field(default_factory=Resources)
    excluded_namespaces: frozenset[str] = frozenset({"kube-system"})
    version: str = field(default_factory=version)
    log_level: str = "info"
    """Passed on to the agent (TIDESCALE_LOG_LEVEL): the chart's ``logLevel`` covers all three components."""
    log_format: str = ""
    """Passed on to the agent (TIDESCALE_LOG_FORMAT) when set; the agent's default is json."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerSettings:
    """How the webhook server listens and where its certificate lives."""

    host: str = "0.0.0.0"  # noqa: S104 - the webhook is reached through its Service
    port: int = 8443
    cert_file: Path = Path("/etc/tidescale/tls/tls.crt")
    key_file: Path = Path("/etc/tidescale/tls/tls.key")
    cert_reload_interval: float = 5.0
    sidecar_mode: SidecarMode = "auto"
    kubeconfig: Path | None = None
    max_body_bytes: int = 8 * 2**20
    max_inflight_body_bytes: int = 24 * 2**20
    agent_cluster_role: str = "tidescale-agent"
    """The agent's ClusterRole, named in the warning that tells a team how to bind it."""


def _env(environ: Mapping[str, str], name: str, default: str) -> str:
    return environ.get(name) or default


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _cpu_arg(text: str) -> int:
    value = parse_cpu(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"expected a CPU quantity like 10m or 0.5, got {text!r}")
    return value


def _memory_arg(text: str) -> int:
    value = parse_memory(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"expected a memory quantity like 48Mi, got {text!r}")
    return value


def _build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    e = environ
    p = argparse.ArgumentParser(
        prog="tidescale injector",
        description="Admission webhooks: inject the agent into opted-in pods, check Deployment hints.",
    )
    p.add_argument("--listen", default=_env(e, "TIDESCALE_INJECTOR_LISTEN", "0.0.0.0:8443"), help="host:port")
    p.add_argument(
        "--tls-cert-file", default=_env(e, "TIDESCALE_INJECTOR_TLS_CERT_FILE", "/etc/tidescale/tls/tls.crt")
    )
    p.add_argument(
        "--tls-key-file", default=_env(e, "TIDESCALE_INJECTOR_TLS_KEY_FILE", "/etc/tidescale/tls/tls.key")
    )
    p.add_argument(
        "--cert-reload-interval",
        type=float,
        default=float(_env(e, "TIDESCALE_INJECTOR_CERT_RELOAD_INTERVAL", "5")),
        help="seconds between checks of the certificate files",
    )
    p.add_argument(
        "--kubeconfig", default=e.get("KUBECONFIG"), help="for version detection; default in-cluster"
    )
    p.add_argument("--agent-image", default=_env(e, "TIDESCALE_AGENT_IMAGE", f"tidescale:{version()}"))
    p.add_argument(
        "--agent-cluster-role",
        default=_env(e, "TIDESCALE_AGENT_CLUSTER_ROLE", "tidescale-agent"),
        help="the agent's ClusterRole, named in the missing-binding warning",
    )
    p.add_argument(
        "--agent-image-pull-policy", default=_env(e, "TIDESCALE_AGENT_IMAGE_PULL_POLICY", "IfNotPresent")
    )
    p.add_argument(
        "--agent-port", type=int, default=int(_env(e, "TIDESCALE_AGENT_PORT", str(DEFAULT_AGENT_PORT)))
    )
    p.add_argument(
        "--native-sidecars",
        choices=("auto", "true", "false"),
        default=_env(e, "TIDESCALE_INJECTOR_NATIVE_SIDECARS", "auto"),
        help="auto: native sidecars when the API server is 1.29 or newer",
    )
    p.add_argument(
        "--strict",
        type=_bool,
        default=_bool(_env(e, "TIDESCALE_INJECTOR_STRICT", "false")),
        help="deny Deployments with bad hints instead of warning",
    )
    p.add_argument(
        "--exclude-namespaces",
        default=_env(e, "TIDESCALE_INJECTOR_EXCLUDE_NAMESPACES", "kube-system"),
        help="comma-separated; the injector's own namespace (POD_NAMESPACE) is always added",
    )
    defaults = Resources()
    for name, kind, default in (
        ("cpu-request", _cpu_arg, format_cpu(defaults.cpu_request)),
        ("cpu-limit", _cpu_arg, format_cpu(defaults.cpu_limit)),
        ("memory-request", _memory_arg, format_memory(defaults.memory_request)),
        ("memory-limit", _memory_arg, format_memory(defaults.memory_limit)),
        ("cpu-min", _cpu_arg, format_cpu(defaults.cpu_bounds.minimum)),
        ("cpu-max", _cpu_arg, format_cpu(defaults.cpu_bounds.maximum)),
        ("memory-min", _memory_arg, format_memory(defaults.memory_bounds.minimum)),
        ("memory-max", _memory_arg, format_memory(defaults.memory_bounds.maximum)),
    ):
        env_name = "TIDESCALE_AGENT_" + name.upper().replace("-", "_")
        p.add_argument(f"--agent-{name}", type=kind, default=kind(_env(e, env_name, default)))
    return p


def parse_settings(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[ServerSettings, InjectorConfig]:
    """Flags over environment over defaults. Exits with status 2 and a usage message on bad input."""
    parser = _build_parser(environ)
    args = parser.parse_args(list(argv))
    host, sep, port_text = str(args.listen).rpartition(":")
    if not sep or not port_text.isdigit():
        parser.error(f"--listen expects host:port, got {args.listen!r}")
    resources = Resources(
        cpu_request=args.agent_cpu_request,
        cpu_limit=args.agent_cpu_limit,
        memory_request=args.agent_memory_request,
        memory_limit=args.agent_memory_limit,
        cpu_bounds=Bounds(minimum=args.agent_cpu_min, maximum=args.agent_cpu_max),
        memory_bounds=Bounds(minimum=args.agent_memory_min, maximum=args.agent_memory_max),
    )
    if resources.cpu_request > resources.cpu_limit or resources.memory_request > resources.memory_limit:
        parser.error("the agent's default requests must not exceed its default limits")
    excluded = {ns.strip() for ns in str(args.exclude_namespaces).split(",") if ns.strip()}
    if environ.get("POD_NAMESPACE"):
        excluded.add(environ["POD_NAMESPACE"])
    settings = ServerSettings(
        host=host.strip("[]") or "0.0.0.0",  # noqa: S104
        port=int(port_text),
        cert_file=Path(args.tls_cert_file),
        key_file=Path(args.tls_key_file),
        cert_reload_interval=max(0.2, float(args.cert_reload_interval)),
        sidecar_mode=args.native_sidecars,
        kubeconfig=Path(args.kubeconfig) if args.kubeconfig else None,
        agent_cluster_role=str(args.agent_cluster_role),
    )
    config = InjectorConfig(
        image=args.agent_image,
        image_pull_policy=args.agent_image_pull_policy,
        port=args.agent_port,
        native_sidecars=args.native_sidecars != "false",
        strict=args.strict,
        resources=resources,
        excluded_namespaces=frozenset(excluded),
        log_level=(environ.get("TIDESCALE_LOG_LEVEL") or "info").strip().lower(),
        log_format=(environ.get("TIDESCALE_LOG_FORMAT") or "").strip().lower(),
    )
    return settings, config
