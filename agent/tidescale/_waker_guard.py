"""What the waker refuses to do for a tenant's hints (docs/security.md, "The waker and tenant brokers").

Every parked Deployment's hints are written by its namespace, and the waker is one process for
the whole cluster holding a token that can patch any Deployment. So the waker:

- reads credentials only from the ``credentials-secret`` of the Deployment's own namespace, and
  nothing a trigger names with ``*-env`` or ``*-file`` (:func:`refusal`, :func:`for_waker`): those
  would be the waker's own environment and files, its ServiceAccount token included. TLS files
  are replaced by the Secret's keys ``ca.crt``, ``tls.crt``, ``tls.key`` and ``tls.key-password``
  (:func:`check_tls_keys`), which the sources load without writing them to disk (sources/_tls.py);
- connects only to broker addresses its networks allow (:class:`BrokerNetworks`): by default
  anything but link-local (cloud metadata services), loopback, unspecified addresses and the API
  server. DNS names are resolved and every address checked (:class:`AddressGuard`);
- reads each Secret at most once per backoff step (:class:`SecretCache`): a missing Secret costs one
  API read per step, not one per round.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from tidescale.credentials import Credentials, CredentialsUnusable
from tidescale.errors import BrokerUnreachable, TidescaleError
from tidescale.sources._common import TLS_SECRET_KEYS
from tidescale.sources.base import TriggerSettings

__all__ = [
    "DEFAULT_ALLOWED",
    "DEFAULT_DENIED",
    "AddressGuard",
    "BrokerNetworks",
    "SecretCache",
    "SecretUnusable",
    "broker_endpoints",
    "check_tls_keys",
    "decode_secret",
    "for_waker",
    "refusal",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_ALLOWED = "0.0.0.0/0,::/0"
DEFAULT_DENIED = "169.254.0.0/16,fe80::/10,127.0.0.0/8,::1/128,0.0.0.0/8,::/128"
"""Link-local (cloud metadata services at 169.254.169.254), loopback and unspecified addresses.
The API server's address and port are denied besides (:class:`BrokerNetworks` ``api_server``)."""


def _named_fields(kind: type) -> tuple[tuple[str, str], ...]:
    """(attribute, field) of every setting of ``kind`` that names a file or an environment variable.

    Found by name (``*_file``, ``*_env``) rather than listed, so a field a source adds later is
    refused by the waker without anyone remembering to list it here."""
    if not dataclasses.is_dataclass(kind):
        return ()
    return tuple(
        (f.name, f.name.replace("_", "-"))
        for f in dataclasses.fields(kind)
        if f.name.endswith(("_file", "_env"))
    )


def _tls_fields(kind: type) -> tuple[tuple[str, str], ...]:
    """The TLS files (and their key password's file or variable): the waker reads the Secret's
    keys of ``TLS_SECRET_KEYS`` in their place."""
    return tuple((a, f) for a, f in _named_fields(kind) if a.startswith("tls_"))


def _credential_fields(kind: type) -> tuple[tuple[str, str], ...]:
    """The credential files and variables: for the agents when ``credentials-secret`` is set."""
    return tuple((a, f) for a, f in _named_fields(kind) if not a.startswith("tls_"))


SecretUnusable = CredentialsUnusable
"""A ``credentials-secret`` that cannot be used: missing, forbidden, without a key, not UTF-8."""


def _annotation(settings: TriggerSettings, field_name: str) -> str:
    return f"tidescale.io/{settings.name}.{field_name}"


def refusal(settings: TriggerSettings) -> tuple[str, str] | None:
    """(annotation, why) when the waker must not measure this trigger at all; None when it may.

    A file or environment variable the trigger names would be the waker's own (its token at
    /var/run/secrets/kubernetes.io/serviceaccount/token, its other tenants' nothing): refused.
    With ``credentials-secret`` set, those fields are for the agents and the waker ignores them:
    it reads the Secret's keys instead (``username``/``password``; for the TLS fields the keys of
    ``TLS_SECRET_KEYS``, checked once the Secret is read: :func:`check_tls_keys`). A TLS field
    with no key of its own (a source's field this guard does not know) is refused even then."""
    kind = type(settings)
    secret = getattr(settings, "credentials_secret", None)
    tls = [f for a, f in _tls_fields(kind) if getattr(settings, a, None) is not None]
    unknown = [f for f in tls if f not in TLS_SECRET_KEYS]
    if unknown or (tls and not secret):
        files = unknown or tls
        keys = ", ".join(sorted({TLS_SECRET_KEYS[f] for f in tls if f in TLS_SECRET_KEYS}))
        return ", ".join(_annotation(settings, f) for f in files), (
            "the cluster-level waker reads no file a trigger names (it would be the waker's own, not the "
            "pod's); "
            + (
                f"name a Secret of this namespace holding keys {keys} with "
                f"{_annotation(settings, 'credentials-secret')} for the waker (the agents keep these "
                "fields)"
                if not unknown
                else "the waker has no credentials-secret key for this field: drop min-replicas 0 or it"
            )
        )
    if secret:
        return None
    named = [f for a, f in _credential_fields(kind) if getattr(settings, a, None) is not None]
    if named:
        return ", ".join(_annotation(settings, f) for f in named), (
            "the cluster-level waker reads no file or environment variable a trigger names (it would be "
            f"the waker's own); name a Secret of this namespace with "
            f"{_annotation(settings, 'credentials-secret')} for the waker (the agents keep these fields)"
        )
    return None


def check_tls_keys(settings: TriggerSettings, credentials: Credentials | None) -> None:
    """The Secret holds a key for every TLS field the trigger sets (the waker reads the key in the
    field's place: ``ca.crt`` for ``tls-ca-file``, ...); SecretUnusable naming the field and the
    missing key otherwise. Checked when the Secret is read, so a key added later is picked up."""
    if credentials is None:
        return
    for attribute, field_name in _tls_fields(type(settings)):
        if getattr(settings, attribute, None) is None:
            continue
        key = TLS_SECRET_KEYS[field_name]
        if credentials.get(key) is None:
            detail = "is not UTF-8 text" if key in credentials.not_text else "is missing"
            raise SecretUnusable(
                f"credentials-secret {credentials.namespace}/{credentials.secret}: key {key!r} {detail}; "
                f"the waker reads it in place of {_annotation(settings, field_name)} (a PEM text value)"
            )


def for_waker(settings: TriggerSettings) -> TriggerSettings:
    """The settings the waker measures: every ``*-env`` and ``*-file`` field cleared, so that no
    source can read one even by mistake (the credentials come from the Secret, given explicitly)."""
    kind = type(settings)
    cleared = {a: None for a, _ in _named_fields(kind)}
    if not cleared:
        return settings
    return cast(TriggerSettings, dataclasses.replace(cast(Any, settings), **cleared))


def broker_endpoints(settings: TriggerSettings) -> list[tuple[str, str, int]]:
    """(annotation, host, port) of every address the waker would connect to for ``settings``."""
    from tidescale.sources.registry import endpoints

    return [(_annotation(settings, e.field), e.host, e.port) for e in endpoints(settings)]


def _networks(text: str, what: str) -> tuple[Network, ...]:
    found: list[Network] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            found.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise TidescaleError(
                f"{what}: {item!r} is not a network; expected CIDRs such as 10.0.0.0/8 or fd00::/8, "
                "comma-separated"
            ) from exc
    return tuple(found)


@dataclass(frozen=True, kw_only=True, slots=True)
class BrokerNetworks:
    """Where the waker may connect for a tenant's trigger: an address must be in an allowed network
    and in no denied one (denied wins)."""

    allowed: tuple[Network, ...]
    denied: tuple[Network, ...]
    api_server: frozenset[tuple[str, int | None]] = frozenset()
    """The API server's (address, port) pairs; port None: every port of that address (its Service IP).
    By port, not address: a node may serve the API and a broker on one address (the rig does)."""

    @classmethod
    def parse(
        cls, allowed: str, denied: str, *, api_server: Iterable[tuple[str, int | None]] = ()
    ) -> BrokerNetworks:
        """From comma-separated CIDRs. Raises TidescaleError naming a bad entry."""
        return cls(
            allowed=_networks(allowed, "--broker-allowed-networks"),
            denied=_networks(denied, "--broker-denied-networks"),
            api_server=frozenset((str(_ip(a)), port) for a, port in api_server),
        )

    def verdict(self, address: str, port: int | None = None) -> str | None:
        """Why ``address`` (an IP) and ``port`` are refused, or None when they are allowed."""
        ip = _ip(address)
        if (str(ip), None) in self.api_server or (str(ip), port) in self.api_server:
            return f"{ip}:{port} is the Kubernetes API server"
        for network in self.denied:
            if ip.version == network.version and ip in network:
                return f"{ip} is in the denied network {network}"
        if not any(ip.version == n.version and ip in n for n in self.allowed):
            return f"{ip} is in none of the allowed networks"
        return None


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:169.254.169.254 is 169.254.169.254
    return ip


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def _resolve(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


class AddressGuard:
    """Checks broker addresses against :class:`BrokerNetworks`, resolving names (cached briefly).

    Every address a name resolves to must be allowed: a name with one private and one metadata
    address is refused. (The client resolves the name again when it connects; the egress
    NetworkPolicy of the chart is the backstop against a name that changes in between.)"""

    def __init__(
        self,
        networks: BrokerNetworks,
        *,
        resolve: Resolver = _resolve,
        ttl: float = 30.0,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.networks = networks
        self._resolve = resolve
        self._ttl = ttl
        self._timeout = timeout
        self._clock = clock
        self._cache: dict[tuple[str, int], tuple[float, str | None]] = {}

    async def check(self, host: str, port: int) -> str | None:
        """Why a connection to host:port is refused (a name that does not resolve included), or None."""
        try:
            return await self.vet(host, port)
        except BrokerUnreachable as exc:
            return str(exc)

    async def vet(self, host: str, port: int) -> str | None:
        """Why a connection to host:port is refused, or None; BrokerUnreachable when the name does not
        resolve now (worth retrying: that is no verdict on the address)."""
        key = (host, port)
        cached = self._cache.get(key)
        if cached is not None and self._clock() - cached[0] < self._ttl:
            return cached[1]
        verdict = await self._vet(host, port)
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[key] = (self._clock(), verdict)
        return verdict

    async def _vet(self, host: str, port: int) -> str | None:
        try:
            _ip(host)
            addresses = [host]
        except ValueError:
            try:
                async with asyncio.timeout(self._timeout):
                    addresses = await self._resolve(host, port)
            except (OSError, TimeoutError) as exc:
                raise BrokerUnreachable(f"{host} does not resolve ({exc or type(exc).__name__})") from exc
        if not addresses:
            raise BrokerUnreachable(f"{host} resolves to no address")
        for address in addresses:
            why = self.networks.verdict(address, port)
            if why is not None:
                return f"{host} resolves to {why}" if address != host else why
        return None


def decode_secret(namespace: str, name: str, data: Mapping[str, Any]) -> Credentials:
    """Every key of a Secret's ``data`` (base64) as text. A ``username`` or ``password`` that is not
    UTF-8 is refused here (SecretUnusable naming the key, never the value); another non-text key is
    only named if a source asks for it. A missing key is named when a source asks for it."""
    values: dict[str, str] = {}
    not_text: list[str] = []
    for key, raw in data.items():
        try:
            values[str(key)] = base64.b64decode(str(raw), validate=True).decode("utf-8")
        except (binascii.Error, ValueError) as exc:
            if key in ("username", "password"):
                # The value is never shown: it is a credential, or most of one.
                raise SecretUnusable(
                    f"credentials-secret {namespace}/{name}: the value of key {key!r} is not UTF-8 text"
                ) from exc
            not_text.append(str(key))
    return Credentials.of(namespace, name, values, tuple(not_text))


@dataclass(slots=True)
class _Entry:
    value: Credentials | SecretUnusable
    fetched_at: float
    failures: int = 0


class SecretCache:
    """Credentials per (namespace, Secret): read once, kept ``ttl`` seconds; a failed read is
    remembered and retried after a backoff doubling from ``first_retry`` up to ``max_retry``."""

    def __init__(
        self,
        fetch: Callable[[str, str], Awaitable[Mapping[str, Any]]],
        *,
        ttl: float = 300.0,
        first_retry: float = 2.0,
        max_retry: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._ttl = ttl
        self._first_retry = first_retry
        self._max_retry = max_retry
        self._clock = clock
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.reads = 0
        """API reads so far (tests count them)."""

    def _fresh(self, entry: _Entry) -> bool:
        age = self._clock() - entry.fetched_at
        if isinstance(entry.value, Credentials):
            return age < self._ttl
        return age < min(self._max_retry, self._first_retry * 2.0 ** (entry.failures - 1))

    async def get(self, namespace: str, name: str) -> Credentials:
        """The Secret's credentials; raises SecretUnusable (the cached one while backing off)."""
        key = (namespace, name)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # many Deployments naming one Secret: one read
            entry = self._entries.get(key)
            if entry is None or not self._fresh(entry):
                failures = entry.failures if entry is not None else 0
                self.reads += 1
                try:
                    value: Credentials | SecretUnusable = decode_secret(
                        namespace, name, await self._fetch(namespace, name)
                    )
                    failures = 0
                except SecretUnusable as exc:
                    value, failures = exc, failures + 1
                except TidescaleError as exc:
                    value, failures = (
                        SecretUnusable(f"credentials-secret {namespace}/{name}: {exc}"),
                        failures + 1,
                    )
                entry = self._entries[key] = _Entry(value=value, fetched_at=self._clock(), failures=failures)
        if isinstance(entry.value, SecretUnusable):
            raise SecretUnusable(str(entry.value))  # a fresh one: no traceback grows across rounds
        return entry.value

    def forget(self, namespace: str) -> None:
        """Drop what is cached for a namespace (nothing tracked there any more)."""
        for key in [k for k in self._entries if k[0] == namespace]:
            del self._entries[key]
            self._locks.pop(key, None)
