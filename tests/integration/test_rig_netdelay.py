"""The rig's network delay (tests/rig/netdelay.py) holds a pod's packets to the chosen port, and
only those, and lets go of them when removed."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.rig.netdelay import delay_pod_traffic
from tests.rig.network import Network, PodNetwork

pytestmark = pytest.mark.rig

DELAY = 1.0

# Run inside the pod's namespace: one connection, three one-byte round trips, their times.
CLIENT = """
import socket, sys, time
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30) as s:
    for _ in range(3):
        began = time.monotonic()
        s.sendall(b"x")
        assert s.recv(1) == b"x"
        print(time.monotonic() - began)
"""


class EchoServer:
    """Echoes every byte, on the node address (where the brokers listen)."""

    def __init__(self, host: str) -> None:
        self.listener = socket.create_server((host, 0))
        self.port = int(self.listener.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(64):
                conn.sendall(data)


@pytest.fixture
def pod(rig_network: Network) -> Iterator[PodNetwork]:
    key = f"netdelay/{uuid.uuid4().hex[:6]}"
    yield rig_network.add_pod(key)
    rig_network.remove_pod(key)


def round_trips(pod: PodNetwork, host: str, port: int) -> list[float]:
    result = subprocess.run(
        [*pod.exec_prefix(), sys.executable, "-c", CLIENT, host, str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [float(line) for line in result.stdout.split()]


def test_only_the_chosen_port_is_delayed_and_removing_the_delay_lets_it_go(
    rig_network: Network, pod: PodNetwork
) -> None:
    host = rig_network.node_address
    delayed, other = EchoServer(host), EchoServer(host)
    delay = delay_pod_traffic(pod.namespace, host=host, ports=[delayed.port], delay=DELAY)
    try:
        times = round_trips(pod, host, delayed.port)
        assert all(t >= DELAY for t in times), times  # nothing arrives before it is let go
        time.sleep(3 * DELAY)  # the connection's closing packets pass through the delay too
        held = delay.seen
        assert delay.packets == held >= 6  # connection setup and three requests at least

        round_trips(pod, host, other.port)
        assert delay.seen == held, "traffic to another port went through the delay"
    finally:
        delay.remove()
    round_trips(pod, host, delayed.port)
    assert delay.seen == held, "traffic went through the delay after its removal"
    for server in (delayed, other):
        server.listener.close()
