"""Certificates and keys for the rig's control plane (and for webhook servers tests run).

Everything is ECDSA P-256: generation takes milliseconds, and Go's TLS stack, the API
server's service-account signer (ES256) and Python's ssl module all accept it.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Validity is backdated a little so a clock a few seconds off (a pod process, a
# freshly started API server) never sees a certificate from the future.
_BACKDATE = datetime.timedelta(minutes=5)
_VALIDITY = datetime.timedelta(days=365)

# The ClusterIP the API server gives the `kubernetes` Service: the first address of
# --service-cluster-ip-range 10.96.0.0/16.
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
APISERVER_DNS_NAMES = (
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


@dataclass(frozen=True, kw_only=True, slots=True)
class KeyPair:
    """A certificate and its private key, both PEM files on disk."""

    cert_file: Path
    key_file: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert_file.read_bytes()


@dataclass(frozen=True, kw_only=True, slots=True)
class SigningKeys:
    """The service-account token signing key pair (PEM private key, PEM public key)."""

    private_key_file: Path
    public_key_file: Path


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(common_name: str, organizations: Sequence[str] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


@dataclass(frozen=True, kw_only=True, slots=True)
class CertificateAuthority:
    """A self-signed CA that issues serving and client certificates into its directory."""

    directory: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_file(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def key_file(self) -> Path:
        return self.directory / "ca.key"

    @property
    def cert_pem(self) -> bytes:
        """PEM of the CA certificate: a webhook configuration's ``caBundle`` (base64 it)."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def create(cls, directory: Path, *, common_name: str = "tidescale-rig-ca") -> CertificateAuthority:
        key = _new_key()
        now = datetime.datetime.now(datetime.UTC)
        name = _name(common_name)
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        ca = cls(directory=directory, cert=cert, key=key)
        _write_cert(cert, ca.cert_file)
        _write_key(key, ca.key_file)
        return ca

    def _issue(
        self,
        name: str,
        *,
        subject: x509.Name,
        usage: x509.ObjectIdentifier,
        sans: Sequence[x509.GeneralName],
    ) -> KeyPair:
        key = _new_key()
        now = datetime.datetime.now(datetime.UTC)
        public = key.public_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        pair = KeyPair(cert_file=self.directory / f"{name}.crt", key_file=self.directory / f"{name}.key")
        _write_cert(cert, pair.cert_file)
        _write_key(key, pair.key_file)
        return pair

    def issue_serving_cert(
        self, name: str, *, dns_names: Sequence[str], ip_addresses: Sequence[str] = ()
    ) -> KeyPair:
        """A TLS server certificate for ``dns_names`` and ``ip_addresses``, as ``<name>.crt/.key``.

        For a webhook Service ``svc`` in ``ns``, the API server checks the name
        ``svc.ns.svc``: pass that in ``dns_names``.
        """
        if not dns_names and not ip_addresses:
            raise ValueError(f"serving certificate {name!r} needs at least one DNS name or IP address")
        sans: list[x509.GeneralName] = [x509.DNSName(dns) for dns in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        common_name = dns_names[0] if dns_names else ip_addresses[0]
        return self._issue(name, subject=_name(common_name), usage=ExtendedKeyUsageOID.SERVER_AUTH, sans=sans)

    def issue_client_cert(self, name: str, *, common_name: str, organizations: Sequence[str] = ()) -> KeyPair:
        """A TLS client certificate; the API server reads the user from CN and groups from O."""
        return self._issue(
            name,
            subject=_name(common_name, organizations),
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            sans=(),
        )


def create_signing_keys(directory: Path, name: str = "service-account") -> SigningKeys:
    """A key pair for signing service-account tokens (``<name>.key``, ``<name>.pub``)."""
    key = _new_key()
    keys = SigningKeys(private_key_file=directory / f"{name}.key", public_key_file=directory / f"{name}.pub")
    _write_key(key, keys.private_key_file)
    keys.public_key_file.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return keys


@dataclass(frozen=True, kw_only=True, slots=True)
class ControlPlanePKI:
    """Every certificate and key the control plane runs with, under one directory."""

    ca: CertificateAuthority
    apiserver: KeyPair
    admin: KeyPair
    controller_manager: KeyPair
    service_account: SigningKeys

    @classmethod
    def create(cls, directory: Path, *, node_address: str) -> ControlPlanePKI:
        ca = CertificateAuthority.create(directory)
        return cls(
            ca=ca,
            apiserver=ca.issue_serving_cert(
                "kube-apiserver",
                dns_names=APISERVER_DNS_NAMES,
                ip_addresses=(node_address, "127.0.0.1", KUBERNETES_SERVICE_IP),
            ),
            admin=ca.issue_client_cert("admin", common_name="rig-admin", organizations=("system:masters",)),
            controller_manager=ca.issue_client_cert(
                "kube-controller-manager", common_name="system:kube-controller-manager"
            ),
            service_account=create_signing_keys(directory),
        )
