"""Fixtures for the rig's control plane: one per session, started on first use."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.rig.controlplane import ControlPlane
from tests.rig.network import Network
from tests.rig.paths import ControlPlaneBinaries, RigNotBuilt
from tests.rig.processes import Supervisor


def control_plane_binaries() -> ControlPlaneBinaries:
    """The control plane's binaries, or a test failure in one line saying how to build them."""
    try:
        return ControlPlaneBinaries.from_cache()
    except RigNotBuilt as exc:
        missing = str(exc)
    # Failing outside the except block keeps the report to this one line, without the chained cause.
    pytest.fail(f"the rig's control plane is not built: {missing}", pytrace=False)


@pytest.fixture(scope="session")
def control_plane_bins() -> ControlPlaneBinaries:
    """Checked before anything starts, so a missing build fails in one line and leaves nothing behind."""
    return control_plane_binaries()


@pytest.fixture(scope="session")
def control_plane(
    control_plane_bins: ControlPlaneBinaries,
    rig_supervisor: Supervisor,
    rig_network: Network,
    rig_run_dir: Path,
) -> ControlPlane:
    """etcd + kube-apiserver (RBAC, webhooks, service-account tokens) + kube-controller-manager.

    Its processes belong to the session's supervisor, which stops them at the end.
    """
    return ControlPlane.start(rig_supervisor, rig_network, rig_run_dir, binaries=control_plane_bins)


async def api_client(kubeconfig: Path) -> Any:
    """A kubernetes_asyncio ``ApiClient`` for ``kubeconfig``; the caller closes it.

    For a least-privilege test, pass ``control_plane.service_account_kubeconfig(ns, name)``.
    """
    from kubernetes_asyncio import client, config

    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return client.ApiClient(configuration)


async def admin_api_client(control_plane: ControlPlane) -> Any:
    """A kubernetes_asyncio ``ApiClient`` acting as the cluster admin; the caller closes it."""
    return await api_client(control_plane.admin_kubeconfig)


@pytest_asyncio.fixture(loop_scope="session")
async def kube_api(control_plane: ControlPlane) -> AsyncIterator[Any]:
    """A kubernetes_asyncio ``ApiClient`` for the admin kubeconfig, closed after the test."""
    api = await admin_api_client(control_plane)
    try:
        yield api
    finally:
        await api.close()
