"""PostgreSQL for the rig: a cluster of our own (initdb) of Debian's postgresql, in the run folder,
listening on the bridge address; nothing of the system's cluster.

PostgreSQL refuses to run as root, so when the tests run as root the server and initdb run as
Debian's ``postgres`` user (``setpriv``: exec, no fork, so the supervisor's pid is the server's).
Logins need a password (scram-sha-256) from anywhere. Database ``app`` has table ``jobs`` and a
role ``reader`` that may only SELECT from it: the read-only user the docs ask tenants for.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import secrets
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

from tests.rig.network import Network
from tests.rig.paths import VERSIONS, RigNotBuilt
from tests.rig.processes import Managed, Supervisor, free_port, port_open, run_tool, wait_until

DATABASE = "app"
READER = "reader"


class PsqlError(RuntimeError):
    """psql failed; the message carries its output."""


def postgresql_bin() -> Path:
    """Debian's PostgreSQL binaries' folder, or RigNotBuilt naming the piece to install."""
    folder = Path("/usr/lib/postgresql") / VERSIONS["POSTGRESQL_MAJOR"] / "bin"
    for name in ("postgres", "initdb", "psql"):
        if not (folder / name).is_file():
            raise RigNotBuilt(
                f"{folder / name} is missing (Debian's postgresql): run `tests/rig/build/build.sh postgresql`"
            )
    if os.geteuid() == 0 and (shutil.which("setpriv") is None or not _has_user("postgres")):
        raise RigNotBuilt("running as root needs setpriv and the postgres user (Debian's postgresql package)")
    return folder


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *argv]


@dataclass(kw_only=True, slots=True)
class PostgreSQL:
    """A running PostgreSQL cluster started by :meth:`start`; stopped with the supervisor."""

    host: str
    port: int
    superuser_password: str
    reader_password: str
    process: Managed
    data: Path
    binaries: Path
    argv: list[str]
    """How the server was started (as whom, with which options): :meth:`start_again` repeats it."""

    @classmethod
    def start(
        cls, supervisor: Supervisor, network: Network, run_dir: Path, *, timeout: float = 60.0
    ) -> PostgreSQL:
        binaries = postgresql_bin()
        directory = run_dir / "postgresql"
        directory.mkdir(parents=True, exist_ok=True)
        data = directory / "data"
        password, reader = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
        password_file = directory / "superuser-password"
        password_file.write_text(password + "\n")
        if os.geteuid() == 0:
            server_user = pwd.getpwnam("postgres")
            for path in (directory, password_file):
                os.chown(path, server_user.pw_uid, server_user.pw_gid)
        run_tool(
            _as_server_user(
                [
                    str(binaries / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "--auth=scram-sha-256",
                    f"--pwfile={password_file}",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            ),
            what="initdb",
            error=PsqlError,
            timeout=120,
        )
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 0.0.0.0/0 scram-sha-256\n")
        host = network.node_address
        port = free_port(host)
        argv = [
            str(binaries / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-c",
            f"listen_addresses={host}",
            "-c",
            f"unix_socket_directories={directory}",
            "-c",
            "fsync=off",
            "-c",
            "logging_collector=off",
        ]
        argv = _as_server_user(argv)
        process = supervisor.start("postgresql", argv, cwd=directory)
        server = cls(
            host=host,
            port=port,
            superuser_password=password,
            reader_password=reader,
            process=process,
            data=data,
            binaries=binaries,
            argv=argv,
        )
        wait_until(
            f"postgresql on {host}:{port}",
            functools.partial(port_open, host, port),
            timeout=timeout,
            process=process,
        )
        wait_until("postgresql answering", server._answers, timeout=timeout, process=process)
        server.psql(f"CREATE DATABASE {DATABASE}", database="postgres")
        server.psql(
            "CREATE TABLE jobs (id serial PRIMARY KEY, state text NOT NULL);"
            f"CREATE ROLE {READER} LOGIN PASSWORD '{reader}';"
            f"GRANT SELECT ON jobs TO {READER};"
        )
        return server

    def _answers(self) -> bool:
        try:
            return self.psql("SELECT 1", database="postgres") == "1"
        except PsqlError:
            return False

    def psql(self, sql: str, *, database: str = DATABASE, timeout: float = 30.0) -> str:
        """psql as the superuser, unaligned and tuples only: ``psql("SELECT count(*) FROM jobs")`` -> "3"."""
        argv = [
            str(self.binaries / "psql"),
            f"host={self.host} port={self.port} user=postgres dbname={database}",
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGPASSWORD": self.superuser_password}
        output = run_tool(argv, what=f"psql -c {sql[:60]!r}", error=PsqlError, timeout=timeout, env=env)
        return output.rstrip("\n")

    def stop(self) -> None:
        self.stop_server()

    def stop_server(self) -> None:
        """An outage, ended by :meth:`start_again` (same port, same data). A fast shutdown (SIGINT):
        the default smart one would wait for every client to leave."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGINT)
        self.process.stop(grace=20)

    def start_again(self, supervisor: Supervisor, *, timeout: float = 60.0) -> None:
        self.process = supervisor.start("postgresql", self.argv, cwd=self.data.parent)
        wait_until("postgresql answering again", self._answers, timeout=timeout, process=self.process)
