"""The NATS JetStream trigger's settings: parsed from hint strings into a frozen, typed object.

KEDA's nats-jetstream scaler (pkg/scalers/nats_jetstream_scaler.go) is the reference for the fields
and their meaning; docs/keda-mapping.md lists each of its fields and what became of it here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tidescale._values import parse_bool, parse_duration, parse_int
from tidescale.errors import HintError
from tidescale.sources._fields import FieldCollector, FieldDoc, parse_file_path, parse_secret_name

__all__ = ["MAX_ENDPOINTS", "NATS_JETSTREAM_FIELDS", "NatsJetStreamSettings", "parse_nats_jetstream_settings"]

_HOST = re.compile(
    r"[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*"
)
_NAME_REFUSED = re.compile(r"[\s.*>/\\]")
"""What NATS refuses in stream and consumer names (whitespace, subject tokens, path separators)."""
_MAX_NAME = 255


@dataclass(frozen=True, kw_only=True, slots=True)
class NatsJetStreamSettings:
    """One NATS JetStream trigger. Hashable: it keys the waker's batches and the pool's connections."""

    name: str
    monitoring_host: str
    monitoring_port: int
    other_endpoints: tuple[tuple[str, int], ...] = ()
    """The other servers of a cluster (monitoring-endpoint lists them after the first): the consumer
    is read on whichever of them leads it."""
    use_https: bool = False
    account: str = "$G"
    stream: str
    consumer: str
    lag_threshold: int = 10
    activation_lag_threshold: int = 0
    tls_ca_file: str | None = None
    credentials_secret: str | None = None
    timeout: float = 5.0

    @property
    def cluster_key(self) -> tuple[object, ...]:
        """Triggers with equal keys share one HTTP client (one monitoring endpoint, one trust)."""
        return (
            "nats-jetstream",
            self.monitoring_host,
            self.monitoring_port,
            self.other_endpoints,
            self.use_https,
            self.tls_ca_file,
        )

    @property
    def endpoints(self) -> tuple[tuple[str, int], ...]:
        """Every monitoring endpoint, the first one first."""
        return ((self.monitoring_host, self.monitoring_port), *self.other_endpoints)

    @property
    def base_url(self) -> str:
        """The first endpoint's base URL."""
        return self.urls[0]

    @property
    def urls(self) -> tuple[str, ...]:
        """Every endpoint's base URL (http(s)://host:port)."""
        scheme = "https" if self.use_https else "http"
        return tuple(f"{scheme}://{f'[{h}]' if ':' in h else h}:{p}" for h, p in self.endpoints)


def _parse_endpoint(annotation: str, value: str) -> tuple[str, int]:
    expected = (
        "the host:port of the server's monitoring endpoint (http_port / -m), without scheme or path, "
        "e.g. nats.messaging:8222 or [fd00::1]:8222"
    )
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise HintError(annotation, value, expected)
    if host.startswith("[") and host.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(host[1:-1])), int(port_text)
        except ValueError as exc:
            raise HintError(annotation, value, expected) from exc
    if len(host) > 253 or not _HOST.fullmatch(host):
        raise HintError(annotation, value, expected)
    return host, int(port_text)


def _parse_name(what: str) -> Callable[[str, str], str]:
    def parse(annotation: str, value: str) -> str:
        if (
            not value
            or len(value.encode()) > _MAX_NAME
            or _NAME_REFUSED.search(value)
            or not value.isprintable()
        ):
            raise HintError(
                annotation,
                value,
                f"a JetStream {what} name (1 to {_MAX_NAME} bytes; no spaces, '.', '*', '>', '/')",
            )
        return value

    return parse


MAX_ENDPOINTS = 16


def _parse_endpoints(annotation: str, value: str) -> tuple[tuple[str, int], ...]:
    items = [item for item in value.split(",") if item.strip()]
    if not items or len(items) > MAX_ENDPOINTS:
        raise HintError(
            annotation,
            value[:200],
            f"1 to {MAX_ENDPOINTS} comma-separated host:port monitoring endpoints (one per server of a "
            "cluster)",
        )
    found = tuple(_parse_endpoint(annotation, item) for item in items)
    if len(set(found)) != len(found):
        raise HintError(annotation, value[:200], "each monitoring endpoint once")
    return found


def _parse_account(annotation: str, value: str) -> str:
    text = value.strip()
    if not text or len(text) > _MAX_NAME or not text.isprintable() or " " in text:
        raise HintError(annotation, value, "an account name or public key (ID), e.g. $G or ORDERS")
    return text


def _parse_lag(annotation: str, value: str) -> int:
    return parse_int(annotation, value, minimum=1, maximum=10**12)


def _parse_activation(annotation: str, value: str) -> int:
    return parse_int(annotation, value, minimum=0, maximum=10**12)


def _parse_timeout(annotation: str, value: str) -> float:
    return parse_duration(annotation, value, minimum=0.1, maximum=120.0)


NATS_JETSTREAM_FIELDS: tuple[FieldDoc, ...] = (
    FieldDoc(
        field="monitoring-endpoint",
        type="host:port, comma-separated",
        default=None,
        meaning="The server's HTTP monitoring endpoint (its http_port, -m): tidescale reads "
        "/jsz?acc=<account>&consumers=true there, as KEDA does. Required. In a cluster, list every "
        "server's: only the consumer's leader keeps its pending count, and its answer is the one used.",
        example="nats-0.nats:8222,nats-1.nats:8222,nats-2.nats:8222",
    ),
    FieldDoc(
        field="use-https",
        type="bool",
        default="false",
        meaning="Read the monitoring endpoint over https (the server's https_port).",
        example="true",
    ),
    FieldDoc(
        field="account",
        type="account name or ID",
        default="$G",
        meaning="The JetStream account of the stream, by name or public key (ID); $G is the global "
        "account of a server without accounts.",
        example="ORDERS",
    ),
    FieldDoc(
        field="stream",
        type="string",
        default=None,
        meaning="The stream the consumer reads. Required.",
        example="ORDERS",
    ),
    FieldDoc(
        field="consumer",
        type="string",
        default=None,
        meaning="The consumer (durable name) whose backlog is measured: its pending messages (not yet "
        "delivered) plus those delivered and not yet acknowledged. Required.",
        example="workers",
    ),
    FieldDoc(
        field="lag-threshold",
        type="whole number > 0",
        default="10",
        meaning="What one replica is expected to handle: desired replicas = ceil(backlog / lag-threshold).",
        example="50",
    ),
    FieldDoc(
        field="activation-lag-threshold",
        type="whole number >= 0",
        default="0",
        meaning="The trigger is active (wakes the workload from zero) when the backlog is above this.",
        example="5",
    ),
    FieldDoc(
        field="tls-ca-file",
        type="absolute path",
        default=None,
        meaning="CA bundle to verify the monitoring endpoint with use-https (absent: the system's CAs). The "
        "agent's only: the waker refuses TLS files.",
        example="/etc/nats-tls/ca.crt",
    ),
    FieldDoc(
        field="credentials-secret",
        type="Secret name",
        default=None,
        meaning="Secret in the Deployment's namespace with key ca.crt (the CA of tls-ca-file as PEM text), "
        "read only by the cluster-level waker, in place of tls-ca-file.",
        example="nats-ca",
    ),
    FieldDoc(
        field="timeout",
        type="duration",
        default="5s",
        meaning="Most time one reading of /jsz may take before the measurement counts as failed.",
        example="3s",
    ),
)


def parse_nats_jetstream_settings(trigger: str, raw: Mapping[str, str]) -> NatsJetStreamSettings:
    """``raw`` maps field names (no prefix) to strings; raises HintsInvalid listing every problem."""
    fields = FieldCollector(trigger, raw, (doc.field for doc in NATS_JETSTREAM_FIELDS), kind="nats-jetstream")
    placeholder: tuple[tuple[str, int], ...] = (("invalid", 8222),)
    endpoints = fields.require("monitoring-endpoint", _parse_endpoints, placeholder)
    settings = NatsJetStreamSettings(
        name=trigger,
        monitoring_host=endpoints[0][0],
        monitoring_port=endpoints[0][1],
        other_endpoints=endpoints[1:],
        use_https=fields.get("use-https", parse_bool, False),
        account=fields.get("account", _parse_account, "$G"),
        stream=fields.require("stream", _parse_name("stream"), "invalid"),
        consumer=fields.require("consumer", _parse_name("consumer"), "invalid"),
        lag_threshold=fields.get("lag-threshold", _parse_lag, 10),
        activation_lag_threshold=fields.get("activation-lag-threshold", _parse_activation, 0),
        tls_ca_file=fields.get("tls-ca-file", parse_file_path, None),
        credentials_secret=fields.get("credentials-secret", parse_secret_name, None),
        timeout=fields.get("timeout", _parse_timeout, 5.0),
    )
    if fields.has("tls-ca-file") and not settings.use_https:
        fields.problem("tls-ca-file", "use-https true to go with it")
    if fields.has("credentials-secret") and not fields.has("tls-ca-file"):
        fields.problem(
            "credentials-secret",
            "tls-ca-file with it (the Secret's ca.crt stands in for that file; the monitoring endpoint has "
            "no login)",
        )
    fields.finish()
    return settings
