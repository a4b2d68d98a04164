"""Redis for the rig: our own Debian redis-server on the bridge address, nothing of the system one.

Its configuration, working folder and log live in the run folder; it persists nothing (no RDB, no
AOF). The default user has a password (``requirepass``), so a wrong one can be tested, and a
second ACL user, ``lister``, may only run LLEN on keys starting ``jobs``: a source logged in as
it is refused XINFO (NOPERM), the "user lacks a permission" case.
"""

from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass
from pathlib import Path

from tests.rig.certs import CertificateAuthority
from tests.rig.network import Network
from tests.rig.paths import RigNotBuilt
from tests.rig.processes import Managed, Supervisor, free_port, port_open, run_tool, wait_until

REDIS_SERVER = Path("/usr/bin/redis-server")
REDIS_CLI = Path("/usr/bin/redis-cli")
LIMITED_USER = "lister"


class RedisCliError(RuntimeError):
    """redis-cli failed; the message carries its output."""


def redis_binaries() -> tuple[Path, Path]:
    """Debian's redis-server and redis-cli, or RigNotBuilt naming the piece to install."""
    for path in (REDIS_SERVER, REDIS_CLI):
        if not path.is_file():
            raise RigNotBuilt(
                f"{path} is missing (Debian's redis-server): run `tests/rig/build/build.sh redis`"
            )
    return REDIS_SERVER, REDIS_CLI


@dataclass(kw_only=True, slots=True)
class Redis:
    """A running redis-server started by :meth:`start`; stopped with the supervisor."""

    host: str
    port: int
    password: str
    """The default user's (requirepass)."""
    limited_password: str
    """:data:`LIMITED_USER`'s."""
    process: Managed
    directory: Path
    tls_port: int = 0
    """A TLS listener with a certificate of ``tls_ca`` (client certificates not asked for)."""
    tls_ca: CertificateAuthority | None = None

    @property
    def tls_address(self) -> str:
        return f"{self.host}:{self.tls_port}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def start(
        cls, supervisor: Supervisor, network: Network, run_dir: Path, *, timeout: float = 60.0
    ) -> Redis:
        server, _ = redis_binaries()
        directory = run_dir / "redis"
        directory.mkdir(parents=True, exist_ok=True)
        host = network.node_address
        port = free_port(host)
        password = secrets.token_urlsafe(18)
        limited = secrets.token_urlsafe(18)
        tls_port = free_port(host)
        tls_ca = CertificateAuthority.create(directory / "tls", common_name="tidescale-rig-redis-ca")
        serving = tls_ca.issue_serving_cert("redis", dns_names=("localhost",), ip_addresses=(host,))
        config = directory / "redis.conf"
        config.write_text(
            "\n".join(
                [
                    f"bind {host}",
                    f"port {port}",
                    f"dir {directory}",
                    'logfile ""',  # standard output: the supervisor keeps it in logs/redis.log
                    "daemonize no",
                    'save ""',
                    "appendonly no",
                    f"requirepass {password}",
                    f"user {LIMITED_USER} on >{limited} ~jobs* +llen +auth +select",
                    f"tls-port {tls_port}",
                    f"tls-cert-file {serving.cert_file}",
                    f"tls-key-file {serving.key_file}",
                    f"tls-ca-cert-file {tls_ca.cert_file}",
                    "tls-auth-clients no",
                    "",
                ]
            )
        )
        config.chmod(0o600)
        process = supervisor.start("redis", [server, config], cwd=directory)
        redis = cls(
            host=host,
            port=port,
            password=password,
            limited_password=limited,
            process=process,
            directory=directory,
            tls_port=tls_port,
            tls_ca=tls_ca,
        )
        wait_until(
            f"redis on {host}:{port}",
            functools.partial(port_open, host, port),
            timeout=timeout,
            process=process,
        )
        wait_until("redis answering PING", redis._answers, timeout=timeout, process=process)
        wait_until(
            f"redis TLS on {host}:{tls_port}",
            functools.partial(port_open, host, tls_port),
            timeout=timeout,
            process=process,
        )
        return redis

    def _answers(self) -> bool:
        try:
            return self.cli("PING") == "PONG"
        except RedisCliError:
            return False

    def cli(self, *args: str, timeout: float = 30.0) -> str:
        """redis-cli as the default user; its standard output without the last newline,
        e.g. ``cli("LLEN", "jobs")`` -> ``"3"``."""
        _, client = redis_binaries()
        argv = [
            str(client),
            "-h",
            self.host,
            "-p",
            str(self.port),
            "--no-auth-warning",
            "-a",
            self.password,
            *args,
        ]
        return run_tool(
            argv, what=f"redis-cli {' '.join(args)}", error=RedisCliError, timeout=timeout
        ).rstrip("\n")

    def xinfo_groups(self, stream: str) -> dict[str, dict[str, str]]:
        """XINFO GROUPS as redis-cli prints it, per group name: ``{"workers": {"pending": "2", ...}}``."""
        # A nil prints as nothing: a lag of nil ends the output with "lag" and no value line.
        lines = self.cli("XINFO", "GROUPS", stream).split("\n")
        groups: dict[str, dict[str, str]] = {}
        fields_per_group = 12  # name, consumers, pending, last-delivered-id, entries-read, lag (Redis 7)
        for start in range(0, len(lines), fields_per_group):
            chunk = lines[start : start + fields_per_group]
            chunk += [""] * (len(chunk) % 2)
            pairs = dict(zip(chunk[::2], chunk[1::2], strict=True))
            groups[pairs["name"]] = pairs
        return groups

    def stop(self) -> None:
        self.process.stop(grace=10)

    def stop_server(self) -> None:
        """An outage, ended by :meth:`start_again` (same port, same password, empty data)."""
        self.process.stop(grace=10)

    def start_again(self, supervisor: Supervisor, *, timeout: float = 60.0) -> None:
        server, _ = redis_binaries()
        self.process = supervisor.start("redis", [server, self.directory / "redis.conf"], cwd=self.directory)
        wait_until(
            f"redis on {self.address} again",
            functools.partial(port_open, self.host, self.port),
            timeout=timeout,
            process=self.process,
        )
