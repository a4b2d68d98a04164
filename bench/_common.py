"""What the rig benchmarks share: the import path, the machine line, percentiles, the rig itself,
and the one way a Kafka wake is timed (bench_waker.py, bench_waker_attack.py).

Importing this module puts the repository and ``agent/`` on ``sys.path``, so a script run as
``.venv/bin/python bench/bench_x.py`` imports it first (``from _common import ...``: the script's
own folder is on the path) and ``tidescale`` and ``tests`` after it.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "agent")]

from tidescale.parking import (  # noqa: E402
    PARK_EPOCH_ANNOTATION,
    PARK_LABEL,
    PARK_RECORD_ANNOTATION,
    ParkRecord,
    ParkState,
)

# -- the report ---------------------------------------------------------------------------------


def machine() -> str:
    """CPU model, cores, kernel and Python, for a results file's header."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    return (
        f"{model}, {os.cpu_count()} cores shared with other jobs, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg gives them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` 0.95 for p95) of at least one value."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak) of the process, in KiB."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


# -- the rig ------------------------------------------------------------------------------------


@dataclass
class Rig:
    """The rig's pieces a benchmark started; ``rabbitmq`` and ``runner`` only when asked for."""

    plane: Any
    kafka: Any
    supervisor: Any
    run_dir: Path
    kubectl: Path
    rabbitmq: Any = None
    runner: Any = None


@contextmanager
def rig(*, rabbitmq: bool = False, pod_runner: bool = False) -> Iterator[Rig]:
    """Starts the control plane and Kafka (and RabbitMQ, the pod runner) on a bridge of their own;
    stops every process it started, and the bridge, on the way out."""
    from tests.rig.controlplane import ControlPlane
    from tests.rig.kafka import Kafka
    from tests.rig.network import Network
    from tests.rig.paths import ControlPlaneBinaries, new_run_dir
    from tests.rig.podrunner import PodRunner
    from tests.rig.processes import Supervisor
    from tests.rig.rabbitmq import RabbitMQ

    run_dir = new_run_dir()
    print(f"rig run directory: {run_dir}", flush=True)
    supervisor = Supervisor(run_dir=run_dir)
    network = Network().open()
    runner = None
    try:
        binaries = ControlPlaneBinaries.from_cache()
        plane = ControlPlane.start(supervisor, network, run_dir, binaries=binaries)
        kafka = Kafka.start(supervisor, network, run_dir)
        broker = RabbitMQ.start(supervisor, network, run_dir) if rabbitmq else None
        if pod_runner:
            runner = PodRunner(
                kubeconfig=plane.admin_kubeconfig, server=plane.server, network=network, run_dir=run_dir
            ).start()
        yield Rig(
            plane=plane,
            kafka=kafka,
            supervisor=supervisor,
            run_dir=run_dir,
            kubectl=binaries.kubectl,
            rabbitmq=broker,
            runner=runner,
        )
    finally:
        if runner is not None:
            runner.stop()
        supervisor.stop_all()
        network.close()


def kubectl(binary: Path, kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [os.fspath(binary), f"--kubeconfig={kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args[:3])}: {result.stderr.strip()[:500]}")
    return result.stdout


def apply(binary: Path, kubeconfig: Path, manifests: list[dict[str, Any]]) -> None:
    """Server-side apply, 200 objects per call."""
    for start in range(0, len(manifests), 200):
        items = {"apiVersion": "v1", "kind": "List", "items": manifests[start : start + 200]}
        kubectl(binary, kubeconfig, "apply", "--server-side", "-f", "-", stdin=json.dumps(items))


# -- parked Deployments and the Kafka wake ------------------------------------------------------


def parked_deployment(name: str, namespace: str, hints: dict[str, str], *, trigger: str) -> dict[str, Any]:
    """A Deployment written directly in the ``parked`` state, as the leader's park write leaves it
    (label, record, epoch, replicas 0). Its pods are never scheduled: no node matches them."""
    now = datetime.datetime.now(datetime.UTC)
    record = ParkRecord(
        epoch=1,
        state=ParkState.PARKED,
        requester="bench",
        lease_transitions=0,
        requested_at=now,
        triggers=(trigger,),
        acked_by="bench",
        acked_at=now,
        parked_at=now,
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {PARK_LABEL: "parked"},
            "annotations": {
                **hints,
                "tidescale.io/min-replicas": "0",
                PARK_RECORD_ANNOTATION: record.to_json(),
                PARK_EPOCH_ANNOTATION: "1",
            },
        },
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {"bench": "never"},
                    "containers": [{"name": "work", "image": "tidescale-test/echo"}],
                },
            },
        },
    }


def kafka_parked(name: str, namespace: str, bootstrap: str, topic: str, group: str) -> dict[str, Any]:
    hints = {
        "tidescale.io/kafka.bootstrap-servers": bootstrap,
        "tidescale.io/kafka.consumer-group": group,
        "tidescale.io/kafka.topic": topic,
    }
    return parked_deployment(name, namespace, hints, trigger="kafka")


def short_id() -> str:
    return uuid.uuid4().hex[:8]


async def create_topic(admin: Any, name: str, partitions: int) -> None:
    """Creates the topic and waits until every partition has a leader."""
    from aiokafka.admin import NewTopic

    await admin.create_topics([NewTopic(name=name, num_partitions=partitions, replication_factor=1)])
    while True:
        described = await admin.describe_topics([name])
        parts = described[0]["partitions"] if described else []
        if len(parts) == partitions and all(p["leader"] >= 0 for p in parts):
            return
        await asyncio.sleep(0.1)


async def commit_at_start(bootstrap: str, topic: str, partitions: int, group: str) -> None:
    """The group has consumed everything of an empty topic: lag 0 on every partition."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        await consumer.commit({TopicPartition(topic, p): 0 for p in range(partitions)})
    finally:
        await consumer.stop()


async def probe_setup(admin: Any, bootstrap: str) -> tuple[str, str, str]:
    """A probe's Deployment name, and its own one-partition topic and idle group."""
    name, topic, group = f"probe-{short_id()}", f"probe-{short_id()}", f"probe-{short_id()}"
    await create_topic(admin, topic, 1)
    await commit_at_start(bootstrap, topic, 1, group)
    return name, topic, group


async def wait_replicas(client: Any, namespace: str, name: str, limit: float = 60.0) -> float:
    """Polls the Deployment every 10 ms; returns the moment it shows spec.replicas >= 1."""
    began = time.monotonic()
    while time.monotonic() - began < limit:
        deployment = await client.get_deployment(namespace, name)
        if int(deployment.get("spec", {}).get("replicas") or 0) >= 1:
            return time.monotonic()
        await asyncio.sleep(0.01)
    raise RuntimeError(f"{namespace}/{name} was not woken within {limit:g}s")


async def wake_one(client: Any, producer: Any, namespace: str, name: str, topic: str) -> float:
    """Seconds from just before ``send_and_wait`` of one message to spec.replicas >= 1."""
    produced = time.monotonic()
    await producer.send_and_wait(topic, b"wake")
    woken = await wait_replicas(client, namespace, name)
    return woken - produced
