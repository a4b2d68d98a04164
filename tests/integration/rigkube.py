"""Small synchronous helpers for integration tests: apply manifests, read objects, wait.

They go through the rig's kubectl with the admin kubeconfig, so what a test does is
what a person would type.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.rig.controlplane import ControlPlane
from tests.rig.kafka import Kafka
from tests.rig.kafka_cluster import KafkaCluster
from tests.rig.processes import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
AGENT_RBAC = REPO_ROOT / "deploy" / "agent-rbac.yaml"
AGENT_PORT = 9464

T = TypeVar("T")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def apply(plane: ControlPlane, *objects: Mapping[str, Any], namespace: str | None = None) -> str:
    document = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
    args = ["apply", "-f", "-"] + (["-n", namespace] if namespace else [])
    return plane.kubectl(*args, input=json.dumps(document)).stdout


def get(plane: ControlPlane, kind: str, name: str, namespace: str) -> dict[str, Any]:
    return dict(json.loads(plane.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout))


def items(
    plane: ControlPlane, kind: str, namespace: str, selector: str | None = None
) -> list[dict[str, Any]]:
    args = ["get", kind, "-n", namespace, "-o", "json"] + (["-l", selector] if selector else [])
    return list(json.loads(plane.kubectl(*args).stdout)["items"])


def wait_for(what: str, check: Callable[[], T | None], *, timeout: float, interval: float = 0.25) -> T:
    """Polls ``check`` until it returns something truthy; fails naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last seen: {last!r})")


def namespace_with_agent_rbac(
    plane: ControlPlane,
    namespace: str,
    *,
    service_account: str = "workload",
    without: Iterable[str] = (),
) -> None:
    """A namespace, a ServiceAccount, and the agent Role from deploy/agent-rbac.yaml bound to it;
    ``without`` drops the rules on those resources (to test missing permissions)."""
    role, binding = list(yaml.safe_load_all(AGENT_RBAC.read_text()))
    dropped = set(without)
    role["rules"] = [rule for rule in role["rules"] if not dropped & set(rule["resources"])]
    binding["subjects"] = [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}]
    apply(plane, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    apply(
        plane,
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": service_account}},
        role,
        binding,
        namespace=namespace,
    )


def agent_container(deployment: str, *, log_level: str = "info") -> dict[str, Any]:
    """The agent as the injector adds it, written out by hand (tests of the agent alone)."""

    def field(path: str) -> dict[str, Any]:
        return {"valueFrom": {"fieldRef": {"fieldPath": path}}}

    return {
        "name": "tidescale-agent",
        "image": "tidescale:test",
        "args": ["agent"],
        "env": [
            {"name": "POD_NAME", **field("metadata.name")},
            {"name": "POD_NAMESPACE", **field("metadata.namespace")},
            {"name": "POD_IP", **field("status.podIP")},
            {"name": "TIDESCALE_DEPLOYMENT", "value": deployment},
            {"name": "TIDESCALE_PORT", "value": str(AGENT_PORT)},
            {"name": "TIDESCALE_LOG_LEVEL", "value": log_level},
        ],
        "ports": [{"name": "tidescale", "containerPort": AGENT_PORT}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": AGENT_PORT}, "periodSeconds": 2},
    }


def audit_writes(plane: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    """Successful writes in ``namespace`` from the audit log: when, by which pod, to what."""
    writes = []
    for event in plane.audit_events():
        ref = event.get("objectRef") or {}
        if ref.get("namespace") != namespace or (event.get("responseStatus") or {}).get("code") not in (
            200,
            201,
        ):
            continue
        extra = (event.get("user") or {}).get("extra") or {}
        pod = (extra.get("authentication.kubernetes.io/pod-name") or [None])[0]
        writes.append(
            {
                "at": event["stageTimestamp"],
                "pod": pod,
                "verb": event["verb"],
                "resource": str(ref.get("resource", ""))
                + ("/" + ref["subresource"] if ref.get("subresource") else ""),
                "name": ref.get("name"),
            }
        )
    return sorted(writes, key=lambda w: w["at"])


def consumer_deployment(
    name: str,
    *,
    kafka: Kafka | KafkaCluster,
    topic: str,
    group: str,
    annotations: dict[str, str],
    record_file: Path,
    replicas: int = 1,
    work_seconds: float = 0.1,
    service_account: str = "workload",
) -> dict[str, Any]:
    return kafka_consumer_deployment(
        name,
        bootstrap=kafka.bootstrap,
        topic=topic,
        group=group,
        env=[
            {"name": "WORK_SECONDS", "value": str(work_seconds)},
            {"name": "RECORD_FILE", "value": str(record_file)},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        metadata={"annotations": annotations},
        sidecars=[agent_container(name)],
        replicas=replicas,
        account=service_account,
    )


def kafka_consumer_deployment(
    name: str,
    *,
    bootstrap: str,
    topic: str,
    group: str,
    env: Sequence[dict[str, Any]] = (),
    metadata: dict[str, Any] | None = None,
    sidecars: Sequence[dict[str, Any]] = (),
    replicas: int = 1,
    account: str = "workload",
) -> dict[str, Any]:
    """A Deployment of the sample Kafka consumer (tests/workloads/kafka_consumer.py) on ``topic``
    in ``group``; ``env`` after the three Kafka variables, ``sidecars`` after the consumer (an
    agent container), ``metadata`` beside the name (annotations, namespace)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, **(metadata or {})},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "serviceAccountName": account,
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": "consumer",
                            "image": "tidescale-test/kafka-consumer",
                            "env": [
                                {"name": "KAFKA_BOOTSTRAP", "value": bootstrap},
                                {"name": "KAFKA_TOPIC", "value": topic},
                                {"name": "KAFKA_GROUP", "value": group},
                                *env,
                            ],
                        },
                        *sidecars,
                    ],
                },
            },
        },
    }


def _consumer_deployment(
    name: str,
    annotations: dict[str, str],
    replicas: int,
    service_account: str,
    *,
    containers: list[dict[str, Any]],
) -> dict[str, Any]:
    """A sample consumer's Deployment: pods labelled app=<name>, short grace period."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "serviceAccountName": service_account,
                    "terminationGracePeriodSeconds": 5,
                    "containers": containers,
                },
            },
        },
    }


def kafka_hints(
    kafka: Kafka | KafkaCluster, topic: str, group: str, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The hints for one Kafka trigger; ``extra`` maps annotation names without the prefix to values."""
    hints = {
        "tidescale.io/kafka.bootstrap-servers": kafka.bootstrap,
        "tidescale.io/kafka.consumer-group": group,
        "tidescale.io/kafka.topic": topic,
        "tidescale.io/polling-interval": "1s",
    }
    hints.update({f"tidescale.io/{key}": value for key, value in (extra or {}).items()})
    return hints


async def _produce(bootstrap: str, topic: str, ids: list[str]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for message_id in ids:
            await producer.send(topic, message_id.encode(), key=message_id.encode())
        await producer.flush()
    finally:
        await producer.stop()


def produce(kafka: Kafka | KafkaCluster, topic: str, ids: list[str]) -> None:
    asyncio.run(_produce(kafka.bootstrap, topic, ids))


# -- scale to zero: the waker, RabbitMQ consumers -----------------------------------------------

WAKER_RBAC = REPO_ROOT / "deploy" / "waker-rbac.yaml"
WAKER_NAMESPACE = "tidescale-system"
WAKER_ACCOUNT = "tidescale-waker"


def waker_rbac(plane: ControlPlane, secret_namespaces: Iterable[str] = ()) -> Path:
    """deploy/waker-rbac.yaml as shipped, its credentials RoleBinding repeated for each of
    ``secret_namespaces`` (as the chart does); returns a kubeconfig acting as the waker's account."""
    plane.kubectl("create", "namespace", WAKER_NAMESPACE, check=False)
    documents = [doc for doc in yaml.safe_load_all(WAKER_RBAC.read_text()) if doc]

    def per_namespace(doc: dict[str, Any]) -> bool:
        return bool(doc["kind"] == "RoleBinding" and doc["metadata"]["name"] == "tidescale-waker-credentials")

    shipped = [doc for doc in documents if not per_namespace(doc)]
    template = next(doc for doc in documents if per_namespace(doc))
    bindings = [
        {**template, "metadata": {**template["metadata"], "namespace": namespace}}
        for namespace in secret_namespaces
    ]
    apply(plane, *shipped, *bindings)
    return plane.service_account_kubeconfig(WAKER_NAMESPACE, WAKER_ACCOUNT)


def waker_argv(
    kubeconfig: Path,
    *,
    identity: str,
    lease_name: str,
    secret_namespaces: Iterable[str] = (),
    interval: float = 0.5,
) -> list[str]:
    """``tidescale waker`` as the chart runs it, outside a pod: own Lease, own identity."""
    return [
        str(REPO_ROOT / ".venv" / "bin" / "tidescale"),
        "waker",
        "--kubeconfig",
        str(kubeconfig),
        "--lease-namespace",
        WAKER_NAMESPACE,
        "--lease-name",
        lease_name,
        "--identity",
        identity,
        "--interval",
        str(interval),
        "--secret-namespaces",
        ",".join(secret_namespaces),
        # Its own metrics port: several wakers run side by side on this machine in the tests.
        "--port",
        str(free_port()),
    ]


def rabbitmq_hints(
    management_url: str, queue: str, secret: str, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """One RabbitMQ trigger: the agent reads credentials from its environment (RABBITMQ_USERNAME,
    RABBITMQ_PASSWORD, see ``rabbitmq_consumer_deployment``), the waker from Secret ``secret``."""
    hints = {
        "tidescale.io/rabbitmq.management-url": management_url,
        "tidescale.io/rabbitmq.queue": queue,
        "tidescale.io/rabbitmq.username-env": "RABBITMQ_USERNAME",
        "tidescale.io/rabbitmq.password-env": "RABBITMQ_PASSWORD",
        "tidescale.io/rabbitmq.credentials-secret": secret,
        "tidescale.io/polling-interval": "1s",
    }
    hints.update({f"tidescale.io/{key}": value for key, value in (extra or {}).items()})
    return hints


def rabbitmq_consumer_deployment(
    name: str,
    *,
    amqp_url: str,
    queue: str,
    secret: str,
    annotations: dict[str, str],
    record_file: Path,
    replicas: int = 1,
    work_seconds: float = 0.05,
    service_account: str = "workload",
) -> dict[str, Any]:
    """The sample RabbitMQ consumer with the agent beside it; the agent's credentials come from
    Secret ``secret`` (keys username, password) through secretKeyRef."""

    def secret_key(key: str) -> dict[str, Any]:
        return {"valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}

    agent = agent_container(name)
    agent["env"] = [
        *agent["env"],
        {"name": "RABBITMQ_USERNAME", **secret_key("username")},
        {"name": "RABBITMQ_PASSWORD", **secret_key("password")},
    ]
    consumer = {
        "name": "consumer",
        "image": "tidescale-test/rabbitmq-consumer",
        "env": [
            {"name": "RABBITMQ_URL", "value": amqp_url},
            {"name": "RABBITMQ_QUEUE", "value": queue},
            {"name": "WORK_SECONDS", "value": str(work_seconds)},
            {"name": "RECORD_FILE", "value": str(record_file)},
        ],
    }
    return _consumer_deployment(name, annotations, replicas, service_account, containers=[consumer, agent])


def declare_queue(amqp_url: str, queue: str) -> None:
    """A durable queue, as the sample consumer declares it (so messages before any consumer stay)."""

    async def declare() -> None:
        import aio_pika

        connection = await aio_pika.connect(amqp_url)
        try:
            channel = await connection.channel()
            await channel.declare_queue(queue, durable=True)
        finally:
            await connection.close()

    asyncio.run(declare())
