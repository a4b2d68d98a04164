"""The rig's pod network: one bridge on this machine and a network namespace per pod.

The bridge carries an address of its own (the "node" address) where the API server
and the brokers listen, so pod processes reach them exactly as pods reach cluster
services, and the API server accepts pod addresses in Endpoints (it refuses
loopback). Traffic stays on this machine: between the bridge and the namespaces
the rig made.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
import threading
from dataclasses import dataclass, field

SUBNET = ipaddress.ip_network(os.environ.get("TIDESCALE_RIG_SUBNET", "10.213.0.0/16"))
BRIDGE = os.environ.get("TIDESCALE_RIG_BRIDGE", "tsrig0")


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


@dataclass(kw_only=True, slots=True)
class Network:
    """The bridge and the pod namespaces made on it. ``close`` removes all of it."""

    bridge: str = BRIDGE
    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network = SUBNET
    _next_host: int = 2
    _pods: dict[str, PodNetwork] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def node_address(self) -> str:
        """The bridge's own address: where the control plane and brokers listen."""
        return str(self.subnet.network_address + 1)

    def open(self) -> Network:
        if os.geteuid() != 0:
            raise NetworkError("the rig's pod network needs root (ip netns, veth, bridge)")
        self._remove_leftovers()
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.node_address}/{self.subnet.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        return self

    def add_pod(self, key: str) -> PodNetwork:
        """A namespace with its own address for the pod ``key`` (idempotent)."""
        with self._lock:
            if key in self._pods:
                return self._pods[key]
            index = self._next_host
            self._next_host += 1
        address = str(self.subnet.network_address + index)
        pod = PodNetwork(namespace=f"tsrig-{index}", address=address, host_veth=f"tsv{index}")
        peer = f"tsp{index}"
        _ip("netns", "add", pod.namespace)
        _ip("link", "add", pod.host_veth, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", pod.namespace)
        _ip("link", "set", pod.host_veth, "master", self.bridge)
        _ip("link", "set", pod.host_veth, "up")
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

    def close(self) -> None:
        for key in list(self._pods):
            self.remove_pod(key)
        _ip_quiet("link", "del", self.bridge)

    def _remove_leftovers(self) -> None:
        """A run that was killed leaves its bridge and namespaces: this rig's names only."""
        _ip_quiet("link", "del", self.bridge)
        listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
        for line in listing.stdout.splitlines():
            name = line.split()[0] if line.strip() else ""
            if name.startswith("tsrig-"):
                with contextlib.suppress(Exception):
                    _ip_quiet("netns", "del", name)
