"""docs/metrics.md lists every series of every component, and the agent's series carry the labels
and lifetimes the page promises."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

from tidescale._metrics import AGENT_FAMILIES, LEADER_ONLY, Metrics
from tidescale.agent import Agent, AgentEnv, _Leadership
from tidescale.election import Term
from tidescale.waker import Waker
from tidescale_injector.server import Metrics as InjectorMetrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
ENV = AgentEnv(pod_name="orders-7d9-abcde", namespace="shop", pod_ip="10.0.0.5", deployment="orders")


def documented() -> dict[str, str]:
    """series -> type, from the tables of docs/metrics.md."""
    rows = re.findall(r"^\| `(tidescale_[a-z_]+)` \| (\w+) \|", DOC.read_text(), flags=re.MULTILINE)
    return dict(rows)


def exposed(body: bytes) -> dict[str, str]:
    """series -> type, from the ``# TYPE`` lines of a /metrics body."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", body.decode(), flags=re.MULTILINE))


class NoClient:
    """The waker's API client, never called here."""

    async def get_secret_data(self, namespace: str, name: str) -> dict[str, bytes]:
        raise AssertionError("not called")


def every_series_in_code() -> dict[str, str]:
    waker = Waker(cast(Any, NoClient()), identity="waker-0", leading=lambda: False)
    return {
        **{name: kind for name, kind, _ in AGENT_FAMILIES},
        **exposed(waker.metrics.render()),
        **exposed(InjectorMetrics().render()),
    }


def test_the_metrics_page_lists_every_series_of_agent_waker_and_injector_with_its_type() -> None:
    assert documented() == every_series_in_code()


def test_the_agent_exposes_exactly_the_families_it_declares() -> None:
    agent = Agent(ENV, cast(Any, None))
    assert exposed(agent.metrics.render()) == {name: kind for name, kind, _ in AGENT_FAMILIES}


def test_every_agent_sample_carries_its_namespace_and_deployment_and_trigger_series_their_type() -> None:
    agent = Agent(ENV, cast(Any, None))
    agent.metrics.set("tidescale_trigger_value", 42, {"trigger": "orders", "type": "kafka"})
    agent.metrics.observe(
        "tidescale_measurement_duration_seconds", 0.02, {"trigger": "orders", "type": "kafka"}
    )
    samples = [line for line in agent.metrics.render().decode().splitlines() if not line.startswith("#")]
    assert samples
    for line in samples:
        assert 'namespace="shop"' in line, line
        assert 'deployment="orders"' in line, line
    assert (
        'tidescale_trigger_value{deployment="orders",namespace="shop",trigger="orders",type="kafka"} 42'
        in samples
    )
    assert any(line.startswith("tidescale_build_info{") and 'version="' in line for line in samples)


def test_a_histogram_renders_cumulative_buckets_a_sum_and_a_count() -> None:
    metrics = Metrics([("h_seconds", "histogram", "h")], buckets=(0.1, 1.0))
    for seconds in (0.05, 0.5, 5.0):
        metrics.observe("h_seconds", seconds)
    lines = metrics.render().decode().splitlines()
    assert 'h_seconds_bucket{le="0.1"} 1' in lines
    assert 'h_seconds_bucket{le="1.0"} 2' in lines
    assert 'h_seconds_bucket{le="+Inf"} 3' in lines
    assert "h_seconds_sum 5.55" in lines
    assert "h_seconds_count 3" in lines


class EndedElector:
    """An elector whose term has already moved on: the leadership loop ends at once."""

    def term(self) -> Term:
        return Term(holder="someone-else", transitions=9, resource_version="2")


async def test_losing_leadership_drops_the_leader_only_series_so_no_stale_copy_remains() -> None:
    agent = Agent(ENV, cast(Any, None))
    labels = {"trigger": "orders", "type": "kafka"}
    for family in LEADER_ONLY:
        agent.metrics.set(family, 3, labels)
    agent.metrics.set("tidescale_local_value", 5, labels)
    term = Term(holder=ENV.pod_name, transitions=8, resource_version="1")
    await _Leadership(agent, cast(Any, EndedElector()), term).run()
    for family in LEADER_ONLY:
        assert agent.metrics.value(family, labels) is None, family
    assert agent.metrics.value("tidescale_local_value", labels) == 5  # every pod's own: kept


def test_the_build_version_is_the_installed_distributions_read_without_importlib_metadata(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys
    from importlib.metadata import version

    from tidescale._metrics import installed_version

    assert installed_version("tidescale") == version("tidescale")
    folder = tmp_path / "tidescale-9.8.7.dist-info"
    folder.mkdir()
    (folder / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: tidescale\nVersion: 9.8.7\n\nVersion: no\n"
    )
    assert installed_version("tidescale", path=[str(tmp_path / "absent"), str(tmp_path)]) == "9.8.7"
    assert installed_version("tidescale", path=[str(tmp_path / "absent")]) == "unknown"
    code = "import sys, tidescale._metrics as m; m.build_info(); print('importlib.metadata' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
