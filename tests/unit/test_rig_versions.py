"""Which Kubernetes the rig runs: versions.env's, or the one TIDESCALE_RIG_KUBERNETES_VERSION names
(`make test-k8s-oldest`), and the controller-manager flags that version takes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.rig.controlplane import controllers_flag
from tests.rig.paths import (
    KUBERNETES_VERSION_ENV,
    VERSIONS,
    ControlPlaneBinaries,
    RigNotBuilt,
    RigVersionError,
    kubernetes_minor,
    kubernetes_version,
)


def test_without_the_variable_the_rig_runs_the_version_of_versions_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(KUBERNETES_VERSION_ENV, raising=False)
    assert kubernetes_version() == VERSIONS["KUBERNETES_VERSION"]


def test_the_variable_picks_another_kubernetes_whose_missing_build_names_the_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(KUBERNETES_VERSION_ENV, "v1.30.99")
    monkeypatch.setenv("TIDESCALE_RIG_CACHE", str(tmp_path))
    assert kubernetes_version() == "v1.30.99"
    with pytest.raises(RigNotBuilt) as missing:
        ControlPlaneBinaries.from_cache()
    assert "TIDESCALE_RIG_KUBERNETES_VERSION=v1.30.99 tests/rig/build/build.sh" in str(missing.value)


@pytest.mark.parametrize("version", ["1.30.14", "v1.30", "v2.0.0", "v1.30.14; rm -rf /"])
def test_a_malformed_version_is_refused_naming_the_form_expected(
    monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    monkeypatch.setenv(KUBERNETES_VERSION_ENV, version)
    with pytest.raises(RigVersionError, match=r"not of the form v1\.<minor>\.<patch>"):
        kubernetes_version()


def test_the_oldest_version_supported_is_older_than_the_default_one() -> None:
    assert kubernetes_minor(VERSIONS["KUBERNETES_OLDEST_VERSION"]) < kubernetes_minor(
        VERSIONS["KUBERNETES_VERSION"]
    )


def test_an_older_controller_manager_is_not_asked_to_disable_controllers_it_does_not_have() -> None:
    on_oldest = controllers_flag(30).split(",")
    on_default = controllers_flag(37).split(",")

    assert on_oldest[0] == on_default[0] == "*"
    assert "-node-lifecycle-controller" in on_oldest  # it would evict the pod runner's pods
    assert "-device-taint-eviction-controller" not in on_oldest  # Kubernetes 1.33 and later
    assert set(on_oldest) < set(on_default)
