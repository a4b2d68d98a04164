"""What wakes a parked Deployment besides an active trigger: KEDA's paused-scale-out and
scaling-modifiers at zero replicas (``getScaledObjectState``: only the composite's activation counts)."""

from __future__ import annotations

import logging

import pytest

from tests.unit.test_waker_tenants import FakeClient, add, fake_sources, kafka_hints, make_waker

__all__ = ["fake_sources"]  # the autouse fixture that replaces the brokers


async def test_paused_scale_out_keeps_a_parked_deployment_at_zero_while_its_trigger_is_active() -> None:
    client = FakeClient()
    waker = make_waker(client)
    await add(
        waker,
        client,
        "team-a",
        "held",
        {**kafka_hints("active-a:9092"), "tidescale.io/paused-scale-out": "true"},
    )
    await add(waker, client, "team-a", "free", kafka_hints("active-a:9092"))
    await waker.poll_once()
    assert not client.woken("team-a", "held")
    assert client.woken("team-a", "free")


def _formula(activation: str) -> dict[str, str]:
    return {
        "tidescale.io/scaling-modifiers-formula": "kafka * 1",
        "tidescale.io/scaling-modifiers-target": "10",
        "tidescale.io/scaling-modifiers-activation-target": activation,
    }


async def test_with_a_formula_only_the_composite_above_its_activation_target_wakes() -> None:
    """The fake broker reads 5 and calls its trigger active; the formula's activation decides."""
    client = FakeClient()
    waker = make_waker(client)
    await add(waker, client, "team-a", "below", {**kafka_hints("active-a:9092"), **_formula("6")})
    await add(waker, client, "team-a", "above", {**kafka_hints("active-a:9092"), **_formula("4")})
    await waker.poll_once()
    assert not client.woken("team-a", "below")
    assert client.woken("team-a", "above")


async def test_with_a_formula_a_failing_trigger_never_wakes_it() -> None:
    client = FakeClient()
    waker = make_waker(client)
    await add(waker, client, "team-a", "failing", {**kafka_hints("unreachable-a:9092"), **_formula("0")})
    await waker.poll_once()
    assert not client.woken("team-a", "failing")


async def test_the_api_servers_service_port_is_denied_but_other_ports_of_its_address_are_not() -> None:
    """On the rig (and some bare-metal clusters) the Service address is a node's, where brokers listen too."""
    from tidescale._waker_guard import BrokerNetworks
    from tidescale.waker import _api_server_endpoints

    env = {"KUBERNETES_SERVICE_HOST": "10.213.4.1", "KUBERNETES_SERVICE_PORT": "6443"}
    endpoints = await _api_server_endpoints("https://10.213.4.1:6443", env)
    networks = BrokerNetworks.parse("0.0.0.0/0", "127.0.0.0/8", api_server=endpoints)
    assert ("10.213.4.1", 6443) in endpoints
    assert ("10.213.4.1", None) not in endpoints
    assert networks.verdict("10.213.4.1", 6443) is not None
    assert networks.verdict("10.213.4.1", 9092) is None


async def test_the_wakers_lines_about_a_deployment_carry_its_namespace_and_name_as_json_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import orjson

    from tidescale._logging import JsonFormatter

    client = FakeClient()
    waker = make_waker(client)
    with caplog.at_level(logging.INFO, logger="tidescale"):
        await add(waker, client, "team-a", "files", kafka_hints("k:9092", **{"sasl-password-file": "/etc/x"}))
        await waker.poll_once()
    lines = [
        orjson.loads(JsonFormatter().format(r)) for r in caplog.records if "team-a/files" in r.getMessage()
    ]
    assert lines
    assert (lines[0]["namespace"], lines[0]["deployment"]) == ("team-a", "files")
