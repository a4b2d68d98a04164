"""Fault: the broker stops and comes back (the same broker: same port, same data).

While it is down the agent cannot measure: replicas hold and nothing parks, however long the
idle cooldown; once it is back, the idle Deployment parks as usual. A broker outage while
parked leaves it parked, and the first message after the restart wakes it. Nothing produced
is lost (the consumers' record; for Kafka also its own group tool).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.faults.invariants import (
    check_replicas_within,
    check_writes_follow_the_lease,
    queue_messages,
)
from tests.faults.prologue import MakeArmedKafka, MakeArmedRabbitMQ
from tests.integration.rigkube import wait_for
from tests.integration.test_scale_to_zero import (
    MAX_REPLICAS,
    Background,
    KafkaIds,
    RabbitIds,
    Setup,
    wait_no_pods,
)
from tests.rig.controlplane import ControlPlane
from tests.rig.kafka import Kafka
from tests.rig.processes import Supervisor
from tests.rig.rabbitmq import RabbitMQ

pytestmark = pytest.mark.rig

COOLDOWN = 6.0  # seconds idle before the handoff; the outage lasts more than twice that
EXTRA = {"cooldown": f"{COOLDOWN:g}s"}


def outage_then_parked_outage_then_wake(
    plane: ControlPlane,
    setup: Setup,
    send: Callable[[int], list[str]],
    stop: Callable[[], None],
    start: Callable[[], Callable[[int], list[str]]],
) -> None:
    """The scenario for either broker. ``start`` brings the broker back and returns a sender
    for after the restart (a fresh producer where the old one would not reconnect)."""
    observer = setup.observer
    setup.waker.start()
    first = send(10)
    setup.wait_consumed(set(first))
    assert observer.replicas_now() == 1

    # 1. Down while running: the agent cannot tell idle from unmeasurable, so it holds.
    stop()
    down = len(observer.states)
    time.sleep(2.5 * COOLDOWN)
    during = observer.states[down:]
    assert all(seen.replicas == 1 and seen.label is None for seen in during), during
    assert observer.replicas_now() == 1
    start()

    # 2. Back: idle is measurable again, and the Deployment parks as usual.
    parked = observer.wait_parked(timeout=90, after=down)
    wait_no_pods(plane, setup)

    # 3. Down while parked: it stays parked (the waker cannot measure, so it does not wake).
    stop()
    time.sleep(5.0)
    assert all(seen.replicas == 0 for seen in observer.states[parked:])
    send_again = start()

    # 4. The first messages after the restart wake it, and every message is consumed.
    second = send_again(5)
    observer.wait_awake(timeout=60, after=parked)
    setup.wait_consumed(set(first) | set(second), timeout=90)
    assert check_writes_follow_the_lease(plane, setup.namespace, setup.name) >= 1
    check_replicas_within(observer, 1, MAX_REPLICAS)


def test_kafka_down_holds_replicas_parks_nothing_and_a_parked_deployment_wakes_once_it_is_back(
    armed_kafka: MakeArmedKafka,
    control_plane: ControlPlane,
    kafka: Kafka,
    rig_supervisor: Supervisor,
    background: Background,
    teardown: list[Callable[[], None]],
) -> None:
    armed = armed_kafka("fault-kafka-down", extra=EXTRA)
    setup, ids = armed.setup, armed.ids

    def start() -> Callable[[int], list[str]]:
        kafka.start_again(rig_supervisor)
        fresh = KafkaIds(background, kafka, ids.topic)
        teardown.append(fresh.close)
        return fresh.send

    outage_then_parked_outage_then_wake(control_plane, setup, ids.send, kafka.stop, start)
    armed.wait_no_lag()


def test_rabbitmq_down_holds_replicas_parks_nothing_and_a_parked_deployment_wakes_once_it_is_back(
    armed_rabbitmq: MakeArmedRabbitMQ,
    control_plane: ControlPlane,
    rabbitmq: RabbitMQ,
    rig_supervisor: Supervisor,
    background: Background,
    teardown: list[Callable[[], None]],
) -> None:
    armed = armed_rabbitmq("fault-rabbit-down", extra=EXTRA)
    setup, ids = armed.setup, armed.ids

    def start() -> Callable[[int], list[str]]:
        rabbitmq.start_node_again(rig_supervisor)
        fresh = RabbitIds(background, rabbitmq.amqp_url, ids.queue)
        teardown.append(fresh.close)
        return fresh.send

    outage_then_parked_outage_then_wake(control_plane, setup, ids.send, rabbitmq.stop_node, start)
    # RabbitMQ's own view: the queue is empty and nothing is left unacknowledged.
    wait_for(
        "an empty queue in rabbitmqctl's view",
        lambda: queue_messages(rabbitmq, ids.queue) == 0,
        timeout=60,
        interval=1.0,
    )
