"""The errors tidescale raises, in one tree.

Every exception the package lets out is a :class:`TidescaleError`; third-party
exceptions (httpx, aiokafka, aio-pika) are translated where they are caught and
chained with ``from`` so the original stays in the traceback::

    TidescaleError
    ├── HintError                 one bad annotation: which, what was given, what was expected
    │   └── HintsInvalid          all problems of one Deployment's hints at once
    ├── SourceError               a measurement failed; the policy engine counts it as a failure
    │   ├── BrokerUnreachable     no connection to the broker (host, port)
    │   ├── BrokerAuthFailed      the broker refused our credentials
    │   ├── SourceNotFound        unknown topic, consumer group, queue or vhost
    │   └── SourceTimeout         the broker did not answer in time
    ├── KubeError                 the API server said no (built from its Status body)
    │   ├── KubeUnauthorized      401
    │   ├── KubeForbidden         403: names the verb and resource when the Status does
    │   ├── KubeNotFound          404
    │   ├── KubeConflict          409: a stale resourceVersion or an existing object
    │   ├── KubeInvalid           422
    │   └── KubeUnavailable       no answer, or 5xx / 429
    └── LeadershipLost            a fenced write was attempted without holding the Lease
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "BrokerAuthFailed",
    "BrokerUnreachable",
    "HintError",
    "HintsInvalid",
    "KubeConflict",
    "KubeError",
    "KubeForbidden",
    "KubeInvalid",
    "KubeNotFound",
    "KubeUnauthorized",
    "KubeUnavailable",
    "LeadershipLost",
    "SourceError",
    "SourceNotFound",
    "SourceTimeout",
    "TidescaleError",
]


class TidescaleError(Exception):
    """Base of every error tidescale raises."""


class HintError(TidescaleError):
    """One annotation that does not parse: names it, the value given and the form expected."""

    def __init__(self, annotation: str, value: str | None, expected: str) -> None:
        self.annotation = annotation
        self.value = value
        self.expected = expected
        given = "is missing" if value is None else f"is {value!r}"
        super().__init__(f"{annotation} {given}: expected {expected}")


class HintsInvalid(TidescaleError):
    """Every problem found in one set of hints, so a person can fix them in one go."""

    def __init__(self, problems: tuple[HintError, ...]) -> None:
        self.problems = problems
        lines = "\n".join(f"- {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in tidescale hints:\n{lines}")


class SourceError(TidescaleError):
    """A measurement failed. ``trigger`` names the trigger, when known."""

    def __init__(self, message: str, *, trigger: str | None = None) -> None:
        self.trigger = trigger
        super().__init__(message if trigger is None else f"trigger {trigger}: {message}")


class BrokerUnreachable(SourceError):
    """No connection to the broker."""


class BrokerAuthFailed(SourceError):
    """The broker refused the credentials."""


class SourceNotFound(SourceError):
    """The broker does not know the topic, group, queue or vhost."""


class SourceTimeout(SourceError):
    """The broker did not answer within the trigger's timeout."""


class KubeError(TidescaleError):
    """The API server refused a request; fields come from its ``Status`` body."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        self.code = code
        self.reason = reason
        self.details: Mapping[str, Any] = details or {}
        super().__init__(message)

    @classmethod
    def from_status(cls, code: int, body: Mapping[str, Any] | None, *, what: str) -> KubeError:
        """The error for an HTTP ``code`` and the API server's Status ``body`` (may be absent)."""
        body = body or {}
        message = str(body.get("message") or f"HTTP {code}")
        error_class = _BY_CODE.get(code, KubeUnavailable if code >= 500 or code == 429 else KubeError)
        return error_class(
            f"{what}: {message}",
            code=code,
            reason=body.get("reason") if isinstance(body.get("reason"), str) else None,
            details=body.get("details") if isinstance(body.get("details"), Mapping) else None,
        )


class KubeUnauthorized(KubeError):
    """401: the credentials were not accepted."""


class KubeForbidden(KubeError):
    """403: RBAC does not allow the request."""


class KubeNotFound(KubeError):
    """404: the object does not exist."""


class KubeConflict(KubeError):
    """409: the object changed since it was read, or already exists."""


class KubeInvalid(KubeError):
    """422: the API server rejected the object as invalid."""


class KubeUnavailable(KubeError):
    """No answer from the API server, or a 5xx / 429."""


class LeadershipLost(TidescaleError):
    """A fenced write was attempted while the Lease is not provably held."""


_BY_CODE: dict[int, type[KubeError]] = {
    401: KubeUnauthorized,
    403: KubeForbidden,
    404: KubeNotFound,
    409: KubeConflict,
    422: KubeInvalid,
}
