"""Fault: the hints change under a running leader: a valid change, then a broken one, then a fix.

A valid change applies on the next poll (a new minimum is written at once). Broken hints keep
the last good ones in force (a burst still scales to the old maximum) with an InvalidHints
Warning Event naming the annotation, and the leader's ``tidescale_hints_valid`` gauge at 0;
fixing them sets the gauge back to 1 and the fixed hints apply.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.faults.invariants import check_replicas_within, check_writes_follow_the_lease, lease_holder
from tests.faults.prologue import MakeLedKafka
from tests.integration.rigkube import AGENT_PORT, get, wait_for
from tests.integration.test_scale_to_zero import events
from tests.rig.controlplane import ControlPlane

pytestmark = pytest.mark.rig

MAX = 3


def hints_valid_gauge(plane: ControlPlane, namespace: str, pod: str) -> float | None:
    """``tidescale_hints_valid`` from the agent's /metrics in ``pod`` (None when unreadable)."""
    ip = get(plane, "pod", pod, namespace).get("status", {}).get("podIP")
    try:
        text = httpx.get(f"http://{ip}:{AGENT_PORT}/metrics", timeout=2.0).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith("tidescale_hints_valid"):
            return float(line.split()[-1])
    return None


def test_hints_changed_under_a_leader_apply_broken_ones_keep_the_last_good_with_an_event_and_a_fix_clears_it(
    led_kafka: MakeLedKafka,
    control_plane: ControlPlane,
) -> None:
    led = led_kafka("fault-hints", min_replicas=1, max_replicas=MAX)
    setup, ids, leader = led.setup, led.ids, led.leader
    namespace, name, observer = setup.namespace, setup.name, setup.observer

    def annotate(value: str) -> None:
        control_plane.kubectl(
            "annotate",
            "deployment",
            name,
            "-n",
            namespace,
            f"tidescale.io/min-replicas={value}",
            "--overwrite",
        )

    wait_for("valid hints", lambda: hints_valid_gauge(control_plane, namespace, leader) == 1.0, timeout=30)

    # 1. A valid change: the new minimum is written on the next poll.
    annotate("2")
    raised = observer.wait("the new minimum 2 applied", lambda s: s.replicas == 2, timeout=30)

    # 2. Broken: the last good hints stay in force, an Event says what is wrong.
    annotate("two")

    def invalid_event() -> dict[str, Any] | None:
        return next(iter(events(control_plane, namespace, "InvalidHints")), None)

    event = wait_for("the InvalidHints event", invalid_event, timeout=30)
    assert event["type"] == "Warning"
    assert "min-replicas" in event["message"]
    assert "last good" in event["message"]
    leader = wait_for("a leader", lambda: lease_holder(control_plane, namespace, name), timeout=30)
    assert hints_valid_gauge(control_plane, namespace, leader) == 0.0
    burst = ids.send(120)  # the last good hints (max 3, threshold 20) still decide
    at_max = observer.wait(
        f"scaled to {MAX} on the last good hints", lambda s: s.replicas == MAX, timeout=60, after=raised
    )

    # 3. Fixed: the gauge is back to 1 and the fixed minimum (1) applies once the burst drains.
    reported = sum(int(e.get("count") or 1) for e in events(control_plane, namespace, "InvalidHints"))
    annotate("1")
    wait_for(
        "valid hints again", lambda: hints_valid_gauge(control_plane, namespace, leader) == 1.0, timeout=30
    )
    setup.wait_consumed(set(burst), timeout=120)
    observer.wait("down to the fixed minimum 1", lambda s: s.replicas == 1, timeout=90, after=at_max)
    assert (
        sum(int(e.get("count") or 1) for e in events(control_plane, namespace, "InvalidHints")) == reported
    ), "a problem reported after the fix"
    assert check_writes_follow_the_lease(control_plane, namespace, name) >= 3
    check_replicas_within(observer, 1, MAX)
