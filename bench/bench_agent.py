"""The agent's cost and speed: memory, CPU, API requests per Deployment, burst-to-scale latency.

Starts the rig (control plane, Kafka, pod runner) itself and stops everything it started.
Agents run beside Kafka consumer pods under the pod runner, written into the manifest as the
injector would add them (tests/integration/rigkube.py). Not a test: numbers are reported,
never asserted.

1. Import: ``python -X importtime -c "import tidescale.agent"`` (top costs), VmRSS right after
   the import (and after uvloop + aiokafka, which a running Kafka agent also holds), and which
   heavy clients the import pulls in (kubernetes_asyncio must not be among them).
2. Steady state, one Deployment on a --partitions topic with --rate messages/s of traffic,
   min = max (nothing scales), default hints otherwise (polling interval 1 s): at 1 replica,
   at --peers + 1 replicas and at --replicas replicas (the leader raises min/max live by
   annotation). In each --window: every agent's VmRSS and CPU (utime + stime from /proc,
   millicores), and the API server's ``apiserver_request_total`` deltas by verb and resource,
   minus a baseline window taken with no Deployment of ours (the pod runner's node lease and
   the controller manager still talk). Cross-check: API Priority and Fairness dispatches the
   agents' requests (ServiceAccounts outside kube-system) under flow schema
   ``service-accounts`` and nothing else of the rig's, so its delta is the agents' own count,
   watches included when opened. Watches held open are read from
   ``apiserver_longrunning_requests``.
3. Per trigger type (--trigger-replicas, 0 to skip): the memory of a leader and a follower with a
   RabbitMQ trigger (a Deployment of the sample RabbitMQ consumer), beside the Kafka rows of 2.
   VmRSS, RssAnon, RssFile, Pss and threads of each, and whether the follower has loaded its
   broker client (it measures only when asked for /v1/lag).
4. Bursts (--bursts): a Deployment at 1 replica (max 2, lag threshold 100, polling interval 1 s,
   scale-down stabilization 2 s); --burst-messages messages produced at once; latency from just
   before the first send to the watch event showing spec.replicas changed. Between bursts it
   drains and scales back to 1.

    .venv/bin/python bench/bench_agent.py --write bench/results/agent.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "agent")]

from tests.integration.rigkube import (  # noqa: E402
    agent_container,
    apply,
    declare_queue,
    items,
    kafka_consumer_deployment,
    namespace_with_agent_rbac,
    rabbitmq_consumer_deployment,
    rabbitmq_hints,
)

TICKS = os.sysconf("SC_CLK_TCK")
PYTHON = str(REPO / ".venv" / "bin" / "python")
HEAVY = ("kubernetes_asyncio", "kubernetes", "aiokafka", "aio_pika", "aiormq", "yaml", "pydantic", "h2")


# ---------------------------------------------------------------------- import cost


# One fresh interpreter, one step after another: VmRSS / RssAnon / RssFile (KiB) after each, to show
# where a follower's memory goes and what the floor is.
_STEPS = """
def memory():
    wanted = ("VmRSS", "RssAnon", "RssFile")
    return [int(l.split()[1]) for l in open("/proc/self/status") if l.split(":")[0] in wanted]
steps = [("bare interpreter", memory())]
import asyncio, ssl
steps.append(("+ asyncio (with ssl, concurrent.futures, ...)", memory()))
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
steps.append(("+ one TLS context (the API client's holds the cluster's CA only)", memory()))
import orjson
steps.append(("+ orjson", memory()))
import tidescale.kube, tidescale.election, tidescale.httpserver
steps.append(("+ tidescale.kube, election, httpserver (the API client: _http1)", memory()))
import tidescale.agent
steps.append(("+ the rest of tidescale.agent (hints, policy, parking, registry, ...)", memory()))
from typing import Any, cast
from tidescale.agent import Agent, AgentEnv
async def follower():
    env = AgentEnv(pod_name="p", namespace="n", pod_ip="127.0.0.1", deployment="d")
    agent = Agent(env, cast(Any, None))
    hints = {"tidescale.io/kafka.bootstrap-servers": "k:9092", "tidescale.io/kafka.consumer-group": "g",
             "tidescale.io/rabbitmq.management-url": "http://r:15672", "tidescale.io/rabbitmq.queue": "q"}
    await agent.apply_deployment(cast(Any, {"metadata": {"annotations": hints}}))
asyncio.run(follower())
steps.append(("+ an Agent with Kafka and RabbitMQ hints applied (a follower nobody asked)", memory()))
import tidescale.sources.kafka._source, aiokafka, aiokafka.admin
steps.append(("+ aiokafka and the Kafka source (once it measures)", memory()))
import tidescale.sources.rabbitmq._source
steps.append(("+ the RabbitMQ source (management API over _http1)", memory()))
import httpx
httpx.AsyncClient()
steps.append(("+ httpx and one default client, for comparison (not loaded by an agent)", memory()))
import json
print(json.dumps(steps))
"""


def import_report() -> dict[str, Any]:
    """importtime's top costs, RSS after import, and which heavy clients the import loads."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "agent")}
    timing = subprocess.run(
        [PYTHON, "-X", "importtime", "-c", "import tidescale.agent"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stderr
    rows = []
    for line in timing.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if match:
            depth = len(match[3]) // 2
            rows.append((int(match[1]), int(match[2]), depth, match[4]))
    total = max(cumulative for _, cumulative, _, _ in rows)
    # Direct imports of tidescale.agent (importtime prints children before their parent).
    top_level = sorted((r for r in rows if r[2] == 1), key=lambda r: -r[1])
    by_self = sorted(rows, key=lambda r: -r[0])
    probe = (
        "import sys\n"
        "def rss():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmRSS'):\n"
        "            return int(line.split()[1])\n"
        "base = rss()\n"
        "import tidescale.agent\n"
        "after = rss()\n"
        f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r}))\n"
        "count = len(sys.modules)\n"
        "import aiokafka, aiokafka.admin\n"
        "print(base, after, rss(), count, ','.join(heavy))\n"
    )
    out = subprocess.run([PYTHON, "-c", probe], capture_output=True, text=True, env=env, check=True).stdout
    base, after, with_clients, count, heavy = out.split(" ")
    steps = json.loads(
        subprocess.run([PYTHON, "-c", _STEPS], capture_output=True, text=True, env=env, check=True).stdout
    )
    return {
        "steps": steps,
        "total_ms": total / 1000,
        "top_level": [(name, cumulative / 1000) for _, cumulative, _, name in top_level[:10]],
        "by_self": [(name, own / 1000) for own, _, _, name in by_self[:10]],
        "rss_bare_mib": int(base) / 1024,
        "rss_import_mib": int(after) / 1024,
        "rss_clients_mib": int(with_clients) / 1024,
        "modules": int(count),
        "heavy": [h for h in heavy.strip().split(",") if h],
    }


# ---------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def aiokafka_loaded(pid: int) -> bool:
    """Whether the process has imported aiokafka (its C extensions are mapped): a follower does so
    only once it measures its own lag, i.e. once someone asks its /v1/lag."""
    return b"/aiokafka/" in Path(f"/proc/{pid}/maps").read_bytes()


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS, its peak, its split (anonymous / file-backed: shared libraries, shared between
    agents through the page cache), the proportional share (Pss) and the thread count."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
            values[key] = int(rest.split()[0])
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key == "Pss":
            values[key] = int(rest.split()[0])
    return values


def agent_pids(runner: Any, namespace: str) -> dict[str, int]:
    """pod name -> pid of its agent process."""
    found = {}
    for key, pids in runner.pod_pids().items():
        ns, _, pod = key.partition("/")
        if ns != namespace:
            continue
        for pid in pids:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(part.endswith(b"tidescale") for part in cmdline) and b"agent" in cmdline:
                found[pod] = pid
    return found


# ---------------------------------------------------------------------- API server metrics

_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)\{(.*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True, kw_only=True, slots=True)
class ApiSnapshot:
    at: float
    requests: dict[tuple[str, str], float]
    """(verb, resource[/subresource]) -> apiserver_request_total summed over codes."""
    watches_open: dict[str, float]
    """resource -> apiserver_longrunning_requests{verb=WATCH}."""
    service_accounts: float
    """apiserver_flowcontrol_dispatched_requests_total{flow_schema=service-accounts}."""


def snapshot(plane: Any) -> ApiSnapshot:
    requests: dict[tuple[str, str], float] = defaultdict(float)
    watches: dict[str, float] = defaultdict(float)
    dispatched = 0.0
    for line in plane.apiserver_metrics().splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match[1], dict(_LABEL.findall(match[2])), float(match[3])
        resource = labels.get("resource", "") + (
            f"/{labels['subresource']}" if labels.get("subresource") else ""
        )
        if name == "apiserver_request_total":
            requests[(labels.get("verb", ""), resource)] += value
        elif name == "apiserver_longrunning_requests" and labels.get("verb") == "WATCH":
            watches[resource] += value
        elif (
            name == "apiserver_flowcontrol_dispatched_requests_total"
            and labels.get("flow_schema") == "service-accounts"
        ):
            dispatched += value
    return ApiSnapshot(
        at=time.monotonic(), requests=dict(requests), watches_open=dict(watches), service_accounts=dispatched
    )


def per_minute(before: ApiSnapshot, after: ApiSnapshot) -> dict[str, Any]:
    minutes = (after.at - before.at) / 60
    rates = {
        key: (after.requests.get(key, 0.0) - before.requests.get(key, 0.0)) / minutes
        for key in set(after.requests) | set(before.requests)
    }
    return {
        "requests": {k: v for k, v in rates.items() if v > 0},
        "service_accounts": (after.service_accounts - before.service_accounts) / minutes,
        "watches_open": after.watches_open,
        "minutes": minutes,
    }


# ---------------------------------------------------------------------- workload

_AGENT_RESOURCES = {
    "leases",
    "deployments",
    "deployments/scale",
    "pods",
    "events",
    "selfsubjectaccessreviews",
}


def consumer_deployment(
    name: str,
    *,
    bootstrap: str,
    topic: str,
    group: str,
    annotations: dict[str, str],
    replicas: int,
    agent_path: Path | None,
) -> dict[str, Any]:
    agent = agent_container(name, log_level="warning")
    if agent_path is not None:
        # A candidate agent (e.g. a git worktree with a change) ahead of the installed package.
        agent["env"].append({"name": "PYTHONPATH", "value": str(agent_path)})
    return kafka_consumer_deployment(
        name,
        bootstrap=bootstrap,
        topic=topic,
        group=group,
        env=[{"name": "WORK_SECONDS", "value": "0.02"}],
        metadata={"annotations": annotations},
        sidecars=[agent],
        replicas=replicas,
    )


def hints(bootstrap: str, topic: str, group: str, extra: dict[str, str]) -> dict[str, str]:
    base = {
        "kafka.bootstrap-servers": bootstrap,
        "kafka.consumer-group": group,
        "kafka.topic": topic,
        **extra,
    }
    return {f"tidescale.io/{key}": value for key, value in base.items()}


def ready_pods(plane: Any, namespace: str, app: str) -> list[str]:
    names = []
    for pod in items(plane, "pods", namespace, f"app={app}"):
        if pod["metadata"].get("deletionTimestamp"):
            continue
        conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
        if conditions.get("Ready") == "True":
            names.append(pod["metadata"]["name"])
    return sorted(names)


def all_pods(plane: Any, namespace: str, app: str) -> int:
    return len(items(plane, "pods", namespace, f"app={app}"))


def lease_holder(plane: Any, namespace: str, deployment: str) -> str | None:
    result = plane.kubectl(
        "get", "lease", f"tidescale-{deployment}", "-n", namespace, "-o", "json", check=False
    )
    if result.returncode != 0:
        return None
    holder = json.loads(result.stdout)["spec"].get("holderIdentity")
    return str(holder) if holder else None


async def wait_until(what: str, check: Callable[[], Any], *, limit: float, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + limit
    last = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(check)
        if last:
            return last
        await asyncio.sleep(interval)
    raise RuntimeError(f"timed out after {limit:.0f}s waiting for {what} (last seen: {last!r})")


class Traffic:
    """Steady light traffic: ``rate`` messages a second, keyed so they spread over the partitions."""

    def __init__(self, bootstrap: str, topic: str, rate: float) -> None:
        self.bootstrap, self.topic, self.rate = bootstrap, topic, rate
        self.sent = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        await producer.start()
        try:
            began = time.monotonic()
            while True:
                due = began + self.sent / self.rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                await producer.send(self.topic, b"x", key=uuid.uuid4().bytes)
                self.sent += 1
        finally:
            await producer.stop()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


# ---------------------------------------------------------------------- steady state


@dataclass(kw_only=True, slots=True)
class Phase:
    replicas: int
    leader: str
    api: dict[str, Any]
    leader_cpu: float
    leader_rss: float
    leader_hwm: float
    follower_cpu: list[float] = field(default_factory=list)
    follower_rss: list[float] = field(default_factory=list)
    follower_hwm: list[float] = field(default_factory=list)
    leader_memory: dict[str, int] = field(default_factory=dict)
    follower_memory: dict[str, int] = field(default_factory=dict)
    """One follower's memory detail (the one with the median RSS)."""


async def measure_window(
    plane: Any, runner: Any, namespace: str, deployment: str, replicas: int, window: float
) -> Phase:
    leader = await asyncio.to_thread(lease_holder, plane, namespace, deployment)
    assert leader is not None, "no leader"
    pids = agent_pids(runner, namespace)
    before_cpu = {pod: cpu_seconds(pid) for pod, pid in pids.items()}
    before_api = await asyncio.to_thread(snapshot, plane)
    began = time.monotonic()
    await asyncio.sleep(window)
    after_api = await asyncio.to_thread(snapshot, plane)
    elapsed = time.monotonic() - began
    after_leader = await asyncio.to_thread(lease_holder, plane, namespace, deployment)
    if after_leader != leader:
        print(f"warning: leader changed during the window: {leader} -> {after_leader}", flush=True)
    phase = Phase(
        replicas=replicas,
        leader=leader,
        api=per_minute(before_api, after_api),
        leader_cpu=0.0,
        leader_rss=0.0,
        leader_hwm=0.0,
    )
    followers: list[dict[str, int]] = []
    for pod, pid in pids.items():
        try:
            millicores = 1000 * (cpu_seconds(pid) - before_cpu[pod]) / elapsed
            memory = memory_kib(pid)
        except (OSError, KeyError):
            continue  # ended (or started) during the window
        memory["aiokafka"] = int(aiokafka_loaded(pid))
        rss, hwm = memory["VmRSS"] / 1024, memory["VmHWM"] / 1024
        if pod == leader:
            phase.leader_cpu, phase.leader_rss, phase.leader_hwm = millicores, rss, hwm
            phase.leader_memory = memory
        else:
            phase.follower_cpu.append(millicores)
            phase.follower_rss.append(rss)
            phase.follower_hwm.append(hwm)
            followers.append(memory)
    if followers:
        phase.follower_memory = sorted(followers, key=lambda m: m["VmRSS"])[len(followers) // 2]
    return phase


async def steady_state(args: argparse.Namespace, plane: Any, runner: Any, kafka: Any) -> dict[str, Any]:
    namespace, name = f"bench-agent-{uuid.uuid4().hex[:6]}", "orders"
    topic, group = f"steady-{uuid.uuid4().hex[:6]}", f"steady-{uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(kafka.create_topic, topic, args.partitions)
    await asyncio.to_thread(namespace_with_agent_rbac, plane, namespace)

    print(f"baseline: {args.window:g}s with no Deployment of ours", flush=True)
    await asyncio.sleep(5)
    before = await asyncio.to_thread(snapshot, plane)
    await asyncio.sleep(args.window)
    baseline = per_minute(before, await asyncio.to_thread(snapshot, plane))

    traffic = Traffic(kafka.bootstrap, topic, args.rate)
    traffic.start()
    phases: list[Phase] = []
    try:
        for index, replicas in enumerate(args.sizes):
            scale = {
                "min-replicas": str(replicas),
                "max-replicas": str(replicas),
                # So the leader goes from one size to the next in one step.
                "scale-up-policies": "100 pods/1s",
            }
            if index == 0:
                manifest = consumer_deployment(
                    name,
                    bootstrap=kafka.bootstrap,
                    topic=topic,
                    group=group,
                    annotations=hints(kafka.bootstrap, topic, group, scale),
                    replicas=replicas,
                    agent_path=args.agent_path,
                )
                await asyncio.to_thread(apply, plane, manifest, namespace=namespace)
            else:
                pairs = [f"tidescale.io/{key}={value}" for key, value in scale.items()]
                await asyncio.to_thread(
                    plane.kubectl, "annotate", "deployment", name, "-n", namespace, "--overwrite", *pairs
                )
            print(f"steady state at {replicas} replicas: waiting for the pods", flush=True)

            def settled(n: int = replicas) -> bool:
                return len(ready_pods(plane, namespace, name)) == n and all_pods(plane, namespace, name) == n

            await wait_until(
                f"{replicas} ready pods",
                settled,
                limit=240,
                interval=2.0,
            )
            await wait_until("a leader", lambda: lease_holder(plane, namespace, name), limit=60)
            await asyncio.sleep(args.settle)
            print(f"steady state at {replicas} replicas: measuring {args.window:g}s", flush=True)
            phase = await measure_window(plane, runner, namespace, name, replicas, args.window)
            print(
                json.dumps(
                    {
                        "replicas": replicas,
                        "leader_cpu": round(phase.leader_cpu, 1),
                        "leader_rss": round(phase.leader_rss, 1),
                        "follower_cpu_max": round(max(phase.follower_cpu, default=0), 1),
                        "service_accounts_per_min": round(phase.api["service_accounts"], 1),
                    }
                ),
                flush=True,
            )
            phases.append(phase)
    finally:
        await traffic.stop()
        await asyncio.to_thread(plane.kubectl, "delete", "namespace", namespace, "--wait=false")
    return {"baseline": baseline, "phases": phases, "traffic_sent": traffic.sent}


# ---------------------------------------------------------------------- per trigger type


async def rabbitmq_phase(
    args: argparse.Namespace, plane: Any, runner: Any, rabbitmq: Any, run_dir: Path
) -> Phase:
    """A Deployment of RabbitMQ consumers with agents (min = max = --trigger-replicas), measured as
    the steady phases are."""
    namespace, name = f"bench-rabbit-{uuid.uuid4().hex[:6]}", "jobs"
    queue, secret, replicas = f"jobs-{uuid.uuid4().hex[:6]}", "rabbitmq-credentials", args.trigger_replicas
    await asyncio.to_thread(namespace_with_agent_rbac, plane, namespace)
    await asyncio.to_thread(
        plane.kubectl, "create", "secret", "generic", secret, "-n", namespace,
        f"--from-literal=username={rabbitmq.username}", f"--from-literal=password={rabbitmq.password}",
    )  # fmt: skip
    await asyncio.to_thread(declare_queue, rabbitmq.amqp_url, queue)
    scale = {"min-replicas": str(replicas), "max-replicas": str(replicas)}
    manifest = rabbitmq_consumer_deployment(
        name,
        amqp_url=rabbitmq.amqp_url,
        queue=queue,
        secret=secret,
        annotations=rabbitmq_hints(rabbitmq.management_url, queue, secret, scale),
        record_file=run_dir / f"{namespace}-consumed.txt",
        replicas=replicas,
    )
    if args.agent_path is not None:
        for container in manifest["spec"]["template"]["spec"]["containers"]:
            if container["name"] != "consumer":
                container["env"].append({"name": "PYTHONPATH", "value": str(args.agent_path)})
    try:
        await asyncio.to_thread(apply, plane, manifest, namespace=namespace)
        print(f"rabbitmq trigger at {replicas} replicas: waiting for the pods", flush=True)
        await wait_until(
            f"{replicas} ready pods",
            lambda: len(ready_pods(plane, namespace, name)) == replicas,
            limit=240,
            interval=2.0,
        )
        await wait_until("a leader", lambda: lease_holder(plane, namespace, name), limit=60)
        await asyncio.sleep(args.settle)
        print(f"rabbitmq trigger at {replicas} replicas: measuring {args.window:g}s", flush=True)
        return await measure_window(plane, runner, namespace, name, replicas, args.window)
    finally:
        await asyncio.to_thread(plane.kubectl, "delete", "namespace", namespace, "--wait=false")


# ---------------------------------------------------------------------- bursts


async def bursts(args: argparse.Namespace, plane: Any, kafka: Any) -> dict[str, Any]:
    from aiokafka import AIOKafkaProducer

    from tidescale.kube import KubeClient, KubeConfig

    namespace, name = f"bench-burst-{uuid.uuid4().hex[:6]}", "orders"
    topic, group = f"burst-{uuid.uuid4().hex[:6]}", f"burst-{uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(kafka.create_topic, topic, args.partitions)
    await asyncio.to_thread(namespace_with_agent_rbac, plane, namespace)
    annotations = hints(
        kafka.bootstrap,
        topic,
        group,
        {
            "min-replicas": "1",
            "max-replicas": "2",
            "kafka.lag-threshold": "100",
            "polling-interval": "1s",
            "scale-up-policies": "10 pods/1s",
            "scale-down-stabilization": "2s",
        },
    )
    manifest = consumer_deployment(
        name,
        bootstrap=kafka.bootstrap,
        topic=topic,
        group=group,
        annotations=annotations,
        replicas=1,
        agent_path=args.agent_path,
    )
    await asyncio.to_thread(apply, plane, manifest, namespace=namespace)
    await wait_until("the first pod", lambda: ready_pods(plane, namespace, name), limit=120, interval=1.0)
    await wait_until("a leader", lambda: lease_holder(plane, namespace, name), limit=60)
    await asyncio.sleep(3)

    changes: list[tuple[float, int]] = []
    seen: dict[str, int] = {}
    changed = asyncio.Event()

    async def watch(client: KubeClient) -> None:
        async for kind, deployment in client.watch_deployment(namespace, name):
            if kind == "DELETED":
                continue
            replicas = int((deployment.get("spec") or {}).get("replicas", 1))
            if replicas != seen.get("replicas"):
                seen["replicas"] = replicas
                changes.append((time.monotonic(), replicas))
                changed.set()

    latencies: list[float] = []
    failures = 0
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, linger_ms=0)
    await producer.start()
    try:
        async with KubeClient(KubeConfig.from_kubeconfig(plane.admin_kubeconfig)) as client:
            watcher = asyncio.create_task(watch(client))
            try:
                for burst in range(args.bursts):
                    await wait_until(
                        "back at 1 replica, one pod",
                        lambda: seen.get("replicas") == 1 and all_pods(plane, namespace, name) == 1,
                        limit=120,
                        interval=0.5,
                    )
                    await asyncio.sleep(args.quiet)
                    marker = len(changes)
                    changed.clear()
                    began = time.monotonic()
                    sends = [
                        await producer.send(topic, b"b", key=uuid.uuid4().bytes)
                        for _ in range(args.burst_messages)
                    ]
                    await asyncio.gather(*sends)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout_at(asyncio.get_running_loop().time() + 30):
                            await changed.wait()
                    if len(changes) == marker:
                        failures += 1
                        print(f"burst {burst}: no scale within 30 s", flush=True)
                        continue
                    at, replicas = changes[marker]
                    latencies.append(at - began)
                    print(f"burst {burst}: 1 -> {replicas} after {at - began:.3f}s", flush=True)
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
    finally:
        await producer.stop()
        await asyncio.to_thread(plane.kubectl, "delete", "namespace", namespace, "--wait=false")
    return {"latencies": latencies, "failures": failures}


# ---------------------------------------------------------------------- report


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal"):
            memory = int(line.split()[1]) // 1024
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    return (
        f"{model}, nproc {nproc} (shared with other jobs), {memory / 1024:.1f} GiB memory, "
        f"Linux {platform.release()}, Python {platform.python_version()}"
    )


def _fmt(values: list[float], digits: int = 1) -> str:
    if not values:
        return "-"
    return (
        f"{statistics.median(values):.{digits}f} / {max(values):.{digits}f}"
        if len(values) > 1
        else f"{values[0]:.{digits}f}"
    )


def report(
    args: argparse.Namespace,
    started: datetime.datetime,
    imports: dict[str, Any],
    steady: dict[str, Any] | None,
    burst: dict[str, Any] | None,
    load: str,
    rabbit: Phase | None = None,
) -> str:
    lines = [
        "# Agent: memory, CPU, API requests, burst-to-scale latency",
        "",
        f"Date: {started:%Y-%m-%d %H:%M} UTC. Machine: {machine()}. Load average at the end: {load}. "
        "API server, controller manager, Kafka and every pod (consumer + agent) run on this machine "
        "(the rig). Agents: "
        + (f"from `{args.agent_path}` (PYTHONPATH)" if args.agent_path else "the repository's package")
        + ". Command: `.venv/bin/python bench/bench_agent.py "
        + " ".join(sys.argv[1:])
        + "`.",
        "",
        "## Import",
        "",
        f'`python -X importtime -c "import tidescale.agent"`: {imports["total_ms"]:.0f} ms in all, '
        f"{imports['modules']} modules. VmRSS: bare interpreter {imports['rss_bare_mib']:.1f} MiB, after "
        f"`import tidescale.agent` {imports['rss_import_mib']:.1f} MiB, after also importing "
        "aiokafka (what an agent with a Kafka trigger holds once it measures) "
        f"{imports['rss_clients_mib']:.1f} MiB. "
        "Heavy clients in `sys.modules` right after the import: "
        + (", ".join(imports["heavy"]) if imports["heavy"] else "none")
        + f" (checked: {', '.join(HEAVY)}).",
        "",
        "| imported by tidescale.agent | cumulative ms | | module | self ms |",
        "|---|---:|---|---|---:|",
    ]
    for (name, cum), (own_name, own) in zip(imports["top_level"], imports["by_self"], strict=False):
        lines.append(f"| {name} | {cum:.1f} | | {own_name} | {own:.1f} |")
    lines += [
        "",
        "Where the memory goes, step by step in one fresh interpreter (KiB after each step; the "
        "last steps are what measuring adds, and httpx for comparison):",
        "",
        "| step | VmRSS | RssAnon | RssFile | VmRSS added |",
        "|---|---:|---:|---:|---:|",
    ]
    previous = None
    for name, (rss, anon, file_backed) in imports["steps"]:
        added = "" if previous is None else f"{rss - previous:+,}"
        lines.append(f"| {name} | {rss:,} | {anon:,} | {file_backed:,} | {added} |")
        previous = rss
    if steady is not None:
        phases: list[Phase] = steady["phases"]
        lines += [
            "",
            "## Steady state: RSS and CPU",
            "",
            f"One Deployment of Kafka consumers (each pod: consumer + agent), {args.partitions}-partition "
            f"topic, {args.rate:g} messages/s of steady traffic, min = max = replicas, polling interval 1 s "
            f"(default), lease timings client-go's defaults. After all pods are Ready, {args.settle:g} s to "
            f"settle, then a {args.window:g} s window: CPU = (utime + stime) delta of each agent process "
            "from /proc/<pid>/stat over the window, in millicores; RSS = VmRSS (and peak VmHWM) from "
            "/proc/<pid>/status at its end. Followers: median / max over all followers.",
            "",
            "| replicas | leader CPU mc | leader RSS MiB | leader peak MiB | follower CPU mc | "
            "follower RSS MiB | follower peak MiB |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for p in phases:
            lines.append(
                f"| {p.replicas} | {p.leader_cpu:.1f} | {p.leader_rss:.1f} | {p.leader_hwm:.1f} | "
                f"{_fmt(p.follower_cpu)} | {_fmt(p.follower_rss)} | {_fmt(p.follower_hwm)} |"
            )
        lines += [
            "",
            "Targets: RSS <= 40 MiB, follower CPU <= 5 millicores.",
            "",
            "Where the RSS is (KiB, at the end of each window; the follower is the one with the median "
            "RSS): RssAnon is the process's own memory, RssFile the mapped files (the interpreter, "
            "libcrypto/libssl, extension modules: shared through the page cache by every agent on a "
            "node), Pss the proportional share with those shared pages divided among their users.",
            "",
            "| replicas | who | VmRSS | RssAnon | RssFile | Pss | threads |",
            "|---:|---|---:|---:|---:|---:|---:|",
        ]
        for p in phases:
            for who, memory in (("leader", p.leader_memory), ("follower", p.follower_memory)):
                if memory:
                    lines.append(
                        f"| {p.replicas} | {who} | {memory['VmRSS']:,} | {memory['RssAnon']:,} | "
                        f"{memory['RssFile']:,} | {memory.get('Pss', 0):,} | {memory['Threads']} |"
                    )
    if steady is not None or rabbit is not None:
        rows: list[tuple[str, Phase]] = []
        if steady is not None:
            with_followers = [p for p in steady["phases"] if p.follower_memory]
            rows += [("kafka", p) for p in with_followers[:1]]
        if rabbit is not None:
            rows.append(("rabbitmq", rabbit))
        lines += [
            "",
            "## Memory per trigger type",
            "",
            "The leader and the median follower of one Deployment per trigger type (Kafka: the "
            "steady phase above with followers; RabbitMQ: a Deployment of the sample RabbitMQ consumer, "
            "min = max = replicas, polling interval 1 s, measured as the steady phases). KiB. "
            '"aiokafka" says whether the process had imported aiokafka (its C extensions mapped): '
            "a follower measures (and opens its broker client) only when asked for its /v1/lag.",
            "",
            "| trigger | replicas | who | VmRSS | RssAnon | RssFile | Pss | threads | aiokafka |",
            "|---|---:|---|---:|---:|---:|---:|---:|---|",
        ]
        for trigger, p in rows:
            for who, memory in (("leader", p.leader_memory), ("follower", p.follower_memory)):
                if memory:
                    lines.append(
                        f"| {trigger} | {p.replicas} | {who} | {memory['VmRSS']:,} | {memory['RssAnon']:,} | "
                        f"{memory['RssFile']:,} | {memory.get('Pss', 0):,} | {memory['Threads']} | "
                        f"{'yes' if memory.get('aiokafka') else 'no'} |"
                    )
    if steady is not None:
        phases = steady["phases"]
        baseline = steady["baseline"]
        keys = sorted(
            {key for p in phases for key in p.api["requests"]} | set(baseline["requests"]),
            key=lambda k: (k[1], k[0]),
        )
        keys = [k for k in keys if k[1] in _AGENT_RESOURCES or baseline["requests"].get(k, 0) > 0]
        lines += [
            "",
            "## API requests per Deployment per minute",
            "",
            "From the API server's `apiserver_request_total`, delta over each window, per minute, by "
            "verb and resource. The baseline window (no Deployment of ours; the pod runner renews its "
            "node Lease and reports pods, the controller manager runs) is shown first; the row "
            '"agents (APF)" is the delta of `apiserver_flowcontrol_dispatched_requests_total'
            '{flow_schema="service-accounts"}`, which only the agents\' ServiceAccount tokens hit in '
            "the rig, so it is the agents' own request rate with no baseline to subtract. "
            "`apiserver_request_total` counts a WATCH when it ends (the agent's watches last 5-10 min, "
            'so a 60 s window sees few); APF counts it when it starts. "watches open" is '
            "`apiserver_longrunning_requests{verb=WATCH}` at the end of the window, all clients.",
            "",
            "| verb | resource | baseline | " + " | ".join(f"{p.replicas} repl." for p in phases) + " |",
            "|---|---|---:|" + "---:|" * len(phases),
        ]
        for verb, resource in keys:
            row = [f"{baseline['requests'].get((verb, resource), 0):.1f}"]
            row += [f"{p.api['requests'].get((verb, resource), 0):.1f}" for p in phases]
            lines.append(f"| {verb} | {resource} | " + " | ".join(row) + " |")
        lines.append(
            "| all | agents (APF) | "
            + f"{baseline['service_accounts']:.1f} | "
            + " | ".join(f"**{p.api['service_accounts']:.1f}**" for p in phases)
            + " |"
        )
        for resource in ("leases", "deployments", "pods"):
            lines.append(
                f"| WATCH | {resource}: watches open | {baseline['watches_open'].get(resource, 0):.0f} | "
                + " | ".join(f"{p.api['watches_open'].get(resource, 0):.0f}" for p in phases)
                + " |"
            )
        lines += [
            "",
            "Target: flat in replicas. Steady traffic sent during these phases: "
            f"{steady['traffic_sent']} messages.",
        ]
    if burst is not None:
        latencies = burst["latencies"]
        lines += [
            "",
            "## Burst to scale",
            "",
            "A Deployment at 1 replica (min 1, max 2, `kafka.lag-threshold` 100, polling interval 1 s, "
            f"scale-up 10 pods/1s, scale-down stabilization 2 s) on a {args.partitions}-partition topic. "
            f"Each burst: {args.burst_messages} messages sent at once; latency from just before the first "
            "send to the arrival of the watch event (a watch on the Deployment in the benchmark process) "
            "showing spec.replicas changed. Between bursts: back at 1 replica with one pod left, then "
            f"{args.quiet:g} s quiet.",
            "",
            "| bursts | scaled | p50 s | p95 s | min s | max s |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        if latencies:
            lines.append(
                f"| {len(latencies) + burst['failures']} | {len(latencies)} | "
                f"{statistics.median(latencies):.3f} | {percentile(latencies, 0.95):.3f} | "
                f"{min(latencies):.3f} | {max(latencies):.3f} |"
            )
        lines += [
            "",
            "Each latency (s): " + ", ".join(f"{v:.2f}" for v in latencies),
            "",
            "Targets: p50 <= 1.5 s, p95 <= 3 s.",
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- main


@contextmanager
def rig(*, with_rabbitmq: bool) -> Iterator[tuple[Any, Any, Any, Any, Path]]:
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
        rabbitmq = RabbitMQ.start(supervisor, network, run_dir) if with_rabbitmq else None
        runner = PodRunner(
            kubeconfig=plane.admin_kubeconfig, server=plane.server, network=network, run_dir=run_dir
        ).start()
        yield plane, runner, kafka, rabbitmq, run_dir
    finally:
        if runner is not None:
            runner.stop()
        supervisor.stop_all()
        network.close()


async def run(
    args: argparse.Namespace, plane: Any, runner: Any, kafka: Any, rabbitmq: Any, run_dir: Path
) -> tuple[Any, Any, Any]:
    steady = await steady_state(args, plane, runner, kafka) if not args.skip_steady else None
    rabbit = await rabbitmq_phase(args, plane, runner, rabbitmq, run_dir) if rabbitmq is not None else None
    burst = await bursts(args, plane, kafka) if args.bursts > 0 else None
    return steady, burst, rabbit


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--window", type=float, default=60.0, help="seconds per measuring window")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds after all pods are Ready")
    parser.add_argument("--peers", type=int, default=10, help="followers beside the leader in phase 2")
    parser.add_argument("--replicas", type=int, default=20, help="replicas of the largest phase")
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--rate", type=float, default=5.0, help="steady traffic, messages per second")
    parser.add_argument("--bursts", type=int, default=15)
    parser.add_argument("--burst-messages", type=int, default=200)
    parser.add_argument("--quiet", type=float, default=2.0, help="seconds at 1 replica before a burst")
    parser.add_argument("--skip-steady", action="store_true")
    parser.add_argument("--only-import", action="store_true", help="the import section alone (no rig)")
    parser.add_argument(
        "--trigger-replicas", type=int, default=3, help="replicas of the RabbitMQ phase (0: skip it)"
    )
    parser.add_argument(
        "--agent-path",
        type=Path,
        default=None,
        help="run the agents from this directory's tidescale package (PYTHONPATH), to compare a change",
    )
    parser.add_argument("--write", type=Path, default=None, help="write the markdown report here")
    args = parser.parse_args()
    args.sizes = sorted({1, args.peers + 1, args.replicas})

    started = datetime.datetime.now(datetime.UTC)
    imports = import_report()
    print(json.dumps({k: v for k, v in imports.items() if k not in ("top_level", "by_self")}), flush=True)
    steady = burst = rabbit = None
    if not args.only_import:
        with rig(with_rabbitmq=args.trigger_replicas > 0) as (plane, runner, kafka, rabbitmq, run_dir):
            steady, burst, rabbit = asyncio.run(run(args, plane, runner, kafka, rabbitmq, run_dir))
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    text = report(args, started, imports, steady, burst, load, rabbit)
    print(text)
    if args.write is not None:
        args.write.write_text(text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
