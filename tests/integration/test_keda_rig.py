"""KEDA in the rig (for ``make bench-keda``): its operator and metrics adapter, built from the Go
module, run against the rig's API server; the adapter serves ``external.metrics.k8s.io`` through
the aggregator, and the rig's HPA controller scales a Deployment from a Kafka group's lag.

Marker ``long``: KEDA is built only by ``make bench-keda`` (tests/rig/build/build.sh keda), not
by ``make rig``, so ``make test`` leaves this out. Run it by file after that build:

    .venv/bin/pytest tests/integration/test_keda_rig.py -m long
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.rigkube import apply, get, produce, wait_for
from tests.rig.controlplane import ControlPlane
from tests.rig.kafka import Kafka
from tests.rig.keda import APISERVICE, Keda, KedaBinaries, apiservice_available, kafka_scaled_object
from tests.rig.network import Network
from tests.rig.paths import RigNotBuilt
from tests.rig.processes import Supervisor

pytestmark = [pytest.mark.rig, pytest.mark.long]

PARTITIONS = 2
MESSAGES = 150
LAG_THRESHOLD = 50


@pytest.fixture(scope="module")
def keda(
    control_plane: ControlPlane, rig_supervisor: Supervisor, rig_network: Network, rig_run_dir: Path
) -> Iterator[Keda]:
    try:
        KedaBinaries.from_cache()
    except RigNotBuilt as exc:
        missing = str(exc)
    else:
        missing = ""
    if missing:
        pytest.fail(f"KEDA is not built: {missing}", pytrace=False)
    running = Keda.start(rig_supervisor, control_plane, rig_network, rig_run_dir)
    try:
        yield running
    finally:
        running.stop()
        # The HPA differential test registers its own server under the same APIService name.
        control_plane.kubectl("delete", "apiservice", APISERVICE, "--ignore-not-found")


def _unscheduled_deployment(name: str, replicas: int) -> dict[str, Any]:
    """A Deployment whose pods never run (no node matches): KEDA and the HPA act on spec.replicas."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {"rig": "never"},
                    "containers": [{"name": "work", "image": "tidescale-test/echo"}],
                },
            },
        },
    }


def _committed_at_start(kafka: Kafka, topic: str, group: str) -> None:
    async def commit() -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
            await consumer.commit({TopicPartition(topic, p): 0 for p in range(PARTITIONS)})
        finally:
            await consumer.stop()

    asyncio.run(commit())


def _replicas(plane: ControlPlane, name: str, namespace: str) -> int:
    return int(get(plane, "deployment", name, namespace)["spec"].get("replicas") or 0)


def test_keda_scales_a_deployment_from_kafka_lag_through_the_rigs_hpa_controller(
    keda: Keda, control_plane: ControlPlane, kafka: Kafka
) -> None:
    namespace, name = f"keda-{uuid.uuid4().hex[:6]}", "orders"
    topic, group = f"keda-{uuid.uuid4().hex[:6]}", f"keda-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("create", "namespace", namespace)
    kafka.create_topic(topic, PARTITIONS)
    _committed_at_start(kafka, topic, group)
    produce(kafka, topic, [f"m{i}" for i in range(MESSAGES)])
    apply(control_plane, _unscheduled_deployment(name, 0), namespace=namespace)
    scaled_object = kafka_scaled_object(
        name,
        namespace,
        deployment=name,
        bootstrap=kafka.bootstrap,
        topic=topic,
        group=group,
        lag_threshold=LAG_THRESHOLD,
        min_replicas=0,
        max_replicas=PARTITIONS,
        cooldown_seconds=300,
        scale_down_stabilization_seconds=300,
        polling_interval_seconds=1,
    )
    apply(control_plane, scaled_object)

    assert apiservice_available(control_plane)
    # The operator activates from zero (lag 150 > activation 0) and makes the HPA ...
    hpa = wait_for(
        "KEDA's HPA for the ScaledObject",
        lambda: json.loads(
            control_plane.kubectl(
                "get", "hpa", f"keda-hpa-{name}", "-n", namespace, "-o", "json", check=False
            ).stdout
            or "null"
        ),
        timeout=120,
    )
    metric = hpa["spec"]["metrics"][0]["external"]["metric"]
    # ... whose metric the aggregator serves from KEDA's adapter: the group's lag, read from the broker.
    path = (
        f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric['name']}"
        f"?labelSelector=scaledobject.keda.sh%2Fname%3D{name}"
    )

    def lag_served() -> int | None:
        answer = control_plane.kubectl("get", "--raw", path, check=False)
        if answer.returncode != 0:
            return None
        items = json.loads(answer.stdout)["items"]
        return int(float(items[0]["value"].rstrip("m")) / (1000 if items[0]["value"].endswith("m") else 1))

    # KEDA caps the lag it reports at partitions x lagThreshold (allowIdleConsumers false): 2 x 50.
    assert wait_for("the external metric through the aggregator", lag_served, timeout=60) == min(
        MESSAGES, PARTITIONS * LAG_THRESHOLD
    )
    # The rig's HPA controller reads it and scales to ceil(100 / 50) = 2.
    wait_for(
        "the HPA to scale the Deployment to 2",
        lambda: _replicas(control_plane, name, namespace) == PARTITIONS,
        timeout=120,
    )
    status = get(control_plane, "hpa", f"keda-hpa-{name}", namespace)["status"]
    assert status["desiredReplicas"] == PARTITIONS
