"""The PostgreSQL trigger's settings: parsed from hint strings into a frozen, typed object.

The query is tenant input run against the tenant's database as the tenant's user: it is bounded
in length here, and the source runs it as one prepared statement (one command, no ``;``-chained
second one), inside a READ ONLY transaction, with ``statement_timeout`` set to the
trigger's timeout. The database user should be read-only besides (docs/security.md): the READ ONLY
transaction is the second guard, not the only one.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from tidescale._values import parse_choice, parse_duration, parse_float, parse_int
from tidescale.errors import HintError
from tidescale.sources._fields import (
    FieldCollector,
    FieldDoc,
    parse_env_name,
    parse_file_path,
    parse_secret_name,
)

__all__ = [
    "MAX_QUERY_BYTES",
    "POSTGRESQL_FIELDS",
    "PostgreSQLSettings",
    "SslMode",
    "parse_postgresql_settings",
]

SslMode = Literal["disable", "prefer", "require", "verify-ca", "verify-full"]
SSL_MODES: tuple[SslMode, ...] = ("disable", "prefer", "require", "verify-ca", "verify-full")

MAX_QUERY_BYTES = 4096
"""Longest query a trigger may give, in UTF-8 bytes: the hints' own bound on any value
(``hints.MAX_HINT_BYTES``), repeated here so the parser states it."""

_HOST_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?")
_NAME = re.compile(r"[^\x00\s]{1,63}")


@dataclass(frozen=True, kw_only=True, slots=True)
class PostgreSQLSettings:
    """One PostgreSQL trigger. Hashable: it keys the per-trigger results of a shared connection."""

    name: str
    host: str = ""
    port: int = 5432
    database: str = ""
    username: str = ""
    password_env: str | None = None
    password_file: str | None = None
    credentials_secret: str | None = None
    sslmode: SslMode = "prefer"
    tls_ca_file: str | None = None
    query: str = ""
    value: float = 1.0
    activation_value: float = 0.0
    timeout: float = 5.0

    @property
    def cluster_key(self) -> tuple[object, ...]:
        """Triggers with equal keys share one connection: one server, database and login."""
        return (
            "postgresql",
            self.host,
            self.port,
            self.database,
            self.username,
            self.password_env,
            self.password_file,
            self.sslmode,
            self.tls_ca_file,
        )


def _parse_host(annotation: str, value: str) -> str:
    text = value.strip()
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        pass
    if not _HOST_NAME.fullmatch(text) or len(text) > 253:
        raise HintError(
            annotation, value, 'a host name or address, e.g. "postgres.db" (the port goes in port)'
        )
    return text


def _parse_port(annotation: str, value: str) -> int:
    return parse_int(annotation, value, minimum=1, maximum=65535)


def _parse_database(annotation: str, value: str) -> str:
    text = value.strip()
    if not _NAME.fullmatch(text):
        raise HintError(annotation, value, "a database name (1 to 63 characters, no blanks)")
    return text


def _parse_username(annotation: str, value: str) -> str:
    text = value.strip()
    if not _NAME.fullmatch(text):
        raise HintError(annotation, value, "a database user name (1 to 63 characters, no blanks)")
    return text


def _parse_sslmode(annotation: str, value: str) -> SslMode:
    choice = parse_choice(annotation, value, SSL_MODES)
    return next(mode for mode in SSL_MODES if mode == choice)


def _parse_query(annotation: str, value: str) -> str:
    text = value.strip()
    if not text or len(text.encode()) > MAX_QUERY_BYTES or "\x00" in text:
        raise HintError(
            annotation, value[:64], f"one SQL query returning one number (1 to {MAX_QUERY_BYTES} bytes)"
        )
    return text.rstrip(";").rstrip()


def _parse_value(annotation: str, value: str) -> float:
    return parse_float(annotation, value, minimum=0.0, exclusive_minimum=True)


def _parse_activation(annotation: str, value: str) -> float:
    return parse_float(annotation, value, minimum=0.0)


def _parse_timeout(annotation: str, value: str) -> float:
    return parse_duration(annotation, value, minimum=0.1, maximum=120.0)


POSTGRESQL_FIELDS: tuple[FieldDoc, ...] = (
    FieldDoc(
        field="host",
        type="host name or address",
        default=None,
        meaning="The PostgreSQL server (required).",
        example="postgres.db",
    ),
    FieldDoc(field="port", type="port number", default="5432", meaning="The server's port.", example="5433"),
    FieldDoc(
        field="database",
        type="database name",
        default=None,
        meaning="The database the query runs in (required).",
        example="orders",
    ),
    FieldDoc(
        field="username",
        type="database user name",
        default=None,
        meaning="The user the query runs as (required). Give it read access to what the query reads and "
        "nothing more: the query is run inside a READ ONLY transaction too, but the user's own rights are "
        "the first guard.",
        example="autoscaler",
    ),
    FieldDoc(
        field="password-env",
        type="env var name",
        default=None,
        meaning="Environment variable of the agent holding the password.",
        example="PG_PASSWORD",
    ),
    FieldDoc(
        field="password-file",
        type="absolute path",
        default=None,
        meaning="File in the agent's container holding the password (e.g. a mounted Secret).",
        example="/etc/pg-credentials/password",
    ),
    FieldDoc(
        field="credentials-secret",
        type="Secret name",
        default=None,
        meaning="Secret in the Deployment's namespace with key password (and optionally username, which "
        "then replaces the username field); read only by the cluster-level waker.",
        example="pg-credentials",
    ),
    FieldDoc(
        field="sslmode",
        type="disable | prefer | require | verify-ca | verify-full",
        default="prefer",
        meaning="TLS as libpq's sslmode: prefer tries TLS and falls back to plain; require encrypts without "
        "verifying; verify-ca and verify-full verify the server's certificate (verify-full its name too).",
        example="verify-full",
    ),
    FieldDoc(
        field="tls-ca-file",
        type="absolute path",
        default=None,
        meaning="CA bundle to verify the server with (needs sslmode verify-ca or verify-full); absent: the "
        "system's CAs.",
        example="/etc/pg-tls/ca.crt",
    ),
    FieldDoc(
        field="query",
        type="SQL",
        default=None,
        meaning=f"One query returning one row of one numeric column (required; at most {MAX_QUERY_BYTES} "
        "bytes). Run as one prepared statement in a READ ONLY transaction with statement_timeout = "
        "timeout. No row, several rows, NULL, a negative number or a non-numeric column is a failed reading.",
        example="SELECT count(*) FROM jobs WHERE state = 'queued'",
    ),
    FieldDoc(
        field="value",
        type="number > 0",
        default=None,
        meaning="What one replica is expected to handle: desired replicas = ceil(query result / value) "
        "(required, as KEDA's targetQueryValue).",
        example="10",
    ),
    FieldDoc(
        field="activation-value",
        type="number >= 0",
        default="0",
        meaning="The trigger is active (wakes the workload from zero) when the query result is above this.",
        example="1",
    ),
    FieldDoc(
        field="timeout",
        type="duration",
        default="5s",
        meaning="The query's statement_timeout on the server, which cancels a slow query itself; the "
        "measurement as a whole (connecting, the transaction) may take 2s more before it counts as failed.",
        example="3s",
    ),
)


def parse_postgresql_settings(trigger: str, raw: Mapping[str, str]) -> PostgreSQLSettings:
    """``raw`` maps field names (no prefix) to strings; raises HintsInvalid listing every problem."""
    fields = FieldCollector(trigger, raw, (doc.field for doc in POSTGRESQL_FIELDS), kind="postgresql")
    settings = PostgreSQLSettings(
        name=trigger,
        host=fields.require("host", _parse_host, "localhost"),
        port=fields.get("port", _parse_port, 5432),
        database=fields.require("database", _parse_database, "postgres"),
        username=fields.require("username", _parse_username, "postgres"),
        password_env=fields.get("password-env", parse_env_name, None),
        password_file=fields.get("password-file", parse_file_path, None),
        credentials_secret=fields.get("credentials-secret", parse_secret_name, None),
        sslmode=fields.get("sslmode", _parse_sslmode, "prefer"),
        tls_ca_file=fields.get("tls-ca-file", parse_file_path, None),
        query=fields.require("query", _parse_query, "SELECT 0"),
        value=fields.require("value", _parse_value, 1.0),
        activation_value=fields.get("activation-value", _parse_activation, 0.0),
        timeout=fields.get("timeout", _parse_timeout, 5.0),
    )
    if settings.password_env is not None and settings.password_file is not None:
        fields.problem("password-file", "either password-file or password-env, not both")
    if settings.tls_ca_file is not None and settings.sslmode not in ("verify-ca", "verify-full"):
        fields.problem("tls-ca-file", "sslmode verify-ca or verify-full to go with it")
    fields.finish()
    return settings
