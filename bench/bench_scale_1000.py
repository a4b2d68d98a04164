"""A thousand replicas: one Deployment scaled 0 -> 1,000 -> 0 on the rig, most of its agents played
by a swarm.

Starts the rig itself (control plane, Kafka, pod runner) and stops everything it started. Not a
test: numbers are reported, never asserted.

The Deployment ``orders`` (12 partitions, hints ``paused: true`` so the leader measures, decides and
writes its status every interval but leaves the count to this script) has pods of two kinds:

* ``--real`` (3) real pods: bound to the pod runner's node, each a real Kafka consumer and a real
  ``tidescale agent`` process in its own network namespace. The leader's cost is read from one of
  these: its CPU from /proc, its own /metrics (measurements, peer requests), its writes from the
  API server's audit log.
* every other pod: bound to a Node ``swarm-node`` that no kubelet serves, marked Running and Ready
  by the swarm (as a kubelet would), and played by a **stand-in** in one swarm process
  (``bench_scale_1000.py swarm``): per pod, the agent's own :class:`tidescale.agent.Agent` with
  its own :class:`tidescale.kube.KubeClient` (own connections, the workload ServiceAccount's
  token), running the agent's own RBAC check, Deployment watch and Lease campaign
  (:class:`tidescale.election.LeaseElector`, its Lease watch), exactly the tasks ``Agent.run``
  starts except the HTTP server. A stand-in that wins the Lease leads for real.

Phases:

1. Steps with a real leader: 3 (real pods only), then 10, 100, 1,000. Per step, the API server's
   CPU, memory, open watches and watch events sent over the transition (times until the pods are
   requested, bound, and every stand-in campaigns); then a steady window with the same, and the
   leader's CPU, measurements, peer requests and writes per polling interval. A step that does not
   settle within ``--limit`` is measured where it got to, and the report says so.
2. Takeover among every replica: the real leader's pod deleted (SIGTERM, the agent releases the
   Lease): time from the delete to the first Lease write by a new holder, and the Lease writes
   (with 409 conflicts) the candidates make. Then the new leader crashes without releasing
   (SIGKILL for a real pod, a cancelled stand-in that does not release): time until another
   takes over (the Lease expires).
3. Back to 0.
4. The burst alone: 0 -> 1,000 in one write with the swarm paused (nothing binds the pods), so
   the time to 1,000 pods requested is the API server's and the ReplicaSet controller's; back to 0.

    .venv/bin/python bench/bench_scale_1000.py --write bench/results/scale-1000.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from _common import cpu_seconds, load_average, machine, memory_kib

SWARM_NODE = "swarm-node"
SCHEDULER = "tidescale-bench-swarm"
APP = "orders"

# ====================================================================== the swarm process


@dataclass
class StandIn:
    """One follower's stand-in: the agent's own classes, minus the HTTP server."""

    name: str
    agent: Any
    client: Any
    task: asyncio.Task[None] | None = None


class Swarm:
    def __init__(self, args: argparse.Namespace) -> None:
        from tidescale.kube import KubeClient, KubeConfig

        self.args = args
        self.admin = KubeClient(KubeConfig.from_kubeconfig(args.admin_kubeconfig), timeout=30.0)
        self.config = KubeConfig.from_kubeconfig(args.kubeconfig)
        self.stand_ins: dict[str, StandIn] = {}
        self.real: set[str] = set()
        self.handled: set[str] = set()
        self.crashed: set[str] = set()
        self.limit = asyncio.Semaphore(16)
        self.background: set[asyncio.Task[None]] = set()
        self.lag_requests = 0
        self.paused = False

    async def run(self) -> None:
        await self._node()
        server = None
        if self.args.serve_lag:
            from tidescale.httpserver import HttpServer

            # Every stand-in's pod address is this one: one server answers /v1/lag for all of them
            # through a stand-in's own handler (one local measurement per polling interval).
            server = HttpServer({"/v1/lag": {"GET": self._lag}}, host=self.args.address, port=9464)
            await server.start()
        try:
            await self._serve()
        finally:
            if server is not None:
                await server.stop(grace=1.0)

    async def _lag(self, request: Any) -> Any:
        from tidescale.httpserver import Response

        self.lag_requests += 1
        for stand_in in self.stand_ins.values():
            return await stand_in.agent._lag(request)
        return Response(status=503, body=b"no stand-in\n")

    async def _serve(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._watch())
            tasks.create_task(self._report())
            tasks.create_task(self._commands())

    async def _api(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        async with self.limit:
            return await self.admin._request(
                method, path, what=f"{method} {path}", body=body, content_type=content_type
            )

    async def _node(self) -> None:
        from tidescale.errors import KubeConflict

        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": SWARM_NODE}}
        with contextlib.suppress(KubeConflict):
            await self._api("POST", "/api/v1/nodes", node)

    async def _watch(self) -> None:
        async for kind, pod in self.admin.watch_pods(self.args.namespace, f"app={APP}"):
            meta: dict[str, Any] = dict(cast(Any, pod).get("metadata") or {})
            spec: dict[str, Any] = dict(cast(Any, pod).get("spec") or {})
            name = meta.get("name", "")
            if kind == "DELETED":
                self.real.discard(name)
                self.handled.discard(name)
                self._spawn(self._stop(name))
                continue
            node = spec.get("nodeName")
            if meta.get("deletionTimestamp"):
                if node == SWARM_NODE and name in self.handled:
                    self.handled.discard(name)
                    self._spawn(self._delete(name, meta.get("uid", "")))
                continue
            if name in self.handled or (self.paused and not node):
                continue
            if not node:
                self.handled.add(name)
                target = "rig-node" if len(self.real) < self.args.real else SWARM_NODE
                if target == "rig-node":
                    self.real.add(name)
                self._spawn(self._bind(name, meta.get("uid", ""), target))
            elif node == "rig-node":
                self.handled.add(name)
                self.real.add(name)

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _bind(self, name: str, uid: str, node: str) -> None:
        ns = self.args.namespace
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": ns, "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        for attempt in range(5):  # an overloaded API server answers some with 500 or 504
            try:
                await self._api("POST", f"/api/v1/namespaces/{ns}/pods/{name}/binding", binding)
                break
            except Exception as error:
                if "already assigned" in str(error):
                    break  # an earlier attempt timed out but was made
                if attempt == 4:
                    print(json.dumps({"error": f"bind {name}: {error}"}), flush=True)
                    return
                await asyncio.sleep(1.0 + attempt)
        if node != SWARM_NODE:
            return
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        address = self.args.address
        status = {
            "status": {
                "phase": "Running",
                "hostIP": address,
                "podIP": address,
                "podIPs": [{"ip": address}],
                "startTime": now,
                "conditions": [
                    {"type": kind, "status": "True", "lastTransitionTime": now}
                    for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
                ],
            }
        }
        self._start(name)
        try:
            await self._api(
                "PATCH",
                f"/api/v1/namespaces/{ns}/pods/{name}/status",
                status,
                content_type="application/merge-patch+json",
            )
        except Exception as error:
            print(json.dumps({"error": f"status {name}: {error}"}), flush=True)

    def _start(self, name: str) -> None:
        from tidescale.agent import Agent, AgentEnv
        from tidescale.kube import KubeClient

        client = KubeClient(self.config)
        env = AgentEnv(pod_name=name, namespace=self.args.namespace, pod_ip=self.args.address, deployment=APP)
        stand_in = StandIn(name=name, agent=Agent(env, client), client=client)
        stand_in.task = asyncio.create_task(self._run_stand_in(stand_in), name=f"stand-in-{name}")
        self.stand_ins[name] = stand_in

    async def _run_stand_in(self, stand_in: StandIn) -> None:
        agent = stand_in.agent
        try:
            async with asyncio.TaskGroup() as tasks:
                if not self.args.skip_rbac_check:
                    tasks.create_task(agent._check_permissions())
                tasks.create_task(agent._watch_deployment())
                tasks.create_task(agent._campaign())
        except Exception as error:  # a stand-in that dies is reported, not hidden
            print(json.dumps({"error": f"stand-in {stand_in.name}: {error!r}"}), flush=True)
        finally:
            await agent._pool.close()
            await stand_in.client.aclose()

    async def _stop(self, name: str, *, release: bool = True) -> None:
        stand_in = self.stand_ins.pop(name, None)
        if stand_in is None or stand_in.task is None:
            return
        if not release and stand_in.agent._elector is not None:
            stand_in.agent._elector._release_on_cancel = False  # a crash: the Lease must expire
        stand_in.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await stand_in.task

    async def _delete(self, name: str, uid: str) -> None:
        await self._stop(name)
        ns = self.args.namespace
        with contextlib.suppress(Exception):
            await self._api(
                "DELETE",
                f"/api/v1/namespaces/{ns}/pods/{name}",
                {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}},
            )

    def leader(self) -> str | None:
        for name, stand_in in self.stand_ins.items():
            elector = stand_in.agent._elector
            if elector is not None and elector.is_leader():
                return name
        return None

    async def _report(self) -> None:
        pid = os.getpid()
        while True:
            campaigning = sum(1 for s in self.stand_ins.values() if s.agent._elector is not None)
            state = {
                "at": time.time(),
                "standIns": len(self.stand_ins),
                "campaigning": campaigning,
                "real": sorted(self.real),
                "leader": self.leader(),
                "cpu": cpu_seconds(pid),
                "rssKiB": memory_kib(pid)["VmRSS"],
                "lagRequests": self.lag_requests,
            }
            print(json.dumps(state), flush=True)
            await asyncio.sleep(0.5)

    async def _commands(self) -> None:
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := (await reader.readline()).decode().strip():
            if line in ("pause", "resume"):
                self.paused = line == "pause"
                print(json.dumps({"paused": self.paused, "at": time.time()}), flush=True)
            if line == "crash-leader":
                name = self.leader()
                at = time.time()
                if name is not None:
                    self.crashed.add(name)
                    stand_in = self.stand_ins.get(name)
                    if stand_in is not None and stand_in.agent._elector is not None:
                        stand_in.agent._elector._release_on_cancel = False  # a crash: the Lease must expire
                    self._spawn(self._stop(name, release=False))
                print(json.dumps({"crashed": name, "at": at}), flush=True)


def swarm_main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.ERROR, filename=args.log, format="%(asctime)s %(name)s %(message)s")
    import uvloop

    async def until_terminated() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await Swarm(args).run()

    uvloop.run(until_terminated())
    return 0


# ====================================================================== measuring

_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass
class ApiSnapshot:
    at: float
    cpu: float = 0.0
    rss: float = 0.0
    watches: dict[str, float] = field(default_factory=dict)
    watch_events: dict[str, float] = field(default_factory=dict)
    watch_bytes: float = 0.0
    requests: dict[tuple[str, str, str], float] = field(default_factory=dict)


def api_snapshot(plane: Any) -> ApiSnapshot:
    snap = ApiSnapshot(at=time.monotonic())
    watches: dict[str, float] = defaultdict(float)
    events: dict[str, float] = defaultdict(float)
    requests: dict[tuple[str, str, str], float] = defaultdict(float)
    for line in plane.apiserver_metrics().splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match[1], dict(_LABEL.findall(match[2] or "")), float(match[3])
        resource = labels.get("resource") or labels.get("kind") or ""
        if name == "process_cpu_seconds_total":
            snap.cpu = value
        elif name == "process_resident_memory_bytes":
            snap.rss = value
        elif name == "apiserver_longrunning_requests" and labels.get("verb") == "WATCH":
            watches[resource] += value
        elif name == "apiserver_watch_events_total":
            events[resource] += value
        elif name == "apiserver_watch_events_sizes_sum":
            snap.watch_bytes += value
        elif name == "apiserver_request_total":
            sub = f"/{labels['subresource']}" if labels.get("subresource") else ""
            requests[(labels.get("verb", ""), resource + sub, labels.get("code", ""))] += value
    snap.watches, snap.watch_events, snap.requests = dict(watches), dict(events), dict(requests)
    return snap


def api_delta(before: ApiSnapshot, after: ApiSnapshot) -> dict[str, Any]:
    def diff(a: dict[Any, float], b: dict[Any, float]) -> dict[Any, float]:
        return {
            k: b.get(k, 0.0) - a.get(k, 0.0) for k in set(a) | set(b) if b.get(k, 0.0) - a.get(k, 0.0) > 0
        }

    return {
        "seconds": after.at - before.at,
        "cpu": after.cpu - before.cpu,
        "rss_mib": after.rss / 2**20,
        "rss_before_mib": before.rss / 2**20,
        "watches": {k: v for k, v in after.watches.items() if v},
        "watches_total": sum(after.watches.values()),
        "watch_events": diff(before.watch_events, after.watch_events),
        "watch_bytes": after.watch_bytes - before.watch_bytes,
        "requests": diff(before.requests, after.requests),
    }


class SwarmProcess:
    """The swarm subprocess and the last state it reported."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.popen = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log.open("ab"), text=True
        )
        self.state: dict[str, Any] = {}
        self.crashes: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.paused = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if "crashed" in message:
                    self.crashes.append(message)
                elif "paused" in message:
                    self.paused = message["paused"]
                elif "error" in message:
                    self.errors.append(message["error"])
                else:
                    self.state = message

    def check(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"the swarm process ended (exit {self.popen.returncode}); see swarm.stderr")

    def send(self, command: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(command + "\n")
        self.popen.stdin.flush()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def wait(what: str, check: Any, *, limit: float, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(interval)
    raise RuntimeError(f"timed out after {limit:g}s waiting for {what}")


class PodView:
    """The Deployment's pods as one watch (the agent's own watch code) keeps them: the script polls
    this, not the API server, so that its own reads do not weigh on what it measures."""

    def __init__(self, admin_kubeconfig: Path, namespace: str) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self._config, self._namespace = admin_kubeconfig, namespace
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    async def _run(self) -> None:
        from tidescale.kube import KubeClient, KubeConfig

        async with KubeClient(KubeConfig.from_kubeconfig(self._config), timeout=60.0) as client:
            async for kind, pod in client.watch_pods(self._namespace, f"app={APP}"):
                name = (pod.get("metadata") or {}).get("name", "")
                if kind == "DELETED":
                    self.pods.pop(name, None)
                else:
                    self.pods[name] = dict(pod)


class Cluster:
    """What the script asks of the rig, synchronously (kubectl and the admin's HTTP)."""

    def __init__(self, plane: Any, runner: Any, namespace: str) -> None:
        import httpx

        self.plane, self.runner, self.namespace = plane, runner, namespace
        self.view = PodView(plane.admin_kubeconfig, namespace)
        from tidescale.kube import KubeConfig

        admin = KubeConfig.from_kubeconfig(Path(plane.admin_kubeconfig))
        self.http = httpx.Client(base_url=plane.server, verify=admin.ssl_context(), timeout=60.0)

    def get(self, path: str, **params: str) -> Any:
        response = self.http.get(path, params=params)
        response.raise_for_status()
        return response.json()

    def pods(self) -> list[dict[str, Any]]:
        return list(self.view.pods.values())

    def scale(self, replicas: int) -> float:
        body = {"spec": {"replicas": replicas}}
        began = time.monotonic()
        response = self.http.patch(
            f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{APP}/scale",
            content=json.dumps(body),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        if response.status_code >= 300:
            raise RuntimeError(f"scale to {replicas}: {response.status_code} {response.text[:500]}")
        return began

    def lease(self) -> dict[str, Any]:
        try:
            return dict(
                self.get(f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/tidescale-{APP}")
            )
        except Exception:
            return {}

    def holder(self) -> str | None:
        return (self.lease().get("spec") or {}).get("holderIdentity") or None


def agent_pid(runner: Any, namespace: str, pod: str) -> int | None:
    for pid in runner.pod_pids().get(f"{namespace}/{pod}", []):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if any(part.endswith(b"tidescale") for part in cmdline) and b"agent" in cmdline:
                return int(pid)
    return None


def agent_metrics(address: str) -> dict[str, float]:
    """The leader's own counters (its /metrics on the pod network), summed over labels."""
    import httpx

    values: dict[str, float] = defaultdict(float)
    text = httpx.get(f"http://{address}:9464/metrics", timeout=5.0).text
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels = match[1], dict(_LABEL.findall(match[2] or ""))
        if name in ("tidescale_measurements_total", "tidescale_decisions_total"):
            values[f"{name}{{scope={labels.get('scope', '')}}}" if "scope" in labels else name] += float(
                match[3]
            )
        elif name == "tidescale_peer_requests_total":
            values[name] += float(match[3])
    return dict(values)


def leader_writes(plane: Any, namespace: str, pod: str, since: str, until: str) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for event in plane.audit_events():
        ref = event.get("objectRef") or {}
        if ref.get("namespace") != namespace or not since <= event.get("stageTimestamp", "") <= until:
            continue
        extra = (event.get("user") or {}).get("extra") or {}
        if (extra.get("authentication.kubernetes.io/pod-name") or [None])[0] != pod:
            continue
        resource = str(ref.get("resource", "")) + ("/" + ref["subresource"] if ref.get("subresource") else "")
        counts[f"{event['verb']} {resource}"] += 1
    return dict(counts)


def lease_writes_after(plane: Any, namespace: str, since: str) -> list[dict[str, Any]]:
    """Lease writes (any code) received after ``since``, oldest first."""
    found = []
    for event in plane.audit_events():
        ref = event.get("objectRef") or {}
        if ref.get("namespace") != namespace or ref.get("resource") != "leases":
            continue
        if event.get("requestReceivedTimestamp", "") < since:
            continue
        found.append(event)
    return sorted(found, key=lambda e: e["requestReceivedTimestamp"])


def utc_micro() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_micro(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC)


# ====================================================================== phases


def ready_real(cluster: Cluster, count: int) -> list[dict[str, Any]]:
    pods = [
        p
        for p in cluster.pods()
        if (p.get("spec") or {}).get("nodeName") == "rig-node"
        and not p["metadata"].get("deletionTimestamp")
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (p.get("status") or {}).get("conditions", [])
        )
    ]
    return pods if len(pods) >= count else []


def scale_step(
    cluster: Cluster,
    swarm: SwarmProcess,
    replicas: int,
    real: int,
    *,
    limit: float,
    requested_only: bool = False,
) -> dict[str, Any]:
    """Scale to ``replicas``; times until the pods are requested, bound, and their stand-ins campaign."""
    before = api_snapshot(cluster.plane)
    began = cluster.scale(replicas)
    result: dict[str, Any] = {"replicas": replicas}
    names: set[str] = set()
    while time.monotonic() - began < limit:
        swarm.check()
        pods = [p for p in cluster.pods() if not p["metadata"].get("deletionTimestamp")]
        names = {p["metadata"]["name"] for p in pods}
        if "requested" not in result and len(pods) == replicas:
            result["requested"] = time.monotonic() - began
            if requested_only:
                break
        if "bound" not in result and len(pods) == replicas and all(p["spec"].get("nodeName") for p in pods):
            result["bound"] = time.monotonic() - began
        stand_ins = max(0, replicas - real)
        state = swarm.state
        if (
            "bound" in result
            and state.get("campaigning", -1) >= stand_ins
            and state.get("standIns", -1) == stand_ins
        ):
            result["campaigning"] = time.monotonic() - began
            break
        time.sleep(0.25)
    else:
        result["stopped"] = (
            f"not settled after {limit:g}s: {len(names)} pods, swarm {swarm.state.get('standIns')}"
        )
    result["api"] = api_delta(before, api_snapshot(cluster.plane))
    return result


def scale_to_zero(cluster: Cluster, swarm: SwarmProcess, *, limit: float) -> dict[str, Any]:
    before = api_snapshot(cluster.plane)
    began = cluster.scale(0)
    result: dict[str, Any] = {"replicas": 0}
    while time.monotonic() - began < limit:
        swarm.check()
        if not cluster.pods() and swarm.state.get("standIns", 1) == 0:
            result["gone"] = time.monotonic() - began
            break
        time.sleep(0.25)
    else:
        result["stopped"] = f"pods left after {limit:g}s: {len(cluster.pods())}"
    result["api"] = api_delta(before, api_snapshot(cluster.plane))
    return result


def steady_window(
    cluster: Cluster, swarm: SwarmProcess, leader: str, *, seconds: float, interval: float
) -> dict[str, Any]:
    pod = next(p for p in cluster.pods() if p["metadata"]["name"] == leader)
    address = pod["status"]["podIP"]
    pid = agent_pid(cluster.runner, cluster.namespace, leader)
    assert pid is not None, f"no agent process for {leader}"
    since = utc_micro()
    api_before, metrics_before, cpu_before = (
        api_snapshot(cluster.plane),
        agent_metrics(address),
        cpu_seconds(pid),
    )
    swarm_before = dict(swarm.state)
    time.sleep(seconds)
    api_after, metrics_after, cpu_after = (
        api_snapshot(cluster.plane),
        agent_metrics(address),
        cpu_seconds(pid),
    )
    swarm_after = dict(swarm.state)
    until = utc_micro()
    intervals = seconds / interval
    return {
        "leader": leader,
        "seconds": seconds,
        "intervals": intervals,
        "leader_cpu_ms_per_interval": (cpu_after - cpu_before) * 1000 / intervals,
        "leader_rss_kib": memory_kib(pid),
        "leader_counters_per_interval": {
            k: (metrics_after.get(k, 0.0) - metrics_before.get(k, 0.0)) / intervals for k in metrics_after
        },
        "leader_writes": leader_writes(cluster.plane, cluster.namespace, leader, since, until),
        "api": api_delta(api_before, api_after),
        "swarm_cpu_per_s": (swarm_after.get("cpu", 0) - swarm_before.get("cpu", 0))
        / max(1e-9, swarm_after.get("at", 1) - swarm_before.get("at", 0)),
        "swarm_rss_kib": swarm_after.get("rssKiB"),
        "peer_answers_per_interval": (swarm_after.get("lagRequests", 0) - swarm_before.get("lagRequests", 0))
        / intervals,
        "stand_ins": swarm_after.get("standIns"),
    }


def takeover(cluster: Cluster, swarm: SwarmProcess, how: str, *, limit: float) -> dict[str, Any]:
    """``release``: the real leader's pod deleted (SIGTERM: it releases the Lease). ``crash``: the
    leading stand-in stopped without releasing (the Lease must expire)."""
    old = cluster.holder()
    before = api_snapshot(cluster.plane)
    since = utc_micro()
    began = time.monotonic()
    if how == "release":
        cluster.plane.kubectl("delete", "pod", str(old), "-n", cluster.namespace, "--wait=false")
    elif (pids := cluster.runner.pod_pids().get(f"{cluster.namespace}/{old}")) is not None:
        # The leader is a real pod: it dies as a node would take it (bench_failover.py's SIGKILL).
        since = utc_micro()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        cluster.plane.kubectl(
            "delete", "pod", str(old), "-n", cluster.namespace, "--grace-period=0", "--force", "--wait=false"
        )
    else:
        crashes = len(swarm.crashes)
        swarm.send("crash-leader")
        wait("the crash", lambda: len(swarm.crashes) > crashes, limit=30, interval=0.05)
        crashed = swarm.crashes[-1]
        if crashed["crashed"] != old:
            raise RuntimeError(f"the swarm crashed {crashed['crashed']}, but the Lease names {old}")
        since = datetime.datetime.fromtimestamp(crashed["at"], datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    new = wait(
        "a new Lease holder", lambda: (h := cluster.holder()) and h != old and h, limit=limit, interval=0.1
    )
    seen = time.monotonic() - began
    time.sleep(3.0)  # the losers' conflicts and re-reads
    writes = lease_writes_after(cluster.plane, cluster.namespace, since)

    def by_old(write: dict[str, Any]) -> bool:
        extra = (write.get("user") or {}).get("extra") or {}
        return bool((extra.get("authentication.kubernetes.io/pod-name") or [None])[0] == old)

    first = next(
        (
            w
            for w in writes
            if (w.get("responseStatus") or {}).get("code") == 200 and w["verb"] == "update" and not by_old(w)
        ),
        None,
    )
    took = None
    if first is not None:
        took = (parse_micro(first["requestReceivedTimestamp"]) - parse_micro(since)).total_seconds()
    codes: dict[str, int] = defaultdict(int)
    for w in writes:
        codes[str((w.get("responseStatus") or {}).get("code"))] += 1
    return {
        "how": how,
        "old": old,
        "new": new,
        "seen_by_poll": seen,
        "first_winning_write": took,
        "lease_writes_by_code": dict(codes),
        "api": api_delta(before, api_snapshot(cluster.plane)),
    }


# ====================================================================== report


def _fmt_events(events: dict[str, float]) -> str:
    top = sorted(events.items(), key=lambda kv: -kv[1])[:4]
    return ", ".join(f"{k or '?'} {v:,.0f}" for k, v in top) or "0"


def _requests(requests: dict[tuple[str, str, str], float], *, per: float = 1.0) -> str:
    merged: dict[str, float] = defaultdict(float)
    for (verb, resource, _code), value in requests.items():
        merged[f"{verb} {resource}"] += value
    top = sorted(merged.items(), key=lambda kv: -kv[1])[:6]
    return ", ".join(f"{k} {v / per:,.1f}" for k, v in top) or "0"


def plain(value: Any) -> Any:
    """``value`` with every mapping key a string (the request counters are keyed by tuples)."""
    if isinstance(value, dict):
        return {" ".join(k) if isinstance(k, tuple) else str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value if isinstance(value, int | float | str | bool | None) else str(value)


def row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def header(*names: str) -> list[str]:
    return [row(*names), row(*["---"] * len(names))]


def seconds(step: dict[str, Any], key: str) -> str:
    return f"{step[key]:.1f} s" if key in step else "-"


def report(args: argparse.Namespace, started: datetime.datetime, results: dict[str, Any], load: str) -> str:
    out: list[str] = []
    add = out.append
    add("# A thousand replicas: one Deployment 0 -> 1,000 -> 0, a swarm for most agents\n")
    add(f"- Date: {started:%Y-%m-%d %H:%M} UTC; machine: {machine()}")
    add(f"- Load average (1, 5, 15 min) at the start: {results['load_start']}; at the end: {load}")
    add(
        f"- Configuration: Kafka topic of {args.partitions} partitions; {args.real} real pods (consumer + "
        "`tidescale agent` processes), the rest stand-ins in one swarm process (the agent's own `Agent`, "
        "`KubeClient`, `LeaseElector`: RBAC check, Deployment watch, Lease watch and campaign; no HTTP "
        f"server); hints `paused: true`, polling interval {args.interval:g}s, lease defaults "
        f"(15 s / 10 s / 2 s); steady windows {args.window:g}s after {args.settle:g}s settling; "
        f"the real pods' agent: {args.agent_path or 'this tree'}; the swarm answers /v1/lag for its "
        f"stand-ins: {'yes' if args.serve_lag else 'no'}"
    )
    shown = list(args.argv)
    if "--write" in shown:
        del shown[shown.index("--write") : shown.index("--write") + 2]
    command = " ".join(a for a in shown if not a.startswith("--write="))
    script = ".venv/bin/python bench/bench_scale_1000.py"
    add(f"- Command: `{script} {command} --write bench/results/scale-1000.md`")
    add("- Script: bench/bench_scale_1000.py (its own output below; numbers are reported, never asserted)\n")
    if results.get("stopped"):
        add(f"**Stopped early:** {results['stopped']}\n")

    add("## 1. The burst: 0 -> 1,000 and back\n")
    out.extend(
        header(
            "step",
            "pods requested",
            "pods bound",
            "every stand-in campaigning (or none left)",
            "API server CPU s",
            "API RSS MiB",
            "open watches after",
            "watch events sent",
            "watch bytes",
        )
    )
    for step in results.get("burst", []):
        api = step["api"]
        done = seconds(step, "campaigning") if "gone" not in step else seconds(step, "gone") + " to none"
        add(
            row(
                f"-> {step['replicas']}",
                seconds(step, "requested"),
                seconds(step, "bound"),
                step.get("stopped", done),
                f"{api['cpu']:.1f}",
                f"{api['rss_before_mib']:.0f} -> {api['rss_mib']:.0f}",
                f"{api['watches_total']:.0f}",
                _fmt_events(api["watch_events"]),
                f"{api['watch_bytes'] / 2**20:.1f} MiB",
            )
        )
    add("")
    add("## 2. Steps with a real leader\n")
    add("Transition (from the scale write until every stand-in campaigns):\n")
    out.extend(
        header(
            "step",
            "requested",
            "bound",
            "campaigning",
            "API CPU s",
            "API RSS MiB",
            "open watches after (by resource)",
            "watch events sent",
            "API requests (top)",
        )
    )
    for step in results.get("steps", []):
        api = step["api"]
        watches = ", ".join(
            f"{k} {v:.0f}" for k, v in sorted(api["watches"].items(), key=lambda kv: -kv[1])[:4]
        )
        add(
            row(
                f"-> {step['replicas']}" + (f" (reached {step['reached']})" if "reached" in step else ""),
                seconds(step, "requested"),
                seconds(step, "bound"),
                seconds(step, "campaigning") if "gone" not in step else seconds(step, "gone") + " to none",
                f"{api['cpu']:.1f}",
                f"{api['rss_before_mib']:.0f} -> {api['rss_mib']:.0f}",
                watches,
                _fmt_events(api["watch_events"]),
                _requests(api["requests"]),
            )
        )
    add("")
    add("Steady state (the leader per polling interval; the API server and the swarm per second):\n")
    out.extend(
        header(
            "replicas",
            "leader CPU ms / interval",
            "leader group measurements / interval",
            "leader peer requests / interval",
            "stand-ins' /v1/lag answered / interval",
            "leader API writes in the window",
            "leader RSS MiB",
            "API CPU %",
            "API watch events / s",
            "API requests / s (top)",
            "swarm CPU %",
            "swarm RSS MiB",
        )
    )
    for w in results.get("windows", []):
        api = w["api"]
        counters = w["leader_counters_per_interval"]
        add(
            row(
                w["replicas"],
                f"{w['leader_cpu_ms_per_interval']:.1f}",
                f"{sum(v for k, v in counters.items() if 'scope=group' in k):.2f}",
                f"{counters.get('tidescale_peer_requests_total', 0.0):.2f}",
                f"{w.get('peer_answers_per_interval', 0.0):.2f}",
                ", ".join(f"{k} {v}" for k, v in sorted(w["leader_writes"].items())) or "0",
                f"{w['leader_rss_kib'].get('VmRSS', 0) / 1024:.1f}",
                f"{100 * api['cpu'] / api['seconds']:.1f}",
                f"{sum(api['watch_events'].values()) / api['seconds']:.1f}",
                _requests(api["requests"], per=api["seconds"]),
                f"{100 * w['swarm_cpu_per_s']:.1f}",
                f"{(w['swarm_rss_kib'] or 0) / 1024:.0f}",
            )
        )
    add("")
    add("## 3. Lease takeover with every replica a candidate\n")
    out.extend(
        header(
            "how",
            "candidates",
            "old -> new",
            "first winning Lease write after",
            "seen by a 0.1 s poll after",
            "Lease writes by HTTP code (3 s)",
            "API CPU s",
        )
    )
    for t in results.get("takeovers", []):
        first = f"{t['first_winning_write']:.2f} s" if t["first_winning_write"] is not None else "?"
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(t["lease_writes_by_code"].items()))
        add(
            row(
                t["how"],
                t["candidates"],
                f"{t['old']} -> {t['new']}",
                first,
                f"{t['seen_by_poll']:.2f} s",
                codes,
                f"{t['api']['cpu']:.1f}",
            )
        )
    add("")
    if results.get("swarm_errors"):
        add(f"Swarm errors ({len(results['swarm_errors'])}), first: {results['swarm_errors'][:3]}\n")
    add("<details><summary>raw results (JSON)</summary>\n")
    add("```json")
    add(json.dumps(plain(results), indent=1)[:60000])
    add("```\n</details>\n")
    return "\n".join(out)


# ====================================================================== main


def bench(args: argparse.Namespace) -> dict[str, Any]:
    from _common import rig
    from tests.integration.rigkube import apply, consumer_deployment, kafka_hints, namespace_with_agent_rbac

    results: dict[str, Any] = {
        "load_start": load_average(),
        "burst": [],
        "steps": [],
        "windows": [],
        "takeovers": [],
    }
    with rig(pod_runner=True) as r:
        plane, kafka, runner = r.plane, r.kafka, r.runner
        namespace = f"bench-scale-{uuid.uuid4().hex[:6]}"
        topic, group = f"orders-{uuid.uuid4().hex[:6]}", f"group-{uuid.uuid4().hex[:6]}"
        kafka.create_topic(topic, args.partitions)
        namespace_with_agent_rbac(plane, namespace)
        hints = kafka_hints(
            kafka,
            topic,
            group,
            {
                "paused": "true",
                "max-replicas": str(max(args.steps)),
                "polling-interval": f"{args.interval:g}s",
            },
        )
        deployment = consumer_deployment(
            APP,
            kafka=kafka,
            topic=topic,
            group=group,
            annotations=hints,
            record_file=Path("/dev/null"),
            replicas=0,
        )
        spec = deployment["spec"]["template"]["spec"]
        spec["schedulerName"] = SCHEDULER
        for container in spec["containers"]:
            for env in container.get("env", []):
                if env["name"] == "TIDESCALE_LOG_LEVEL":
                    env["value"] = "warning"
            if container["name"] == "tidescale-agent" and args.agent_path is not None:
                container["env"].append({"name": "PYTHONPATH", "value": str(args.agent_path)})
        apply(plane, deployment, namespace=namespace)
        token_config = plane.service_account_kubeconfig(namespace, "workload", expiration_seconds=4 * 3600)
        swarm = SwarmProcess(
            [
                sys.executable,
                __file__,
                "swarm",
                "--kubeconfig",
                str(token_config),
                "--admin-kubeconfig",
                str(plane.admin_kubeconfig),
                "--namespace",
                namespace,
                "--address",
                plane.node_address,
                "--real",
                str(args.real),
                "--log",
                str(r.run_dir / "logs" / "swarm.log"),
                *(["--skip-rbac-check"] if args.skip_rbac_check else []),
                *(["--serve-lag"] if args.serve_lag else []),
            ],
            r.run_dir / "logs" / "swarm.stderr",
        )
        cluster = Cluster(plane, runner, namespace)
        try:
            wait("the swarm's first report", lambda: swarm.state, limit=60)
            top = max(args.steps)
            # Steps with a real leader: the real pods first, alone.
            print(f"{args.real} real pods", flush=True)
            first = scale_step(cluster, swarm, args.real, args.real, limit=args.limit)
            results["steps"].append(first)
            wait("the real pods Ready", lambda: ready_real(cluster, args.real), limit=180, interval=1.0)
            real_names = {p["metadata"]["name"] for p in ready_real(cluster, args.real)}
            leader = wait(
                "a real leader", lambda: (h := cluster.holder()) in real_names and h, limit=120, interval=0.5
            )
            for replicas in args.steps:
                print(f"step -> {replicas} (leader {leader})", flush=True)
                step = scale_step(cluster, swarm, replicas, args.real, limit=args.limit)
                print(json.dumps({k: v for k, v in step.items() if k != "api"}), flush=True)
                results["steps"].append(step)
                if "stopped" in step:
                    # Measure there anyway, with the stand-ins the machine got to.
                    results["stopped"] = f"step {replicas}: {step['stopped']}"
                    step["reached"] = swarm.state.get("campaigning", 0) + args.real
                time.sleep(args.settle)
                if cluster.holder() != leader:
                    results["stopped"] = f"the leader changed during step {replicas}"
                    break
                window = steady_window(cluster, swarm, leader, seconds=args.window, interval=args.interval)
                window["replicas"] = step.get("reached", replicas)
                print(json.dumps({k: v for k, v in window.items() if k != "api"}, default=str), flush=True)
                results["windows"].append(window)
            if cluster.holder() == leader:
                for how in ("release", "crash"):
                    candidates = swarm.state.get("campaigning", 0) + len(ready_real(cluster, 1))
                    print(f"takeover ({how}) among {candidates}", flush=True)
                    result = takeover(cluster, swarm, how, limit=120)
                    result["candidates"] = candidates
                    print(json.dumps({k: v for k, v in result.items() if k != "api"}), flush=True)
                    results["takeovers"].append(result)
                    time.sleep(args.settle)
            back = scale_to_zero(cluster, swarm, limit=args.limit)
            print(json.dumps({k: v for k, v in back.items() if k != "api"}), flush=True)
            results["steps"].append(back)
            if not args.skip_burst:
                # The burst alone: 0 -> top in one write with nothing binding the pods (the swarm
                # paused), so the time is the API server's and the ReplicaSet controller's; back to
                # 0 (unbound pods go at once).
                swarm.send("pause")
                wait("the swarm to pause", lambda: swarm.paused, limit=30, interval=0.05)
                print(f"burst 0 -> {top}, pods left unbound", flush=True)
                step = scale_step(cluster, swarm, top, args.real, limit=args.limit, requested_only=True)
                print(json.dumps({k: v for k, v in step.items() if k != "api"}), flush=True)
                results["burst"].append(step)
                back = scale_to_zero(cluster, swarm, limit=args.limit)
                print(json.dumps({k: v for k, v in back.items() if k != "api"}), flush=True)
                results["burst"].append(back)
        except Exception as error:  # report what was measured, and where it stopped
            results["stopped"] = f"{type(error).__name__}: {error}"
            print(f"stopped: {error!r}", flush=True)
        finally:
            results["swarm_errors"] = swarm.errors
            swarm.stop()
            with contextlib.suppress(Exception):
                plane.kubectl("delete", "namespace", namespace, "--wait=false")
    return results


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "swarm":
        parser = argparse.ArgumentParser(prog="bench_scale_1000.py swarm")
        parser.add_argument("swarm")
        parser.add_argument("--kubeconfig", type=Path, required=True)
        parser.add_argument("--admin-kubeconfig", type=Path, required=True)
        parser.add_argument("--namespace", required=True)
        parser.add_argument("--address", required=True)
        parser.add_argument("--real", type=int, default=3)
        parser.add_argument("--log", type=Path, required=True)
        parser.add_argument("--skip-rbac-check", action="store_true")
        parser.add_argument("--serve-lag", action="store_true")
        return swarm_main(parser.parse_args())
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",")], default=[10, 100, 1000])
    parser.add_argument("--real", type=int, default=3, help="real pods (processes); the rest are stand-ins")
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--interval", type=float, default=1.0, help="the leader's polling interval")
    parser.add_argument("--window", type=float, default=30.0, help="seconds per steady window")
    parser.add_argument("--settle", type=float, default=15.0)
    parser.add_argument("--limit", type=float, default=600.0, help="most seconds one scale step may take")
    parser.add_argument("--skip-burst", action="store_true")
    parser.add_argument(
        "--skip-rbac-check", action="store_true", help="stand-ins skip the agent's start-up RBAC check"
    )
    parser.add_argument(
        "--agent-path",
        type=Path,
        default=None,
        help="run the real pods' agents from this directory's tidescale package (PYTHONPATH), to compare",
    )
    parser.add_argument(
        "--serve-lag",
        action="store_true",
        help="the swarm answers /v1/lag for its stand-ins (for a leader that asks every peer)",
    )
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    # Started in the background, SIGINT may be ignored: both signals end the run through its
    # finally blocks, which stop the swarm and the rig by pid.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = datetime.datetime.now(datetime.UTC)
    results = bench(args)
    if args.write is not None:  # the raw numbers first: a report bug must not lose a run
        args.write.with_suffix(".json").write_text(json.dumps(plain(results), indent=1))
    text = report(args, started, results, load_average())
    print(text)
    if args.write is not None:
        args.write.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
