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
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    REPO,
    apply,
    commit_at_start,
    cpu_seconds,
    create_topic,
    kafka_parked,
    kubectl,
    load_average,
    machine,
    memory_kib,
    percentile,
    probe_setup,
    rig,
    short_id,
    wake_one,
)
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from tidescale.kube import KubeConfig
from tidescale.waker import WakerClient

SAMPLES = 20
BACKGROUND_GROUPS = 20
NAMESPACE = "bench-waker"


async def _scenario(
    parked: int,
    *,
    client: WakerClient,
    bootstrap: str,
    kubectl_binary: Path,
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
            topic = f"idle-{short_id()}"
            await create_topic(admin, topic, 8)
            groups = [f"idle-{short_id()}" for _ in range(BACKGROUND_GROUPS)]
            for group in groups:
                await commit_at_start(bootstrap, topic, 8, group)
            manifests = [
                kafka_parked(
                    f"idle-{i:04d}-{short_id()}", NAMESPACE, bootstrap, topic, groups[i % len(groups)]
                )
                for i in range(background)
            ]
            apply(kubectl_binary, kubeconfig, manifests)
        if parked == 1:
            cpu_window = 0.0
            for sample in range(SAMPLES):
                name, topic, group = await probe_setup(admin, bootstrap)
                apply(kubectl_binary, kubeconfig, [kafka_parked(name, NAMESPACE, bootstrap, topic, group)])
                await asyncio.sleep(1.5)  # the watch event arrives and a round or two pass
                if sample == 0:
                    cpu_window = await _idle_cpu(waker_pid, seconds=10.0)
                latencies.append(await wake_one(client, producer, NAMESPACE, name, topic))
        else:
            probes = [await probe_setup(admin, bootstrap) for _ in range(SAMPLES)]
            apply(
                kubectl_binary,
                kubeconfig,
                [kafka_parked(n, NAMESPACE, bootstrap, t, g) for n, t, g in probes],
            )
            await asyncio.sleep(15.0)  # every Deployment listed and polled a few times
            cpu_window = await _idle_cpu(waker_pid, seconds=20.0)
            for name, topic, _ in probes:
                latencies.append(await wake_one(client, producer, NAMESPACE, name, topic))
                await asyncio.sleep(0.3)
        memory = memory_kib(waker_pid)
    finally:
        await producer.stop()
        await admin.close()
    return {
        "parked": parked,
        "samples": len(latencies),
        "p50": statistics.median(latencies),
        "p95": percentile(latencies, 0.95),
        "max": max(latencies),
        "cpu_millicores": cpu_window,
        "rss_mib": memory.get("VmRSS", 0) / 1024,
        "hwm_mib": memory.get("VmHWM", 0) / 1024,
    }


async def _idle_cpu(pid: int, *, seconds: float) -> float:
    before, began = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return 1000 * (cpu_seconds(pid) - before) / (time.monotonic() - began)


def _report(rows: list[dict[str, Any]], started: datetime.datetime) -> str:
    lines = [
        "# Waker wake latency",
        "",
        f"Date: {started:%Y-%m-%d %H:%M} UTC. Machine: {machine()}; load average at the end "
        f"{load_average()}. API server, controller manager and Kafka are the rig's, on the same machine.",
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
    args: argparse.Namespace, kubeconfig: Path, kubectl_binary: Path, bootstrap: str, waker_pid: int
) -> list[dict[str, Any]]:
    client = WakerClient(KubeConfig.from_kubeconfig(kubeconfig))
    rows = []
    try:
        for parked in args.sizes:
            row = await _scenario(
                parked,
                client=client,
                bootstrap=bootstrap,
                kubectl_binary=kubectl_binary,
                kubeconfig=kubeconfig,
                waker_pid=waker_pid,
            )
            print(json.dumps(row), flush=True)
            rows.append(row)
            kubectl(
                kubectl_binary, kubeconfig, "delete", "deployments", "--all", "-n", NAMESPACE, "--wait=false"
            )
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

    from tests.rig.processes import free_port

    started = datetime.datetime.now(datetime.UTC)
    with rig() as pieces:
        kubeconfig = pieces.plane.admin_kubeconfig
        kubectl(pieces.kubectl, kubeconfig, "create", "namespace", NAMESPACE)
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
        waker = pieces.supervisor.start("bench-waker", argv, env=env)
        rows = asyncio.run(_run(args, kubeconfig, pieces.kubectl, pieces.kafka.bootstrap, waker.pid))
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
