"""Fault: the network between the leader's pod and the broker is slow: every packet the leader's
pod sends to Kafka arrives 2 s late (tests/rig/netdelay.py, the rig's stand-in for ``tc netem``,
which this machine's kernel lacks), with a 1 s polling interval.

A measurement then takes several round trips (about 6 s), longer than the interval. The leader
measures, decides, then waits: its loop stretches, polls never pile up (at most one measurement in
flight, read from its ``/metrics``; and the measurements' summed durations fit in the wall time
they ran in, which overlapping polls would exceed). Its decisions stay right: a burst scales up;
once the lag is gone it scales back down, and once it has measured no lag it never scales up
again on an older reading. With the delay removed it measures and scales as before.

The agent measures a group whose lag the test sets (tests/faults/held_lag.py), so the drain does
not wait on consumers that the delay slows too. The invariants hold throughout: writes follow the
Lease, replicas stay in [min, max], and the Deployment's consumers lose nothing (their record, and
Kafka's own tool showing no lag for their group).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.agent_metrics import KAFKA_GROUP_SCOPE as GROUP
from tests.faults.agent_metrics import counter, sample, scrape
from tests.faults.held_lag import deploy_consumers, tool_lag
from tests.faults.invariants import (
    check_replicas_within,
    check_writes_follow_the_lease,
    lease_holder,
)
from tests.integration.rigkube import get, unique, wait_for
from tests.integration.test_scale_to_zero import Background, KafkaIds
from tests.rig.controlplane import ControlPlane
from tests.rig.kafka import Kafka
from tests.rig.netdelay import delay_pod_traffic
from tests.rig.podrunner import PodRunner

pytestmark = pytest.mark.rig

PARTITIONS = 3
MIN, MAX = 1, 3
DELAY = 2.0  # seconds each packet to the broker is held: twice the polling interval
TIMEOUT = 12.0  # the trigger's timeout: a measurement takes about three round trips
BUDGET = TIMEOUT * 2 + 1  # the agent's bound on one measurement (agent._measure_one)


class InFlightWatch:
    """Scrapes the leader's in-flight gauges every quarter second while the delay lasts."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.highest: dict[str, float] = {}
        self.busy_samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="in-flight-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            try:
                text = scrape(self.address)
            except OSError:
                continue
            for scope in ("group", "local"):
                value = sample(text, "tidescale_measurements_in_flight", {**GROUP, "scope": scope})
                if value is not None:
                    self.highest[scope] = max(self.highest.get(scope, 0.0), value)
                    if scope == "group" and value >= 1:
                        self.busy_samples += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_a_slow_network_to_the_broker_stretches_polling_without_piling_up_and_decisions_stay_right(
    control_plane: ControlPlane,
    pod_runner: PodRunner,
    kafka: Kafka,
    rig_run_dir: Path,
    background: Background,
    teardown: list[Callable[[], None]],
) -> None:
    topic = unique("ledger")
    kafka.create_topic(topic, PARTITIONS)
    ids = KafkaIds(background, kafka, topic)
    teardown.append(ids.close)
    setup = deploy_consumers(
        control_plane,
        background,
        kafka,
        rig_run_dir,
        prefix="fault-delay",
        topic=topic,
        partitions=PARTITIONS,
        hints={
            "min-replicas": str(MIN),
            "max-replicas": str(MAX),
            "kafka.lag-threshold": "20",
            "kafka.timeout": f"{TIMEOUT:g}s",
            "scale-up-policies": "10 pods/1s",
            "scale-down-stabilization": "2s",
        },
    )
    namespace, name, observer, held = setup.namespace, setup.name, setup.observer, setup.held

    def delete_namespace() -> None:
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)

    teardown.append(delete_namespace)
    settled = observer.wait(f"the minimum {MIN}", lambda s: s.replicas == MIN, timeout=60)
    leader = wait_for("a leader", lambda: lease_holder(control_plane, namespace, name), timeout=60)
    # Scaling down, the ReplicaSet may pick any pod; this test follows one leader through the delay.
    control_plane.kubectl(
        "annotate", "pod", leader, "-n", namespace, "controller.kubernetes.io/pod-deletion-cost=1000"
    )
    address = get(control_plane, "pod", leader, namespace)["status"]["podIP"]
    wait_for(
        "the leader's first group measurement",
        lambda: counter(scrape(address), "tidescale_measurements_total", GROUP),
        timeout=30,
    )

    delay = delay_pod_traffic(
        pod_runner.pod_netns()[f"{namespace}/{leader}"], host=kafka.host, ports=[kafka.port], delay=DELAY
    )
    teardown.append(delay.remove)
    watch = InFlightWatch(address)
    teardown.append(watch.stop)
    before = scrape(address)
    began = time.monotonic()

    # The delay is in force: measurements now take longer than a round trip.
    def slow_measurements() -> tuple[float, float] | None:
        text = scrape(address)
        count = counter(text, "tidescale_measurement_duration_seconds_count", GROUP) - counter(
            before, "tidescale_measurement_duration_seconds_count", GROUP
        )
        total = counter(text, "tidescale_measurement_duration_seconds_sum", GROUP) - counter(
            before, "tidescale_measurement_duration_seconds_sum", GROUP
        )
        return (count, total) if count >= 2 else None

    count, total = wait_for("two measurements through the delay", slow_measurements, timeout=4 * BUDGET)
    assert total >= DELAY * (count - 1), f"{count:g} measurements took {total:.1f}s in all: no delay?"

    # A burst scales up, every measurement several seconds in the making.
    ids.send(200)
    up = observer.wait(f"scaled to {MAX} through the delay", lambda s: s.replicas == MAX, timeout=120)

    # The lag gone: the leader scales back down, and once it has measured no lag, no reading
    # taken earlier scales it up again.
    held.commit("latest")
    assert held.lag() == 0
    wait_for(
        "the leader measuring no lag",
        lambda: sample(scrape(address), "tidescale_trigger_value", {"trigger": "kafka"}) == 0,
        timeout=4 * BUDGET,
    )
    drained = len(observer.states) - 1
    down = observer.wait(
        f"back to {MIN} through the delay", lambda s: s.replicas == MIN, timeout=120, after=up
    )
    since = [seen.replicas for seen in observer.states[max(drained, up) :]]
    assert all(b <= a for a, b in itertools.pairwise(since)), (
        f"scaled up again after measuring no lag: {since}"
    )

    # No pile-up: one group measurement at a time, and their durations fit in the wall time.
    during = scrape(address)
    elapsed = time.monotonic() - began
    watch.stop()
    delay.remove()
    measured = counter(during, "tidescale_measurement_duration_seconds_sum", GROUP) - counter(
        before, "tidescale_measurement_duration_seconds_sum", GROUP
    )
    assert watch.highest.get("group") == 1, f"group measurements in flight at once: {watch.highest}"
    assert watch.highest.get("local", 0) <= 1, watch.highest
    assert watch.busy_samples > 0, "the watch never saw a measurement running: was the delay in force?"
    assert measured <= elapsed + BUDGET, f"{measured:.1f}s of measurements in {elapsed:.1f}s: they overlapped"
    assert lease_holder(control_plane, namespace, name) == leader, "the delayed leader lost its Lease"

    # Delay removed: measuring succeeds again, and a burst scales as before.
    done = counter(scrape(address), "tidescale_measurements_total", GROUP)
    wait_for(
        "three more measurements without the delay",
        lambda: counter(scrape(address), "tidescale_measurements_total", GROUP) >= done + 3,
        timeout=3 * BUDGET,
    )
    failures = counter(scrape(address), "tidescale_measurement_failures_total", GROUP)
    ids.send(100)
    observer.wait(
        f"scaled to {MAX} again without the delay", lambda s: s.replicas == MAX, timeout=60, after=down
    )
    assert counter(scrape(address), "tidescale_measurement_failures_total", GROUP) == failures
    wait_for(
        "the leader reporting Kafka's lag",
        lambda: sample(scrape(address), "tidescale_trigger_value", {"trigger": "kafka"}) == held.lag() == 100,
        timeout=30,
    )

    # Nothing lost by the Deployment's own consumers, slowed as they were in the leader's pod.
    wait_for(
        f"{len(ids.produced)} messages consumed",
        lambda: ids.produced <= setup.consumed() or None,
        timeout=120,
        interval=0.5,
    )
    wait_for(
        "no lag left for the consumers' group in Kafka's tool",
        lambda: tool_lag(kafka, setup.consuming_group, PARTITIONS) == 0,
        timeout=60,
        interval=1.0,
    )
    assert check_writes_follow_the_lease(control_plane, namespace, name) >= 3
    check_replicas_within(observer, MIN, MAX, after=settled)
