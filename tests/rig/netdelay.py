"""Network delay between a pod and some TCP ports of one address (the brokers), for fault tests.

``tc qdisc ... netem delay`` is the usual tool, but this machine's kernel is built without
``sch_netem`` (tc answers "Specified qdisc kind is unknown"), so the rig holds the packets itself:

- a TUN device, made here and moved into the pod's namespace, where a policy rule (``ip rule
  ... ipproto tcp dport P``) routes only the pod's TCP packets to the given ports of the given
  address through it; everything else (the API server, peers, probes) keeps its usual route;
- a thread reads each packet from the device, holds it ``delay`` seconds, and hands it to this
  machine's stack through a raw socket, which delivers it to the broker listening on the node
  address; answers come back to the pod by the bridge as usual.

So every packet the pod sends to a broker (connection setup, requests, acknowledgements) arrives
``delay`` seconds late, in order: each request/answer round trip takes at least ``delay``. Only
the pod's side is delayed; other pods are untouched. Removing the delay delivers what is held at
once and restores the routes; removing the pod's namespace removes it all too.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import os
import select
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

_TUNSETIFF = 0x400454CA
_IFF_TUN, _IFF_NO_PI = 0x0001, 0x1000
_ROUTE_TABLE = 4242  # the pod namespace's own table for the delayed traffic
_RULE_PRIORITY = 4242
_MTU = 65535


class DelayError(RuntimeError):
    """The rig could not set up (or remove) a delay; the message says which step failed."""


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DelayError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")


def _pod_address(namespace: str) -> str:
    listing = subprocess.run(
        ["ip", "netns", "exec", namespace, "ip", "-4", "-o", "addr", "show", "dev", "eth0"],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in listing.stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            return parts[parts.index("inet") + 1].split("/")[0]
    raise DelayError(f"network namespace {namespace} has no IPv4 address on eth0: {listing.stderr.strip()}")


@dataclass(kw_only=True, slots=True)
class PodDelay:
    """A running delay; :meth:`remove` ends it (idempotent)."""

    namespace: str
    """The pod's network namespace (``PodRunner.pod_netns()``)."""
    host: str
    ports: tuple[int, ...]
    delay: float
    device: str
    packets: int = 0
    """Packets held and delivered so far."""
    seen: int = 0
    """IPv4 packets taken in so far (delivered or still held)."""
    _tun: int = -1
    _raw: socket.socket | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        held: list[tuple[float, int, bytes]] = []
        order = 0
        assert self._raw is not None
        while not self._stop.is_set():
            now = time.monotonic()
            while held and held[0][0] <= now:
                self._deliver(heapq.heappop(held)[2])
            wait = min(0.2, held[0][0] - now) if held else 0.2
            readable, _, _ = select.select([self._tun], [], [], max(0.0, wait))
            if readable:
                try:
                    packet = os.read(self._tun, _MTU)
                except OSError:
                    break  # the device is gone (the pod's namespace was removed)
                if len(packet) < 20 or packet[0] >> 4 != 4:
                    continue  # the device's own IPv6 chatter (router solicitations): not the pod's
                order += 1
                self.seen += 1
                heapq.heappush(held, (time.monotonic() + self.delay, order, packet))
        for _, _, packet in sorted(held):
            self._deliver(packet)

    def _deliver(self, packet: bytes) -> None:
        assert self._raw is not None
        destination = socket.inet_ntoa(packet[16:20])
        with contextlib.suppress(OSError):
            self._raw.sendto(packet, (destination, 0))
            self.packets += 1

    def remove(self) -> None:
        """Delivers what is held, then removes the rules and the device."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        for port in self.ports:
            subprocess.run(
                ["ip", "netns", "exec", self.namespace, "ip", "rule", "del", "priority", str(_RULE_PRIORITY),
                 "to", f"{self.host}/32", "ipproto", "tcp", "dport", str(port), "lookup", str(_ROUTE_TABLE)],
                capture_output=True,
                check=False,
            )  # fmt: skip
        if self._tun >= 0:
            os.close(self._tun)  # a TUN device nobody holds (not persistent) disappears with its routes
            self._tun = -1
        if self._raw is not None:
            self._raw.close()
            self._raw = None


def delay_pod_traffic(namespace: str, *, host: str, ports: Sequence[int], delay: float) -> PodDelay:
    """Holds every TCP packet the pod in ``namespace`` sends to ``host`` on ``ports`` for ``delay``
    seconds. Needs root (a TUN device, a raw socket, ``ip netns``)."""
    if delay <= 0 or not ports:
        raise DelayError(f"a delay needs a positive duration and at least one port, got {delay}s and {ports}")
    if os.geteuid() != 0:
        raise DelayError("delaying a pod's traffic needs root (a TUN device, a raw socket, ip netns)")
    if not os.path.exists("/dev/net/tun"):
        raise DelayError("/dev/net/tun is missing: the rig's network delay needs TUN devices (modprobe tun)")
    device = f"tsd{namespace.removeprefix('tsrig-').replace('-', 'x')}"[:15]
    tun = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(tun, _TUNSETIFF, struct.pack("16sH22x", device.encode(), _IFF_TUN | _IFF_NO_PI))
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    except OSError as exc:
        os.close(tun)
        raise DelayError(f"cannot make TUN device {device} or a raw socket: {exc}") from exc
    running = PodDelay(
        namespace=namespace, host=host, ports=tuple(ports), delay=delay, device=device, _tun=tun, _raw=raw
    )
    try:
        source = _pod_address(namespace)
        _ip("link", "set", device, "netns", namespace)
        inside = ["netns", "exec", namespace, "ip"]
        _ip(*inside, "link", "set", device, "up")
        _ip(
            *inside,
            "route",
            "replace",
            f"{host}/32",
            "dev",
            device,
            "src",
            source,
            "table",
            str(_ROUTE_TABLE),
        )
        running._thread = threading.Thread(target=running._run, name=f"delay-{device}", daemon=True)
        running._thread.start()
        for port in running.ports:
            _ip(*inside, "rule", "add", "priority", str(_RULE_PRIORITY), "to", f"{host}/32",
                "ipproto", "tcp", "dport", str(port), "lookup", str(_ROUTE_TABLE))  # fmt: skip
    except DelayError:
        running.remove()
        raise
    return running
