"""The chart passes the rig's helm: strict lint, rendering, and a schema that rejects misspelled values."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.rig.paths import REPO_ROOT, RigNotBuilt, helm_binary
from tests.unit.test_chart_render import KUBE_VERSION

CHART = REPO_ROOT / "charts" / "tidescale"

# A template that only the test adds (to a copy of the chart), so that the shared
# helpers are rendered and checked before any real template uses them.
PROBE = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "tidescale.fullname" . }}-probe
  labels:
    {{- include "tidescale.componentLabels" (dict "root" $ "component" "probe") | nindent 4 }}
data:
  image: {{ include "tidescale.image" . | quote }}
  {{- $injector := dict "root" $ "component" "injector" }}
  serviceAccount: {{ include "tidescale.componentServiceAccountName" $injector | quote }}
  selector: {{ include "tidescale.componentSelectorLabels" (dict "root" $ "component" "probe") | quote }}
"""


@pytest.fixture(scope="module")
def helm() -> Path:
    try:
        return helm_binary()
    except RigNotBuilt as exc:
        missing = str(exc)
    pytest.fail(f"helm cannot run: {missing}", pytrace=False)


def _run(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120, check=False
    )


@pytest.mark.rig
def test_the_chart_passes_strict_lint(helm: Path) -> None:
    result = _run(helm, "lint", "--strict", str(CHART))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.rig
def test_the_chart_renders_with_its_default_values(helm: Path) -> None:
    result = _run(helm, "template", "demo", str(CHART), "--namespace", "tidescale-system", *KUBE_VERSION)

    assert result.returncode == 0, result.stderr
    kinds = {doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc}
    assert {"Deployment", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"} <= kinds


@pytest.mark.rig
def test_the_schema_rejects_a_misspelled_value_key(helm: Path) -> None:
    result = _run(helm, "template", "demo", str(CHART), "--set", "injector.replcas=3", *KUBE_VERSION)

    assert result.returncode != 0
    assert "additional properties 'replcas' not allowed" in result.stderr


@pytest.mark.rig
def test_the_schema_rejects_a_value_outside_its_choices(helm: Path) -> None:
    result = _run(helm, "lint", "--strict", str(CHART), "--set", "injector.failurePolicy=Sometimes")

    assert result.returncode != 0
    assert "failurePolicy" in result.stdout + result.stderr


@pytest.mark.rig
def test_the_helpers_give_every_resource_the_recommended_labels(helm: Path, tmp_path: Path) -> None:
    chart = tmp_path / "tidescale"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "probe.yaml").write_text(PROBE)

    result = _run(helm, "template", "demo", str(chart), "--set", "commonLabels.team=payments", *KUBE_VERSION)

    assert result.returncode == 0, result.stderr
    (probe,) = [doc for doc in yaml.safe_load_all(result.stdout) if doc and doc["kind"] == "ConfigMap"]
    chart_meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert probe["metadata"]["name"] == "demo-tidescale-probe"
    assert probe["metadata"]["labels"] == {
        "app.kubernetes.io/name": "tidescale",
        "app.kubernetes.io/instance": "demo",
        "app.kubernetes.io/version": chart_meta["appVersion"],
        "app.kubernetes.io/part-of": "tidescale",
        "app.kubernetes.io/managed-by": "Helm",
        "app.kubernetes.io/component": "probe",
        "helm.sh/chart": f"tidescale-{chart_meta['version']}",
        "team": "payments",
    }
    assert probe["data"]["image"] == f"ghcr.io/tidescale/tidescale:{chart_meta['appVersion']}"
    assert probe["data"]["serviceAccount"] == "demo-tidescale-injector"
    # Selector labels leave out what changes on upgrade (version, chart): selectors are immutable.
    assert yaml.safe_load(probe["data"]["selector"]) == {
        "app.kubernetes.io/name": "tidescale",
        "app.kubernetes.io/instance": "demo",
        "app.kubernetes.io/component": "probe",
    }
