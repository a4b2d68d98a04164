"""The shared HTTP server under a hostile client on the rig (issue 11, item 8).

- 600 idle keep-alive connections at an agent's port (more than its 512-connection limit): the
  pod runner's readiness probe, which plays the kubelet's, keeps being answered, so the pod stays
  Ready and the agent is never restarted.
- Large bodies at the injector: 40 concurrent 8 MiB bodies, 40 bodies over the limit and a few
  nested-container bombs; the injector keeps serving, is never restarted, and its peak resident
  memory stays under the chart's memory limit for it (192 MiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path
from typing import Any

import pytest

from tests.integration.rigkube import (
    AGENT_PORT,
    agent_container,
    apply,
    get,
    items,
    namespace_with_agent_rbac,
    unique,
    wait_for,
)
from tests.integration.test_injector import start_injector
from tests.rig.certs import CertificateAuthority
from tests.rig.controlplane import ControlPlane
from tests.rig.podrunner import PodRunner
from tests.rig.processes import Supervisor

pytestmark = pytest.mark.rig

IDLE_CONNECTIONS = 600
AGENT_CONNECTION_LIMIT = 512  # tidescale.httpserver.Limits.max_connections
INJECTOR_MEMORY_LIMIT = 192 * 2**20  # charts/tidescale/values.yaml injector.resources.limits.memory


def pod_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def agent_restarts(pod: dict[str, Any]) -> int:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return sum(int(s.get("restartCount", 0)) for s in statuses if s["name"] == "tidescale-agent")


async def hold_idle_connections(
    address: str, count: int
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """``count`` keep-alive connections, each after one answered request, left idle and open."""
    held = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection(address, AGENT_PORT)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: agent\r\n\r\n")
        await writer.drain()
        held.append((reader, writer))
    for reader, _ in held:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            async with asyncio.timeout(5):
                await reader.readuntil(b"ok\n")
    return held


async def closed_by_server(held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> int:
    closed = 0
    for reader, _ in held:
        try:
            async with asyncio.timeout(0.01):
                data = await reader.read(1)
        except TimeoutError:
            continue  # still open, idle
        except ConnectionError:
            data = b""
        closed += data == b""
    return closed


def test_six_hundred_idle_keep_alive_connections_leave_the_agent_pod_ready(
    control_plane: ControlPlane, pod_runner: PodRunner
) -> None:
    namespace, name = unique("keepalive"), "web"
    namespace_with_agent_rbac(control_plane, namespace)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "serviceAccountName": "workload",
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{"name": "echo", "image": "tidescale-test/echo"}, agent_container(name)],
                },
            },
        },
    }
    apply(control_plane, deployment, namespace=namespace)

    def ready_pod() -> dict[str, Any] | None:
        for pod in items(control_plane, "pods", namespace, f"app={name}"):
            if pod_ready(pod):
                return pod
        return None

    pod = wait_for("the agent's pod to be Ready", ready_pod, timeout=90)
    pod_name, address = pod["metadata"]["name"], pod["status"]["podIP"]
    restarts_before = agent_restarts(pod)

    async def attack() -> tuple[list[bool], int]:
        held = await hold_idle_connections(address, IDLE_CONNECTIONS)
        try:
            # The probe runs every 2 s and fails the pod after 3 misses: watch 10 probe periods.
            samples = []
            for _ in range(40):
                current = await asyncio.to_thread(get, control_plane, "pod", pod_name, namespace)
                samples.append(pod_ready(current))
                await asyncio.sleep(0.5)
            return samples, await closed_by_server(held)
        finally:
            for _, writer in held:
                writer.close()

    samples, closed = asyncio.run(attack())
    assert all(samples), f"the pod left Ready while the connections were held: {samples}"
    # The limit was really reached: the server closed the longest idle connections to make room.
    assert closed >= IDLE_CONNECTIONS - AGENT_CONNECTION_LIMIT
    assert agent_restarts(get(control_plane, "pod", pod_name, namespace)) == restarts_before
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false")


def peak_memory(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


def test_large_and_oversized_bodies_leave_the_injector_serving_with_bounded_memory(
    control_plane: ControlPlane, rig_supervisor: Supervisor, tmp_path_factory: pytest.TempPathFactory
) -> None:
    ca = CertificateAuthority.create(tmp_path_factory.mktemp("bodies-ca"))
    injector = start_injector(control_plane, rig_supervisor, ca, "injector-bodies")
    host, port = injector.url.removeprefix("https://").rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca.cert_file))
    eight_mib = 8 * 2**20
    string_body = b'{"a":"' + b"x" * (eight_mib - 8) + b'"}'
    bomb_body = b"[" + b"[]," * (eight_mib // 3 - 1) + b"[]]"

    async def send(length: int, body: bytes) -> int:
        try:
            reader, writer = await asyncio.open_connection(host, int(port), ssl=context)
        except (ConnectionError, ssl.SSLError):
            return 0
        try:
            head = f"POST /mutate HTTP/1.1\r\nHost: injector\r\nContent-Length: {length}\r\n\r\n".encode()
            writer.write(head + body)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            async with asyncio.timeout(60):
                status_line = await reader.readline()
            return int(status_line.split(b" ")[1]) if status_line else 0
        except (ConnectionError, ssl.SSLError, TimeoutError, IndexError, ValueError):
            return 0
        finally:
            writer.close()

    async def attack() -> list[int]:
        return await asyncio.gather(
            *(send(len(string_body), string_body) for _ in range(40)),
            *(send(9 * 2**20, b"") for _ in range(40)),
            *(send(len(bomb_body), bomb_body) for _ in range(5)),
        )

    statuses = asyncio.run(attack())
    peak = peak_memory(injector.process.pid)
    print(f"injector peak resident memory under the body attack: {peak / 2**20:.0f} MiB")
    assert peak < INJECTOR_MEMORY_LIMIT, f"peak resident memory {peak / 2**20:.0f} MiB"
    assert injector.process.alive(), injector.process.log_tail()
    assert injector.get("/readyz").status_code == 200
    # Every body got an answer: too big (413), not a review (400), no room (503) or too slow (408).
    assert set(statuses) <= {400, 408, 413, 503}, statuses
    assert statuses[40:80] == [413] * 40
