"""TLS contexts from a Secret's keys (the waker) or from files (the agents): sources/_tls.py."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.rig.certs import CertificateAuthority, KeyPair
from tidescale.credentials import Credentials
from tidescale.errors import BrokerAuthFailed
from tidescale.sources._tls import client_context


def _encrypted(pair: KeyPair, password: bytes) -> str:
    key = serialization.load_pem_private_key(pair.key_file.read_bytes(), password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    ).decode()


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertificateAuthority, KeyPair]:
    ca = CertificateAuthority.create(tmp_path_factory.mktemp("ca"))
    return ca, ca.issue_client_cert("client", common_name="client")


def _secret(**keys: str) -> Credentials:
    return Credentials.of("team-a", "broker-tls", keys)


def _open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_secret_with_ca_certificate_and_encrypted_key_loads_and_leaves_no_descriptor_open(
    material: tuple[CertificateAuthority, KeyPair],
) -> None:
    ca, pair = material
    before = _open_descriptors()
    context = client_context(
        where="Kafka at k:9093",
        credentials=_secret(
            **{
                "ca.crt": ca.cert_pem.decode(),
                "tls.crt": pair.cert_pem.decode(),
                "tls.key": _encrypted(pair, b"pw-1"),
                "tls.key-password": "pw-1",
            }
        ),
    )
    assert _open_descriptors() <= before
    assert "tidescale-rig-ca" in repr(context.get_ca_certs())  # the Secret's CA, not only the system's


def test_an_encrypted_key_without_a_password_is_refused_by_name_never_prompted(
    material: tuple[CertificateAuthority, KeyPair],
) -> None:
    _, pair = material
    with pytest.raises(BrokerAuthFailed, match=re.escape("has no key tls.key-password")):
        client_context(
            where="x",
            credentials=_secret(**{"tls.crt": pair.cert_pem.decode(), "tls.key": _encrypted(pair, b"pw")}),
        )


def test_a_wrong_key_password_names_the_password_key_and_not_its_value(
    material: tuple[CertificateAuthority, KeyPair],
) -> None:
    _, pair = material
    keys = {
        "tls.crt": pair.cert_pem.decode(),
        "tls.key": _encrypted(pair, b"pw"),
        "tls.key-password": "nope-9",
    }
    with pytest.raises(BrokerAuthFailed, match=re.escape("check key tls.key-password")) as caught:
        client_context(where="x", credentials=_secret(**keys))
    assert "nope-9" not in str(caught.value)


def test_a_certificate_without_its_key_names_the_missing_key(
    material: tuple[CertificateAuthority, KeyPair],
) -> None:
    _, pair = material
    with pytest.raises(BrokerAuthFailed, match=re.escape("has no key 'tls.key'")):
        client_context(where="x", credentials=_secret(**{"tls.crt": pair.cert_pem.decode()}))


def test_a_ca_key_that_is_not_pem_is_named() -> None:
    with pytest.raises(
        BrokerAuthFailed, match=re.escape("key ca.crt of credentials-secret team-a/broker-tls")
    ):
        client_context(where="x", credentials=_secret(**{"ca.crt": "not a certificate"}))


def test_an_encrypted_key_file_without_a_password_names_the_password_fields(
    material: tuple[CertificateAuthority, KeyPair], tmp_path: Path
) -> None:
    _, pair = material
    key = tmp_path / "tls.key"
    key.write_text(_encrypted(pair, b"pw"))
    with pytest.raises(BrokerAuthFailed, match="tls-key-password-env or tls-key-password-file"):
        client_context(where="x", credentials=None, cert_file=str(pair.cert_file), key_file=str(key))
    context = client_context(
        where="x", credentials=None, cert_file=str(pair.cert_file), key_file=str(key), key_password="pw"
    )
    assert context.verify_mode.name == "CERT_REQUIRED"
