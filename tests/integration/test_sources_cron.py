"""The cron trigger on the rig, with the real agent and the real waker: a Deployment outside its
window parks at zero; its window is then moved to open at the next minute, the waker (whose
measurement of a cron trigger is its clock) wakes it when the window opens, and the agent scales it
to desired-replicas. Waiting for the window is waiting with a deadline, never a timed assertion."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

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
    MAX_REPLICAS,
    Background,
    Observer,
    WakerProcess,
    events,
)
from tests.rig.controlplane import ControlPlane
from tests.rig.podrunner import PodRunner
from tests.rig.processes import Supervisor
from tidescale.kube import KubeConfig

pytestmark = pytest.mark.rig

DESIRED = MAX_REPLICAS


def _daily(moment: datetime) -> str:
    return f"{moment.minute} {moment.hour} * * *"


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


def test_a_parked_deployment_is_woken_when_its_window_opens_and_scaled_to_the_desired_replicas(
    control_plane: ControlPlane,
    pod_runner: PodRunner,
    rig_supervisor: Supervisor,
    background: Background,
    teardown: list[Callable[[], None]],
) -> None:
    namespace, name = unique("cron"), "office-hours"
    namespace_with_agent_rbac(control_plane, namespace)

    def delete_namespace() -> None:
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)

    teardown.append(delete_namespace)
    waker = WakerProcess(rig_supervisor, waker_rbac(control_plane, [namespace]), namespace)
    teardown.append(waker.stop)
    # A window twelve hours away: closed now and for the whole test until it is moved.
    far = datetime.now(UTC) + timedelta(hours=12)
    hints = {
        **{f"tidescale.io/{k}": v for k, v in FAST.items()},
        "tidescale.io/polling-interval": "1s",
        "tidescale.io/cron.start": _daily(far),
        "tidescale.io/cron.end": _daily(far + timedelta(hours=1)),
        "tidescale.io/cron.timezone": "UTC",
        "tidescale.io/cron.desired-replicas": str(DESIRED),
    }
    workload = {"name": "app", "image": "tidescale-test/echo", "args": ["--port", "8080"]}
    apply(
        control_plane,
        _consumer_deployment(name, hints, 1, "workload", containers=[workload, agent_container(name)]),
        namespace=namespace,
    )
    observer = Observer(
        background, KubeConfig.from_kubeconfig(control_plane.admin_kubeconfig), namespace, name
    )
    waker.start()
    parked = observer.wait_parked(timeout=90)

    # Parked: move the window to open at the start of the next minute (at most 60 s away).
    now = datetime.now(UTC)
    opens = (now + timedelta(minutes=1)).replace(second=0, microsecond=0)
    opens_monotonic = time.monotonic() + (opens - now).total_seconds()
    window = {"start": _daily(opens), "end": _daily(opens + timedelta(minutes=3))}
    control_plane.kubectl(
        "annotate", "deployment", name, "-n", namespace, "--overwrite",
        *(f"tidescale.io/cron.{field}={value}" for field, value in window.items()),
    )  # fmt: skip
    woke = observer.wait_awake(timeout=90, after=parked)
    # Not before the window opened (a second's slack for reading two clocks).
    assert observer.states[woke].at >= opens_monotonic - 1.0
    observer.wait(f"scaled to {DESIRED}", lambda seen: seen.replicas == DESIRED, timeout=60, after=parked)
    assert events(control_plane, namespace, "Woken")
    observer.check_invariants()
