"""Prometheus: the settings parser and the arithmetic from recorded query answers (no server).

The recorded answers below are the shapes Prometheus 2.42 (Debian's) gives for
``GET /api/v1/query``; tests/integration/test_sources_prometheus.py checks them on the real server.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidescale.errors import HintsInvalid, SourceError, SourceNotFound
from tidescale.sources.prometheus._result import prometheus_measurement, query_value, sample_number
from tidescale.sources.prometheus._settings import (
    MAX_QUERY_LENGTH,
    PrometheusSettings,
    parse_prometheus_settings,
)

BASIC = {"server-address": "http://prometheus:9090", "query": "sum(up)", "threshold": "10"}
BASE = PrometheusSettings(
    name="prometheus", server_address="http://prometheus:9090", query="sum(up)", threshold=10.0
)
WHERE = "Prometheus at prometheus:9090"


def _problems(raw: dict[str, str]) -> dict[str, str]:
    with pytest.raises(HintsInvalid) as caught:
        parse_prometheus_settings("load", raw)
    return {p.annotation: str(p) for p in caught.value.problems}


def _vector(*values: str) -> dict[str, Any]:
    result = [{"metric": {"job": f"j{i}"}, "value": [1764660000.123, v]} for i, v in enumerate(values)]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def _scalar(value: str) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "scalar", "result": [1764660000.123, value]}}


# -- settings ---------------------------------------------------------------------------------------


def test_defaults_follow_keda() -> None:
    s = parse_prometheus_settings("prometheus", BASIC)
    assert s == BASE
    assert (s.activation_threshold, s.ignore_null_values, s.auth_mode, s.timeout) == (0.0, True, "none", 5.0)


def test_every_field_parses_to_its_type() -> None:
    s = parse_prometheus_settings(
        "load",
        {
            "server-address": "https://thanos.monitoring:10902/prefix",
            "query": " sum(rate(requests_total[1m])) ",
            "threshold": "2.5",
            "activation-threshold": "-1",
            "ignore-null-values": "false",
            "namespace": "shop",
            "query-parameters": "partial_response=true, dedup=false",
            "custom-headers": "X-Scope-OrgID=team-a",
            "bearer-token-file": "/etc/token/token",
            "credentials-secret": "prom-creds",
            "tls-ca-file": "/etc/tls/ca.crt",
            "timeout": "2s",
        },
    )
    assert s.query == "sum(rate(requests_total[1m]))"
    assert (s.threshold, s.activation_threshold, s.ignore_null_values) == (2.5, -1.0, False)
    assert s.query_parameters == (("dedup", "false"), ("partial_response", "true"))
    assert s.custom_headers == (("X-Scope-OrgID", "team-a"),)
    assert (s.auth_mode, s.bearer_token_file, s.credentials_secret) == (
        "bearer",
        "/etc/token/token",
        "prom-creds",
    )
    assert (s.namespace, s.tls_ca_file, s.timeout) == ("shop", "/etc/tls/ca.crt", 2.0)


def test_the_three_required_fields_are_each_named_when_missing() -> None:
    problems = _problems({})
    for name in ("server-address", "query", "threshold"):
        assert "required" in problems[f"tidescale.io/load.{name}"]


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("server-address", "prometheus:9090", "http://"),
        ("server-address", "http://admin:secret@prometheus:9090", "without a password"),
        ("query", " ", "PromQL query"),
        ("query", "x" * (MAX_QUERY_LENGTH + 1), "PromQL query"),
        ("threshold", "0", "above 0"),
        ("threshold", "NaN", "a number"),
        ("activation-threshold", "inf", "a number"),
        ("ignore-null-values", "maybe", '"true" or "false"'),
        ("namespace", "Not_A_Namespace", "namespace name"),
        ("query-parameters", "novalue", "name=value pairs"),
        ("query-parameters", "query=up", "not query nor namespace"),
        ("custom-headers", "bad header=1", "name=value pairs"),
        ("custom-headers", "X-A=1,x-a=2", "each header name once"),
        ("auth-mode", "oauth", '"none", "bearer", "basic"'),
        ("timeout", "10m", "duration"),
    ],
)
def test_a_bad_value_is_named_with_what_was_expected(field: str, value: str, expected: str) -> None:
    problems = _problems({**BASIC, field: value})
    assert expected in problems[f"tidescale.io/load.{field}"]


@pytest.mark.parametrize("header", ["Authorization", "cookie", "Proxy-Authorization", "Host"])
def test_a_credential_header_is_refused_without_echoing_its_value(header: str) -> None:
    problems = _problems({**BASIC, "custom-headers": f"X-Org=a,{header}=Bearer s3cr3t-t0ken"})
    message = problems["tidescale.io/load.custom-headers"]
    assert "bearer-token-env" in message
    assert "s3cr3t" not in message
    assert header in message


def test_a_malformed_header_list_never_echoes_its_value() -> None:
    problems = _problems({**BASIC, "custom-headers": "Authorization: Bearer s3cr3t"})
    assert "s3cr3t" not in problems["tidescale.io/load.custom-headers"]


def test_the_auth_mode_is_inferred_from_the_credential_fields() -> None:
    bearer = parse_prometheus_settings("p", {**BASIC, "bearer-token-env": "TOKEN"})
    basic = parse_prometheus_settings("p", {**BASIC, "username-env": "U", "password-file": "/p/password"})
    assert (bearer.auth_mode, basic.auth_mode) == ("bearer", "basic")


def test_bearer_without_an_agent_token_source_is_refused_even_with_a_secret() -> None:
    problems = _problems({**BASIC, "auth-mode": "bearer", "credentials-secret": "creds"})
    assert "credentials-secret serves the waker only" in problems["tidescale.io/load.bearer-token-env"]


def test_basic_needs_a_username_and_exactly_one_password_source() -> None:
    problems = _problems({**BASIC, "auth-mode": "basic", "password-env": "P", "password-file": "/p"})
    assert "username-env" in problems["tidescale.io/load.username-env"]
    assert "exactly one" in problems["tidescale.io/load.password-file"]


def test_fields_of_the_other_auth_mode_are_refused() -> None:
    problems = _problems({**BASIC, "auth-mode": "basic", "username-env": "U", "password-env": "P",
                          "bearer-token-env": "T"})  # fmt: skip
    assert "auth-mode bearer" in problems["tidescale.io/load.bearer-token-env"]


def test_a_secret_without_a_login_is_refused() -> None:
    problems = _problems({**BASIC, "credentials-secret": "creds"})
    assert "auth-mode bearer or basic" in problems["tidescale.io/load.credentials-secret"]


def test_a_ca_file_needs_an_https_server() -> None:
    problems = _problems({**BASIC, "tls-ca-file": "/ca.crt"})
    assert "https://" in problems["tidescale.io/load.tls-ca-file"]


def test_an_unknown_field_is_named_with_a_suggestion() -> None:
    problems = _problems({**BASIC, "activationThreshold": "1"})
    assert "did you mean" in problems["tidescale.io/load.activationThreshold"]
    assert "prometheus trigger" in problems["tidescale.io/load.activationThreshold"]


def test_triggers_on_one_server_and_identity_share_a_connection_but_not_a_question() -> None:
    a = parse_prometheus_settings("a", BASIC)
    b = parse_prometheus_settings("b", {**BASIC, "server-address": "http://prometheus:9090/", "query": "up"})
    c = parse_prometheus_settings("c", {**BASIC, "bearer-token-env": "T"})
    assert a.cluster_key == b.cluster_key != c.cluster_key
    assert a.request_key != b.request_key
    assert a.request_key == replace(a, threshold=3.0, ignore_null_values=False).request_key


# -- the answer -------------------------------------------------------------------------------------


def test_a_vector_of_one_series_gives_its_value() -> None:
    assert query_value(_vector("42.5"), BASE, where=WHERE).value == 42.5


def test_a_scalar_gives_its_value() -> None:
    assert query_value(_scalar("7"), BASE, where=WHERE).value == 7.0


def test_an_empty_vector_reads_zero_with_ignore_null_values() -> None:
    found = query_value(_vector(), BASE, where=WHERE)
    assert (found.value, found.null) == (0.0, "empty")
    assert prometheus_measurement(found, BASE, 1.0).detail == {"null-read-as-0": 1.0}


def test_a_series_without_a_sample_reads_as_empty_as_keda_reads_it() -> None:
    answer = {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": []}]}}
    assert query_value(answer, BASE, where=WHERE).null == "empty"
    with pytest.raises(SourceNotFound, match="the result is empty"):
        query_value(answer, replace(BASE, ignore_null_values=False), where=WHERE)


def test_an_empty_vector_is_a_missing_source_without_ignore_null_values() -> None:
    with pytest.raises(SourceNotFound, match="the result is empty"):
        query_value(_vector(), replace(BASE, ignore_null_values=False), where=WHERE)


def test_several_series_are_refused_naming_the_count() -> None:
    with pytest.raises(SourceError, match="returned 3 series; expected one"):
        query_value(_vector("1", "2", "3"), BASE, where=WHERE)


@pytest.mark.parametrize(("text", "shown"), [("NaN", "NaN"), ("+Inf", "+Inf"), ("-Inf", "-Inf")])
def test_nan_and_infinities_read_zero_with_ignore_null_values_and_fail_without(text: str, shown: str) -> None:
    assert query_value(_vector(text), BASE, where=WHERE).null == shown
    assert query_value(_scalar(text), BASE, where=WHERE).value == 0.0
    with pytest.raises(SourceError, match=f"the value is {re.escape(shown)}"):
        query_value(_vector(text), replace(BASE, ignore_null_values=False), where=WHERE)


def test_a_range_vector_is_refused_with_what_to_do() -> None:
    matrix = {"status": "success", "data": {"resultType": "matrix", "result": [{"values": [[1, "1"]]}]}}
    with pytest.raises(SourceError, match=r"range vector \(matrix\).*apply a function"):
        query_value(matrix, BASE, where=WHERE)


def test_a_failed_query_carries_the_servers_reason() -> None:
    answer = {"status": "error", "errorType": "bad_data", "error": 'parse error: unexpected "}"'}
    with pytest.raises(SourceError, match=r"query failed \(bad_data: parse error"):
        query_value(answer, BASE, where=WHERE)


@pytest.mark.parametrize(
    "answer",
    [
        [],
        {"status": "success"},
        {"status": "success", "data": {"resultType": "vector", "result": {}}},
        {"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, 2]}]}},
        {"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, None]}]}},
        {"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, "x" * 100]}]}},
        {"status": "success", "data": {"resultType": "scalar", "result": [1, "twelve"]}},
        {"status": "success", "data": {"resultType": "string", "result": [1, "hello"]}},
    ],
)
def test_anything_else_is_a_source_error_never_another_exception(answer: Any) -> None:
    with pytest.raises(SourceError):
        query_value(answer, BASE, where=WHERE)


def test_activity_is_strictly_above_the_activation_threshold_and_the_target_is_the_threshold() -> None:
    settings = replace(BASE, activation_threshold=5.0)
    at = prometheus_measurement(query_value(_vector("5"), settings, where=WHERE), settings, 3.0)
    above = prometheus_measurement(query_value(_vector("5.01"), settings, where=WHERE), settings, 3.0)
    assert (at.active, above.active) == (False, True)
    assert (above.value, above.target, above.taken_at, above.trigger) == (5.01, 10.0, 3.0, "prometheus")


# -- properties -------------------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@given(value=finite, activation=st.floats(-1e15, 1e15), ignore=st.booleans())
def test_a_finite_value_passes_through_unchanged_whatever_the_settings(
    value: float, activation: float, ignore: bool
) -> None:
    settings = replace(BASE, activation_threshold=activation, ignore_null_values=ignore)
    measured = prometheus_measurement(query_value(_vector(repr(value)), settings, where=WHERE), settings, 0.0)
    assert measured.value == value
    assert measured.active == (value > activation)
    assert measured.detail == {}


@given(value=st.one_of(finite, st.sampled_from([math.nan, math.inf, -math.inf])), scalar=st.booleans())
def test_the_value_read_is_always_finite_with_ignore_null_values(value: float, scalar: bool) -> None:
    text = {math.inf: "+Inf", -math.inf: "-Inf"}.get(value, "NaN" if math.isnan(value) else repr(value))
    answer = _scalar(text) if scalar else _vector(text)
    found = query_value(answer, BASE, where=WHERE)
    assert math.isfinite(found.value)
    assert (found.null is None) == math.isfinite(value)


@given(count=st.integers(2, 50))
def test_more_than_one_series_is_always_refused(count: int) -> None:
    with pytest.raises(SourceError, match=f"returned {count} series"):
        query_value(_vector(*["1"] * count), BASE, where=WHERE)


@given(st.text(max_size=80))
def test_any_sample_text_gives_a_float_or_a_source_error(text: str) -> None:
    try:
        number = sample_number([0, text], "here")
    except SourceError:
        return
    assert isinstance(number, float)


# -- the waker's guard ------------------------------------------------------------------------------


def test_the_waker_refuses_agent_credentials_without_a_secret_and_tls_files_always() -> None:
    from tidescale._waker_guard import broker_endpoints, for_waker, refusal

    env_only = parse_prometheus_settings("p", {**BASIC, "bearer-token-env": "T"})
    with_secret = parse_prometheus_settings(
        "p", {**BASIC, "bearer-token-file": "/t", "credentials-secret": "s"}
    )
    with_ca = parse_prometheus_settings(
        "p", {**BASIC, "server-address": "https://prom:9091", "tls-ca-file": "/ca.crt"}
    )
    refused = refusal(env_only)
    assert refused is not None
    assert refused[0] == "tidescale.io/p.bearer-token-env"
    assert refusal(with_secret) is None
    cleared = for_waker(with_secret)
    assert isinstance(cleared, PrometheusSettings)
    assert (cleared.bearer_token_file, cleared.credentials_secret) == (None, "s")
    assert refusal(with_ca) is not None
    assert broker_endpoints(with_ca) == [("tidescale.io/p.server-address", "prom", 9091)]
    assert broker_endpoints(BASE) == [("tidescale.io/prometheus.server-address", "prometheus", 9090)]


def test_an_error_quotes_at_most_120_characters_of_a_long_query() -> None:
    long_query = "sum(" + "x" * 500 + ")"
    with pytest.raises(SourceError) as caught:
        query_value(_vector("1", "2"), replace(BASE, query=long_query), where=WHERE)
    assert "x" * 100 in str(caught.value)
    assert "x" * 130 not in str(caught.value)


def test_a_servers_error_text_is_quoted_without_control_characters() -> None:
    answer = {
        "status": "error",
        "errorType": "bad_data",
        "error": 'line one\n{"level":"error","msg":"forged"}\x1b[2J',
    }
    with pytest.raises(SourceError) as caught:
        query_value(answer, BASE, where=WHERE)
    assert "\n" not in str(caught.value)
    assert "\x1b" not in str(caught.value)
    assert "line one" in str(caught.value)
