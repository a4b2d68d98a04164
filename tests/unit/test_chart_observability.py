"""The chart's observability pack (metrics.dashboard, metrics.prometheusRule), rendered by the rig's
helm: the dashboard and the alerts exist behind their values, and every series their queries name
is one a component exposes and docs/metrics.md lists."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.unit.test_chart_render import RELEASE, Rendered, render, render_error
from tests.unit.test_metrics_doc import documented, every_series_in_code

DASHBOARD = f"{RELEASE}-tidescale-dashboard"
RULE = f"{RELEASE}-tidescale"
ALERTS = {
    "TidescaleTriggerFailing",
    "TidescaleFallbackActive",
    "TidescaleLeaderMissing",
    "TidescaleWakerNotLeading",
    "TidescaleWebhookErrors",
}
BOTH = ("--set", "metrics.dashboard.enabled=true", "--set", "metrics.prometheusRule.enabled=true")


def dashboard_of(rendered: Rendered) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(rendered.get("ConfigMap", DASHBOARD)["data"]["tidescale.json"])
    return data


def dashboard_queries(rendered: Rendered) -> list[str]:
    return [target["expr"] for panel in dashboard_of(rendered)["panels"] for target in panel["targets"]]


def rule_queries(rendered: Rendered) -> list[str]:
    groups = rendered.get("PrometheusRule", RULE)["spec"]["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def series_named(queries: list[str]) -> set[str]:
    """The series a set of PromQL queries reads: histogram suffixes point at their family."""
    kinds = every_series_in_code()
    named = set()
    for query in queries:
        for name in re.findall(r"\btidescale_[a-z_]+", query):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            named.add(base if kinds.get(base) == "histogram" else name)
    return named


def test_neither_the_dashboard_nor_the_rule_is_rendered_by_default() -> None:
    rendered = render()
    assert not rendered.has("ConfigMap", DASHBOARD)
    assert not rendered.all("PrometheusRule")


def test_the_dashboard_is_valid_json_with_a_query_in_every_panel_and_the_sidecars_label() -> None:
    rendered = render(*BOTH)
    config_map = rendered.get("ConfigMap", DASHBOARD)
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = dashboard_of(rendered)
    assert dashboard["uid"] == "tidescale-overview"
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]


def test_the_dashboard_goes_to_the_namespace_and_labels_grafana_looks_in() -> None:
    rendered = render(
        "--set",
        "metrics.dashboard.enabled=true",
        "--set",
        "metrics.dashboard.namespace=monitoring",
        "--set",
        "metrics.dashboard.labels.grafana_dashboard=tidescale",
    )
    config_map = rendered.get("ConfigMap", DASHBOARD)
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "tidescale"


def test_the_rule_carries_the_five_alerts_with_the_configured_duration_severity_and_labels() -> None:
    rendered = render(
        "--set",
        "metrics.prometheusRule.enabled=true",
        "--set",
        "metrics.prometheusRule.for=10m",
        "--set",
        "metrics.prometheusRule.severity=page",
        "--set",
        "metrics.prometheusRule.labels.release=kps",
    )
    rule = rendered.get("PrometheusRule", RULE)
    assert rule["metadata"]["labels"]["release"] == "kps"
    rules = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    assert {r["alert"] for r in rules} == ALERTS
    for r in rules:
        assert r["for"] == "10m"
        assert r["labels"]["severity"] == "page"
        assert r["annotations"]["summary"]
    # Alertmanager templates survive Helm: the annotations still hold {{ $labels.x }}.
    failing = next(r for r in rules if r["alert"] == "TidescaleTriggerFailing")
    assert "{{ $labels.trigger }}" in failing["annotations"]["summary"]


def test_every_series_the_dashboard_and_the_alerts_query_exists_in_the_code_and_in_docs_metrics() -> None:
    rendered = render(*BOTH)
    named = series_named(dashboard_queries(rendered) + rule_queries(rendered))
    assert named, "no tidescale series found in the queries"
    assert sorted(named - set(every_series_in_code())) == []
    assert sorted(named - set(documented())) == []


def test_the_dashboard_and_the_alerts_cover_the_leaders_the_triggers_and_the_waker() -> None:
    rendered = render(*BOTH)
    named = series_named(dashboard_queries(rendered))
    for wanted in ("tidescale_trigger_value", "tidescale_desired_replicas", "tidescale_waker_leader"):
        assert wanted in named


def test_a_duration_that_prometheus_cannot_read_is_refused() -> None:
    error = render_error("--set", "metrics.prometheusRule.for=5 minutes")
    assert "for" in error


def test_log_level_and_format_reach_the_injector_and_the_waker_whose_env_the_injector_passes_on() -> None:
    rendered = render("--set", "logFormat=text", "--set", "logLevel=debug")
    for name in (f"{RELEASE}-tidescale-injector", f"{RELEASE}-tidescale-waker"):
        (container,) = rendered.get("Deployment", name)["spec"]["template"]["spec"]["containers"]
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert env["TIDESCALE_LOG_FORMAT"] == "text", name
        assert env["TIDESCALE_LOG_LEVEL"] == "debug", name


def test_a_log_format_other_than_json_or_text_is_refused() -> None:
    assert "logFormat" in render_error("--set", "logFormat=xml")
