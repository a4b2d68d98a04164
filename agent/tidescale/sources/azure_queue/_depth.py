"""Azure Queue arithmetic and answers: pure functions of the service's answers and the settings.

``all`` (KEDA's default) counts the queue's ``x-ms-approximate-messages-count`` (Get Queue Metadata):
visible and invisible (received, not yet deleted) messages, as Azure counts them. ``visible-only``
peeks up to 32 messages (Peek Messages' most) and counts those; 32 or more falls back to the
approximate count, as KEDA does.

A count the answer lacks fails the measurement: unknown, not 0.
"""

from __future__ import annotations

import re

from tidescale.errors import BrokerAuthFailed, SourceError, SourceNotFound
from tidescale.sources.azure_queue._settings import AzureQueueSettings
from tidescale.sources.base import Measurement

__all__ = ["PEEK_MOST", "count_from_header", "count_peeked", "error_from_answer", "queue_measurement"]

PEEK_MOST = 32
"""Most messages one Peek Messages returns."""
_COUNT = re.compile(r"\d{1,15}")
_MESSAGE = re.compile(rb"<QueueMessage[\s>]")
_AUTH_CODES = (
    "AuthenticationFailed",
    "AuthorizationFailure",
    "AuthorizationPermissionMismatch",
    "AuthorizationResourceTypeMismatch",
    "AuthorizationServiceMismatch",
    "AuthorizationProtocolMismatch",
    "AuthorizationSourceIPMismatch",
    "InvalidAuthenticationInfo",
    "NoAuthenticationInformation",
)


def count_from_header(value: str | None, *, queue: str) -> int:
    """The x-ms-approximate-messages-count header's count; SourceError when absent or not digits."""
    if value is None:
        raise SourceError(
            f"the answer for queue {queue!r} has no x-ms-approximate-messages-count: its count is unknown, "
            "not 0"
        )
    if not _COUNT.fullmatch(value.strip()):
        raise SourceError(
            f"the answer for queue {queue!r} gives x-ms-approximate-messages-count as {value[:32]!r}: "
            "expected a count (digits)"
        )
    return int(value)


def count_peeked(body: bytes, *, queue: str) -> int:
    """How many messages a Peek Messages answer holds, counted without an XML parser (message
    texts are XML-escaped, so an element start cannot appear inside one)."""
    if b"<QueueMessagesList" not in body:
        raise SourceError(f"the Peek Messages answer for queue {queue!r} is not a QueueMessagesList")
    found = len(_MESSAGE.findall(body))
    if found > PEEK_MOST:
        raise SourceError(
            f"the Peek Messages answer for queue {queue!r} holds {found} messages: expected at most "
            f"{PEEK_MOST}"
        )
    return found


def queue_measurement(
    settings: AzureQueueSettings, *, peeked: int | None, approximate: int | None, taken_at: float
) -> Measurement:
    """The trigger's measurement: the peeked count when visible-only saw fewer than 32, else the
    approximate count (which the caller must then have read)."""
    if settings.strategy == "visible-only" and peeked is not None and peeked < PEEK_MOST:
        value, detail = float(peeked), {"visible": float(peeked)}
    elif approximate is not None:
        value, detail = float(approximate), {"approximate": float(approximate)}
    else:
        raise SourceError(f"no approximate count of queue {settings.queue_name!r} was read")
    return Measurement(
        trigger=settings.name,
        value=value,
        target=settings.queue_length,
        active=value > settings.activation_queue_length,
        detail=detail,
        taken_at=taken_at,
    )


def error_from_answer(status: int, code: str | None, *, where: str, queue: str) -> SourceError:
    """The error an Azure Storage error answer means (its ``x-ms-error-code`` header), for a person."""
    said = f"HTTP {status}" + (f", {code[:100]}" if code else "")
    if code == "QueueNotFound":
        return SourceNotFound(f"{where} has no queue {queue!r} ({said}): check queue-name")
    if code in ("ResourceNotFound", "AccountNotFound") or (status == 404 and code is None):
        return SourceNotFound(f"{where} has no such account or queue ({said}): check account-name, endpoint")
    if status in (401, 403) or (code is not None and code in _AUTH_CODES):
        return BrokerAuthFailed(
            f"{where} refused our credentials ({said}): check the credential source (connection-string-*, "
            "account-key-*, sas-token-*, or credentials-secret for the waker) and that it may read the queue"
        )
    return SourceError(f"{where} answered {said}")
