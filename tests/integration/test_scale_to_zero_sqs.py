"""Scale to zero on SQS end to end: the real agent beside each consumer pod reading ElasticMQ, the
real ``tidescale waker`` process measuring it with the keys of a Secret; park when the queue is
idle, wake on the next message. The helpers are test_scale_to_zero.py's."""

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
from tests.rig.controlplane import ControlPlane
from tests.rig.elasticmq import REGION, ElasticMQ
from tests.rig.podrunner import PodRunner
from tests.rig.processes import Supervisor
from tidescale.kube import KubeConfig

pytestmark = pytest.mark.rig

SECRET = "sqs-credentials"


class SqsIds:
    """Messages whose bodies are unique ids, sent to one queue."""

    def __init__(self, elasticmq: ElasticMQ, queue: str) -> None:
        self._elasticmq, self._queue = elasticmq, queue
        self._numbers = itertools.count()

    def send(self, count: int = 1) -> list[str]:
        ids = [f"{self._queue}-{next(self._numbers)}" for _ in range(count)]
        self._elasticmq.send_bodies(self._queue, ids)
        return ids

    def close(self) -> None:
        self._elasticmq.delete_queue(self._queue)


def sqs_deployment(name: str, queue_url: str, annotations: dict[str, str], record: Path) -> dict[str, Any]:
    """The sample SQS consumer with the agent beside it; the agent's keys come from Secret SECRET."""

    def secret_key(key: str) -> dict[str, Any]:
        return {"valueFrom": {"secretKeyRef": {"name": SECRET, "key": key}}}

    agent = agent_container(name)
    agent["env"] = [
        *agent["env"],
        {"name": "AWS_ACCESS_KEY_ID", **secret_key("AWS_ACCESS_KEY_ID")},
        {"name": "AWS_SECRET_ACCESS_KEY", **secret_key("AWS_SECRET_ACCESS_KEY")},
    ]
    consumer = {
        "name": "consumer",
        "image": "tidescale-test/sqs-consumer",
        "env": [
            {"name": "SQS_QUEUE_URL", "value": queue_url},
            {"name": "WORK_SECONDS", "value": "0.02"},
            {"name": "RECORD_FILE", "value": str(record)},
        ],
    }
    return _consumer_deployment(name, annotations, 1, "workload", containers=[consumer, agent])


def test_an_sqs_deployment_parks_when_the_queue_is_idle_and_wakes_on_the_next_message(
    control_plane: ControlPlane,
    pod_runner: PodRunner,
    elasticmq: ElasticMQ,
    rig_supervisor: Supervisor,
    rig_run_dir: Path,
    background: Background,  # noqa: F811
    teardown: list[Callable[[], None]],  # noqa: F811
) -> None:
    namespace, name = unique("stz-sqs"), "jobs"
    queue = f"jobs-{uuid.uuid4().hex[:8]}"
    queue_url = elasticmq.create_queue(queue)
    namespace_with_agent_rbac(control_plane, namespace)
    kubeconfig = waker_rbac(control_plane, [namespace])
    control_plane.kubectl(
        "create", "secret", "generic", SECRET, "-n", namespace,
        "--from-literal=AWS_ACCESS_KEY_ID=AKIDRIG", "--from-literal=AWS_SECRET_ACCESS_KEY=rig-secret",
    )  # fmt: skip
    hints = {
        "tidescale.io/aws-sqs.queue-url": queue_url,
        "tidescale.io/aws-sqs.aws-region": REGION,
        "tidescale.io/aws-sqs.access-key-id-env": "AWS_ACCESS_KEY_ID",
        "tidescale.io/aws-sqs.secret-access-key-env": "AWS_SECRET_ACCESS_KEY",
        "tidescale.io/aws-sqs.credentials-secret": SECRET,
        "tidescale.io/aws-sqs.queue-length": "20",
        "tidescale.io/polling-interval": "1s",
        **{f"tidescale.io/{key}": value for key, value in FAST.items()},
    }
    record = rig_run_dir / f"{namespace}-consumed.txt"
    observer = Observer(
        background, KubeConfig.from_kubeconfig(control_plane.admin_kubeconfig), namespace, name
    )
    apply(control_plane, sqs_deployment(name, queue_url, hints, record), namespace=namespace)
    waker = WakerProcess(rig_supervisor, kubeconfig, namespace)
    setup = Setup(namespace=namespace, name=name, observer=observer, record=record, waker=waker)
    ids = SqsIds(elasticmq, queue)
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
