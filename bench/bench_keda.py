"""tidescale beside KEDA, in one run on the rig: the same Kafka consumer scaled by each.

``make bench-keda`` builds KEDA (tests/rig/build/build.sh keda, once) and runs this script.
It starts the rig itself (control plane, Kafka with its request log, the pod runner), installs
tidescale with its Helm chart (chart defaults: injector and waker as pods, agents injected),
starts KEDA's operator and metrics adapter (tests/rig/keda.py) and stops everything at the end.

Two identical Deployments consume one topic (separate consumer groups, same partitions, same
work per message): ``orders-keda`` scaled by a ScaledObject, ``orders-ts`` by the hints
``tidescale migrate --manifest`` makes of the same ScaledObject (its Deployment and
ScaledObject in, the patched Deployment out). Every burst is produced once to the shared
topic, so both sides see it at the same moment. Phases, in this order:

1. KEDA's defaults: pollingInterval unset (30 s), kube-controller-manager's HPA sync 15 s.
2. KEDA tuned: pollingInterval 1 s, HPA sync 1 s (the rig's lowest; the controller manager is
   restarted with the new period between the phases).

tidescale runs with its defaults in both (its polling interval 1 s: the migration leaves
pollingInterval out when the ScaledObject does). Each phase runs --cycles cycles:

- both at zero; burst A of --messages messages: parked/zero -> first replica (first message
  sent -> spec.replicas >= 1), drain time (-> the last of them recorded by a consumer),
  replica-seconds (integral of spec.replicas from the burst until back at <= 1 after the drain);
- both at exactly one replica; burst B: burst -> first scale-up write (spec.replicas > 1);
- idle -> zero: burst B drained -> spec.replicas 0, same cooldown on both sides.

API requests per minute come from the API server's API Priority and Fairness counters
(``apiserver_flowcontrol_dispatched_requests_total``) for two FlowSchemas the bench adds:
``bench-keda`` (KEDA's ServiceAccounts and the HPA controller's) and ``bench-tidescale`` (the
agents' ServiceAccount, the injector's and the waker's); ``apiserver_request_total`` has no user
label. Broker requests per minute come from Kafka's request log, by client id (KEDA's Kafka
scaler: ``sarama``; tidescale's agents and waker: ``tidescale``).

Memory: VmRSS of KEDA's operator + adapter against tidescale's agents + waker + injector pods
(chart defaults: 2 wakers, 2 injectors) with 1 and 10 scaled Deployments of 2 replicas each
(tidescale: agents running beside an idle workload; KEDA: its ScaledObject and HPA, the pods not
run, as KEDA's memory does not depend on them); KEDA also at 50, tidescale at 50 extrapolated
from the measured per-agent cost (said so in the report).

Not a test: numbers are reported, never asserted.

    .venv/bin/python bench/bench_keda.py --write bench/results/keda.md
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from _common import REPO, commit_at_start, load_average, machine, memory_kib

NAMESPACE = "bench"
MEMORY_NAMESPACE = "bench-memory"
SYSTEM = "tidescale-system"
TOPIC = "orders"
PARTITIONS = 4
WORK_SECONDS = 0.1
LAG_THRESHOLD = 50
MAX_REPLICAS = PARTITIONS
COOLDOWN = 90
SCALE_DOWN_STABILIZATION = 10
KEDA = "orders-keda"
TIDESCALE = "orders-ts"
SIDES = (TIDESCALE, KEDA)
KEDA_CLIENT_ID = "sarama"
TIDESCALE_CLIENT_ID = "tidescale"
FLOW_SCHEMAS = {KEDA: "bench-keda", TIDESCALE: "bench-tidescale"}
TIDESCALE_BIN = REPO / ".venv" / "bin" / "tidescale"


@dataclass(frozen=True, kw_only=True, slots=True)
class Config:
    name: str
    keda_polling: int | None
    """The ScaledObject's pollingInterval; None leaves it unset (KEDA's 30 s)."""
    hpa_sync: float


CONFIGS = (
    Config(name="KEDA defaults", keda_polling=None, hpa_sync=15.0),
    Config(name="KEDA tuned", keda_polling=1, hpa_sync=1.0),
)


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# -- watching the Deployments -------------------------------------------------------------------


class Sampler(threading.Thread):
    """Reads both Deployments' spec.replicas every 0.1 s (one list call) and keeps the history."""

    def __init__(self, plane: Any, namespace: str) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.plane = plane
        self.namespace = namespace
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.lock = threading.Lock()
        self.halt = threading.Event()

    def run(self) -> None:
        import ssl

        import httpx

        pki = self.plane.pki
        context = ssl.create_default_context(cafile=str(pki.ca.cert_file))
        context.load_cert_chain(str(pki.admin.cert_file), str(pki.admin.key_file))
        with httpx.Client(base_url=self.plane.server, verify=context, timeout=5.0) as client:
            while not self.halt.is_set():
                try:
                    answer = client.get(f"/apis/apps/v1/namespaces/{self.namespace}/deployments").json()
                    now = time.monotonic()
                    replicas = {
                        d["metadata"]["name"]: int(d["spec"].get("replicas") or 0) for d in answer["items"]
                    }
                    with self.lock:
                        self.samples.append((now, replicas))
                except Exception as error:  # a restarting controller manager must not end the bench
                    say(f"sampler: {error}")
                self.halt.wait(0.1)

    def wait_past(self, moment: float, timeout: float = 10.0) -> None:
        """Returns once a sample taken at or after ``moment`` exists (or after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.samples and self.samples[-1][0] >= moment:
                    return
            time.sleep(0.05)

    def now(self, name: str) -> int | None:
        with self.lock:
            return self.samples[-1][1].get(name) if self.samples else None

    def first(self, name: str, since: float, test: Callable[[int], bool]) -> float | None:
        with self.lock:
            for at, replicas in self.samples:
                if at >= since and name in replicas and test(replicas[name]):
                    return at
        return None

    def integral(self, name: str, start: float, end: float) -> float:
        """Replica-seconds of ``name`` between ``start`` and ``end`` (step function of the samples)."""
        with self.lock:
            points = [(at, r.get(name, 0)) for at, r in self.samples]
        total, previous = 0.0, None
        for at, replicas in points:
            if previous is not None:
                left, right = max(previous[0], start), min(at, end)
                if right > left:
                    total += previous[1] * (right - left)
            previous = (at, replicas)
        if previous is not None and end > max(previous[0], start):
            total += previous[1] * (end - max(previous[0], start))
        return total


def wait(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    """Polls ``check``; returns its first truthy answer, or None after ``timeout`` (said on stdout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = check()
        if answer:
            return answer
        time.sleep(interval)
    say(f"timed out after {timeout:.0f}s waiting for {what}")
    return None


# -- counting requests ------------------------------------------------------------------------

_CLIENT = re.compile(rb'"clientId":"([^"]*)"')


class BrokerRequests:
    """Requests per client id from the broker's request log, read incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.counts: Counter[str] = Counter()

    def snapshot(self) -> Counter[str]:
        try:
            with self.path.open("rb") as log:
                log.seek(self.offset)
                chunk = log.read()
        except FileNotFoundError:
            return Counter(self.counts)
        end = chunk.rfind(b"\n") + 1
        for line in chunk[:end].splitlines():
            match = _CLIENT.search(line)
            if match is not None:
                self.counts[match[1].decode(errors="replace")] += 1
        self.offset += end
        return Counter(self.counts)


_DISPATCHED = re.compile(
    r'^apiserver_flowcontrol_dispatched_requests_total\{[^}]*flow_schema="([^"]+)"[^}]*\} (\S+)$', re.M
)


def api_requests(plane: Any) -> dict[str, float]:
    """flow schema -> requests dispatched so far (summed over priority levels)."""
    counts: dict[str, float] = {}
    for schema, value in _DISPATCHED.findall(plane.apiserver_metrics()):
        counts[schema] = counts.get(schema, 0.0) + float(value)
    return counts


def flow_schema(name: str, subjects: list[dict[str, Any]]) -> dict[str, Any]:
    """A FlowSchema matching every request of ``subjects``, ahead of the built-in ones (precedence 50),
    in the priority level the HPA controller's requests have anyway (workload-high)."""
    return {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": name},
        "spec": {
            "matchingPrecedence": 50,
            "priorityLevelConfiguration": {"name": "workload-high"},
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [
                {
                    "subjects": subjects,
                    "resourceRules": [
                        {
                            "verbs": ["*"],
                            "apiGroups": ["*"],
                            "resources": ["*"],
                            "clusterScope": True,
                            "namespaces": ["*"],
                        }
                    ],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                }
            ],
        },
    }


def service_accounts(namespace: str, name: str = "*") -> dict[str, Any]:
    return {"kind": "ServiceAccount", "serviceAccount": {"namespace": namespace, "name": name}}


# -- the workloads ----------------------------------------------------------------------------


def consumer(name: str, *, bootstrap: str, group: str, record: Path, account: str) -> dict[str, Any]:
    """The sample Kafka consumer (tests/workloads/kafka_consumer.py), the same for both sides."""
    from tests.integration.rigkube import kafka_consumer_deployment

    return kafka_consumer_deployment(
        name,
        bootstrap=bootstrap,
        topic=TOPIC,
        group=group,
        env=[
            {"name": "WORK_SECONDS", "value": str(WORK_SECONDS)},
            {"name": "RECORD_FILE", "value": str(record)},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        metadata={"namespace": NAMESPACE},
        account=account,
    )


def migrate(documents: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """``tidescale migrate --manifest -``: the documents with the Deployment patched, the notes."""
    result = subprocess.run(
        [str(TIDESCALE_BIN), "migrate", "--manifest", "-"],
        input=yaml.safe_dump_all(documents),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode not in (0, 1):
        raise RuntimeError(f"tidescale migrate exited {result.returncode}: {result.stderr.strip()}")
    return [d for d in yaml.safe_load_all(result.stdout) if d], result.stderr.strip()


async def _produce(bootstrap: str, ids: list[str]) -> float:
    """Sends ``ids`` to the topic; returns the moment just before the first send."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        began = time.monotonic()
        for message_id in ids:
            await producer.send(TOPIC, message_id.encode(), key=message_id.encode())
        await producer.flush()
        return began
    finally:
        await producer.stop()


def produce(bootstrap: str, ids: list[str]) -> float:
    return asyncio.run(_produce(bootstrap, ids))


def consumed(record: Path, prefix: str) -> int:
    try:
        return len({line for line in record.read_text().split() if line.startswith(prefix)})
    except FileNotFoundError:
        return 0


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Samples:
    """One configuration's figures, per side (TIDESCALE, KEDA) -> list of seconds."""

    config: Config
    wake: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SIDES})
    scale_up: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SIDES})
    drain: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SIDES})
    pod_seconds: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SIDES})
    idle_zero: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SIDES})
    missed: list[str] = field(default_factory=list)
    api_per_minute: dict[str, float] = field(default_factory=dict)
    broker_per_minute: dict[str, float] = field(default_factory=dict)
    minutes: float = 0.0
    broker_clients: dict[str, float] = field(default_factory=dict)


class Bench:
    def __init__(self, args: argparse.Namespace, rig: Any) -> None:
        self.args = args
        self.plane = rig["plane"]
        self.kafka = rig["kafka"]
        self.runner = rig["runner"]
        self.keda = rig["keda"]
        self.supervisor = rig["supervisor"]
        self.run_dir: Path = rig["run_dir"]
        self.records = {side: self.run_dir / f"consumed-{side}.txt" for side in SIDES}
        self.sampler = Sampler(self.plane, NAMESPACE)
        self.broker = BrokerRequests(self.kafka.request_log_file)
        self.migrate_notes = ""
        self.hints: dict[str, str] = {}

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return str(self.plane.kubectl(*args, input=input, check=check).stdout)

    def apply(self, *objects: dict[str, Any]) -> None:
        document = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(document))

    def scaled_object(
        self,
        name: str,
        namespace: str,
        deployment: str,
        group: str,
        polling: int | None,
        replicas: tuple[int, int],
    ) -> dict[str, Any]:
        from tests.rig.keda import kafka_scaled_object

        return kafka_scaled_object(
            name,
            namespace,
            deployment=deployment,
            bootstrap=self.kafka.bootstrap,
            topic=TOPIC,
            group=group,
            lag_threshold=LAG_THRESHOLD,
            min_replicas=replicas[0],
            max_replicas=replicas[1],
            cooldown_seconds=COOLDOWN,
            scale_down_stabilization_seconds=SCALE_DOWN_STABILIZATION,
            polling_interval_seconds=polling,
        )

    # -- setup

    def setup(self) -> None:
        from tests.rig.keda import NAMESPACE as KEDA_NAMESPACE

        self.kubectl("create", "namespace", NAMESPACE)
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "workload", "namespace": NAMESPACE},
            },
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "keda-workload", "namespace": NAMESPACE},
            },
        )
        self.kubectl(
            "create", "rolebinding", "tidescale-agent", "--clusterrole=tidescale-agent",
            f"--serviceaccount={NAMESPACE}:workload", "-n", NAMESPACE,
        )  # fmt: skip
        self.apply(
            flow_schema(
                FLOW_SCHEMAS[KEDA],
                [
                    service_accounts(KEDA_NAMESPACE),
                    service_accounts("kube-system", "horizontal-pod-autoscaler"),
                ],
            ),
            flow_schema(
                FLOW_SCHEMAS[TIDESCALE], [service_accounts(NAMESPACE, "workload"), service_accounts(SYSTEM)]
            ),
        )
        self.kafka.create_topic(TOPIC, PARTITIONS)
        for side in SIDES:
            asyncio.run(commit_at_start(self.kafka.bootstrap, TOPIC, PARTITIONS, side))
        keda_deployment = consumer(
            KEDA,
            bootstrap=self.kafka.bootstrap,
            group=KEDA,
            record=self.records[KEDA],
            account="keda-workload",
        )
        ts_deployment = consumer(
            TIDESCALE,
            bootstrap=self.kafka.bootstrap,
            group=TIDESCALE,
            record=self.records[TIDESCALE],
            account="workload",
        )
        ts_scaled_object = self.scaled_object(
            TIDESCALE, NAMESPACE, TIDESCALE, TIDESCALE, None, (0, MAX_REPLICAS)
        )
        migrated, self.migrate_notes = migrate([ts_deployment, ts_scaled_object])
        (patched,) = [d for d in migrated if d.get("kind") == "Deployment"]
        self.hints = {
            k: v for k, v in patched["metadata"]["annotations"].items() if k.startswith("tidescale.io/")
        }
        say(f"tidescale migrate: {json.dumps(self.hints)}")
        self.apply(keda_deployment, patched)
        self.apply(
            self.scaled_object(KEDA, NAMESPACE, KEDA, KEDA, CONFIGS[0].keda_polling, (0, MAX_REPLICAS))
        )
        self.sampler.start()
        say("waiting for both Deployments to reach zero (KEDA: scaled to zero; tidescale: parked)")
        self.both(lambda n: n == 0, "both at zero", timeout=300)

    def both(self, test: Callable[[int], bool], what: str, timeout: float) -> bool:
        def check() -> bool:
            values = [self.sampler.now(side) for side in SIDES]
            return all(v is not None and test(v) for v in values)

        return bool(wait(what, check, timeout))

    # -- the latency phases

    def phase(self, config: Config) -> Samples:
        samples = Samples(config=config)
        if self.plane.hpa_sync_period != config.hpa_sync:
            say(f"restarting kube-controller-manager: HPA sync period {config.hpa_sync:g}s")
            self.plane.restart_controller_manager(self.supervisor, hpa_sync_period=config.hpa_sync)
        polling = {"pollingInterval": config.keda_polling}
        self.kubectl(
            "patch",
            "scaledobject",
            KEDA,
            "-n",
            NAMESPACE,
            "--type",
            "merge",
            "-p",
            json.dumps({"spec": polling}),
        )
        api_before, broker_before, began = api_requests(self.plane), self.broker.snapshot(), time.monotonic()
        for cycle in range(self.args.cycles):
            say(f"{config.name}: cycle {cycle + 1} of {self.args.cycles}")
            self.cycle(samples, f"{config.hpa_sync:g}s-{cycle}")
        api_after, broker_after = api_requests(self.plane), self.broker.snapshot()
        samples.minutes = (time.monotonic() - began) / 60
        for side in SIDES:
            schema = FLOW_SCHEMAS[side]
            samples.api_per_minute[side] = (
                api_after.get(schema, 0) - api_before.get(schema, 0)
            ) / samples.minutes
        for side, client in ((KEDA, KEDA_CLIENT_ID), (TIDESCALE, TIDESCALE_CLIENT_ID)):
            samples.broker_per_minute[side] = (broker_after[client] - broker_before[client]) / samples.minutes
        samples.broker_clients = {
            client: (broker_after[client] - broker_before[client]) / samples.minutes
            for client in broker_after
            if not client.startswith(("orders-", "aiokafka"))
        }
        return samples

    def cycle(self, samples: Samples, tag: str) -> None:
        if not self.both(lambda n: n == 0, "both at zero before burst A", timeout=240):
            samples.missed.append(f"{tag}: not both at zero within 240 s; cycle skipped")
            return
        prefix_a = f"A{tag}-"
        t0 = produce(self.kafka.bootstrap, [f"{prefix_a}{i}" for i in range(self.args.messages)])
        drained: dict[str, float] = {}

        def all_drained(prefix: str, into: dict[str, float]) -> bool:
            for side in SIDES:
                if side not in into and consumed(self.records[side], prefix) >= self.args.messages:
                    into[side] = time.monotonic()
            return len(into) == len(SIDES)

        wait("burst A consumed by both", lambda: all_drained(prefix_a, drained), timeout=400, interval=0.1)
        for side in SIDES:
            woke = self.sampler.first(side, t0, lambda n: n >= 1)
            if woke is not None:
                samples.wake[side].append(woke - t0)
            if side in drained:
                samples.drain[side].append(drained[side] - t0)
        # Back at one replica after the drain (the scale-down); the replica-seconds up to there.
        self.both(lambda n: n <= 1, "both back at one replica or fewer", timeout=180)
        self.sampler.wait_past(max(drained.values(), default=t0))
        for side in SIDES:
            if side in drained:
                back = self.sampler.first(side, drained[side], lambda n: n <= 1)
                if back is not None:
                    samples.pod_seconds[side].append(self.sampler.integral(side, t0, back))
        if not self.both(lambda n: n == 1, "both at exactly one replica", timeout=60):
            samples.missed.append(f"{tag}: not both at one replica at once; burst B skipped")
            return
        prefix_b = f"B{tag}-"
        t1 = produce(self.kafka.bootstrap, [f"{prefix_b}{i}" for i in range(self.args.messages)])
        drained_b: dict[str, float] = {}
        wait("burst B consumed by both", lambda: all_drained(prefix_b, drained_b), timeout=400, interval=0.1)
        for side in SIDES:
            up = self.sampler.first(side, t1, lambda n: n > 1)
            if up is not None:
                samples.scale_up[side].append(up - t1)
            else:
                samples.missed.append(f"{tag}: {side} never scaled above one for burst B")
        self.both(lambda n: n == 0, "both at zero after burst B", timeout=COOLDOWN + 180)
        for side in SIDES:
            if side in drained_b:
                zero = self.sampler.first(side, drained_b[side], lambda n: n == 0)
                if zero is not None:
                    samples.idle_zero[side].append(zero - drained_b[side])

    # -- memory

    def memory(self) -> dict[str, Any]:
        """RSS at 1 and 10 scaled Deployments of 2 replicas each (KEDA also at 50)."""
        from bench_agent import agent_pids

        self.kubectl("create", "namespace", MEMORY_NAMESPACE)
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "workload", "namespace": MEMORY_NAMESPACE},
            }
        )
        self.kubectl(
            "create", "rolebinding", "tidescale-agent", "--clusterrole=tidescale-agent",
            f"--serviceaccount={MEMORY_NAMESPACE}:workload", "-n", MEMORY_NAMESPACE,
        )  # fmt: skip
        rows: dict[str, Any] = {}
        made = 0
        for size in self.args.memory_sizes:
            objects: list[dict[str, Any]] = []
            for index in range(made, size):
                group = f"memory-{index}"
                asyncio.run(commit_at_start(self.kafka.bootstrap, TOPIC, PARTITIONS, group))
                keda_name, ts_name = f"keda-{index}", f"ts-{index}"
                keda_dep = idle_deployment(keda_name, runs=False)
                if size <= self.args.tidescale_memory_max:
                    so = self.scaled_object(ts_name, MEMORY_NAMESPACE, ts_name, group, None, (2, 2))
                    migrated, _notes = migrate([idle_deployment(ts_name, runs=True), so])
                    objects += [d for d in migrated if d.get("kind") == "Deployment"]
                objects += [
                    keda_dep,
                    self.scaled_object(keda_name, MEMORY_NAMESPACE, keda_name, group, None, (2, 2)),
                ]
            made = size
            self.apply(*objects)
            tidescale_measured = size <= self.args.tidescale_memory_max
            if tidescale_measured:
                wait(
                    f"{2 * size} agents running",
                    lambda n=size: len(agent_pids(self.runner, MEMORY_NAMESPACE)) >= 2 * n,
                    timeout=120 + 20 * size,
                    interval=2,
                )
            wait(
                f"{size} KEDA HPAs",
                lambda n=size: (
                    self.kubectl("get", "hpa", "-n", MEMORY_NAMESPACE, "-o", "name").count("keda-hpa-") >= n
                ),
                timeout=120,
                interval=2,
            )
            say(f"memory: {size} Deployments per side; settling {self.args.settle:g}s")
            time.sleep(self.args.settle)
            row: dict[str, Any] = {
                "keda": {name: memory_kib(pid)["VmRSS"] for name, pid in self.keda.pids.items()}
            }
            if tidescale_measured:
                agents = [
                    memory_kib(pid)["VmRSS"] for pid in agent_pids(self.runner, MEMORY_NAMESPACE).values()
                ]
                row["agents"] = agents
            row["system"] = system_rss(self.runner)
            rows[str(size)] = row
            say(f"memory at {size}: {json.dumps(row)[:400]}")
        return rows


def idle_deployment(name: str, *, runs: bool) -> dict[str, Any]:
    """A Deployment of 2 replicas of an idle workload; ``runs`` False keeps its pods unscheduled."""
    spec: dict[str, Any] = {
        "serviceAccountName": "workload",
        "terminationGracePeriodSeconds": 2,
        "containers": [{"name": "work", "image": "tidescale-test/echo"}],
    }
    if not runs:
        spec["nodeSelector"] = {"bench": "never"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": MEMORY_NAMESPACE},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        },
    }


def system_rss(runner: Any) -> dict[str, int]:
    """pod name -> VmRSS (KiB) of every process of tidescale's injector and waker pods."""
    found: dict[str, int] = {}
    for key, pids in runner.pod_pids().items():
        namespace, _, pod = key.partition("/")
        if namespace != SYSTEM:
            continue
        total = 0
        for pid in pids:
            try:
                total += memory_kib(pid)["VmRSS"]
            except (OSError, KeyError):
                continue
        found[pod] = total
    return found


# -- the rig ------------------------------------------------------------------------------------


def start_rig(run_dir: Path, supervisor: Any, network: Any) -> dict[str, Any]:
    from tests.integration.rigkube import items
    from tests.rig.controlplane import ControlPlane
    from tests.rig.helm import CHART, Helm
    from tests.rig.kafka import Kafka
    from tests.rig.keda import Keda
    from tests.rig.podrunner import PodRunner

    plane = ControlPlane.start(supervisor, network, run_dir, hpa_sync_period=CONFIGS[0].hpa_sync)
    say(f"control plane up: {plane.server} ({plane.version})")
    kafka = Kafka.start(supervisor, network, run_dir, request_log=True)
    runner = PodRunner(
        kubeconfig=plane.admin_kubeconfig, server=plane.server, network=network, run_dir=run_dir
    ).start()
    helm = Helm(plane, run_dir / "helm")
    helm("install", "tidescale", str(CHART), "--namespace", SYSTEM, "--create-namespace")

    def ready(component: str) -> bool:
        pods = items(plane, "pods", SYSTEM, f"app.kubernetes.io/component={component}")
        return bool(pods) and all(
            any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p.get("status", {}).get("conditions", [])
            )
            for p in pods
        )

    for component in ("injector", "waker"):
        if not wait(f"tidescale's {component} pods Ready", lambda c=component: ready(c), timeout=180):
            raise RuntimeError(f"tidescale's {component} did not become Ready (logs in {run_dir}/logs)")
    say("tidescale installed (helm chart, defaults)")
    keda = Keda.start(supervisor, plane, network, run_dir)
    say(f"KEDA {keda.binaries.version} up: APIService v1beta1.external.metrics.k8s.io Available")
    return {
        "plane": plane,
        "kafka": kafka,
        "runner": runner,
        "keda": keda,
        "supervisor": supervisor,
        "run_dir": run_dir,
    }


# -- the report ---------------------------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "not measured" if value is None else f"{value:.{digits}f}"


def _ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or theirs == 0:
        return "n/a"
    return f"{ours / theirs:.2f}"


def _raw(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values) or "none"


def report(
    args: argparse.Namespace, phases: list[Samples], memory: dict[str, Any], context: dict[str, Any]
) -> str:
    lines = [
        "# tidescale beside KEDA (bench/bench_keda.py)",
        "",
        f"- Date: {context['started']:%Y-%m-%d %H:%M} UTC; run took {context['minutes']:.1f} min",
        f"- Machine: {machine()}",
        f"- Load average (1, 5, 15 min) at start / end: {context['load_start']} / {context['load_end']}"
        " (the machine is shared: other helpers' builds and rig tests ran at the same time)",
        f"- KEDA {context['keda_version']} (operator + metrics adapter built from the Go module by "
        f"`tests/rig/build/build.sh keda`), Kubernetes {context['kubernetes']}, tidescale from this tree "
        "(Helm chart defaults)",
        "- Command: `make bench-keda` (`.venv/bin/python bench/bench_keda.py --write bench/results/keda.md "
        f"--cycles {args.cycles} --messages {args.messages}`)",
        "",
        "## Configuration",
        "",
        f"- One topic of {PARTITIONS} partitions; two identical Deployments of the sample Kafka consumer "
        f"(tests/workloads/kafka_consumer.py, {WORK_SECONDS:g} s of work per message, a commit after each), "
        "each with its own consumer group; every burst is produced once, so both see it at the same moment.",
        f"- ScaledObject: kafka trigger, lagThreshold {LAG_THRESHOLD}, minReplicaCount 0, maxReplicaCount "
        f"{MAX_REPLICAS}, cooldownPeriod {COOLDOWN}, scale-down stabilizationWindowSeconds "
        f"{SCALE_DOWN_STABILIZATION} (both shortened from KEDA's 300 s so a run fits in minutes; the same on "
        "both sides).",
        "- tidescale's hints, made by `tidescale migrate --manifest` from the same ScaledObject "
        f"(pollingInterval unset, so tidescale's default 1 s): `{json.dumps(context['hints'])}`",
        f"- migrate's notes: {context['migrate_notes'] or 'none'}",
        "- Configurations: KEDA defaults = pollingInterval unset (30 s) and HPA sync 15 s (Kubernetes' "
        "default); KEDA tuned = pollingInterval 1 s and HPA sync 1 s (the rig's lowest: "
        "--horizontal-pod-autoscaler-sync-period takes seconds; kube-controller-manager restarted between "
        "the phases). tidescale runs with its defaults in both phases, so each tidescale figure below is "
        "from the same phase as the KEDA figure it is compared with.",
        f"- Samples: {args.cycles} cycles per configuration (each cycle: burst A from zero, burst B at one "
        f"replica, both of {args.messages} messages); the figures are medians of the samples, all listed.",
        "- Latencies are read from the Deployment's spec.replicas, polled every 0.1 s (resolution 0.1 s). "
        "Replica-seconds integrate spec.replicas (what the Deployment asked for, not pods that had started) "
        "from burst A's first message until the Deployment is back at one replica or fewer after the drain.",
        "",
        "## Results",
        "",
        "Ratio = tidescale / KEDA (below 1: tidescale is faster or cheaper).",
        "",
        "| row | configuration | tidescale (median; samples) | KEDA (median; samples) | ratio |",
        "|---|---|---|---|---|",
    ]
    rows = (
        ("burst -> first scale-up write (s), at one replica", "scale_up"),
        ("parked/zero -> first replica (s)", "wake"),
        (f"burst of {args.messages} messages -> all consumed (s)", "drain"),
        ("replica-seconds spent on that burst", "pod_seconds"),
        (f"idle -> zero (s), cooldown {COOLDOWN} s on both", "idle_zero"),
    )
    for title, key in rows:
        for phase in phases:
            ours, theirs = getattr(phase, key)[TIDESCALE], getattr(phase, key)[KEDA]
            lines.append(
                f"| {title} | {phase.config.name} | {_fmt(_median(ours))} ({_raw(ours)}) | "
                f"{_fmt(_median(theirs))} ({_raw(theirs)}) | {_ratio(_median(ours), _median(theirs))} |"
            )
    for phase in phases:
        ours, theirs = phase.api_per_minute.get(TIDESCALE), phase.api_per_minute.get(KEDA)
        lines.append(
            f"| API requests per minute per scaled Deployment | {phase.config.name} "
            f"({phase.minutes:.1f} min) | {_fmt(ours)} | {_fmt(theirs)} | {_ratio(ours, theirs)} |"
        )
    for phase in phases:
        ours, theirs = phase.broker_per_minute.get(TIDESCALE), phase.broker_per_minute.get(KEDA)
        lines.append(
            f"| broker requests per minute per scaled Deployment | {phase.config.name} "
            f"({phase.minutes:.1f} min) | {_fmt(ours)} | {_fmt(theirs)} | {_ratio(ours, theirs)} |"
        )
    lines += _memory_rows(args, memory)
    wins = [
        line
        for line in lines
        if line.startswith("| ") and _ratio_of(line) is not None and _ratio_of(line) > 1
    ]
    missed = [m for phase in phases for m in phase.missed]
    lines += [
        "",
        "## How each figure was counted",
        "",
        "- API requests: `apiserver_flowcontrol_dispatched_requests_total` of two FlowSchemas the bench adds "
        "(precedence 50, priority level workload-high): `bench-keda` = KEDA's ServiceAccounts (operator, "
        "adapter) and the HPA controller's (`kube-system:horizontal-pod-autoscaler`, serving only KEDA's "
        "HPA here); `bench-tidescale` = the agents' ServiceAccount and tidescale-system's (injector, waker). "
        "A watch counts once, when it is opened. `apiserver_request_total` has no user label, so it "
        "cannot split the two.",
        "- Broker requests: Kafka's request log (`kafka.request.logger` at DEBUG), lines per client id over "
        "the phase: `sarama` is KEDA's Kafka scaler, `tidescale` its agents and waker (`1` is the broker "
        "itself, node id 1, the same for both). The consumers "
        "(client id = pod name) are the same on both sides and left out. Every client id seen "
        "(requests per minute): "
        + "; ".join(
            f"{phase.config.name}: "
            + ", ".join(f"{c} {v:.1f}" for c, v in sorted(phase.broker_clients.items()))
            for phase in phases
        ),
        "- idle -> zero runs from the burst's last message recorded by a consumer. KEDA counts its cooldown "
        "from the last poll that saw lag, which can be up to one pollingInterval before the last message, so "
        "its figure can come out below the cooldown; tidescale's adds the park handshake with the waker.",
        "- Both sides share the machine's 2 cores: the pods one side starts take CPU from the other side's, "
        "so drain times and replica-seconds depend on what the other side does in the same phase (in the "
        "tuned phase both start their pods at about the same moment).",
        "- One scaled Deployment per side in the latency phases, so per Deployment = the total. The phases "
        "include bursts, drains and idle time at zero in the proportions above.",
    ]
    lines += ["", "## Where KEDA wins in this run (ratio above 1)", ""]
    lines += [
        f"- {w.split(' | ')[0].lstrip('| ')}, {w.split(' | ')[1]}: ratio {w.rstrip(' |').rsplit(' | ', 1)[1]}"
        for w in wins
    ] or ["- none"]
    if missed:
        lines += ["", "## Samples not taken", ""] + [f"- {m}" for m in missed]
    return "\n".join(lines) + "\n"


def _ratio_of(row: str) -> float | None:
    """The ratio column of a results row, if it is a number."""
    try:
        return float(row.rstrip(" |").rsplit(" | ", 1)[1])
    except (IndexError, ValueError):
        return None


def _memory_rows(args: argparse.Namespace, memory: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    per_agent: float | None = None
    for row in memory.values():
        if row.get("agents"):
            per_agent = statistics.mean(row["agents"]) / 1024
    for size in sorted({*args.memory_sizes, args.extrapolate}):
        row = memory.get(str(size))
        keda_mib = sum(row["keda"].values()) / 1024 if row else None
        system = row["system"] if row else (memory[str(args.memory_sizes[-1])]["system"] if memory else {})
        system_mib = sum(system.values()) / 1024
        if row and row.get("agents") is not None:
            agents_mib = sum(row["agents"]) / 1024
            ours = system_mib + agents_mib
            how = f"measured: {len(row['agents'])} agents {agents_mib:.0f} + injector/waker {system_mib:.0f}"
        elif per_agent is not None:
            ours = system_mib + 2 * size * per_agent
            how = (
                f"extrapolated: 2 x {size} agents x {per_agent:.1f} MiB (mean measured per agent) + "
                f"injector/waker pods {system_mib:.0f}"
            )
        else:
            ours, how = None, "not measured"
        keda_how = (
            "measured: " + ", ".join(f"{k} {v / 1024:.0f}" for k, v in row["keda"].items())
            if row
            else "not measured"
        )
        lines.append(
            f"| memory, VmRSS MiB, {size} scaled Deployments of 2 replicas | defaults | "
            f"{_fmt(ours, 0)} ({how}) | {_fmt(keda_mib, 0)} ({keda_how}) | {_ratio(ours, keda_mib)} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cycles", type=int, default=2, help="cycles per configuration (default 2)")
    parser.add_argument("--messages", type=int, default=300, help="messages per burst (default 300)")
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument(
        "--tidescale-memory-max",
        type=int,
        default=10,
        help="run tidescale's agents up to this many Deployments; beyond, extrapolate (default 10)",
    )
    parser.add_argument("--extrapolate", type=int, default=50)
    parser.add_argument("--settle", type=float, default=20.0, help="seconds before reading RSS")
    parser.add_argument("--skip-latency", action="store_true", help="memory rows only (a quick check)")
    parser.add_argument("--write", type=Path, default=None, help="write the markdown report here")
    args = parser.parse_args()

    from tests.rig.network import Network
    from tests.rig.paths import new_run_dir
    from tests.rig.processes import Supervisor

    started = datetime.datetime.now(datetime.UTC)
    load_start = load_average()
    run_dir = new_run_dir()
    say(f"rig run directory: {run_dir}")
    supervisor = Supervisor(run_dir=run_dir)
    network = Network().open()
    rig: dict[str, Any] = {}
    try:
        rig = start_rig(run_dir, supervisor, network)
        bench = Bench(args, rig)
        bench.setup()
        phases = [] if args.skip_latency else [bench.phase(config) for config in CONFIGS]
        memory = bench.memory()
        bench.sampler.halt.set()
        context = {
            "started": started,
            "minutes": (datetime.datetime.now(datetime.UTC) - started).total_seconds() / 60,
            "load_start": load_start,
            "load_end": load_average(),
            "keda_version": rig["keda"].binaries.version,
            "kubernetes": rig["plane"].version,
            "hints": bench.hints,
            "migrate_notes": bench.migrate_notes.replace("\n", "; "),
        }
    finally:
        if rig.get("runner") is not None:
            rig["runner"].stop()
        supervisor.stop_all()
        network.close()
    text = report(args, phases, memory, context)
    print(text)
    if args.write is not None:
        args.write.write_text(text)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
