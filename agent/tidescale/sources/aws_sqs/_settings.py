"""The aws-sqs trigger's settings: parsed from hint strings into a frozen, typed object."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from tidescale._values import parse_bool, parse_duration, parse_float
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
    "AWS_SQS_FIELDS",
    "SECRET_KEYS",
    "AwsSqsSettings",
    "parse_aws_sqs_settings",
    "region_of_host",
]

SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
"""The keys the waker reads from credentials-secret (the session token is optional)."""

_QUEUE_NAME = re.compile(r"[A-Za-z0-9_-]{1,80}(\.fifo)?")
_REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
# Regional SQS hosts name their region: sqs.eu-west-1.amazonaws.com, sqs-fips.us-east-1...,
# the legacy eu-west-1.queue.amazonaws.com, and China's *.amazonaws.com.cn.
_REGIONAL_HOST = re.compile(
    r"(?:sqs(?:-fips)?\.(?P<a>[a-z0-9-]+)|(?P<b>[a-z0-9-]+)\.queue)\.amazonaws\.com(?:\.cn)?"
)
_QUEUE_URL_EXPECTED = (
    "a queue URL such as https://sqs.eu-west-1.amazonaws.com/123456789012/orders (scheme, host, "
    "/<account>/<queue name>; a bare queue name needs a GetQueueUrl call tidescale does not make)"
)


def region_of_host(host: str) -> str | None:
    """The region an AWS SQS host names (``sqs.eu-west-1.amazonaws.com`` -> ``eu-west-1``), or None."""
    if host == "queue.amazonaws.com":
        return "us-east-1"  # the oldest endpoint
    match = _REGIONAL_HOST.fullmatch(host.lower())
    if match is None:
        return None
    return match["a"] or match["b"]


@dataclass(frozen=True, kw_only=True, slots=True)
class AwsSqsSettings:
    """One aws-sqs trigger. Hashable: it keys the waker's batches and the pool's connections."""

    name: str
    queue_url: str
    region: str
    endpoint: str
    """Where GetQueueAttributes is sent: aws-endpoint, else the queue URL's scheme and host."""
    queue_length: float = 5.0
    activation_queue_length: float = 0.0
    scale_on_in_flight: bool = True
    scale_on_delayed: bool = False
    access_key_id_env: str | None = None
    access_key_id_file: str | None = None
    secret_access_key_env: str | None = None
    secret_access_key_file: str | None = None
    session_token_env: str | None = None
    session_token_file: str | None = None
    credentials_secret: str | None = None
    timeout: float = 5.0

    @property
    def queue_name(self) -> str:
        return urlsplit(self.queue_url).path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def cluster_key(self) -> tuple[object, ...]:
        """Triggers with equal keys share one HTTP client and one set of credentials."""
        return (
            "aws-sqs",
            self.endpoint,
            self.region,
            self.access_key_id_env,
            self.access_key_id_file,
            self.secret_access_key_env,
            self.secret_access_key_file,
            self.session_token_env,
            self.session_token_file,
        )


def _parse_queue_url(annotation: str, value: str) -> str:
    try:
        text = parse_url(annotation, value, schemes=("https", "http"))
    except HintError as exc:
        if "password" in exc.expected:
            raise  # its value is redacted
        raise HintError(annotation, value, _QUEUE_URL_EXPECTED) from exc
    parts = urlsplit(text)
    segments = parts.path.split("/")
    if (
        parts.query
        or parts.fragment
        or parts.username is not None
        or len(segments) != 3
        or not segments[1]
        or not _QUEUE_NAME.fullmatch(segments[2])
    ):
        raise HintError(annotation, value, _QUEUE_URL_EXPECTED)
    return text


def _parse_endpoint(annotation: str, value: str) -> str:
    text = parse_url(annotation, value, schemes=("https", "http"))
    parts = urlsplit(text)
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username is not None:
        raise HintError(
            annotation,
            value,
            "an http(s) URL of the SQS endpoint without path, e.g. https://sqs.eu-west-1.amazonaws.com",
        )
    return f"{parts.scheme}://{parts.netloc}"


def _parse_region(annotation: str, value: str) -> str:
    text = value.strip()
    if not _REGION.fullmatch(text):
        raise HintError(
            annotation, value, 'an AWS region such as "eu-west-1" (lower-case letters, digits, -)'
        )
    return text


def _parse_length(annotation: str, value: str) -> float:
    return parse_float(annotation, value, minimum=0.0, exclusive_minimum=True)


def _parse_activation(annotation: str, value: str) -> float:
    return parse_float(annotation, value, minimum=0.0)


def _parse_timeout(annotation: str, value: str) -> float:
    return parse_duration(annotation, value, minimum=0.1, maximum=120.0)


def _credential_docs(what: str, key: str, example_env: str, required: bool) -> tuple[FieldDoc, ...]:
    need = "one of the two is required" if required else "optional"
    return (
        FieldDoc(
            field=f"{what}-env",
            type="env var name",
            default=None,
            meaning=f"Environment variable of the agent holding the {what.replace('-', ' ')} ({need}).",
            example=example_env,
        ),
        FieldDoc(
            field=f"{what}-file",
            type="absolute path",
            default=None,
            meaning=f"File in the agent's container holding the {what.replace('-', ' ')} (e.g. the "
            f"mounted Secret key {key}; {need}).",
            example=f"/etc/aws-credentials/{key}",
        ),
    )


AWS_SQS_FIELDS: tuple[FieldDoc, ...] = (
    FieldDoc(
        field="queue-url",
        type="http(s) URL",
        default=None,
        meaning="The queue's URL, https://sqs.<region>.amazonaws.com/<account>/<queue> (required).",
        example="https://sqs.eu-west-1.amazonaws.com/123456789012/orders",
    ),
    FieldDoc(
        field="aws-region",
        type="AWS region",
        default="the queue URL's",
        meaning="The region requests are signed for; required when the queue URL's host names none "
        "(a VPC endpoint, ElasticMQ, LocalStack).",
        example="eu-west-1",
    ),
    FieldDoc(
        field="aws-endpoint",
        type="http(s) URL",
        default="the queue URL's",
        meaning="Where GetQueueAttributes is sent (JSON protocol); by default the queue URL's scheme and "
        "host, which is the regional SQS endpoint for AWS queue URLs.",
        example="https://sqs.eu-west-1.amazonaws.com",
    ),
    FieldDoc(
        field="queue-length",
        type="number > 0",
        default="5",
        meaning="Messages one replica is expected to handle: desired replicas = "
        "ceil(messages / queue-length).",
        example="10",
    ),
    FieldDoc(
        field="activation-queue-length",
        type="number >= 0",
        default="0",
        meaning="The trigger is active (wakes the workload from zero) when the messages counted are "
        "above this.",
        example="2",
    ),
    FieldDoc(
        field="scale-on-in-flight",
        type="bool",
        default="true",
        meaning="Count in-flight messages (received, not yet deleted: ApproximateNumberOfMessagesNotVisible) "
        "besides the visible ones, so work in progress keeps the workload up.",
        example="false",
    ),
    FieldDoc(
        field="scale-on-delayed",
        type="bool",
        default="false",
        meaning="Count delayed messages (ApproximateNumberOfMessagesDelayed) too.",
        example="true",
    ),
    *_credential_docs("access-key-id", "AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID", True),
    *_credential_docs("secret-access-key", "AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY", True),
    *_credential_docs("session-token", "AWS_SESSION_TOKEN", "AWS_SESSION_TOKEN", False),
    FieldDoc(
        field="credentials-secret",
        type="Secret name",
        default=None,
        meaning="Secret in the Deployment's namespace with keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and "
        "optionally AWS_SESSION_TOKEN; read only by the cluster-level waker (the agents use the *-env or "
        "*-file fields).",
        example="sqs-credentials",
    ),
    FieldDoc(
        field="timeout",
        type="duration",
        default="5s",
        meaning="Most time one measurement may take before it counts as failed.",
        example="3s",
    ),
)


def parse_aws_sqs_settings(trigger: str, raw: Mapping[str, str]) -> AwsSqsSettings:
    """``raw`` maps field names (no prefix) to strings; raises HintsInvalid listing every problem."""
    fields = FieldCollector(trigger, raw, (doc.field for doc in AWS_SQS_FIELDS), kind="aws-sqs")
    queue_url = fields.require("queue-url", _parse_queue_url, "")
    url_parts = urlsplit(queue_url)
    endpoint = fields.get("aws-endpoint", _parse_endpoint, None)
    if endpoint is None:
        endpoint = f"{url_parts.scheme}://{url_parts.netloc}" if queue_url else ""
    region = fields.get("aws-region", _parse_region, None)
    if region is None:
        region = region_of_host(urlsplit(endpoint).hostname or "") or region_of_host(url_parts.hostname or "")
        if region is None and queue_url:
            fields.problem(
                "aws-region",
                "a value: the queue URL's host names no region (only sqs.<region>.amazonaws.com does)",
            )
    settings = AwsSqsSettings(
        name=trigger,
        queue_url=queue_url,
        region=region or "",
        endpoint=endpoint,
        queue_length=fields.get("queue-length", _parse_length, 5.0),
        activation_queue_length=fields.get("activation-queue-length", _parse_activation, 0.0),
        scale_on_in_flight=fields.get("scale-on-in-flight", parse_bool, True),
        scale_on_delayed=fields.get("scale-on-delayed", parse_bool, False),
        access_key_id_env=fields.get("access-key-id-env", parse_env_name, None),
        access_key_id_file=fields.get("access-key-id-file", parse_file_path, None),
        secret_access_key_env=fields.get("secret-access-key-env", parse_env_name, None),
        secret_access_key_file=fields.get("secret-access-key-file", parse_file_path, None),
        session_token_env=fields.get("session-token-env", parse_env_name, None),
        session_token_file=fields.get("session-token-file", parse_file_path, None),
        credentials_secret=fields.get("credentials-secret", parse_secret_name, None),
        timeout=fields.get("timeout", _parse_timeout, 5.0),
    )
    for what, required in (("access-key-id", True), ("secret-access-key", True), ("session-token", False)):
        _check_one_source(fields, what, required=required)
    fields.finish()
    return settings


def _check_one_source(fields: FieldCollector, what: str, *, required: bool) -> None:
    env, file = f"{what}-env", f"{what}-file"
    if fields.has(env) and fields.has(file):
        fields.problem(file, f"either {file} or {env}, not both")
    elif required and not fields.has(env) and not fields.has(file):
        fields.problem(
            env,
            f"a value (or {file}): the agents sign with it (credentials-secret serves the waker only; "
            "pod identity (IRSA) is not supported)",
        )
