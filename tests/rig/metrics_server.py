"""A scripted external-metrics server: what the HPA controller reads, told by a test.

Registered as the APIService ``v1beta1.external.metrics.k8s.io``, it stands in for KEDA's
metrics adapter. The API server's aggregator proxies every HPA query
(``GET /apis/external.metrics.k8s.io/v1beta1/namespaces/NS/METRIC?labelSelector=...``) to
it; it answers from a per-HPA :class:`Script` (a value per tick, or a failure) and records
each query: when, the answer, and the scale target's status replicas that sync read
(the HPA reads the scale just before it asks for metrics, and only this server, or the
test before the HPA exists, writes the status; the spec's writes are the HPA's, which
the audit log has).

Timing. The HPA's stabilization windows and rate periods are whole seconds, measured on
the controller's own clock. A replay of the recorded queries uses this server's clock,
which reads a few milliseconds earlier. So that those milliseconds never decide a
comparison, the server answers each HPA on a grid: its first query at once (the grid's
origin), every later one held until the next grid point, :data:`GRID` seconds apart.
Every difference between two of the controller's clock readings is then a multiple of
1.6 s give or take milliseconds, and a window of W whole seconds lies at least
:func:`grid_margin` (W) from any of them: 0.4 s or more unless W is a multiple of 8 (the
scenario generator only uses such W; 15 s and 300 s, the HPA's defaults, are 0.6 and
0.8 s clear). The HPA's sync period (1 s) only decides how long each query waits.

The server runs its own event loop in a thread, so synchronous tests can drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import ssl
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx

from tests.rig.certs import KeyPair

GROUP = "external.metrics.k8s.io"
VERSION = "v1beta1"
APISERVICE = f"{VERSION}.{GROUP}"
GRID = 1.6
"""Seconds between two answers to one HPA (see the module docstring)."""
GUARD = 0.45
"""A query arriving closer than this to the next grid point waits for the one after: the
status write happens inside the hold, which must not make the answer late."""


def grid_margin(seconds: float) -> float:
    """How far ``seconds`` (a window or period) lies from every positive multiple of :data:`GRID`."""
    nearest = max(1, round(seconds / GRID))
    return min(abs(n * GRID - seconds) for n in (nearest - 1, nearest, nearest + 1) if n >= 1)


@dataclass(frozen=True, kw_only=True, slots=True)
class Script:
    """How one HPA's queries are answered.

    ``metrics[i][tick]`` answers the HPA's i-th metric at that tick: a value, or None for
    a failure (HTTP 503); after the last tick the last entry holds. ``status`` is the
    scale target's status.replicas: None follows the spec (the spec read shortly after the
    previous answer, written while the HPA waits for this one: the next sync sees it, so
    pods are a sync or two behind), a number stays fixed. ``initial_status`` is what the
    test set before the HPA was made.
    """

    metrics: tuple[tuple[int | None, ...], ...]
    initial_status: int
    status: int | None = None

    def value(self, metric: int, tick: int) -> int | None:
        values = self.metrics[metric]
        return values[min(tick, len(values) - 1)]


@dataclass(frozen=True, kw_only=True, slots=True)
class Query:
    """One HPA query as this server answered it."""

    hpa: str
    metric: int
    tick: int
    arrived: float
    answered: float
    """Wall-clock seconds (``time.time()``, the audit log's clock) when the answer went out."""
    status_replicas: int
    """The status.replicas this sync read (the last one this server, or the test, wrote before it)."""
    value: int | None
    """The value served, or None when the query was answered with a failure."""
    selector: str
    user: str
    """Who the aggregator says asked (its X-Remote-User header)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ScaleTargets:
    """Where the HPAs' scale targets live: a custom resource with spec/status replicas."""

    server: str
    ca_file: Path
    client: KeyPair
    group: str
    version: str
    plural: str
    namespace: str

    def path(self, name: str) -> str:
        return f"/apis/{self.group}/{self.version}/namespaces/{self.namespace}/{self.plural}/{name}"


@dataclass(kw_only=True, slots=True)
class _HpaState:
    origin: float | None = None
    tick: int = -1
    answered: int = -1
    """The last tick whose answer (and record) is out."""
    seen_status: int = 0
    """The status.replicas the current sync read."""
    spec: int | None = None
    """The spec.replicas last read (for a status that follows it)."""
    status: int = 0
    """The status.replicas last written."""


@dataclass(kw_only=True)
class MetricsServer:
    """The server; :meth:`start` it, give each HPA a script with :meth:`script`, read :meth:`queries`."""

    host: str
    namespace: str
    serving: KeyPair
    targets: ScaleTargets
    port: int = 0
    _scripts: dict[str, Script] = field(default_factory=dict)
    _states: dict[str, _HpaState] = field(default_factory=dict)
    _queries: list[Query] = field(default_factory=list)
    _strays: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.Server | None = None
    _http: httpx.AsyncClient | None = None
    _connections: set[asyncio.Task[None]] = field(default_factory=set)

    # -- the test's side ----------------------------------------------------------------

    def script(self, hpa: str, script: Script) -> None:
        """Answers HPA ``hpa``'s metrics (named ``metric_name(hpa, i)``) from ``script``."""
        with self._lock:
            self._scripts[hpa] = script
            self._states[hpa] = _HpaState(status=script.initial_status)

    def status_written(self, hpa: str, replicas: int) -> None:
        """The test wrote ``hpa``'s status.replicas itself (before the HPA's next sync)."""
        with self._lock:
            self._states[hpa].status = replicas

    def queries(self, hpa: str | None = None) -> list[Query]:
        with self._lock:
            return [q for q in self._queries if hpa is None or q.hpa == hpa]

    def last_tick(self, hpa: str) -> int:
        """The last tick ``hpa`` has been answered (and recorded) for; -1 before its first query."""
        with self._lock:
            state = self._states.get(hpa)
            return -1 if state is None else state.answered

    def strays(self) -> list[str]:
        """Requests for a metric no script answers (each a line: the path and why)."""
        with self._lock:
            return list(self._strays)

    def start(self) -> MetricsServer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._open())
            except BaseException as exc:  # reported to start()'s caller below
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
            loop.close()

        self._thread = threading.Thread(target=run, name="metrics-server", daemon=True)
        self._thread.start()
        if not ready.wait(timeout=30):
            raise RuntimeError("the scripted metrics server did not start within 30 s")
        if failure:
            raise RuntimeError(f"the scripted metrics server did not start: {failure[0]}") from failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        self._loop = self._thread = None

    # -- the server ----------------------------------------------------------------------

    async def _open(self) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.serving.cert_file, self.serving.key_file)
        context.set_alpn_protocols(["http/1.1"])
        client_context = ssl.create_default_context(cafile=str(self.targets.ca_file))
        client_context.load_cert_chain(str(self.targets.client.cert_file), str(self.targets.client.key_file))
        self._http = httpx.AsyncClient(base_url=self.targets.server, verify=client_context, timeout=10.0)
        self._server = await asyncio.start_server(self._connection, self.host, self.port, ssl=context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=5)
        if self._http is not None:
            await self._http.aclose()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        key, value = line.split(":", 1)
                        headers[key.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0") or 0)
                if length:
                    await reader.readexactly(length)
                code, body = await self._route(method, target, headers)
                payload = json.dumps(body).encode()
                writer.write(
                    f"HTTP/1.1 {code} {'OK' if code == 200 else 'Error'}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
            ssl.SSLError,
            ValueError,
        ):
            pass
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _route(self, method: str, target: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        split = urlsplit(target)
        parts = [unquote(p) for p in split.path.strip("/").split("/") if p]
        if parts in (["healthz"], ["readyz"], ["livez"]):
            return 200, {"status": "ok"}
        if parts == ["apis"]:
            return 200, _group_list()
        if parts == ["apis", GROUP]:
            return 200, _group()
        if parts == ["apis", GROUP, VERSION]:
            return 200, {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": f"{GROUP}/{VERSION}",
                "resources": [],
            }
        if method == "GET" and len(parts) == 6 and parts[:4] == ["apis", GROUP, VERSION, "namespaces"]:
            selector = parse_qs(split.query).get("labelSelector", [""])[0]
            return await self._metric(parts[4], parts[5], selector, headers.get("x-remote-user", ""))
        return 404, _status(
            404, "NotFound", f"{method} {split.path}: not served by the scripted metrics server"
        )

    async def _metric(
        self, namespace: str, metric: str, selector: str, user: str
    ) -> tuple[int, dict[str, Any]]:
        arrived = time.time()
        hpa, _, index = metric.rpartition("-m")
        with self._lock:
            script = self._scripts.get(hpa)
            state = self._states.get(hpa)
        if namespace != self.namespace or script is None or state is None or not index.isdigit():
            with self._lock:
                self._strays.append(f"{namespace}/{metric}?labelSelector={selector}: no script")
            return 404, _status(404, "NotFound", f"no script for external metric {namespace}/{metric}")
        number = int(index)
        if number >= len(script.metrics):
            with self._lock:
                self._strays.append(f"{namespace}/{metric}: the script has {len(script.metrics)} metrics")
            return 404, _status(404, "NotFound", f"no script for external metric {namespace}/{metric}")
        if number == 0:
            # The first metric of a sync: this sync has read the scale, the next has not.
            # Set the status the next one reads, and answer on the grid.
            state.seen_status = state.status
            if state.origin is None:
                state.origin, state.tick = arrived, 0
                due = arrived
            else:
                state.tick = max(state.tick + 1, math.ceil((arrived + GUARD - state.origin) / GRID))
                due = state.origin + state.tick * GRID
            wanted = state.spec if script.status is None else script.status
            if wanted is not None and wanted != state.status:
                await self._write_status(hpa, wanted)
                state.status = wanted
            await asyncio.sleep(max(0.0, due - time.time()))
            if script.status is None:
                # Off the grid's path: learn the spec this sync is about to write.
                self._background(self._follow(hpa, state))
        value = script.value(number, state.tick)
        answered = time.time()
        query = Query(
            hpa=hpa,
            metric=number,
            tick=state.tick,
            arrived=arrived,
            answered=answered,
            status_replicas=state.seen_status,
            value=value,
            selector=selector,
            user=user,
        )
        with self._lock:
            self._queries.append(query)
            state.answered = max(state.answered, state.tick)
        if value is None:
            return 503, _status(
                503, "ServiceUnavailable", f"scripted failure of {metric} at tick {state.tick}"
            )
        return 200, {
            "kind": "ExternalMetricValueList",
            "apiVersion": f"{GROUP}/{VERSION}",
            "metadata": {},
            "items": [
                {
                    "metricName": metric,
                    "metricLabels": {},
                    "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(answered)),
                    "value": str(value),
                }
            ],
        }

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _follow(self, hpa: str, state: _HpaState) -> None:
        # The HPA writes the scale within milliseconds of its answer; its next query comes
        # a second later. A stale read only makes the status lag more: what the next sync
        # reads is recorded as what was written, not as what was meant.
        await asyncio.sleep(0.3)
        assert self._http is not None
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            response = await self._http.get(self.targets.path(hpa))
            if response.is_success:
                state.spec = int(response.json()["spec"]["replicas"])

    async def _write_status(self, hpa: str, replicas: int) -> None:
        assert self._http is not None
        response = await self._http.patch(
            self.targets.path(hpa) + "/status",
            content=json.dumps({"status": {"replicas": replicas}}),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        response.raise_for_status()


def metric_name(hpa: str, index: int) -> str:
    """The external metric name the script of ``hpa`` answers as its ``index``-th metric."""
    return f"{hpa}-m{index}"


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _group() -> dict[str, Any]:
    version = {"groupVersion": f"{GROUP}/{VERSION}", "version": VERSION}
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": GROUP,
        "versions": [version],
        "preferredVersion": version,
    }


def _group_list() -> dict[str, Any]:
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [_group()]}


def registration(
    *, namespace: str, service: str, host: str, port: int, ca_pem: bytes
) -> list[dict[str, Any]]:
    """The Service, its Endpoints (the server's address) and the APIService that route
    ``external.metrics.k8s.io`` to the server through the aggregator."""
    import base64

    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": service, "namespace": namespace},
            "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]},
        },
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": service, "namespace": namespace},
            "subsets": [{"addresses": [{"ip": host}], "ports": [{"name": "https", "port": port}]}],
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": APISERVICE},
            "spec": {
                "group": GROUP,
                "version": VERSION,
                "service": {"namespace": namespace, "name": service, "port": 443},
                "caBundle": base64.b64encode(ca_pem).decode(),
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
    ]


def wait(
    what: str, check: Callable[[], bool], *, timeout: float, explain: Callable[[], str] | None = None
) -> None:
    """Polls ``check`` until true; raises AssertionError naming ``what`` (and ``explain()``) on timeout."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            detail = f": {explain()}" if explain is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(0.2)
