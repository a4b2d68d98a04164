"""Broker credentials handed to a source explicitly, never through the environment or a file.

The waker resolves a trigger's ``credentials-secret`` into one :class:`Credentials` per
(namespace, Secret) and gives it to the source it opens for that trigger; nothing is put
in ``os.environ`` (where a trigger of another namespace could name it with ``*-env``) and
no connection is shared across namespaces (docs/security.md, "The waker and tenant brokers").

Like ``errors.py`` this module imports nothing of ours but the error tree: the sources
import it to accept credentials.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Credentials"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Credentials:
    """A username and password read from one Secret. Its repr and str never show the values, so
    a log line or an Event that formats it by mistake leaks nothing."""

    namespace: str
    secret: str
    username: str = field(repr=False)
    password: str = field(repr=False)

    def __str__(self) -> str:
        return f"credentials from Secret {self.namespace}/{self.secret}"
