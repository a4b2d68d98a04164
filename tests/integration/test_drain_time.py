"""The drain-time target and the stall detector in the rig: real API server, real Kafka, the real
agent beside sample consumers of a known per-message cost (issue 18).

- A burst under ``kafka.drain-time``: the leader measures the per-pod rate from the group's
  committed offsets, scales to the count the formula gives on the inputs it reports in its status
  (checked against the formula here), the rate it measured agrees with the consumer's known cost,
  and the backlog clears within the target plus a stated tolerance (an outcome, measured here).
- A group that stops committing while messages wait (its consumers stay in the group: a dead
  downstream) is held at its count with one ConsumerStalled Warning naming the partitions, however
  much lag piles up; when it commits again a ConsumerResumed Event follows and scaling resumes.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
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
    produce,
    unique,
    wait_for,
)
from tests.integration.test_scale_to_zero import Background
from tests.rig.controlplane import ControlPlane
from tests.rig.kafka import Kafka
from tests.rig.podrunner import PodRunner
from tidescale._drain import DrainInputs, recommend_drain
from tidescale.kube import KubeClient, KubeConfig
from tidescale.parking import STATUS_ANNOTATION

pytestmark = pytest.mark.rig

PARTITIONS = 6
WORK_SECONDS = 0.05
"""The consumer's known cost per message: it processes at most 1 / WORK_SECONDS = 20 per second
(less by its commit after every message)."""
RATE_TOLERANCE = (0.3, 1.05)
"""The measured per-pod rate, as a share of 1 / WORK_SECONDS: at most the cost allows (5 % for the
window's edges), at least 30 % (a commit per message and a loaded 2-core machine slow it)."""
CLEAR_TOLERANCE = 25.0
"""Seconds the backlog may take beyond the target: the formula counts the new pods from the
decision, but they take seconds to start and the group rebalances as each joins."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Version:
    at: float
    replicas: int
    status: dict[str, Any]


class Versions:
    """Every version of one Deployment, from a watch on a background loop: the status written at
    the scaling tick lasts a second, and polling could miss it."""

    def __init__(self, background: Background, plane: ControlPlane, namespace: str, name: str) -> None:
        self.seen: list[Version] = []
        self._lock = threading.Lock()
        self._client = KubeClient(KubeConfig.from_kubeconfig(plane.admin_kubeconfig))
        self._namespace, self._name = namespace, name
        self._task = background.run(self._start())

    async def _start(self) -> asyncio.Task[None]:
        return asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        try:
            async for kind, obj in self._client.watch_deployment(self._namespace, self._name):
                if kind == "DELETED":
                    continue
                text = ((obj.get("metadata") or {}).get("annotations") or {}).get(STATUS_ANNOTATION)
                version = Version(
                    at=time.monotonic(),
                    replicas=int((obj.get("spec") or {}).get("replicas", 1)),
                    status=json.loads(text) if text else {},
                )
                with self._lock:
                    self.seen.append(version)
        finally:
            await self._client.aclose()

    def find(self, check: Any) -> Version | None:
        with self._lock:
            return next((version for version in self.seen if check(version)), None)


@pytest.fixture
def background() -> Iterator[Background]:
    loop = Background()
    yield loop
    loop.close()


def consumed(record: Path) -> set[str]:
    return set(record.read_text().split()) if record.exists() else set()


def events(plane: ControlPlane, namespace: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in items(plane, "events", namespace) if e.get("reason") == reason]


def more_than(count: int, found: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    return found if len(found) > count else None


def produce_to_every_partition(kafka: Kafka, topic: str, prefix: str) -> list[str]:
    """One message on each partition, so that the group has a committed offset on each (the drain
    backlog and the stall detector watch committed partitions)."""

    async def send() -> list[str]:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
        await producer.start()
        try:
            ids = [f"{prefix}-{partition}" for partition in range(PARTITIONS)]
            for partition, message_id in enumerate(ids):
                await producer.send(topic, message_id.encode(), partition=partition)
            await producer.flush()
            return ids
        finally:
            await producer.stop()

    return asyncio.run(send())


def deploy(
    plane: ControlPlane,
    kafka: Kafka,
    run_dir: Path,
    *,
    prefix: str,
    hints: dict[str, str],
    replicas: int = 1,
    work_seconds: float = WORK_SECONDS,
) -> tuple[str, str, str, Path, Path]:
    namespace, name = unique(prefix), "orders"
    topic, group = unique("orders"), unique("orders-group")
    kafka.create_topic(topic, PARTITIONS)
    namespace_with_agent_rbac(plane, namespace)
    record, pause = run_dir / f"{namespace}-consumed.txt", run_dir / f"{namespace}-pause"
    deployment = consumer_deployment(
        name,
        kafka=kafka,
        topic=topic,
        group=group,
        annotations=kafka_hints(kafka, topic, group, hints),
        record_file=record,
        replicas=replicas,
        work_seconds=work_seconds,
    )
    consumer = deployment["spec"]["template"]["spec"]["containers"][0]
    consumer["env"].append({"name": "PAUSE_FILE", "value": str(pause)})
    apply(plane, deployment, namespace=namespace)
    wait_for("an agent to lead", lambda: lease_holder(plane, namespace, name), timeout=90)
    primes = produce_to_every_partition(kafka, topic, "prime")
    wait_for("a commit on every partition", lambda: consumed(record) >= set(primes), timeout=60)
    return namespace, name, topic, record, pause


@pytest.mark.parametrize(
    ("target", "burst_size"),
    [
        # The sample in make test (about a minute on 2 loaded cores): about 4 pods for 10 s.
        pytest.param(10.0, 700, id="10s"),
        # The same at twice the scale (about 80 s): `pytest -m long tests/integration/test_drain_time.py`.
        pytest.param(20.0, 1500, id="20s", marks=pytest.mark.long),
    ],
)
def test_a_burst_under_a_drain_time_target_scales_to_the_formula_count_and_clears_within_the_target(
    control_plane: ControlPlane,
    pod_runner: PodRunner,
    kafka: Kafka,
    rig_run_dir: Path,
    background: Background,
    target: float,
    burst_size: int,
) -> None:
    namespace, name, topic, record, _ = deploy(
        control_plane,
        kafka,
        rig_run_dir,
        prefix="drain",
        hints={
            "min-replicas": "1",
            "max-replicas": str(PARTITIONS),
            "kafka.drain-time": f"{target:g}s",
            # Until the per-pod rate is measured the threshold decides: this one keeps one pod.
            "kafka.lag-threshold": "1000000",
            "scale-up-policies": "10 pods/1s",
            "scale-down-stabilization": "10m",
        },
    )
    versions = Versions(background, control_plane, namespace, name)
    burst = [f"b{i:05d}" for i in range(burst_size)]
    produce(kafka, topic, burst)

    # The status written at the scaling tick: current 1, desired n, and the drain inputs it used.
    scaling = wait_for(
        "the leader to scale up on its drain estimate",
        lambda: versions.find(
            lambda v: (
                v.status.get("replicas", {}).get("current") == 1
                and v.status.get("replicas", {}).get("desired", 1) > 1
            )
        ),
        timeout=90,
        interval=0.5,
    )
    drain = scaling.status["triggers"]["kafka"]["drain"]
    desired = scaling.status["replicas"]["desired"]
    print(f"drain inputs at the scale-up: {drain}")
    assert drain["measured"] is True, drain
    low, high = (share / WORK_SECONDS for share in RATE_TOLERANCE)
    assert low <= drain["perPodRate"] <= high, f"per-pod rate {drain['perPodRate']} vs cost {WORK_SECONDS}s"

    # The count is the formula's on the inputs the leader reported (rates rounded to 3 decimals
    # in the status: within a pod of it only where the exact value sits on a whole number).
    formula = recommend_drain(
        DrainInputs(
            backlog=drain["backlog"],
            arrival_rate=drain["arrivalRate"],
            per_pod_rate=drain["perPodRate"],
            target_seconds=target,
            cap=PARTITIONS,
            current=1,
            threshold=1_000_000.0,
        )
    ).replicas
    needed = ((drain["arrivalRate"] or 0.0) + drain["backlog"] / target) / drain["perPodRate"]
    on_the_edge = abs(needed - round(needed)) < 0.01
    assert drain["replicas"] == desired
    assert desired == formula or (on_the_edge and abs(desired - formula) <= 1), (desired, formula, drain)
    assert desired == min(PARTITIONS, math.ceil(needed - 1e-9)) or on_the_edge
    (scaled,) = events(control_plane, namespace, "Scaled")
    assert "each pod" in scaled["message"]
    assert f"(target {target:g} s)" in scaled["message"]

    # The outcome: every message of the burst consumed within the target (plus the tolerance)
    # from the scale-up decision.
    wait_for("the burst consumed", lambda: consumed(record) >= set(burst), timeout=120, interval=0.5)
    cleared_after = time.monotonic() - scaling.at
    print(f"backlog {drain['backlog']} cleared {cleared_after:.1f}s after the scale-up to {desired}")
    assert cleared_after <= target + CLEAR_TOLERANCE
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false")


def test_a_group_that_stops_committing_is_held_with_a_warning_and_resumes_when_it_commits(
    control_plane: ControlPlane, pod_runner: PodRunner, kafka: Kafka, rig_run_dir: Path
) -> None:
    namespace, name, topic, _, pause = deploy(
        control_plane,
        kafka,
        rig_run_dir,
        prefix="stall",
        replicas=2,
        work_seconds=0.2,
        hints={
            "min-replicas": "2",
            "max-replicas": str(PARTITIONS),
            "kafka.lag-threshold": "20",
            "stall-after": "10s",
            "scale-up-policies": "10 pods/1s",
            "scale-down-stabilization": "10m",
        },
    )

    def replicas() -> int:
        return int(get(control_plane, "deployment", name, namespace)["spec"]["replicas"])

    def status() -> dict[str, Any]:
        text = get(control_plane, "deployment", name, namespace)["metadata"]["annotations"].get(
            STATUS_ANNOTATION
        )
        return json.loads(text) if text else {}

    # Joining the group can take longer than stall-after on a loaded machine (that is a stall too:
    # pods Ready, lag, no commit): start from a group that is progressing.
    wait_for(
        "a status without a stall",
        lambda: (kafka := status().get("triggers", {}).get("kafka")) is not None and "stalled" not in kafka,
        timeout=60,
    )
    stalls, resumes = (
        len(events(control_plane, namespace, r)) for r in ("ConsumerStalled", "ConsumerResumed")
    )

    pause.touch()  # the consumers are stuck: in the group, consuming and committing nothing
    produce(kafka, topic, [f"s{i:04d}" for i in range(30)])  # lag 30: two pods are enough for it
    stalled = wait_for(
        "a ConsumerStalled Warning",
        lambda: more_than(stalls, events(control_plane, namespace, "ConsumerStalled")),
        timeout=60,
    )
    assert all(event["type"] == "Warning" for event in stalled)
    assert all(f"{topic}/" in event["message"] for event in stalled)  # names the lagging partitions
    assert replicas() == 2

    # Much more lag: the threshold asks for every partition's pod, the stall holds the count.
    produce(kafka, topic, [f"t{i:04d}" for i in range(300)])

    def holding() -> dict[str, Any] | None:
        seen = status()
        trigger = seen.get("triggers", {}).get("kafka", {})
        # >= 300, not 330: a consumer may finish and commit the message in hand when the pause
        # file appears (that is before the stall began), so a few of the first 30 can be gone.
        return seen if (trigger.get("value") or 0) >= 300 and trigger.get("stalled") else None

    try:
        held = wait_for("the leader to see the lag and hold", holding, timeout=60, interval=0.5)
    except AssertionError as error:
        raise AssertionError(f"{error}; status: {status()}") from error
    assert held["replicas"]["desired"] == 2
    assert replicas() == 2
    assert not events(control_plane, namespace, "Scaled")

    pause.unlink()  # it commits again
    resumed = wait_for(
        "a ConsumerResumed Event",
        lambda: more_than(resumes, events(control_plane, namespace, "ConsumerResumed")),
        timeout=60,
    )
    assert all(event["type"] == "Normal" for event in resumed)
    wait_for("scaling to resume", lambda: replicas() > 2, timeout=60)
    assert len(events(control_plane, namespace, "ConsumerStalled")) == stalls + 1, "one Warning per stall"
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false")
