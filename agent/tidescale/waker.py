"""The cluster-level waker (``tidescale waker``): owns every Deployment parked at zero.

It watches only Deployments carrying the ``tidescale.io/park`` label, measures their
triggers group-wide every interval through one shared connection per broker cluster
(:class:`~tidescale.sources.registry.SourcePool`), and applies the waker's side of the
handoff protocol (:func:`tidescale.parking.waker_step`, docs/scale-to-zero.md): ack a
request once its sources are measured, wake on activation, release what was scaled by
hand. Nothing it keeps in memory matters: a restarted waker lists, watches and carries on.

It runs with two replicas and one Lease; only the holder measures and writes, the other
keeps its watch cache warm so that a takeover starts polling at once. Every write is a
merge patch conditioned on the resourceVersion it was decided on, so even two wakers that
both believe they lead cannot undo each other.

It serves ``/healthz``, ``/readyz`` and ``/metrics`` (``tidescale_waker_*``) on ``--port``. Both
answer whenever the process serves: a standby is as ready as the leader (it must stay in
rotation to take over at once), so readiness says nothing about leading; the leader gauge does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from tidescale import _logging
from tidescale._events import EventRecorder
from tidescale._metrics import Metrics
from tidescale._waker_guard import (
    DEFAULT_ALLOWED,
    DEFAULT_DENIED,
    AddressGuard,
    BrokerNetworks,
    SecretCache,
    broker_endpoints,
    check_tls_keys,
    for_waker,
    refusal,
)
from tidescale.credentials import Credentials
from tidescale.errors import (
    BrokerAuthFailed,
    HintError,
    HintsInvalid,
    KubeConflict,
    KubeError,
    KubeNotFound,
    LeadershipLost,
    SourceError,
    TidescaleError,
)
from tidescale.hints import Hints, parse_hints
from tidescale.httpserver import Handler, HttpServer, Request, Response
from tidescale.kube import WAKER_COMPONENT, Deployment, KubeClient, KubeConfig, ObjectReference, WatchEvent
from tidescale.parking import PARK_LABEL, DeploymentSnapshot, Probe, WakerAction, WakerDecision, waker_step
from tidescale.policy import composite_active
from tidescale.sources.base import Measurement, MeasurementFailure, Scope, Source, TriggerSettings
from tidescale.sources.registry import measure_safely, open_source

__all__ = ["Waker", "WakerClient", "by_cluster", "main"]

_log = logging.getLogger("tidescale.waker")

DEFAULT_INTERVAL = 1.0
DEFAULT_LEASE = "tidescale-waker"
DEFAULT_PORT = 9465
_CLUSTER_CONCURRENCY = 32
"""Cluster batches in flight at once (each is a few requests over that cluster's one connection)."""
NAMESPACE_CONCURRENCY = 4
"""Batches of one namespace in flight at once: one tenant's slow brokers hold at most this many of
the waker's slots, and queue behind each other."""
DEFAULT_ALLOWED_NETWORKS = DEFAULT_ALLOWED
DEFAULT_DENIED_NETWORKS = DEFAULT_DENIED
_PREPARE_CONCURRENCY = 16
"""Deployments whose triggers are vetted and credentials read at once (API reads, DNS lookups)."""
_EVENT_QUEUE = 1000
"""Warning Events waiting to be sent; past it, new ones are dropped (and logged)."""
_MAX_BACKOFF = 60.0
"""Longest pause, in seconds, of a Deployment after repeated unexpected errors."""
_BATCH_GRACE = 2.0
"""Seconds a batch may run past its longest trigger timeout before it is cancelled as failed."""


class WakerClient(KubeClient):
    """The agent's thin client plus the two calls only the waker makes.

    (They belong in ``tidescale.kube``; they live here until that module takes them.)"""

    def watch_parked(self) -> AsyncGenerator[WatchEvent[Deployment], None]:
        """Every Deployment in the cluster with the park label: list, then watch."""
        path, params = "/apis/apps/v1/deployments", {"labelSelector": PARK_LABEL}
        what = f"watch deployments labelled {PARK_LABEL}"
        return self._watch(path, params, what=what, initial=lambda: self._collection(path, params, what))

    async def get_secret_data(self, namespace: str, name: str) -> Mapping[str, Any]:
        """The ``data`` of a Secret, as the API gives it (base64 values; decoded by the caller)."""
        path = f"/api/v1/namespaces/{namespace}/secrets/{name}"
        secret = await self._request("GET", path, what=f"get secret {namespace}/{name}")
        data = secret.get("data") or {}
        return data if isinstance(data, Mapping) else {}


@dataclass(frozen=True, slots=True)
class _Unit:
    """One trigger as the waker measures it: its settings with every ``*-env``/``*-file`` field
    cleared, the namespace it came from, and the credentials (from that namespace's Secret)."""

    settings: TriggerSettings
    namespace: str
    credentials: Credentials | None

    @property
    def connection(self) -> tuple[object, ...]:
        """The key of its connection: never shared across namespaces or credentials."""
        return (self.namespace, self.credentials, *_cluster_of(self.settings))


class _Pool:
    """One source per (namespace, credentials, broker cluster), reference-counted by unit."""

    def __init__(self, address_check: Callable[[str, int], Any] | None) -> None:
        self._address_check = address_check
        self._sources: dict[tuple[object, ...], Source] = {}
        self._refs: dict[tuple[object, ...], int] = {}

    def acquire(self, unit: _Unit) -> Source:
        key = unit.connection
        source = self._sources.get(key)
        if source is None:
            source = self._sources[key] = open_source(
                unit.settings, credentials=unit.credentials, address_check=self._address_check
            )
        self._refs[key] = self._refs.get(key, 0) + 1
        return source

    async def release(self, unit: _Unit) -> None:
        key = unit.connection
        source = self._sources.get(key)
        if source is None:
            return
        forget = getattr(source, "forget", None)
        if callable(forget):
            forget(unit.settings)
        self._refs[key] -= 1
        if self._refs[key] > 0:
            return
        del self._sources[key], self._refs[key]
        await _close_quietly(source)

    def open_connections(self) -> int:
        return len(self._sources)

    async def close(self) -> None:
        sources, self._sources = list(self._sources.values()), {}
        self._refs.clear()
        for source in sources:
            await _close_quietly(source)


async def _close_quietly(source: Source) -> None:
    try:
        await source.close()
    except Exception as exc:  # a broken connection must not stop the others from closing
        _log.warning("closing a broker connection failed: %s", type(exc).__name__)


@dataclass(slots=True)
class _Tracked:
    """One labelled Deployment as the waker knows it."""

    snapshot: DeploymentSnapshot
    raw_triggers: tuple[TriggerSettings, ...] = ()
    """The triggers as the hints give them (before credentials are resolved)."""
    hint_problem: str | None = None
    """Why the hints give nothing to measure (they do not parse, or name no trigger)."""
    prepared: tuple[TriggerSettings, ...] | None = None
    """The raw triggers that ``units`` were prepared from (None: not prepared yet)."""
    units: tuple[_Unit, ...] = ()
    """What is measured: the triggers with their namespace and credentials."""
    refusal: str | None = None
    """Why the waker refuses to measure these triggers (a file, an env, a denied address): it then
    wakes the Deployment so that its agents, which may read them, take over."""
    prepare_problem: str | None = None
    """Why the triggers could not be prepared yet (a Secret we may not read); retried with backoff."""
    wake_replicas: int = 1
    hints: Hints | None = None
    """The parsed hints (None while they do not parse): paused-scale-out and scaling-modifiers."""
    probe: Probe | None = None
    warned: set[tuple[str, str]] = field(default_factory=set)
    """Warning Events already recorded (reason, message): each is recorded once per change."""
    failures: int = 0
    """Consecutive unexpected errors while measuring or acting on it."""
    backoff_until: float = 0.0
    """Monotonic time before which it is left out of the rounds (after unexpected errors)."""


class Waker:
    """The waker's loop. ``leading`` tells whether this replica may measure and write."""

    def __init__(
        self,
        client: WakerClient,
        *,
        identity: str,
        interval: float = DEFAULT_INTERVAL,
        secret_namespaces: Iterable[str] = (),
        networks: BrokerNetworks | None = None,
        leading: Callable[[], bool] = lambda: True,
        fence: Callable[[Callable[[], Any]], Any] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        round_deadline: float | None = None,
    ) -> None:
        self._client = client
        self.identity = identity
        self.interval = interval
        self.round_deadline = round_deadline if round_deadline is not None else max(2.0, 2 * interval)
        """Most seconds a round waits for its measurements; later ones act on their own when in."""
        self._secret_namespaces = frozenset(secret_namespaces)
        self._leading = leading
        self._fence = fence
        self._clock = clock
        self._guard = AddressGuard(
            networks or BrokerNetworks.parse(DEFAULT_ALLOWED_NETWORKS, DEFAULT_DENIED_NETWORKS)
        )
        self._secrets = SecretCache(client.get_secret_data)
        self._pool = _Pool(self._guard.check)
        self._tracked: dict[tuple[str, str], _Tracked] = {}
        self._poke = asyncio.Event()
        self._dirty: set[tuple[str, str]] = set()
        """Deployments changed by watch events since they were last measured."""
        self._synced = asyncio.Event()
        self._gate = asyncio.Semaphore(_CLUSTER_CONCURRENCY)
        self._namespace_gates: dict[str, asyncio.Semaphore] = {}
        self._prepare_gate = asyncio.Semaphore(_PREPARE_CONCURRENCY)
        self._batches: dict[tuple[object, ...], asyncio.Task[dict[TriggerSettings, Measurement | str]]] = {}
        """Batches in flight, by connection: a straggler is never started twice."""
        self._acting: dict[tuple[str, str], asyncio.Task[None]] = {}
        """Per-Deployment probe-and-act tasks in flight: past the round's deadline they go on alone."""
        self._preparing: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._events: asyncio.Queue[tuple[ObjectReference, str, str, str]] = asyncio.Queue(_EVENT_QUEUE)
        self.rounds = 0
        """Completed poll rounds (tests and the benchmark read it)."""
        self.last_round_seconds = 0.0
        self.restarts: dict[str, int] = {"watch": 0, "poll": 0, "events": 0}
        """Supervised tasks restarted after an unexpected error (tests read it)."""
        # Events signed tidescale-waker, a repeat counted on the first (like the kubelet's).
        self._recorder = EventRecorder(client, instance=identity, component=WAKER_COMPONENT)
        self.metrics = Metrics(
            [
                ("tidescale_waker_leader", "gauge", "1 while this waker holds the Lease and acts"),
                ("tidescale_waker_parked_deployments", "gauge", "Deployments with the park label it tracks"),
                ("tidescale_waker_rounds_total", "counter", "Completed full poll rounds"),
                ("tidescale_waker_round_duration_seconds", "gauge", "Duration of the last full poll round"),
                ("tidescale_waker_wakes_total", "counter", "Parked Deployments it scaled up"),
                ("tidescale_waker_acks_total", "counter", "Park requests it acknowledged"),
                (
                    "tidescale_waker_protocol_holds_total",
                    "counter",
                    "Park records of a newer protocol version it held on (wrote nothing)",
                ),
                ("tidescale_waker_measurement_failures_total", "counter", "Trigger measurements that failed"),
                (
                    "tidescale_waker_refused_triggers",
                    "gauge",
                    "Deployments whose triggers it refuses to measure",
                ),
                ("tidescale_waker_deployment_errors_total", "counter", "Unexpected errors on one Deployment"),
                ("tidescale_waker_batches_in_flight", "gauge", "Broker batches running, stragglers included"),
            ]
        )
        for name in (
            "wakes_total",
            "acks_total",
            "protocol_holds_total",
            "measurement_failures_total",
            "deployment_errors_total",
        ):
            self.metrics.set(f"tidescale_waker_{name}", 0)

    @property
    def tracked(self) -> int:
        return len(self._tracked)

    def routes(self) -> dict[str, dict[str, Handler]]:
        """The HTTP routes ``--port`` serves (tests serve them on a port of their own)."""
        return {
            "/healthz": {"GET": self._ok},
            "/readyz": {"GET": self._ok},
            "/metrics": {"GET": self._metrics},
        }

    async def _ok(self, _: Request) -> Response:
        return Response(body=b"ok\n")

    async def _metrics(self, _: Request) -> Response:
        # Gauges that mirror state are read at scrape time, so they are never stale.
        self.metrics.set("tidescale_waker_leader", 1 if self._leading() else 0)
        self.metrics.set("tidescale_waker_parked_deployments", len(self._tracked))
        self.metrics.set("tidescale_waker_rounds_total", self.rounds)
        self.metrics.set("tidescale_waker_round_duration_seconds", self.last_round_seconds)
        refused = sum(1 for t in self._tracked.values() if t.refusal is not None)
        self.metrics.set("tidescale_waker_refused_triggers", refused)
        self.metrics.set("tidescale_waker_batches_in_flight", len(self._batches))
        return Response(body=self.metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")

    async def run(self) -> None:
        """Watches and polls until cancelled; closes every broker connection on the way out."""
        helpers = [
            asyncio.create_task(self._supervised("watch", self._watch), name="waker-watch"),
            asyncio.create_task(self._supervised("events", self._send_events), name="waker-events"),
        ]
        try:
            await self._supervised("poll", self._poll_forever)
        finally:
            pending = [*helpers, *self._acting.values(), *self._batches.values(), *self._preparing.values()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await self._pool.close()

    async def _supervised(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        """Runs ``body`` for ever: an unexpected error of any kind (RecursionError included) is
        logged and the body started again after a short pause, so no tenant's input ends the waker."""
        pause = 0.5
        while True:
            try:
                await body()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.restarts[name] += 1
                _log.error("the waker's %s task failed (%s); restarting it in %gs", name, _kind(exc), pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10.0)

    # -- the watch ----------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            try:
                async with contextlib.aclosing(self._client.watch_parked()) as events:
                    async for kind, obj in events:
                        await self._on_event(kind, obj)
            except KubeError as exc:
                # The watch itself rides out API server restarts; this is RBAC or a bad request.
                # Start again from a fresh list, forgetting everything (nothing in memory matters).
                _log.error("watching labelled Deployments failed: %s; listing again in 5s", exc)
                await self._forget_all()
                await asyncio.sleep(5.0)
            except Exception:
                await self._forget_all()  # the supervisor restarts the watch: from a fresh list
                raise

    async def _forget_all(self) -> None:
        for key in list(self._tracked):
            await self._untrack(key)

    async def _on_event(self, kind: str, obj: Any) -> None:
        try:
            snapshot = DeploymentSnapshot.from_object(cast(Mapping[str, Any], obj))
        except Exception as exc:
            _log.warning("a watch event carried a Deployment that cannot be read (%s); skipped", _kind(exc))
            return
        if kind == "DELETED":  # deleted, or no longer labelled
            await self._untrack(snapshot.key)
        else:
            await self._observe(snapshot)
            self._dirty.add(snapshot.key)
        self._synced.set()
        self._poke.set()

    async def _observe(self, snapshot: DeploymentSnapshot) -> None:
        tracked = self._tracked.get(snapshot.key)
        if tracked is None:
            tracked = self._tracked[snapshot.key] = _Tracked(snapshot=snapshot)
        else:
            tracked.snapshot = snapshot
        # Hints are re-read on every event: a Deployment whose hints change while parked is
        # measured with the new ones from the next round on.
        problem: str | None = None
        raw: tuple[TriggerSettings, ...] = ()
        try:
            tracked.hints = None
            hints = parse_hints(snapshot.annotations)
            raw, tracked.wake_replicas = hints.triggers, hints.wake_replicas
            tracked.hints = hints
            if not raw:
                problem = "its hints name no trigger"
        except (HintsInvalid, HintError) as exc:
            problem = f"its hints do not parse: {exc}"
        except Exception as exc:  # a parser bug on odd hints concerns this Deployment only
            problem = f"its hints could not be read ({_kind(exc)})"
        if problem is not None and problem != tracked.hint_problem:
            _log.warning("%s: %s", _name_of(snapshot), problem, extra=_fields(snapshot))
            self._warn(tracked, "HintsInvalid", f"the waker cannot measure this Deployment: {problem}")
        tracked.hint_problem = problem
        if raw != tracked.raw_triggers:
            await self._release(tracked)
            tracked.raw_triggers, tracked.prepared, tracked.probe = raw, None, None
            tracked.refusal = tracked.prepare_problem = None
            tracked.warned.clear()

    async def _prepare(self, tracked: _Tracked) -> None:
        """Vet the triggers, resolve credentials and take pool references (retried each round while
        it fails; a Secret created or a namespace allowed later is picked up)."""
        if tracked.prepared == tracked.raw_triggers and tracked.prepare_problem is None:
            return
        await self._release(tracked)
        tracked.refusal = None
        try:
            for settings in tracked.raw_triggers:
                refused = refusal(settings)
                if refused is None:
                    refused = await self._address_refusal(settings)
                if refused is not None:
                    annotation, why = refused
                    tracked.refusal = f"{annotation}: {why}"
                    tracked.prepared, tracked.prepare_problem = tracked.raw_triggers, None
                    _log.warning(
                        "%s: refused %s", _name(tracked), tracked.refusal, extra=_fields(tracked.snapshot)
                    )
                    self._warn(tracked, "TriggerRefused", f"{annotation} refused by the waker: {why}")
                    return
            units: list[_Unit] = []
            for settings in tracked.raw_triggers:
                units.append(await self._unit(settings, tracked.snapshot.namespace))
        except TidescaleError as exc:
            problem = f"cannot prepare its triggers: {exc}"
            if problem != tracked.prepare_problem:
                _log.warning("%s: %s", _name(tracked), problem, extra=_fields(tracked.snapshot))
                self._warn(tracked, "TriggerNotPrepared", problem)
            tracked.prepare_problem = problem
            return
        for unit in units:
            self._pool.acquire(unit)
        tracked.units, tracked.prepared, tracked.prepare_problem = tuple(units), tracked.raw_triggers, None

    async def _address_refusal(self, settings: TriggerSettings) -> tuple[str, str] | None:
        """(annotation, why) when the trigger names a broker address the waker may not connect to."""
        for annotation, host, port in broker_endpoints(settings):
            why = await self._guard.vet(
                host, port
            )  # BrokerUnreachable (a SourceError) when it does not resolve
            if why is not None:
                return annotation, (
                    f"{why}; the waker connects to no link-local, loopback or API server address, nor "
                    "outside the chart's waker.brokerNetworks"
                )
        return None

    async def _unit(self, settings: TriggerSettings, namespace: str) -> _Unit:
        """``credentials-secret`` resolved from the Deployment's own namespace, never the environment."""
        secret = getattr(settings, "credentials_secret", None)
        credentials: Credentials | None = None
        if secret:
            if namespace not in self._secret_namespaces:
                raise BrokerAuthFailed(
                    f"credentials-secret {secret!r} is in namespace {namespace}, where the waker may not "
                    "read Secrets: add the namespace to the chart's waker.secretNamespaces",
                    trigger=settings.name,
                )
            credentials = await self._secrets.get(namespace, secret)
        check_tls_keys(settings, credentials)
        return _Unit(settings=for_waker(settings), namespace=namespace, credentials=credentials)

    async def _untrack(self, key: tuple[str, str]) -> None:
        tracked = self._tracked.pop(key, None)
        if tracked is not None:
            await self._release(tracked)

    async def _release(self, tracked: _Tracked) -> None:
        units, tracked.units = tracked.units, ()
        for unit in units:
            await self._pool.release(unit)

    # -- Warning Events -----------------------------------------------------------------------

    def _warn(self, tracked: _Tracked, reason: str, message: str) -> None:
        """A Warning Event on the Deployment, once per (reason, message) and change of its hints.
        Queued (bounded) and sent by their own task: a round never waits for the API server's Events."""
        if (reason, message) in tracked.warned:
            return
        tracked.warned.add((reason, message))
        snapshot = tracked.snapshot
        involved: ObjectReference = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "namespace": snapshot.namespace,
            "name": snapshot.name,
        }
        try:
            self._events.put_nowait((involved, reason, message[:1000], "Warning"))
        except asyncio.QueueFull:
            _log.warning(
                "%s: event %s dropped: too many queued",
                _name(tracked),
                reason,
                extra=_fields(tracked.snapshot),
            )

    async def _send_events(self) -> None:
        while True:
            involved, reason, message, kind = await self._events.get()
            try:
                await self._recorder.emit(
                    involved,
                    reason=reason,
                    message=message,
                    event_type="Warning" if kind == "Warning" else "Normal",
                )
            except KubeError as exc:
                _log.warning(
                    "%s/%s: event %s not recorded: %s", involved["namespace"], involved["name"], reason, exc
                )

    # -- the polls ----------------------------------------------------------------------------

    async def wait_synced(self) -> None:
        """Returns once the first list has been seen (tests and the benchmark wait for it)."""
        await self._synced.wait()

    async def _poll_forever(self) -> None:
        due = time.monotonic()
        while True:
            self._poke.clear()
            if not self._leading():
                self._dirty.clear()
                due = time.monotonic() + self.interval
            elif time.monotonic() >= due:
                started = time.monotonic()
                self._dirty.clear()
                await self.poll_once()
                due = started + self.interval
                self.last_round_seconds = time.monotonic() - started
                self.rounds += 1
                if self.last_round_seconds > self.interval or self.rounds % 60 == 1:
                    # Rounds longer than the interval are the signal to shard (docs/scale-to-zero.md).
                    _log.info(
                        "round: %d Deployments in %.3fs (interval %gs, %d batches in flight)",
                        len(self._tracked),
                        self.last_round_seconds,
                        self.interval,
                        len(self._batches),
                    )
            elif self._dirty:
                # A watch event (a new request, changed hints) is measured at once, so acks come
                # fast; only the Deployments it touched: status updates of a thousand parked
                # Deployments must not each cost a round of all of them.
                keys, self._dirty = self._dirty, set()
                await self.poll_once(keys)
            remaining = due - time.monotonic()
            if remaining > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._poke.wait()

    async def poll_once(self, keys: Collection[tuple[str, str]] | None = None) -> None:
        """Measure every tracked Deployment's triggers (or only those of ``keys``, (namespace, name)
        pairs), then decide and write for each.

        The triggers are measured in batches, one per connection: broker cluster, namespace and
        credentials (:func:`by_cluster` within a namespace): one ``measure_many`` of the cluster's
        source per round, whatever the number of Deployments of the namespace naming it
        (docs/scale-to-zero.md, "What one round costs").

        The round waits at most ``round_deadline``: a Deployment still waiting for its batch then
        goes on alone (it acts when its batch is in), and a batch still running is not started again
        until it ends, so a tenant's blackholed brokers cost the other tenants nothing."""
        started = time.monotonic()
        chosen = [
            t
            for k, t in self._tracked.items()
            if (keys is None or k in keys) and k not in self._acting and t.backoff_until <= started
        ]
        await self._prepare_all([t for t in chosen if t.hint_problem is None], until=started + 1.0)
        items = [
            t
            for t in chosen
            if t.hint_problem is not None
            or t.refusal is not None
            or (
                t.prepare_problem is None and t.prepared is not None and t.snapshot.key not in self._preparing
            )
        ]
        wanted: dict[tuple[object, ...], dict[TriggerSettings, _Unit]] = {}
        for tracked in items:
            if tracked.hint_problem is None and tracked.refusal is None:
                for unit in tracked.units:
                    wanted.setdefault(unit.connection, {})[unit.settings] = unit
        batches = {key: self._batch(key, list(members.values())) for key, members in wanted.items()}
        acts = [self._start_act(tracked, batches) for tracked in items]
        if acts:
            remaining = started + self.round_deadline - time.monotonic()
            await asyncio.wait(acts, timeout=max(remaining, 0.0))

    async def _prepare_all(self, trackeds: list[_Tracked], *, until: float) -> None:
        """Prepare what needs it, concurrently; what is not done by ``until`` goes on in the background
        and is measured from the round after it is done (a slow API server delays no one else)."""
        for tracked in trackeds:
            key = tracked.snapshot.key
            needed = tracked.prepared != tracked.raw_triggers or tracked.prepare_problem is not None
            if needed and key not in self._preparing:
                task = asyncio.create_task(self._prepare_guarded(tracked))
                self._preparing[key] = task
                task.add_done_callback(functools.partial(self._prepared, key))
        pending = [self._preparing[t.snapshot.key] for t in trackeds if t.snapshot.key in self._preparing]
        if pending:
            await asyncio.wait(pending, timeout=max(until - time.monotonic(), 0.0))

    async def _prepare_guarded(self, tracked: _Tracked) -> None:
        async with self._prepare_gate:
            try:
                await self._prepare(tracked)
            except Exception as exc:
                self._failed(tracked, exc)

    def _prepared(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        if self._preparing.get(key) is task:
            del self._preparing[key]
        tracked = self._tracked.get(key)
        # Measured at once if the round had gone on without it. A preparation that failed waits for
        # the next round: poking now would prepare it again at once, in a loop (a missing Secret
        # kept the leader spinning at ~200 preparations a second).
        if not task.cancelled() and tracked is not None and tracked.prepare_problem is None:
            self._dirty.add(key)
            self._poke.set()

    def _batch(
        self, key: tuple[object, ...], members: list[_Unit]
    ) -> asyncio.Task[dict[TriggerSettings, Measurement | str]]:
        running = self._batches.get(key)
        if running is not None:
            return running  # a straggler of an earlier round: wait for it, never start it twice
        task = asyncio.create_task(self._measure_batch(members))
        self._batches[key] = task
        task.add_done_callback(functools.partial(self._batch_done, key))
        return task

    def _batch_done(self, key: tuple[object, ...], task: asyncio.Task[Any]) -> None:
        if self._batches.get(key) is task:
            del self._batches[key]

    def _start_act(
        self,
        tracked: _Tracked,
        batches: Mapping[tuple[object, ...], asyncio.Task[dict[TriggerSettings, Measurement | str]]],
    ) -> asyncio.Task[None]:
        key = tracked.snapshot.key
        task = asyncio.create_task(self._probe_and_act(tracked, batches))
        self._acting[key] = task
        task.add_done_callback(functools.partial(self._act_done, key))
        return task

    def _act_done(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        if self._acting.get(key) is task:
            del self._acting[key]

    async def _probe_and_act(
        self,
        tracked: _Tracked,
        batches: Mapping[tuple[object, ...], asyncio.Task[dict[TriggerSettings, Measurement | str]]],
    ) -> None:
        """Each Deployment is decided as soon as its batches are in: an active one does not wait for
        the batches of clusters it does not name. An error of any kind concerns this Deployment only."""
        try:
            await self._act(tracked, await self._probe(tracked, batches))
        except Exception as exc:
            self._failed(tracked, exc)
        else:
            tracked.failures = 0

    def _failed(self, tracked: _Tracked, exc: BaseException) -> None:
        tracked.failures += 1
        pause = min(_MAX_BACKOFF, 2.0 ** min(tracked.failures, 10))
        tracked.backoff_until = time.monotonic() + pause
        self.metrics.inc("tidescale_waker_deployment_errors_total")
        _log.warning(
            "%s: unexpected %s; left alone for %gs",
            _name(tracked),
            _kind(exc),
            pause,
            extra=_fields(tracked.snapshot),
        )
        self._warn(
            tracked,
            "WakerError",
            f"the waker failed on this Deployment ({_kind(exc)}); retrying with backoff",
        )

    async def _probe(
        self,
        tracked: _Tracked,
        batches: Mapping[tuple[object, ...], asyncio.Task[dict[TriggerSettings, Measurement | str]]],
    ) -> Probe | None:
        record = tracked.snapshot.record
        epoch = record.epoch if record is not None else 0
        problem = tracked.hint_problem or (
            f"the waker refuses {tracked.refusal}" if tracked.refusal else None
        )
        if problem is not None:
            # Hints that give nothing to measure can never wake it: a Deployment left at zero
            # for good is the one outcome worse than an extra pod. Its agents report the hints.
            why = f"{problem}; woken so that its agents report it"
            return Probe(epoch=epoch, active=True, summary=why)
        results: list[Measurement | str] = []
        for unit in tracked.units:
            batch = batches.get(unit.connection)
            if batch is None:
                return None
            # Shielded: this Deployment giving up (shutdown) must not cancel a batch others share.
            found = (await asyncio.shield(batch)).get(unit.settings)
            if found is None:
                return None  # it joined a batch already running without it: measured next round
            results.append(found)
        failures = [r for r in results if not isinstance(r, Measurement)]
        measurements = [r for r in results if isinstance(r, Measurement)]
        for warning in (w for m in measurements for w in m.warnings):
            self._warn(tracked, warning.reason, warning.message)  # once per hints, like the agent's
        hints = tracked.hints
        if hints is not None and hints.paused_scale_out:
            # KEDA's paused-scale-out: never from zero while it is set, whatever the triggers say.
            return Probe(epoch=epoch, active=False)
        composite = composite_active(measurements, hints) if hints is not None else None
        if composite is not None:
            # With scaling-modifiers only the formula's value wakes it, and only when every
            # trigger has a reading (KEDA's getScaledObjectState at zero replicas).
            if composite and not failures:
                return Probe(
                    epoch=epoch, active=True, summary="scaling-modifiers formula above its activation"
                )
            if failures:
                _log.info("%s: %s", _name(tracked), "; ".join(str(f) for f in failures))
                return None
            return Probe(epoch=epoch, active=False)
        if any(m.active for m in measurements):
            # One active trigger is enough to wake, even if another failed.
            summary = "; ".join(_describe(m) for m in measurements if m.active)
            return Probe(epoch=epoch, active=True, summary=summary)
        if failures:
            _log.info("%s: %s", _name(tracked), "; ".join(str(f) for f in failures))
            return None
        return Probe(epoch=epoch, active=False)

    def _namespace_gate(self, namespace: str) -> asyncio.Semaphore:
        gate = self._namespace_gates.get(namespace)
        if gate is None:
            gate = self._namespace_gates[namespace] = asyncio.Semaphore(NAMESPACE_CONCURRENCY)
        return gate

    async def _measure_batch(self, members: list[_Unit]) -> dict[TriggerSettings, Measurement | str]:
        """One connection's batch: each trigger's measurement, or why it failed (worded for a person).
        Never raises: whatever a broker answers fails only the triggers of this batch."""
        settings = [u.settings for u in members]
        limit = max(float(getattr(s, "timeout", 5.0)) for s in settings) + _BATCH_GRACE
        # A namespace's own budget first: its stragglers queue behind each other, not before others.
        async with self._namespace_gate(members[0].namespace), self._gate:
            source = self._pool.acquire(members[0])
            try:
                async with asyncio.timeout(limit):
                    measure_many = getattr(source, "measure_many", None)
                    if callable(measure_many):
                        found = cast(Mapping[TriggerSettings, object], await measure_many(settings))
                    else:  # a source without batches: one by one, concurrently
                        singles = [measure_safely(source, s, Scope.GROUP) for s in settings]
                        found = dict(zip(settings, await asyncio.gather(*singles), strict=True))
            except TimeoutError:
                found = dict.fromkeys(settings, f"the broker did not answer within {limit:g}s")
            except SourceError as exc:
                found = dict.fromkeys(settings, str(exc))
            except Exception as exc:
                _log.warning("a batch of %d triggers failed: %s", len(settings), _kind(exc))
                found = dict.fromkeys(settings, f"the broker's answer could not be used ({_kind(exc)})")
            finally:
                await self._pool.release(members[0])
        results: dict[TriggerSettings, Measurement | str] = {}
        for s in settings:
            result = found.get(s)
            if isinstance(result, Measurement):
                results[s] = result
            elif isinstance(result, MeasurementFailure):
                results[s] = result.error
            elif isinstance(result, str):
                results[s] = result
            else:
                results[s] = "the source gave no measurement"
        # Counted per distinct trigger, however many Deployments name it.
        failed = sum(1 for r in results.values() if not isinstance(r, Measurement))
        if failed:
            self.metrics.inc("tidescale_waker_measurement_failures_total", amount=failed)
        return results

    async def _act(self, tracked: _Tracked, probe: Probe | None) -> None:
        tracked.probe = probe
        # After a 409, re-read and decide again. 409s are routine: the Deployment controller's
        # status updates move the resourceVersion as well. Past a few, the next round retries.
        for _attempt in range(4):
            decision = waker_step(
                tracked.snapshot,
                waker=self.identity,
                probe=probe,
                wake_replicas=tracked.wake_replicas,
                now=self._clock(),
            )
            if decision.action is WakerAction.HOLD:
                self._hold(tracked, decision)
                return
            if decision.write is None:
                return
            try:
                written = await self._write(tracked.snapshot, decision)
            except KubeConflict:
                try:
                    fresh = await self._client.get_deployment(*tracked.snapshot.key)
                except KubeNotFound:
                    await self._untrack(tracked.snapshot.key)
                    return
                tracked.snapshot = DeploymentSnapshot.from_object(cast(Mapping[str, Any], fresh))
                continue
            except (LeadershipLost, KubeError) as exc:
                _log.warning(
                    "%s: %s not written: %s",
                    _name(tracked),
                    decision.action.value,
                    exc,
                    extra=_fields(tracked.snapshot),
                )
                return
            tracked.snapshot = DeploymentSnapshot.from_object(cast(Mapping[str, Any], written))
            if decision.action is WakerAction.WAKE:
                self.metrics.inc("tidescale_waker_wakes_total")
            elif decision.action is WakerAction.ACK:
                self.metrics.inc("tidescale_waker_acks_total")
            _log.info(
                "%s: %s (%s)",
                _name(tracked),
                decision.action.value,
                decision.why,
                extra=_fields(tracked.snapshot),
            )
            await self._emit(tracked.snapshot, decision, cast(Mapping[str, Any], written))
            return

    def _hold(self, tracked: _Tracked, decision: WakerDecision) -> None:
        """A park record of a newer protocol: no write; said once (log, metric, Warning Event)."""
        event = decision.event
        if event is None or (event.reason, event.message) in tracked.warned:
            return
        self.metrics.inc("tidescale_waker_protocol_holds_total")
        _log.warning("%s: holding: %s", _name(tracked), decision.why, extra=_fields(tracked.snapshot))
        self._warn(tracked, event.reason, event.message)

    async def _write(self, snapshot: DeploymentSnapshot, decision: WakerDecision) -> Deployment:
        assert decision.write is not None

        def write() -> Any:
            return self._client.patch_deployment(snapshot.namespace, snapshot.name, decision.write or {})

        if self._fence is None:
            return cast(Deployment, await write())
        return cast(Deployment, await self._fence(write))

    async def _emit(
        self, snapshot: DeploymentSnapshot, decision: WakerDecision, obj: Mapping[str, Any]
    ) -> None:
        if decision.event is None:
            return
        involved: ObjectReference = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "namespace": snapshot.namespace,
            "name": snapshot.name,
        }
        uid = (obj.get("metadata") or {}).get("uid")
        if uid:
            involved["uid"] = str(uid)
        event = decision.event
        try:
            await self._recorder.emit(
                involved,
                reason=event.reason,
                message=event.message,
                event_type="Warning" if event.type == "Warning" else "Normal",
            )
        except KubeError as exc:
            # The write is what matters; a lost Event is only a lost note.
            _log.warning(
                "%s: event %s not recorded: %s",
                _name_of(snapshot),
                event.reason,
                exc,
                extra=_fields(snapshot),
            )
        if decision.action is WakerAction.WAKE:
            _log.info("%s: %s", _name_of(snapshot), event.message, extra=_fields(snapshot))


def by_cluster(
    triggers: Iterable[Iterable[TriggerSettings]],
) -> dict[tuple[object, ...], list[TriggerSettings]]:
    """The distinct triggers of many Deployments, grouped by the broker cluster they name (their
    ``cluster_key``, the pool's key): one batch each. Equal settings, however many Deployments give
    them, are one trigger to measure; the order is that of first appearance."""
    batches: dict[tuple[object, ...], dict[TriggerSettings, None]] = {}
    for settings_of_one in triggers:
        for settings in settings_of_one:
            batches.setdefault(_cluster_of(settings), {})[settings] = None
    return {key: list(members) for key, members in batches.items()}


def _cluster_of(settings: TriggerSettings) -> tuple[object, ...]:
    return cast(tuple[object, ...], cast(Any, settings).cluster_key)


def _describe(measurement: Measurement) -> str:
    return f"{measurement.trigger}: {measurement.value:g} (activation above threshold)"


def _kind(exc: BaseException) -> str:
    """An error as logs and Events show it: its type only, since a message may quote a broker's
    answer or a Secret's bytes."""
    return type(exc).__name__


def _name(tracked: _Tracked) -> str:
    return _name_of(tracked.snapshot)


def _name_of(snapshot: DeploymentSnapshot) -> str:
    return f"{snapshot.namespace}/{snapshot.name}"


def _fields(snapshot: DeploymentSnapshot) -> dict[str, str]:
    """The log line's namespace and deployment fields (docs: one JSON object a line)."""
    return {"namespace": snapshot.namespace, "deployment": snapshot.name}


# -- the command ------------------------------------------------------------------------------


def _arguments(argv: list[str]) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(prog="tidescale waker", description="Run the cluster-level waker.")
    parser.add_argument("--kubeconfig", type=Path, default=None, help="default: in-cluster, else $KUBECONFIG")
    parser.add_argument(
        "--interval",
        type=float,
        default=float(env.get("TIDESCALE_WAKER_INTERVAL", DEFAULT_INTERVAL)),
        help="seconds between polls of the parked sources (default 1)",
    )
    parser.add_argument(
        "--secret-namespaces",
        default=env.get("TIDESCALE_WAKER_SECRET_NAMESPACES", ""),
        help="comma-separated namespaces whose credentials-secret Secrets the waker may read",
    )
    parser.add_argument(
        "--broker-allowed-networks",
        default=env.get("TIDESCALE_WAKER_BROKER_ALLOWED_NETWORKS", DEFAULT_ALLOWED_NETWORKS),
        help="comma-separated CIDRs the waker may connect to for a trigger's brokers (default: all)",
    )
    parser.add_argument(
        "--broker-denied-networks",
        default=env.get("TIDESCALE_WAKER_BROKER_DENIED_NETWORKS", DEFAULT_DENIED_NETWORKS),
        help="comma-separated CIDRs it never connects to for a trigger (default: link-local, loopback, "
        "unspecified); the API server's address and port are denied besides",
    )
    parser.add_argument("--lease-name", default=env.get("TIDESCALE_WAKER_LEASE", DEFAULT_LEASE))
    parser.add_argument(
        "--lease-namespace", default=env.get("POD_NAMESPACE"), help="default: the pod's namespace"
    )
    parser.add_argument(
        "--identity", default=env.get("POD_NAME") or socket.gethostname(), help="default: the pod name"
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=env.get("TIDESCALE_WAKER_PORT", str(DEFAULT_PORT)),
        help=f"port of /healthz, /readyz and /metrics (default {DEFAULT_PORT})",
    )
    parser.add_argument("--no-election", action="store_true", help="act without a Lease (one replica only)")
    _logging.add_arguments(parser, environ=env)
    return parser.parse_args(argv)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number from 1 to 65535")
    return int(text)


async def _run_serving(waker: Waker, port: int) -> None:
    """Runs the waker with its endpoints served on ``port``; the server stops with it."""
    server = HttpServer(
        waker.routes(),
        host="0.0.0.0",  # noqa: S104 - the pod's address: the kubelet's probes and Prometheus reach it there
        port=port,
    )
    try:
        await server.start()
    except OSError as exc:
        raise TidescaleError(f"cannot serve on port {port}: {exc}") from exc
    _log.info("serving /healthz /readyz /metrics on port %d", server.port)
    try:
        await waker.run()
    finally:
        await server.stop(grace=2.0)


async def _api_server_endpoints(server: str, environ: Mapping[str, str]) -> list[tuple[str, int | None]]:
    """The API server's (address, port) pairs, denied as broker addresses: the address and port its
    URL resolves to, and the in-cluster Service's address and port. Only that port: the Service
    address serves nothing else in a cluster, and where it is a node's own address (the rig, some
    bare-metal installs) the node's other ports may be real brokers."""
    found: list[tuple[str, int | None]] = []
    service = environ.get("KUBERNETES_SERVICE_HOST")
    if service:
        try:
            service_port = int(environ.get("KUBERNETES_SERVICE_PORT", "443"))
        except ValueError:
            service_port = 443
        found.append((service, service_port))
    parts = urlsplit(server)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if parts.hostname:
        try:
            async with asyncio.timeout(5.0):
                infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port)
            found += [(str(info[4][0]), port) for info in infos]
        except (OSError, TimeoutError) as exc:
            raise TidescaleError(f"cannot resolve the API server {parts.hostname}: {exc}") from exc
    return found


async def _serve(args: argparse.Namespace) -> None:
    from tidescale.election import LeaseElector

    config = KubeConfig.from_kubeconfig(args.kubeconfig) if args.kubeconfig else KubeConfig.from_environment()
    namespaces = [n.strip() for n in args.secret_namespaces.split(",") if n.strip()]
    networks = BrokerNetworks.parse(
        args.broker_allowed_networks,
        args.broker_denied_networks,
        api_server=await _api_server_endpoints(config.server, os.environ),
    )
    client = WakerClient(config)
    try:
        if args.no_election:
            waker = Waker(
                client,
                identity=args.identity,
                interval=args.interval,
                secret_namespaces=namespaces,
                networks=networks,
            )
            await _run_serving(waker, args.port)
            return
        elector = LeaseElector(
            client,
            namespace=args.lease_namespace or config.namespace,
            name=args.lease_name,
            identity=args.identity,
        )
        waker = Waker(
            client,
            identity=args.identity,
            interval=args.interval,
            secret_namespaces=namespaces,
            networks=networks,
            leading=elector.is_leader,
            fence=elector.fenced,
        )
        election = asyncio.create_task(elector.run(), name="waker-election")
        try:
            await _run_serving(waker, args.port)
        finally:
            election.cancel()
            await asyncio.gather(election, return_exceptions=True)
    finally:
        await client.aclose()


def main(argv: list[str]) -> int:
    """``tidescale waker [options]``: runs until SIGTERM or SIGINT; 0 on a clean stop."""
    args = _arguments(argv)
    try:
        _logging.configure(level=args.log_level, fmt=args.log_format)
    except ValueError as error:
        print(f"tidescale waker: {error}", file=sys.stderr)
        return 2

    async def run() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await _serve(args)

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())
    except TidescaleError as exc:
        print(f"tidescale waker: {exc}", file=sys.stderr)
        return 1
    return 0
