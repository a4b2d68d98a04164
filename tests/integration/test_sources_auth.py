"""Measuring through authenticated listeners of the rig's real brokers: SASL (PLAIN, SCRAM-SHA-256,
SCRAM-SHA-512) over TLS with the rig's own CA, and mutual TLS with an encrypted client key. Right
credentials measure what the plaintext listener and Kafka's own tool measure; wrong ones are a
named error that the policy sees as a failed reading (it holds the replicas: no scale change)."""

from __future__ import annotations

import asyncio
import base64
import uuid
from pathlib import Path

import aio_pika
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from cryptography.hazmat.primitives import serialization

from tests.rig.certs import CertificateAuthority, KeyPair
from tests.rig.kafka import PLAIN_PASSWORD, PLAIN_USER, SCRAM_USERS, Kafka
from tests.rig.rabbitmq import RabbitMQ
from tidescale._waker_guard import check_tls_keys, decode_secret, for_waker, refusal
from tidescale.credentials import Credentials
from tidescale.errors import BrokerAuthFailed
from tidescale.sources.base import Measurement, MeasurementFailure, Scope, TriggerSettings
from tidescale.sources.kafka._source import KafkaSource, parse_kafka_settings
from tidescale.sources.rabbitmq._source import RabbitMQSource, parse_rabbitmq_settings
from tidescale.sources.registry import measure_safely, open_source

pytestmark = pytest.mark.rig

PRODUCED = {0: 6, 1: 3}
COMMITTED = {0: 2, 1: 3}
USER_ENV, PASSWORD_ENV, KEY_PASSWORD_ENV = (
    "TS_TEST_KAFKA_USER",
    "TS_TEST_KAFKA_PASSWORD",
    "TS_TEST_KEY_PASSWORD",
)


async def _group_with_lag(kafka: Kafka) -> tuple[str, str]:
    topic, group = f"auth-{uuid.uuid4().hex[:8]}", f"auth-group-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(kafka.create_topic, topic, len(PRODUCED))
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
    await producer.start()
    try:
        for partition, count in PRODUCED.items():
            for i in range(count):
                await producer.send(topic, str(i).encode(), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        offsets = {TopicPartition(topic, p): n for p, n in COMMITTED.items()}
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()
    return topic, group


async def _measure(settings_fields: dict[str, str]) -> Measurement | MeasurementFailure:
    settings = parse_kafka_settings("kafka", settings_fields)
    source = KafkaSource(settings)
    try:
        return await measure_safely(source, settings, Scope.GROUP)
    finally:
        await source.close()


def _expected(topic: str) -> dict[str, float]:
    return {f"{topic}/{p}": float(PRODUCED[p] - COMMITTED[p]) for p in PRODUCED}


@pytest.mark.parametrize(
    ("mechanism", "user", "password"),
    [
        ("plain", PLAIN_USER, PLAIN_PASSWORD),
        ("scram-sha-256", *SCRAM_USERS["SCRAM-SHA-256"]),
        ("scram-sha-512", *SCRAM_USERS["SCRAM-SHA-512"]),
    ],
)
async def test_sasl_over_tls_measures_what_the_plaintext_listener_and_kafkas_tool_measure(
    kafka: Kafka, monkeypatch: pytest.MonkeyPatch, mechanism: str, user: str, password: str
) -> None:
    assert kafka.auth is not None
    topic, group = await _group_with_lag(kafka)
    monkeypatch.setenv(USER_ENV, user)
    monkeypatch.setenv(PASSWORD_ENV, password)
    common = {"consumer-group": group, "topic": topic}
    secured = await _measure(
        {
            **common,
            "bootstrap-servers": kafka.sasl_ssl_bootstrap,
            "tls": "true",
            "tls-ca-file": str(kafka.auth.ca.cert_file),
            "sasl": mechanism,
            "sasl-username-env": USER_ENV,
            "sasl-password-env": PASSWORD_ENV,
        }
    )
    plain = await _measure({**common, "bootstrap-servers": kafka.bootstrap})
    rows = await asyncio.to_thread(kafka.consumer_groups_describe, group)

    assert isinstance(secured, Measurement), secured
    assert isinstance(plain, Measurement)
    assert secured.detail == plain.detail == _expected(topic)
    assert {f"{r.topic}/{r.partition}": float(r.lag or 0) for r in rows} == _expected(topic)


@pytest.mark.parametrize("mechanism", ["plain", "scram-sha-256", "scram-sha-512"])
async def test_a_wrong_sasl_password_is_a_named_auth_failure(
    kafka: Kafka, monkeypatch: pytest.MonkeyPatch, mechanism: str
) -> None:
    assert kafka.auth is not None
    topic, group = await _group_with_lag(kafka)
    monkeypatch.setenv(USER_ENV, PLAIN_USER if mechanism == "plain" else SCRAM_USERS[mechanism.upper()][0])
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    reading = await _measure(
        {
            "bootstrap-servers": kafka.sasl_ssl_bootstrap,
            "consumer-group": group,
            "topic": topic,
            "tls": "true",
            "tls-ca-file": str(kafka.auth.ca.cert_file),
            "sasl": mechanism,
            "sasl-username-env": USER_ENV,
            "sasl-password-env": PASSWORD_ENV,
        }
    )
    assert isinstance(reading, MeasurementFailure)
    assert "refused our credentials" in reading.error
    assert "not-the-password" not in reading.error


async def test_a_broker_certificate_from_another_ca_is_a_named_tls_failure(
    kafka: Kafka, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    topic, group = await _group_with_lag(kafka)
    other = CertificateAuthority.create(tmp_path / "other-ca", common_name="not-the-rig-ca")
    user, password = SCRAM_USERS["SCRAM-SHA-512"]
    monkeypatch.setenv(USER_ENV, user)
    monkeypatch.setenv(PASSWORD_ENV, password)
    reading = await _measure(
        {
            "bootstrap-servers": kafka.sasl_ssl_bootstrap,
            "consumer-group": group,
            "topic": topic,
            "tls": "true",
            "tls-ca-file": str(other.cert_file),
            "sasl": "scram-sha-512",
            "sasl-username-env": USER_ENV,
            "sasl-password-env": PASSWORD_ENV,
        }
    )
    assert isinstance(reading, MeasurementFailure)
    assert "is not trusted" in reading.error
    assert "tls-ca-file" in reading.error


def _encrypted_client_key(kafka: Kafka, tmp_path: Path, password: bytes) -> tuple[Path, Path]:
    assert kafka.auth is not None
    pair = kafka.auth.ca.issue_client_cert(f"client-{uuid.uuid4().hex[:8]}", common_name="tidescale-agent")
    key = serialization.load_pem_private_key(pair.key_file.read_bytes(), password=None)
    encrypted = tmp_path / "client.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password),
        )
    )
    return pair.cert_file, encrypted


async def test_mutual_tls_with_an_encrypted_client_key_measures_through_the_ssl_listener(
    kafka: Kafka, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert kafka.auth is not None
    topic, group = await _group_with_lag(kafka)
    cert, key = _encrypted_client_key(kafka, tmp_path, b"key-password-1")
    password_file = tmp_path / "key-password"
    password_file.write_text("key-password-1\n")
    monkeypatch.setenv(KEY_PASSWORD_ENV, "key-password-1")
    fields = {
        "bootstrap-servers": kafka.ssl_bootstrap,
        "consumer-group": group,
        "topic": topic,
        "tls": "true",
        "tls-ca-file": str(kafka.auth.ca.cert_file),
        "tls-cert-file": str(cert),
        "tls-key-file": str(key),
    }
    by_env = await _measure({**fields, "tls-key-password-env": KEY_PASSWORD_ENV})
    by_file = await _measure({**fields, "tls-key-password-file": str(password_file)})
    assert isinstance(by_env, Measurement), by_env
    assert isinstance(by_file, Measurement), by_file
    assert by_env.detail == by_file.detail == _expected(topic)


async def test_a_wrong_client_key_password_is_a_named_tls_failure(
    kafka: Kafka, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert kafka.auth is not None
    topic, group = await _group_with_lag(kafka)
    cert, key = _encrypted_client_key(kafka, tmp_path, b"key-password-1")
    monkeypatch.setenv(KEY_PASSWORD_ENV, "wrong")
    settings = parse_kafka_settings(
        "kafka",
        {
            "bootstrap-servers": kafka.ssl_bootstrap,
            "consumer-group": group,
            "topic": topic,
            "tls": "true",
            "tls-ca-file": str(kafka.auth.ca.cert_file),
            "tls-cert-file": str(cert),
            "tls-key-file": str(key),
            "tls-key-password-env": KEY_PASSWORD_ENV,
        },
    )
    source = KafkaSource(settings)
    try:
        with pytest.raises(BrokerAuthFailed, match="tls-key-password"):
            await source.measure(settings, Scope.GROUP)
    finally:
        await source.close()


# -- RabbitMQ over TLS -------------------------------------------------------------------------------

RABBIT_PASSWORD_ENV = "TS_TEST_RABBITMQ_PASSWORD"


async def _rabbit_queue(rabbitmq: RabbitMQ, published: int) -> str:
    queue = f"auth-jobs-{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(rabbitmq.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True)
        for i in range(published):
            await channel.default_exchange.publish(aio_pika.Message(f"{i}".encode()), routing_key=queue)
    return queue


def _ctl_ready(rabbitmq: RabbitMQ, queue: str) -> int:
    output = rabbitmq.rabbitmqctl("-q", "--no-table-headers", "list_queues", "name", "messages_ready")
    for line in output.splitlines():
        name, ready = line.split("\t")
        if name == queue:
            return int(ready)
    raise AssertionError(f"rabbitmqctl list_queues does not show {queue}:\n{output}")


async def _measure_rabbit(fields: dict[str, str]) -> Measurement | MeasurementFailure:
    settings = parse_rabbitmq_settings("rabbitmq", fields)
    source = RabbitMQSource(settings)
    try:
        return await measure_safely(source, settings, Scope.GROUP)
    finally:
        await source.close()


async def test_rabbitmq_over_tls_with_the_rig_ca_measures_what_rabbitmqctl_counts(
    rabbitmq: RabbitMQ, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert rabbitmq.tls_ca is not None
    queue = await _rabbit_queue(rabbitmq, 5)
    monkeypatch.setenv(RABBIT_PASSWORD_ENV, rabbitmq.password)
    reading = await _measure_rabbit(
        {
            "amqp-url": f"amqps://{rabbitmq.username}@{rabbitmq.amqps_address}",
            "queue": queue,
            "password-env": RABBIT_PASSWORD_ENV,
            "tls-ca-file": str(rabbitmq.tls_ca.cert_file),
        }
    )
    assert isinstance(reading, Measurement), reading
    assert reading.value == await asyncio.to_thread(_ctl_ready, rabbitmq, queue) == 5


async def test_rabbitmq_with_a_certificate_of_another_ca_is_a_named_tls_failure(
    rabbitmq: RabbitMQ, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    queue = await _rabbit_queue(rabbitmq, 1)
    other = CertificateAuthority.create(tmp_path / "other-ca", common_name="not-the-rig-ca")
    monkeypatch.setenv(RABBIT_PASSWORD_ENV, rabbitmq.password)
    reading = await _measure_rabbit(
        {
            "amqp-url": f"amqps://{rabbitmq.username}@{rabbitmq.amqps_address}",
            "queue": queue,
            "password-env": RABBIT_PASSWORD_ENV,
            "tls-ca-file": str(other.cert_file),
        }
    )
    assert isinstance(reading, MeasurementFailure)
    assert "is not trusted" in reading.error
    assert "tls-ca-file" in reading.error


async def test_rabbitmq_external_login_with_a_client_certificate_measures_and_a_stranger_is_refused(
    rabbitmq: RabbitMQ, tmp_path: Path
) -> None:
    assert rabbitmq.tls_ca is not None
    queue = await _rabbit_queue(rabbitmq, 3)
    user = f"agent-{uuid.uuid4().hex[:6]}"
    # EXTERNAL logs in as the certificate's common name: that user exists, with no usable password.
    await asyncio.to_thread(rabbitmq.rabbitmqctl, "add_user", user, uuid.uuid4().hex)
    await asyncio.to_thread(rabbitmq.rabbitmqctl, "set_permissions", "-p", "/", user, ".*", ".*", ".*")
    mine = rabbitmq.tls_ca.issue_client_cert(user, common_name=user)
    stranger = CertificateAuthority.create(tmp_path / "stranger-ca").issue_client_cert("x", common_name=user)
    fields = {
        "amqp-url": f"amqps://{rabbitmq.amqps_address}",
        "queue": queue,
        "auth-mechanism": "external",
        "tls-ca-file": str(rabbitmq.tls_ca.cert_file),
    }
    reading = await _measure_rabbit(
        {**fields, "tls-cert-file": str(mine.cert_file), "tls-key-file": str(mine.key_file)}
    )
    refused = await _measure_rabbit(
        {**fields, "tls-cert-file": str(stranger.cert_file), "tls-key-file": str(stranger.key_file)}
    )
    assert isinstance(reading, Measurement), reading
    assert reading.value == await asyncio.to_thread(_ctl_ready, rabbitmq, queue) == 3
    assert isinstance(refused, MeasurementFailure)


# -- the waker's way: TLS material from credentials-secret keys, never from files ------------------


def _secret_of(keys: dict[str, str | bytes]) -> Credentials:
    """Credentials as the waker decodes them from a Secret's base64 ``data``."""
    data = {k: base64.b64encode(v if isinstance(v, bytes) else v.encode()).decode() for k, v in keys.items()}
    return decode_secret("team-a", "broker-tls", data)


async def _measure_as_waker(
    settings: TriggerSettings, credentials: Credentials
) -> Measurement | MeasurementFailure:
    """Measured as the waker does: every *-env/*-file field cleared, the Secret's keys given."""
    assert refusal(settings) is None
    check_tls_keys(settings, credentials)
    cleared = for_waker(settings)
    source = open_source(cleared, credentials=credentials)
    try:
        measure_many = getattr(source, "measure_many")  # noqa: B009 - not in the Source protocol
        found: Measurement | MeasurementFailure = (await measure_many([cleared]))[cleared]
        return found
    finally:
        await source.close()


def _encrypted_pem(pair: KeyPair, password: bytes) -> bytes:
    key = serialization.load_pem_private_key(pair.key_file.read_bytes(), password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )


# The agents' fields: files that exist only in the pod; the waker never opens them.
POD_TLS_FILES = {
    "tls-ca-file": "/etc/broker-tls/ca.crt",
    "credentials-secret": "broker-tls",
}
POD_MTLS_FILES = {
    **POD_TLS_FILES,
    "tls-cert-file": "/etc/broker-tls/tls.crt",
    "tls-key-file": "/etc/broker-tls/tls.key",
    "tls-key-password-file": "/etc/broker-tls/key-password",
}


async def test_the_waker_measures_kafka_over_sasl_ssl_with_the_ca_and_login_from_the_secret(
    kafka: Kafka,
) -> None:
    assert kafka.auth is not None
    topic, group = await _group_with_lag(kafka)
    user, password = SCRAM_USERS["SCRAM-SHA-512"]
    settings = parse_kafka_settings(
        "kafka",
        {
            "bootstrap-servers": kafka.sasl_ssl_bootstrap,
            "consumer-group": group,
            "topic": topic,
            "tls": "true",
            "sasl": "scram-sha-512",
            "sasl-username-env": USER_ENV,
            "sasl-password-file": "/etc/kafka-sasl/password",
            **POD_TLS_FILES,
        },
    )
    secret = _secret_of({"username": user, "password": password, "ca.crt": kafka.auth.ca.cert_pem})
    reading = await _measure_as_waker(settings, secret)
    assert isinstance(reading, Measurement), reading
    assert reading.detail == _expected(topic)


async def test_the_waker_measures_kafka_over_mutual_tls_with_an_encrypted_key_from_the_secret(
    kafka: Kafka,
) -> None:
    assert kafka.auth is not None
    topic, group = await _group_with_lag(kafka)
    pair = kafka.auth.ca.issue_client_cert(f"waker-{uuid.uuid4().hex[:8]}", common_name="tidescale-waker")
    settings = parse_kafka_settings(
        "kafka",
        {
            "bootstrap-servers": kafka.ssl_bootstrap,
            "consumer-group": group,
            "topic": topic,
            "tls": "true",
            **POD_MTLS_FILES,
        },
    )
    keys: dict[str, str | bytes] = {
        "ca.crt": kafka.auth.ca.cert_pem,
        "tls.crt": pair.cert_pem,
        "tls.key": _encrypted_pem(pair, b"waker-key-pw"),
        "tls.key-password": "waker-key-pw",
    }
    reading = await _measure_as_waker(settings, _secret_of(keys))
    wrong_password = await _measure_as_waker(settings, _secret_of({**keys, "tls.key-password": "nope"}))
    rows = await asyncio.to_thread(kafka.consumer_groups_describe, group)

    assert isinstance(reading, Measurement), reading
    assert reading.detail == _expected(topic)
    assert {f"{r.topic}/{r.partition}": float(r.lag or 0) for r in rows} == _expected(topic)
    assert isinstance(wrong_password, MeasurementFailure)
    assert "check key tls.key-password" in wrong_password.error


async def test_the_waker_with_a_ca_of_another_authority_in_the_secret_gets_a_named_tls_failure(
    kafka: Kafka, rabbitmq: RabbitMQ, tmp_path: Path
) -> None:
    assert kafka.auth is not None
    topic, group = await _group_with_lag(kafka)
    other = CertificateAuthority.create(tmp_path / "other-ca", common_name="not-the-rig-ca")
    user, password = SCRAM_USERS["SCRAM-SHA-256"]
    kafka_settings = parse_kafka_settings(
        "kafka",
        {
            "bootstrap-servers": kafka.sasl_ssl_bootstrap,
            "consumer-group": group,
            "topic": topic,
            "tls": "true",
            "sasl": "scram-sha-256",
            "sasl-username-env": USER_ENV,
            "sasl-password-env": PASSWORD_ENV,
            **POD_TLS_FILES,
        },
    )
    queue = await _rabbit_queue(rabbitmq, 1)
    rabbit_settings = parse_rabbitmq_settings(
        "rabbitmq",
        {"amqp-url": f"amqps://{rabbitmq.amqps_address}", "queue": queue, **POD_TLS_FILES},
    )
    wrong: dict[str, str | bytes] = {"ca.crt": other.cert_pem}
    from_kafka = await _measure_as_waker(
        kafka_settings, _secret_of({"username": user, "password": password, **wrong})
    )
    from_rabbit = await _measure_as_waker(
        rabbit_settings, _secret_of({"username": rabbitmq.username, "password": rabbitmq.password, **wrong})
    )
    for reading in (from_kafka, from_rabbit):
        assert isinstance(reading, MeasurementFailure), reading
        assert "is not trusted" in reading.error
        assert "key ca.crt of credentials-secret team-a/broker-tls" in reading.error


async def test_the_waker_measures_rabbitmq_over_amqps_with_the_ca_and_login_from_the_secret(
    rabbitmq: RabbitMQ,
) -> None:
    assert rabbitmq.tls_ca is not None
    queue = await _rabbit_queue(rabbitmq, 4)
    settings = parse_rabbitmq_settings(
        "rabbitmq",
        {
            "amqp-url": f"amqps://{rabbitmq.amqps_address}",
            "queue": queue,
            "username-env": "RABBITMQ_USERNAME",
            "password-file": "/etc/rabbitmq-credentials/password",
            **POD_TLS_FILES,
        },
    )
    secret = _secret_of(
        {"username": rabbitmq.username, "password": rabbitmq.password, "ca.crt": rabbitmq.tls_ca.cert_pem}
    )
    reading = await _measure_as_waker(settings, secret)
    assert isinstance(reading, Measurement), reading
    assert reading.value == await asyncio.to_thread(_ctl_ready, rabbitmq, queue) == 4


async def _external_user(rabbitmq: RabbitMQ) -> str:
    user = f"agent-{uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(rabbitmq.rabbitmqctl, "add_user", user, uuid.uuid4().hex)
    await asyncio.to_thread(rabbitmq.rabbitmqctl, "set_permissions", "-p", "/", user, ".*", ".*", ".*")
    return user


async def test_rabbitmq_external_login_with_an_encrypted_key_works_from_files_and_from_the_secret(
    rabbitmq: RabbitMQ, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert rabbitmq.tls_ca is not None
    queue = await _rabbit_queue(rabbitmq, 2)
    user = await _external_user(rabbitmq)
    pair = rabbitmq.tls_ca.issue_client_cert(user, common_name=user)
    encrypted = tmp_path / "tls.key"
    encrypted.write_bytes(_encrypted_pem(pair, b"rabbit-key-pw"))
    password_file = tmp_path / "key-password"
    password_file.write_text("rabbit-key-pw\n")
    monkeypatch.setenv(KEY_PASSWORD_ENV, "rabbit-key-pw")
    agent_fields = {
        "amqp-url": f"amqps://{rabbitmq.amqps_address}",
        "queue": queue,
        "auth-mechanism": "external",
        "tls-ca-file": str(rabbitmq.tls_ca.cert_file),
        "tls-cert-file": str(pair.cert_file),
        "tls-key-file": str(encrypted),
    }
    by_file = await _measure_rabbit({**agent_fields, "tls-key-password-file": str(password_file)})
    by_env = await _measure_rabbit({**agent_fields, "tls-key-password-env": KEY_PASSWORD_ENV})
    monkeypatch.setenv(KEY_PASSWORD_ENV, "wrong")
    wrong = await _measure_rabbit({**agent_fields, "tls-key-password-env": KEY_PASSWORD_ENV})
    waker_settings = parse_rabbitmq_settings(
        "rabbitmq",
        {
            "amqp-url": f"amqps://{rabbitmq.amqps_address}",
            "queue": queue,
            "auth-mechanism": "external",
            **POD_MTLS_FILES,
        },
    )
    # No username or password in the Secret: the certificate is the identity.
    by_secret = await _measure_as_waker(
        waker_settings,
        _secret_of(
            {
                "ca.crt": rabbitmq.tls_ca.cert_pem,
                "tls.crt": pair.cert_pem,
                "tls.key": encrypted.read_bytes(),
                "tls.key-password": "rabbit-key-pw",
            }
        ),
    )
    ready = await asyncio.to_thread(_ctl_ready, rabbitmq, queue)
    for reading in (by_file, by_env, by_secret):
        assert isinstance(reading, Measurement), reading
        assert reading.value == ready == 2
    assert isinstance(wrong, MeasurementFailure)
    assert "tls-key-password" in wrong.error
