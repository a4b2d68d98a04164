"""What the leader writes to its Deployment per poll: the status and policy state on change and on a
slow heartbeat (faster while a window holds), the state label only for holds longer than one poll,
and nothing at all on a Deployment whose park record or status is of a newer protocol version."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, cast

import pytest

from tidescale.agent import STATUS_HEARTBEAT, STATUS_HOLDING_INTERVAL, Agent, AgentEnv, _Leadership
from tidescale.election import Term
from tidescale.hints import parse_hints
from tidescale.kube import ObjectReference
from tidescale.parking import PARK_RECORD_ANNOTATION, STATUS_ANNOTATION
from tidescale.sources.base import Measurement

ENV = AgentEnv(pod_name="orders-7d9-abcde", namespace="shop", pod_ip="10.0.0.5", deployment="orders")
TERM = Term(holder=ENV.pod_name, transitions=3, resource_version="1")
P = "tidescale.io/"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeKube:
    """The API calls a leader's tick makes, recorded."""

    def __init__(self) -> None:
        self.deployment_patches: list[dict[str, Any]] = []
        self.scale_writes: list[int] = []
        self.events: list[dict[str, Any]] = []

    async def patch_deployment(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.deployment_patches.append(body)
        return {}

    async def patch_scale(self, namespace: str, name: str, replicas: int, **_: Any) -> dict[str, Any]:
        self.scale_writes.append(replicas)
        return {}

    async def create_event(self, involved: ObjectReference, **event: Any) -> dict[str, Any]:
        self.events.append(event)
        return {"metadata": {"name": f"e{len(self.events)}"}}

    async def patch_event(self, namespace: str, name: str, *, count: int, last_timestamp: datetime) -> Any:
        return {}


class Elector:
    """Always leading in TERM; a fenced write is just made."""

    def term(self) -> Term:
        return TERM

    async def fenced(self, write: Any, *, term: Term | None = None) -> Any:
        return await write()


def hints_annotations(**knobs: str) -> dict[str, str]:
    annotations = {
        P + "orders.type": "kafka",
        P + "orders.bootstrap-servers": "kafka:9092",
        P + "orders.consumer-group": "billing",
        P + "orders.topic": "orders",
        P + "polling-interval": "1s",
    }
    annotations.update({P + name.replace("_", "-"): value for name, value in knobs.items()})
    return annotations


def leader(annotations: dict[str, str], *, replicas: int) -> tuple[_Leadership, FakeKube, Clock]:
    kube, clock = FakeKube(), Clock()
    agent = Agent(ENV, cast(Any, kube), clock=clock)
    agent.hints = parse_hints(annotations)
    agent.deployment = {
        "metadata": {"name": "orders", "namespace": "shop", "annotations": annotations},
        "spec": {"replicas": replicas},
        "status": {"replicas": replicas, "readyReplicas": replicas},
    }
    leadership = _Leadership(agent, cast(Any, Elector()), TERM)

    async def no_peers(*_: Any) -> None:
        return None

    leadership._maybe_refresh_peers = no_peers  # type: ignore[method-assign]
    return leadership, kube, clock


def lag(value: float, clock: Clock) -> Measurement:
    return Measurement(trigger="orders", value=value, target=100, active=value > 0, taken_at=clock.now)


async def run_ticks(
    leadership: _Leadership, clock: Clock, values: list[float], *, replicas: int | None = None
) -> None:
    agent = leadership.agent
    for value in values:
        readings = (lag(value, clock),)

        async def measure(_: Any, readings: tuple[Measurement, ...] = readings) -> tuple[Measurement, ...]:
            return readings

        agent._measure = measure  # type: ignore[method-assign]
        assert agent.hints is not None
        assert agent.deployment is not None
        if replicas is not None:
            agent.deployment["spec"]["replicas"] = replicas
        await leadership.tick(agent.hints, agent.deployment)
        clock.now += 1.0


def status_writes(kube: FakeKube) -> list[dict[str, Any]]:
    return [p for p in kube.deployment_patches if STATUS_ANNOTATION in p["metadata"].get("annotations", {})]


async def test_a_steady_deployment_writes_its_status_once_then_only_on_the_heartbeat() -> None:
    leadership, kube, clock = leader(hints_annotations(min_replicas="2", max_replicas="2"), replicas=2)
    # Load that moves every poll but changes nothing: same count, still active.
    assert STATUS_HEARTBEAT == 60.0
    values = [150.0 + (i % 7) for i in range(180)]
    await run_ticks(leadership, clock, values)
    written = status_writes(kube)
    # Three minutes: the first write, then one per heartbeat (the old rule wrote one every 10 s: 18).
    assert 3 <= len(written) <= 4, len(written)
    assert kube.scale_writes == []
    status = json.loads(written[0]["metadata"]["annotations"][STATUS_ANNOTATION])
    assert status["version"] == 1
    assert written[0]["metadata"]["labels"] == {"tidescale.io/state": "scaling"}


async def test_a_turn_to_activity_is_written_at_once_and_a_turn_to_idle_waits_for_the_heartbeat() -> None:
    annotations = hints_annotations(min_replicas="1", max_replicas="1", scale_down_stabilization="0s")
    leadership, kube, clock = leader(annotations, replicas=1)
    await run_ticks(
        leadership, clock, [0.0] * 70
    )  # the first write (a start counts as activity), a heartbeat
    idle_written = len(status_writes(kube))
    assert idle_written <= 3  # the first, the seed leaving the window, the heartbeat
    await run_ticks(leadership, clock, [50.0])  # active again: a new leader must know at once
    assert len(status_writes(kube)) == idle_written + 1
    # Flapping between idle and active: nothing new to say until the heartbeat.
    await run_ticks(leadership, clock, [0.0, 50.0, 0.0, 3.0, 0.0, 0.0, 8.0, 0.0])
    assert len(status_writes(kube)) == idle_written + 1


async def test_while_a_window_holds_the_policy_state_is_written_every_holding_interval() -> None:
    annotations = hints_annotations(min_replicas="1", max_replicas="10", scale_down_stabilization="300s")
    leadership, kube, clock = leader(annotations, replicas=6)
    await run_ticks(leadership, clock, [600.0])  # 6 recommended: the window now remembers 6
    held_from = len(status_writes(kube))
    seconds = int(STATUS_HOLDING_INTERVAL) * 4
    await run_ticks(leadership, clock, [100.0] * seconds)  # 1 recommended, held at 6 by the window
    assert kube.scale_writes == []
    writes = status_writes(kube)[held_from:]
    assert 4 <= len(writes) <= 6, len(writes)
    labels = [w["metadata"]["labels"]["tidescale.io/state"] for w in writes]
    assert labels[-1] == "holding"


async def test_a_hold_of_one_poll_between_rate_limited_steps_does_not_flip_the_state_label() -> None:
    annotations = hints_annotations(min_replicas="1", max_replicas="10", scale_up_policies="1 pods/2s")
    leadership, kube, clock = leader(annotations, replicas=1)
    # The policy lets one pod more every 2 s, polls come every 1 s: a step, a held poll, a step...
    replicas = 1
    for _ in range(8):
        await run_ticks(leadership, clock, [1000.0], replicas=replicas)
        replicas = kube.scale_writes[-1] if kube.scale_writes else replicas
    assert kube.scale_writes == [2, 3, 4, 5]
    labels = [w["metadata"]["labels"]["tidescale.io/state"] for w in status_writes(kube)]
    assert set(labels) == {"scaling"}, labels


@pytest.mark.parametrize("annotation", [PARK_RECORD_ANNOTATION, STATUS_ANNOTATION])
async def test_a_deployment_carrying_a_newer_protocol_version_gets_no_write_and_one_warning(
    annotation: str,
) -> None:
    annotations = hints_annotations(min_replicas="1", max_replicas="10")
    annotations[annotation] = json.dumps({"version": 2, "epoch": 1, "state": "requested"})
    leadership, kube, clock = leader(annotations, replicas=1)
    await run_ticks(leadership, clock, [1000.0] * 5)  # would scale up, if it acted
    assert kube.scale_writes == []
    assert kube.deployment_patches == []
    warnings = [e for e in kube.events if e["reason"] == "ProtocolTooNew"]
    assert len(warnings) == 1
    assert "protocol version 2" in warnings[0]["message"]
    assert leadership.agent.metrics.value("tidescale_protocol_hold") == 1
    # The newer agent's record gone (say, a rollback that removed it): it acts again.
    assert leadership.agent.deployment is not None
    del leadership.agent.deployment["metadata"]["annotations"][annotation]
    await run_ticks(leadership, clock, [1000.0])
    assert kube.scale_writes
    assert leadership.agent.metrics.value("tidescale_protocol_hold") == 0


async def test_light_load_whose_lag_crosses_zero_every_few_polls_writes_only_on_the_heartbeat() -> None:
    leadership, kube, clock = leader(hints_annotations(min_replicas="1", max_replicas="1"), replicas=1)
    # Lag 0 most polls, a few messages now and then: active and idle by turns, one replica all along.
    await run_ticks(leadership, clock, [(0.0, 0.0, 3.0, 0.0, 5.0, 1.0, 0.0)[i % 7] for i in range(180)])
    written = status_writes(kube)
    assert len(written) <= 5, len(written)  # the old rule: 18; flipping the label each turn: ~100
    # The down window "holds" 1 against a recommendation of 0 that min-replicas lifts to 1 anyway.
    assert {w["metadata"]["labels"]["tidescale.io/state"] for w in written} == {"scaling"}
