"""The Prometheus trigger's settings: parsed from hint strings into a frozen, typed object.

KEDA's prometheus scaler (pkg/scalers/prometheus_scaler.go) is the reference for the fields and
their meaning; docs/keda-mapping.md lists each of its fields and what became of it here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Literal

from tidescale._values import parse_bool, parse_choice, parse_duration, parse_float
from tidescale.errors import HintError
from tidescale.sources._fields import (
    FieldCollector,
    FieldDoc,
    parse_env_name,
    parse_file_path,
    parse_secret_name,
    parse_url,
)

__all__ = [
    "MAX_PAIRS",
    "MAX_QUERY_LENGTH",
    "PROMETHEUS_FIELDS",
    "AuthMode",
    "PrometheusSettings",
    "parse_prometheus_settings",
]

AuthMode = Literal["none", "bearer", "basic"]

MAX_QUERY_LENGTH = 8192
"""Longest PromQL query, in characters (the query travels in a URL)."""
MAX_PAIRS = 32
"""Most items in custom-headers and in query-parameters."""
_MAX_PAIR_VALUE = 1024

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
_PARAMETER_NAME = re.compile(r"[A-Za-z0-9_.:\-\[\]]{1,128}")
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_REFUSED_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
    }
)
"""Headers a hint may not set: credentials (an annotation is readable by anyone who can read the
Deployment, and shows in Events) and the ones the HTTP client owns."""
_REFUSED_PARAMETERS = frozenset({"query", "namespace"})
"""Query parameters tidescale sets itself (query) or from its own field (namespace)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PrometheusSettings:
    """One Prometheus trigger. Hashable: it keys the waker's batches and the pool's connections."""

    name: str
    server_address: str
    query: str
    threshold: float
    activation_threshold: float = 0.0
    ignore_null_values: bool = True
    namespace: str | None = None
    query_parameters: tuple[tuple[str, str], ...] = ()
    custom_headers: tuple[tuple[str, str], ...] = ()
    auth_mode: AuthMode = "none"
    bearer_token_env: str | None = None
    bearer_token_file: str | None = None
    username_env: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    credentials_secret: str | None = None
    tls_ca_file: str | None = None
    timeout: float = 5.0

    @property
    def cluster_key(self) -> tuple[object, ...]:
        """Triggers with equal keys share one HTTP client: one server, one identity, one trust."""
        return (
            "prometheus",
            self.server_address.rstrip("/"),
            self.auth_mode,
            self.bearer_token_env,
            self.bearer_token_file,
            self.username_env,
            self.password_env,
            self.password_file,
            self.tls_ca_file,
        )

    @property
    def shown_query(self) -> str:
        """The query as errors quote it: at most 120 characters (an Event is no place for 8 KiB)."""
        return repr(self.query if len(self.query) <= 120 else self.query[:117] + "...")

    @property
    def request_key(self) -> tuple[object, ...]:
        """Triggers with equal keys ask the same server the same question: one request answers both."""
        return (self.query, self.namespace, self.query_parameters, self.custom_headers)


def _parse_query(annotation: str, value: str) -> str:
    if not value.strip() or len(value) > MAX_QUERY_LENGTH or "\x00" in value:
        raise HintError(
            annotation,
            value[:64] + ("..." if len(value) > 64 else ""),
            f"a PromQL query of 1 to {MAX_QUERY_LENGTH} characters giving one number "
            '(a scalar or a one-series vector, e.g. sum(rate(http_requests_total{job="web"}[1m])))',
        )
    return value.strip()


def _parse_threshold(annotation: str, value: str) -> float:
    return parse_float(annotation, value, minimum=0.0, exclusive_minimum=True)


def _parse_activation(annotation: str, value: str) -> float:
    # Prometheus values may be negative: so may the activation threshold, as in KEDA.
    return parse_float(annotation, value, minimum=-1e15)


def _parse_timeout(annotation: str, value: str) -> float:
    return parse_duration(annotation, value, minimum=0.1, maximum=120.0)


def _parse_namespace(annotation: str, value: str) -> str:
    text = value.strip()
    if not _NAMESPACE.fullmatch(text):
        raise HintError(annotation, value, "a Kubernetes namespace name (DNS label), e.g. shop")
    return text


def _parse_auth_mode(annotation: str, value: str) -> AuthMode:
    choice = parse_choice(annotation, value, ("none", "bearer", "basic"))
    return "bearer" if choice == "bearer" else "basic" if choice == "basic" else "none"


def _pairs(value: str) -> list[tuple[str, str]] | None:
    """``k1=v1,k2=v2`` (KEDA's map form) as pairs, or None when an item has no ``=``."""
    pairs: list[tuple[str, str]] = []
    for item in value.split(","):
        if not item.strip():
            continue
        key, sep, val = item.partition("=")
        if not sep:
            return None
        pairs.append((key.strip(), val.strip()))
    return pairs


def _parse_headers(annotation: str, value: str) -> tuple[tuple[str, str], ...]:
    expected = (
        f"comma-separated name=value pairs (at most {MAX_PAIRS}; HTTP header names; values of printable "
        f"text up to {_MAX_PAIR_VALUE} characters, no commas), e.g. X-Scope-OrgID=team-a"
    )
    pairs = _pairs(value)
    # The value is never echoed back: it may hold what someone wrongly thought was a fine place
    # for a token. The names are enough to fix it.
    names = ", ".join(k for k, _ in pairs or [])[:200] or "(none)"
    shown = f"headers named {names}"
    if pairs is None or not pairs or len(pairs) > MAX_PAIRS:
        raise HintError(annotation, "(value not shown)", expected)
    for key, val in pairs:
        if not _HEADER_NAME.fullmatch(key) or len(val) > _MAX_PAIR_VALUE or not val.isprintable():
            raise HintError(annotation, shown, expected)
        if key.lower() in _REFUSED_HEADERS:
            raise HintError(
                annotation,
                shown,
                f"headers other than {key}: credentials go in bearer-token-env, bearer-token-file, "
                "username-env/password-env/password-file or credentials-secret (an annotation is readable "
                "by anyone who can read the Deployment); Host and the framing headers are the client's",
            )
    if len({k.lower() for k, _ in pairs}) != len(pairs):
        raise HintError(annotation, shown, "each header name once")
    return tuple(sorted(pairs))


def _parse_parameters(annotation: str, value: str) -> tuple[tuple[str, str], ...]:
    expected = (
        f"comma-separated name=value pairs (at most {MAX_PAIRS}, values up to {_MAX_PAIR_VALUE} characters, "
        "no commas), e.g. dedup=false,partial_response=true; not query nor namespace (their own fields)"
    )
    pairs = _pairs(value)
    if pairs is None or not pairs or len(pairs) > MAX_PAIRS:
        raise HintError(annotation, value[:200], expected)
    for key, val in pairs:
        if not _PARAMETER_NAME.fullmatch(key) or key in _REFUSED_PARAMETERS:
            raise HintError(annotation, value[:200], expected)
        if len(val) > _MAX_PAIR_VALUE or not val.isprintable():
            raise HintError(annotation, value[:200], expected)
    return tuple(sorted(pairs))


PROMETHEUS_FIELDS: tuple[FieldDoc, ...] = (
    FieldDoc(
        field="server-address",
        type="http(s) URL",
        default=None,
        meaning="Base URL of the Prometheus HTTP API (or of Thanos, Mimir, Cortex...): the query is sent to "
        "<server-address>/api/v1/query. Required. No password in the URL.",
        example="http://prometheus.monitoring:9090",
    ),
    FieldDoc(
        field="query",
        type="PromQL",
        default=None,
        meaning="An instant query giving one number: a scalar or a vector of one series (aggregate with "
        "sum(), max()...: several series are an error, as in KEDA). Required.",
        example="sum(rate(http_requests_total{job='web'}[2m]))",
    ),
    FieldDoc(
        field="threshold",
        type="number > 0",
        default=None,
        meaning="What one replica is expected to handle: desired replicas = ceil(value / threshold). "
        "Required.",
        example="100",
    ),
    FieldDoc(
        field="activation-threshold",
        type="number",
        default="0",
        meaning="The trigger is active (wakes the workload from zero) when the value is above this.",
        example="5",
    ),
    FieldDoc(
        field="ignore-null-values",
        type="bool",
        default="true",
        meaning="An empty result (no series) or a NaN/Inf value reads as 0, as in KEDA; false makes it a "
        "failed measurement (the fallback rule applies).",
        example="false",
    ),
    FieldDoc(
        field="namespace",
        type="namespace name",
        default=None,
        meaning="Sent as the namespace query parameter, for a tenancy proxy in front of the server "
        "(Thanos Querier behind kube-rbac-proxy / prom-label-proxy).",
        example="shop",
    ),
    FieldDoc(
        field="query-parameters",
        type="name=value pairs",
        default=None,
        meaning="Extra query parameters of the request, comma-separated (e.g. for Thanos or Mimir).",
        example="dedup=false,partial_response=true",
    ),
    FieldDoc(
        field="custom-headers",
        type="name=value pairs",
        default=None,
        meaning="Extra request headers, comma-separated (e.g. a tenant header). Not for credentials: "
        "Authorization and Cookie are refused; use the auth fields.",
        example="X-Scope-OrgID=team-a",
    ),
    FieldDoc(
        field="auth-mode",
        type="none | bearer | basic",
        default="from the fields given",
        meaning="How the agent logs in: bearer (bearer-token-env or -file) or basic (username-env and "
        "password-env or -file). Inferred from those fields when absent.",
        example="bearer",
    ),
    FieldDoc(
        field="bearer-token-env",
        type="env var name",
        default=None,
        meaning="Environment variable of the agent holding the bearer token (sent as Authorization: Bearer).",
        example="PROMETHEUS_TOKEN",
    ),
    FieldDoc(
        field="bearer-token-file",
        type="absolute path",
        default=None,
        meaning="File in the agent's container holding the bearer token (read when the client opens).",
        example="/etc/prometheus-token/token",
    ),
    FieldDoc(
        field="username-env",
        type="env var name",
        default=None,
        meaning="Environment variable of the agent holding the basic-auth username.",
        example="PROMETHEUS_USERNAME",
    ),
    FieldDoc(
        field="password-env",
        type="env var name",
        default=None,
        meaning="Environment variable of the agent holding the basic-auth password.",
        example="PROMETHEUS_PASSWORD",
    ),
    FieldDoc(
        field="password-file",
        type="absolute path",
        default=None,
        meaning="File in the agent's container holding the basic-auth password.",
        example="/etc/prometheus-credentials/password",
    ),
    FieldDoc(
        field="credentials-secret",
        type="Secret name",
        default=None,
        meaning="Secret in the Deployment's namespace read only by the cluster-level waker: key token "
        "(bearer) or keys username and password (basic), and ca.crt (PEM text) in place of tls-ca-file.",
        example="prometheus-credentials",
    ),
    FieldDoc(
        field="tls-ca-file",
        type="absolute path",
        default=None,
        meaning="CA bundle to verify an https:// server-address (absent: the system's CAs). The agent's "
        "only: the waker refuses TLS files.",
        example="/etc/prometheus-tls/ca.crt",
    ),
    FieldDoc(
        field="timeout",
        type="duration",
        default="5s",
        meaning="Most time one query may take before the measurement counts as failed.",
        example="3s",
    ),
)


def parse_prometheus_settings(trigger: str, raw: Mapping[str, str]) -> PrometheusSettings:
    """``raw`` maps field names (no prefix) to strings; raises HintsInvalid listing every problem."""
    fields = FieldCollector(trigger, raw, (doc.field for doc in PROMETHEUS_FIELDS), kind="prometheus")
    settings = PrometheusSettings(
        name=trigger,
        server_address=fields.require(
            "server-address", partial(parse_url, schemes=("http", "https")), "http://invalid"
        ),
        query=fields.require("query", _parse_query, "vector(0)"),
        threshold=fields.require("threshold", _parse_threshold, 1.0),
        activation_threshold=fields.get("activation-threshold", _parse_activation, 0.0),
        ignore_null_values=fields.get("ignore-null-values", parse_bool, True),
        namespace=fields.get("namespace", _parse_namespace, None),
        query_parameters=fields.get("query-parameters", _parse_parameters, ()),
        custom_headers=fields.get("custom-headers", _parse_headers, ()),
        auth_mode=_inferred_auth_mode(fields),
        bearer_token_env=fields.get("bearer-token-env", parse_env_name, None),
        bearer_token_file=fields.get("bearer-token-file", parse_file_path, None),
        username_env=fields.get("username-env", parse_env_name, None),
        password_env=fields.get("password-env", parse_env_name, None),
        password_file=fields.get("password-file", parse_file_path, None),
        credentials_secret=fields.get("credentials-secret", parse_secret_name, None),
        tls_ca_file=fields.get("tls-ca-file", parse_file_path, None),
        timeout=fields.get("timeout", _parse_timeout, 5.0),
    )
    _check_combinations(fields, settings)
    fields.finish()
    return settings


_BEARER_FIELDS = ("bearer-token-env", "bearer-token-file")
_BASIC_FIELDS = ("username-env", "password-env", "password-file")


def _inferred_auth_mode(fields: FieldCollector) -> AuthMode:
    if fields.has("auth-mode"):
        return fields.get("auth-mode", _parse_auth_mode, "none")
    if any(fields.has(f) for f in _BEARER_FIELDS):
        return "bearer"
    if any(fields.has(f) for f in _BASIC_FIELDS):
        return "basic"
    return "none"


def _check_combinations(fields: FieldCollector, s: PrometheusSettings) -> None:
    mode = s.auth_mode
    if mode != "bearer":
        for name in _BEARER_FIELDS:
            if fields.has(name):
                fields.problem(name, f"auth-mode bearer (auth-mode is {mode}: one login per trigger)")
    if mode != "basic":
        for name in _BASIC_FIELDS:
            if fields.has(name):
                fields.problem(name, f"auth-mode basic (auth-mode is {mode})")
    if mode == "bearer":
        if fields.has("bearer-token-env") and fields.has("bearer-token-file"):
            fields.problem("bearer-token-file", "either bearer-token-file or bearer-token-env, not both")
        elif not fields.has("bearer-token-env") and not fields.has("bearer-token-file"):
            fields.problem(
                "bearer-token-env",
                "a value (or bearer-token-file) with auth-mode bearer: where the agent reads the token "
                "(credentials-secret serves the waker only)",
            )
    if mode == "basic":
        if not fields.has("username-env"):
            fields.problem(
                "username-env",
                "a value with auth-mode basic: where the agent reads the username (credentials-secret "
                "serves the waker only)",
            )
        if fields.has("password-env") == fields.has("password-file"):
            name = "password-file" if fields.has("password-file") else "password-env"
            fields.problem(name, "exactly one of password-env and password-file with auth-mode basic")
    if mode == "none" and fields.has("credentials-secret"):
        fields.problem(
            "credentials-secret",
            "auth-mode bearer or basic with it (and the agent's bearer-token-* or username-env/password-* "
            "fields): without a login the waker needs no Secret",
        )
    if fields.has("tls-ca-file") and not s.server_address.strip().lower().startswith("https://"):
        fields.problem("tls-ca-file", "an https:// server-address to go with it")
