"""Shared fixtures. Rig fixtures live in tests/rig/fixtures_*.py, one module per component,
and start only what a test asks for, once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.rig.network import Network
from tests.rig.paths import new_run_dir
from tests.rig.processes import Supervisor

pytest_plugins = [
    "tests.rig.fixtures_controlplane",
    "tests.rig.fixtures_brokers",
    "tests.rig.fixtures_stores",
    "tests.rig.fixtures_podrunner",
    "tests.rig.fixtures_prom_nats",
]

# No per-example deadline: hypothesis's default (200 ms) is a timed assertion, and on a shared
# 2-core machine an example that takes 400 ms is load, not a bug. Speed is the benchmarks' job.
settings.register_profile("tidescale", deadline=None)
settings.load_profile("tidescale")

_RUN_DIR_KEY = pytest.StashKey[Path]()

# Unit tests that run the rig's helm binary (`helm template`, no cluster). `make test` runs
# them; `make test-unit` leaves them out (-m "not helm"), so it needs no rig at all.
_HELM_MODULES = frozenset({"test_chart_render.py"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "helm: needs the rig's helm binary (`make rig`); left out of `make test-unit`"
    )
    config.addinivalue_line(
        "markers",
        "long: kill storms and soaks (`make test-faults-long`, FAULTS_LONG_SECONDS); not in `make test`",
    )
    config.addinivalue_line(
        "markers",
        "smoke: the subset `make test-k8s-oldest` runs on the oldest Kubernetes supported "
        "(injection, agent scaling, park and wake, the chart's install); also in `make test`",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in _HELM_MODULES:
            item.add_marker(pytest.mark.helm)


@pytest.fixture(scope="session")
def rig_run_dir(request: pytest.FixtureRequest) -> Path:
    """One folder per test session for every component's logs, certificates and data."""
    run = new_run_dir()
    request.config.stash[_RUN_DIR_KEY] = run
    return run


@pytest.fixture(scope="session")
def rig_supervisor(rig_run_dir: Path) -> Iterator[Supervisor]:
    """Starts rig processes; at the end of the session stops exactly those, by pid."""
    supervisor = Supervisor(run_dir=rig_run_dir)
    yield supervisor
    supervisor.stop_all()


@pytest.fixture(scope="session")
def rig_network() -> Iterator[Network]:
    """The bridge and pod namespaces; removed at the end of the session."""
    network = Network().open()
    yield network
    network.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """On a failed rig test, attach the tail of every component log of this run."""
    report = yield
    run = item.config.stash.get(_RUN_DIR_KEY, None)
    if run is not None and getattr(report, "failed", False) and item.get_closest_marker("rig"):
        for log in sorted((run / "logs").glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-30:]
            report.sections.append((f"rig log {log.name} (last 30 lines)", "\n".join(lines)))
    return report
