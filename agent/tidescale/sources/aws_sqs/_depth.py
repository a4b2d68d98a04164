"""SQS arithmetic and answers: pure functions of GetQueueAttributes' answer and the trigger's settings.

The metric is KEDA's: ApproximateNumberOfMessages (visible), plus ApproximateNumberOfMessagesNotVisible
(in flight: received and not yet deleted) with scale-on-in-flight (the default), plus
ApproximateNumberOfMessagesDelayed with scale-on-delayed. Only the attributes counted are asked
for, and one that the answer lacks fails the measurement: a count nobody has seen is unknown, not 0.

The answers are the JSON protocol's (``X-Amz-Target: AmazonSQS.GetQueueAttributes``): a body
``{"Attributes": {"ApproximateNumberOfMessages": "12", ...}}``, or an error
``{"__type": "com.amazonaws.sqs#QueueDoesNotExist", "message": "..."}`` whose type names what
went wrong (:func:`error_from_answer`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from tidescale.errors import BrokerAuthFailed, SourceError, SourceNotFound
from tidescale.sources.aws_sqs._settings import AwsSqsSettings
from tidescale.sources.base import Measurement

__all__ = [
    "DELAYED",
    "IN_FLIGHT",
    "VISIBLE",
    "attribute_names",
    "attributes_from_answer",
    "error_from_answer",
    "sqs_measurement",
]

VISIBLE = "ApproximateNumberOfMessages"
IN_FLIGHT = "ApproximateNumberOfMessagesNotVisible"
DELAYED = "ApproximateNumberOfMessagesDelayed"
_DETAIL_KEYS = {VISIBLE: "visible", IN_FLIGHT: "in-flight", DELAYED: "delayed"}
_COUNT = re.compile(r"\d{1,15}")
"""An attribute's value: digits, at most 15 (SQS counts stay far below; a longer one is refused)."""

_AUTH_ERRORS = (
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "UnrecognizedClient",
    "AccessDenied",
    "ExpiredToken",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "InvalidSecurity",
    "InvalidSignature",
    "RequestExpired",
)
_MISSING_QUEUE = ("QueueDoesNotExist", "NonExistentQueue")


def attribute_names(settings: AwsSqsSettings) -> tuple[str, ...]:
    """The attributes the trigger counts, in the order KEDA asks for them."""
    names = [VISIBLE]
    if settings.scale_on_in_flight:
        names.append(IN_FLIGHT)
    if settings.scale_on_delayed:
        names.append(DELAYED)
    return tuple(names)


def attributes_from_answer(answer: object) -> dict[str, str]:
    """The ``Attributes`` object of a decoded GetQueueAttributes answer; SourceError if it has none."""
    attributes = answer.get("Attributes") if isinstance(answer, dict) else None
    if not isinstance(attributes, dict):
        raise SourceError("the SQS answer to GetQueueAttributes has no Attributes object")
    return {str(k): v for k, v in attributes.items() if isinstance(v, str)}


def sqs_measurement(attributes: Mapping[str, str], settings: AwsSqsSettings, taken_at: float) -> Measurement:
    """The trigger's measurement from the queue's attributes (see the module docs)."""
    detail: dict[str, float] = {}
    for name in attribute_names(settings):
        raw = attributes.get(name)
        if raw is None:
            raise SourceError(
                f"the SQS answer for queue {settings.queue_name!r} lacks {name}: its count is unknown, not 0"
            )
        if not _COUNT.fullmatch(raw):
            raise SourceError(
                f"the SQS answer for queue {settings.queue_name!r} gives {name} as {raw[:32]!r}: expected "
                "a count (digits)"
            )
        detail[_DETAIL_KEYS[name]] = float(int(raw))
    value = sum(detail.values())
    return Measurement(
        trigger=settings.name,
        value=value,
        target=settings.queue_length,
        active=value > settings.activation_queue_length,
        detail=detail,
        taken_at=taken_at,
    )


def error_from_answer(status: int, answer: object, *, where: str, queue: str) -> SourceError:
    """The error an SQS error answer means, named for a person. ``answer`` is the decoded JSON body
    (or None when it was not JSON); only the error type and the first 200 characters of the
    server's message are shown (the message is the server's, never a credential of ours)."""
    kind, message = "", ""
    if isinstance(answer, dict):
        kind = str(answer.get("__type") or answer.get("code") or "").rsplit("#", 1)[-1][:100]
        message = str(answer.get("message") or answer.get("Message") or "")[:200]
    said = f"{kind}: {message}" if kind and message else kind or message or "no error body"
    if any(name in kind for name in _MISSING_QUEUE):
        return SourceNotFound(
            f"{where} has no queue {queue!r} ({said}): check queue-url (the account and the queue name) and "
            "aws-region"
        )
    if status in (401, 403) or any(name in kind for name in _AUTH_ERRORS):
        return BrokerAuthFailed(
            f"{where} refused our credentials (HTTP {status}, {said}): check the access key sources "
            "(access-key-id-*, secret-access-key-*, session-token-*, or credentials-secret for the waker), "
            "aws-region, and that the key may call sqs:GetQueueAttributes"
        )
    return SourceError(f"{where} answered GetQueueAttributes with HTTP {status} ({said})")
