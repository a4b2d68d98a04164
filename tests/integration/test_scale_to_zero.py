"""Scale to zero end to end: the real agent beside each consumer pod, the real ``tidescale waker``
process (as its own ServiceAccount, with deploy/waker-rbac.yaml), the rig's Kafka and RabbitMQ.

The test watches the Deployment the whole time (every version the API server publishes) and
acts on the park label (``requested`` / ``watching`` / ``parked``) to hit each step of the
handoff. The sample consumers append every message id they consume to a record file; the
tests compare that set with what they produced (at least once: duplicates are allowed).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.integration.rigkube import (
    apply,
    consumer_deployment,
    declare_queue,
    items,
    kafka_hints,
    namespace_with_agent_rbac,
    rabbitmq_consumer_deployment,
    rabbitmq_hints,
    unique,
    wait_for,
    waker_argv,
    waker_rbac,
)
from tests.rig.controlplane import ControlPlane
from tests.rig.kafka import Kafka
from tests.rig.kafka_cluster import KafkaCluster
from tests.rig.podrunner import PodRunner
from tests.rig.processes import Managed, Supervisor
from tests.rig.rabbitmq import RabbitMQ
from tidescale.kube import KubeClient, KubeConfig
from tidescale.parking import PARK_LABEL

pytestmark = pytest.mark.rig

T = TypeVar("T")
MAX_REPLICAS = 3
PARTITIONS = 3

# Short timings keep each handoff to seconds; the protocol is the same at the defaults.
FAST = {
    "min-replicas": "0",
    "max-replicas": str(MAX_REPLICAS),
    "cooldown": "3s",
    "scale-down-stabilization": "2s",
    "lease-duration": "6s",
    "lease-renew-deadline": "4s",
    "lease-retry-period": "1s",
}


# -- a loop in a thread: the Deployment's watch and the producers -----------------------------


class Background:
    """An event loop in its own thread, so that the synchronous test (which blocks in kubectl)
    never starves the Deployment watch, and a warm producer answers in milliseconds."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="scale-to-zero-bg", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@dataclass(frozen=True, kw_only=True, slots=True)
class Seen:
    """One version of the Deployment as the watch delivered it."""

    at: float
    resource_version: str
    replicas: int
    label: str | None


class Observer:
    """Every version of one Deployment, from a watch running on the background loop."""

    def __init__(self, background: Background, config: KubeConfig, namespace: str, name: str) -> None:
        self.namespace, self.name = namespace, name
        self.states: list[Seen] = []
        self._changed = threading.Condition()
        self._client = KubeClient(config)
        self._task = background.run(self._start())

    async def _start(self) -> asyncio.Task[None]:
        return asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        try:
            async for kind, obj in self._client.watch_deployment(self.namespace, self.name):
                if kind == "DELETED":
                    continue
                metadata, spec = obj.get("metadata") or {}, obj.get("spec") or {}
                seen = Seen(
                    at=time.monotonic(),
                    resource_version=str(metadata.get("resourceVersion")),
                    replicas=int(spec.get("replicas", 1)),
                    label=(metadata.get("labels") or {}).get(PARK_LABEL),
                )
                with self._changed:
                    self.states.append(seen)
                    self._changed.notify_all()
        finally:
            await self._client.aclose()

    def read_label(self, background: Background) -> str | None:
        """The park label as a fresh GET finds it now (milliseconds, unlike kubectl)."""

        async def read() -> str | None:
            obj = await self._client.get_deployment(self.namespace, self.name)
            return ((obj.get("metadata") or {}).get("labels") or {}).get(PARK_LABEL)

        return background.run(read())

    def replicas_now(self) -> int | None:
        """spec.replicas of the newest version seen (None before the first)."""
        with self._changed:
            return self.states[-1].replicas if self.states else None

    def wait(self, what: str, check: Callable[[Seen], bool], *, timeout: float, after: int = 0) -> int:
        """Waits for a version (the ``after``-th or later) that passes ``check``; returns its index."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for index in range(after, len(self.states)):
                    if check(self.states[index]):
                        return index
                after = len(self.states)
                left = deadline - time.monotonic()
                if left <= 0:
                    self.check_invariants()  # a broken invariant explains a wait better than a timeout
                    last = self.states[-1] if self.states else None
                    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last})")
                self._changed.wait(left)

    def wait_label(self, label: str | None, *, timeout: float, after: int = 0) -> int:
        return self.wait(f"park label {label!r}", lambda s: s.label == label, timeout=timeout, after=after)

    def wait_parked(self, *, timeout: float, after: int = 0) -> int:
        return self.wait(
            "parked at zero", lambda s: s.replicas == 0 and s.label == "parked", timeout=timeout, after=after
        )

    def wait_awake(self, *, timeout: float, after: int = 0) -> int:
        return self.wait(
            "awake (replicas > 0, no park label)",
            lambda s: s.replicas > 0 and s.label is None,
            timeout=timeout,
            after=after,
        )

    def wakes(self) -> int:
        """How many times the Deployment went from zero to some replicas."""
        with self._changed:
            replicas = [s.replicas for s in self.states]
        return sum(1 for before, after in itertools.pairwise(replicas) if before == 0 < after)

    def check_invariants(self) -> None:
        """Replicas never leave [0, max], and are zero only while the label says parked
        (the park and the wake each change both in one write)."""
        with self._changed:
            states = list(self.states)
        assert states, "the watch saw nothing"
        for seen in states:
            assert 0 <= seen.replicas <= MAX_REPLICAS, f"replicas out of [0, {MAX_REPLICAS}]: {seen}"
            assert seen.replicas > 0 or seen.label == "parked", f"at zero without the parked label: {seen}"


class KafkaIds:
    """A warm producer on the background loop; remembers every id it produced."""

    def __init__(self, background: Background, kafka: Kafka | KafkaCluster, topic: str) -> None:
        self._background, self.topic = background, topic
        self.produced: set[str] = set()
        self._counter = 0
        self._producer: Any = background.run(self._start(kafka.bootstrap))

    async def _start(self, bootstrap: str) -> Any:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        return producer

    def send(self, count: int = 1) -> list[str]:
        ids = [f"m{self._counter + i:05d}" for i in range(count)]
        self._counter += count

        async def send() -> None:
            for message_id in ids:
                await self._producer.send(self.topic, message_id.encode(), key=message_id.encode())
            await self._producer.flush()

        self._background.run(send())
        self.produced.update(ids)
        return ids

    def close(self) -> None:
        self._background.run(self._producer.stop())


class RabbitIds:
    """A publisher with confirms on the background loop; remembers every id it published."""

    def __init__(self, background: Background, amqp_url: str, queue: str) -> None:
        self._background, self.queue = background, queue
        self.produced: set[str] = set()
        self._counter = 0
        self._connection, self._channel = background.run(self._start(amqp_url))

    async def _start(self, amqp_url: str) -> tuple[Any, Any]:
        import aio_pika

        connection = await aio_pika.connect(amqp_url)
        return connection, await connection.channel(publisher_confirms=True)

    def send(self, count: int = 1) -> list[str]:
        import aio_pika

        ids = [f"r{self._counter + i:05d}" for i in range(count)]
        self._counter += count

        async def send() -> None:
            for message_id in ids:
                message = aio_pika.Message(
                    message_id.encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                )
                await self._channel.default_exchange.publish(message, routing_key=self.queue)

        self._background.run(send())
        self.produced.update(ids)
        return ids

    def close(self) -> None:
        self._background.run(self._connection.close())


class WakerProcess:
    """``tidescale waker`` as a process acting as its ServiceAccount. ``kill`` is SIGKILL (nothing
    released); ``start`` again keeps the identity, as a restarted container keeps its pod name."""

    def __init__(
        self, supervisor: Supervisor, kubeconfig: Path, namespace: str, *, lease_name: str | None = None
    ) -> None:
        """``lease_name``: another waker's, to run as its standby (elected through one Lease)."""
        self._supervisor = supervisor
        self.identity = unique("waker")
        self.kubeconfig = kubeconfig
        self.lease_name = lease_name or unique("waker-lease")
        self._argv = waker_argv(
            kubeconfig,
            identity=self.identity,
            lease_name=self.lease_name,
            secret_namespaces=[namespace],
        )
        self.process: Managed | None = None

    def start(self) -> None:
        assert self.process is None or not self.process.alive()
        self.process = self._supervisor.start(self.identity, self._argv)

    def signal(self, signum: signal.Signals) -> None:
        assert self.process is not None
        assert self.process.alive()
        os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.process is not None
        self.process.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGCONT)  # a stopped process cannot handle SIGTERM
            self.process.stop()


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def background() -> Iterator[Background]:
    loop = Background()
    yield loop
    loop.close()


@dataclass(kw_only=True, slots=True)
class Setup:
    namespace: str
    name: str
    observer: Observer
    record: Path
    waker: WakerProcess

    def consumed(self) -> set[str]:
        return set(self.record.read_text().split()) if self.record.exists() else set()

    def wait_consumed(self, ids: set[str], *, timeout: float = 60.0) -> None:
        wait_for(
            f"{len(ids)} message(s) consumed",
            lambda: (ids - self.consumed()) == set() or None,
            timeout=timeout,
            interval=0.5,
        )


def wait_no_pods(plane: ControlPlane, setup: Setup) -> None:
    """Every pod gone: a message produced now can only be consumed after a wake (until then, a
    pod shutting down after the park may still take it, which is fine but proves nothing)."""
    wait_for(
        "the consumer pods gone",
        lambda: not items(plane, "pods", setup.namespace, f"app={setup.name}"),
        timeout=30,
    )


def events(plane: ControlPlane, namespace: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in items(plane, "events", namespace) if e.get("reason") == reason]


def kafka_setup(
    plane: ControlPlane,
    supervisor: Supervisor,
    background: Background,
    kafka: Kafka,
    run_dir: Path,
    prefix: str,
    *,
    work_seconds: float = 0.02,
    extra: dict[str, str] | None = None,
) -> tuple[Setup, KafkaIds]:
    """A namespace, the waker's RBAC for it, a topic and a consumer Deployment with the agent
    (min-replicas 0), its watch, and a waker not started yet."""
    namespace, name = unique(prefix), "orders"
    topic, group = unique("orders"), unique("orders-group")
    kafka.create_topic(topic, PARTITIONS)
    namespace_with_agent_rbac(plane, namespace)
    kubeconfig = waker_rbac(plane, [namespace])
    hints = kafka_hints(
        kafka,
        topic,
        group,
        {**FAST, "kafka.offset-reset-policy": "earliest", "kafka.lag-threshold": "20", **(extra or {})},
    )
    record = run_dir / f"{namespace}-consumed.txt"
    deployment = consumer_deployment(
        name,
        kafka=kafka,
        topic=topic,
        group=group,
        annotations=hints,
        record_file=record,
        work_seconds=work_seconds,
    )
    observer = Observer(background, KubeConfig.from_kubeconfig(plane.admin_kubeconfig), namespace, name)
    apply(plane, deployment, namespace=namespace)
    waker = WakerProcess(supervisor, kubeconfig, namespace)
    setup = Setup(namespace=namespace, name=name, observer=observer, record=record, waker=waker)
    return setup, KafkaIds(background, kafka, topic)


def rabbitmq_setup(
    plane: ControlPlane,
    supervisor: Supervisor,
    background: Background,
    rabbitmq: RabbitMQ,
    run_dir: Path,
    prefix: str,
    *,
    work_seconds: float = 0.02,
    extra: dict[str, str] | None = None,
) -> tuple[Setup, RabbitIds]:
    """A namespace, the waker's RBAC for it and its credentials Secret, a durable queue and a
    consumer Deployment with the agent (min-replicas 0), its watch, and a waker not started yet."""
    namespace, name = unique(prefix), "jobs"
    queue, secret = unique("jobs"), "rabbitmq-credentials"
    namespace_with_agent_rbac(plane, namespace)
    kubeconfig = waker_rbac(plane, [namespace])
    plane.kubectl(
        "create", "secret", "generic", secret, "-n", namespace,
        f"--from-literal=username={rabbitmq.username}", f"--from-literal=password={rabbitmq.password}",
    )  # fmt: skip
    declare_queue(rabbitmq.amqp_url, queue)
    record = run_dir / f"{namespace}-consumed.txt"
    deployment = rabbitmq_consumer_deployment(
        name,
        amqp_url=rabbitmq.amqp_url,
        queue=queue,
        secret=secret,
        annotations=rabbitmq_hints(rabbitmq.management_url, queue, secret, {**FAST, **(extra or {})}),
        record_file=record,
        work_seconds=work_seconds,
    )
    observer = Observer(background, KubeConfig.from_kubeconfig(plane.admin_kubeconfig), namespace, name)
    apply(plane, deployment, namespace=namespace)
    waker = WakerProcess(supervisor, kubeconfig, namespace)
    setup = Setup(namespace=namespace, name=name, observer=observer, record=record, waker=waker)
    return setup, RabbitIds(background, rabbitmq.amqp_url, queue)


@pytest.fixture
def teardown(control_plane: ControlPlane) -> Iterator[list[Callable[[], None]]]:
    """Things to undo at the end of a test, newest first (wakers, producers, the namespace)."""
    undo: list[Callable[[], None]] = []
    yield undo
    for step in reversed(undo):
        with contextlib.suppress(Exception):
            step()


def arm(
    teardown: list[Callable[[], None]], plane: ControlPlane, setup: Setup, ids: KafkaIds | RabbitIds
) -> None:
    def delete_namespace() -> None:
        plane.kubectl("delete", "namespace", setup.namespace, "--wait=false", check=False)

    teardown.append(delete_namespace)
    teardown.append(ids.close)
    teardown.append(setup.waker.stop)


# -- 1. drain to zero and wake ------------------------------------------------------------------


@pytest.mark.smoke
def test_a_kafka_deployment_drains_to_zero_through_the_handoff_and_wakes_on_the_next_message(
    control_plane: ControlPlane,
    pod_runner: PodRunner,
    kafka: Kafka,
    rig_supervisor: Supervisor,
    rig_run_dir: Path,
    background: Background,
    teardown: list[Callable[[], None]],
) -> None:
    setup, ids = kafka_setup(control_plane, rig_supervisor, background, kafka, rig_run_dir, "stz-kafka")
    arm(teardown, control_plane, setup, ids)
    setup.waker.start()
    first = ids.send(30)  # work before the first park: consumed by the running pod
    setup.wait_consumed(set(first))

    requested = setup.observer.wait_label("requested", timeout=60)
    watching = setup.observer.wait_label("watching", timeout=15, after=requested)
    parked = setup.observer.wait_parked(timeout=15, after=watching)
    wait_no_pods(control_plane, setup)
    time.sleep(2.0)  # several polls of an idle group: it stays parked
    assert setup.observer.replicas_now() == 0

    # Wake latency is measured by bench/bench_waker.py and bench/bench_failover.py, not here.
    second = ids.send(5)
    setup.observer.wait_awake(timeout=20, after=parked)
    setup.wait_consumed(set(first) | set(second))
    assert events(control_plane, setup.namespace, "Parked")
    assert events(control_plane, setup.namespace, "Woken")
    setup.observer.check_invariants()


def test_a_rabbitmq_deployment_drains_to_zero_through_the_handoff_and_wakes_on_the_next_message(
    control_plane: ControlPlane,
    pod_runner: PodRunner,
    rabbitmq: RabbitMQ,
    rig_supervisor: Supervisor,
    rig_run_dir: Path,
    background: Background,
    teardown: list[Callable[[], None]],
) -> None:
    setup, ids = rabbitmq_setup(
        control_plane,
        rig_supervisor,
        background,
        rabbitmq,
        rig_run_dir,
        "stz-rabbit",
        extra={"rabbitmq.value": "20"},
    )
    arm(teardown, control_plane, setup, ids)
    observer = setup.observer
    setup.waker.start()
    first = ids.send(30)
    setup.wait_consumed(set(first))

    requested = observer.wait_label("requested", timeout=60)
    watching = observer.wait_label("watching", timeout=15, after=requested)
    parked = observer.wait_parked(timeout=15, after=watching)
    time.sleep(2.5)  # more than two statistics intervals of the management API: still parked
    assert observer.replicas_now() == 0

    second = ids.send(5)
    observer.wait_awake(timeout=20, after=parked)
    setup.wait_consumed(set(first) | set(second))
    assert events(control_plane, setup.namespace, "Woken")
    observer.check_invariants()


# -- 2. races -----------------------------------------------------------------------------------

# A consumer that takes a second per message keeps each message's lag visible for that second,
# so whoever measures during the race (the leader or the waker) sees it.
SLOW = 1.0


def lease_holder(plane: ControlPlane, namespace: str, deployment: str) -> str | None:
    for lease in items(plane, "lease", namespace):
        if lease["metadata"]["name"] == f"tidescale-{deployment}":
            return lease["spec"].get("holderIdentity") or None
    return None


def wake_once_more(plane: ControlPlane, setup: Setup, ids: KafkaIds, *, after: int) -> None:
    """The handoff completes after the race (parked again), and the next message wakes it."""
    parked = setup.observer.wait_parked(timeout=60, after=after)
    wait_no_pods(plane, setup)
    message = ids.send(1)
    setup.observer.wait_awake(timeout=20, after=parked)
    setup.wait_consumed(set(message))


@pytest.mark.parametrize("step", ["before-request", "request-to-ack", "ack-to-park"])
def test_messages_produced_during_each_step_of_the_handoff_are_all_consumed(
    control_plane: ControlPlane,
    pod_runner: PodRunner,
    kafka: Kafka,
    rig_supervisor: Supervisor,
    rig_run_dir: Path,
    background: Background,
    teardown: list[Callable[[], None]],
    step: str,
) -> None:
    setup, ids = kafka_setup(
        control_plane, rig_supervisor, background, kafka, rig_run_dir, f"stz-{step}", work_seconds=SLOW
    )
    arm(teardown, control_plane, setup, ids)
    observer, waker = setup.observer, setup.waker
    waker.start()
    # The leader's cooldown (3 s) starts when it wins the Lease: the request comes after it.
    wait_for("a leader", lambda: lease_holder(control_plane, setup.namespace, setup.name), timeout=60)

    if step == "before-request":
        mark = len(observer.states)
        sent = ids.send(3)
        # Proof of the step: after the messages were in, there was still no request.
        assert observer.read_label(background) is None
    elif step == "request-to-ack":
        waker.signal(signal.SIGSTOP)  # a waker that has not got round to it yet
        mark = observer.wait_label("requested", timeout=30)
        sent = ids.send(3)
        assert observer.read_label(background) == "requested"
        waker.signal(signal.SIGCONT)
    else:
        mark = observer.wait_label("watching", timeout=30)
        sent = ids.send(3)
        # The leader's next tick (1 s polling) has not written the park yet. (The waker, which
        # measures on the event of its own ack, may already have cancelled the handoff.)
        assert observer.read_label(background) in ("watching", None)
        assert all(seen.label != "parked" for seen in observer.states[mark:])

    setup.wait_consumed(set(sent))
    wake_once_more(control_plane, setup, ids, after=mark)
    setup.wait_consumed(ids.produced)
    observer.check_invariants()


@pytest.mark.parametrize("step", ["requested", "watching", "parked"])
def test_a_waker_killed_and_restarted_at_each_step_still_wakes_the_deployment(
    control_plane: ControlPlane,
    pod_runner: PodRunner,
    kafka: Kafka,
    rig_supervisor: Supervisor,
    rig_run_dir: Path,
    background: Background,
    teardown: list[Callable[[], None]],
    step: str,
) -> None:
    setup, ids = kafka_setup(
        control_plane, rig_supervisor, background, kafka, rig_run_dir, f"stz-kill-{step}"
    )
    arm(teardown, control_plane, setup, ids)
    observer, waker = setup.observer, setup.waker
    waker.start()
    wait_for("a leader", lambda: lease_holder(control_plane, setup.namespace, setup.name), timeout=60)

    if step == "requested":
        # Frozen so that it has seen the request but not acked it when the SIGKILL comes.
        waker.signal(signal.SIGSTOP)
        at = observer.wait_label("requested", timeout=30)
        waker.kill()
        assert observer.read_label(background) == "requested"
        waker.start()
        parked = observer.wait_parked(timeout=30, after=at)
        wait_no_pods(control_plane, setup)
        sent = ids.send(1)
    elif step == "watching":
        at = observer.wait_label("watching", timeout=30)
        waker.kill()
        # The leader needs nothing more from the waker after the ack: it parks without one.
        parked = observer.wait_parked(timeout=30, after=at)
        wait_no_pods(control_plane, setup)
        sent = ids.send(1)  # while no waker runs at all
        time.sleep(1.0)
        waker.start()
    else:
        parked = observer.wait_parked(timeout=60)
        waker.kill()
        wait_no_pods(control_plane, setup)
        sent = ids.send(1)  # while no waker runs at all
        time.sleep(1.0)
        assert observer.replicas_now() == 0
        waker.start()

    observer.wait_awake(timeout=30, after=parked)
    setup.wait_consumed(set(sent))
    observer.check_invariants()


def test_a_waker_that_never_acks_leaves_the_deployment_at_one_with_a_waker_unavailable_event(
    control_plane: ControlPlane,
    pod_runner: PodRunner,
    kafka: Kafka,
    rig_supervisor: Supervisor,
    rig_run_dir: Path,
    background: Background,
    teardown: list[Callable[[], None]],
) -> None:
    setup, ids = kafka_setup(
        control_plane,
        rig_supervisor,
        background,
        kafka,
        rig_run_dir,
        "stz-noack",
        extra={"park-ack-timeout": "5s"},
    )
    arm(teardown, control_plane, setup, ids)
    observer = setup.observer  # no waker is started
    requested = observer.wait_label("requested", timeout=60)
    asked_at = observer.states[requested].at
    aborted = observer.wait_label(None, timeout=20, after=requested)
    waited = observer.states[aborted].at - asked_at
    # Behaviour, not speed: the leader waited out its park-ack-timeout (5 s, less the watch's
    # delivery slack) before withdrawing the request; how soon after is not asserted.
    assert waited >= 4.0, f"the request was withdrawn {waited:.1f}s after it was made, before its 5s timeout"

    def unavailable() -> list[dict[str, Any]]:
        return events(control_plane, setup.namespace, "WakerUnavailable")

    event = wait_for("the WakerUnavailable event", unavailable, timeout=10)[0]
    assert event["type"] == "Warning"
    assert "5s" in event["message"]
    time.sleep(3.0)  # and it keeps running, whatever it asks next
    assert observer.replicas_now() == 1
    assert all(seen.replicas == 1 for seen in observer.states), "scaled while no waker acknowledged"
    assert not events(control_plane, setup.namespace, "Parked")
    sent = ids.send(3)
    setup.wait_consumed(set(sent))
    observer.check_invariants()


# -- 3. many cycles -----------------------------------------------------------------------------

CYCLES = 30
SEED = 20261128


def test_thirty_park_wake_cycles_with_random_bursts_and_pauses_consume_every_message_within_bounds(
    control_plane: ControlPlane,
    pod_runner: PodRunner,
    kafka: Kafka,
    rig_supervisor: Supervisor,
    rig_run_dir: Path,
    background: Background,
    teardown: list[Callable[[], None]],
) -> None:
    """Each cycle: parked with no pod left, a random pause, a burst that wakes it; then often a
    second burst, after a random pause or the moment the next handoff is requested or acknowledged,
    so it lands while the Deployment runs, hands over, or is parked again. The watch sees every
    version of the Deployment, so the bounds are checked on every replica count it had."""
    rng = random.Random(SEED)
    setup, ids = kafka_setup(
        control_plane,
        rig_supervisor,
        background,
        kafka,
        rig_run_dir,
        "stz-cycles",
        work_seconds=0.01,
        extra={"cooldown": "1s", "polling-interval": "0.5s", "scale-down-stabilization": "1s"},
    )
    arm(teardown, control_plane, setup, ids)
    observer = setup.observer
    setup.waker.start()
    landed: dict[str, int] = {}
    index = 0
    started = time.monotonic()
    for _cycle in range(CYCLES):
        index = observer.wait_parked(timeout=60, after=index)
        wait_no_pods(control_plane, setup)
        time.sleep(rng.uniform(0.0, 1.5))
        ids.send(rng.randint(1, 50))
        index = observer.wait_awake(timeout=30, after=index)
        second = rng.choice(["none", "pause", "pause", "requested", "watching"])
        if second == "pause":
            time.sleep(rng.uniform(0.0, 5.0))
        elif second != "none":
            # Sent the moment the watch shows the next handoff reach this step.
            observer.wait_label(second, timeout=30, after=index)
        if second != "none":
            ids.send(rng.randint(1, 10))
            state = observer.read_label(background) or "running"
            landed[state] = landed.get(state, 0) + 1
    setup.wait_consumed(ids.produced, timeout=120)
    observer.wait_parked(timeout=60, after=index)
    seconds = time.monotonic() - started
    most = max(seen.replicas for seen in observer.states)
    print(
        f"{CYCLES} cycles in {seconds:.0f}s: {len(ids.produced)} messages, {observer.wakes()} wakes, "
        f"at most {most} replicas; second bursts landed while {landed}"
    )

    missing = ids.produced - setup.consumed()
    assert not missing, f"{len(missing)} message(s) never consumed: {sorted(missing)[:10]}"
    assert observer.wakes() >= CYCLES
    observer.check_invariants()
    assert sum(int(e.get("count") or 1) for e in events(control_plane, setup.namespace, "Woken")) >= CYCLES
