"""What the HTTP-API sources (prometheus, nats-jetstream) share: a size-capped body, the
translation of transport failures, and quoting a server's words in an error. Imports nothing
heavy (the pure arithmetic modules use :func:`quoted`): httpx's objects come in as arguments."""

from __future__ import annotations

from typing import Any

from tidescale.credentials import Credentials
from tidescale.errors import BrokerAuthFailed, BrokerUnreachable, SourceError

__all__ = ["quoted", "read_capped", "tls_context", "transport_error"]


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


def transport_error(
    where: str, exc: BaseException, *, check: str, credentials: Credentials | None = None
) -> SourceError:
    """An httpx transport failure as a SourceError: an untrusted certificate is a BrokerAuthFailed
    pointing at tls-ca-file (the waker, given ``credentials``: the Secret's ca.crt), anything else
    a BrokerUnreachable naming ``check``."""
    import ssl

    cause: BaseException | None = exc
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            ca = (
                f"key ca.crt of credentials-secret {credentials.namespace}/{credentials.secret}"
                if credentials is not None
                else "tls-ca-file"
            )
            return BrokerAuthFailed(
                f"the TLS certificate of {where} is not trusted ({cause.verify_message}): check {ca} "
                "(the CA that signed the server's certificate)"
            )
        cause = cause.__cause__ or cause.__context__
    return BrokerUnreachable(
        f"cannot reach {where} ({exc or type(exc).__name__}): check {check}, that the server listens "
        "there, and network policies"
    )


def tls_context(*, where: str, ca_file: str | None, credentials: Credentials | None) -> Any:
    """The context verifying an https server: the system's CAs, plus the agent's ``tls-ca-file``, or
    (the waker, given ``credentials``) the Secret's ``ca.crt`` key as PEM text, never a file; a
    CA that cannot be loaded is a BrokerAuthFailed naming the field or the key."""
    import ssl

    if credentials is not None:
        context = ssl.create_default_context()
        ca = credentials.get("ca.crt")
        if ca is not None:
            try:
                context.load_verify_locations(cadata=ca)
            except (ssl.SSLError, ValueError) as exc:
                raise BrokerAuthFailed(
                    f"key ca.crt of credentials-secret {credentials.namespace}/{credentials.secret} is not a "
                    f"PEM certificate bundle ({type(exc).__name__}); expected the CA of {where}"
                ) from exc
        return context
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise BrokerAuthFailed(
            f"cannot load the CA bundle {ca_file} for {where} ({type(exc).__name__}): check tls-ca-file"
        ) from exc


def plain_http_context() -> Any:
    """The ``verify`` of an httpx client for an ``http://`` URL: httpx builds its TLS context when the
    client is made, and its default (``verify=True``) loads certifi's CA bundle, ~2-3 MiB of RSS in
    every agent that a plain-HTTP client never uses. An empty context costs nothing, and would refuse
    every certificate if it were ever used."""
    import ssl

    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
