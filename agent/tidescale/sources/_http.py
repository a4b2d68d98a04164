"""What the HTTP-API sources (prometheus, nats-jetstream) share: a size-capped body, the
translation of transport failures, and quoting a server's words in an error. Imports nothing
heavy (the pure arithmetic modules use :func:`quoted`): httpx's objects come in as arguments."""

from __future__ import annotations

from typing import Any

from tidescale.errors import BrokerAuthFailed, BrokerUnreachable, SourceError

__all__ = ["quoted", "read_capped", "transport_error"]


def quoted(text: object, limit: int = 300) -> str:
    """A server's own words, as an error may quote them: at most ``limit`` characters, control
    characters (newlines, escapes) replaced, so a hostile answer cannot forge log lines or Events."""
    return "".join(c if c.isprintable() else " " for c in str(text)[:limit]).strip()


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
    import ssl

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
