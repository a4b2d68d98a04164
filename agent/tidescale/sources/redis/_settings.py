"""The Redis trigger's settings: parsed from hint strings into a frozen, typed object.

One trigger type covers KEDA's two scalers: ``list`` (KEDA's ``redis``: the length of a list,
or of a set, sorted set or hash under that key) and ``stream`` (KEDA's ``redis-streams``: the
stream's length, or a consumer group's pending entries or lag).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from tidescale._values import parse_bool, parse_choice, parse_duration, parse_float, parse_int
from tidescale.errors import HintError
from tidescale.sources._fields import (
    FieldCollector,
    FieldDoc,
    parse_env_name,
    parse_file_path,
    parse_secret_name,
)

__all__ = ["MAX_KEY_BYTES", "REDIS_FIELDS", "RedisSettings", "StreamMetric", "parse_redis_settings"]

StreamMetric = Literal["length", "pending", "lag"]

MAX_KEY_BYTES = 1024
"""Longest key (list or stream) and consumer group name a trigger may name, in UTF-8 bytes."""
MAX_DATABASE = 65535

_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?):(\d{1,5})")


@dataclass(frozen=True, kw_only=True, slots=True)
class RedisSettings:
    """One Redis trigger. Hashable: it keys the per-trigger results of a shared connection."""

    name: str
    address: str = ""
    """host:port of the server."""
    database: int = 0
    username: str | None = None
    """The ACL user (Redis >= 6); None logs in as ``default`` (or with the password alone)."""
    password_env: str | None = None
    password_file: str | None = None
    credentials_secret: str | None = None
    enable_tls: bool = False
    tls_ca_file: str | None = None
    list_name: str | None = None
    stream_name: str | None = None
    consumer_group: str | None = None
    stream_metric: StreamMetric = "length"
    value: float = 5.0
    activation_value: float = 0.0
    timeout: float = 5.0

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    @property
    def key(self) -> str:
        """The key measured: the list's or the stream's."""
        return self.list_name if self.list_name is not None else self.stream_name or ""

    @property
    def cluster_key(self) -> tuple[object, ...]:
        """Triggers with equal keys share one connection: one server, one database, one login."""
        return (
            "redis",
            self.address,
            self.database,
            self.username,
            self.password_env,
            self.password_file,
            self.enable_tls,
            self.tls_ca_file,
        )


def _parse_address(annotation: str, value: str) -> str:
    text = value.strip()
    match = _ADDRESS.fullmatch(text)
    if match is None or not 1 <= int(match[3]) <= 65535:
        raise HintError(annotation, value, 'host:port of the Redis server, e.g. "redis.cache:6379"')
    return text


def _parse_key(annotation: str, value: str) -> str:
    if not value or len(value.encode()) > MAX_KEY_BYTES or "\x00" in value:
        raise HintError(annotation, value[:64], f"a Redis key name (1 to {MAX_KEY_BYTES} bytes, no NUL)")
    return value


def _parse_group(annotation: str, value: str) -> str:
    if not value or len(value.encode()) > MAX_KEY_BYTES or any(c.isspace() or c == "\x00" for c in value):
        raise HintError(
            annotation, value[:64], f"a consumer group name (1 to {MAX_KEY_BYTES} bytes, no blanks)"
        )
    return value


def _parse_username(annotation: str, value: str) -> str:
    text = value.strip()
    if not text or len(text) > 255 or any(c.isspace() for c in text):
        raise HintError(annotation, value, "a Redis ACL user name (1 to 255 characters, no blanks)")
    return text


def _parse_database(annotation: str, value: str) -> int:
    return parse_int(annotation, value, minimum=0, maximum=MAX_DATABASE)


def _parse_stream_metric(annotation: str, value: str) -> StreamMetric:
    choice = parse_choice(annotation, value, ("length", "pending", "lag"))
    return "pending" if choice == "pending" else "lag" if choice == "lag" else "length"


def _parse_value(annotation: str, value: str) -> float:
    return parse_float(annotation, value, minimum=0.0, exclusive_minimum=True)


def _parse_activation(annotation: str, value: str) -> float:
    return parse_float(annotation, value, minimum=0.0)


def _parse_timeout(annotation: str, value: str) -> float:
    return parse_duration(annotation, value, minimum=0.1, maximum=120.0)


REDIS_FIELDS: tuple[FieldDoc, ...] = (
    FieldDoc(
        field="address",
        type="host:port",
        default=None,
        meaning="The Redis server (required). Redis Cluster and Sentinel are not supported: name the "
        "primary that holds the key.",
        example="redis.cache:6379",
    ),
    FieldDoc(
        field="database",
        type=f"whole number 0-{MAX_DATABASE}",
        default="0",
        meaning="The database index (SELECT) holding the key.",
        example="2",
    ),
    FieldDoc(
        field="list",
        type="key name",
        default=None,
        meaning="Measure the length of this list (LLEN; a set, sorted set or hash under the key counts its "
        "members, as KEDA does). A missing key is an empty list (Redis deletes empty lists). This or "
        "stream is required.",
        example="jobs",
    ),
    FieldDoc(
        field="stream",
        type="key name",
        default=None,
        meaning="Measure this stream: its length, or a consumer group's pending entries or lag "
        "(stream-metric). A missing stream is an error.",
        example="orders",
    ),
    FieldDoc(
        field="consumer-group",
        type="string",
        default=None,
        meaning="The stream's consumer group (needed by stream-metric pending and lag).",
        example="workers",
    ),
    FieldDoc(
        field="stream-metric",
        type="length | pending | lag",
        default="pending with consumer-group, else length",
        meaning="What a stream trigger scales on: the stream's length (XLEN), the group's pending entries "
        "(delivered, not acknowledged: XINFO GROUPS pending), or its lag (entries not yet delivered to "
        "the group: XINFO GROUPS lag, Redis >= 7; a group not created yet counts the whole stream).",
        example="lag",
    ),
    FieldDoc(
        field="value",
        type="number > 0",
        default="5",
        meaning="What one replica is expected to handle: desired replicas = ceil(metric / value).",
        example="10",
    ),
    FieldDoc(
        field="activation-value",
        type="number >= 0",
        default="0",
        meaning="The trigger is active (wakes the workload from zero) when the metric is above this.",
        example="1",
    ),
    FieldDoc(
        field="username",
        type="string",
        default=None,
        meaning="The ACL user to log in as (Redis >= 6); absent: the password alone (the default user).",
        example="autoscaler",
    ),
    FieldDoc(
        field="password-env",
        type="env var name",
        default=None,
        meaning="Environment variable of the agent holding the password.",
        example="REDIS_PASSWORD",
    ),
    FieldDoc(
        field="password-file",
        type="absolute path",
        default=None,
        meaning="File in the agent's container holding the password (e.g. a mounted Secret).",
        example="/etc/redis-credentials/password",
    ),
    FieldDoc(
        field="credentials-secret",
        type="Secret name",
        default=None,
        meaning="Secret in the Deployment's namespace with key password (and optionally username, which "
        "then replaces the username field); read only by the cluster-level waker.",
        example="redis-credentials",
    ),
    FieldDoc(
        field="enable-tls",
        type="bool",
        default="false",
        meaning="Connect over TLS, verifying the server's certificate (the system's CAs or tls-ca-file).",
        example="true",
    ),
    FieldDoc(
        field="tls-ca-file",
        type="absolute path",
        default=None,
        meaning="CA bundle to verify the server with (needs enable-tls).",
        example="/etc/redis-tls/ca.crt",
    ),
    FieldDoc(
        field="timeout",
        type="duration",
        default="5s",
        meaning="Most time one measurement may take before it counts as failed.",
        example="3s",
    ),
)


def parse_redis_settings(trigger: str, raw: Mapping[str, str]) -> RedisSettings:
    """``raw`` maps field names (no prefix) to strings; raises HintsInvalid listing every problem."""
    fields = FieldCollector(trigger, raw, (doc.field for doc in REDIS_FIELDS), kind="redis")
    group = fields.get("consumer-group", _parse_group, None)
    settings = RedisSettings(
        name=trigger,
        address=fields.require("address", _parse_address, "localhost:6379"),
        database=fields.get("database", _parse_database, 0),
        username=fields.get("username", _parse_username, None),
        password_env=fields.get("password-env", parse_env_name, None),
        password_file=fields.get("password-file", parse_file_path, None),
        credentials_secret=fields.get("credentials-secret", parse_secret_name, None),
        enable_tls=fields.get("enable-tls", parse_bool, False),
        tls_ca_file=fields.get("tls-ca-file", parse_file_path, None),
        list_name=fields.get("list", _parse_key, None),
        stream_name=fields.get("stream", _parse_key, None),
        consumer_group=group,
        stream_metric=fields.get("stream-metric", _parse_stream_metric, "pending" if group else "length"),
        value=fields.get("value", _parse_value, 5.0),
        activation_value=fields.get("activation-value", _parse_activation, 0.0),
        timeout=fields.get("timeout", _parse_timeout, 5.0),
    )
    _check_combinations(fields, settings)
    fields.finish()
    return settings


def _check_combinations(fields: FieldCollector, s: RedisSettings) -> None:
    if fields.has("list") == fields.has("stream"):
        name = "stream" if fields.has("stream") else "list"
        fields.problem(name, "exactly one of list and stream")
    if fields.has("list"):
        for name in ("consumer-group", "stream-metric"):
            if fields.has(name):
                fields.problem(name, "to be set only with stream (a list has no consumer groups)")
    elif s.stream_metric in ("pending", "lag") and s.consumer_group is None and fields.has("stream-metric"):
        fields.problem("consumer-group", f"a value: stream-metric {s.stream_metric} is a consumer group's")
    if s.tls_ca_file is not None and not s.enable_tls:
        fields.problem("tls-ca-file", "enable-tls true to go with it")
    if s.password_env is not None and s.password_file is not None:
        fields.problem("password-file", "either password-file or password-env, not both")
