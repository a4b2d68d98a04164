"""Processes the rig starts: each one's output in its own log, ended by its pid only."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


class RigStartError(RuntimeError):
    """A rig component did not come up; the message carries the tail of its log."""


@dataclass(kw_only=True, slots=True)
class Managed:
    """A process started by the rig."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the process group it leads, then SIGKILL after ``grace`` seconds."""
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)


@dataclass(kw_only=True, slots=True)
class Supervisor:
    """Starts processes into a run folder and stops exactly those, newest first."""

    run_dir: Path
    started: list[Managed] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Managed:
        log = self.run_dir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [os.fspath(a) for a in argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,  # its own process group: stop() reaches its children too
            )
        managed = Managed(name=name, popen=popen, log=log)
        self.started.append(managed)
        return managed

    def stop_all(self) -> None:
        while self.started:
            self.started.pop().stop()


def wait_until(
    what: str,
    check: Callable[[], bool],
    *,
    timeout: float,
    process: Managed | None = None,
    interval: float = 0.1,
) -> None:
    """Polls ``check`` until true; fails with the process's log tail if it dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if check():
                return
        if process is not None and not process.alive():
            raise RigStartError(
                f"{process.name} exited ({process.popen.returncode}) before {what}:\n{process.log_tail()}"
            )
        if time.monotonic() > deadline:
            tail = f":\n{process.log_tail()}" if process is not None else ""
            raise RigStartError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")
        time.sleep(interval)


def run_tool(
    argv: Sequence[str],
    *,
    what: str,
    error: type[Exception],
    timeout: float,
    env: Mapping[str, str] | None = None,
) -> str:
    """Runs a command-line tool to completion and returns its standard output; a timeout or a
    non-zero exit raises ``error`` naming ``what`` and carrying the tool's output."""
    try:
        result = subprocess.run(
            list(argv),
            env=dict(env) if env is not None else None,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise error(f"{what} did not finish in {timeout:.0f}s") from exc
    if result.returncode != 0:
        raise error(f"{what} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result.stdout


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
