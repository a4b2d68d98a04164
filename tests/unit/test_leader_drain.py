"""The leader acts on the drain-time target and on stalled consumers: its ticks keep the window of
progress snapshots its readings carry, scale to the count the drain formula gives on the rates it
measured, hold a stalled group with one ConsumerStalled Warning naming the partitions, and resume
(with a ConsumerResumed Event) when the group commits again. Metrics and the status say the same."""

from __future__ import annotations

import json
import math
from typing import Any

from tests.unit.test_leader_writes import Clock, FakeKube, hints_annotations, leader, status_writes
from tidescale._drain import DrainInputs, recommend_drain
from tidescale._rates import ProgressSnapshot
from tidescale.agent import _Leadership
from tidescale.parking import STATUS_ANNOTATION
from tidescale.sources.base import Measurement

LABELS = {"trigger": "orders", "type": "kafka"}
PARTITIONS = 8


class Group:
    """A consumer group on PARTITIONS partitions: per-pod rate, arrival rate, committed offsets."""

    def __init__(
        self, *, backlog: int, per_pod: float, arrival: float = 0.0, threshold: float = 100.0
    ) -> None:
        self.threshold = threshold
        self.consumed = 0.0
        self.produced = float(backlog)
        self.per_pod = per_pod
        self.arrival = arrival

    def advance(self, seconds: float, pods: int) -> None:
        self.produced += self.arrival * seconds
        self.consumed = min(self.produced, self.consumed + self.per_pod * pods * seconds)

    def reading(self, clock: Clock) -> Measurement:
        consumed = {f"orders/{p}": int(self.consumed) // PARTITIONS for p in range(PARTITIONS)}
        produced = {f"orders/{p}": int(self.produced) // PARTITIONS for p in range(PARTITIONS)}
        lag = {unit: float(produced[unit] - consumed[unit]) for unit in consumed}
        return Measurement(
            trigger="orders",
            value=sum(lag.values()),
            target=self.threshold,
            active=True,
            replica_cap=PARTITIONS,
            detail=lag,
            taken_at=clock.now,
            progress=ProgressSnapshot(taken_at=clock.now, consumed=consumed, produced=produced, lag=lag),
        )


async def tick(leadership: _Leadership, clock: Clock, group: Group) -> None:
    agent = leadership.agent
    reading = group.reading(clock)

    async def measure(_: Any) -> tuple[Measurement, ...]:
        return (reading,)

    agent._measure = measure  # type: ignore[method-assign]
    assert agent.hints is not None
    assert agent.deployment is not None
    await leadership.tick(agent.hints, agent.deployment)
    # The scale write lands: the Deployment now has that many pods, all Ready.
    deployment = agent.deployment
    replicas = deployment["spec"]["replicas"]
    if leadership.agent._client.scale_writes:  # type: ignore[attr-defined]
        replicas = leadership.agent._client.scale_writes[-1]  # type: ignore[attr-defined]
    deployment["spec"]["replicas"] = replicas
    deployment["status"] = {"replicas": replicas, "readyReplicas": replicas}
    group.advance(1.0, replicas)
    clock.now += 1.0


def events(kube: FakeKube, reason: str) -> list[dict[str, Any]]:
    return [event for event in kube.events if event.get("reason") == reason]


async def test_a_drain_time_trigger_scales_to_the_count_the_formula_gives_on_the_measured_rates() -> None:
    # A threshold that asks for one pod: until the rate is measured, nothing moves.
    annotations = hints_annotations(
        max_replicas="20",
        scale_up_policies="20 pods/1s",
        **{"orders.drain-time": "60s", "orders.lag-threshold": "1000000"},
    )
    leadership, kube, clock = leader(annotations, replicas=1)
    group = Group(backlog=10_000, per_pod=40.0, arrival=20.0, threshold=1_000_000.0)
    for _ in range(40):
        await tick(leadership, clock, group)
        if kube.scale_writes:
            break
    assert kube.scale_writes, "the leader scaled once the per-pod rate was measured"
    (scaled,) = events(kube, "Scaled")
    status = json.loads(status_writes(kube)[-1]["metadata"]["annotations"][STATUS_ANNOTATION])
    drain = status["triggers"]["orders"]["drain"]
    assert drain["measured"] is True
    assert drain["perPodRate"] == 40.0
    assert drain["arrivalRate"] == 20.0
    expected = recommend_drain(
        DrainInputs(
            backlog=drain["backlog"],
            arrival_rate=20.0,
            per_pod_rate=40.0,
            target_seconds=60.0,
            cap=PARTITIONS,
            current=1,
            threshold=1_000_000.0,
        )
    )
    assert kube.scale_writes[0] == expected.replicas == drain["replicas"]
    assert expected.replicas == math.ceil((20.0 + drain["backlog"] / 60.0) / 40.0)
    assert "each pod 40/s" in scaled["message"]
    assert f"1 -> {expected.replicas}" in scaled["message"]
    metrics = leadership.agent.metrics
    assert metrics.value("tidescale_drain_per_pod_rate", LABELS) == 40.0
    assert metrics.value("tidescale_drain_arrival_rate", LABELS) == 20.0
    assert metrics.value("tidescale_drain_replicas", LABELS) == expected.replicas


async def test_until_the_per_pod_rate_is_measured_the_threshold_decides_and_the_rate_gauge_is_absent() -> (
    None
):
    annotations = hints_annotations(max_replicas="20", **{"orders.drain-time": "60s"})
    leadership, kube, clock = leader(annotations, replicas=1)
    await tick(leadership, clock, Group(backlog=400, per_pod=40.0))
    assert kube.scale_writes == [4]  # ceil(400 / lag-threshold 100)
    assert leadership.agent.metrics.value("tidescale_drain_per_pod_rate", LABELS) is None
    (scaled,) = events(kube, "Scaled")
    assert "per-pod rate not measured yet" in scaled["message"]


async def test_a_group_that_stops_committing_is_held_warned_once_and_resumes_when_it_commits() -> None:
    annotations = hints_annotations(max_replicas="30", stall_after="10s", scale_up_policies="30 pods/1s")
    leadership, kube, clock = leader(annotations, replicas=2)
    metrics = leadership.agent.metrics
    group = Group(backlog=300, per_pod=0.0, arrival=10.0)  # nothing is consumed, lag grows
    # Until stall-after has passed, the lag scales it as any lag does.
    for _ in range(15):
        await tick(leadership, clock, group)
        if events(kube, "ConsumerStalled"):
            break
    assert events(kube, "ConsumerStalled"), "stalled after stall-after without progress"
    assert kube.scale_writes[0] == 3
    held_at = leadership.agent.deployment["spec"]["replicas"]  # type: ignore[index]
    writes = list(kube.scale_writes)
    for _ in range(20):
        await tick(leadership, clock, group)
    assert kube.scale_writes == writes, "held although the lag asks for more"
    assert held_at < math.ceil(group.produced / 100) <= PARTITIONS, "the lag asks for more, below the cap"
    (stalled,) = events(kube, "ConsumerStalled")
    assert stalled["event_type"] == "Warning"
    assert "orders/0" in stalled["message"]
    assert "orders/7" in stalled["message"]
    assert metrics.value("tidescale_consumer_stalled", LABELS) == 1
    status = json.loads(status_writes(kube)[-1]["metadata"]["annotations"][STATUS_ANNOTATION])
    assert status["triggers"]["orders"]["stalled"]["units"][0] == "orders/0"
    assert status["heldBy"]["kind"] == "limit"
    # The label says it holds, so the status is rewritten while the stall lasts (every 10 s), not
    # only on the 60 s heartbeat.
    assert status_writes(kube)[-1]["metadata"]["labels"] == {"tidescale.io/state": "holding"}

    group.per_pod = 1.0  # it commits again
    for _ in range(3):
        await tick(leadership, clock, group)
    assert events(kube, "ConsumerResumed")
    assert len(events(kube, "ConsumerStalled")) == 1
    assert metrics.value("tidescale_consumer_stalled", LABELS) == 0
    assert kube.scale_writes[-1] > held_at, "scaling resumed: the lag asks for more"


async def test_stall_after_zero_never_holds() -> None:
    annotations = hints_annotations(max_replicas="8", stall_after="0", scale_up_policies="1 pods/1s")
    leadership, kube, clock = leader(annotations, replicas=1)
    group = Group(backlog=800, per_pod=0.0, arrival=50.0)
    for _ in range(15):
        await tick(leadership, clock, group)
    assert kube.scale_writes[-1] == 8
    assert not events(kube, "ConsumerStalled")
    assert leadership.agent.metrics.value("tidescale_consumer_stalled", LABELS) is None
