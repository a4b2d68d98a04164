"""Leader failover and RabbitMQ wake latency, in the chart's default configuration.

Starts the rig (control plane, Kafka, RabbitMQ, pod runner) itself and stops everything it
started. Not a test: numbers are reported, never asserted.

1. Failover. One Kafka consumer Deployment of 3 pods, each with the agent beside it (written
   into the manifest as the injector adds it), min = max = 3, and NO lease hints: the agent's
   defaults, which are client-go's (lease 15 s, renew deadline 10 s, retry period 2 s). Each
   round removes the leading pod, then waits for a new stable leader and 3 running pods:

   - SIGTERM: ``kubectl delete pod`` (graceful, as a rolling update or a scale-down does): the
     pod runner sends SIGTERM to every container, the agent releases the Lease on its way out.
   - SIGKILL: every process of the leading pod is stopped at once (SIGSTOP, so nothing more is
     sent), the pod is force-deleted and its processes SIGKILLed (a node or pod dying: no release,
     no restart in place). A follower takes over once the lease runs out.

   Failover time = from just before the signal (SIGKILL: the SIGSTOP; SIGTERM: the delete call)
   to the API server's ``requestReceivedTimestamp`` of the first Lease write by another pod
   (the audit log; same machine, same clock).

2. RabbitMQ wake latency. Two ``tidescale waker`` processes elected through one Lease (the
   chart's default: 2 replicas, interval 1 s), as their ServiceAccount with
   deploy/waker-rbac.yaml. Each sample parks a fresh Deployment on its own durable queue
   (written directly in the ``parked`` state, as the leader's park write leaves it), publishes
   one persistent message with publisher confirms, and polls the Deployment every 10 ms until
   spec.replicas >= 1.

    .venv/bin/python bench/bench_failover.py --write bench/results/failover.md
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

from _common import load_average, machine, parked_deployment, percentile, rig
from tests.faults.invariants import lease_holder, lease_writes
from tests.integration.rigkube import (
    apply,
    consumer_deployment,
    declare_queue,
    items,
    kafka_hints,
    namespace_with_agent_rbac,
    rabbitmq_hints,
    waker_argv,
    waker_rbac,
)

from tidescale.kube import KubeConfig
from tidescale.waker import WakerClient

T = TypeVar("T")
PODS = 3


def wait(what: str, check: Callable[[], T | None], *, limit: float, interval: float = 0.1) -> T:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(interval)
    raise RuntimeError(f"timed out after {limit:g}s waiting for {what}")


# ---------------------------------------------------------------------- failover


def running_pods(plane: Any, namespace: str, app: str) -> list[str]:
    return sorted(
        pod["metadata"]["name"]
        for pod in items(plane, "pods", namespace, f"app={app}")
        if pod.get("status", {}).get("phase") == "Running"
        and not pod["metadata"].get("deletionTimestamp")
        and all(c.get("ready") for c in pod["status"].get("containerStatuses", []))
    )


def stable_leader(plane: Any, namespace: str, name: str) -> str:
    """A leader among PODS running pods that has renewed twice since it was first seen leading."""
    wait(f"{PODS} running pods", lambda: len(running_pods(plane, namespace, name)) == PODS, limit=120)
    leader = wait("a leader", lambda: lease_holder(plane, namespace, name), limit=60)
    seen = datetime.datetime.now(datetime.UTC)
    wait(
        f"two renewals by {leader}",
        lambda: len([w for w in lease_writes(plane, namespace, name, after=seen) if w["pod"] == leader]) >= 2,
        limit=60,
    )
    return leader


def remove_leader(plane: Any, runner: Any, namespace: str, leader: str, how: str) -> datetime.datetime:
    """Removes the leading pod the ``how`` way; returns the moment it began (UTC)."""
    if how == "SIGTERM":
        began = datetime.datetime.now(datetime.UTC)
        plane.kubectl("delete", "pod", leader, "-n", namespace, "--wait=false")
        return began
    pids = runner.pod_pids()[f"{namespace}/{leader}"]
    began = datetime.datetime.now(datetime.UTC)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    plane.kubectl("delete", "pod", leader, "-n", namespace, "--grace-period=0", "--force", "--wait=false")
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return began


def failover(plane: Any, runner: Any, kafka: Any, how: str, kills: int) -> list[dict[str, Any]]:
    namespace, name = f"bench-failover-{how.lower()}-{uuid.uuid4().hex[:6]}", "orders"
    topic, group = f"orders-{uuid.uuid4().hex[:6]}", f"group-{uuid.uuid4().hex[:6]}"
    kafka.create_topic(topic, 6)
    namespace_with_agent_rbac(plane, namespace)
    hints = kafka_hints(kafka, topic, group, {"min-replicas": str(PODS), "max-replicas": str(PODS)})
    hints.pop("tidescale.io/polling-interval")  # the default, as every lease hint
    record = Path("/dev/null")
    deployment = consumer_deployment(
        name, kafka=kafka, topic=topic, group=group, annotations=hints, record_file=record, replicas=PODS
    )
    apply(plane, deployment, namespace=namespace)
    rounds = []
    for index in range(kills):
        leader = stable_leader(plane, namespace, name)
        began = remove_leader(plane, runner, namespace, leader, how)

        def successor(leader: str = leader, began: datetime.datetime = began) -> dict[str, Any] | None:
            return next(
                (w for w in lease_writes(plane, namespace, name, after=began) if w["pod"] != leader), None
            )

        write = wait(f"a leader other than {leader}", successor, limit=90, interval=0.2)
        seconds = (write["received"] - began).total_seconds()
        row = {
            "how": how,
            "round": index + 1,
            "seconds": round(seconds, 3),
            "old": leader,
            "new": write["pod"],
        }
        print(json.dumps(row), flush=True)
        rounds.append(row)
    plane.kubectl("delete", "namespace", namespace, "--wait=false")
    return rounds


# ---------------------------------------------------------------------- RabbitMQ wake


def parked_rabbitmq_deployment(name: str, namespace: str, hints: dict[str, str]) -> dict[str, Any]:
    return parked_deployment(name, namespace, hints, trigger="rabbitmq")


async def wake_once(client: WakerClient, rabbitmq: Any, namespace: str, name: str, queue: str) -> float:
    import aio_pika

    connection = await aio_pika.connect(rabbitmq.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        message = aio_pika.Message(b"wake", delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        sent = time.monotonic()
        await channel.default_exchange.publish(message, routing_key=queue)
        while time.monotonic() - sent < 60:
            deployment = await client.get_deployment(namespace, name)
            if int(deployment.get("spec", {}).get("replicas") or 0) >= 1:
                return time.monotonic() - sent
            await asyncio.sleep(0.01)
    finally:
        await connection.close()
    raise RuntimeError(f"{namespace}/{name} was not woken within 60s")


def rabbitmq_wakes(plane: Any, supervisor: Any, rabbitmq: Any, samples: int) -> list[float]:
    namespace = f"bench-wake-{uuid.uuid4().hex[:6]}"
    plane.kubectl("create", "namespace", namespace)
    secret = "rabbitmq-credentials"  # noqa: S105 -- the Secret's name
    plane.kubectl(
        "create", "secret", "generic", secret, "-n", namespace,
        f"--from-literal=username={rabbitmq.username}", f"--from-literal=password={rabbitmq.password}",
    )  # fmt: skip
    kubeconfig = waker_rbac(plane, [namespace])
    lease = f"bench-waker-{uuid.uuid4().hex[:6]}"
    for index in range(2):  # the chart's two replicas, one Lease
        argv = waker_argv(
            kubeconfig,
            identity=f"waker-{index}",
            lease_name=lease,
            secret_namespaces=[namespace],
            interval=1.0,
        )
        supervisor.start(f"bench-waker-{index}", argv)
    wait(
        "a waker to lead",
        lambda: any(
            lease_["metadata"]["name"] == lease and lease_["spec"].get("holderIdentity")
            for lease_ in items(plane, "lease", "tidescale-system")
        ),
        limit=60,
        interval=0.5,
    )

    async def run() -> list[float]:
        client = WakerClient(KubeConfig.from_kubeconfig(plane.admin_kubeconfig))
        found = []
        try:
            for index in range(samples):
                name, queue = f"probe-{index}-{uuid.uuid4().hex[:6]}", f"probe-{uuid.uuid4().hex[:8]}"
                await asyncio.to_thread(declare_queue, rabbitmq.amqp_url, queue)
                hints = rabbitmq_hints(rabbitmq.management_url, queue, secret)
                hints.pop("tidescale.io/polling-interval")
                await asyncio.to_thread(apply, plane, parked_rabbitmq_deployment(name, namespace, hints))
                await asyncio.sleep(3.0)  # several rounds of the waker with the queue empty: still parked
                deployment = await client.get_deployment(namespace, name)
                if int(deployment.get("spec", {}).get("replicas") or 0) != 0:
                    raise RuntimeError(f"{name} woke with an empty queue")
                seconds = await wake_once(client, rabbitmq, namespace, name, queue)
                print(json.dumps({"rabbitmq_wake": index + 1, "seconds": round(seconds, 3)}), flush=True)
                found.append(seconds)
        finally:
            await client.aclose()
        return found

    return asyncio.run(run())


# ---------------------------------------------------------------------- report


def summary(values: list[float]) -> str:
    if not values:
        return "| - | - | - | - | 0 |"
    return (
        f"| {percentile(values, 0.5):.2f} | {percentile(values, 0.95):.2f} | {min(values):.2f} | "
        f"{max(values):.2f} | {len(values)} |"
    )


def report(
    started: datetime.datetime, rounds: list[dict[str, Any]], wakes: list[float], command: str, load: str
) -> str:
    lines = [
        "# Leader failover and RabbitMQ wake latency",
        "",
        f"Date: {started:%Y-%m-%d %H:%M} UTC. Machine: {machine()}; load average at the end {load}. "
        "Control plane, Kafka, RabbitMQ, pod runner and every agent on the same machine (the rig). "
        f"Command: `{command}`.",
        "",
        "Configuration: the chart's defaults. Agents without lease hints: lease 15 s, renew deadline "
        "10 s, retry period 2 s (client-go's). Wakers: 2 replicas elected through one Lease, interval 1 s.",
        "",
        "## Failover: leading pod removed -> another pod's first Lease write (API server audit log)",
        "",
        "| how the leader went | p50 s | p95 s | min s | max s | kills |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for how, meaning in (
        ("SIGTERM", "SIGTERM (`kubectl delete pod`): the agent releases the Lease"),
        ("SIGKILL", "SIGKILL (pod frozen, force-deleted, killed): no release, no restart"),
    ):
        values = [r["seconds"] for r in rounds if r["how"] == how]
        lines.append(f"| {meaning} {summary(values)}")
    lines += [
        "",
        "Expected from the election's rules: SIGTERM within about one watch event (the released Lease "
        "is free at once); SIGKILL after the follower's lease duration (15 s) counted from when it last "
        "saw the Lease change, i.e. 13-15 s after the kill plus the time to notice (at most one retry "
        "period, 2 s, when the watch is quiet).",
        "",
        "## RabbitMQ: parked -> awake (one persistent message published -> spec.replicas >= 1)",
        "",
        "| parked Deployments | p50 s | p95 s | min s | max s | samples |",
        "|---|---:|---:|---:|---:|---:|",
        f"| 1 (fresh Deployment and queue per sample) {summary(wakes)}",
        "",
        "The waker reads queue depths from the management API (`GET /api/queues/{vhost}`), whose "
        "statistics the rig's RabbitMQ refreshes every 1 s (`collect_statistics_interval`), on top "
        "of the waker's 1 s round.",
        "",
        "## Every sample",
        "",
        "```",
        *(json.dumps(r) for r in rounds),
        *(json.dumps({"rabbitmq_wake": i + 1, "seconds": round(s, 3)}) for i, s in enumerate(wakes)),
        "```",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="leaders removed per way (SIGTERM, SIGKILL)")
    parser.add_argument("--wakes", type=int, default=20, help="RabbitMQ wake samples")
    parser.add_argument("--write", type=Path, default=None, help="write the markdown report here")
    args = parser.parse_args()
    started = datetime.datetime.now(datetime.UTC)
    with rig(rabbitmq=True, pod_runner=True) as pieces:
        rounds = []
        for how in ("SIGTERM", "SIGKILL"):
            rounds += failover(pieces.plane, pieces.runner, pieces.kafka, how, args.kills)
        wakes = (
            rabbitmq_wakes(pieces.plane, pieces.supervisor, pieces.rabbitmq, args.wakes) if args.wakes else []
        )
    load = load_average()
    command = "bench/bench_failover.py" + "".join(
        f" --{k} {v}" for k, v in (("kills", args.kills), ("wakes", args.wakes))
    )
    text = report(started, rounds, wakes, command, load)
    print(text)
    if args.write is not None:
        args.write.write_text(text)
    for how in ("SIGTERM", "SIGKILL"):
        values = [r["seconds"] for r in rounds if r["how"] == how]
        if values:
            print(f"{how}: median {statistics.median(values):.2f}s over {len(values)}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
