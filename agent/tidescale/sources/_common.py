"""Fields every broker source shares: their documentation rows and their parsers, written once.

A source's ``_settings`` module builds its ``FieldDoc`` tuple from these builders and parses
with these parsers, so that ``timeout``, ``credentials-secret``, a secret read from an
environment variable or a file (``password-env``/``password-file``, ``sasl-password-*``,
``tls-key-password-*``) and the TLS files read and check alike in every source, and the
generated hints reference words them alike.

The names matter beyond this module: the waker's guard (``tidescale._waker_guard``) finds the
fields that name a file or a variable by their attribute names (``*_file``, ``*_env``), and maps
the TLS ones (``tls_ca_file``, ``tls_cert_file``, ``tls_key_file``, ``tls_key_password_*``) to
the ``credentials-secret`` keys of :data:`TLS_SECRET_KEYS`. Pure: nothing here reads a file.
"""

from __future__ import annotations

from collections.abc import Sequence

from tidescale._values import parse_duration
from tidescale.sources._fields import FieldCollector, FieldDoc

__all__ = [
    "DEFAULT_TIMEOUT",
    "TLS_SECRET_KEYS",
    "check_one_secret_source",
    "credentials_secret_field",
    "parse_timeout",
    "secret_env_field",
    "secret_file_field",
    "timeout_field",
    "tls_file_fields",
    "tls_key_password_fields",
]

DEFAULT_TIMEOUT = 5.0
"""Seconds one measurement may take by default."""

TLS_SECRET_KEYS: dict[str, str] = {
    "tls-ca-file": "ca.crt",
    "tls-cert-file": "tls.crt",
    "tls-key-file": "tls.key",
    "tls-key-password-env": "tls.key-password",
    "tls-key-password-file": "tls.key-password",
}
"""The ``credentials-secret`` key the waker reads in place of each TLS field the agents read
(the names of a ``kubernetes.io/tls`` Secret, and of cert-manager's ``ca.crt``)."""


def parse_timeout(annotation: str, value: str) -> float:
    """``timeout``: a duration from 0.1 s to 2 min."""
    return parse_duration(annotation, value, minimum=0.1, maximum=120.0)


def timeout_field() -> FieldDoc:
    return FieldDoc(
        field="timeout",
        type="duration",
        default="5s",
        meaning="Most time one measurement may take before it counts as failed.",
        example="3s",
    )


def credentials_secret_field(
    *, keys: Sequence[str], example: str, note: str = "", tls: bool = False
) -> FieldDoc:
    """``credentials-secret``, naming the keys the waker reads in the Secret (``note`` ends the
    sentence, e.g. why the waker needs it; ``tls``: the source has the TLS fields of
    :func:`tls_file_fields`, whose keys are named too)."""
    named = ", ".join(keys[:-1]) + (f" and {keys[-1]}" if len(keys) > 1 else keys[0])
    tls_keys = (
        " and, for each TLS field the trigger sets, ca.crt (tls-ca-file), tls.crt and tls.key "
        "(tls-cert-file, tls-key-file) and tls.key-password (an encrypted key's password)"
        if tls
        else ""
    )
    return FieldDoc(
        field="credentials-secret",
        type="Secret name",
        default=None,
        meaning=f"Secret in the Deployment's namespace with keys {named}{tls_keys}; read only by the "
        f"cluster-level waker{note}.",
        example=example,
    )


def _waker_key(field: str) -> str:
    """The sentence a TLS field's row ends with (which credentials-secret key the waker reads);
    empty for other fields."""
    if field not in TLS_SECRET_KEYS:
        return ""
    return f" The waker reads key {TLS_SECRET_KEYS[field]} of credentials-secret instead."


def secret_env_field(field: str, *, holding: str, example: str) -> FieldDoc:
    """A ``*-env`` field: the agent's environment variable holding ``holding`` (e.g. "the password")."""
    return FieldDoc(
        field=field,
        type="env var name",
        default=None,
        meaning=f"Environment variable of the agent holding {holding}.{_waker_key(field)}",
        example=example,
    )


def secret_file_field(field: str, *, holding: str, example: str) -> FieldDoc:
    """A ``*-file`` field: the file in the agent's container holding ``holding``."""
    return FieldDoc(
        field=field,
        type="absolute path",
        default=None,
        meaning=f"File in the agent's container holding {holding}.{_waker_key(field)}",
        example=example,
    )


def tls_key_password_fields(*, env_example: str, file_example: str) -> tuple[FieldDoc, FieldDoc]:
    """``tls-key-password-env`` and ``tls-key-password-file``: the password of an encrypted key."""
    holding = "the password of an encrypted tls-key-file"
    return (
        secret_env_field("tls-key-password-env", holding=holding, example=env_example),
        secret_file_field("tls-key-password-file", holding=holding, example=file_example),
    )


def tls_file_fields(
    *, peer: str, ca_needs: str, pair_needs: str, directory: str
) -> tuple[FieldDoc, FieldDoc, FieldDoc]:
    """``tls-ca-file``, ``tls-cert-file`` and ``tls-key-file``. ``peer``: what the CA verifies ("the
    brokers"); ``ca_needs``/``pair_needs``: what each needs besides, in parentheses (``{other}`` in
    ``pair_needs`` is the other file of the pair); ``directory``: where the examples mount them."""
    key_needs, cert_needs = pair_needs.format(other="tls-cert-file"), pair_needs.format(other="tls-key-file")
    return (
        FieldDoc(
            field="tls-ca-file",
            type="absolute path",
            default=None,
            meaning=f"CA bundle to verify {peer} ({ca_needs}); absent: the system's CAs."
            f"{_waker_key('tls-ca-file')}",
            example=f"{directory}/ca.crt",
        ),
        FieldDoc(
            field="tls-cert-file",
            type="absolute path",
            default=None,
            meaning=f"Client certificate for mutual TLS ({cert_needs}).{_waker_key('tls-cert-file')}",
            example=f"{directory}/tls.crt",
        ),
        FieldDoc(
            field="tls-key-file",
            type="absolute path",
            default=None,
            meaning=f"Client private key for mutual TLS, PEM, encrypted or not ({key_needs})."
            f"{_waker_key('tls-key-file')}",
            example=f"{directory}/tls.key",
        ),
    )


def check_one_secret_source(fields: FieldCollector, env_field: str, file_field: str) -> None:
    """A secret comes from one place: ``env_field`` and ``file_field`` together are a problem."""
    if fields.has(env_field) and fields.has(file_field):
        fields.problem(file_field, f"either {file_field} or {env_field}, not both")
