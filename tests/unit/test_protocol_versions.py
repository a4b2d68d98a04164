"""The park record across builds: the previous build (git archive of the last commit before protocol
versions, run from its own source) and this one read each other's records, and this build's
record carries version 1, which the previous build ignores as an unknown field."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest

from tidescale import parking

REPO_ROOT = Path(__file__).resolve().parents[2]
PREVIOUS = "afe7718"
"""main before protocol versions (as tests/faults/test_mixed_versions.py runs it)."""


@pytest.fixture(scope="module")
def previous_parking(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """The previous build's tidescale/parking.py (pure: it imports only the standard library)."""
    source = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "show", f"{PREVIOUS}:agent/tidescale/parking.py"],
        check=True,
        capture_output=True,
    ).stdout
    path = tmp_path_factory.mktemp("previous") / "previous_parking.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("previous_parking", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["previous_parking"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    assert not hasattr(module, "PROTOCOL_VERSION")
    return module


def a_record(module: ModuleType) -> object:
    return module.ParkRecord(
        epoch=3,
        state=module.ParkState.WATCHING,
        requester="orders-1",
        lease_transitions=2,
        requested_at=datetime(2026, 12, 1, 9, 0, tzinfo=UTC),
        triggers=("kafka",),
        last_offsets={"kafka": {"orders/0": 7}},
        acked_by="waker-0",
        acked_at=datetime(2026, 12, 1, 9, 0, 1, tzinfo=UTC),
    )


def test_this_build_reads_a_record_of_the_previous_build_as_version_1(previous_parking: ModuleType) -> None:
    text = a_record(previous_parking).to_json()  # type: ignore[attr-defined]
    assert '"version"' not in text
    read = parking.ParkRecord.from_json(text)
    assert read == a_record(parking)
    assert read.version == 1


def test_the_previous_build_reads_a_record_of_this_build(previous_parking: ModuleType) -> None:
    text = a_record(parking).to_json()  # type: ignore[attr-defined]
    assert '"version":1' in text
    assert previous_parking.ParkRecord.from_json(text) == a_record(previous_parking)


def test_the_previous_build_would_act_on_a_version_2_record_and_this_build_holds(
    previous_parking: ModuleType,
) -> None:
    """Why the version is there: the previous build cannot tell a newer record from its own."""
    text = a_record(parking).to_json().replace('"version":1', '"version":2')  # type: ignore[attr-defined]
    assert previous_parking.ParkRecord.from_json(text).epoch == 3
    snapshot = parking.DeploymentSnapshot(
        namespace="shop",
        name="orders",
        resource_version="9",
        replicas=1,
        labels={parking.PARK_LABEL: "watching"},
        annotations={parking.PARK_RECORD_ANNOTATION: text},
    )
    step = parking.leader_step(
        snapshot, me="orders-1", lease_transitions=2, my_epoch=3, idle=True, now=datetime.now(UTC)
    )
    assert step.action is parking.LeaderAction.HOLD
