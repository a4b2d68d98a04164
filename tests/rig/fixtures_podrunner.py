"""The pod runner fixture: the rig's stand-in for the kubelet, one per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rig.controlplane import ControlPlane
from tests.rig.network import Network
from tests.rig.podrunner import PodRunner


@pytest.fixture(scope="session")
def pod_runner(control_plane: ControlPlane, rig_network: Network, rig_run_dir: Path) -> Iterator[PodRunner]:
    """Registers Node ``rig-node`` and runs the pods bound to it; at the end stops every one of them."""
    runner = PodRunner(
        kubeconfig=control_plane.admin_kubeconfig,
        server=control_plane.server,
        network=rig_network,
        run_dir=rig_run_dir,
    ).start()
    try:
        yield runner
    finally:
        runner.stop()
