"""A three-node Apache Kafka cluster (KRaft) for the fault tests that stop a broker.

Built like the single-node rig broker (:mod:`tests.rig.kafka`: the same cached Kafka, the same
tools, clients on the node address, controller listeners on loopback), but three processes,
each broker and controller, with a static quorum of three voters: one node can die and the
other two keep a quorum, elect partition leaders and the group coordinator anew. Only the tests
that take the ``kafka_cluster`` fixture start it (three JVMs cost memory and seconds).

Settings chosen for a test of a lost broker:

- ``broker.session.timeout.ms=4000`` (default 9 s), heartbeats every 500 ms: a killed broker is
  fenced, and its partitions get new leaders, about 4 s after its death;
- every internal topic has three replicas (``__consumer_offsets`` one partition, so every group's
  coordinator is the same broker: a test can choose to kill it);
- ``auto.leader.rebalance.enable=false``: a restarted broker does not take its leaderships back,
  so what a test sees after the restart is what the failover made.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.rig.kafka import (
    _LOG4J,
    _LOG4J2,
    TOOL_JVM,
    GroupRow,
    KafkaToolError,
    _java,
    _kafka_uuid,
    _run_in_own_loop,
    parse_group_table,
)
from tests.rig.network import Network
from tests.rig.paths import kafka_classpath
from tests.rig.processes import Managed, RigStartError, Supervisor, free_port, port_open, run_tool, wait_until

NODE_IDS = (1, 2, 3)
# Three brokers on two shared cores: a smaller heap than the single node's.
CLUSTER_BROKER_JVM = ("-Xms96m", "-Xmx384m", "-XX:+UseSerialGC", "-Djava.awt.headless=true")


@dataclass(kw_only=True, slots=True)
class ClusterNode:
    """One node of the cluster: broker and controller in one process."""

    node_id: int
    port: int
    controller_port: int
    directory: Path
    process: Managed | None = None


@dataclass(kw_only=True, slots=True)
class KafkaCluster:
    """A running three-node cluster started by :meth:`start`; stopped with the supervisor."""

    host: str
    cluster_id: str
    classpath: str
    directory: Path
    nodes: dict[int, ClusterNode] = field(default_factory=dict)
    start_seconds: float = 0.0
    """From launch to three brokers that answer metadata requests."""

    @property
    def bootstrap(self) -> str:
        """Every broker's client listener, comma-separated (what a client is given)."""
        return ",".join(f"{self.host}:{node.port}" for node in self.nodes.values())

    def live_bootstrap(self) -> str:
        """The client listeners of the brokers running now (for the rig's own tools)."""
        return ",".join(
            f"{self.host}:{node.port}"
            for node in self.nodes.values()
            if node.process is not None and node.process.alive()
        )

    def address_of(self, node_id: int) -> str:
        return f"{self.host}:{self.nodes[node_id].port}"

    @classmethod
    def start(
        cls, supervisor: Supervisor, network: Network, run_dir: Path, *, timeout: float = 180.0
    ) -> KafkaCluster:
        began = time.monotonic()
        host = network.node_address
        directory = run_dir / "kafka-cluster"
        cluster = cls(host=host, cluster_id=_kafka_uuid(), classpath=kafka_classpath(), directory=directory)
        for node_id in NODE_IDS:
            node_dir = directory / f"node-{node_id}"
            node_dir.mkdir(parents=True, exist_ok=True)
            cluster.nodes[node_id] = ClusterNode(
                node_id=node_id,
                port=free_port(host),
                controller_port=free_port("127.0.0.1"),
                directory=node_dir,
            )
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in cluster.nodes.values())
        for node in cluster.nodes.values():
            (node.directory / "server.properties").write_text(_node_properties(host, node, voters))
            for level in ("INFO", "WARN"):
                (node.directory / f"log4j-{level}.properties").write_text(_LOG4J.format(level=level))
                (node.directory / f"log4j2-{level}.properties").write_text(
                    _LOG4J2.format(level=level.lower())
                )
        # Formatting is a JVM each: run the three side by side.
        formats = [
            (node, cluster._format(node, run_dir / "logs" / f"kafka-cluster-{node.node_id}-format.log"))
            for node in cluster.nodes.values()
        ]
        for node, formatting in formats:
            if formatting.wait(timeout=timeout) != 0:
                log = run_dir / "logs" / f"kafka-cluster-{node.node_id}-format.log"
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
                raise RigStartError(f"kafka cluster node {node.node_id}: storage format failed:\n{tail}")
        for node in cluster.nodes.values():
            cluster._launch(supervisor, node)
        while cluster._brokers_seen() != set(NODE_IDS):
            for node in cluster.nodes.values():
                assert node.process is not None
                if not node.process.alive():
                    raise RigStartError(
                        f"kafka cluster node {node.node_id} exited ({node.process.popen.returncode}) "
                        f"before the cluster formed:\n{node.process.log_tail()}"
                    )
            if time.monotonic() - began > timeout:
                raise RigStartError(f"timed out after {timeout:.0f}s waiting for three kafka brokers")
            time.sleep(0.5)
        cluster.start_seconds = time.monotonic() - began
        return cluster

    def _format(self, node: ClusterNode, log: Path) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            return subprocess.Popen(
                [
                    *_java(self.classpath, node.directory, "WARN", TOOL_JVM),
                    "kafka.tools.StorageTool",
                    "format",
                    f"--cluster-id={self.cluster_id}",
                    "--config",
                    str(node.directory / "server.properties"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def _launch(self, supervisor: Supervisor, node: ClusterNode) -> None:
        node.process = supervisor.start(
            f"kafka-cluster-{node.node_id}",
            [
                *_java(self.classpath, node.directory, "INFO", CLUSTER_BROKER_JVM),
                "kafka.Kafka",
                str(node.directory / "server.properties"),
            ],
            cwd=node.directory,
        )

    def _brokers_seen(self) -> set[int]:
        """The broker ids the cluster's metadata lists (empty while no broker answers)."""
        bootstrap = self.live_bootstrap()
        if not bootstrap:
            return set()

        async def describe() -> set[int]:
            from aiokafka.admin import AIOKafkaAdminClient

            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
            await admin.start()
            try:
                cluster = await admin.describe_cluster()
            finally:
                await admin.close()
            return {int(broker["node_id"]) for broker in cluster["brokers"]}

        try:
            return _run_in_own_loop(describe)
        except Exception:  # not up yet: the caller polls
            return set()

    def kill(self, node_id: int) -> None:
        """SIGKILL to one node (broker and controller): no clean shutdown, no leadership handed on."""
        node = self.nodes[node_id]
        if node.process is None or not node.process.alive():
            raise KafkaToolError(f"kafka cluster node {node_id} is not running")
        os.killpg(node.process.pid, signal.SIGKILL)
        node.process.popen.wait(timeout=10)

    def start_again(self, supervisor: Supervisor, node_id: int, *, timeout: float = 120.0) -> None:
        """After :meth:`kill`: the same node (port, data, cluster id); returns once the cluster's
        metadata lists it again."""
        node = self.nodes[node_id]
        if node.process is not None and node.process.alive():
            raise KafkaToolError(f"kafka cluster node {node_id} (pid {node.process.pid}) is still running")
        self._launch(supervisor, node)
        wait_until(
            f"kafka cluster node {node_id} back in the metadata",
            lambda: node_id in self._brokers_seen() and port_open(self.host, node.port),
            timeout=timeout,
            process=node.process,
            interval=0.5,
        )

    def brokers_seen(self) -> set[int]:
        """The broker ids the metadata lists now (a killed broker leaves once it is fenced)."""
        return self._brokers_seen()

    def create_topic(self, name: str, partitions: int, *, replication_factor: int = 3) -> None:
        """Creates ``name`` and returns once every partition has a leader and every replica in sync."""

        async def create() -> None:
            from aiokafka.admin import AIOKafkaAdminClient, NewTopic

            admin = AIOKafkaAdminClient(bootstrap_servers=self.live_bootstrap())
            await admin.start()
            try:
                response = await admin.create_topics(
                    [NewTopic(name=name, num_partitions=partitions, replication_factor=replication_factor)]
                )
                for topic, code, *_ in response.topic_errors:
                    if code != 0:
                        raise KafkaToolError(f"creating topic {topic!r} failed with Kafka error code {code}")
                deadline = time.monotonic() + 60
                while True:
                    described = await admin.describe_topics([name])
                    parts = described[0]["partitions"] if described else []
                    if len(parts) == partitions and all(
                        p["leader"] >= 0 and len(p["isr"]) == replication_factor for p in parts
                    ):
                        return
                    if time.monotonic() > deadline:
                        raise KafkaToolError(f"topic {name!r} not fully replicated with leaders after 60s")
                    await asyncio.sleep(0.2)
            finally:
                await admin.close()

        _run_in_own_loop(create)

    def leaders(self, topic: str) -> dict[int, int]:
        """Partition -> its leader's node id (-1 while it has none), as the metadata says now."""

        async def describe() -> dict[int, int]:
            from aiokafka.admin import AIOKafkaAdminClient

            admin = AIOKafkaAdminClient(bootstrap_servers=self.live_bootstrap(), request_timeout_ms=5000)
            await admin.start()
            try:
                described = await admin.describe_topics([topic])
            finally:
                await admin.close()
            return {int(p["partition"]): int(p["leader"]) for p in described[0]["partitions"]}

        return _run_in_own_loop(describe)

    def coordinator(self, group: str) -> int:
        """The node id of ``group``'s coordinator now."""

        async def find() -> int:
            from aiokafka.admin import AIOKafkaAdminClient

            admin = AIOKafkaAdminClient(bootstrap_servers=self.live_bootstrap(), request_timeout_ms=5000)
            await admin.start()
            try:
                return int(await admin.find_coordinator(group))
            finally:
                await admin.close()

        return _run_in_own_loop(find)

    def run_tool(self, main_class: str, *args: str, timeout: float = 60.0) -> str:
        """One of Kafka's command-line tools (by main class); its standard output."""
        node = next(iter(self.nodes.values()))
        return run_tool(
            [*_java(self.classpath, node.directory, "WARN", TOOL_JVM), main_class, *args],
            what=f"{main_class} {' '.join(args)}",
            error=KafkaToolError,
            timeout=timeout,
        )

    def consumer_groups_describe(self, group: str) -> list[GroupRow]:
        """Kafka's own view of ``group`` (its consumer-group tool's ``--describe``), asked of the
        brokers running now."""
        output = self.run_tool(
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            "--bootstrap-server",
            self.live_bootstrap(),
            "--describe",
            "--group",
            group,
        )
        errors = [line for line in output.splitlines() if line.startswith("Error:")]
        if errors:
            raise KafkaToolError(f"describing consumer group {group!r}: {errors[0]}")
        return parse_group_table(output)

    def stop(self) -> None:
        for node in self.nodes.values():
            if node.process is not None:
                node.process.stop()


def _node_properties(host: str, node: ClusterNode, voters: str) -> str:
    settings = {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://{host}:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{node.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(node.directory / "data"),
        "auto.create.topics.enable": "false",
        "auto.leader.rebalance.enable": "false",
        "broker.heartbeat.interval.ms": "500",
        "broker.session.timeout.ms": "4000",
        "offsets.topic.replication.factor": "3",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "3",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "3",
        "share.coordinator.state.topic.min.isr": "1",
        "share.coordinator.state.topic.num.partitions": "1",
        "default.replication.factor": "3",
        "min.insync.replicas": "1",
        "group.initial.rebalance.delay.ms": "0",
        "num.network.threads": "2",
        "num.io.threads": "2",
        "background.threads": "2",
        "num.replica.fetchers": "1",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())
