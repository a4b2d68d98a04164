"""The waker's /healthz, /readyz and /metrics, served on a loopback port by a Waker that never
reaches an API server (nothing here lists, watches or writes)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tidescale.httpserver import HttpServer
from tidescale.kube import KubeConfig
from tidescale.parking import PARK_LABEL, DeploymentSnapshot
from tidescale.waker import DEFAULT_PORT, Waker, WakerClient, _arguments


@pytest.fixture
async def client() -> AsyncIterator[WakerClient]:
    # Port 9 (discard) on loopback: a request would fail at once; none is made.
    kube = WakerClient(KubeConfig(server="https://127.0.0.1:9"))
    yield kube
    await kube.aclose()


async def _serve(waker: Waker) -> tuple[HttpServer, httpx.AsyncClient]:
    server = HttpServer(waker.routes(), host="127.0.0.1", port=0)
    await server.start()
    return server, httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=5.0)


def _samples(body: str) -> dict[str, float]:
    return {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in body.splitlines()
        if line and not line.startswith("#")
    }


async def test_a_standby_waker_is_healthy_and_ready_and_reports_that_it_does_not_lead(
    client: WakerClient,
) -> None:
    waker = Waker(client, identity="waker-1", leading=lambda: False)
    server, http = await _serve(waker)
    try:
        for path in ("/healthz", "/readyz"):
            response = await http.get(path)
            assert (response.status_code, response.text) == (200, "ok\n"), path
        metrics = await http.get("/metrics")
    finally:
        await http.aclose()
        await server.stop()
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert _samples(metrics.text) == {
        "tidescale_waker_leader": 0,
        "tidescale_waker_parked_deployments": 0,
        "tidescale_waker_rounds_total": 0,
        "tidescale_waker_round_duration_seconds": 0,
        "tidescale_waker_wakes_total": 0,
        "tidescale_waker_acks_total": 0,
        "tidescale_waker_protocol_holds_total": 0,
        "tidescale_waker_measurement_failures_total": 0,
        "tidescale_waker_refused_triggers": 0,
        "tidescale_waker_deployment_errors_total": 0,
        "tidescale_waker_batches_in_flight": 0,
    }
    assert "# TYPE tidescale_waker_wakes_total counter" in metrics.text
    assert "# TYPE tidescale_waker_parked_deployments gauge" in metrics.text


async def test_the_metrics_follow_leadership_tracked_deployments_and_rounds_at_scrape_time(
    client: WakerClient,
) -> None:
    leading = False
    waker = Waker(client, identity="waker-0", leading=lambda: leading)
    server, http = await _serve(waker)
    try:
        # A labelled Deployment without hints: tracked (and woken later), nothing to prepare.
        deployment = {
            "metadata": {
                "namespace": "shop",
                "name": "orders",
                "resourceVersion": "7",
                "labels": {PARK_LABEL: "x"},
            },
            "spec": {"replicas": 0},
        }
        await waker._observe(DeploymentSnapshot.from_object(deployment))
        leading = True
        waker.rounds, waker.last_round_seconds = 3, 0.25
        waker.metrics.inc("tidescale_waker_wakes_total")
        body = (await http.get("/metrics")).text
    finally:
        await http.aclose()
        await server.stop()
    samples = _samples(body)
    assert samples["tidescale_waker_leader"] == 1
    assert samples["tidescale_waker_parked_deployments"] == 1
    assert samples["tidescale_waker_rounds_total"] == 3
    assert samples["tidescale_waker_round_duration_seconds"] == 0.25
    assert samples["tidescale_waker_wakes_total"] == 1


def test_the_port_comes_from_the_flag_the_environment_or_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIDESCALE_WAKER_PORT", raising=False)
    assert _arguments([]).port == DEFAULT_PORT == 9465
    monkeypatch.setenv("TIDESCALE_WAKER_PORT", "9500")
    assert _arguments([]).port == 9500
    assert _arguments(["--port", "9600"]).port == 9600


def test_a_port_that_is_not_a_port_number_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TIDESCALE_WAKER_PORT", "70000")
    with pytest.raises(SystemExit):
        _arguments([])
    assert "not a port number" in capsys.readouterr().err
