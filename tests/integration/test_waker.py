"""The waker process against the rig's API server, Kafka and RabbitMQ.

The test plays the Deployment's leader through the protocol functions (the agent runtime
drives them later); the waker is the real ``tidescale waker`` process, running as its own
ServiceAccount with exactly the RBAC of deploy/waker-rbac.yaml.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.rig.controlplane import ControlPlane
from tests.rig.kafka import Kafka
from tests.rig.processes import Managed, Supervisor, free_port
from tests.rig.rabbitmq import RabbitMQ
from tidescale.errors import KubeConflict
from tidescale.kube import KubeConfig
from tidescale.parking import (
    PARK_RECORD_ANNOTATION,
    DeploymentSnapshot,
    LeaderAction,
    leader_step,
)
from tidescale.waker import WakerClient

pytestmark = pytest.mark.rig

REPO = Path(__file__).resolve().parents[2]
WAKER_NAMESPACE = "tidescale-system"
LEADER = "web-leader-0"


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def namespace(control_plane: ControlPlane) -> str:
    """A namespace whose Secrets the waker may read, with the waker's RBAC applied as shipped."""
    ns = _name("waker-it")
    control_plane.kubectl("create", "namespace", ns)
    control_plane.kubectl("create", "namespace", WAKER_NAMESPACE, check=False)
    rbac = (REPO / "deploy" / "waker-rbac.yaml").read_text().replace("namespace: shop", f"namespace: {ns}")
    control_plane.kubectl("apply", "-f", "-", input=rbac)
    return ns


@pytest.fixture(scope="module")
def waker_kubeconfig(control_plane: ControlPlane, namespace: str) -> Path:
    return control_plane.service_account_kubeconfig(WAKER_NAMESPACE, "tidescale-waker")


@pytest_asyncio.fixture(loop_scope="session")
async def admin(control_plane: ControlPlane) -> AsyncIterator[WakerClient]:
    client = WakerClient(KubeConfig.from_kubeconfig(control_plane.admin_kubeconfig))
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def waker_ports() -> dict[int, int]:
    """The HTTP port of each waker ``start_waker`` started, by pid."""
    return {}


@pytest.fixture
def start_waker(
    rig_supervisor: Supervisor, waker_kubeconfig: Path, namespace: str, waker_ports: dict[int, int]
) -> Iterator[Callable[[], Managed]]:
    """Starts a ``tidescale waker`` process; every one started is stopped (SIGTERM) at the end."""
    started: list[Managed] = []

    def start() -> Managed:
        identity = _name("waker")
        # A port of its own: wakers overlap in these tests, and the default one may be taken.
        port = free_port()
        argv = [sys.executable, "-m", "tidescale.cli", "waker", "--kubeconfig", str(waker_kubeconfig)]
        argv += ["--lease-namespace", WAKER_NAMESPACE, "--identity", identity, "--interval", "0.5"]
        argv += ["--secret-namespaces", namespace, "--port", str(port)]
        process = rig_supervisor.start(identity, argv)
        waker_ports[process.pid] = port
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


# -- helpers ----------------------------------------------------------------------------------


async def eventually(what: str, check: Callable[[], Awaitable[bool]], *, timeout: float = 30.0) -> float:  # noqa: ASYNC109 -- the timeout names the failure
    """Waits for ``check``; returns the seconds it took."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def create_deployment(control_plane: ControlPlane, namespace: str, name: str, hints: dict[str, str]) -> None:
    manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "annotations": hints},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "work", "image": "tidescale/echo"}]},
            },
        },
    }
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(manifest))


async def snapshot(admin: WakerClient, namespace: str, name: str) -> DeploymentSnapshot:
    return DeploymentSnapshot.from_object(dict(await admin.get_deployment(namespace, name)))


async def lead(
    admin: WakerClient, namespace: str, name: str, *, my_epoch: int | None
) -> tuple[LeaderAction, int | None]:
    """One step of the leader: read, decide with idle triggers, write; on 409 read and decide again
    (the Deployment controller's status updates move the resourceVersion too)."""
    for _attempt in range(10):
        snap = await snapshot(admin, namespace, name)
        decision = leader_step(
            snap,
            me=LEADER,
            lease_transitions=0,
            my_epoch=my_epoch,
            idle=True,
            now=datetime.now(UTC),
            triggers=("t",),
        )
        if decision.write is None:
            return decision.action, decision.epoch
        try:
            await admin.patch_deployment(namespace, name, decision.write)
        except KubeConflict:
            await asyncio.sleep(0.1)
            continue
        return decision.action, decision.epoch
    raise AssertionError("the leader's write kept meeting 409")


async def label_is(admin: WakerClient, namespace: str, name: str, value: str | None) -> bool:
    return (await snapshot(admin, namespace, name)).label == value


async def request(admin: WakerClient, namespace: str, name: str) -> int:
    action, epoch = await lead(admin, namespace, name, my_epoch=None)
    assert action is LeaderAction.REQUEST
    assert epoch is not None
    return epoch


async def park(admin: WakerClient, namespace: str, name: str, epoch: int) -> None:
    """Waits for the waker's ack, then writes the park (replicas 0)."""
    await eventually("the waker's ack", lambda: label_is(admin, namespace, name, "watching"))
    action, _ = await lead(admin, namespace, name, my_epoch=epoch)
    assert action is LeaderAction.PARK
    snap = await snapshot(admin, namespace, name)
    assert (snap.replicas, snap.label) == (0, "parked")


async def woken(admin: WakerClient, namespace: str, name: str, replicas: int) -> bool:
    snap = await snapshot(admin, namespace, name)
    cleared = snap.label is None and PARK_RECORD_ANNOTATION not in snap.annotations
    return snap.replicas >= replicas and cleared


def events(control_plane: ControlPlane, namespace: str, name: str) -> list[str]:
    listing = json.loads(control_plane.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
    return [e["reason"] for e in listing["items"] if e["involvedObject"]["name"] == name]


# -- Kafka ------------------------------------------------------------------------------------


async def idle_kafka_group(kafka: Kafka) -> tuple[str, str]:
    """A topic whose group has consumed and committed everything (lag 0)."""
    topic, group = _name("wake"), _name("wake-group")
    await asyncio.to_thread(kafka.create_topic, topic, 2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"first", partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        got, deadline = 0, time.monotonic() + 20
        while got < 1 and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            got += sum(len(records) for records in batch.values())
        assert got == 1
        # Both partitions committed at their ends: lag 0 (an uncommitted one would count 1).
        await consumer.commit({TopicPartition(topic, 0): 1, TopicPartition(topic, 1): 0})
    finally:
        await consumer.stop()
    return topic, group


async def produce(kafka: Kafka, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"wake up", partition=1)
    finally:
        await producer.stop()


def kafka_hints(kafka: Kafka, topic: str, group: str, **extra: str) -> dict[str, str]:
    return {
        "tidescale.io/min-replicas": "0",
        "tidescale.io/kafka.bootstrap-servers": kafka.bootstrap,
        "tidescale.io/kafka.consumer-group": group,
        "tidescale.io/kafka.topic": topic,
        **extra,
    }


async def test_a_parked_kafka_deployment_is_woken_by_a_produced_message(
    control_plane: ControlPlane,
    kafka: Kafka,
    namespace: str,
    admin: WakerClient,
    start_waker: Callable[[], Managed],
) -> None:
    topic, group = await idle_kafka_group(kafka)
    name = _name("kafka-web")
    create_deployment(
        control_plane,
        namespace,
        name,
        kafka_hints(kafka, topic, group, **{"tidescale.io/wake-replicas": "2"}),
    )
    start_waker()
    await park(admin, namespace, name, await request(admin, namespace, name))

    await asyncio.sleep(2.0)  # several polls of an idle group: it stays parked
    assert (await snapshot(admin, namespace, name)).replicas == 0

    await produce(kafka, topic)
    # Wake latency is measured by bench/bench_waker.py and bench/bench_failover.py, not here.
    await eventually("the wake", lambda: woken(admin, namespace, name, 2), timeout=20.0)
    assert (await snapshot(admin, namespace, name)).replicas == 2
    await eventually("the Woken event", lambda: _has(control_plane, namespace, name, "Woken"), timeout=10.0)


async def _has(control_plane: ControlPlane, namespace: str, name: str, reason: str) -> bool:
    return reason in await asyncio.to_thread(events, control_plane, namespace, name)


async def test_a_waker_restarted_between_every_step_still_wakes(
    control_plane: ControlPlane,
    kafka: Kafka,
    namespace: str,
    admin: WakerClient,
    start_waker: Callable[[], Managed],
) -> None:
    topic, group = await idle_kafka_group(kafka)
    name = _name("restart-web")
    create_deployment(control_plane, namespace, name, kafka_hints(kafka, topic, group))

    epoch = await request(admin, namespace, name)  # no waker yet: the request waits on the object
    first = start_waker()
    await eventually("the ack", lambda: label_is(admin, namespace, name, "watching"))
    first.stop()
    action, _ = await lead(admin, namespace, name, my_epoch=epoch)  # park while no waker runs
    assert action is LeaderAction.PARK
    second = start_waker()
    await asyncio.sleep(1.5)
    second.stop()
    await produce(kafka, topic)  # the message arrives while no waker runs at all
    start_waker()
    await eventually("the wake by a fresh waker", lambda: woken(admin, namespace, name, 1), timeout=30.0)


async def test_a_parked_deployment_scaled_by_hand_is_released(
    control_plane: ControlPlane,
    kafka: Kafka,
    namespace: str,
    admin: WakerClient,
    start_waker: Callable[[], Managed],
) -> None:
    topic, group = await idle_kafka_group(kafka)
    name = _name("manual-web")
    create_deployment(control_plane, namespace, name, kafka_hints(kafka, topic, group))
    start_waker()
    await park(admin, namespace, name, await request(admin, namespace, name))

    control_plane.kubectl("scale", "deployment", name, "-n", namespace, "--replicas=3")
    await eventually("the release", lambda: woken(admin, namespace, name, 3))
    assert (await snapshot(admin, namespace, name)).replicas == 3
    await eventually(
        "the Released event", lambda: _has(control_plane, namespace, name, "Released"), timeout=10.0
    )


async def test_a_request_the_waker_cannot_measure_is_never_acknowledged(
    control_plane: ControlPlane, namespace: str, admin: WakerClient, start_waker: Callable[[], Managed]
) -> None:
    name = _name("nowhere-web")
    hints = {
        "tidescale.io/min-replicas": "0",
        "tidescale.io/kafka.bootstrap-servers": "10.213.250.250:9092",  # nobody listens there
        "tidescale.io/kafka.consumer-group": "g",
        "tidescale.io/kafka.timeout": "1s",
    }
    create_deployment(control_plane, namespace, name, hints)
    start_waker()
    await request(admin, namespace, name)
    await asyncio.sleep(4.0)
    snap = await snapshot(admin, namespace, name)
    assert (snap.label, snap.replicas) == ("requested", 1)


# -- RabbitMQ ---------------------------------------------------------------------------------


async def test_a_parked_rabbitmq_deployment_is_woken_by_a_published_message_with_secret_credentials(
    control_plane: ControlPlane,
    rabbitmq: RabbitMQ,
    namespace: str,
    admin: WakerClient,
    start_waker: Callable[[], Managed],
) -> None:
    queue, secret, name = _name("wake-jobs"), _name("rabbit-creds"), _name("rabbit-web")
    connection = await aio_pika.connect_robust(rabbitmq.amqp_url)
    try:
        channel = await connection.channel()
        await channel.declare_queue(queue, auto_delete=False)
        # As a leader would: it asks to park only after it has seen the queue's counts idle.
        await eventually("the queue's statistics", lambda: _known(rabbitmq, queue), timeout=30.0)
        control_plane.kubectl(
            "create", "secret", "generic", secret, "-n", namespace,
            f"--from-literal=username={rabbitmq.username}", f"--from-literal=password={rabbitmq.password}",
        )  # fmt: skip
        hints = {
            "tidescale.io/min-replicas": "0",
            "tidescale.io/rabbitmq.management-url": rabbitmq.management_url,
            "tidescale.io/rabbitmq.queue": queue,
            "tidescale.io/rabbitmq.credentials-secret": secret,
        }
        create_deployment(control_plane, namespace, name, hints)
        start_waker()
        await park(admin, namespace, name, await request(admin, namespace, name))
        await asyncio.sleep(2.0)
        assert (await snapshot(admin, namespace, name)).replicas == 0

        await channel.default_exchange.publish(aio_pika.Message(body=b"wake up"), routing_key=queue)
        await eventually("the wake", lambda: woken(admin, namespace, name, 1), timeout=20.0)
    finally:
        await connection.close()


async def _known(rabbitmq: RabbitMQ, queue: str) -> bool:
    return await asyncio.to_thread(rabbitmq.queue_statistics_known, queue)


async def test_hints_changed_while_parked_are_used_for_the_next_poll(
    control_plane: ControlPlane,
    kafka: Kafka,
    namespace: str,
    admin: WakerClient,
    start_waker: Callable[[], Managed],
) -> None:
    old_topic, group = await idle_kafka_group(kafka)
    new_topic, new_group = await idle_kafka_group(kafka)
    name = _name("rehint-web")
    create_deployment(control_plane, namespace, name, kafka_hints(kafka, old_topic, group))
    start_waker()
    await park(admin, namespace, name, await request(admin, namespace, name))

    control_plane.kubectl(
        "annotate", "--overwrite", "deployment", name, "-n", namespace,
        f"tidescale.io/kafka.topic={new_topic}", f"tidescale.io/kafka.consumer-group={new_group}",
    )  # fmt: skip
    await asyncio.sleep(2.0)
    assert (await snapshot(admin, namespace, name)).replicas == 0
    await produce(kafka, new_topic)
    await eventually("the wake through the new hints", lambda: woken(admin, namespace, name, 1), timeout=20.0)


async def test_a_parked_deployment_whose_hints_stop_parsing_is_woken_rather_than_left_at_zero(
    control_plane: ControlPlane,
    kafka: Kafka,
    namespace: str,
    admin: WakerClient,
    start_waker: Callable[[], Managed],
) -> None:
    topic, group = await idle_kafka_group(kafka)
    name = _name("badhint-web")
    create_deployment(control_plane, namespace, name, kafka_hints(kafka, topic, group))
    start_waker()
    await park(admin, namespace, name, await request(admin, namespace, name))

    control_plane.kubectl(
        "annotate",
        "--overwrite",
        "deployment",
        name,
        "-n",
        namespace,
        "tidescale.io/kafka.lag-threshold=lots",
    )
    await eventually("the wake", lambda: woken(admin, namespace, name, 1), timeout=20.0)


async def test_a_running_waker_serves_its_health_and_metrics_and_reports_leading_and_tracking(
    control_plane: ControlPlane,
    kafka: Kafka,
    namespace: str,
    admin: WakerClient,
    start_waker: Callable[[], Managed],
    waker_ports: dict[int, int],
) -> None:
    topic, group = await idle_kafka_group(kafka)
    name = _name("metrics-web")
    create_deployment(control_plane, namespace, name, kafka_hints(kafka, topic, group))
    await request(admin, namespace, name)
    process = start_waker()
    samples: dict[str, float] = {}
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{waker_ports[process.pid]}", timeout=5.0
    ) as http:

        async def serving() -> bool:
            try:
                return (await http.get("/healthz")).status_code == 200
            except httpx.TransportError:
                assert process.alive(), process.log_tail()
                return False

        async def leads_tracks_and_acked() -> bool:
            body = (await http.get("/metrics")).text
            samples.clear()
            for line in body.splitlines():
                if line and not line.startswith("#"):
                    series, value = line.rsplit(" ", 1)
                    samples[series] = float(value)
            return (
                samples.get("tidescale_waker_leader") == 1
                and samples.get("tidescale_waker_parked_deployments", 0) >= 1
                and samples.get("tidescale_waker_acks_total", 0) >= 1
                and samples.get("tidescale_waker_rounds_total", 0) >= 1
            )

        await eventually("the waker serving /healthz", serving)
        assert (await http.get("/readyz")).status_code == 200
        await eventually("the leader gauge, the tracked Deployment and the ack", leads_tracks_and_acked)
    assert await label_is(admin, namespace, name, "watching")
    assert samples["tidescale_waker_round_duration_seconds"] > 0
