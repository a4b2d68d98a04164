"""Scale to zero on a JetStream consumer's backlog: the sample consumer pulling from a durable
consumer with the real agent beside it, the real waker process, the rig's nats-server."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration import test_scale_to_zero as stz
from tests.integration.rigkube import agent_container, apply, namespace_with_agent_rbac, unique, waker_rbac
from tests.integration.test_scale_to_zero import (
    FAST,
    Background,
    Observer,
    Setup,
    WakerProcess,
    events,
    wait_no_pods,
)
from tests.rig.controlplane import ControlPlane
from tests.rig.nats import NatsServer
from tests.rig.podrunner import PodRunner
from tests.rig.processes import Supervisor
from tidescale.kube import KubeConfig

pytestmark = pytest.mark.rig

CONSUMER = "workers"

# The scale-to-zero module's fixtures: a loop in a thread for the watch, and undo steps.
background = stz.background
teardown = stz.teardown


class NatsIds:
    """A JetStream publisher on the background loop; remembers every id it published."""

    def __init__(self, background: Background, nats: NatsServer, stream: str, subject: str) -> None:
        self._background, self._subject = background, subject
        self._connection, self._js = background.run(self._start(nats.url, stream, subject))

    async def _start(self, url: str, stream: str, subject: str) -> tuple[Any, Any]:
        import nats as nats_client
        from nats.js.api import AckPolicy, ConsumerConfig

        connection = await nats_client.connect(url)
        js = connection.jetstream()
        await js.add_stream(name=stream, subjects=[subject])
        await js.add_consumer(
            stream,
            ConsumerConfig(durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT, filter_subject=subject),
        )
        return connection, js

    def send(self, count: int = 1) -> list[str]:
        ids = [uuid.uuid4().hex for _ in range(count)]

        async def send() -> None:
            for message_id in ids:
                await self._js.publish(self._subject, message_id.encode())

        self._background.run(send())
        return ids

    def close(self) -> None:
        self._background.run(self._connection.close())


def _deployment(
    name: str, nats: NatsServer, stream: str, subject: str, hints: dict[str, str], record: Path
) -> dict[str, Any]:
    consumer = {
        "name": "consumer",
        "image": "tidescale-test/nats-consumer",
        "env": [
            {"name": "NATS_URL", "value": nats.url},
            {"name": "NATS_STREAM", "value": stream},
            {"name": "NATS_CONSUMER", "value": CONSUMER},
            {"name": "NATS_SUBJECT", "value": subject},
            {"name": "WORK_SECONDS", "value": "0.02"},
            {"name": "RECORD_FILE", "value": str(record)},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "annotations": hints},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"serviceAccountName": "workload", "terminationGracePeriodSeconds": 5,
                         "containers": [consumer, agent_container(name)]},
            },
        },
    }  # fmt: skip


def test_a_nats_jetstream_deployment_drains_to_zero_and_wakes_on_the_next_message(
    control_plane: ControlPlane,
    pod_runner: PodRunner,
    nats: NatsServer,
    rig_supervisor: Supervisor,
    rig_run_dir: Path,
    background: Background,
    teardown: list[Callable[[], None]],
) -> None:
    namespace, name = unique("stz-nats"), "jobs"
    stream = f"STZ{uuid.uuid4().hex[:8].upper()}"
    subject = f"{stream.lower()}.jobs"
    namespace_with_agent_rbac(control_plane, namespace)
    kubeconfig = waker_rbac(control_plane, [namespace])
    ids = NatsIds(background, nats, stream, subject)
    teardown.append(
        lambda: control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    )
    teardown.append(ids.close)
    hints = {f"tidescale.io/{key}": value for key, value in FAST.items()}
    hints.update(
        {
            "tidescale.io/polling-interval": "1s",
            "tidescale.io/nats-jetstream.monitoring-endpoint": nats.monitoring_endpoint,
            "tidescale.io/nats-jetstream.stream": stream,
            "tidescale.io/nats-jetstream.consumer": CONSUMER,
            "tidescale.io/nats-jetstream.lag-threshold": "20",
        }
    )
    record = rig_run_dir / f"{namespace}-consumed.txt"
    observer = Observer(
        background, KubeConfig.from_kubeconfig(control_plane.admin_kubeconfig), namespace, name
    )
    waker = WakerProcess(rig_supervisor, kubeconfig, namespace)
    teardown.append(waker.stop)
    setup = Setup(namespace=namespace, name=name, observer=observer, record=record, waker=waker)
    apply(control_plane, _deployment(name, nats, stream, subject, hints, record), namespace=namespace)
    waker.start()
    first = ids.send(30)  # work before the first park: consumed by the running pod
    setup.wait_consumed(set(first))

    requested = observer.wait_label("requested", timeout=60)
    watching = observer.wait_label("watching", timeout=15, after=requested)
    parked = observer.wait_parked(timeout=15, after=watching)
    wait_no_pods(control_plane, setup)
    time.sleep(2.0)  # several waker rounds of an empty backlog: it stays parked
    assert observer.replicas_now() == 0
    assert nats.jsz_consumer(stream, CONSUMER)["num_pending"] == 0

    second = ids.send(3)
    observer.wait_awake(timeout=20, after=parked)
    setup.wait_consumed(set(first) | set(second))
    assert events(control_plane, namespace, "Parked")
    assert events(control_plane, namespace, "Woken")
    observer.check_invariants()
