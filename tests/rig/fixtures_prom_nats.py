"""Session fixtures for the metrics-style sources: ``prometheus`` and ``nats``, each started on
first use. A piece the rig has not built fails the test with one line naming it and ``make rig``;
rig tests never skip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rig.nats import NatsServer, nats_server_binary
from tests.rig.network import Network
from tests.rig.paths import RigNotBuilt
from tests.rig.processes import Supervisor
from tests.rig.prometheus import Prometheus, prometheus_binaries


@pytest.fixture(scope="session")
def prometheus(rig_supervisor: Supervisor, rig_network: Network, rig_run_dir: Path) -> Iterator[Prometheus]:
    """Debian's Prometheus on the node address behind basic auth, scraping ``prometheus.exporter``."""
    try:
        prometheus_binaries()
    except RigNotBuilt as exc:
        pytest.fail(f"Prometheus cannot start: {exc}", pytrace=False)
    server = Prometheus.start(rig_supervisor, rig_network, rig_run_dir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats(rig_supervisor: Supervisor, rig_network: Network, rig_run_dir: Path) -> Iterator[NatsServer]:
    """nats-server with JetStream and its monitoring endpoint on the node address."""
    try:
        nats_server_binary()
    except RigNotBuilt as exc:
        pytest.fail(f"NATS cannot start: {exc}", pytrace=False)
    server = NatsServer.start(rig_supervisor, rig_network, rig_run_dir)
    yield server
    server.stop()
