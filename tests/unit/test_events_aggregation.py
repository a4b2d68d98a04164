"""Events aggregated like the kubelet's, and each component signing its Events as itself."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import pytest

from tidescale._events import EventRecorder
from tidescale.errors import KubeForbidden
from tidescale.kube import AGENT_COMPONENT, WAKER_COMPONENT, KubeClient, KubeConfig, ObjectReference

DEPLOYMENT: ObjectReference = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "namespace": "ns",
    "name": "orders",
}


class FakeEvents:
    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.patched: list[tuple[str, int]] = []
        self.refuse_patch = False

    async def create_event(self, involved: ObjectReference, **event: Any) -> dict[str, Any]:
        name = f"orders.{len(self.created)}"
        self.created.append({"name": name, **event})
        return {"metadata": {"name": name}}

    async def patch_event(self, namespace: str, name: str, *, count: int, last_timestamp: datetime) -> Any:
        if self.refuse_patch:
            raise KubeForbidden("events is forbidden: cannot patch")
        self.patched.append((name, count))
        return {}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def recorder(fake: FakeEvents, clock: Clock, component: str = AGENT_COMPONENT) -> EventRecorder:
    return EventRecorder(fake, instance="orders-abc", component=component, clock=clock, window=600)  # type: ignore[arg-type]


async def test_a_repeated_event_counts_on_the_first_one_instead_of_creating_another() -> None:
    fake, clock = FakeEvents(), Clock()
    events = recorder(fake, clock)
    for second in (0, 10, 20):
        clock.now = second
        await events.emit(DEPLOYMENT, reason="TriggerFailing", message="kafka down", event_type="Warning")
    assert len(fake.created) == 1
    assert fake.patched == [("orders.0", 2), ("orders.0", 3)]


async def test_another_message_or_reason_is_a_new_event() -> None:
    fake, clock = FakeEvents(), Clock()
    events = recorder(fake, clock)
    await events.emit(DEPLOYMENT, reason="Scaled", message="1 -> 2")
    await events.emit(DEPLOYMENT, reason="Scaled", message="2 -> 3")
    await events.emit(DEPLOYMENT, reason="DryRun", message="2 -> 3")
    assert [e["message"] for e in fake.created] == ["1 -> 2", "2 -> 3", "2 -> 3"]
    assert fake.patched == []


async def test_a_repeat_after_the_window_or_a_refused_patch_starts_a_new_event() -> None:
    fake, clock = FakeEvents(), Clock()
    events = recorder(fake, clock)
    await events.emit(DEPLOYMENT, reason="Recovered", message="ok")
    clock.now = 601
    await events.emit(DEPLOYMENT, reason="Recovered", message="ok")
    assert len(fake.created) == 2
    fake.refuse_patch = True
    clock.now = 602
    await events.emit(DEPLOYMENT, reason="Recovered", message="ok")
    assert len(fake.created) == 3
    assert fake.patched == []


async def test_the_recorder_passes_its_component_on() -> None:
    fake, clock = FakeEvents(), Clock()
    await recorder(fake, clock, component=WAKER_COMPONENT).emit(DEPLOYMENT, reason="Woken", message="m")
    assert fake.created[0]["component"] == WAKER_COMPONENT


@pytest.mark.parametrize("component", [AGENT_COMPONENT, WAKER_COMPONENT])
async def test_an_event_is_signed_by_the_component_that_wrote_it(component: str) -> None:
    sent: list[Any] = []

    async def request(method: str, path: str, *, what: str, body: object = None, **_: Any) -> Any:
        sent.append(body)
        return body

    async with KubeClient(KubeConfig(server="https://127.0.0.1:1", token="t")) as client:
        client._request = request  # type: ignore[method-assign]
        await client.create_event(
            DEPLOYMENT, reason="Woken", message="m", reporting_instance="w-0", component=component
        )
    assert sent[0]["reportingComponent"] == component
    assert sent[0]["source"]["component"] == component


def test_the_missing_permissions_message_carries_the_exact_rolebinding_command() -> None:
    from tidescale.rbac import REQUIRED, describe_missing

    message = describe_missing(REQUIRED[:1], namespace="shop", service_account="shop:orders")
    assert message.endswith(
        "kubectl create rolebinding tidescale-agent --clusterrole=tidescale-agent "
        "--serviceaccount=shop:orders -n shop"
    )


async def test_the_leader_says_trigger_failing_then_fallback_then_recovered_once_each() -> None:
    from tidescale.agent import Agent, AgentEnv, _Leadership
    from tidescale.election import Term
    from tidescale.hints import parse_hints
    from tidescale.policy import History, decide
    from tidescale.sources.base import Measurement, MeasurementFailure

    env = AgentEnv(pod_name="orders-7d9-abcde", namespace="shop", pod_ip="10.0.0.5", deployment="orders")
    agent = Agent(env, cast(Any, None))
    said: list[tuple[str, str]] = []

    async def event(reason: str, message: str, kind: str = "Normal") -> None:
        said.append((reason, kind))

    agent._event = event  # type: ignore[method-assign]
    hints = parse_hints(
        {
            "tidescale.io/kafka.bootstrap-servers": "k:9092",
            "tidescale.io/kafka.consumer-group": "g",
            "tidescale.io/kafka.topic": "t",
            "tidescale.io/fallback-failure-threshold": "2",
            "tidescale.io/fallback-replicas": "3",
        }
    )
    leadership = _Leadership(
        agent, cast(Any, None), Term(holder=env.pod_name, transitions=1, resource_version="1")
    )
    history = History()
    for at in range(6):
        reading = (
            Measurement(trigger="kafka", value=100, target=100, active=True, taken_at=float(at))
            if at == 5
            else MeasurementFailure(trigger="kafka", error="broker k:9092 unreachable", taken_at=float(at))
        )
        decision = decide([reading], current=2, hints=hints, now=float(at), history=history)
        history = decision.history
        await leadership._report_triggers(decision)
    assert said == [("TriggerFailing", "Warning"), ("FallbackApplied", "Warning"), ("Recovered", "Normal")]
