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
import platform
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "agent")]

from tests.faults.invariants import lease_holder, lease_writes  # noqa: E402
from tests.integration.rigkube import (  # noqa: E402
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

from tidescale.kube import KubeConfig  # noqa: E402
from tidescale.parking import (  # noqa: E402
    PARK_EPOCH_ANNOTATION,
    PARK_LABEL,
    PARK_RECORD_ANNOTATION,
    ParkRecord,
    ParkState,
)
from tidescale.waker import WakerClient  # noqa: E402

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


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


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
    now = datetime.datetime.now(datetime.UTC)
    record = ParkRecord(
        epoch=1,
        state=ParkState.PARKED,
        requester="bench",
        lease_transitions=0,
        requested_at=now,
        triggers=("rabbitmq",),
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
            # Never scheduled to run here: the node selector matches no node.
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {"bench": "never"},
                    "containers": [{"name": "work", "image": "tidescale-test/echo"}],
                },
            },
        },
    }


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


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    return (
        f"{model}, {nproc} cores shared with other jobs, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


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


@contextmanager
def rig() -> Iterator[tuple[Any, Any, Any, Any, Any]]:
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
        plane = ControlPlane.start(supervisor, network, run_dir, binaries=ControlPlaneBinaries.from_cache())
        kafka = Kafka.start(supervisor, network, run_dir)
        rabbitmq = RabbitMQ.start(supervisor, network, run_dir)
        runner = PodRunner(
            kubeconfig=plane.admin_kubeconfig, server=plane.server, network=network, run_dir=run_dir
        ).start()
        yield plane, runner, kafka, rabbitmq, supervisor
    finally:
        if runner is not None:
            runner.stop()
        supervisor.stop_all()
        network.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="leaders removed per way (SIGTERM, SIGKILL)")
    parser.add_argument("--wakes", type=int, default=20, help="RabbitMQ wake samples")
    parser.add_argument("--write", type=Path, default=None, help="write the markdown report here")
    args = parser.parse_args()
    started = datetime.datetime.now(datetime.UTC)
    with rig() as (plane, runner, kafka, rabbitmq, supervisor):
        rounds = []
        for how in ("SIGTERM", "SIGKILL"):
            rounds += failover(plane, runner, kafka, how, args.kills)
        wakes = rabbitmq_wakes(plane, supervisor, rabbitmq, args.wakes) if args.wakes else []
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
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
