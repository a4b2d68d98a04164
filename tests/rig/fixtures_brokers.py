"""Session fixtures for the brokers: ``kafka``, ``rabbitmq``, ``kafka_cluster`` (three nodes,
for the broker-loss fault test), ``elasticmq`` and ``azurite``, each started on first use.

A piece the rig has not built fails the test with one line naming it and ``make rig``;
rig tests never skip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.rig.azurite import Azurite
from tests.rig.elasticmq import ElasticMQ
from tests.rig.kafka import Kafka
from tests.rig.kafka_cluster import KafkaCluster
from tests.rig.network import Network
from tests.rig.paths import (
    RigNotBuilt,
    azurite_queue_binary,
    elasticmq_classpath,
    kafka_classpath,
    rabbitmq_scripts,
)
from tests.rig.processes import Supervisor
from tests.rig.rabbitmq import RabbitMQ


def _missing(check: Callable[[], object]) -> str | None:
    """The one-line reason a piece is missing, or None; checked before anything starts."""
    try:
        check()
    except RigNotBuilt as exc:
        return str(exc)
    return None


@pytest.fixture(scope="session")
def kafka(rig_supervisor: Supervisor, rig_network: Network, rig_run_dir: Path) -> Iterator[Kafka]:
    """A single-node KRaft Kafka on the node address (``kafka.bootstrap``)."""
    missing = _missing(kafka_classpath)
    if missing:
        pytest.fail(f"Kafka cannot start: {missing}", pytrace=False)
    broker = Kafka.start(rig_supervisor, rig_network, rig_run_dir)
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def rabbitmq(rig_supervisor: Supervisor, rig_network: Network, rig_run_dir: Path) -> Iterator[RabbitMQ]:
    """A RabbitMQ node of our own with the management API (``amqp_url``, ``management_url``)."""
    missing = _missing(rabbitmq_scripts)
    if missing:
        pytest.fail(f"RabbitMQ cannot start: {missing}", pytrace=False)
    broker = RabbitMQ.start(rig_supervisor, rig_network, rig_run_dir)
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def kafka_cluster(
    rig_supervisor: Supervisor, rig_network: Network, rig_run_dir: Path
) -> Iterator[KafkaCluster]:
    """A three-node KRaft Kafka (``kafka_cluster.bootstrap`` lists all three), for the tests that
    stop a broker; only they start it."""
    missing = _missing(kafka_classpath)
    if missing:
        pytest.fail(f"the Kafka cluster cannot start: {missing}", pytrace=False)
    cluster = KafkaCluster.start(rig_supervisor, rig_network, rig_run_dir)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def elasticmq(rig_supervisor: Supervisor, rig_network: Network, rig_run_dir: Path) -> Iterator[ElasticMQ]:
    """An SQS-compatible ElasticMQ on the node address (``elasticmq.endpoint``, ``queue_url(name)``)."""
    missing = _missing(elasticmq_classpath)
    if missing:
        pytest.fail(f"ElasticMQ cannot start: {missing}", pytrace=False)
    server = ElasticMQ.start(rig_supervisor, rig_network, rig_run_dir)
    yield server
    server.process.stop()


@pytest.fixture(scope="session")
def azurite(rig_supervisor: Supervisor, rig_network: Network, rig_run_dir: Path) -> Iterator[Azurite]:
    """Azurite's Queue service on the node address (``azurite.endpoint``, the development account)."""
    missing = _missing(azurite_queue_binary)
    if missing:
        pytest.fail(f"Azurite cannot start: {missing}", pytrace=False)
    server = Azurite.start(rig_supervisor, rig_network, rig_run_dir)
    yield server
    server.process.stop()
