"""The RabbitMQ trigger's settings: parsed from hint strings into a frozen, typed object."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Literal
from urllib.parse import unquote, urlsplit

from tidescale._values import parse_bool, parse_choice, parse_float
from tidescale.errors import HintError
from tidescale.sources._common import (
    DEFAULT_TIMEOUT,
    check_one_secret_source,
    credentials_secret_field,
    parse_timeout,
    secret_env_field,
    secret_file_field,
    timeout_field,
    tls_file_fields,
    tls_key_password_fields,
)
from tidescale.sources._fields import (
    DRAIN_TIME_DOC,
    FieldCollector,
    FieldDoc,
    parse_drain_time,
    parse_env_name,
    parse_file_path,
    parse_regex,
    parse_secret_name,
    parse_url,
)

__all__ = ["RABBITMQ_FIELDS", "RabbitMQSettings", "parse_rabbitmq_settings"]

Mode = Literal["queue-length", "message-rate"]
Operation = Literal["sum", "avg", "max"]
QueueMatch = Literal["whole", "substring"]
AuthMechanism = Literal["plain", "external"]


@dataclass(frozen=True, kw_only=True, slots=True)
class RabbitMQSettings:
    """One RabbitMQ trigger. Hashable: it keys the per-trigger state of a shared connection."""

    name: str
    management_url: str | None = None
    amqp_url: str | None = None
    vhost: str = "/"
    queue: str | None = None
    queue_pattern: str | None = None
    queue_match: QueueMatch = "whole"
    """How queue-pattern matches a queue name: the whole name, or anywhere in it (KEDA's way)."""
    operation: Operation = "sum"
    mode: Mode = "queue-length"
    value: float = 20.0
    activation_value: float = 0.0
    exclude_unacknowledged: bool = False
    username_env: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    credentials_secret: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_key_password_env: str | None = None
    tls_key_password_file: str | None = None
    auth_mechanism: AuthMechanism = "plain"
    drain_time: float | None = None
    """Drain-time target in seconds; None: the threshold alone decides."""
    timeout: float = DEFAULT_TIMEOUT

    @property
    def uses_management(self) -> bool:
        """The management API is preferred: only it sees unacknowledged messages and rates."""
        return self.management_url is not None

    @property
    def cluster_key(self) -> tuple[object, ...]:
        """Triggers with equal keys share one connection (HTTP client, or AMQP connection per vhost)."""
        credentials = (
            self.username_env,
            self.password_env,
            self.password_file,
            self.tls_ca_file,
            self.tls_cert_file,
            self.tls_key_file,
            self.tls_key_password_env,
            self.tls_key_password_file,
            self.auth_mechanism,
        )
        if self.management_url is not None:
            return ("rabbitmq-http", self.management_url.rstrip("/"), *credentials)
        return ("rabbitmq-amqp", self.amqp_url, self.vhost, *credentials)


def _parse_vhost(annotation: str, value: str) -> str:
    if not value or len(value) > 255:
        raise HintError(annotation, value, 'a vhost name, e.g. "/" or "orders"')
    return value


def _parse_queue(annotation: str, value: str) -> str:
    if not value.strip() or len(value.encode()) > 255:
        raise HintError(annotation, value, "a queue name (1 to 255 bytes)")
    return value


def _parse_queue_match(annotation: str, value: str) -> QueueMatch:
    return "substring" if parse_choice(annotation, value, ("whole", "substring")) == "substring" else "whole"


def _vhost_of_amqp_url(url: str | None) -> str | None:
    """The vhost an amqp(s) URL names in its path, as AMQP clients (and so KEDA) read it:
    ``amqp://host/orders`` is vhost ``orders``, ``amqp://host/%2F`` is ``/``; no path (or ``/``)
    names none, and the default ``/`` applies."""
    if url is None:
        return None
    try:
        path = urlsplit(url.strip()).path
    except ValueError:
        return None  # the URL's own parser reports it
    return unquote(path[1:]) if len(path) > 1 else None


def _parse_auth(annotation: str, value: str) -> AuthMechanism:
    return "external" if parse_choice(annotation, value, ("plain", "external")) == "external" else "plain"


def _parse_operation(annotation: str, value: str) -> Operation:
    choice = parse_choice(annotation, value, ("sum", "avg", "max"))
    return "avg" if choice == "avg" else "max" if choice == "max" else "sum"


def _parse_mode(annotation: str, value: str) -> Mode:
    choice = parse_choice(annotation, value, ("queue-length", "message-rate"))
    return "message-rate" if choice == "message-rate" else "queue-length"


def _parse_value(annotation: str, value: str) -> float:
    return parse_float(annotation, value, minimum=0.0, exclusive_minimum=True)


def _parse_activation(annotation: str, value: str) -> float:
    return parse_float(annotation, value, minimum=0.0)


RABBITMQ_FIELDS: tuple[FieldDoc, ...] = (
    FieldDoc(
        field="management-url",
        type="http(s) URL",
        default=None,
        meaning="Base URL of the management API (preferred: it counts unacknowledged messages and rates). "
        "No password in the URL.",
        example="http://rabbitmq.messaging:15672",
    ),
    FieldDoc(
        field="amqp-url",
        type="amqp(s) URL",
        default=None,
        meaning="AMQP URL, used when there is no management-url. Over AMQP only READY messages are "
        "visible: messages being processed (unacknowledged) are not counted, so prefer management-url. "
        "A path names the vhost, as in KEDA (amqp://host/orders; %2F for /).",
        example="amqp://worker@rabbitmq.messaging:5672",
    ),
    FieldDoc(
        field="vhost", type="string", default="/", meaning="The virtual host of the queue.", example="orders"
    ),
    FieldDoc(
        field="queue",
        type="string",
        default=None,
        meaning="The queue to measure (this or queue-pattern is required).",
        example="orders",
    ),
    FieldDoc(
        field="queue-pattern",
        type="regular expression",
        default=None,
        meaning="Measure every queue of the vhost whose whole name matches, combined by operation "
        "(needs management-url).",
        example="orders-.*",
    ),
    FieldDoc(
        field="queue-match",
        type="whole | substring",
        default="whole",
        meaning="How queue-pattern matches a queue name: the whole name, or anywhere in it. KEDA matches "
        "anywhere (useRegex): set substring when migrating a KEDA trigger to keep its queues.",
        example="substring",
    ),
    FieldDoc(
        field="operation",
        type="sum | avg | max",
        default="sum",
        meaning="How the queues matched by queue-pattern combine.",
        example="max",
    ),
    FieldDoc(
        field="mode",
        type="queue-length | message-rate",
        default="queue-length",
        meaning="Scale on messages in the queue, or on the publish rate per second (message-rate needs "
        "management-url).",
        example="message-rate",
    ),
    FieldDoc(
        field="value",
        type="number > 0",
        default="20",
        meaning="What one replica is expected to handle: desired replicas = ceil(metric / value).",
        example="100",
    ),
    FieldDoc(
        field="activation-value",
        type="number >= 0",
        default="0",
        meaning="The trigger is active (wakes the workload from zero) when the metric is above this.",
        example="1",
    ),
    FieldDoc(
        field="exclude-unacknowledged",
        type="bool",
        default="false",
        meaning="Count only ready messages. By default unacknowledged messages count too, so work in "
        "flight keeps the workload up.",
        example="true",
    ),
    secret_env_field(
        "username-env", holding="the username (else the URL's user)", example="RABBITMQ_USERNAME"
    ),
    secret_env_field("password-env", holding="the password", example="RABBITMQ_PASSWORD"),
    secret_file_field(
        "password-file",
        holding="the password (e.g. a mounted Secret)",
        example="/etc/rabbitmq-credentials/password",
    ),
    credentials_secret_field(keys=("username", "password"), example="rabbitmq-credentials", tls=True),
    *tls_file_fields(
        peer="the broker",
        ca_needs="an amqps:// or https:// URL",
        pair_needs="needs {other} and an amqps:// or https:// URL",
        directory="/etc/rabbitmq-tls",
    ),
    *tls_key_password_fields(
        env_example="RABBITMQ_KEY_PASSWORD", file_example="/etc/rabbitmq-tls/key-password"
    ),
    FieldDoc(
        field="auth-mechanism",
        type="plain | external",
        default="plain",
        meaning="AMQP login: plain (username and password) or external (the client certificate's identity, "
        "rabbitmq_auth_mechanism_ssl; needs an amqps:// amqp-url, tls-cert-file and tls-key-file, and no "
        "management-url).",
        example="external",
    ),
    DRAIN_TIME_DOC,
    timeout_field(),
)


def parse_rabbitmq_settings(trigger: str, raw: Mapping[str, str]) -> RabbitMQSettings:
    """``raw`` maps field names (no prefix) to strings; raises HintsInvalid listing every problem."""
    fields = FieldCollector(trigger, raw, (doc.field for doc in RABBITMQ_FIELDS), kind="rabbitmq")
    url_vhost = _vhost_of_amqp_url(raw.get("amqp-url"))
    settings = RabbitMQSettings(
        name=trigger,
        management_url=fields.get("management-url", partial(parse_url, schemes=("http", "https")), None),
        amqp_url=fields.get("amqp-url", partial(parse_url, schemes=("amqp", "amqps")), None),
        vhost=fields.get("vhost", _parse_vhost, url_vhost or "/"),
        queue=fields.get("queue", _parse_queue, None),
        queue_pattern=fields.get("queue-pattern", parse_regex, None),
        queue_match=fields.get("queue-match", _parse_queue_match, "whole"),
        operation=fields.get("operation", _parse_operation, "sum"),
        mode=fields.get("mode", _parse_mode, "queue-length"),
        value=fields.get("value", _parse_value, 20.0),
        activation_value=fields.get("activation-value", _parse_activation, 0.0),
        exclude_unacknowledged=fields.get("exclude-unacknowledged", parse_bool, False),
        username_env=fields.get("username-env", parse_env_name, None),
        password_env=fields.get("password-env", parse_env_name, None),
        password_file=fields.get("password-file", parse_file_path, None),
        credentials_secret=fields.get("credentials-secret", parse_secret_name, None),
        tls_ca_file=fields.get("tls-ca-file", parse_file_path, None),
        tls_cert_file=fields.get("tls-cert-file", parse_file_path, None),
        tls_key_file=fields.get("tls-key-file", parse_file_path, None),
        tls_key_password_env=fields.get("tls-key-password-env", parse_env_name, None),
        tls_key_password_file=fields.get("tls-key-password-file", parse_file_path, None),
        auth_mechanism=fields.get("auth-mechanism", _parse_auth, "plain"),
        drain_time=fields.get("drain-time", parse_drain_time, None),
        timeout=fields.get("timeout", parse_timeout, DEFAULT_TIMEOUT),
    )
    _check_combinations(fields, settings, url_vhost)
    fields.finish()
    return settings


def _check_combinations(fields: FieldCollector, s: RabbitMQSettings, url_vhost: str | None) -> None:
    if not fields.has("management-url") and not fields.has("amqp-url"):
        fields.problem("management-url", "a value (or amqp-url): where to measure the queue")
    if fields.has("queue") == fields.has("queue-pattern"):
        name = "queue-pattern" if fields.has("queue-pattern") else "queue"
        fields.problem(name, "exactly one of queue and queue-pattern")
    no_management = not fields.has("management-url")
    if no_management and fields.has("queue-pattern"):
        fields.problem("queue-pattern", "management-url to be set too (AMQP cannot list queues)")
    if no_management and s.mode == "message-rate":
        fields.problem("mode", "management-url to be set too (AMQP does not report rates)")
    if url_vhost is not None and fields.has("vhost") and s.vhost != url_vhost:
        fields.problem("vhost", f"the vhost the amqp-url path names ({url_vhost!r}), or no path in amqp-url")
    _check_tls(fields, s)
    if fields.has("queue-match") and not fields.has("queue-pattern"):
        fields.problem("queue-match", "to be set only together with queue-pattern")
    if fields.has("operation") and not fields.has("queue-pattern"):
        fields.problem("operation", "to be set only together with queue-pattern")
    check_one_secret_source(fields, "password-env", "password-file")


def _check_tls(fields: FieldCollector, s: RabbitMQSettings) -> None:
    used = s.management_url if s.uses_management else s.amqp_url
    secure = (used or "").strip().lower().startswith(("https://", "amqps://"))
    for name in ("tls-ca-file", "tls-cert-file", "tls-key-file"):
        if fields.has(name) and not secure:
            which = "management-url" if s.uses_management else "amqp-url"
            fields.problem(name, f"an https:// or amqps:// {which} (the URL measured) to go with it")
    if (s.tls_cert_file is None) != (s.tls_key_file is None):
        missing = "tls-key-file" if s.tls_key_file is None else "tls-cert-file"
        fields.problem(missing, "a value: tls-cert-file and tls-key-file go together")
    for name in ("tls-key-password-env", "tls-key-password-file"):
        if fields.has(name) and s.tls_key_file is None:
            fields.problem(name, "to be set only together with tls-key-file (it decrypts that key)")
    check_one_secret_source(fields, "tls-key-password-env", "tls-key-password-file")
    if s.auth_mechanism == "external":
        if s.uses_management or not (s.amqp_url or "").strip().lower().startswith("amqps://"):
            fields.problem(
                "auth-mechanism",
                "an amqps:// amqp-url and no management-url with external (the "
                "management API has no certificate login)",
            )
        if s.tls_cert_file is None:
            fields.problem("tls-cert-file", "a value with auth-mechanism external (the identity logged in)")
