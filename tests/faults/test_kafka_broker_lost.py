"""Fault: one broker of a three-broker Kafka cluster is killed (SIGKILL), then restarted.

The broker killed is the one coordinating the measured group, and it leads some of the topic's
partitions (replication factor 3). Kafka fences it, moves its leaderships and the coordinator to
the other two; the agent's measurements fail while the partitions it led have no leader, then
follow the new leaders and coordinator within a poll or two (counted on the leader's /metrics).
Meanwhile nothing scales wrongly: the measured lag does not change, so neither do the replicas.
A burst while the broker is still down scales up; the restarted broker changes nothing.

The agent measures a group whose lag the test holds still: it has offsets committed at the start
of the topic and no member, so Kafka's own tool (``kafka-consumer-groups --describe``) must show
exactly the value the agent reports, before, during and after the failover. The Deployment's
consumers read the same topic in a group of their own, and lose nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.agent_metrics import KAFKA_GROUP_SCOPE as GROUP
from tests.faults.agent_metrics import counter, sample, scrape
from tests.faults.held_lag import deploy_consumers, tool_lag
from tests.faults.invariants import check_replicas_within, check_writes_follow_the_lease, lease_holder
from tests.integration.rigkube import (
    get,
    unique,
    wait_for,
)
from tests.integration.test_scale_to_zero import Background, KafkaIds
from tests.rig.controlplane import ControlPlane
from tests.rig.kafka_cluster import KafkaCluster
from tests.rig.podrunner import PodRunner
from tests.rig.processes import Supervisor

pytestmark = [pytest.mark.rig, pytest.mark.long]

PARTITIONS = 6  # two led by each broker
MIN, MAX = 1, 4
THRESHOLD = 20
HELD_LAG = 30  # ceil(30 / 20) = 2 replicas, between MIN and MAX: a wrong scale either way shows


def agent_value(address: str) -> float | None:
    return sample(scrape(address), "tidescale_trigger_value", {"trigger": "kafka"})


def test_a_killed_broker_of_three_moves_its_leaderships_and_measurement_follows_without_a_wrong_scale(
    control_plane: ControlPlane,
    pod_runner: PodRunner,
    kafka_cluster: KafkaCluster,
    rig_supervisor: Supervisor,
    rig_run_dir: Path,
    background: Background,
    teardown: list[Callable[[], None]],
) -> None:
    cluster = kafka_cluster
    topic = unique("ledger")
    cluster.create_topic(topic, PARTITIONS, replication_factor=3)
    ids = KafkaIds(background, cluster, topic)
    teardown.append(ids.close)
    ids.send(HELD_LAG)
    setup = deploy_consumers(
        control_plane,
        background,
        cluster,
        rig_run_dir,
        prefix="fault-broker-lost",
        topic=topic,
        partitions=PARTITIONS,
        hints={
            "min-replicas": str(MIN),
            "max-replicas": str(MAX),
            "kafka.lag-threshold": str(THRESHOLD),
            "scale-up-policies": "10 pods/1s",
            "scale-down-stabilization": "2s",
        },
    )
    namespace, name, observer, held = setup.namespace, setup.name, setup.observer, setup.held
    measured = held.name

    def delete_namespace() -> None:
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)

    teardown.append(delete_namespace)
    assert held.lag() == HELD_LAG

    settled = observer.wait("2 replicas for the held lag", lambda s: s.replicas == 2, timeout=90)
    leader = wait_for("a leader", lambda: lease_holder(control_plane, namespace, name), timeout=60)
    address = get(control_plane, "pod", leader, namespace)["status"]["podIP"]
    wait_for("the leader reporting the held lag", lambda: agent_value(address) == HELD_LAG, timeout=30)

    # Kill the coordinator of the measured group; it also leads partitions of the topic.
    victim = cluster.coordinator(measured)
    before = cluster.leaders(topic)
    led = sorted(p for p, node in before.items() if node == victim)
    assert led, f"broker {victim} leads none of {before}"

    def restart_if_down() -> None:
        node = cluster.nodes[victim].process
        if node is not None and not node.alive():
            cluster.start_again(rig_supervisor, victim)

    teardown.append(restart_if_down)
    killed_at = len(observer.states)
    cluster.kill(victim)

    def moved() -> dict[int, int] | None:
        from aiokafka.errors import KafkaError

        try:  # until the dead broker is fenced, the metadata may send the rig's own client to it
            now = cluster.leaders(topic)
            if any(node in (victim, -1) for node in now.values()) or cluster.coordinator(measured) == victim:
                return None
        except KafkaError:
            return None
        return now

    after = wait_for(f"partitions {led} and the coordinator off broker {victim}", moved, timeout=60)
    assert set(after) == set(before)

    # Measurement follows: from the moment Kafka has moved everything, at most two failed polls
    # before the leader measures again, and its value is Kafka's.
    text = scrape(address)
    ok_at_move = counter(text, "tidescale_measurements_total", GROUP) - counter(
        text, "tidescale_measurement_failures_total", GROUP
    )
    failed_at_move = counter(text, "tidescale_measurement_failures_total", GROUP)

    def measured_again() -> tuple[float, float] | None:
        now = scrape(address)
        ok = counter(now, "tidescale_measurements_total", GROUP) - counter(
            now, "tidescale_measurement_failures_total", GROUP
        )
        return (
            (ok, counter(now, "tidescale_measurement_failures_total", GROUP))
            if ok >= ok_at_move + 2
            else None
        )

    _, failed_since = wait_for("two successful measurements after the failover", measured_again, timeout=60)
    assert failed_since - failed_at_move <= 2, (
        f"{failed_since - failed_at_move:g} failed polls after the move"
    )
    assert agent_value(address) == HELD_LAG
    assert held.lag() == HELD_LAG

    # No wrong scale: the lag never changed, nor did the replicas.
    assert all(seen.replicas == 2 for seen in observer.states[killed_at:]), observer.states[killed_at:]
    assert lease_holder(control_plane, namespace, name) == leader

    # A burst while the broker is still down scales up.
    burst = ids.send(100)
    total = HELD_LAG + len(burst)
    observer.wait(
        f"scaled to {MAX} with a broker down", lambda s: s.replicas == MAX, timeout=60, after=settled
    )
    wait_for("the leader reporting the burst", lambda: agent_value(address) == total, timeout=30)
    assert held.lag() == total

    # The broker back: nothing changes for the agent (a poll may fail while the broker is listed
    # in the metadata before it accepts connections; replicas hold through it); everything
    # produced was consumed.
    failed_before_restart = counter(scrape(address), "tidescale_measurement_failures_total", GROUP)
    at_restart = len(observer.states)
    cluster.start_again(rig_supervisor, victim)
    done = counter(scrape(address), "tidescale_measurements_total", GROUP)
    wait_for(
        "two more measurements with the broker back",
        lambda: counter(scrape(address), "tidescale_measurements_total", GROUP) >= done + 2,
        timeout=30,
    )
    failed_by_restart = counter(scrape(address), "tidescale_measurement_failures_total", GROUP)
    assert failed_by_restart - failed_before_restart <= 2, "the restarted broker kept failing polls"
    assert all(seen.replicas == MAX for seen in observer.states[at_restart:]), observer.states[at_restart:]
    assert agent_value(address) == total
    assert held.lag() == total
    wait_for(
        f"{len(ids.produced)} messages consumed",
        lambda: ids.produced <= setup.consumed() or None,
        timeout=90,
        interval=0.5,
    )
    wait_for(
        "no lag left for the consumers' own group in Kafka's tool",
        lambda: tool_lag(cluster, setup.consuming_group, PARTITIONS) == 0,
        timeout=60,
        interval=1.0,
    )
    assert check_writes_follow_the_lease(control_plane, namespace, name) >= 2
    check_replicas_within(observer, MIN, MAX, after=settled)
