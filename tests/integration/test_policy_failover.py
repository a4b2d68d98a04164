"""A leader killed inside a scale-down window and after its cooldown began: the next leader
restores the policy state (``tidescale.io/policy-state``), so it neither scales down before
the window the old leader opened ends, nor restarts the cooldown (issue 12)."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.faults.invariants import agent_pid, lease_holder, scale_writes
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
from tests.rig.controlplane import ControlPlane
from tests.rig.kafka import Kafka
from tests.rig.podrunner import PodRunner
from tidescale.kube import parse_time

pytestmark = pytest.mark.rig

WINDOW = 40.0
COOLDOWN = 90.0


def annotations_of(plane: ControlPlane, namespace: str, name: str) -> dict[str, str]:
    return dict(get(plane, "deployment", name, namespace)["metadata"].get("annotations") or {})


def policy_state(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any] | None:
    text = annotations_of(plane, namespace, name).get("tidescale.io/policy-state")
    return None if text is None else dict(json.loads(text))


def test_a_new_leader_keeps_the_old_leaders_scale_down_window_and_cooldown(
    control_plane: ControlPlane, pod_runner: PodRunner, kafka: Kafka, rig_run_dir: Path
) -> None:
    namespace, name = unique("policy-failover"), "orders"
    topic, group = unique("orders"), unique("orders-group")
    kafka.create_topic(topic, 8)
    namespace_with_agent_rbac(control_plane, namespace)
    annotations = kafka_hints(
        kafka,
        topic,
        group,
        {
            "min-replicas": "0",
            "max-replicas": "3",
            "kafka.lag-threshold": "100",
            "scale-up-policies": "10 pods/1s",
            "scale-down-stabilization": f"{WINDOW:.0f}s",
            "cooldown": f"{COOLDOWN:.0f}s",
            "lease-duration": "6s",
            "lease-renew-deadline": "4s",
            "lease-retry-period": "1s",
        },
    )
    record = rig_run_dir / f"{namespace}-consumed.txt"
    apply(
        control_plane,
        consumer_deployment(
            name, kafka=kafka, topic=topic, group=group, annotations=annotations, record_file=record
        ),
        namespace=namespace,
    )
    wait_for("an agent to lead", lambda: lease_holder(control_plane, namespace, name), timeout=90)
    produce(kafka, topic, [f"m{i:04d}" for i in range(300)])
    wait_for(
        "scale-up to 3",
        lambda: int(get(control_plane, "deployment", name, namespace)["spec"]["replicas"]) == 3,
        timeout=60,
    )

    # Wait until the saved state shows the lag drained (a recommendation of 0 saved), so every
    # recommendation of 3 the old leader made is in the state the new one will read.
    def drained_state() -> dict[str, Any] | None:
        state = policy_state(control_plane, namespace, name)
        return state if state and any(n == 0 for _, n in state["r"]) else None

    state = wait_for("the drained lag in the saved policy state", drained_state, timeout=120, interval=0.5)
    written = float(state["w"])
    window_opened = max(written - age / 1000 for age, n in state["r"] if n >= 3)
    last_active = written - state["a"] / 1000
    assert time.time() < window_opened + WINDOW - 5, "the lag drained too slowly to kill inside the window"

    leader = lease_holder(control_plane, namespace, name)
    assert leader is not None
    killed = datetime.now(UTC)
    os.kill(agent_pid(pod_runner, namespace, leader), signal.SIGTERM)

    # The window: the first scale-down write after the kill comes after the old window's end,
    # and long before a window the new leader would have opened itself would end.
    write = wait_for(
        "a scale-down write by the next leader",
        lambda: next(
            (
                w
                for w in scale_writes(control_plane, namespace, name, after=killed)
                if w["resource"] == "deployments/scale"
            ),
            None,
        ),
        timeout=WINDOW + 60,
        interval=0.5,
    )
    received = write["received"].timestamp()
    assert received >= window_opened + WINDOW, (
        f"scaled down {window_opened + WINDOW - received:.1f}s before the window opened at "
        f"{datetime.fromtimestamp(window_opened, UTC)} ended"
    )
    assert write["received"] < killed + timedelta(seconds=WINDOW), "the new leader restarted the window"
    # (to 2 or 1: the lag drained through 2 and 1, recommended inside the same window)
    assert int(get(control_plane, "deployment", name, namespace)["spec"]["replicas"]) < 3

    # The cooldown: the park request (the handoff to zero) comes once the old leader's cooldown
    # ends, not a full cooldown after the new leader started.
    def park_request() -> dict[str, Any] | None:
        text = annotations_of(control_plane, namespace, name).get("tidescale.io/park-record")
        return None if text is None else dict(json.loads(text))

    parked = wait_for("a park request", park_request, timeout=COOLDOWN + 60, interval=0.5)
    requested = parse_time(parked["requestedAt"])
    assert requested is not None
    # requestedAt has whole seconds: it may read up to 1 s early.
    assert requested.timestamp() + 1 >= last_active + COOLDOWN, "the cooldown ended early"
    assert requested < killed + timedelta(seconds=COOLDOWN), "the new leader restarted the cooldown"
    events = [e for e in items(control_plane, "events", namespace) if e.get("reason") == "Scaled"]
    assert events, "the leaders emit Events for their scale writes"
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false")
