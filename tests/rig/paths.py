"""Where the rig's built pieces are cached and where a run keeps its files."""

from __future__ import annotations

import os
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

    @classmethod
    def from_cache(cls) -> Binaries:
        root = cache_dir()
        k8s = root / f"kubernetes-{VERSIONS['KUBERNETES_VERSION']}" / "bin"
        found = cls(
            etcd=root / f"etcd-{VERSIONS['ETCD_VERSION']}" / "bin" / "etcd",
            kube_apiserver=k8s / "kube-apiserver",
            kube_controller_manager=k8s / "kube-controller-manager",
            kubectl=k8s / "kubectl",
            helm=root / f"helm-{VERSIONS['HELM_VERSION']}" / "bin" / "helm",
            kafka_classpath=_read_classpath(root),
        )
        for path in (
            found.etcd,
            found.kube_apiserver,
            found.kube_controller_manager,
            found.kubectl,
            found.helm,
        ):
            if not path.is_file():
                raise RigNotBuilt(f"{path} is missing: run `make rig` (tests/rig/build/build.sh) first")
        return found


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
