"""The status's per-pod section on the rig: the leader attributes its group-wide Kafka reading to
the pods from the group's assignment (no request to any peer), and each pod's number is the lag of
the partitions Kafka's own consumer-group tool says that pod's consumer holds."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from typing import Any

import pytest

from tests.faults.invariants import lease_holder
from tests.integration.rigkube import (
    apply,
    consumer_deployment,
    get,
    items,
    kafka_hints,
    namespace_with_agent_rbac,
    unique,
    wait_for,
)
from tests.rig.controlplane import ControlPlane
from tests.rig.kafka import Kafka
from tests.rig.podrunner import PodRunner

pytestmark = pytest.mark.rig

PARTITIONS = 6
PODS = 3


async def _produce_unevenly(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition p gets 5 * (p + 1) messages, so that every pod's share is told apart."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for partition in range(PARTITIONS):
            for index in range(5 * (partition + 1)):
                await producer.send(topic, f"m{partition}-{index}".encode(), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()
    return {p: 5 * (p + 1) for p in range(PARTITIONS)}


def running(plane: ControlPlane, namespace: str, app: str) -> list[str]:
    return sorted(
        pod["metadata"]["name"]
        for pod in items(plane, "pods", namespace, f"app={app}")
        if pod.get("status", {}).get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp")
    )


def settled_shares(kafka: Kafka, group: str, pods: list[str]) -> dict[str, float] | None:
    """Each pod's expected share from Kafka's own tool, once every partition is held by one of
    the pods' consumers (client id = pod name) and all of them hold some; else None."""
    rows = kafka.consumer_groups_describe(group)
    if len(rows) != PARTITIONS or {row.client_id for row in rows} != set(pods):
        return None
    shares: dict[str, float] = defaultdict(float)
    for row in rows:
        assert row.current_offset is None, "the consumers hold their first message and commit nothing"
        shares[str(row.client_id)] += row.log_end_offset  # uncommitted, earliest: log-end - log-start (0)
    return dict(shares)


def status_of(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any] | None:
    annotations = get(plane, "deployment", name, namespace)["metadata"].get("annotations") or {}
    text = annotations.get("tidescale.io/status")
    return json.loads(text) if text else None


def test_the_status_shows_each_pods_share_as_kafka_assigns_the_partitions_without_asking_the_peers(
    control_plane: ControlPlane, pod_runner: PodRunner, kafka: Kafka
) -> None:
    namespace, name = unique("podshare"), "orders"
    topic, group = unique("orders"), unique("orders-group")
    kafka.create_topic(topic, PARTITIONS)
    produced = asyncio.run(_produce_unevenly(kafka.bootstrap, topic))
    namespace_with_agent_rbac(control_plane, namespace)
    # No trigger yet: the leader is elected but does not tick, so its first status (and its first
    # attribution) comes only once the trigger appears, after the group has settled.
    bounds = {"tidescale.io/min-replicas": str(PODS), "tidescale.io/max-replicas": str(PODS)}
    deployment = consumer_deployment(
        name,
        kafka=kafka,
        topic=topic,
        group=group,
        annotations=bounds,
        record_file=control_plane.directory / f"{namespace}.consumed",
        replicas=PODS,
        work_seconds=600,  # each consumer holds its first message: the lag stays put
    )
    apply(control_plane, deployment, namespace=namespace)
    pods = wait_for(
        f"{PODS} running pods",
        lambda: p if len(p := running(control_plane, namespace, name)) == PODS else None,
        timeout=90,
    )
    wait_for("a leader", lambda: lease_holder(control_plane, namespace, name), timeout=60)
    expected = wait_for(
        "the consumer group to settle on the pods",
        lambda: settled_shares(kafka, group, pods),
        timeout=60,
        interval=1.0,
    )
    assert sum(expected.values()) == sum(produced.values())

    hints = kafka_hints(
        kafka, topic, group, {"kafka.offset-reset-policy": "earliest", "kafka.lag-threshold": "1000"}
    )
    control_plane.kubectl(
        "annotate", "deployment", name, "-n", namespace, *(f"{k}={v}" for k, v in hints.items())
    )
    status = wait_for(
        "the leader's first status", lambda: status_of(control_plane, namespace, name), timeout=60
    )
    assert status["triggers"]["kafka"]["value"] == sum(produced.values())
    assert status["pods"] == expected
    assert status["podsFrom"].startswith("group description")
    assert settled_shares(kafka, group, pods) == expected, "the group did not move while the leader read it"
