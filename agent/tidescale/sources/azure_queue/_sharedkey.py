"""Azure Storage Shared Key authorization for the Queue service, written out (pure: hmac, base64).

Why by hand: Get Queue Metadata and Peek Messages are two GETs; the Azure SDK (azure-storage-queue
with azure-core) would be one more large dependency tree for them. The scheme is specified in
"Authorize with Shared Key" (Azure Storage REST API, version 2009-09-19 and later):

    StringToSign = VERB \\n Content-Encoding \\n Content-Language \\n Content-Length \\n Content-MD5 \\n
                   Content-Type \\n Date \\n If-Modified-Since \\n If-Match \\n If-None-Match \\n
                   If-Unmodified-Since \\n Range \\n CanonicalizedHeaders CanonicalizedResource
    Authorization = "SharedKey <account>:" + Base64(HMAC-SHA256(Base64Decode(key), StringToSign))

CanonicalizedHeaders: every ``x-ms-`` header, lower-cased, sorted, ``name:value\\n``.
CanonicalizedResource: ``/<account><path>`` then, per query parameter sorted by lower-cased name,
``\\n<name>:<value>`` (values comma-joined). A path-style URL (the emulator's
``http://host:10001/devstoreaccount1/q``) keeps the account in its path, so it appears twice.
Checked by tests/unit/test_azure_queue.py and, for real, by Azurite, which verifies the signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from datetime import datetime

from tidescale.errors import BrokerAuthFailed

__all__ = ["authorization", "connection_string_credentials", "decode_key", "rfc1123", "string_to_sign"]

_STANDARD = (
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
)


def rfc1123(moment: datetime) -> str:
    """``Fri, 26 Jun 2015 23:39:12 GMT``: the x-ms-date form of an aware UTC datetime."""
    days = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    return (
        f"{days[moment.weekday()]}, {moment.day:02d} {months[moment.month - 1]} {moment.year} "
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d} GMT"
    )


def string_to_sign(
    *, method: str, account: str, path: str, query: Iterable[tuple[str, str]], headers: Mapping[str, str]
) -> str:
    """The Shared Key string to sign of one request (``headers`` with any case; ``path`` as sent)."""
    lower = {name.lower(): value for name, value in headers.items()}
    standard = [lower.get(name, "") for name in _STANDARD]
    if standard[2] == "0":
        standard[2] = ""  # Content-Length 0 signs as empty (version 2015-02-21 and later)
    canonical_headers = "".join(
        f"{name}:{' '.join(lower[name].split())}\n" for name in sorted(lower) if name.startswith("x-ms-")
    )
    grouped: dict[str, list[str]] = {}
    for name, value in query:
        grouped.setdefault(name.lower(), []).append(value)
    resource = f"/{account}{path or '/'}" + "".join(
        f"\n{name}:{','.join(sorted(grouped[name]))}" for name in sorted(grouped)
    )
    return "\n".join((method.upper(), *standard)) + "\n" + canonical_headers + resource


def authorization(account: str, key: bytes, text: str) -> str:
    """The Authorization header value: ``SharedKey <account>:<signature>`` (``key`` decoded)."""
    signature = base64.b64encode(hmac.new(key, text.encode(), hashlib.sha256).digest()).decode()
    return f"SharedKey {account}:{signature}"


def decode_key(key: str, *, where: str) -> bytes:
    """An account key as its bytes; BrokerAuthFailed (naming where it came from, never its value)."""
    try:
        decoded = base64.b64decode(key.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BrokerAuthFailed(f"the account key from {where} is not base64") from exc
    if not decoded:
        raise BrokerAuthFailed(f"the account key from {where} is empty")
    return decoded


def connection_string_credentials(
    text: str, *, account: str, endpoint: str, where: str
) -> tuple[bytes | None, str | None]:
    """(account key, SAS token) from a storage connection string (``Name=value;...``).

    The address comes from the hints, never from the string (the waker checks addresses before
    connecting): an AccountName or QueueEndpoint that names another account or endpoint is refused.
    Errors name the field of the string, never its value."""
    parts: dict[str, str] = {}
    for item in text.strip().split(";"):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep:
            raise BrokerAuthFailed(
                f"the connection string from {where} has an item without '=': expected Name=value"
            )
        parts[name.strip().lower()] = value.strip()
    named = parts.get("accountname")
    if named is not None and named != account:
        raise BrokerAuthFailed(
            f"the connection string from {where} names account {named!r}, the hints name {account!r}: "
            "set account-name to the string's account"
        )
    queue_endpoint = parts.get("queueendpoint")
    if queue_endpoint is not None and queue_endpoint.rstrip("/") != endpoint:
        raise BrokerAuthFailed(
            f"the connection string from {where} has a QueueEndpoint other than the hints' endpoint "
            f"{endpoint}: set endpoint to it"
        )
    if parts.get("accountkey"):
        return decode_key(parts["accountkey"], where=f"{where} (AccountKey)"), None
    if parts.get("sharedaccesssignature"):
        return None, parts["sharedaccesssignature"].lstrip("?")
    raise BrokerAuthFailed(
        f"the connection string from {where} has neither AccountKey nor SharedAccessSignature"
    )
