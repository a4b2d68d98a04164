"""Where the rig's built pieces are cached and where a run keeps its files."""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

BUILD_DIR = Path(__file__).resolve().parent / "build"
REPO_ROOT = Path(__file__).resolve().parents[2]


def _versions() -> dict[str, str]:
    pairs: dict[str, str] = {}
    for line in (BUILD_DIR / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


VERSIONS = _versions()

# Set by `make test-k8s-oldest` to KUBERNETES_OLDEST_VERSION: the whole rig (build.sh and the
# control plane) then runs that Kubernetes instead of KUBERNETES_VERSION.
KUBERNETES_VERSION_ENV = "TIDESCALE_RIG_KUBERNETES_VERSION"
_KUBERNETES_VERSION = re.compile(r"v1\.(\d+)\.(\d+)")


class RigVersionError(ValueError):
    """A Kubernetes version the rig cannot run (not of the form v1.<minor>.<patch>)."""


def kubernetes_version() -> str:
    """The Kubernetes the rig runs: $TIDESCALE_RIG_KUBERNETES_VERSION, else versions.env's
    KUBERNETES_VERSION."""
    version = os.environ.get(KUBERNETES_VERSION_ENV) or VERSIONS["KUBERNETES_VERSION"]
    kubernetes_minor(version)
    return version


def kubernetes_minor(version: str) -> int:
    """30 for "v1.30.14"."""
    matched = _KUBERNETES_VERSION.fullmatch(version)
    if matched is None:
        raise RigVersionError(
            f"Kubernetes version {version!r} (${KUBERNETES_VERSION_ENV} or versions.env) is not of the "
            "form v1.<minor>.<patch>, like v1.30.14"
        )
    return int(matched.group(1))


def cache_dir() -> Path:
    return Path(os.environ.get("TIDESCALE_RIG_CACHE", Path.home() / ".cache" / "tidescale-rig"))


class RigNotBuilt(RuntimeError):
    """A piece of the rig is not in the cache: run ``make rig`` (tests/rig/build/build.sh)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kubectl: Path
    helm: Path
    kafka_classpath: str
    kubernetes_version: str

    @classmethod
    def from_cache(cls) -> Binaries:
        root = cache_dir()
        version = kubernetes_version()
        k8s = root / f"kubernetes-{version}" / "bin"
        found = cls(
            etcd=root / f"etcd-{VERSIONS['ETCD_VERSION']}" / "bin" / "etcd",
            kube_apiserver=k8s / "kube-apiserver",
            kube_controller_manager=k8s / "kube-controller-manager",
            kubectl=k8s / "kubectl",
            helm=root / f"helm-{VERSIONS['HELM_VERSION']}" / "bin" / "helm",
            kafka_classpath=_read_classpath(root),
            kubernetes_version=version,
        )
        for path in (
            found.etcd,
            found.kube_apiserver,
            found.kube_controller_manager,
            found.kubectl,
            found.helm,
        ):
            if not path.is_file():
                raise RigNotBuilt(f"{path} is missing: {_build_hint(version)}")
        return found


@dataclass(frozen=True, kw_only=True, slots=True)
class ControlPlaneBinaries:
    """Only what the control plane runs: a test of the API server needs neither helm nor Kafka."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kubectl: Path
    kubernetes_version: str  # what the binaries were built as: the flags they take depend on it

    @classmethod
    def from_cache(cls) -> ControlPlaneBinaries:
        root = cache_dir()
        version = kubernetes_version()
        k8s = root / f"kubernetes-{version}" / "bin"
        found = cls(
            etcd=root / f"etcd-{VERSIONS['ETCD_VERSION']}" / "bin" / "etcd",
            kube_apiserver=k8s / "kube-apiserver",
            kube_controller_manager=k8s / "kube-controller-manager",
            kubectl=k8s / "kubectl",
            kubernetes_version=version,
        )
        for path in (found.etcd, found.kube_apiserver, found.kube_controller_manager, found.kubectl):
            if not path.is_file():
                raise RigNotBuilt(f"{path} is missing: {_build_hint(version)}")
        return found


def _build_hint(version: str) -> str:
    if version == VERSIONS["KUBERNETES_VERSION"]:
        return "run `make rig` (tests/rig/build/build.sh) first"
    return f"run `{KUBERNETES_VERSION_ENV}={version} tests/rig/build/build.sh all` first"


def _read_classpath(root: Path) -> str:
    path = root / f"kafka-{VERSIONS['SCALA_VERSION']}-{VERSIONS['KAFKA_VERSION']}" / "classpath"
    if not path.is_file():
        raise RigNotBuilt(f"{path} is missing: run `make rig` (tests/rig/build/build.sh) first")
    return path.read_text().strip()


def new_run_dir() -> Path:
    """A fresh folder for one run's logs, certificates and data (kept after the run for reading)."""
    base = Path(os.environ.get("TIDESCALE_RIG_RUNS", REPO_ROOT / ".rig-runs"))
    run = base / time.strftime("%Y%m%d-%H%M%S")
    suffix = 0
    while run.exists():
        suffix += 1
        run = base / f"{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"
    run.mkdir(parents=True)
    return run


_MAKE_RIG = "run `make rig` (tests/rig/build/build.sh) first"
RABBITMQ_SCRIPTS = Path("/usr/lib/rabbitmq/bin")


def kafka_classpath() -> str:
    """The Kafka jars' classpath, with a Java runtime to run them; only what a Kafka test needs."""
    if shutil.which("java") is None:
        raise RigNotBuilt(
            "java is missing: install Java 17+ (Debian: apt-get install openjdk-17-jre-headless), "
            f"then {_MAKE_RIG}"
        )
    return _read_classpath(cache_dir())


def helm_binary() -> Path:
    path = cache_dir() / f"helm-{VERSIONS['HELM_VERSION']}" / "bin" / "helm"
    if not path.is_file():
        raise RigNotBuilt(f"{path} is missing: {_MAKE_RIG}")
    return path


def rabbitmq_scripts() -> Path:
    """Debian's RabbitMQ scripts folder (rabbitmq-server, rabbitmqctl), run directly, not via su."""
    for name in ("rabbitmq-server", "rabbitmqctl"):
        if not (RABBITMQ_SCRIPTS / name).is_file():
            raise RigNotBuilt(f"{RABBITMQ_SCRIPTS / name} is missing (Debian's rabbitmq-server): {_MAKE_RIG}")
    if shutil.which("epmd") is None:
        raise RigNotBuilt(f"epmd is missing (Debian's erlang-base): {_MAKE_RIG}")
    return RABBITMQ_SCRIPTS


def elasticmq_classpath() -> str:
    """ElasticMQ's jars' classpath, with a Java runtime to run them."""
    if shutil.which("java") is None:
        raise RigNotBuilt(
            "java is missing: install Java 17+ (Debian: apt-get install openjdk-17-jre-headless), "
            f"then {_MAKE_RIG}"
        )
    path = cache_dir() / f"elasticmq-{VERSIONS['ELASTICMQ_VERSION']}" / "classpath"
    if not path.is_file():
        raise RigNotBuilt(f"{path} is missing (ElasticMQ, from Maven Central): {_MAKE_RIG}")
    return path.read_text().strip()


def azurite_queue_binary() -> Path:
    """Azurite's queue service (npm package azurite), with a Node.js runtime to run it."""
    if shutil.which("node") is None:
        raise RigNotBuilt(
            f"node is missing: install Node.js 18+ (Debian: apt-get install nodejs), then {_MAKE_RIG}"
        )
    path = cache_dir() / f"azurite-{VERSIONS['AZURITE_VERSION']}" / "node_modules" / ".bin" / "azurite-queue"
    if not path.is_file():
        raise RigNotBuilt(f"{path} is missing (npm package azurite): {_MAKE_RIG}")
    return path
