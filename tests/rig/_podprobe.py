"""Probe and lifecycle-hook actions (httpGet, tcpSocket, exec) against a running container."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import subprocess
from collections.abc import Mapping
from typing import Any

Json = dict[str, Any]


async def wait_pid(popen: subprocess.Popen[bytes], within: float | None = None) -> int | None:
    """The exit code once the process ends (None on timeout), without a thread per process."""
    if popen.poll() is not None:
        return popen.returncode
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(popen.pid)
    except ProcessLookupError:
        return popen.wait()
    done: asyncio.Future[None] = loop.create_future()

    def exited() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, exited)
    try:
        await asyncio.wait_for(asyncio.shield(done), within)
    except TimeoutError:
        return None
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return popen.wait()


def resolve_port(port: int | str, container: Json) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise ValueError(f"container {container['name']!r} declares no port named {port!r}")


async def _http_get(action: Json, container: Json, pod_ip: str, within: float) -> bool:
    host = action.get("host") or pod_ip
    port = resolve_port(action["port"], container)
    context = None
    if action.get("scheme", "HTTP").upper() == "HTTPS":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the kubelet does not verify probe certificates either
    headers = "".join(f"{h['name']}: {h['value']}\r\n" for h in action.get("httpHeaders") or [])
    request = (
        f"GET {action.get('path') or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"User-Agent: kube-probe/rig\r\nAccept: */*\r\n{headers}Connection: close\r\n\r\n"
    )

    async def attempt() -> bool:
        reader, writer = await asyncio.open_connection(host, port, ssl=context)
        try:
            writer.write(request.encode())
            await writer.drain()
            status_line = await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        parts = status_line.split()
        return len(parts) >= 2 and 200 <= int(parts[1]) < 400

    return await asyncio.wait_for(attempt(), within)


async def _tcp(action: Json, container: Json, pod_ip: str, within: float) -> bool:
    host = action.get("host") or pod_ip
    _, writer = await asyncio.wait_for(
        asyncio.open_connection(host, resolve_port(action["port"], container)), within
    )
    writer.close()
    return True


async def _exec(action: Json, pid: int, env: Mapping[str, str], within: float) -> bool:
    # Enter the container's own mount and network namespaces, as `kubectl exec` would.
    # Popen only forks and execs; the wait is on a pidfd, so the loop never blocks on the child.
    popen = subprocess.Popen(  # noqa: ASYNC220
        ["nsenter", "-t", str(pid), "-m", "-n", "--", *action["command"]],
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    code = await wait_pid(popen, within)
    if code is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        await wait_pid(popen)
        return False
    return code == 0


async def run_action(
    action: Json, *, container: Json, pod_ip: str, pid: int, env: Mapping[str, str], within: float
) -> bool:
    """One probe or hook run: True on success; errors and timeouts are failures, as on a node."""
    try:
        if "httpGet" in action:
            return await _http_get(action["httpGet"], container, pod_ip, within)
        if "tcpSocket" in action:
            return await _tcp(action["tcpSocket"], container, pod_ip, within)
        if "exec" in action:
            return await _exec(action["exec"], pid, env, within)
        if "sleep" in action:
            await asyncio.sleep(float(action["sleep"]["seconds"]))
            return True
    except (OSError, TimeoutError, ValueError, IndexError):
        return False
    return False
