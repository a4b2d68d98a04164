"""Prometheus for the rig: Debian's ``prometheus`` run in the run folder on a free port of the
node address, behind basic auth (its own web config), scraping a gauge exporter the tests set.

The :class:`GaugeExporter` is a tiny HTTP server in the test process serving the Prometheus text
format from a dict; Prometheus scrapes it every second, so a value the test sets is queryable
within about two seconds (:meth:`Prometheus.wait_value`).
"""

from __future__ import annotations

import json
import secrets
import shutil
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.rig.certs import CertificateAuthority
from tests.rig.network import Network
from tests.rig.paths import RigNotBuilt
from tests.rig.processes import Managed, Supervisor, free_port, port_open, run_tool, wait_until

USERNAME = "tidescale"
JOB = "tidescale-test"
_MAKE_RIG = "run `make rig` (tests/rig/build/build.sh prometheus) first"


class PromtoolError(RuntimeError):
    """promtool failed; the message carries its output."""


def prometheus_binaries() -> tuple[Path, Path]:
    """Debian's prometheus and promtool, or RigNotBuilt naming what is missing."""
    found = []
    for name in ("prometheus", "promtool"):
        path = shutil.which(name)
        if path is None:
            raise RigNotBuilt(f"{name} is missing (Debian's prometheus package): {_MAKE_RIG}")
        found.append(Path(path))
    return found[0], found[1]


class GaugeExporter:
    """Serves ``/metrics``: one gauge family per name, one sample per label value, set by tests."""

    def __init__(self, host: str) -> None:
        self._lock = threading.Lock()
        self._gauges: dict[tuple[str, str], float] = {}
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("content-type", "text/plain; version=0.0.4")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer((host, free_port(host)), Handler)
        self.address = f"{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="gauge-exporter", daemon=True)
        self._thread.start()

    def set(self, gauge: str, value: float, *, series: str = "a") -> None:
        """``gauge{series="<series>"} value`` from the next scrape on."""
        with self._lock:
            self._gauges[(gauge, series)] = value

    def remove(self, gauge: str, *, series: str = "a") -> None:
        """The series is gone from the next scrape on (Prometheus marks it stale)."""
        with self._lock:
            self._gauges.pop((gauge, series), None)

    def render(self) -> str:
        with self._lock:
            items = sorted(self._gauges.items())
        lines: list[str] = []
        for (gauge, series), value in items:
            if f"# TYPE {gauge} gauge" not in lines:
                lines.append(f"# TYPE {gauge} gauge")
            text = {"inf": "+Inf", "-inf": "-Inf", "nan": "NaN"}.get(repr(value), repr(value))
            lines.append(f'{gauge}{{series="{series}"}} {text}')
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass(kw_only=True, slots=True)
class Prometheus:
    """A running Prometheus started by :meth:`start`; stopped with the supervisor or :meth:`stop`."""

    host: str
    port: int
    username: str
    password: str
    process: Managed
    exporter: GaugeExporter
    promtool: Path
    directory: Path
    start_seconds: float
    tls_ca: CertificateAuthority | None = None
    """With TLS: the CA that signed the server's certificate (its cert_file is the tls-ca-file)."""
    _argv: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Base URL of the HTTP API (no credentials)."""
        return f"{'https' if self.tls_ca else 'http'}://{self.host}:{self.port}"

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
        name: str = "prometheus",
        timeout: float = 60.0,
    ) -> Prometheus:
        """``tls``: serve https with a certificate of a CA of its own (``tls_ca``)."""
        import bcrypt

        began = time.monotonic()
        binary, promtool = prometheus_binaries()
        directory = run_dir / name
        directory.mkdir(parents=True, exist_ok=True)
        host = network.node_address
        port = free_port(host)
        password = secrets.token_urlsafe(18)
        exporter = GaugeExporter(host)
        config = directory / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n"
            f'      - targets: ["{exporter.address}"]\n'
        )
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        web = directory / "web.yml"
        web_config = f'basic_auth_users:\n  {USERNAME}: "{hashed}"\n'
        tls_ca = None
        if tls:
            tls_ca = CertificateAuthority.create(directory / "tls", common_name="tidescale-rig-prometheus-ca")
            served = tls_ca.issue_serving_cert("prometheus", dns_names=("localhost",), ip_addresses=(host,))
            web_config += (
                f"tls_server_config:\n  cert_file: {served.cert_file}\n  key_file: {served.key_file}\n"
            )
        web.write_text(web_config)
        argv = [
            str(binary),
            f"--config.file={config}",
            f"--web.config.file={web}",
            f"--web.listen-address={host}:{port}",
            f"--storage.tsdb.path={directory / 'data'}",
            "--storage.tsdb.retention.time=2h",
            "--log.level=warn",
        ]
        process = supervisor.start(name, argv, cwd=directory)
        prometheus = cls(
            host=host,
            port=port,
            username=USERNAME,
            password=password,
            process=process,
            exporter=exporter,
            promtool=promtool,
            directory=directory,
            start_seconds=0.0,
            tls_ca=tls_ca,
            _argv=argv,
        )
        wait_until(
            f"prometheus on {host}:{port}", lambda: port_open(host, port), timeout=timeout, process=process
        )
        remaining = max(1.0, timeout - (time.monotonic() - began))
        wait_until("prometheus ready", prometheus._ready, timeout=remaining, process=process)
        prometheus.start_seconds = time.monotonic() - began
        return prometheus

    def _ready(self) -> bool:
        response = httpx.get(
            f"{self.url}/-/ready", auth=(self.username, self.password), timeout=5, verify=self._verify
        )
        return response.status_code == 200

    def api_query(self, query: str) -> dict[str, Any]:
        """The HTTP API's own answer to an instant query (the reference a test compares with)."""
        response = httpx.get(
            f"{self.url}/api/v1/query",
            params={"query": query},
            auth=(self.username, self.password),
            timeout=10,
            verify=self._verify,
        )
        answer: dict[str, Any] = response.json()
        return answer

    def promtool_query(self, query: str) -> list[dict[str, Any]]:
        """``promtool query instant -o json`` against this server: its result (a list of series).
        promtool 2.42 has no HTTP config flag: the credentials go in the URL (test-only)."""
        if self.tls_ca is not None:
            raise PromtoolError("promtool 2.42 cannot be given a CA: query the TLS server with api_query")
        url = f"http://{self.username}:{self.password}@{self.host}:{self.port}"
        argv = [str(self.promtool), "query", "instant", "-o", "json", url, query]
        out = run_tool(argv, what=f"promtool query instant {query!r}", error=PromtoolError, timeout=30)
        result: list[dict[str, Any]] = json.loads(out)
        return result

    def wait_value(self, query: str, expected: float, *, timeout: float = 30.0) -> None:
        """Until the server's own answer to ``query`` is one series (or scalar) of ``expected``."""

        def seen() -> bool:
            data = self.api_query(query)["data"]
            result = data["result"]
            if data["resultType"] == "scalar":
                return float(result[1]) == expected
            return len(result) == 1 and float(result[0]["value"][1]) == expected

        wait_until(f"prometheus answering {query} = {expected}", seen, timeout=timeout, process=self.process)

    def wait_empty(self, query: str, *, timeout: float = 30.0) -> None:
        """Until the server's own answer to ``query`` has no series (e.g. a removed gauge is stale)."""
        wait_until(
            f"prometheus answering {query} with no series",
            lambda: self.api_query(query)["data"]["result"] == [],
            timeout=timeout,
            process=self.process,
        )

    def stop(self) -> None:
        self.process.stop()
        self.exporter.close()

    def start_again(self, supervisor: Supervisor, *, timeout: float = 60.0) -> None:
        """After :meth:`stop_server`: the same server (port, data, users) again, once ready."""
        self.process = supervisor.start(self.process.name, self._argv, cwd=self.directory)
        wait_until("prometheus ready again", self._ready, timeout=timeout, process=self.process)

    def stop_server(self) -> None:
        """Stops the server and keeps the exporter: an outage, ended by :meth:`start_again`."""
        self.process.stop()
