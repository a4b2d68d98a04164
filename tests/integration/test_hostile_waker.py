"""A hostile tenant against the real ``tidescale waker`` process, beside a second team's parked Deployment.

The hostile namespace writes every hint of issue 11 (items 1-6) at fake brokers that record every
byte they receive: the waker's token file and kubeconfig as a password file, the waker's own
environment variables, a Secret of another team, non-JSON, non-UTF-8 and oversized management API
answers, a backtracking queue-pattern against a hostile queue listing, partition bombs, 40
blackholed brokers at the maximum timeout, link-local, loopback and API server addresses. Meanwhile
team B's Deployment, parked for real through the handoff, must wake from a produced message.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.integration.test_waker import (
    REPO,
    WAKER_NAMESPACE,
    admin,  # noqa: F401 - a fixture
    create_deployment,
    eventually,
    idle_kafka_group,
    kafka_hints,
    park,
    produce,
    request,
    woken,
)
from tests.rig.controlplane import ControlPlane
from tests.rig.kafka import Kafka
from tests.rig.processes import Managed, Supervisor, free_port
from tidescale.parking import PARK_LABEL, PARK_RECORD_ANNOTATION, ParkRecord, ParkState
from tidescale.waker import WakerClient

pytestmark = pytest.mark.rig

P = "tidescale.io/"
BLACKHOLES = 40
"""More than the waker's 32 batch slots: without a per-namespace budget they would hold them all."""


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# -- fake brokers ----------------------------------------------------------------------------------


@dataclass
class Recorder:
    """A TCP listener that records every byte; with ``http``, a fake RabbitMQ management API whose
    answer depends on the vhost asked for; without, a blackhole (accepts, never answers)."""

    host: str
    http: bool = True
    received: bytearray = field(default_factory=bytearray)
    connections: int = 0
    port: int = 0
    server: asyncio.Server | None = None
    hung: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self) -> Recorder:
        self.server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        for writer in self.hung:
            writer.close()
        if self.server is not None:
            self.server.close()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if not self.http:
            self.hung.append(writer)
            while chunk := await reader.read(65536):
                self.received += chunk
            return
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.received += head
            path = head.split(b" ", 2)[1].decode(errors="replace")
            status, body = self._answer(path)
            writer.write(f"HTTP/1.1 {status} X\r\nConnection: close\r\n\r\n".encode())
            for at in range(0, len(body), 1 << 20):
                writer.write(body[at : at + (1 << 20)])
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _answer(path: str) -> tuple[int, bytes]:
        vhost = path.split("?")[0].rstrip("/").split("/")[3] if path.startswith("/api/queues/") else ""
        if vhost == "notjson":
            return 200, b"<html>this is not json</html>"
        if vhost == "notutf8":
            return 200, b'[{"name": "\xff\xfe\xfd"}]'
        if vhost == "badnumber":
            return 200, json.dumps([{"name": "q", "messages_ready": "x", "consumers": "y"}]).encode()
        if vhost == "huge":
            return 200, b"[" + b" " * (24 << 20) + b"]"
        if vhost == "bomb":  # names against which (a|a)+b backtracks for ever in Python's re
            return 200, json.dumps(
                [{"name": "a" * 40 + str(i), "messages_ready": 1} for i in range(200)]
            ).encode()
        if vhost == "deep":
            return 200, b"[" * 200_000 + b"]" * 200_000
        return 200, json.dumps([{"name": "q", "messages_ready": 5, "messages_unacknowledged": 0}]).encode()


@pytest_asyncio.fixture(loop_scope="session")
async def recorders(kafka: Kafka) -> AsyncIterator[Callable[..., Any]]:
    started: list[Recorder] = []

    async def start(host: str | None = None, *, http: bool = True) -> Recorder:
        recorder = await Recorder(host=host or kafka.host, http=http).start()
        started.append(recorder)
        return recorder

    yield start
    for recorder in started:
        await recorder.stop()


# -- the cluster side ----------------------------------------------------------------------------------


def _namespace(control_plane: ControlPlane, prefix: str) -> str:
    ns = _name(prefix)
    control_plane.kubectl("create", "namespace", ns)
    control_plane.kubectl("create", "namespace", WAKER_NAMESPACE, check=False)
    rbac = (REPO / "deploy" / "waker-rbac.yaml").read_text().replace("namespace: shop", f"namespace: {ns}")
    control_plane.kubectl("apply", "-f", "-", input=rbac)
    return ns


def _secret(control_plane: ControlPlane, namespace: str, name: str, username: str, password: str) -> None:
    control_plane.kubectl(
        "create", "secret", "generic", name, "-n", namespace,
        f"--from-literal=username={username}", f"--from-literal=password={password}",
    )  # fmt: skip


def _parked(control_plane: ControlPlane, namespace: str, name: str, hints: dict[str, str]) -> None:
    """A Deployment the hostile tenant parks itself: label, record and replicas 0, written by hand."""
    now = datetime.now(UTC)
    record = ParkRecord(
        epoch=1, state=ParkState.PARKED, requester=f"{name}-0", lease_transitions=0, requested_at=now,
        triggers=("t",), acked_by="nobody", acked_at=now, parked_at=now,
    )  # fmt: skip
    manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {PARK_LABEL: "parked"},
            "annotations": {P + "min-replicas": "0", **hints, PARK_RECORD_ANNOTATION: record.to_json()},
        },
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "work", "image": "tidescale/echo"}]},
            },
        },
    }
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def _warnings(control_plane: ControlPlane, namespace: str) -> dict[str, list[str]]:
    listing = json.loads(control_plane.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
    found: dict[str, list[str]] = {}
    for event in listing["items"]:
        if event.get("type") == "Warning":
            found.setdefault(event["involvedObject"]["name"], []).append(event.get("message", ""))
    return found


def _rabbit(url: str, vhost: str = "/", **fields: str) -> dict[str, str]:
    return {P + "rabbitmq.management-url": url, P + "rabbitmq.vhost": vhost, P + "rabbitmq.queue": "q"} | {
        P + f"rabbitmq.{k}": v for k, v in fields.items()
    }


def _pattern(url: str, vhost: str, pattern: str) -> dict[str, str]:
    hints = _rabbit(url, vhost, **{"queue-pattern": pattern})
    del hints[P + "rabbitmq.queue"]
    return hints


def _kafka(server: str, **fields: str) -> dict[str, str]:
    hints = {P + "kafka.bootstrap-servers": server, P + "kafka.consumer-group": "g", P + "kafka.topic": "t"}
    return hints | {P + f"kafka.{k}": v for k, v in fields.items()}


# -- the test ------------------------------------------------------------------------------------------


async def test_a_hostile_namespace_steals_nothing_and_does_not_stop_another_teams_wake(
    control_plane: ControlPlane,
    kafka: Kafka,
    admin: WakerClient,  # noqa: F811 - the fixture imported above
    rig_supervisor: Supervisor,
    recorders: Callable[..., Any],
    tmp_path: Path,
) -> None:
    team_b, hostile = _namespace(control_plane, "team-b"), _namespace(control_plane, "hostile")
    waker_kubeconfig = control_plane.service_account_kubeconfig(WAKER_NAMESPACE, "tidescale-waker")
    waker_token = _token_of(waker_kubeconfig)
    canary_env = f"env-canary-{uuid.uuid4().hex}"
    canary_file = tmp_path / "token"
    canary_file.write_text(f"file-canary-{uuid.uuid4().hex}")
    password_b, password_h = f"teamb-{uuid.uuid4().hex}", f"hostile-{uuid.uuid4().hex}"
    _secret(control_plane, team_b, "creds", "teamb", password_b)
    _secret(control_plane, hostile, "creds", "thief", password_h)

    evil = await recorders()  # the hostile tenant's own management API
    evil_kafka = await recorders(http=False)
    broker_b = await recorders()  # team B's own management API
    loopback = await recorders("127.0.0.1", http=False)
    holes = [await recorders(http=False) for _ in range(BLACKHOLES)]

    # Team B: a Kafka Deployment parked through the real handoff, and one with Secret credentials.
    topic, group = await idle_kafka_group(kafka)
    create_deployment(control_plane, team_b, "orders", kafka_hints(kafka, topic, group))
    _parked(control_plane, team_b, "billing", _rabbit(broker_b.url, **{"credentials-secret": "creds"}))

    port = free_port()
    argv = [sys.executable, "-m", "tidescale.cli", "waker", "--kubeconfig", str(waker_kubeconfig)]
    argv += ["--lease-namespace", WAKER_NAMESPACE, "--identity", _name("waker"), "--interval", "0.5"]
    argv += ["--secret-namespaces", f"{team_b},{hostile}", "--port", str(port)]
    waker: Managed = rig_supervisor.start(
        _name("hostile-waker"), argv, env={**os.environ, "CANARY": canary_env}
    )
    try:
        await park(admin, team_b, "orders", await request(admin, team_b, "orders"))

        api = control_plane.server.split("://", 1)[1].rstrip("/")
        thief = evil.url.replace("://", "://thief@")
        sasl = {"sasl": "plain", "sasl-username-env": "HOME", "sasl-password-file": str(canary_file)}
        bomb = ",".join(["0-1000000"] * 300)
        refused: dict[str, tuple[dict[str, str], str]] = {
            "token-file": (_rabbit(thief, **{"password-file": str(canary_file)}), "rabbitmq.password-file"),
            "kubeconfig": (
                _rabbit(thief, **{"password-file": str(waker_kubeconfig)}),
                "rabbitmq.password-file",
            ),
            "env": (_rabbit(thief, **{"password-env": "CANARY"}), "rabbitmq.password-env"),
            "kafka-token": (
                _kafka(f"{evil_kafka.host}:{evil_kafka.port}", **sasl),
                "kafka.sasl-password-file",
            ),
            "link-local": (_kafka("169.254.169.254:80"), "kafka.bootstrap-servers"),
            "loopback": (_rabbit(f"http://127.0.0.1:{loopback.port}"), "rabbitmq.management-url"),
            "api-server": (_kafka(api), "kafka.bootstrap-servers"),
            "other-secret": (_rabbit(evil.url, **{"credentials-secret": "team-b-creds"}), "team-b-creds"),
            "partition-items": (_kafka(kafka.bootstrap, partitions=bomb), "kafka.partitions"),
            "backreference": (_pattern(evil.url, "/", r"(a)\1"), "rabbitmq.queue-pattern"),
        }
        measured = {
            "own-secret": _rabbit(evil.url, **{"credentials-secret": "creds"}),
            "not-json": _rabbit(evil.url, "notjson"),
            "not-utf8": _rabbit(evil.url, "notutf8"),
            "bad-number": _rabbit(evil.url, "badnumber"),
            "huge": _rabbit(evil.url, "huge"),
            "deep": _rabbit(evil.url, "deep"),
            "regex-bomb": _pattern(evil.url, "bomb", "(a|a)+b"),
            "partition-bomb": _kafka(kafka.bootstrap, partitions=",".join(["0-1000000"] * 256)),
        }
        for name, (hints, _) in refused.items():
            _parked(control_plane, hostile, name, hints)
        for name, hints in measured.items():
            _parked(control_plane, hostile, name, hints)
        for i, hole in enumerate(holes):
            _parked(control_plane, hostile, f"hole-{i}", _kafka(f"{hole.host}:{hole.port}", timeout="120s"))

        async def all_refusals_reported() -> bool:
            found = await asyncio.to_thread(_warnings, control_plane, hostile)
            return all(any(word in m for m in found.get(name, [])) for name, (_, word) in refused.items())

        await eventually("a Warning Event naming the annotation of every refused hint", all_refusals_reported)
        await eventually("the blackholes being connected to", lambda: _connected(holes), timeout=60.0)
        await eventually(
            "every blackholed batch in flight", lambda: _in_flight(port, BLACKHOLES), timeout=60.0
        )

        # The attack runs: team B's parked Deployment wakes from one message all the same.
        started = time.monotonic()
        await produce(kafka, topic)
        await eventually("team B's wake", lambda: woken(admin, team_b, "orders", 1), timeout=60.0)
        print(f"team B wake latency during the attack: {time.monotonic() - started:.2f}s")
        await eventually(
            "team B's Secret-credentials Deployment woken", lambda: woken(admin, team_b, "billing", 1)
        )
    finally:
        alive = waker.alive()
        log = waker.log.read_text(errors="replace")
        waker.stop()

    assert alive, f"the waker died:\n{log[-3000:]}"
    assert log.count("serving /healthz") == 1  # never restarted
    stolen = bytes(evil.received) + bytes(evil_kafka.received) + bytes(loopback.received)
    for secret in (waker_token, canary_env, canary_file.read_text(), password_b):
        for form in (
            secret.encode(),
            base64.b64encode(f"thief:{secret}".encode()),
            base64.b64encode(secret.encode()),
        ):
            assert form not in stolen
        assert secret not in log
    assert base64.b64encode(f"teamb:{password_b}".encode()) in bytes(broker_b.received)  # its own, to its own
    assert base64.b64encode(f"teamb:{password_b}".encode()) not in bytes(evil.received)
    assert (evil_kafka.connections, loopback.connections) == (0, 0)


def _token_of(kubeconfig: Path) -> str:
    (user,) = json.loads(kubeconfig.read_text())["users"]
    return str(user["user"]["token"])


async def _in_flight(port: int, at_least: int) -> bool:
    """Whether the waker reports at least ``at_least`` broker batches running or queued."""
    async with httpx.AsyncClient(timeout=5.0) as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    values = [
        line.split()[1] for line in text.splitlines() if line.startswith("tidescale_waker_batches_in_flight ")
    ]
    return bool(values) and float(values[0]) >= at_least


async def _connected(holes: list[Recorder]) -> bool:
    return sum(1 for h in holes if h.connections) >= 4  # at least a namespace's budget of them hangs
