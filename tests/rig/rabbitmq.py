"""RabbitMQ for the rig: our own node of Debian's rabbitmq-server, nothing of the system one.

Everything the node writes (database, logs, config, the Erlang cookie in HOME) lives
in the run folder; its node name, Erlang distribution port and epmd port are its
own, so it runs beside a system broker or another rig without touching either.
epmd is started by us in the foreground (the VM is told not to start one), so the
supervisor stops it by pid like every other process, after the node.
"""

from __future__ import annotations

import functools
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.rig.certs import CertificateAuthority, KeyPair
from tests.rig.network import Network
from tests.rig.paths import rabbitmq_scripts
from tests.rig.processes import Managed, Supervisor, free_port, port_open, run_tool, wait_until

USERNAME = "tidescale"


class RabbitMQCtlError(RuntimeError):
    """rabbitmqctl failed; the message carries its output."""


@dataclass(kw_only=True, slots=True)
class RabbitMQ:
    """A running RabbitMQ node started by :meth:`start`; stopped with the supervisor."""

    host: str
    amqp_port: int
    management_port: int
    node: str
    username: str
    password: str
    env: dict[str, str]
    scripts: Path
    process: Managed
    epmd: Managed
    start_seconds: float  # from launch to a management API that answers
    tls_port: int = 0
    """AMQPS listener: a certificate of ``tls_ca``; client certificates verified when sent (EXTERNAL)."""
    tls_ca: CertificateAuthority | None = None

    @property
    def amqps_address(self) -> str:
        """host:port of the AMQPS listener."""
        return f"{self.host}:{self.tls_port}"

    @property
    def amqp_url(self) -> str:
        """AMQP URL with the credentials in it: for tests, never for logs."""
        return f"amqp://{self.username}:{self.password}@{self.host}:{self.amqp_port}/"

    @property
    def management_url(self) -> str:
        """Base URL of the management HTTP API (``/api/...`` below it), without credentials."""
        return f"http://{self.host}:{self.management_port}"

    @classmethod
    def start(
        cls, supervisor: Supervisor, network: Network, run_dir: Path, *, timeout: float = 120.0
    ) -> RabbitMQ:
        began = time.monotonic()
        scripts = rabbitmq_scripts()
        directory = run_dir / "rabbitmq"
        home = directory / "home"
        home.mkdir(parents=True, exist_ok=True)
        host = network.node_address
        amqp_port = free_port(host)
        management_port = free_port(host)
        epmd_port = free_port("127.0.0.1")
        dist_port = free_port("127.0.0.1")
        # Unique per run: two rigs on one machine must never join or address each other's node.
        node = f"tsrig{network.slot}-{secrets.token_hex(4)}@localhost"
        password = secrets.token_urlsafe(18)

        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20))
        cookie.chmod(0o400)
        tls_port = free_port(host)
        tls_ca = CertificateAuthority.create(directory / "tls", common_name="tidescale-rig-rabbitmq-ca")
        tls_server = tls_ca.issue_serving_cert("rabbitmq", dns_names=("localhost",), ip_addresses=(host,))
        config = directory / "rabbitmq.conf"
        config.write_text(
            _config(host, amqp_port, management_port, password)
            + _tls_config(host, tls_port, tls_ca.cert_file, tls_server)
        )
        plugins = directory / "enabled_plugins"
        plugins.write_text("[rabbitmq_management,rabbitmq_auth_mechanism_ssl].\n")
        env_file = directory / "rabbitmq-env.conf"
        env_file.write_text("# empty: keeps /etc/rabbitmq/rabbitmq-env.conf out of the rig's node\n")

        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "RABBITMQ_NODENAME": node,
            "RABBITMQ_CONF_ENV_FILE": str(env_file),
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(directory / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(directory / "log"),
            "RABBITMQ_LOGS": "-",  # to standard output, which the supervisor keeps in logs/rabbitmq.log
            "RABBITMQ_DIST_PORT": str(dist_port),
            "ERL_EPMD_PORT": str(epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            # Only the epmd we start and supervise: a VM-started one would daemonize out of reach.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                "-start_epmd false -kernel inet_dist_use_interface {127,0,0,1}"
            ),
            "RABBITMQ_CTL_ERL_ARGS": "-start_epmd false",
        }

        epmd = supervisor.start(
            "rabbitmq-epmd",
            ["epmd", "-port", str(epmd_port), "-address", "127.0.0.1"],
            env=env,
            cwd=directory,
        )
        wait_until(
            f"epmd on 127.0.0.1:{epmd_port}",
            lambda: port_open("127.0.0.1", epmd_port),
            timeout=10,
            process=epmd,
        )
        process = supervisor.start("rabbitmq", [scripts / "rabbitmq-server"], env=env, cwd=directory)
        rabbit = cls(
            host=host,
            amqp_port=amqp_port,
            management_port=management_port,
            node=node,
            username=USERNAME,
            password=password,
            env=env,
            scripts=scripts,
            process=process,
            epmd=epmd,
            start_seconds=0.0,
            tls_port=tls_port,
            tls_ca=tls_ca,
        )
        for what, port in (("AMQP", amqp_port), ("management", management_port), ("AMQPS", tls_port)):
            remaining = max(1.0, timeout - (time.monotonic() - began))
            wait_until(
                f"rabbitmq {what} listener on {host}:{port}",
                functools.partial(port_open, host, port),
                timeout=remaining,
                process=process,
            )
        remaining = max(1.0, timeout - (time.monotonic() - began))
        wait_until(
            "rabbitmq management API answering", rabbit._api_answers, timeout=remaining, process=process
        )
        rabbit.start_seconds = time.monotonic() - began
        return rabbit

    def _api_answers(self) -> bool:
        response = httpx.get(
            f"{self.management_url}/api/overview", auth=(self.username, self.password), timeout=5
        )
        return response.status_code == 200

    def queue_statistics_known(self, queue: str, vhost: str = "/") -> bool:
        """Whether the management API has published ``queue``'s message counts yet (a few seconds
        after it is declared): tidescale reads counts nobody has seen as unknown, keeping it active."""
        from urllib.parse import quote

        response = httpx.get(
            f"{self.management_url}/api/queues/{quote(vhost, safe='')}/{quote(queue, safe='')}",
            auth=(self.username, self.password),
            timeout=5,
        )
        body = response.json() if response.status_code == 200 else {}
        return all(body.get(f) is not None for f in ("messages_ready", "messages_unacknowledged"))

    def rabbitmqctl(self, *args: str, timeout: float = 60.0) -> str:
        """Runs Debian's rabbitmqctl against this node and returns its standard output.

        e.g. ``rabbitmqctl("-q", "list_queues", "name", "messages", "consumers")``.
        """
        argv = [str(self.scripts / "rabbitmqctl"), "-n", self.node, *args]
        return run_tool(
            argv, what=f"rabbitmqctl {' '.join(args)}", error=RabbitMQCtlError, timeout=timeout, env=self.env
        )

    def open_listeners(self) -> list[str]:
        """The node's listeners ("host:port": AMQP, management, epmd, distribution) still accepting."""
        ends = (
            (self.host, self.amqp_port),
            (self.host, self.management_port),
            ("127.0.0.1", int(self.env["ERL_EPMD_PORT"])),
            ("127.0.0.1", int(self.env["RABBITMQ_DIST_PORT"])),
        )
        return [f"{host}:{port}" for host, port in ends if port_open(host, port)]

    def stop(self) -> None:
        """Stops the node, then its epmd (which the node deregisters from on the way out)."""
        self.process.stop(grace=20)
        self.epmd.stop()

    def stop_node(self) -> None:
        """Stops the node and keeps its epmd: a broker outage, ended by :meth:`start_node_again`."""
        self.process.stop(grace=20)

    def start_node_again(self, supervisor: Supervisor, *, timeout: float = 120.0) -> None:
        """After :meth:`stop_node`: the same node (name, ports, users, durable queues) again;
        returns once its management API answers."""
        if self.process.alive():
            raise RabbitMQCtlError(f"rabbitmq (pid {self.process.pid}) is still running: stop it first")
        directory = Path(self.env["RABBITMQ_MNESIA_BASE"]).parent
        self.process = supervisor.start(
            "rabbitmq", [self.scripts / "rabbitmq-server"], env=self.env, cwd=directory
        )
        for what, port in (("AMQP", self.amqp_port), ("management", self.management_port)):
            wait_until(
                f"rabbitmq {what} listener on {self.host}:{port} again",
                functools.partial(port_open, self.host, port),
                timeout=timeout,
                process=self.process,
            )
        wait_until(
            "rabbitmq management API answering again",
            self._api_answers,
            timeout=timeout,
            process=self.process,
        )


def _tls_config(host: str, port: int, ca_file: Path, server: KeyPair) -> str:
    """An AMQPS listener; a client certificate, when sent, must be of the rig CA, and its common name
    is the user for the EXTERNAL mechanism (rabbitmq_auth_mechanism_ssl)."""
    settings = {
        "listeners.ssl.1": f"{host}:{port}",
        "ssl_options.cacertfile": str(ca_file),
        "ssl_options.certfile": str(server.cert_file),
        "ssl_options.keyfile": str(server.key_file),
        "ssl_options.verify": "verify_peer",
        "ssl_options.fail_if_no_peer_cert": "false",
        "auth_mechanisms.1": "PLAIN",
        "auth_mechanisms.2": "AMQPLAIN",
        "auth_mechanisms.3": "EXTERNAL",
        "ssl_cert_login_from": "common_name",
    }
    return "".join(f"{key} = {value}\n" for key, value in settings.items())


def _config(host: str, amqp_port: int, management_port: int, password: str) -> str:
    settings = {
        "listeners.tcp.1": f"{host}:{amqp_port}",
        "management.tcp.ip": host,
        "management.tcp.port": str(management_port),
        # guest may only log in from loopback and pods are not on loopback: a user of our own,
        # created on first boot with every permission on "/".
        "default_user": USERNAME,
        "default_pass": password,
        "default_vhost": "/",
        "default_user_tags.administrator": "true",
        "default_permissions.configure": ".*",
        "default_permissions.read": ".*",
        "default_permissions.write": ".*",
        "log.console": "true",
        "log.console.level": "info",
        "log.file": "false",
        # The management API samples queue counts; every second (default 5) keeps tests brisk.
        "collect_statistics_interval": "1000",
        # A build filling the disk must not block publishers in the middle of a test.
        "disk_free_limit.absolute": "50MB",
    }
    return "".join(f"{key} = {value}\n" for key, value in settings.items())
