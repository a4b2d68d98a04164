"""Session fixtures for the data stores the sources measure: ``redis`` and ``postgresql``, each
started on first use, on the rig's bridge address.

A piece the rig has not installed fails the test with one line naming it and how to get it; rig
tests never skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rig.network import Network
from tests.rig.paths import RigNotBuilt
from tests.rig.postgresql import PostgreSQL, postgresql_bin
from tests.rig.processes import Supervisor
from tests.rig.redis import Redis, redis_binaries


@pytest.fixture(scope="session")
def redis(rig_supervisor: Supervisor, rig_network: Network, rig_run_dir: Path) -> Iterator[Redis]:
    """A redis-server of our own with a password (``redis.address``, ``redis.password``)."""
    try:
        redis_binaries()
    except RigNotBuilt as exc:
        pytest.fail(f"Redis cannot start: {exc}", pytrace=False)
    server = Redis.start(rig_supervisor, rig_network, rig_run_dir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgresql(rig_supervisor: Supervisor, rig_network: Network, rig_run_dir: Path) -> Iterator[PostgreSQL]:
    """A PostgreSQL cluster of our own: database ``app``, table ``jobs``, read-only role ``reader``."""
    try:
        postgresql_bin()
    except RigNotBuilt as exc:
        pytest.fail(f"PostgreSQL cannot start: {exc}", pytrace=False)
    server = PostgreSQL.start(rig_supervisor, rig_network, rig_run_dir)
    yield server
    server.stop()
