"""The Prometheus source's HTTP behaviour that the rig's Prometheus cannot show: a bearer token
(Prometheus's own web server has basic auth only; bearer tokens are checked by the proxies in front
of it: kube-rbac-proxy, Thanos, Mimir), the response-size cap, and redirects not followed.

A loopback HTTP server plays the proxy: it answers a recorded Prometheus 2.42 answer to requests
carrying the expected token and 401 otherwise, and records every request it gets."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tidescale.credentials import Credentials
from tidescale.errors import BrokerAuthFailed, SourceError
from tidescale.sources.base import Scope
from tidescale.sources.prometheus._settings import parse_prometheus_settings
from tidescale.sources.prometheus._source import MAX_RESPONSE_BYTES, PrometheusSource

TOKEN = "t0ken-of-the-test"
ANSWER = {
    "status": "success",
    "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1764660000.123, "17"]}]},
}


@dataclass
class Proxy:
    url: str
    seen: list[dict[str, Any]] = field(default_factory=list)
    mode: str = "answer"


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    state = Proxy(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            state.seen.append(
                {"path": parts.path, "query": parse_qs(parts.query), "headers": dict(self.headers)}
            )
            if state.mode == "redirect":
                self.send_response(302)
                self.send_header("location", "http://169.254.169.254/latest/meta-data/")
                self.send_header("content-length", "0")
                self.end_headers()
                return
            if self.headers.get("authorization") != f"Bearer {TOKEN}":
                body = b'{"status":"error","error":"unauthorized"}'
                self.send_response(401)
            elif state.mode == "huge":
                body = (
                    b'{"status":"success","data":{"resultType":"vector","result":['
                    + b" " * MAX_RESPONSE_BYTES
                    + b"]}}"
                )
                self.send_response(200)
            else:
                body = json.dumps(ANSWER).encode()
                self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/prefix"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


async def _value(raw: dict[str, str], credentials: Credentials | None = None) -> float:
    settings = parse_prometheus_settings("p", raw)
    source = PrometheusSource(settings, credentials=credentials)
    try:
        return (await source.measure(settings, Scope.GROUP)).value
    finally:
        await source.close()


def _raw(proxy: Proxy, **fields: str) -> dict[str, str]:
    return {"server-address": proxy.url, "query": "sum(up)", "threshold": "5", **fields}


async def test_the_token_is_sent_as_a_bearer_header_from_env_file_or_the_wakers_secret(
    proxy: Proxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROM_TOKEN", TOKEN)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    assert await _value(_raw(proxy, **{"bearer-token-env": "PROM_TOKEN"})) == 17.0
    assert await _value(_raw(proxy, **{"bearer-token-file": str(token_file)})) == 17.0
    secret = Credentials.of("team-a", "prom", {"token": TOKEN})
    assert (
        await _value(_raw(proxy, **{"auth-mode": "bearer", "bearer-token-env": "UNSET_HERE"}), secret) == 17.0
    )
    # Below the server-address path, with the query and the extra parameters.
    assert {s["path"] for s in proxy.seen} == {"/prefix/api/v1/query"}
    assert proxy.seen[0]["query"] == {"query": ["sum(up)"]}


async def test_a_wrong_token_is_refused_by_name_and_the_token_never_shows(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROM_TOKEN", "not-" + TOKEN)
    with pytest.raises(BrokerAuthFailed, match="HTTP 401, auth-mode bearer") as caught:
        await _value(_raw(proxy, **{"bearer-token-env": "PROM_TOKEN"}))
    assert TOKEN not in str(caught.value)
    with pytest.raises(BrokerAuthFailed, match="PROM_MISSING"):
        await _value(_raw(proxy, **{"bearer-token-env": "PROM_MISSING"}))


async def test_custom_headers_namespace_and_parameters_travel_with_the_request(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROM_TOKEN", TOKEN)
    raw = _raw(
        proxy,
        **{"bearer-token-env": "PROM_TOKEN", "custom-headers": "X-Scope-OrgID=team-a", "namespace": "shop",
           "query-parameters": "dedup=false"},
    )  # fmt: skip
    assert await _value(raw) == 17.0
    (seen,) = proxy.seen
    assert seen["headers"]["X-Scope-OrgID"] == "team-a"
    assert seen["query"] == {"query": ["sum(up)"], "namespace": ["shop"], "dedup": ["false"]}


async def test_an_answer_past_the_cap_is_refused(proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROM_TOKEN", TOKEN)
    proxy.mode = "huge"
    with pytest.raises(SourceError, match="more than 1 MiB: refused"):
        await _value(_raw(proxy, **{"bearer-token-env": "PROM_TOKEN"}))


async def test_a_redirect_is_not_followed(proxy: Proxy) -> None:
    proxy.mode = "redirect"
    with pytest.raises(SourceError, match="HTTP 302"):
        await _value(_raw(proxy))
    assert len(proxy.seen) == 1


async def test_a_batch_against_a_server_that_is_down_fails_every_trigger_without_raising() -> None:
    import socket

    from tidescale.sources.base import MeasurementFailure

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings = [
        parse_prometheus_settings(
            "p", {"server-address": f"http://127.0.0.1:{port}", "query": q, "threshold": "1"}
        )
        for q in ("a", "b", "a")
    ]
    source = PrometheusSource(settings[0])
    try:
        results = await source.measure_many(settings)
    finally:
        await source.close()
    assert set(results) == set(settings)
    assert all(
        isinstance(r, MeasurementFailure) and "cannot reach Prometheus" in r.error for r in results.values()
    )
    assert source.requests == 2
