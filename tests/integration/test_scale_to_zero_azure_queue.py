"""Scale to zero on an Azure Storage queue end to end: the real agent beside each consumer pod
reading Azurite, the real ``tidescale waker`` process measuring it with the account key of a
Secret; park when the queue is idle, wake on the next message. The helpers are
test_scale_to_zero.py's."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.rigkube import (
    _consumer_deployment,
    agent_container,
    apply,
    namespace_with_agent_rbac,
    unique,
    waker_rbac,
)
from tests.integration.test_scale_to_zero import (
    FAST,
    Background,
    Observer,
    Setup,
    WakerProcess,
    background,  # noqa: F401 - a fixture
    events,
    teardown,  # noqa: F401 - a fixture
    wait_no_pods,
)
from tests.rig.azurite import ACCOUNT, KEY, Azurite
from tests.rig.controlplane import ControlPlane
from tests.rig.podrunner import PodRunner
from tests.rig.processes import Supervisor
from tidescale.kube import KubeConfig

pytestmark = pytest.mark.rig

SECRET = "azure-storage"


class QueueIds:
    """Messages whose texts are unique ids, put on one queue."""

    def __init__(self, azurite: Azurite, queue: str) -> None:
        self._azurite, self._queue = azurite, queue
        self._numbers = itertools.count()

    def send(self, count: int = 1) -> list[str]:
        ids = [f"{self._queue}-{next(self._numbers)}" for _ in range(count)]
        self._azurite.put(self._queue, ids)
        return ids

    def close(self) -> None:
        self._azurite.delete_queue(self._queue)


def queue_deployment(
    name: str, azurite: Azurite, queue: str, annotations: dict[str, str], record: Path
) -> dict[str, Any]:
    """The sample consumer with the agent beside it; both read the account key from Secret SECRET."""
    key = {
        "name": "AZURE_STORAGE_KEY",
        "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "AZURE_STORAGE_KEY"}},
    }
    agent = agent_container(name)
    agent["env"] = [*agent["env"], key]
    consumer = {
        "name": "consumer",
        "image": "tidescale-test/azure-queue-consumer",
        "env": [
            {"name": "AZURE_QUEUE_ENDPOINT", "value": azurite.endpoint},
            {"name": "AZURE_ACCOUNT", "value": ACCOUNT},
            {"name": "AZURE_QUEUE", "value": queue},
            key,
            {"name": "WORK_SECONDS", "value": "0.02"},
            {"name": "RECORD_FILE", "value": str(record)},
        ],
    }
    return _consumer_deployment(name, annotations, 1, "workload", containers=[consumer, agent])


def test_an_azure_queue_deployment_parks_when_the_queue_is_idle_and_wakes_on_the_next_message(
    control_plane: ControlPlane,
    pod_runner: PodRunner,
    azurite: Azurite,
    rig_supervisor: Supervisor,
    rig_run_dir: Path,
    background: Background,  # noqa: F811
    teardown: list[Callable[[], None]],  # noqa: F811
) -> None:
    namespace, name = unique("stz-azq"), "jobs"
    queue = f"jobs-{uuid.uuid4().hex[:8]}"
    azurite.create_queue(queue)
    namespace_with_agent_rbac(control_plane, namespace)
    kubeconfig = waker_rbac(control_plane, [namespace])
    control_plane.kubectl(
        "create", "secret", "generic", SECRET, "-n", namespace, f"--from-literal=AZURE_STORAGE_KEY={KEY}"
    )
    hints = {
        "tidescale.io/azure-queue.queue-name": queue,
        "tidescale.io/azure-queue.account-name": ACCOUNT,
        "tidescale.io/azure-queue.endpoint": azurite.endpoint,
        "tidescale.io/azure-queue.account-key-env": "AZURE_STORAGE_KEY",
        "tidescale.io/azure-queue.credentials-secret": SECRET,
        "tidescale.io/azure-queue.queue-length": "20",
        "tidescale.io/polling-interval": "1s",
        **{f"tidescale.io/{key}": value for key, value in FAST.items()},
    }
    record = rig_run_dir / f"{namespace}-consumed.txt"
    observer = Observer(
        background, KubeConfig.from_kubeconfig(control_plane.admin_kubeconfig), namespace, name
    )
    apply(control_plane, queue_deployment(name, azurite, queue, hints, record), namespace=namespace)
    waker = WakerProcess(rig_supervisor, kubeconfig, namespace)
    setup = Setup(namespace=namespace, name=name, observer=observer, record=record, waker=waker)
    ids = QueueIds(azurite, queue)
    teardown.append(
        lambda: control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    )
    teardown.append(ids.close)
    teardown.append(waker.stop)

    waker.start()
    first = ids.send(30)  # work before the first park: consumed by the running pod
    setup.wait_consumed(set(first))

    requested = observer.wait_label("requested", timeout=60)
    watching = observer.wait_label("watching", timeout=15, after=requested)
    parked = observer.wait_parked(timeout=15, after=watching)
    wait_no_pods(control_plane, setup)
    time.sleep(2.0)  # several polls of the idle queue by the waker: it stays parked
    assert observer.replicas_now() == 0

    second = ids.send(5)
    observer.wait_awake(timeout=20, after=parked)
    setup.wait_consumed(set(first) | set(second))
    assert events(control_plane, namespace, "Parked")
    assert events(control_plane, namespace, "Woken")
    observer.check_invariants()
