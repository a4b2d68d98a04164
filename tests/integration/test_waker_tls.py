"""The real ``tidescale waker`` process measures a parked Deployment over mutual TLS with the CA, the
client certificate and its encrypted key from the Deployment's ``credentials-secret`` (the agents'
``tls-*`` files are in the pod, where the waker cannot look), and wakes it on the next message.

The leader is played through the protocol functions, as in ``test_waker``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.integration.test_waker import (  # noqa: F401 - fixtures
    _has,
    admin,
    create_deployment,
    events,
    eventually,
    idle_kafka_group,
    kafka_hints,
    namespace,
    park,
    produce,
    request,
    snapshot,
    start_waker,
    waker_kubeconfig,
    waker_ports,
    woken,
)
from tests.rig.controlplane import ControlPlane
from tests.rig.kafka import Kafka
from tests.rig.processes import Managed
from tidescale.waker import WakerClient

pytestmark = pytest.mark.rig

P = "tidescale.io/kafka."


async def test_a_parked_deployment_measured_over_mutual_tls_from_its_secret_is_woken_by_a_message(
    control_plane: ControlPlane,
    kafka: Kafka,
    namespace: str,  # noqa: F811
    admin: WakerClient,  # noqa: F811
    start_waker: Callable[[], Managed],  # noqa: F811
    tmp_path: Path,
) -> None:
    assert kafka.auth is not None
    topic, group = await idle_kafka_group(kafka)
    name, secret = f"tls-web-{uuid.uuid4().hex[:6]}", f"kafka-tls-{uuid.uuid4().hex[:6]}"
    pair = kafka.auth.ca.issue_client_cert(f"waker-{uuid.uuid4().hex[:6]}", common_name="tidescale-waker")
    key = serialization.load_pem_private_key(pair.key_file.read_bytes(), password=None)
    encrypted = tmp_path / "tls.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"key-password-7"),
        )
    )
    control_plane.kubectl(
        "create", "secret", "generic", secret, "-n", namespace,
        f"--from-file=ca.crt={kafka.auth.ca.cert_file}", f"--from-file=tls.crt={pair.cert_file}",
        f"--from-file=tls.key={encrypted}", "--from-literal=tls.key-password=key-password-7",
    )  # fmt: skip
    hints = kafka_hints(kafka, topic, group)
    hints |= {
        f"{P}bootstrap-servers": kafka.ssl_bootstrap,  # requires a client certificate of the rig CA
        f"{P}tls": "true",
        # The agents' files, inside their pods: the waker reads the Secret's keys instead.
        f"{P}tls-ca-file": "/etc/kafka-tls/ca.crt",
        f"{P}tls-cert-file": "/etc/kafka-tls/tls.crt",
        f"{P}tls-key-file": "/etc/kafka-tls/tls.key",
        f"{P}tls-key-password-file": "/etc/kafka-tls/key-password",
        f"{P}credentials-secret": secret,
    }
    create_deployment(control_plane, namespace, name, hints)
    start_waker()
    await park(admin, namespace, name, await request(admin, namespace, name))

    await asyncio.sleep(2.0)  # several polls of an idle group over TLS: it stays parked
    assert (await snapshot(admin, namespace, name)).replicas == 0
    await produce(kafka, topic)
    await eventually("the wake", lambda: woken(admin, namespace, name, 1), timeout=30.0)
    await eventually("the Woken event", lambda: _has(control_plane, namespace, name, "Woken"), timeout=10.0)
    reasons = await asyncio.to_thread(events, control_plane, namespace, name)
    assert not {"TriggerRefused", "TriggerNotPrepared", "WakerError"} & set(reasons), reasons
