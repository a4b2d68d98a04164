"""What every fault test asserts, read from the API server's audit log, a watch of the
Deployment, and the brokers' own tools rather than from tidescale's view of itself.

- each write to a Deployment (scale, status, park) was made by the pod that held its Lease at
  that moment (:func:`check_writes_follow_the_lease`);
- replicas stayed within [min, max] in every version the watch saw, 0 only while labelled
  parked (:func:`check_replicas_within`);
- nothing produced was lost: every id reached the consumers' record, and Kafka's own
  consumer-group tool shows no lag left (:func:`check_group_drained`);
- scaling resumes after the fault: each test waits, with a deadline, for a scale write made
  after the fault cleared.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.integration.rigkube import get, items, wait_for
from tests.integration.test_scale_to_zero import Observer
from tests.rig.controlplane import ControlPlane
from tests.rig.kafka import Kafka
from tests.rig.podrunner import PodRunner
from tests.rig.rabbitmq import RabbitMQ
from tidescale.kube import parse_time

EPOCH = datetime.min.replace(tzinfo=UTC)


def lease_holder(plane: ControlPlane, namespace: str, deployment: str) -> str | None:
    for lease in items(plane, "lease", namespace):
        if lease["metadata"]["name"] == f"tidescale-{deployment}":
            holder = lease["spec"].get("holderIdentity")
            return str(holder) if holder else None
    return None


def lease_spec(plane: ControlPlane, namespace: str, deployment: str) -> dict[str, Any]:
    return dict(get(plane, "lease", f"tidescale-{deployment}", namespace)["spec"])


def agent_pid(runner: PodRunner, namespace: str, pod: str) -> int:
    for pid in runner.pod_pids()[f"{namespace}/{pod}"]:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if any(part.endswith(b"tidescale") for part in cmdline) and b"agent" in cmdline:
            return pid
    raise AssertionError(f"no agent process found for pod {namespace}/{pod}")


def agent_restart_count(plane: ControlPlane, namespace: str, pod: str) -> int:
    statuses = get(plane, "pod", pod, namespace)["status"]["containerStatuses"]
    return int(next(s for s in statuses if s["name"] == "tidescale-agent")["restartCount"])


def pod_writes(plane: ControlPlane, namespace: str, *, after: datetime = EPOCH) -> list[dict[str, Any]]:
    """Successful writes in ``namespace`` made with a pod's bound token (agents), received by the
    API server after ``after`` (requestReceivedTimestamp: nothing a process sent before it died
    can be received after its death), oldest first: pod, received, verb, resource, name."""
    found = []
    for event in plane.audit_events():
        ref = event.get("objectRef") or {}
        if ref.get("namespace") != namespace or (event.get("responseStatus") or {}).get("code") not in (
            200,
            201,
        ):
            continue
        extra = (event.get("user") or {}).get("extra") or {}
        pod = (extra.get("authentication.kubernetes.io/pod-name") or [None])[0]
        received = parse_time(event.get("requestReceivedTimestamp"))
        if pod is None or received is None or received <= after:
            continue
        resource = str(ref.get("resource", "")) + ("/" + ref["subresource"] if ref.get("subresource") else "")
        found.append(
            {
                "pod": pod,
                "received": received,
                "verb": event["verb"],
                "resource": resource,
                "name": ref.get("name"),
            }
        )
    return sorted(found, key=lambda w: w["received"])


def writes_by(
    plane: ControlPlane, namespace: str, username: str, *, after: datetime = EPOCH
) -> list[dict[str, Any]]:
    """Successful audited writes in ``namespace`` by ``username`` received after ``after``."""
    found = []
    for event in plane.audit_events():
        ref = event.get("objectRef") or {}
        if ref.get("namespace") != namespace or (event.get("user") or {}).get("username") != username:
            continue
        received = parse_time(event.get("requestReceivedTimestamp"))
        if received is None or received <= after:
            continue
        if (event.get("responseStatus") or {}).get("code") in (200, 201):
            found.append({"received": received, "verb": event["verb"], "name": ref.get("name"), "ref": ref})
    return found


def lease_writes(
    plane: ControlPlane, namespace: str, deployment: str, *, after: datetime = EPOCH
) -> list[dict[str, Any]]:
    """Successful writes to the Deployment's Lease received after ``after``, oldest first."""
    return [
        w
        for w in pod_writes(plane, namespace, after=after)
        if w["resource"] == "leases" and w["name"] == f"tidescale-{deployment}"
    ]


def scale_writes(
    plane: ControlPlane, namespace: str, deployment: str, *, after: datetime = EPOCH
) -> list[dict[str, Any]]:
    """Successful agent writes to the Deployment or its scale received after ``after``."""
    return [
        w
        for w in pod_writes(plane, namespace, after=after)
        if w["resource"].startswith("deployments") and w["name"] == deployment
    ]


def wait_for_scale_write(
    plane: ControlPlane, namespace: str, deployment: str, *, after: datetime, what: str
) -> list[dict[str, Any]]:
    """The agent writes to the Deployment received after ``after``, waited for: a watch can show the
    new count a moment before the API server has logged the write (the log is written at the end
    of the request). Fails naming ``what`` when none comes."""
    found: list[dict[str, Any]] = wait_for(
        what, lambda: scale_writes(plane, namespace, deployment, after=after), timeout=15, interval=0.5
    )
    return found


def check_writes_follow_the_lease(plane: ControlPlane, namespace: str, deployment: str) -> int:
    """Every agent write to the Deployment (scale, status, park) came from the pod holding the Lease
    at that moment: the author of the last successful Lease write received before it. Returns the
    count of writes checked."""
    holder: str | None = None
    checked = 0
    for write in pod_writes(plane, namespace):
        if write["resource"] == "leases" and write["name"] == f"tidescale-{deployment}":
            holder = write["pod"]
        elif write["resource"].startswith("deployments") and write["name"] == deployment:
            assert write["pod"] == holder, f"{write} made while {holder} held the lease"
            checked += 1
    return checked


def check_replicas_within(observer: Observer, low: int, high: int, *, after: int = 0) -> None:
    """Every version of the Deployment the watch saw (from the ``after``-th: before the first
    decision it has what its manifest says) had replicas in [low, high], or 0 while labelled
    parked (the park and the wake each change both in one write)."""
    states = list(observer.states)[after:]
    assert states, "the watch saw nothing"
    for seen in states:
        if seen.replicas == 0:
            assert seen.label == "parked", f"at zero without the parked label: {seen}"
        else:
            assert low <= seen.replicas <= high, f"replicas out of [{low}, {high}]: {seen}"


def group_lag(kafka: Kafka, group: str) -> int | None:
    """The group's total lag as Kafka's own consumer-group tool prints it (None while a partition
    has no committed offset)."""
    rows = kafka.consumer_groups_describe(group)
    if not rows or any(row.lag is None for row in rows):
        return None
    return sum(row.lag or 0 for row in rows)


def queue_messages(rabbitmq: RabbitMQ, queue: str) -> int:
    """Messages in ``queue`` (ready + unacknowledged) as rabbitmqctl prints them."""
    output = rabbitmq.rabbitmqctl("-q", "--no-table-headers", "list_queues", "name", "messages")
    for line in output.splitlines():
        name, _, count = line.partition("\t")
        if name == queue:
            return int(count)
    raise AssertionError(f"rabbitmqctl list_queues does not show {queue}:\n{output}")
