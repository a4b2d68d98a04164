"""The rig's pod network: one bridge on this machine and a network namespace per pod.

The bridge carries an address of its own (the "node" address) where the API server
and the brokers listen, so pod processes reach them exactly as pods reach cluster
services, and the API server accepts pod addresses in Endpoints (it refuses
loopback). Traffic stays on this machine: between the bridge and the namespaces
the rig made.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

# Each running rig takes a slot 1..250: its bridge ``tsb<slot>``, its subnet
# 10.213.<slot>.0/24, its namespaces ``tsrig-<slot>-<n>``. Slots are claimed by
# pid files, so two rigs (a developer's and a test run) never touch each other's
# interfaces, and the leftovers of a killed run are reclaimed by the next one.
SLOT_DIR = Path(os.environ.get("TIDESCALE_RIG_SLOTS", "/run/tidescale-rig"))
SUBNET_BASE = ipaddress.ip_network("10.213.0.0/16")


class NetworkError(RuntimeError):
    """The rig could not set up its bridge or a pod's namespace."""


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NetworkError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")


def _ip_quiet(*args: str) -> None:
    subprocess.run(["ip", *args], capture_output=True, check=False)


@dataclass(frozen=True, kw_only=True, slots=True)
class PodNetwork:
    """A pod's namespace, its address and the host end of its veth pair."""

    namespace: str
    address: str
    host_veth: str

    def exec_prefix(self) -> list[str]:
        """argv prefix that runs a command inside the pod's namespace."""
        return ["ip", "netns", "exec", self.namespace]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claim_slot() -> int:
    SLOT_DIR.mkdir(parents=True, exist_ok=True)
    for slot in range(1, 251):
        marker = SLOT_DIR / f"{slot}.pid"
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = int(marker.read_text().strip() or 0)
            except (OSError, ValueError):
                owner = 0
            if owner and _pid_alive(owner):
                continue
            _remove_slot_leftovers(slot)
            marker.unlink(missing_ok=True)
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                continue
        with os.fdopen(fd, "w") as out:
            out.write(str(os.getpid()))
        return slot
    raise NetworkError(f"no free rig network slot in {SLOT_DIR}: 250 rigs running?")


def _remove_slot_leftovers(slot: int) -> None:
    """What a killed run of this slot left behind: this rig's names only."""
    _ip_quiet("link", "del", f"tsb{slot}")
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    for line in listing.stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(f"tsrig-{slot}-"):
            _ip_quiet("netns", "del", name)


@dataclass(kw_only=True, slots=True)
class Network:
    """The bridge and the pod namespaces made on it. ``close`` removes all of it."""

    slot: int = 0
    _next_host: int = 2
    _free_hosts: list[int] = field(default_factory=list)
    """Host indexes of removed pods, handed out again so a long session never runs out."""
    _pods: dict[str, PodNetwork] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def bridge(self) -> str:
        return f"tsb{self.slot}"

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{SUBNET_BASE.network_address + self.slot * 256}/24")

    @property
    def node_address(self) -> str:
        """The bridge's own address: where the control plane and brokers listen."""
        return str(self.subnet.network_address + 1)

    def open(self) -> Network:
        if os.geteuid() != 0:
            raise NetworkError("the rig's pod network needs root (ip netns, veth, bridge)")
        self.slot = _claim_slot()
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.node_address}/{self.subnet.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        return self

    def add_pod(self, key: str) -> PodNetwork:
        """A namespace with its own address for the pod ``key`` (idempotent)."""
        with self._lock:
            if key in self._pods:
                return self._pods[key]
            # Fresh addresses first; a removed pod's address only once the subnet is used up,
            # oldest first, so a reused address has rarely left a stale neighbour entry behind.
            if self._next_host <= 254 or not self._free_hosts:
                index = self._next_host
                self._next_host += 1
            else:
                index = self._free_hosts.pop(0)
        if index > 254:
            raise NetworkError(f"rig subnet {self.subnet} is full (253 pods)")
        address = str(self.subnet.network_address + index)
        pod = PodNetwork(
            namespace=f"tsrig-{self.slot}-{index}", address=address, host_veth=f"tsv{self.slot}x{index}"
        )
        peer = f"tsp{self.slot}x{index}"
        _ip("netns", "add", pod.namespace)
        _ip("link", "add", pod.host_veth, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", pod.namespace)
        _ip("link", "set", pod.host_veth, "master", self.bridge)
        _ip("link", "set", pod.host_veth, "up")
        # A reused address may still have the old pod's MAC in this machine's neighbour table.
        _ip_quiet("neigh", "flush", "to", address, "dev", self.bridge)
        ns = ["netns", "exec", pod.namespace, "ip"]
        _ip(*ns, "link", "set", "lo", "up")
        _ip(*ns, "link", "set", peer, "name", "eth0")
        _ip(*ns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        _ip(*ns, "link", "set", "eth0", "up")
        _ip(*ns, "route", "add", "default", "via", self.node_address)
        with self._lock:
            self._pods[key] = pod
        return pod

    def remove_pod(self, key: str) -> None:
        with self._lock:
            pod = self._pods.pop(key, None)
        if pod is not None:
            _ip_quiet("link", "del", pod.host_veth)
            _ip_quiet("netns", "del", pod.namespace)
            with self._lock:
                self._free_hosts.append(int(pod.address.rsplit(".", 1)[1]))

    def close(self) -> None:
        for key in list(self._pods):
            self.remove_pod(key)
        if self.slot:
            _remove_slot_leftovers(self.slot)
            (SLOT_DIR / f"{self.slot}.pid").unlink(missing_ok=True)
