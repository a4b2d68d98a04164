"""A RabbitMQ queue-pattern that matches no queue reads 0, as KEDA reads it: the real agent says so in a
NoQueueMatched Warning Event on the Deployment, the Deployment parks (no queue, no message waiting),
and the real waker wakes it once a matching queue holds a message.

Reuses the scale-to-zero machinery of ``test_scale_to_zero`` (the Deployment's watch, the waker
process); the sample consumer works a queue of its own that the pattern does not match.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from tests.integration.rigkube import (
    apply,
    declare_queue,
    items,
    namespace_with_agent_rbac,
    rabbitmq_consumer_deployment,
    rabbitmq_hints,
    unique,
    wait_for,
    waker_rbac,
)
from tests.integration.test_scale_to_zero import FAST, Background, Observer, WakerProcess
from tests.rig.controlplane import ControlPlane
from tests.rig.podrunner import PodRunner
from tests.rig.processes import Supervisor
from tests.rig.rabbitmq import RabbitMQ
from tidescale.kube import AGENT_COMPONENT, WAKER_COMPONENT, KubeConfig

pytestmark = pytest.mark.rig


@pytest.fixture
def background() -> Iterator[Background]:
    loop = Background()
    yield loop
    loop.close()


@pytest.fixture
def teardown(control_plane: ControlPlane) -> Iterator[list[Callable[[], None]]]:
    undo: list[Callable[[], None]] = []
    yield undo
    for step in reversed(undo):
        with contextlib.suppress(Exception):
            step()


def _warnings(plane: ControlPlane, namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
    return [
        e
        for e in items(plane, "events", namespace)
        if e["involvedObject"]["name"] == name and e["reason"] == reason and e["type"] == "Warning"
    ]


def _component(event: dict[str, Any]) -> str:
    return str(event.get("reportingComponent") or (event.get("source") or {}).get("component") or "")


async def _publish(amqp_url: str, queue: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True)
        await channel.default_exchange.publish(aio_pika.Message(b"wake"), routing_key=queue)


def test_an_unmatched_pattern_warns_parks_and_a_matching_queue_with_a_message_wakes_it(
    control_plane: ControlPlane,
    pod_runner: PodRunner,
    rabbitmq: RabbitMQ,
    rig_supervisor: Supervisor,
    rig_run_dir: Path,
    background: Background,
    teardown: list[Callable[[], None]],
) -> None:
    namespace, name = unique("no-match"), "jobs"
    own_queue, secret = unique("own"), "rabbitmq-credentials"
    pattern_prefix = unique("orders")
    namespace_with_agent_rbac(control_plane, namespace)

    def delete_namespace() -> None:
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)

    teardown.append(delete_namespace)
    kubeconfig = waker_rbac(control_plane, [namespace])
    control_plane.kubectl(
        "create", "secret", "generic", secret, "-n", namespace,
        f"--from-literal=username={rabbitmq.username}", f"--from-literal=password={rabbitmq.password}",
    )  # fmt: skip
    declare_queue(rabbitmq.amqp_url, own_queue)
    hints = rabbitmq_hints(rabbitmq.management_url, own_queue, secret, FAST)
    del hints["tidescale.io/rabbitmq.queue"]
    hints["tidescale.io/rabbitmq.queue-pattern"] = f"{pattern_prefix}-.*"
    deployment = rabbitmq_consumer_deployment(
        name,
        amqp_url=rabbitmq.amqp_url,
        queue=own_queue,
        secret=secret,
        annotations=hints,
        record_file=rig_run_dir / f"{namespace}-consumed.txt",
    )
    observer = Observer(
        background, KubeConfig.from_kubeconfig(control_plane.admin_kubeconfig), namespace, name
    )
    apply(control_plane, deployment, namespace=namespace)
    waker = WakerProcess(rig_supervisor, kubeconfig, namespace)
    teardown.append(waker.stop)
    waker.start()

    # The leader reads 0 for the pattern, says why, and parks through the waker (KEDA: 0 is idle).
    from_agent = wait_for(
        "the agent's NoQueueMatched Warning",
        lambda: [
            e
            for e in _warnings(control_plane, namespace, name, "NoQueueMatched")
            if _component(e) == AGENT_COMPONENT
        ],
        timeout=60,
    )
    assert f"'{pattern_prefix}-.*' (whole names) matches no queue of vhost '/'" in from_agent[0]["message"]
    assert rabbitmq.password not in from_agent[0]["message"]
    parked = observer.wait_parked(timeout=90)
    # Said once, not once per poll: the leader measured every second until it parked.
    agent_events = [
        e
        for e in _warnings(control_plane, namespace, name, "NoQueueMatched")
        if _component(e) == AGENT_COMPONENT
    ]
    assert sum(int(e.get("count") or 1) for e in agent_events) == 1, agent_events
    # Parked, the waker measures the pattern too, and says the same once.
    wait_for(
        "the waker's NoQueueMatched Warning",
        lambda: [
            e
            for e in _warnings(control_plane, namespace, name, "NoQueueMatched")
            if _component(e) == WAKER_COMPONENT
        ],
        timeout=30,
    )

    # A matching queue appears with a message: the waker wakes the Deployment.
    background.run(_publish(rabbitmq.amqp_url, f"{pattern_prefix}-1"))
    observer.wait_awake(timeout=60, after=parked)
    observer.check_invariants()
    rabbitmq.rabbitmqctl("delete_queue", f"{pattern_prefix}-1")
