"""The rig's helm, pointed at the rig's API server, with config and cache folders of its own
(so it never reads or writes the machine user's ~/.config/helm)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.rig.controlplane import ControlPlane
from tests.rig.paths import REPO_ROOT, helm_binary

CHART = REPO_ROOT / "charts" / "tidescale"


class HelmError(RuntimeError):
    """helm exited non-zero; the message carries its output."""


class Helm:
    def __init__(self, plane: ControlPlane, home: Path) -> None:
        self._binary = helm_binary()
        self._env = {
            **os.environ,
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_DATA_HOME": str(home / "data"),
            "KUBECONFIG": str(plane.admin_kubeconfig),
        }

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self._binary), *args],
            capture_output=True,
            text=True,
            env=self._env,
            stdin=subprocess.DEVNULL,
            timeout=300,
            check=False,
        )
        if check and result.returncode != 0:
            raise HelmError(
                f"helm {' '.join(args)} failed ({result.returncode}): {result.stdout}{result.stderr}"
            )
        return result
