"""AWS Signature Version 4, written out (pure: hashlib and hmac only).

Why by hand: SQS needs one signed POST per queue. botocore's SQS client adds 26.7 MiB of RSS
(bench/results/cloud_queues.md), two thirds of the agent's 40 MiB budget; the small httpx signing
packages would each be one more dependency for some 60 lines, and would still need the checks
below. The algorithm is fully specified by AWS, and its published test suite
(aws-sig-v4-test-suite) checks this module: tests/unit/test_aws_sigv4.py.

The steps (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html):
a canonical request (method, URI, query, headers, signed header names, payload hash), hashed into
a string to sign with the credential scope (date/region/service/aws4_request), signed with a key
derived from the secret by four HMACs (date, region, service, "aws4_request").
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

__all__ = ["AwsCredentials", "SignedRequest", "amz_date", "sign"]

ALGORITHM = "AWS4-HMAC-SHA256"
_UNRESERVED = "-_.~"  # with letters and digits: what SigV4 leaves unencoded


@dataclass(frozen=True, slots=True)
class AwsCredentials:
    """An access key; its repr never shows the secret or the session token."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:
        return f"AwsCredentials(access_key_id={self.access_key_id!r}, secret=***)"


@dataclass(frozen=True, kw_only=True, slots=True)
class SignedRequest:
    """What to send besides the body: every header the signature covers, plus Authorization."""

    headers: dict[str, str]
    canonical_request: str
    string_to_sign: str


def amz_date(moment: datetime) -> str:
    """``20150830T123600Z``: the X-Amz-Date form of an aware UTC datetime."""
    return moment.strftime("%Y%m%dT%H%M%SZ")


def _encode(text: str) -> str:
    return quote(text, safe=_UNRESERVED)


def _canonical_uri(path: str) -> str:
    # Each segment URI-encoded once (non-S3 services encode the already-encoded path again; the
    # paths signed here are plain: "/" for SQS's JSON protocol).
    return "/".join(_encode(segment) for segment in (path or "/").split("/"))


def _canonical_query(query: Iterable[tuple[str, str]]) -> str:
    return "&".join(f"{k}={v}" for k, v in sorted((_encode(k), _encode(v)) for k, v in query))


def _canonical_value(value: str) -> str:
    return " ".join(value.strip().split())  # trimmed, inner runs of spaces collapsed


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sign(
    *,
    method: str,
    host: str,
    path: str,
    query: Iterable[tuple[str, str]] = (),
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    credentials: AwsCredentials,
    region: str,
    service: str,
    now: datetime,
) -> SignedRequest:
    """Signs one request. ``host`` is the Host header (with a non-default port); ``headers`` are
    the request's other headers, all signed. Adds X-Amz-Date (and X-Amz-Security-Token with a
    session token) and returns them with Authorization."""
    stamp = amz_date(now)
    signed: dict[str, str] = {"host": host, "x-amz-date": stamp}
    for name, value in (headers or {}).items():
        signed[name.lower()] = value
    if credentials.session_token is not None:
        signed["x-amz-security-token"] = credentials.session_token
    names = sorted(signed)
    canonical_headers = "".join(f"{n}:{_canonical_value(signed[n])}\n" for n in names)
    signed_names = ";".join(names)
    canonical_request = "\n".join(
        (
            method.upper(),
            _canonical_uri(path),
            _canonical_query(query),
            canonical_headers,
            signed_names,
            hashlib.sha256(body).hexdigest(),
        )
    )
    scope = f"{stamp[:8]}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        (ALGORITHM, stamp, scope, hashlib.sha256(canonical_request.encode()).hexdigest())
    )
    key = _hmac(("AWS4" + credentials.secret_access_key).encode(), stamp[:8])
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    out = {n: signed[n] for n in names if n != "host"}
    out["authorization"] = (
        f"{ALGORITHM} Credential={credentials.access_key_id}/{scope}, "
        f"SignedHeaders={signed_names}, Signature={signature}"
    )
    return SignedRequest(headers=out, canonical_request=canonical_request, string_to_sign=string_to_sign)
