"""The cron trigger on the rig: the real agent scales a Deployment to desired-replicas inside a
window that is open when the test begins, and its status names the trigger active."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.rigkube import (
    _consumer_deployment,
    agent_container,
    apply,
    get,
    namespace_with_agent_rbac,
    unique,
    wait_for,
)
from tests.integration.test_scale_to_zero import FAST
from tests.rig.controlplane import ControlPlane
from tests.rig.podrunner import PodRunner

pytestmark = pytest.mark.rig

DESIRED = 3


def _daily(moment: datetime) -> str:
    return f"{moment.minute} {moment.hour} * * *"


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    name = unique("cron")
    namespace_with_agent_rbac(control_plane, name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_a_deployment_is_scaled_to_the_desired_replicas_inside_an_open_window(
    control_plane: ControlPlane, pod_runner: PodRunner, namespace: str
) -> None:
    # The window opened at the start of this minute and closes three minutes later: whatever the
    # second now, it is open for two minutes at least, long enough for a deadline of 90 s.
    now = datetime.now(UTC)
    hints = {
        **{f"tidescale.io/{k}": v for k, v in FAST.items()},
        "tidescale.io/min-replicas": "1",
        "tidescale.io/max-replicas": "5",
        "tidescale.io/polling-interval": "1s",
        "tidescale.io/cron.start": _daily(now),
        "tidescale.io/cron.end": _daily(now + timedelta(minutes=3)),
        "tidescale.io/cron.timezone": "UTC",
        "tidescale.io/cron.desired-replicas": str(DESIRED),
    }
    name = "office-hours"
    workload = {"name": "app", "image": "tidescale-test/echo", "args": ["--port", "8080"]}
    deployment = _consumer_deployment(
        name, hints, 1, "workload", containers=[workload, agent_container(name)]
    )
    apply(control_plane, deployment, namespace=namespace)

    def replicas() -> int | None:
        found = get(control_plane, "deployment", name, namespace)
        return int(found["spec"]["replicas"]) if found["spec"].get("replicas") == DESIRED else None

    assert wait_for(f"{name} scaled to {DESIRED}", replicas, timeout=90, interval=1.0) == DESIRED
    status = get(control_plane, "deployment", name, namespace)["metadata"]["annotations"]
    shown = [value for key, value in status.items() if key.startswith("tidescale.io/status")]
    assert any('"cron"' in value for value in shown), json.dumps(status)
