"""The prologue every fault test shares, in one place: a consumer Deployment with its agent and
trigger, armed for teardown (fixtures ``armed_kafka``, ``armed_rabbitmq``), and for the faults
that strike a leader, settled at its minimum with an agent leading (``led_kafka``). Built on the
scale-to-zero tests' ``kafka_setup``, ``rabbitmq_setup`` and ``arm``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from tests.faults.invariants import group_lag, lease_holder
from tests.integration.rigkube import get, wait_for
from tests.integration.test_scale_to_zero import (
    Background,
    KafkaIds,
    RabbitIds,
    Setup,
    arm,
    kafka_setup,
    rabbitmq_setup,
)
from tests.rig.controlplane import ControlPlane
from tests.rig.kafka import Kafka
from tests.rig.podrunner import PodRunner
from tests.rig.processes import Supervisor
from tests.rig.rabbitmq import RabbitMQ

# Slow enough that a burst is still there when a new leader looks, fast enough to drain in seconds.
LED_WORK_SECONDS = 0.2


@dataclass(frozen=True, kw_only=True, slots=True)
class ArmedKafka:
    """A Kafka consumer Deployment with its agent, its watch and a waker not started yet; the
    namespace, producers and waker are undone at the end of the test."""

    setup: Setup
    ids: KafkaIds
    kafka: Kafka
    group: str  # the consumer group its hints name

    def wait_no_lag(self, *, timeout: float = 60) -> None:
        """Until Kafka's own group tool shows nothing left to consume in the group."""
        wait_for(
            "no lag left in Kafka's own view",
            lambda: group_lag(self.kafka, self.group) == 0,
            timeout=timeout,
            interval=1.0,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class ArmedRabbitMQ:
    setup: Setup
    ids: RabbitIds


@dataclass(frozen=True, kw_only=True, slots=True)
class LedKafka(ArmedKafka):
    """An :class:`ArmedKafka` at its minimum with an agent leading."""

    settled: int  # the observer's index of the first state at the minimum
    leader: str  # the pod whose agent held the Lease once settled


class MakeArmedKafka(Protocol):
    def __call__(
        self, prefix: str, *, work_seconds: float = ..., extra: dict[str, str] | None = ...
    ) -> ArmedKafka: ...


class MakeArmedRabbitMQ(Protocol):
    def __call__(self, prefix: str, *, extra: dict[str, str] | None = ...) -> ArmedRabbitMQ: ...


class MakeLedKafka(Protocol):
    def __call__(
        self, prefix: str, *, min_replicas: int, max_replicas: int, work_seconds: float = ...
    ) -> LedKafka: ...


@pytest.fixture
def armed_kafka(
    control_plane: ControlPlane,
    pod_runner: PodRunner,  # requested so that the Deployment's pods run
    kafka: Kafka,
    rig_supervisor: Supervisor,
    rig_run_dir: Path,
    background: Background,
    teardown: list[Callable[[], None]],
) -> MakeArmedKafka:
    """``armed_kafka(prefix, work_seconds=..., extra={hint: value})``: kafka_setup, then arm."""

    def make(prefix: str, *, work_seconds: float = 0.02, extra: dict[str, str] | None = None) -> ArmedKafka:
        setup, ids = kafka_setup(
            control_plane,
            rig_supervisor,
            background,
            kafka,
            rig_run_dir,
            prefix,
            work_seconds=work_seconds,
            extra=extra,
        )
        arm(teardown, control_plane, setup, ids)
        annotations = get(control_plane, "deployment", setup.name, setup.namespace)["metadata"]["annotations"]
        group = annotations["tidescale.io/kafka.consumer-group"]
        return ArmedKafka(setup=setup, ids=ids, kafka=kafka, group=group)

    return make


@pytest.fixture
def armed_rabbitmq(
    control_plane: ControlPlane,
    pod_runner: PodRunner,  # requested so that the Deployment's pods run
    rabbitmq: RabbitMQ,
    rig_supervisor: Supervisor,
    rig_run_dir: Path,
    background: Background,
    teardown: list[Callable[[], None]],
) -> MakeArmedRabbitMQ:
    """``armed_rabbitmq(prefix, extra={hint: value})``: rabbitmq_setup, then arm."""

    def make(prefix: str, *, extra: dict[str, str] | None = None) -> ArmedRabbitMQ:
        setup, ids = rabbitmq_setup(
            control_plane, rig_supervisor, background, rabbitmq, rig_run_dir, prefix, extra=extra
        )
        arm(teardown, control_plane, setup, ids)
        return ArmedRabbitMQ(setup=setup, ids=ids)

    return make


@pytest.fixture
def led_kafka(control_plane: ControlPlane, armed_kafka: MakeArmedKafka) -> MakeLedKafka:
    """``led_kafka(prefix, min_replicas=..., max_replicas=...)``: an armed Kafka Deployment with
    those bounds, a lag threshold of 20 and a 10-pods-a-second scale-up (so a burst of 120 asks
    for more than the maximum at once), waited for until it stands at its minimum with a leader."""

    def make(
        prefix: str, *, min_replicas: int, max_replicas: int, work_seconds: float = LED_WORK_SECONDS
    ) -> LedKafka:
        armed = armed_kafka(
            prefix,
            work_seconds=work_seconds,
            extra={
                "min-replicas": str(min_replicas),
                "max-replicas": str(max_replicas),
                "scale-up-policies": "10 pods/1s",
            },
        )
        namespace, name = armed.setup.namespace, armed.setup.name
        settled = armed.setup.observer.wait(
            f"the minimum {min_replicas}", lambda s: s.replicas == min_replicas, timeout=60
        )
        leader = wait_for("a leader", lambda: lease_holder(control_plane, namespace, name), timeout=60)
        return LedKafka(
            setup=armed.setup,
            ids=armed.ids,
            kafka=armed.kafka,
            group=armed.group,
            settled=settled,
            leader=leader,
        )

    return make
