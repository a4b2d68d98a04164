"""Our Prometheus values against the server's own answers (HTTP API and promtool), on the rig's
real Prometheus (Debian's 2.42, behind basic auth, scraping a gauge exporter the tests set)."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.rig.network import Network
from tests.rig.processes import Supervisor, free_port
from tests.rig.prometheus import Prometheus
from tidescale._waker_guard import for_waker
from tidescale.credentials import Credentials, CredentialsUnusable
from tidescale.errors import BrokerAuthFailed, BrokerUnreachable, SourceError, SourceNotFound
from tidescale.sources.base import Measurement, MeasurementFailure, Scope
from tidescale.sources.prometheus._settings import PrometheusSettings, parse_prometheus_settings
from tidescale.sources.prometheus._source import PrometheusSource
from tidescale.sources.registry import open_source

pytestmark = pytest.mark.rig

USERNAME_ENV = "TIDESCALE_TEST_PROMETHEUS_USERNAME"
PASSWORD_ENV = "TIDESCALE_TEST_PROMETHEUS_PASSWORD"


def _gauge() -> str:
    return f"tidescale_test_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def login(prometheus: Prometheus, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv(USERNAME_ENV, prometheus.username)
    monkeypatch.setenv(PASSWORD_ENV, prometheus.password)
    return {"username-env": USERNAME_ENV, "password-env": PASSWORD_ENV}


def _settings(prometheus: Prometheus, login: dict[str, str], **fields: str) -> PrometheusSettings:
    raw = {"server-address": prometheus.url, "threshold": "10", **login, **fields}
    return parse_prometheus_settings("prometheus", raw)


@asynccontextmanager
async def _source(settings: PrometheusSettings, credentials: Credentials | None = None) -> AsyncIterator[Any]:
    source = open_source(settings, credentials=credentials)
    assert isinstance(source, PrometheusSource)
    try:
        yield source
    finally:
        await source.close()


async def _measure(settings: PrometheusSettings, credentials: Credentials | None = None) -> Measurement:
    async with _source(settings, credentials) as source:
        measured: Measurement = await source.measure(settings, Scope.GROUP)
        return measured


def _api_value(prometheus: Prometheus, query: str) -> float:
    data = prometheus.api_query(query)["data"]
    sample = data["result"] if data["resultType"] == "scalar" else data["result"][0]["value"]
    return float(sample[1])


# -- the value equals the server's own answer ------------------------------------------------------


async def test_a_one_series_query_reads_what_the_http_api_and_promtool_answer(
    prometheus: Prometheus, login: dict[str, str]
) -> None:
    gauge = _gauge()
    prometheus.exporter.set(gauge, 42.5)
    query = f"sum({gauge})"
    prometheus.wait_value(query, 42.5)
    # namespace, parameters and a header travel with the request; Prometheus ignores them.
    settings = _settings(
        prometheus,
        login,
        query=query,
        **{"activation-threshold": "40", "namespace": "shop", "query-parameters": "dedup=false",
           "custom-headers": "X-Scope-OrgID=team-a"},
    )  # fmt: skip
    measured = await _measure(settings)
    promtool = prometheus.promtool_query(query)
    assert measured.value == _api_value(prometheus, query) == float(promtool[0]["value"][1]) == 42.5
    assert (measured.target, measured.active, measured.detail) == (10.0, True, {})


async def test_a_scalar_query_reads_what_the_http_api_answers(
    prometheus: Prometheus, login: dict[str, str]
) -> None:
    gauge = _gauge()
    prometheus.exporter.set(gauge, 7.0)
    prometheus.wait_value(f"sum({gauge})", 7.0)
    query = f"scalar(sum({gauge})) * 3"
    assert prometheus.api_query(query)["data"]["resultType"] == "scalar"
    measured = await _measure(_settings(prometheus, login, query=query))
    assert measured.value == _api_value(prometheus, query) == 21.0


async def test_several_triggers_in_one_batch_read_the_api_with_one_request_per_distinct_query(
    prometheus: Prometheus, login: dict[str, str]
) -> None:
    gauges = [_gauge() for _ in range(6)]
    for number, gauge in enumerate(gauges):
        prometheus.exporter.set(gauge, float(number * 10))
    for number, gauge in enumerate(gauges):
        prometheus.wait_value(f"sum({gauge})", float(number * 10))
    settings = [_settings(prometheus, login, query=f"sum({g})") for g in gauges]
    # The same question with another threshold shares the first one's request.
    twin = _settings(
        prometheus, login, query=f"sum({gauges[1]})", threshold="3", **{"activation-threshold": "20"}
    )
    async with _source(settings[0]) as source:
        results = await source.measure_many([*settings, twin, settings[0]])
        assert source.requests == len(gauges)
    for s in settings:
        result = results[s]
        assert isinstance(result, Measurement)
        assert result.value == _api_value(prometheus, s.query)
    assert isinstance(results[twin], Measurement)
    assert (results[twin].value, results[twin].target, results[twin].active) == (10.0, 3.0, False)


async def test_the_waker_logs_in_with_the_secrets_username_and_password(
    prometheus: Prometheus, login: dict[str, str]
) -> None:
    gauge = _gauge()
    prometheus.exporter.set(gauge, 3.0)
    prometheus.wait_value(f"sum({gauge})", 3.0)
    # The waker clears every *-env field and hands the Secret's keys to the source.
    hinted = _settings(prometheus, login, query=f"sum({gauge})", **{"credentials-secret": "prom"})
    settings = for_waker(hinted)
    assert isinstance(settings, PrometheusSettings)
    assert (settings.username_env, settings.password_env) == (None, None)
    secret = Credentials.of(
        "team-a", "prom", {"username": prometheus.username, "password": prometheus.password}
    )
    assert (await _measure(settings, secret)).value == 3.0
    without_password = Credentials.of("team-a", "prom", {"username": prometheus.username})
    with pytest.raises(CredentialsUnusable, match="team-a/prom has no key 'password'"):
        await _measure(settings, without_password)


# -- nulls, several series and bad queries, as the server answers them ---------------------------


async def test_a_query_with_no_series_reads_zero_or_fails_as_ignore_null_values_says(
    prometheus: Prometheus, login: dict[str, str]
) -> None:
    query = f"sum({_gauge()})"  # never exported: no series
    assert prometheus.api_query(query)["data"]["result"] == []
    measured = await _measure(_settings(prometheus, login, query=query))
    assert (measured.value, measured.active, measured.detail) == (0.0, False, {"null-read-as-0": 1.0})
    with pytest.raises(SourceNotFound, match="the result is empty"):
        await _measure(_settings(prometheus, login, query=query, **{"ignore-null-values": "false"}))


async def test_a_series_that_went_stale_reads_as_an_empty_result(
    prometheus: Prometheus, login: dict[str, str]
) -> None:
    gauge = _gauge()
    prometheus.exporter.set(gauge, 9.0)
    prometheus.wait_value(gauge, 9.0)
    prometheus.exporter.remove(gauge)
    prometheus.wait_empty(gauge)
    with pytest.raises(SourceNotFound, match="the result is empty"):
        await _measure(_settings(prometheus, login, query=gauge, **{"ignore-null-values": "false"}))


async def test_a_nan_sample_reads_zero_or_fails_as_ignore_null_values_says(
    prometheus: Prometheus, login: dict[str, str]
) -> None:
    gauge = _gauge()
    prometheus.exporter.set(gauge, math.nan)
    prometheus.wait_value(f"count({gauge})", 1.0)
    assert prometheus.api_query(gauge)["data"]["result"][0]["value"][1] == "NaN"
    measured = await _measure(_settings(prometheus, login, query=gauge))
    assert (measured.value, measured.detail) == (0.0, {"null-read-as-0": 1.0})
    with pytest.raises(SourceError, match="the value is NaN"):
        await _measure(_settings(prometheus, login, query=gauge, **{"ignore-null-values": "false"}))


async def test_several_series_are_refused_naming_the_count_the_api_gives(
    prometheus: Prometheus, login: dict[str, str]
) -> None:
    gauge = _gauge()
    for series in ("a", "b", "c"):
        prometheus.exporter.set(gauge, 1.0, series=series)
    prometheus.wait_value(f"count({gauge})", 3.0)
    assert len(prometheus.api_query(gauge)["data"]["result"]) == 3
    with pytest.raises(SourceError, match="returned 3 series; expected one"):
        await _measure(_settings(prometheus, login, query=gauge))


async def test_a_bad_query_and_a_range_vector_fail_with_what_to_fix(
    prometheus: Prometheus, login: dict[str, str]
) -> None:
    with pytest.raises(SourceError, match=r"the query failed \(bad_data: .*\): check query"):
        await _measure(_settings(prometheus, login, query="sum(up"))
    gauge = _gauge()
    prometheus.exporter.set(gauge, 1.0)
    prometheus.wait_value(gauge, 1.0)
    assert prometheus.api_query(f"{gauge}[5s]")["data"]["resultType"] == "matrix"
    with pytest.raises(SourceError, match="range vector"):
        await _measure(_settings(prometheus, login, query=f"{gauge}[5s]"))


# -- the server refuses, or is not there --------------------------------------------------------------


async def test_a_wrong_password_or_none_is_refused_by_name(
    prometheus: Prometheus, login: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(BrokerAuthFailed, match=r"refused the request \(HTTP 401, auth-mode none\)"):
        await _measure(_settings(prometheus, {}, query="vector(1)"))
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    with pytest.raises(BrokerAuthFailed, match=r"HTTP 401, auth-mode basic"):
        await _measure(_settings(prometheus, login, query="vector(1)"))


async def test_a_server_that_is_down_is_unreachable_and_a_wrong_path_is_not_found(
    prometheus: Prometheus, login: dict[str, str]
) -> None:
    down = f"http://{prometheus.host}:{free_port(prometheus.host)}"
    with pytest.raises(BrokerUnreachable, match=r"cannot reach Prometheus at .*check server-address"):
        await _measure(_settings(prometheus, login, query="vector(1)", **{"server-address": down}))
    with pytest.raises(SourceNotFound, match="HTTP 404"):
        await _measure(
            _settings(prometheus, login, query="vector(1)", **{"server-address": f"{prometheus.url}/nope"})
        )


async def test_a_failure_in_a_batch_fails_only_the_triggers_of_its_query(
    prometheus: Prometheus, login: dict[str, str]
) -> None:
    good = _settings(prometheus, login, query="vector(4)")
    bad = _settings(prometheus, login, query="sum(")
    async with _source(good) as source:
        results = await source.measure_many([good, bad])
    assert isinstance(results[good], Measurement)
    assert results[good].value == 4.0
    assert isinstance(results[bad], MeasurementFailure)
    assert "bad_data" in results[bad].error


# -- TLS -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus_tls(
    rig_supervisor: Supervisor, rig_network: Network, rig_run_dir: Path
) -> Iterator[Prometheus]:
    """A second Prometheus serving https with a certificate of its own CA (only this module's)."""
    server = Prometheus.start(rig_supervisor, rig_network, rig_run_dir, tls=True, name="prometheus-tls")
    yield server
    server.stop()


async def test_https_is_read_with_the_ca_of_tls_ca_file_and_refused_by_name_without_it(
    prometheus_tls: Prometheus, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert prometheus_tls.tls_ca is not None
    monkeypatch.setenv(USERNAME_ENV, prometheus_tls.username)
    monkeypatch.setenv(PASSWORD_ENV, prometheus_tls.password)
    login = {"username-env": USERNAME_ENV, "password-env": PASSWORD_ENV}
    gauge = _gauge()
    prometheus_tls.exporter.set(gauge, 5.5)
    prometheus_tls.wait_value(gauge, 5.5)
    ca = str(prometheus_tls.tls_ca.cert_file)
    measured = await _measure(_settings(prometheus_tls, login, query=gauge, **{"tls-ca-file": ca}))
    assert measured.value == _api_value(prometheus_tls, gauge) == 5.5
    with pytest.raises(
        BrokerAuthFailed, match=r"TLS certificate of Prometheus at .* is not trusted.*tls-ca-file"
    ):
        await _measure(_settings(prometheus_tls, login, query=gauge))
    # The waker: the Secret's ca.crt (PEM text) in place of the file, which it never reads.
    hinted = _settings(
        prometheus_tls, login, query=gauge, **{"tls-ca-file": ca, "credentials-secret": "prom"}
    )
    settings = for_waker(hinted)
    assert isinstance(settings, PrometheusSettings)
    assert settings.tls_ca_file is None
    pem = prometheus_tls.tls_ca.cert_pem.decode()
    login_and_ca = {"username": prometheus_tls.username, "password": prometheus_tls.password, "ca.crt": pem}
    assert (await _measure(settings, Credentials.of("team-a", "prom", login_and_ca))).value == 5.5
