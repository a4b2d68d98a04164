"""The agent in the rig: real API server, real Kafka, agents running beside consumer pods
under the pod runner (the agent container written into the manifest, as the injector
would add it)."""

from __future__ import annotations

import json
import math
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.faults.invariants import (
    agent_pid,
    agent_restart_count,
    check_writes_follow_the_lease,
    lease_holder,
    lease_spec,
    lease_writes,
)
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
from tidescale.hints import parse_hints
from tidescale.kube import parse_time
from tidescale.policy import History, decide
from tidescale.sources.base import Measurement

pytestmark = pytest.mark.rig

PARTITIONS = 8


def replicas_of(plane: ControlPlane, namespace: str, name: str) -> int:
    return int(get(plane, "deployment", name, namespace)["spec"]["replicas"])


def running_pods(plane: ControlPlane, namespace: str, app: str) -> list[str]:
    return sorted(
        pod["metadata"]["name"]
        for pod in items(plane, "pods", namespace, f"app={app}")
        if pod.get("status", {}).get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp")
    )


def consumed_ids(record_file: Path) -> set[str]:
    return set(record_file.read_text().split()) if record_file.exists() else set()


@pytest.mark.smoke
def test_a_burst_scales_the_deployment_to_the_count_the_policy_predicts_and_draining_returns_it_to_min(
    control_plane: ControlPlane, pod_runner: PodRunner, kafka: Kafka, rig_run_dir: Path
) -> None:
    namespace, name = unique("burst"), "orders"
    topic, group = unique("orders"), unique("orders-group")
    kafka.create_topic(topic, PARTITIONS)
    namespace_with_agent_rbac(control_plane, namespace)
    annotations = kafka_hints(
        kafka,
        topic,
        group,
        {
            "min-replicas": "1",
            "max-replicas": "6",
            "kafka.lag-threshold": "100",
            "scale-up-policies": "10 pods/1s",
            "scale-down-stabilization": "5s",
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
    wait_for(
        "the first consumer pod to run", lambda: running_pods(control_plane, namespace, name), timeout=60
    )
    wait_for("an agent to lead", lambda: lease_holder(control_plane, namespace, name), timeout=60)

    ids = [f"m{i:04d}" for i in range(300)]
    produce(kafka, topic, ids)
    # What the engine predicts for this lag with these hints: ceil(300 / 100) = 3.
    hints = parse_hints(annotations)
    burst = Measurement(
        trigger="kafka", value=300, target=100, active=True, replica_cap=PARTITIONS, taken_at=0.0
    )
    predicted = decide([burst], current=1, hints=hints, now=0.0, history=History()).desired
    assert predicted == math.ceil(300 / 100)

    wait_for(
        f"scale-up to {predicted}",
        lambda: replicas_of(control_plane, namespace, name) == predicted,
        timeout=30,
    )
    events = items(control_plane, "events", namespace)
    scaled = [e for e in events if e.get("reason") == "Scaled"]
    assert scaled, "the leader emits an Event for its scale write"
    assert f"1 -> {predicted}" in scaled[0]["message"]
    status = json.loads(
        get(control_plane, "deployment", name, namespace)["metadata"]["annotations"]["tidescale.io/status"]
    )
    assert status["leader"] == lease_holder(control_plane, namespace, name)

    wait_for("every message consumed", lambda: consumed_ids(record) >= set(ids), timeout=120, interval=1.0)
    wait_for("scale-down to min 1", lambda: replicas_of(control_plane, namespace, name) == 1, timeout=60)
    assert check_writes_follow_the_lease(control_plane, namespace, name) >= 2
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false")


@pytest.mark.parametrize("how", ["SIGTERM", "SIGSTOP", "SIGKILL"])
def test_when_the_leader_goes_away_another_agent_leads_and_no_two_agents_write_in_one_term(
    control_plane: ControlPlane, pod_runner: PodRunner, kafka: Kafka, rig_run_dir: Path, how: str
) -> None:
    """SIGTERM: the agent releases the Lease and a follower takes over at once. SIGSTOP: a hung
    leader (as on a partitioned node) releases nothing; a follower takes over once the lease
    expires, and the old leader, resumed, writes nothing more. SIGKILL: the pod runner restarts
    the agent under the same identity, and a leader renews the Lease again."""
    namespace, name = unique(f"failover-{how.lower()}"), "orders"
    topic, group = unique("orders"), unique("orders-group")
    kafka.create_topic(topic, PARTITIONS)
    namespace_with_agent_rbac(control_plane, namespace)
    # Short lease timings keep the test quick; the mechanism is the same at client-go's defaults.
    annotations = kafka_hints(
        kafka,
        topic,
        group,
        {
            "min-replicas": "3",
            "max-replicas": "3",
            "lease-duration": "6s",
            "lease-renew-deadline": "4s",
            "lease-retry-period": "1s",
        },
    )
    record = rig_run_dir / f"{namespace}-consumed.txt"
    apply(
        control_plane,
        consumer_deployment(
            name,
            kafka=kafka,
            topic=topic,
            group=group,
            annotations=annotations,
            record_file=record,
            replicas=3,
        ),
        namespace=namespace,
    )
    wait_for("three running pods", lambda: len(running_pods(control_plane, namespace, name)) == 3, timeout=90)
    leader = wait_for("a leader", lambda: lease_holder(control_plane, namespace, name), timeout=60)
    # Let the leader write its status at least once, so there are writes to attribute.
    wait_for(
        "the status annotation",
        lambda: (
            "tidescale.io/status"
            in get(control_plane, "deployment", name, namespace)["metadata"]["annotations"]
        ),
        timeout=30,
    )
    pid = agent_pid(pod_runner, namespace, leader)
    transitions_before = int(lease_spec(control_plane, namespace, name).get("leaseTransitions", 0))
    killed_wall = datetime.now(UTC)
    os.kill(pid, getattr(signal, how))
    try:
        if how == "SIGKILL":
            # Nothing the dead process sent can be received after this point: a Lease write the
            # API server received later was made by a new process, either the pod runner's
            # restart of the same agent (same pod, same identity) or a follower taking over.
            write = wait_for(
                "a Lease write received after the kill",
                lambda: next(iter(lease_writes(control_plane, namespace, name, after=killed_wall)), None),
                timeout=60,
                interval=0.2,
            )
            renewer = write["pod"]
            assert renewer in running_pods(control_plane, namespace, name)
            spec = lease_spec(control_plane, namespace, name)
            renewed = parse_time(spec.get("renewTime"))
            assert renewed is not None
            assert renewed > killed_wall, f"renewTime {renewed} predates the kill"
            if renewer == leader:
                # The restart: the pod runner started a new agent process in the leader's pod,
                # and that process (not the killed one) renewed.
                assert not Path(f"/proc/{pid}").exists(), "the killed agent is still alive"
                assert agent_pid(pod_runner, namespace, leader) != pid
                assert agent_restart_count(control_plane, namespace, leader) >= 1
            else:
                # The failover: a follower took the Lease over (a new term).
                assert int(spec["leaseTransitions"]) >= transitions_before + 1
            # And the renewed leader goes on renewing: a second write after the first.
            wait_for(
                "the renewed leader's next renewal",
                lambda: len(lease_writes(control_plane, namespace, name, after=killed_wall)) >= 2,
                timeout=30,
                interval=0.2,
            )
        else:
            successor = wait_for(
                "another agent to lead",
                lambda: (
                    h if (h := lease_holder(control_plane, namespace, name)) not in (None, leader) else None
                ),
                timeout=30,
                interval=0.1,
            )
            assert successor in running_pods(control_plane, namespace, name)
            assert (
                int(lease_spec(control_plane, namespace, name)["leaseTransitions"]) == transitions_before + 1
            )
            after_kill = lease_writes(control_plane, namespace, name, after=killed_wall)
            takeover = next(w for w in after_kill if w["pod"] == successor)
            if how == "SIGTERM":
                # The old leader released the Lease (a write of its own, after the signal) and
                # said so; the successor took the released Lease after that write.
                log = pod_runner.log_path(namespace, leader, "tidescale-agent").read_text()
                assert f"{leader} released" in log, "the SIGTERMed leader did not release the Lease"
                assert after_kill[0]["pod"] == leader, f"no write by {leader} before {after_kill}"
            else:
                # A hung leader releases nothing: the successor's takeover was received no sooner
                # than the renew deadline (4 s) after the hung leader's last renewal, so the hung
                # leader's belief had ended (the election's no-overlap rule, on the API server's clock).
                every = lease_writes(control_plane, namespace, name)
                before = [w for w in every if w["pod"] == leader and w["received"] < takeover["received"]]
                assert before, "the hung leader never renewed before the takeover"
                gap = (takeover["received"] - before[-1]["received"]).total_seconds()
                assert gap >= 4.0, f"taken over {gap:.1f}s after the hung leader's last renewal"
            wait_for(
                "the successor's status",
                lambda: (
                    json.loads(
                        get(control_plane, "deployment", name, namespace)["metadata"]["annotations"][
                            "tidescale.io/status"
                        ]
                    )["leader"]
                    == successor
                ),
                timeout=30,
            )
    finally:
        if how == "SIGSTOP":
            os.kill(pid, signal.SIGCONT)
    if how == "SIGSTOP":
        time.sleep(3)  # the resumed old leader notices it lost, and must not write in the meantime
    # At least the first leader's status write; every write checked against the Lease's holder.
    assert check_writes_follow_the_lease(control_plane, namespace, name) >= 1
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false")


def test_an_agent_without_lease_permissions_keeps_its_pod_ready_and_says_what_is_missing(
    control_plane: ControlPlane, pod_runner: PodRunner, kafka: Kafka, rig_run_dir: Path
) -> None:
    namespace, name = unique("norbac"), "orders"
    topic, group = unique("orders"), unique("orders-group")
    kafka.create_topic(topic, 1)
    namespace_with_agent_rbac(control_plane, namespace, without=["leases"])
    record = rig_run_dir / f"{namespace}-consumed.txt"
    apply(
        control_plane,
        consumer_deployment(
            name,
            kafka=kafka,
            topic=topic,
            group=group,
            annotations=kafka_hints(kafka, topic, group),
            record_file=record,
        ),
        namespace=namespace,
    )

    def missing_permissions_event() -> dict[str, Any] | None:
        for event in items(control_plane, "events", namespace):
            if event.get("reason") == "MissingPermissions":
                return event
        return None

    event = wait_for("the MissingPermissions event", missing_permissions_event, timeout=60)
    assert "leases" in event["message"]
    assert "workload" in event["message"]
    assert event["type"] == "Warning"

    def ready_pod() -> str | None:
        for pod in items(control_plane, "pods", namespace, f"app={name}"):
            conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
            if conditions.get("Ready") == "True":
                return str(pod["metadata"]["name"])
        return None

    pod = wait_for("the pod to be Ready", ready_pod, timeout=60)
    time.sleep(3)  # the agent keeps serving rather than crash-looping
    statuses = get(control_plane, "pod", pod, namespace)["status"]["containerStatuses"]
    agent_status = next(s for s in statuses if s["name"] == "tidescale-agent")
    assert agent_status["ready"] is True
    assert agent_status["restartCount"] == 0
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false")
