"""The azure-queue trigger's settings: parsed from hint strings into a frozen, typed object."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from tidescale._values import parse_choice, parse_duration, parse_float
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
    "AZURE_QUEUE_FIELDS",
    "CLOUD_SUFFIXES",
    "SECRET_KEYS",
    "AzureQueueSettings",
    "Strategy",
    "parse_azure_queue_settings",
]

Strategy = Literal["all", "visible-only"]

SECRET_KEYS = ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN")
"""The keys the waker reads from credentials-secret, the first present wins (Azure CLI's names)."""

CLOUD_SUFFIXES = {
    "AzurePublicCloud": "queue.core.windows.net",
    "AzureUSGovernmentCloud": "queue.core.usgovcloudapi.net",
    "AzureChinaCloud": "queue.core.chinacloudapi.cn",
}
"""KEDA's clouds and their Queue service suffixes; ``Private`` takes endpoint-suffix."""

_QUEUE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")
_ACCOUNT_NAME = re.compile(r"[a-z0-9]{3,24}|devstoreaccount1")
_SUFFIX = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+")
_CREDENTIALS = ("connection-string", "account-key", "sas-token")


@dataclass(frozen=True, kw_only=True, slots=True)
class AzureQueueSettings:
    """One azure-queue trigger. Hashable: it keys the waker's batches and the pool's connections."""

    name: str
    queue_name: str
    account_name: str
    endpoint: str
    """The Queue service URL, e.g. https://acct.queue.core.windows.net (a path for path-style URLs)."""
    queue_length: float = 5.0
    activation_queue_length: float = 0.0
    strategy: Strategy = "all"
    connection_string_env: str | None = None
    connection_string_file: str | None = None
    account_key_env: str | None = None
    account_key_file: str | None = None
    sas_token_env: str | None = None
    sas_token_file: str | None = None
    credentials_secret: str | None = None
    timeout: float = 5.0

    endpoint_field: Literal["endpoint", "account-name"] = "account-name"
    """The field the endpoint comes from (the waker names it when it refuses the address)."""

    @property
    def cluster_key(self) -> tuple[object, ...]:
        """Triggers with equal keys share one HTTP client and one set of credentials."""
        return (
            "azure-queue",
            self.endpoint,
            self.account_name,
            self.connection_string_env,
            self.connection_string_file,
            self.account_key_env,
            self.account_key_file,
            self.sas_token_env,
            self.sas_token_file,
        )


def _parse_queue_name(annotation: str, value: str) -> str:
    text = value.strip()
    if not _QUEUE_NAME.fullmatch(text):
        raise HintError(
            annotation, value, "an Azure queue name: 3 to 63 lower-case letters, digits and single hyphens"
        )
    return text


def _parse_account(annotation: str, value: str) -> str:
    text = value.strip()
    if not _ACCOUNT_NAME.fullmatch(text):
        raise HintError(annotation, value, "a storage account name: 3 to 24 lower-case letters and digits")
    return text


def _parse_endpoint(annotation: str, value: str) -> str:
    text = parse_url(annotation, value, schemes=("https", "http"))
    parts = urlsplit(text)
    if parts.query or parts.fragment or parts.username is not None:
        raise HintError(
            annotation,
            value,
            "the Queue service URL without query, e.g. https://acct.queue.core.windows.net or "
            "http://azurite:10001/devstoreaccount1",
        )
    return text.rstrip("/")


def _parse_cloud(annotation: str, value: str) -> str:
    return parse_choice(annotation, value, (*CLOUD_SUFFIXES, "Private"))


def _parse_suffix(annotation: str, value: str) -> str:
    text = value.strip().lower()
    if not _SUFFIX.fullmatch(text) or len(text) > 253:
        raise HintError(annotation, value, 'a DNS suffix such as "queue.core.windows.net"')
    return text


def _parse_strategy(annotation: str, value: str) -> Strategy:
    choice = parse_choice(annotation, value, ("all", "visible-only", "visibleonly"))
    return "all" if choice == "all" else "visible-only"


def _parse_length(annotation: str, value: str) -> float:
    return parse_float(annotation, value, minimum=0.0, exclusive_minimum=True)


def _parse_activation(annotation: str, value: str) -> float:
    return parse_float(annotation, value, minimum=0.0)


def _parse_timeout(annotation: str, value: str) -> float:
    return parse_duration(annotation, value, minimum=0.1, maximum=120.0)


def _secret_docs(what: str, meaning: str, key: str, example_env: str) -> tuple[FieldDoc, ...]:
    return (
        FieldDoc(
            field=f"{what}-env",
            type="env var name",
            default=None,
            meaning=f"Environment variable of the agent holding {meaning}.",
            example=example_env,
        ),
        FieldDoc(
            field=f"{what}-file",
            type="absolute path",
            default=None,
            meaning=f"File in the agent's container holding {meaning} (e.g. the mounted Secret key {key}).",
            example=f"/etc/azure-storage/{key}",
        ),
    )


AZURE_QUEUE_FIELDS: tuple[FieldDoc, ...] = (
    FieldDoc(
        field="queue-name",
        type="queue name",
        default=None,
        meaning="The queue to measure (required).",
        example="orders",
    ),
    FieldDoc(
        field="account-name",
        type="storage account name",
        default=None,
        meaning="The storage account (required: the address the waker checks comes from the hints, never "
        "from a connection string).",
        example="ordersstore",
    ),
    FieldDoc(
        field="cloud",
        type="AzurePublicCloud | AzureUSGovernmentCloud | AzureChinaCloud | Private",
        default="AzurePublicCloud",
        meaning="The Azure cloud, which gives the Queue service's DNS suffix (Private: set endpoint-suffix).",
        example="AzureUSGovernmentCloud",
    ),
    FieldDoc(
        field="endpoint-suffix",
        type="DNS suffix",
        default="the cloud's",
        meaning="The Queue service suffix: requests go to https://<account-name>.<endpoint-suffix>.",
        example="queue.core.windows.net",
    ),
    FieldDoc(
        field="endpoint",
        type="http(s) URL",
        default="https://<account-name>.<endpoint-suffix>",
        meaning="The Queue service URL itself, for emulators and custom domains (a path-style URL keeps the "
        "account in its path, as Azurite's http://host:10001/devstoreaccount1).",
        example="http://azurite.dev:10001/devstoreaccount1",
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
        field="queue-length-strategy",
        type="all | visible-only",
        default="all",
        meaning="all: the queue's approximate message count (visible and invisible). visible-only: peek up "
        "to 32 visible messages and count them; from 32 on, the approximate count (KEDA's visibleonly).",
        example="visible-only",
    ),
    *_secret_docs(
        "connection-string", "the storage connection string", "connection", "AZURE_STORAGE_CONNECTION_STRING"
    ),
    *_secret_docs("account-key", "the account key (base64)", "key", "AZURE_STORAGE_KEY"),
    *_secret_docs(
        "sas-token",
        "a SAS token (with read and process rights on the queue)",
        "sas",
        "AZURE_STORAGE_SAS_TOKEN",
    ),
    FieldDoc(
        field="credentials-secret",
        type="Secret name",
        default=None,
        meaning="Secret in the Deployment's namespace with key AZURE_STORAGE_CONNECTION_STRING, "
        "AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN (the first present is used); read only by the "
        "cluster-level waker (the agents use a *-env or *-file field).",
        example="azure-storage",
    ),
    FieldDoc(
        field="timeout",
        type="duration",
        default="5s",
        meaning="Most time one measurement may take before it counts as failed.",
        example="3s",
    ),
)


def parse_azure_queue_settings(trigger: str, raw: Mapping[str, str]) -> AzureQueueSettings:
    """``raw`` maps field names (no prefix) to strings; raises HintsInvalid listing every problem."""
    fields = FieldCollector(trigger, raw, (doc.field for doc in AZURE_QUEUE_FIELDS), kind="azure-queue")
    account = fields.require("account-name", _parse_account, "")
    cloud = fields.get("cloud", _parse_cloud, "AzurePublicCloud")
    suffix = fields.get("endpoint-suffix", _parse_suffix, None)
    if cloud == "Private" and suffix is None and not fields.has("endpoint"):
        fields.problem("endpoint-suffix", "a value with cloud Private (or an endpoint)")
    elif cloud != "Private" and suffix is not None and suffix != CLOUD_SUFFIXES[cloud]:
        fields.problem(
            "endpoint-suffix", f"no value, or cloud Private (cloud {cloud} gives {CLOUD_SUFFIXES[cloud]})"
        )
    endpoint = fields.get("endpoint", _parse_endpoint, None)
    if endpoint is not None and fields.has("endpoint-suffix"):
        fields.problem("endpoint-suffix", "no value together with endpoint (the endpoint names the host)")
    settings = AzureQueueSettings(
        name=trigger,
        queue_name=fields.require("queue-name", _parse_queue_name, ""),
        account_name=account,
        endpoint=endpoint or f"https://{account}.{suffix or CLOUD_SUFFIXES.get(cloud, '')}",
        endpoint_field="endpoint" if endpoint is not None else "account-name",
        queue_length=fields.get("queue-length", _parse_length, 5.0),
        activation_queue_length=fields.get("activation-queue-length", _parse_activation, 0.0),
        strategy=fields.get("queue-length-strategy", _parse_strategy, "all"),
        connection_string_env=fields.get("connection-string-env", parse_env_name, None),
        connection_string_file=fields.get("connection-string-file", parse_file_path, None),
        account_key_env=fields.get("account-key-env", parse_env_name, None),
        account_key_file=fields.get("account-key-file", parse_file_path, None),
        sas_token_env=fields.get("sas-token-env", parse_env_name, None),
        sas_token_file=fields.get("sas-token-file", parse_file_path, None),
        credentials_secret=fields.get("credentials-secret", parse_secret_name, None),
        timeout=fields.get("timeout", _parse_timeout, 5.0),
    )
    _check_credentials(fields)
    fields.finish()
    return settings


def _check_credentials(fields: FieldCollector) -> None:
    given = [
        f"{what}-{how}" for what in _CREDENTIALS for how in ("env", "file") if fields.has(f"{what}-{how}")
    ]
    if len(given) > 1:
        fields.problem(given[1], f"one credential source only, not both {given[0]} and {given[1]}")
    elif not given:
        fields.problem(
            "connection-string-env",
            "a value, or one of connection-string-file, account-key-env/-file, sas-token-env/-file: the "
            "agents sign with it (credentials-secret serves the waker only; workload identity is not "
            "supported)",
        )
