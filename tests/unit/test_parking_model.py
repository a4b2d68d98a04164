"""Property: any interleaving of leader and waker steps, message arrivals, restarts, failovers and
scaling by hand ends either parked with no pending activity, or awake.

The model drives the real protocol functions. The Deployment is a JSON object with a
resourceVersion; a write is the decision's merge patch, applied only if its resourceVersion is
the current one (else 409, as the API server does). Each side's read, measurement and write are
separate steps, so every stale read that can happen does happen in some run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidescale.parking import (
    PARK_LABEL,
    DeploymentSnapshot,
    LeaderAction,
    Probe,
    Write,
    leader_step,
    waker_step,
)

MAX_REPLICAS = 5
WAKE_REPLICAS = 2
ACK_TIMEOUT = 30.0


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@dataclass
class Leader:
    name: str
    transitions: int
    my_epoch: int | None = None
    read: DeploymentSnapshot | None = None
    idle: bool | None = None


@dataclass
class Waker:
    name: str
    cache: DeploymentSnapshot | None = None
    probe: Probe | None = None


class World:
    def __init__(self) -> None:
        self.rv = 1
        self.deployment: dict[str, Any] = {
            "metadata": {
                "namespace": "shop",
                "name": "web",
                "resourceVersion": "1",
                "labels": {},
                "annotations": {},
            },
            "spec": {"replicas": 1},
        }
        self.pending = 0
        self.now = datetime(2026, 11, 28, tzinfo=UTC)
        self.leader = Leader(name="web-0", transitions=0)
        self.wakers = [Waker(name="waker-0"), Waker(name="waker-1")]
        self.writes: list[str] = []

    # -- the API server -----------------------------------------------------------------------

    @property
    def replicas(self) -> int:
        replicas: int = self.deployment["spec"]["replicas"]
        return replicas

    def snapshot(self) -> DeploymentSnapshot:
        return DeploymentSnapshot.from_object(copy.deepcopy(self.deployment))

    def patch(self, body: Write) -> bool:
        if body["metadata"]["resourceVersion"] != self.deployment["metadata"]["resourceVersion"]:
            return False
        self.rv += 1
        applied = merge_patch(self.deployment, dict(copy.deepcopy(body)))
        applied["metadata"]["resourceVersion"] = str(self.rv)
        self.deployment = applied
        return True

    # -- the world ----------------------------------------------------------------------------

    def messages_arrive(self, count: int) -> None:
        self.pending += count

    def pods_consume(self, everything: bool) -> None:
        if self.replicas > 0 and self.pending > 0:
            self.pending = 0 if everything else self.pending - 1

    def time_passes(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def someone_scales_by_hand(self, replicas: int) -> None:
        # kubectl scale: no resourceVersion precondition.
        self.rv += 1
        self.deployment["spec"]["replicas"] = replicas
        self.deployment["metadata"]["resourceVersion"] = str(self.rv)

    # -- the leader ---------------------------------------------------------------------------

    def leader_reads_and_measures(self) -> None:
        # The measurement follows the read, so that the park write rests on a measurement taken
        # after the ack was seen; anything can happen between this and leader_acts.
        self.leader.read = self.snapshot()
        self.leader.idle = self.pending == 0

    def leader_acts(self) -> None:
        leader = self.leader
        if leader.read is None or leader.idle is None:
            return
        decision = leader_step(
            leader.read,
            me=leader.name,
            lease_transitions=leader.transitions,
            my_epoch=leader.my_epoch,
            idle=leader.idle,
            now=self.now,
            ack_timeout=ACK_TIMEOUT,
            triggers=("kafka",),
        )
        leader.read, leader.idle = None, None
        if decision.write is None:
            if decision.action is LeaderAction.FORGET:
                leader.my_epoch = None
            return
        if self.patch(decision.write):
            self.writes.append(f"leader {decision.action.value}")
            leader.my_epoch = decision.epoch

    def the_lease_moves_to_another_pod(self) -> None:
        # The old leader's writes are fenced, so it simply stops; the new one knows nothing.
        self.leader = Leader(
            name=f"web-{self.leader.transitions + 1}", transitions=self.leader.transitions + 1
        )

    # -- the wakers ---------------------------------------------------------------------------

    def waker_sees_a_watch_event(self, index: int) -> None:
        snap = self.snapshot()
        # The watch is filtered by the label: without it the object leaves the waker's view.
        self.wakers[index].cache = snap if snap.label is not None else None

    def waker_polls(self, index: int, works: bool) -> None:
        """Measure what it tracks, then decide on its cached (possibly stale) view."""
        waker = self.wakers[index]
        if waker.cache is None:
            return  # it only measures what it tracks
        record = waker.cache.record
        epoch = record.epoch if record is not None else 0
        waker.probe = Probe(epoch=epoch, active=self.pending > 0) if works else None
        decision = waker_step(
            waker.cache, waker=waker.name, probe=waker.probe, wake_replicas=WAKE_REPLICAS, now=self.now
        )
        if decision.write is None:
            return
        if self.patch(decision.write):
            self.writes.append(f"{waker.name} {decision.action.value}")
        waker.cache = None  # after a write or a 409, the next watch event brings the object back

    def waker_restarts(self, index: int) -> None:
        self.wakers[index] = Waker(name=self.wakers[index].name)

    # -- what must hold -----------------------------------------------------------------------

    def zero_replicas_only_while_the_waker_watches(self) -> None:
        labels = self.deployment["metadata"].get("labels", {})
        if self.replicas == 0:
            assert labels.get(PARK_LABEL) == "parked", (self.deployment, self.writes)
        assert 0 <= self.replicas <= MAX_REPLICAS

    def settle(self) -> None:
        # No more messages; everyone keeps running fairly (time passing past the ack timeout).
        for _ in range(6):
            if self.replicas > 0:
                self.pending = 0  # running pods drain the backlog
            for index in (0, 1):
                self.waker_sees_a_watch_event(index)
                self.waker_polls(index, works=True)
            self.leader_reads_and_measures()
            self.leader_acts()
            self.time_passes(31.0)
        assert self.replicas > 0 or self.pending == 0, (self.deployment, self.writes)

    def run(self, step: str) -> None:
        match step:
            case "message":
                self.messages_arrive(1)
            case "burst":
                self.messages_arrive(3)
            case "consume-one" | "consume-all":
                self.pods_consume(everything=step == "consume-all")
            case "tick":
                self.time_passes(5.0)
            case "ack-timeout":
                self.time_passes(ACK_TIMEOUT + 1)
            case "hand-scale":
                self.someone_scales_by_hand(3)
            case "leader-read":
                self.leader_reads_and_measures()
            case "leader-act":
                self.leader_acts()
            case "failover":
                self.the_lease_moves_to_another_pod()
            case "waker0-watch" | "waker1-watch":
                self.waker_sees_a_watch_event(int(step[5]))
            case "waker0-poll" | "waker1-poll":
                self.waker_polls(int(step[5]), works=True)
            case "waker0-poll-fails" | "waker1-poll-fails":
                self.waker_polls(int(step[5]), works=False)
            case "waker0-restart" | "waker1-restart":
                self.waker_restarts(int(step[5]))
            case _:
                raise AssertionError(step)
        self.zero_replicas_only_while_the_waker_watches()


# Weights by repetition: protocol steps are frequent, disturbances rarer, so that most runs get
# through whole handoffs and the disturbances land at every point of them.
STEPS = (
    ["leader-read", "leader-act"] * 6
    + ["waker0-watch", "waker0-poll", "waker1-watch", "waker1-poll"] * 3
    + ["message", "burst", "consume-one", "consume-all", "consume-all", "tick", "ack-timeout"]
    + ["hand-scale", "failover", "waker0-poll-fails", "waker1-poll-fails", "waker0-restart", "waker1-restart"]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedule=st.lists(st.sampled_from(STEPS), min_size=40, max_size=150))
def test_every_interleaving_ends_parked_and_idle_or_awake(schedule: list[str]) -> None:
    world = World()
    for step in schedule:
        world.run(step)
    world.settle()
