"""Fault: a parked Deployment is deleted, and a new one is created with the same name.

The waker forgets the old one: the new Deployment (at 0 replicas, never parked) is not woken
from the old park record although its trigger has lag, and the waker writes nothing to it.
Scaled by hand, it consumes every message produced meanwhile.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from tests.faults.invariants import writes_by
from tests.faults.prologue import MakeArmedKafka
from tests.integration.rigkube import WAKER_ACCOUNT, WAKER_NAMESPACE, apply, get, wait_for
from tests.integration.test_scale_to_zero import events, wait_no_pods
from tests.rig.controlplane import ControlPlane
from tidescale.parking import PARK_EPOCH_ANNOTATION, PARK_LABEL, PARK_RECORD_ANNOTATION

pytestmark = pytest.mark.rig

WAKER_USER = f"system:serviceaccount:{WAKER_NAMESPACE}:{WAKER_ACCOUNT}"


def test_a_deployment_recreated_with_the_name_of_a_deleted_parked_one_is_not_woken_from_the_old_record(
    armed_kafka: MakeArmedKafka,
    control_plane: ControlPlane,
) -> None:
    armed = armed_kafka("fault-recreate")
    setup, ids = armed.setup, armed.ids
    namespace, name, observer = setup.namespace, setup.name, setup.observer
    setup.waker.start()
    first = ids.send(5)
    setup.wait_consumed(set(first))
    observer.wait_parked(timeout=60)
    wait_no_pods(control_plane, setup)

    old = get(control_plane, "deployment", name, namespace)
    control_plane.kubectl("delete", "deployment", name, "-n", namespace, "--wait=true")
    second = ids.send(5)  # lag on the old Deployment's trigger: it would have woken it
    time.sleep(2.0)  # several waker rounds (0.5 s) with no Deployment at all

    # The same name, the same hints, at zero, never parked: nothing of ours to wake.
    metadata = old["metadata"]
    annotations = {
        key: value
        for key, value in metadata["annotations"].items()
        if key.startswith("tidescale.io/")
        and key not in (PARK_RECORD_ANNOTATION, PARK_EPOCH_ANNOTATION)
        and key != "tidescale.io/status"
    }
    labels = {key: value for key, value in (metadata.get("labels") or {}).items() if key != PARK_LABEL}
    fresh = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {**{k: old["spec"][k] for k in ("selector", "template")}, "replicas": 0},
    }
    recreated = datetime.now(UTC)
    apply(control_plane, fresh, namespace=namespace)
    new_uid = get(control_plane, "deployment", name, namespace)["metadata"]["uid"]
    assert new_uid != metadata["uid"]
    time.sleep(4.0)  # eight waker rounds with lag on the trigger
    assert get(control_plane, "deployment", name, namespace)["spec"]["replicas"] == 0
    assert not writes_by(control_plane, namespace, WAKER_USER, after=recreated), (
        "the waker wrote to the new one"
    )
    assert len(events(control_plane, namespace, "Woken")) == 0

    # Scaled by hand it runs and consumes everything produced meanwhile: nothing lost.
    control_plane.kubectl("scale", "deployment", name, "-n", namespace, "--replicas=1")
    setup.wait_consumed(set(first) | set(second), timeout=90)
    wait_for(
        "the waker still running",
        lambda: setup.waker.process is not None and setup.waker.process.alive(),
        timeout=1,
    )
