"""NATS for the rig: nats-server (built from its Go module by tests/rig/build/build.sh nats) with
JetStream and its monitoring endpoint, on free ports of the node address, storing in the run folder.

Tests publish, fetch and acknowledge with nats-py (``connect``); the server's own view of a
consumer is its monitoring JSON (:meth:`NatsServer.jsz_consumer`) and the JetStream API's consumer
info (through nats-py).
"""

from __future__ import annotations

import secrets
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.rig.certs import CertificateAuthority
from tests.rig.network import Network
from tests.rig.paths import VERSIONS, RigNotBuilt, cache_dir
from tests.rig.processes import Managed, Supervisor, free_port, port_open, wait_until


def nats_server_binary() -> Path:
    """The cached nats-server, or RigNotBuilt naming it and how to build it."""
    path = cache_dir() / f"nats-server-{VERSIONS['NATS_SERVER_VERSION']}" / "bin" / "nats-server"
    if not path.is_file():
        raise RigNotBuilt(f"{path} is missing: run `make rig` (tests/rig/build/build.sh nats) first")
    return path


@dataclass(kw_only=True, slots=True)
class NatsServer:
    """A running nats-server started by :meth:`start`; stopped with the supervisor or :meth:`stop`."""

    host: str
    port: int
    monitoring_port: int
    name: str
    process: Managed
    directory: Path
    start_seconds: float
    tls_ca: CertificateAuthority | None = None
    """With TLS: the CA of the server's certificate; clients and the monitoring endpoint use TLS."""
    _argv: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The client URL (nats://host:port; with TLS, clients need the CA)."""
        return f"{'tls' if self.tls_ca else 'nats'}://{self.host}:{self.port}"

    @property
    def monitoring_endpoint(self) -> str:
        """host:port of the HTTP monitoring endpoint, as the trigger's monitoring-endpoint takes it."""
        return f"{self.host}:{self.monitoring_port}"

    @property
    def _monitoring_url(self) -> str:
        return f"{'https' if self.tls_ca else 'http'}://{self.monitoring_endpoint}"

    @property
    def _verify(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=str(self.tls_ca.cert_file)) if self.tls_ca else True

    @classmethod
    def start(
        cls,
        supervisor: Supervisor,
        network: Network,
        run_dir: Path,
        *,
        tls: bool = False,
        name: str = "nats",
        timeout: float = 60.0,
    ) -> NatsServer:
        """``tls``: clients and the monitoring endpoint (https) on a certificate of a CA of its own."""
        began = time.monotonic()
        binary = nats_server_binary()
        directory = run_dir / name
        directory.mkdir(parents=True, exist_ok=True)
        host = network.node_address
        port, monitoring_port = free_port(host), free_port(host)
        server_name = f"tsrig{network.slot}-{secrets.token_hex(3)}"
        tls_ca, tls_config = None, ""
        if tls:
            tls_ca = CertificateAuthority.create(directory / "tls", common_name="tidescale-rig-nats-ca")
            served = tls_ca.issue_serving_cert("nats", dns_names=("localhost",), ip_addresses=(host,))
            tls_config = f'tls {{\n  cert_file: "{served.cert_file}"\n  key_file: "{served.key_file}"\n}}\n'
        monitoring = "https" if tls else "http"
        config = directory / "nats.conf"
        config.write_text(
            f'server_name: "{server_name}"\n'
            f'listen: "{host}:{port}"\n'
            f'{monitoring}: "{host}:{monitoring_port}"\n'
            f"{tls_config}"
            f'jetstream {{\n  store_dir: "{directory / "js"}"\n  max_memory_store: 64MB\n'
            "  max_file_store: 512MB\n}\n"
        )
        argv = [str(binary), "-c", str(config)]
        process = supervisor.start(name, argv, cwd=directory)
        server = cls(
            host=host,
            port=port,
            monitoring_port=monitoring_port,
            name=server_name,
            process=process,
            directory=directory,
            start_seconds=0.0,
            tls_ca=tls_ca,
            _argv=argv,
        )
        wait_until(
            f"nats-server on {host}:{port}", lambda: port_open(host, port), timeout=timeout, process=process
        )
        remaining = max(1.0, timeout - (time.monotonic() - began))
        wait_until("nats-server healthy with JetStream", server._healthy, timeout=remaining, process=process)
        server.start_seconds = time.monotonic() - began
        return server

    @classmethod
    def start_cluster(
        cls, supervisor: Supervisor, network: Network, run_dir: Path, *, size: int = 3, timeout: float = 90.0
    ) -> list[NatsServer]:
        """``size`` nats-servers routed into one JetStream cluster; returns once a meta leader is
        elected (streams can be created from then on)."""
        began = time.monotonic()
        binary = nats_server_binary()
        host = network.node_address
        cluster = f"tsrig{network.slot}-{secrets.token_hex(3)}"
        ports = [(free_port(host), free_port(host), free_port(host)) for _ in range(size)]
        routes = ", ".join(f'"nats-route://{host}:{route}"' for _, _, route in ports)
        servers: list[NatsServer] = []
        for index, (port, monitoring_port, route_port) in enumerate(ports):
            name = f"{cluster}-{index}"
            directory = run_dir / "nats-cluster" / name
            directory.mkdir(parents=True, exist_ok=True)
            config = directory / "nats.conf"
            config.write_text(
                f'server_name: "{name}"\nlisten: "{host}:{port}"\nhttp: "{host}:{monitoring_port}"\n'
                f'cluster {{\n  name: "{cluster}"\n  listen: "{host}:{route_port}"\n'
                f"  routes: [{routes}]\n}}\n"
                f'jetstream {{\n  store_dir: "{directory / "js"}"\n  max_memory_store: 64MB\n'
                "  max_file_store: 512MB\n}\n"
            )
            argv = [str(binary), "-c", str(config)]
            process = supervisor.start(f"nats-cluster-{index}", argv, cwd=directory)
            servers.append(
                cls(
                    host=host,
                    port=port,
                    monitoring_port=monitoring_port,
                    name=name,
                    process=process,
                    directory=directory,
                    start_seconds=0.0,
                    _argv=argv,
                )
            )
        for server in servers:
            remaining = max(1.0, timeout - (time.monotonic() - began))
            wait_until(
                f"{server.name} in a JetStream cluster with a meta leader",
                server._meta_leader_known,
                timeout=remaining,
                process=server.process,
            )
        for server in servers:
            server.start_seconds = time.monotonic() - began
        return servers

    def _meta_leader_known(self) -> bool:
        meta = self.jsz().get("meta_cluster") or {}
        return bool(meta.get("leader")) and int(meta.get("cluster_size") or 0) > 1

    def _healthy(self) -> bool:
        response = httpx.get(
            f"{self._monitoring_url}/healthz?js-enabled-only=true", timeout=5, verify=self._verify
        )
        return response.status_code == 200

    def jsz(self, account: str = "$G") -> dict[str, Any]:
        """The server's own monitoring JSON for one account, consumers included."""
        response = httpx.get(
            f"{self._monitoring_url}/jsz",
            params={"acc": account, "consumers": "true"},
            timeout=10,
            verify=self._verify,
        )
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    def jsz_consumer(self, stream: str, consumer: str, account: str = "$G") -> dict[str, Any]:
        """One consumer's detail from :meth:`jsz` (AssertionError naming what is missing)."""
        for detail in self.jsz(account).get("account_details", []):
            for found in detail.get("stream_detail", []):
                if found["name"] == stream:
                    for entry in found.get("consumer_detail", []):
                        if entry["name"] == consumer:
                            return dict(entry)
        raise AssertionError(f"/jsz of account {account} shows no consumer {stream}/{consumer}")

    def stop(self) -> None:
        self.process.stop()

    def start_again(self, supervisor: Supervisor, *, timeout: float = 60.0) -> None:
        """After :meth:`stop`: the same server (ports, name, stored streams) again, once healthy."""
        self.process = supervisor.start(self.process.name, self._argv, cwd=self.directory)
        wait_until("nats-server healthy again", self._healthy, timeout=timeout, process=self.process)
