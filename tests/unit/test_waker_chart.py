"""The chart's waker broker networks: the flag's environment and the waker's egress NetworkPolicy."""

from __future__ import annotations

from typing import Any

from tests.unit.test_chart_render import WAKER, env, render, render_error
from tidescale._waker_guard import DEFAULT_ALLOWED, DEFAULT_DENIED


def _egress(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return list(policy["spec"]["egress"])


def test_the_chart_default_networks_are_the_waker_default_networks() -> None:
    values = env(render().get("Deployment", WAKER))
    assert values["TIDESCALE_WAKER_BROKER_ALLOWED_NETWORKS"] == DEFAULT_ALLOWED
    assert values["TIDESCALE_WAKER_BROKER_DENIED_NETWORKS"] == DEFAULT_DENIED


def test_the_waker_egress_policy_cuts_the_denied_networks_out_of_the_catch_alls() -> None:
    policy = render().get("NetworkPolicy", WAKER)
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    dns, api, brokers = _egress(policy)
    assert {p["port"] for p in dns["ports"]} == {53}
    assert {p["port"] for p in api["ports"]} == {443, 6443}
    blocks = {b["ipBlock"]["cidr"]: b["ipBlock"].get("except", []) for b in brokers["to"]}
    assert "169.254.0.0/16" in blocks["0.0.0.0/0"]
    assert "127.0.0.0/8" in blocks["0.0.0.0/0"]
    assert "fe80::/10" in blocks["::/0"]
    assert "::1/128" in blocks["::/0"]


def test_narrowed_networks_reach_both_the_flag_and_the_policy() -> None:
    rendered = render(
        "--set",
        "waker.brokerNetworks.allowed={10.213.0.0/16}",
        "--set",
        "waker.brokerNetworks.denied={10.213.9.0/24}",
    )
    values = env(rendered.get("Deployment", WAKER))
    assert values["TIDESCALE_WAKER_BROKER_ALLOWED_NETWORKS"] == "10.213.0.0/16"
    assert values["TIDESCALE_WAKER_BROKER_DENIED_NETWORKS"] == "10.213.9.0/24"
    (brokers,) = [rule for rule in _egress(rendered.get("NetworkPolicy", WAKER)) if "to" in rule]
    assert brokers["to"] == [{"ipBlock": {"cidr": "10.213.0.0/16"}}]


def test_the_api_server_ports_of_the_egress_policy_are_a_setting() -> None:
    policy = render("--set", "waker.apiServerPorts={8443}").get("NetworkPolicy", WAKER)
    assert _egress(policy)[1]["ports"] == [{"port": 8443, "protocol": "TCP"}]


def test_without_network_policies_there_is_no_waker_egress_policy() -> None:
    assert not render("--set", "networkPolicy.enabled=false").has("NetworkPolicy", WAKER)


def test_a_network_that_is_not_a_cidr_is_refused_by_the_schema() -> None:
    assert "brokerNetworks" in render_error("--set-json", 'waker.brokerNetworks={"allowed": ["everywhere"]}')
