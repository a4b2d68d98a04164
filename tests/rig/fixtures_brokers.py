"""Session fixtures for the brokers: ``kafka`` and ``rabbitmq``, each started on first use.

A piece the rig has not built fails the test with one line naming it and ``make rig``;
rig tests never skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rig.kafka import Kafka
from tests.rig.network import Network
from tests.rig.paths import RigNotBuilt
from tests.rig.processes import Supervisor
from tests.rig.rabbitmq import RabbitMQ


@pytest.fixture(scope="session")
def kafka(rig_supervisor: Supervisor, rig_network: Network, rig_run_dir: Path) -> Iterator[Kafka]:
    """A single-node KRaft Kafka on the node address (``kafka.bootstrap``)."""
    try:
        broker = Kafka.start(rig_supervisor, rig_network, rig_run_dir)
    except RigNotBuilt as exc:
        pytest.fail(f"Kafka cannot start: {exc}", pytrace=False)
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def rabbitmq(rig_supervisor: Supervisor, rig_network: Network, rig_run_dir: Path) -> Iterator[RabbitMQ]:
    """A RabbitMQ node of our own with the management API (``amqp_url``, ``management_url``)."""
    try:
        broker = RabbitMQ.start(rig_supervisor, rig_network, rig_run_dir)
    except RigNotBuilt as exc:
        pytest.fail(f"RabbitMQ cannot start: {exc}", pytrace=False)
    yield broker
    broker.stop()
