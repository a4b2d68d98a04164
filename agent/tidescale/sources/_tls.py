"""The TLS client context of a broker connection, from the agent's files or the waker's Secret.

The agents in the pod read the trigger's ``tls-ca-file``, ``tls-cert-file``, ``tls-key-file``
and the key's password (``tls-key-password-env`` / ``-file``): files the pod mounts. The
cluster-level waker reads no file a trigger names (it would be its own); it is given the
trigger's ``credentials-secret`` instead, and uses the keys of
``_common.TLS_SECRET_KEYS``: ``ca.crt``, ``tls.crt``, ``tls.key``, ``tls.key-password``.

Nothing from a Secret is written to disk:

- the CA goes to ``SSLContext.load_verify_locations(cadata=...)``, which takes PEM text;
- the client certificate and key must be paths for ``SSLContext.load_cert_chain`` (OpenSSL
  reads them through a BIO on a file; Python exposes no in-memory variant). Each is written to
  an anonymous memory file (``os.memfd_create``) and handed over as ``/proc/self/fd/N``: the
  file has no name in any filesystem, lives in this process's memory, is readable only through
  this process's descriptor table (the same uid, under ptrace rules), and is gone when the
  descriptor closes, right after loading; the descriptor is close-on-exec. A private tmpfs file
  removed at once would have a name, however briefly, that any process of the same uid on that
  mount could open, and would stay on the mount if the process died between write and unlink.

An encrypted key with no password is refused by name rather than left to OpenSSL, whose default
is to prompt on the terminal. Errors are BrokerAuthFailed naming what to check, never a value.
Imported by a source's ``_source`` module (so by the first connection, not at agent start).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from pathlib import Path

from tidescale.credentials import Credentials
from tidescale.errors import BrokerAuthFailed

__all__ = ["ca_advice", "client_context", "read_key_password"]


class _NoPassword(Exception):
    """Raised by the password callback: the key is encrypted and no password was given."""


def client_context(
    *,
    where: str,
    credentials: Credentials | None,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    key_password: str | None = None,
) -> ssl.SSLContext:
    """A context verifying the server (system CAs, or the given CA) and presenting the client
    certificate when there is one. With ``credentials`` (the waker), the Secret's keys are used and
    the file arguments must be None; without, the files. ``where`` names the broker in errors."""
    if credentials is not None:
        return _from_secret(credentials, where)
    try:
        context = ssl.create_default_context(cafile=ca_file)
        if cert_file is not None:
            context.load_cert_chain(cert_file, key_file, password=_password(key_password))
    except _NoPassword as exc:
        raise BrokerAuthFailed(
            f"the client key {key_file} for {where} is encrypted and no password was given: set "
            "tls-key-password-env or tls-key-password-file"
        ) from exc
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise BrokerAuthFailed(
            f"cannot load the TLS files for {where} ({_reason(exc)}): check tls-ca-file, tls-cert-file, "
            "tls-key-file and, for an encrypted key, tls-key-password-env or tls-key-password-file"
        ) from exc
    return context


def ca_advice(credentials: Credentials | None) -> str:
    """Where the CA that verifies the broker came from, for an "is not trusted" error."""
    if credentials is not None:
        return (
            f"key ca.crt of credentials-secret {credentials.namespace}/{credentials.secret} (the CA that "
            "signed the broker's certificate)"
        )
    return "tls-ca-file (the CA that signed the broker's certificate)"


def read_key_password(env_name: str | None, file_path: str | None) -> str | None:
    """The client key's password from the agent's environment or a mounted file; None when neither
    is named. Unset or unreadable: BrokerAuthFailed naming the field."""
    if file_path is not None:
        try:
            return Path(file_path).read_text().strip()
        except OSError as exc:
            raise BrokerAuthFailed(
                f"cannot read the key password file {file_path} (tls-key-password-file): {exc.strerror}"
            ) from exc
    if env_name is not None:
        value = os.environ.get(env_name)
        if value is None:
            raise BrokerAuthFailed(
                f"the environment variable {env_name} (named by tls-key-password-env) is not set in the agent"
            )
        return value
    return None


def _from_secret(credentials: Credentials, where: str) -> ssl.SSLContext:
    secret = f"credentials-secret {credentials.namespace}/{credentials.secret}"
    context = ssl.create_default_context()
    ca = credentials.get("ca.crt")
    try:
        if ca is not None:
            context.load_verify_locations(cadata=ca)
    except (ssl.SSLError, ValueError) as exc:
        raise BrokerAuthFailed(
            f"key ca.crt of {secret} is not a PEM certificate bundle ({_reason(exc)}); expected the CA that "
            f"signed the certificate of {where}"
        ) from exc
    cert = credentials.get("tls.crt")
    if cert is None:
        return context
    key = credentials.require("tls.key")  # names the Secret and the key when missing
    try:
        with _memory_file("tls.crt", cert) as cert_path, _memory_file("tls.key", key) as key_path:
            context.load_cert_chain(
                cert_path, key_path, password=_password(credentials.get("tls.key-password"))
            )
    except _NoPassword as exc:
        raise BrokerAuthFailed(
            f"key tls.key of {secret} is an encrypted private key and the Secret has no key "
            "tls.key-password: add its password there"
        ) from exc
    except (OSError, ssl.SSLError, ValueError) as exc:
        if "ENCRYPTED" in key and credentials.get("tls.key-password") is not None:
            raise BrokerAuthFailed(
                f"cannot decrypt key tls.key of {secret} for {where} ({_reason(exc)}): check key "
                "tls.key-password (the password of that key) and that tls.crt is its certificate"
            ) from exc
        raise BrokerAuthFailed(
            f"cannot load the client certificate of {secret} for {where} ({_reason(exc)}): expected keys "
            "tls.crt (PEM certificate) and tls.key (its PEM private key), and tls.key-password when the key "
            "is encrypted"
        ) from exc
    return context


class _memory_file:  # noqa: N801  (used as a context manager, like open)
    """An anonymous memory file holding ``text``; its path is ``/proc/self/fd/N`` while open."""

    def __init__(self, name: str, text: str) -> None:
        self._name, self._data, self._fd = name, text.encode(), -1

    def __enter__(self) -> str:
        self._fd = os.memfd_create(f"tidescale-{self._name}", os.MFD_CLOEXEC)
        view = memoryview(self._data)
        while view:
            view = view[os.write(self._fd, view) :]
        return f"/proc/self/fd/{self._fd}"

    def __exit__(self, *_: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _password(password: str | None) -> Callable[[], str]:
    """OpenSSL calls this only for an encrypted key: the password, or _NoPassword (never a prompt)."""

    def give() -> str:
        if password is None:
            raise _NoPassword
        return password

    return give


def _reason(exc: BaseException) -> str:
    """The library's reason, without echoing anything it read (OpenSSL names no key material)."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__
