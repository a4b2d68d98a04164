"""A measured consumer group whose lag the test holds still, and a consumer Deployment around it.

The agent measures a group that has no member: its offsets are committed by Kafka's own
consumer-group tool (``--reset-offsets``), so its lag changes only when the test produces or
commits, and Kafka's ``--describe`` must show exactly the value the agent reports. The
Deployment's consumers read the same topic in a group of their own, so "nothing lost" is still
checked on real consumption. Fault tests that judge the agent's measurements and decisions
(network delay, a lost broker) use it: a drain the test controls is deterministic, where a drain
by consumers slowed by the fault is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tests.integration.rigkube import (
    apply,
    consumer_deployment,
    kafka_hints,
    namespace_with_agent_rbac,
    unique,
)
from tests.integration.test_scale_to_zero import Background, Observer
from tests.rig.controlplane import ControlPlane
from tests.rig.kafka import Kafka
from tests.rig.kafka_cluster import KafkaCluster
from tidescale.kube import KubeConfig

GROUP_TOOL = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"


@dataclass(kw_only=True, slots=True)
class HeldGroup:
    """A group with no member on ``topic``, its offsets set by Kafka's own tool."""

    broker: Kafka | KafkaCluster
    topic: str
    partitions: int
    name: str

    def _bootstrap(self) -> str:
        return (
            self.broker.live_bootstrap() if isinstance(self.broker, KafkaCluster) else self.broker.bootstrap
        )

    def commit(self, to: Literal["earliest", "latest"]) -> None:
        """Commits every partition's earliest or latest offset (lag: everything, or nothing)."""
        self.broker.run_tool(
            GROUP_TOOL,
            "--bootstrap-server", self._bootstrap(), "--group", self.name, "--topic", self.topic,
            "--reset-offsets", f"--to-{to}", "--execute",
        )  # fmt: skip

    def lag(self) -> int | None:
        """Total lag in Kafka's own tool (None until every partition has a commit)."""
        return tool_lag(self.broker, self.name, self.partitions)


def tool_lag(broker: Kafka | KafkaCluster, group: str, partitions: int) -> int | None:
    """``group``'s total lag as ``kafka-consumer-groups --describe`` prints it (None until every one
    of the ``partitions`` has a committed offset)."""
    rows = broker.consumer_groups_describe(group)
    if len(rows) != partitions or any(row.lag is None for row in rows):
        return None
    return sum(row.lag or 0 for row in rows)


@dataclass(kw_only=True, slots=True)
class Consumers:
    namespace: str
    name: str
    observer: Observer
    held: HeldGroup
    consuming_group: str
    record: Path

    def consumed(self) -> set[str]:
        return set(self.record.read_text().split()) if self.record.exists() else set()


def deploy_consumers(
    plane: ControlPlane,
    background: Background,
    broker: Kafka | KafkaCluster,
    run_dir: Path,
    *,
    prefix: str,
    topic: str,
    partitions: int,
    hints: dict[str, str],
) -> Consumers:
    """A namespace with the agent's RBAC, a held group committed at the start of ``topic``, and a
    consumer Deployment (one replica to begin) whose agents measure the held group with ``hints``
    (annotation names without the prefix) while its consumers consume in a group of their own."""
    namespace, name = unique(prefix), "ledger"
    held = HeldGroup(broker=broker, topic=topic, partitions=partitions, name=unique("held"))
    held.commit("earliest")
    consuming = unique("work")
    namespace_with_agent_rbac(plane, namespace)
    record = run_dir / f"{namespace}-consumed.txt"
    observer = Observer(background, KubeConfig.from_kubeconfig(plane.admin_kubeconfig), namespace, name)
    deployment = consumer_deployment(
        name,
        kafka=broker,
        topic=topic,
        group=consuming,
        annotations=kafka_hints(broker, topic, held.name, hints),
        record_file=record,
        work_seconds=0.02,
    )
    apply(plane, deployment, namespace=namespace)
    return Consumers(
        namespace=namespace, name=name, observer=observer, held=held, consuming_group=consuming, record=record
    )
