"""What the HTTP-API sources (prometheus, nats-jetstream) share: a size-capped body and the
translation of transport failures. Imports nothing heavy: httpx's objects come in as arguments."""

from __future__ import annotations

import ssl
from typing import Any

from tidescale.errors import BrokerAuthFailed, BrokerUnreachable, SourceError

__all__ = ["read_capped", "transport_error"]


async def read_capped(response: Any, *, where: str, limit: int, advice: str) -> bytes:
    """The body of an httpx streaming ``response``, refused past ``limit`` bytes (after decoding):
    a tenant's server must not fill the memory of the process that measures it."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise SourceError(f"{where} answered with more than {limit >> 20} MiB: refused ({advice})")
        chunks.append(chunk)
    return b"".join(chunks)


def transport_error(where: str, exc: BaseException, *, check: str) -> SourceError:
    """An httpx transport failure as a SourceError: an untrusted certificate is a BrokerAuthFailed
    pointing at tls-ca-file, anything else a BrokerUnreachable naming ``check``."""
    cause: BaseException | None = exc
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            return BrokerAuthFailed(
                f"the TLS certificate of {where} is not trusted ({cause.verify_message}): check tls-ca-file "
                "(the CA that signed the server's certificate)"
            )
        cause = cause.__cause__ or cause.__context__
    return BrokerUnreachable(
        f"cannot reach {where} ({exc or type(exc).__name__}): check {check}, that the server listens "
        "there, and network policies"
    )
