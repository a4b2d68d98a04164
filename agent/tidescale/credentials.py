"""Broker credentials handed to a source explicitly, never through the environment or a file.

The waker resolves a trigger's ``credentials-secret`` into one :class:`Credentials` per
(namespace, Secret) and gives it to the source it opens for that trigger; nothing is put
in ``os.environ`` (where a trigger of another namespace could name it with ``*-env``) and
no connection is shared across namespaces (docs/security.md, "The waker and tenant brokers").

A Credentials holds every text key of the Secret; each source reads the keys it documents
(``username`` and ``password`` for Kafka and RabbitMQ; the hints reference lists each source's)
with :meth:`Credentials.require`, which names the Secret and the key when one is missing.

Like ``errors.py`` this module imports nothing of ours but the error tree: the sources
import it to accept credentials.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tidescale.errors import BrokerAuthFailed

__all__ = ["Credentials", "CredentialsUnusable"]


class CredentialsUnusable(BrokerAuthFailed):
    """A ``credentials-secret`` that cannot be used: missing, forbidden, without a key, not UTF-8."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Credentials:
    """The text keys of one Secret. Its repr and str never show the values, so a log line or an
    Event that formats it by mistake leaks nothing. Hashable: it keys the waker's connections."""

    namespace: str
    secret: str
    entries: tuple[tuple[str, str], ...] = field(repr=False, default=())
    """(key, value) of every key whose value is UTF-8 text, sorted by key."""
    not_text: tuple[str, ...] = ()
    """Keys whose value is not UTF-8 text (named in the error when a source needs one)."""

    @classmethod
    def of(
        cls, namespace: str, secret: str, values: dict[str, str], not_text: tuple[str, ...] = ()
    ) -> Credentials:
        return cls(
            namespace=namespace, secret=secret, entries=tuple(sorted(values.items())), not_text=not_text
        )

    def get(self, key: str) -> str | None:
        """The value of ``key``, or None when the Secret has no such text key."""
        for name, value in self.entries:
            if name == key:
                return value
        return None

    def require(self, key: str) -> str:
        """The value of ``key``; CredentialsUnusable naming the Secret and the key otherwise."""
        value = self.get(key)
        if value is not None:
            return value
        if key in self.not_text:
            raise CredentialsUnusable(f"{self._where}: the value of key {key!r} is not UTF-8 text")
        raise CredentialsUnusable(f"{self._where} has no key {key!r}")

    @property
    def _where(self) -> str:
        return f"credentials-secret {self.namespace}/{self.secret}"

    @property
    def username(self) -> str:
        return self.require("username")

    @property
    def password(self) -> str:
        return self.require("password")

    def __str__(self) -> str:
        return f"credentials from Secret {self.namespace}/{self.secret}"
