"""Wake latency of the waker: message produced -> spec.replicas >= 1, with 1 and 1,000 parked Deployments.

Starts the rig's control plane and Kafka (or uses --kubeconfig/--bootstrap), runs ONE
``tidescale waker`` process (no election: one replica) and parks Deployments for it:

- N = 1: one probe Deployment at a time, SAMPLES times: park (written directly in the
  ``parked`` state, as the leader's park write leaves it), produce one message to its own
  topic, time until the API server shows replicas >= 1.
- N = 1,000: 1,000 - SAMPLES background Deployments parked on idle consumer groups (20 groups
  on one 8-partition topic, never produced to) plus SAMPLES probe Deployments, each on its own
  topic; then the probes are woken one at a time.

Also reports the waker's CPU (millicores, averaged over an idle window with everything
parked) and RSS (VmRSS and VmHWM from /proc). Not a test: numbers are reported, never asserted.

    .venv/bin/python bench/bench_waker.py --write bench/results/waker.md
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "agent")]

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402

from tidescale.kube import KubeConfig  # noqa: E402
from tidescale.parking import (  # noqa: E402
    PARK_EPOCH_ANNOTATION,
    PARK_LABEL,
    PARK_RECORD_ANNOTATION,
    ParkRecord,
    ParkState,
)
from tidescale.waker import WakerClient  # noqa: E402

SAMPLES = 20
BACKGROUND_GROUPS = 20
NAMESPACE = "bench-waker"
TICKS = os.sysconf("SC_CLK_TCK")


def _id() -> str:
    return uuid.uuid4().hex[:8]


async def _topic(admin: AIOKafkaAdminClient, name: str, partitions: int) -> None:
    await admin.create_topics([NewTopic(name=name, num_partitions=partitions, replication_factor=1)])
    while True:
        described = await admin.describe_topics([name])
        parts = described[0]["partitions"] if described else []
        if len(parts) == partitions and all(p["leader"] >= 0 for p in parts):
            return
        await asyncio.sleep(0.1)


async def _commit_at_start(bootstrap: str, topic: str, partitions: int, group: str) -> None:
    """The group has consumed everything of an empty topic: lag 0 on every partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        await consumer.commit({TopicPartition(topic, p): 0 for p in range(partitions)})
    finally:
        await consumer.stop()


def _parked_manifest(name: str, bootstrap: str, topic: str, group: str) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC)
    record = ParkRecord(
        epoch=1,
        state=ParkState.PARKED,
        requester="bench",
        lease_transitions=0,
        requested_at=now,
        triggers=("kafka",),
        acked_by="bench",
        acked_at=now,
        parked_at=now,
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {PARK_LABEL: "parked"},
            "annotations": {
                "tidescale.io/min-replicas": "0",
                "tidescale.io/kafka.bootstrap-servers": bootstrap,
                "tidescale.io/kafka.consumer-group": group,
                "tidescale.io/kafka.topic": topic,
                PARK_RECORD_ANNOTATION: record.to_json(),
                PARK_EPOCH_ANNOTATION: "1",
            },
        },
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "work", "image": "tidescale/echo"}]},
            },
        },
    }


def _kubectl(kubectl: Path, kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [os.fspath(kubectl), f"--kubeconfig={kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args[:3])}: {result.stderr.strip()[:500]}")
    return result.stdout


def _apply(kubectl: Path, kubeconfig: Path, manifests: list[dict[str, Any]]) -> None:
    for start in range(0, len(manifests), 200):
        items = {"apiVersion": "v1", "kind": "List", "items": manifests[start : start + 200]}
        _kubectl(kubectl, kubeconfig, "apply", "--server-side", "-f", "-", stdin=json.dumps(items))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def _memory_kib(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


async def _wait_replicas(client: WakerClient, name: str, limit: float = 60.0) -> float:
    began = time.monotonic()
    while time.monotonic() - began < limit:
        deployment = await client.get_deployment(NAMESPACE, name)
        if int(deployment.get("spec", {}).get("replicas") or 0) >= 1:
            return time.monotonic()
        await asyncio.sleep(0.01)
    raise RuntimeError(f"{name} was not woken within {limit:g}s")


async def _probe_setup(admin: AIOKafkaAdminClient, bootstrap: str) -> tuple[str, str, str]:
    name, topic, group = f"probe-{_id()}", f"probe-{_id()}", f"probe-{_id()}"
    await _topic(admin, topic, 1)
    await _commit_at_start(bootstrap, topic, 1, group)
    return name, topic, group


async def _wake_one(client: WakerClient, producer: AIOKafkaProducer, name: str, topic: str) -> float:
    produced = time.monotonic()
    await producer.send_and_wait(topic, b"wake")
    woken = await _wait_replicas(client, name)
    return woken - produced


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def _scenario(
    parked: int,
    *,
    client: WakerClient,
    bootstrap: str,
    kubectl: Path,
    kubeconfig: Path,
    waker_pid: int,
) -> dict[str, Any]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    latencies: list[float] = []
    try:
        background = parked - SAMPLES if parked > 1 else 0
        if background:
            topic = f"idle-{_id()}"
            await _topic(admin, topic, 8)
            groups = [f"idle-{_id()}" for _ in range(BACKGROUND_GROUPS)]
            for group in groups:
                await _commit_at_start(bootstrap, topic, 8, group)
            manifests = [
                _parked_manifest(f"idle-{i:04d}-{_id()}", bootstrap, topic, groups[i % len(groups)])
                for i in range(background)
            ]
            _apply(kubectl, kubeconfig, manifests)
        if parked == 1:
            cpu_window = 0.0
            for sample in range(SAMPLES):
                name, topic, group = await _probe_setup(admin, bootstrap)
                _apply(kubectl, kubeconfig, [_parked_manifest(name, bootstrap, topic, group)])
                await asyncio.sleep(1.5)  # the watch event arrives and a round or two pass
                if sample == 0:
                    cpu_window = await _idle_cpu(waker_pid, seconds=10.0)
                latencies.append(await _wake_one(client, producer, name, topic))
        else:
            probes = [await _probe_setup(admin, bootstrap) for _ in range(SAMPLES)]
            _apply(kubectl, kubeconfig, [_parked_manifest(n, bootstrap, t, g) for n, t, g in probes])
            await asyncio.sleep(15.0)  # every Deployment listed and polled a few times
            cpu_window = await _idle_cpu(waker_pid, seconds=20.0)
            for name, topic, _ in probes:
                latencies.append(await _wake_one(client, producer, name, topic))
                await asyncio.sleep(0.3)
        memory = _memory_kib(waker_pid)
    finally:
        await producer.stop()
        await admin.close()
    return {
        "parked": parked,
        "samples": len(latencies),
        "p50": statistics.median(latencies),
        "p95": _percentile(latencies, 0.95),
        "max": max(latencies),
        "cpu_millicores": cpu_window,
        "rss_mib": memory.get("VmRSS", 0) / 1024,
        "hwm_mib": memory.get("VmHWM", 0) / 1024,
    }


async def _idle_cpu(pid: int, *, seconds: float) -> float:
    before, began = _cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return 1000 * (_cpu_seconds(pid) - before) / (time.monotonic() - began)


def _machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    system = f"Linux {platform.release()}, Python {platform.python_version()}"
    return f"{model}, {os.cpu_count()} cores (shared with other jobs), {system}"


def _report(rows: list[dict[str, Any]], started: datetime.datetime) -> str:
    lines = [
        "# Waker wake latency",
        "",
        f"Date: {started:%Y-%m-%d %H:%M} UTC. Machine: {_machine()}. API server, controller manager and "
        "Kafka are the rig's, on the same machine.",
        "",
        "Produced by `bench/bench_waker.py`: one `tidescale waker` process (`--no-election`, default "
        "1 s interval). Latency = from just before `send_and_wait` of one message to the first GET of the "
        "Deployment showing spec.replicas >= 1 (polled every 10 ms). CPU is the waker's average over an "
        "idle window with every Deployment parked; RSS is VmRSS after the run, HWM its peak.",
        "",
        "| parked Deployments | samples | p50 s | p95 s | max s | waker CPU (millicores, idle) "
        "| RSS MiB | peak RSS MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['parked']:,} | {row['samples']} | {row['p50']:.2f} | {row['p95']:.2f} "
            f"| {row['max']:.2f} | {row['cpu_millicores']:.0f} | {row['rss_mib']:.0f} "
            f"| {row['hwm_mib']:.0f} |"
        )
    lines += ["", "Targets: p95 <= 1.5 s with 1 parked, <= 2 s with 1,000.", ""]
    return "\n".join(lines)


async def _run(
    args: argparse.Namespace, kubeconfig: Path, kubectl: Path, bootstrap: str, waker_pid: int
) -> list[dict[str, Any]]:
    client = WakerClient(KubeConfig.from_kubeconfig(kubeconfig))
    rows = []
    try:
        for parked in args.sizes:
            row = await _scenario(
                parked,
                client=client,
                bootstrap=bootstrap,
                kubectl=kubectl,
                kubeconfig=kubeconfig,
                waker_pid=waker_pid,
            )
            print(json.dumps(row), flush=True)
            rows.append(row)
            _kubectl(kubectl, kubeconfig, "delete", "deployments", "--all", "-n", NAMESPACE, "--wait=false")
            await asyncio.sleep(3.0)
    finally:
        await client.aclose()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 1000])
    parser.add_argument("--write", type=Path, default=None, help="write the markdown report here")
    parser.add_argument(
        "--profile", type=Path, default=None, help="run the waker under cProfile, stats written here at exit"
    )
    args = parser.parse_args()

    from tests.rig.controlplane import ControlPlane
    from tests.rig.kafka import Kafka
    from tests.rig.network import Network
    from tests.rig.paths import ControlPlaneBinaries, new_run_dir
    from tests.rig.processes import Supervisor, free_port

    started = datetime.datetime.now(datetime.UTC)
    run_dir = new_run_dir()
    supervisor = Supervisor(run_dir=run_dir)
    network = Network().open()
    try:
        binaries = ControlPlaneBinaries.from_cache()
        plane = ControlPlane.start(supervisor, network, run_dir, binaries=binaries)
        kafka = Kafka.start(supervisor, network, run_dir)
        kubeconfig = plane.admin_kubeconfig
        _kubectl(binaries.kubectl, kubeconfig, "create", "namespace", NAMESPACE)
        argv = [
            sys.executable,
            *(["-m", "cProfile", "-o", str(args.profile.resolve())] if args.profile else []),
            "-m",
            "tidescale.cli",
            "waker",
            "--no-election",
            "--kubeconfig",
            str(kubeconfig),
            "--port",
            str(free_port()),
        ]
        env = {**os.environ, "PYTHONPATH": str(REPO / "agent"), "TIDESCALE_LOG_LEVEL": "INFO"}
        waker = supervisor.start("bench-waker", argv, env=env)
        rows = asyncio.run(_run(args, kubeconfig, binaries.kubectl, kafka.bootstrap, waker.pid))
    finally:
        supervisor.stop_all()
        network.close()
    report = _report(rows, started)
    print(report)
    if args.write is not None:
        args.write.write_text(report)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
