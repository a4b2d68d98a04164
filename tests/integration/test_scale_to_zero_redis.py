"""Scale to zero on a Redis list: the real agent beside a list consumer, the real waker (reading the
password from the namespace's Secret), the rig's redis-server. Parks when the list is empty, wakes
on the next item. The helpers are test_scale_to_zero's (Observer, WakerProcess, Setup, arm)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
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
    arm,
    events,
)
from tests.rig.controlplane import ControlPlane
from tests.rig.podrunner import PodRunner
from tests.rig.processes import Supervisor
from tests.rig.redis import Redis
from tidescale.kube import KubeConfig

pytestmark = pytest.mark.rig


@pytest.fixture
def background() -> Iterator[Background]:
    loop = Background()
    yield loop
    loop.close()


@pytest.fixture
def teardown(control_plane: ControlPlane) -> Iterator[list[Callable[[], None]]]:
    undo: list[Callable[[], None]] = []
    yield undo
    for step in reversed(undo):
        with contextlib.suppress(Exception):  # every step runs, whatever the one before did
            step()


class RedisIds:
    """Pushes numbered items onto the list with redis-cli; remembers every id it pushed."""

    def __init__(self, redis: Redis, key: str) -> None:
        self._redis, self.key = redis, key
        self.produced: set[str] = set()
        self._counter = 0

    def send(self, count: int = 1) -> list[str]:
        ids = [f"x{self._counter + i:05d}" for i in range(count)]
        self._counter += count
        self._redis.cli("RPUSH", self.key, *ids)
        self.produced.update(ids)
        return ids

    def close(self) -> None:
        self._redis.cli("DEL", self.key)


def redis_consumer_deployment(
    name: str, *, redis: Redis, key: str, secret: str, annotations: dict[str, str], record_file: Path
) -> dict[str, Any]:
    """The sample list consumer with the agent beside it; both read the password from Secret
    ``secret`` (key password) through secretKeyRef."""
    password = {"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": secret, "key": "password"}}}
    agent = agent_container(name)
    agent["env"] = [*agent["env"], password]
    consumer = {
        "name": "consumer",
        "image": "tidescale-test/redis-consumer",
        "env": [
            {"name": "REDIS_ADDRESS", "value": redis.address},
            {"name": "REDIS_LIST", "value": key},
            {"name": "WORK_SECONDS", "value": "0.02"},
            {"name": "RECORD_FILE", "value": str(record_file)},
            password,
        ],
    }
    return _consumer_deployment(name, annotations, 1, "workload", containers=[consumer, agent])


def test_a_redis_list_deployment_parks_when_the_list_is_empty_and_wakes_on_the_next_item(
    control_plane: ControlPlane,
    pod_runner: PodRunner,
    redis: Redis,
    rig_supervisor: Supervisor,
    rig_run_dir: Path,
    background: Background,
    teardown: list[Callable[[], None]],
) -> None:
    namespace, name, key, secret = unique("stz-redis"), "jobs", unique("jobs"), "redis-credentials"
    namespace_with_agent_rbac(control_plane, namespace)
    kubeconfig = waker_rbac(control_plane, [namespace])
    control_plane.kubectl(
        "create", "secret", "generic", secret, "-n", namespace, f"--from-literal=password={redis.password}"
    )
    hints = {
        "tidescale.io/redis.address": redis.address,
        "tidescale.io/redis.list": key,
        "tidescale.io/redis.value": "20",
        "tidescale.io/redis.password-env": "REDIS_PASSWORD",
        "tidescale.io/redis.credentials-secret": secret,
        "tidescale.io/polling-interval": "1s",
        **{f"tidescale.io/{k}": v for k, v in FAST.items()},
    }
    record = rig_run_dir / f"{namespace}-consumed.txt"
    apply(
        control_plane,
        redis_consumer_deployment(
            name, redis=redis, key=key, secret=secret, annotations=hints, record_file=record
        ),
        namespace=namespace,
    )
    observer = Observer(
        background, KubeConfig.from_kubeconfig(control_plane.admin_kubeconfig), namespace, name
    )
    setup = Setup(
        namespace=namespace,
        name=name,
        observer=observer,
        record=record,
        waker=WakerProcess(rig_supervisor, kubeconfig, namespace),
    )
    ids = RedisIds(redis, key)
    arm(teardown, control_plane, setup, ids)  # type: ignore[arg-type]
    setup.waker.start()
    first = ids.send(30)
    setup.wait_consumed(set(first))

    requested = observer.wait_label("requested", timeout=60)
    watching = observer.wait_label("watching", timeout=15, after=requested)
    parked = observer.wait_parked(timeout=15, after=watching)
    time.sleep(2.0)  # several polls of the empty list: it stays parked
    assert observer.replicas_now() == 0

    second = ids.send(5)
    observer.wait_awake(timeout=20, after=parked)
    setup.wait_consumed(set(first) | set(second))
    # The park itself is seen by the watch (wait_parked); the agent's Parked Event is not asserted:
    # the leader's pod is ended by that very park and its Event was seen lost (2 runs in 6).
    assert events(control_plane, namespace, "Woken")
    observer.check_invariants()
