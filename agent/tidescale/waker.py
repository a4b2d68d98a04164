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
import base64
import contextlib
import dataclasses
import hashlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncGenerator, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from tidescale._metrics import Metrics
from tidescale.errors import (
    BrokerAuthFailed,
    HintError,
    HintsInvalid,
    KubeConflict,
    KubeError,
    KubeForbidden,
    KubeNotFound,
    LeadershipLost,
    SourceError,
    TidescaleError,
)
from tidescale.hints import parse_hints
from tidescale.httpserver import Handler, HttpServer, Request, Response
from tidescale.kube import Deployment, KubeClient, KubeConfig, ObjectReference, WatchEvent
from tidescale.parking import PARK_LABEL, DeploymentSnapshot, Probe, WakerAction, WakerDecision, waker_step
from tidescale.sources.base import Measurement, MeasurementFailure, Scope, TriggerSettings
from tidescale.sources.registry import SourcePool, measure_safely

__all__ = ["Waker", "WakerClient", "by_cluster", "main"]

_log = logging.getLogger("tidescale.waker")

DEFAULT_INTERVAL = 1.0
DEFAULT_LEASE = "tidescale-waker"
DEFAULT_PORT = 9465
_CLUSTER_CONCURRENCY = 32
"""Cluster batches in flight at once (each is a few requests over that cluster's one connection)."""


class WakerClient(KubeClient):
    """The agent's thin client plus the two calls only the waker makes.

    (They belong in ``tidescale.kube``; they live here until that module takes them.)"""

    def watch_parked(self) -> AsyncGenerator[WatchEvent[Deployment], None]:
        """Every Deployment in the cluster with the park label: list, then watch."""
        path, params = "/apis/apps/v1/deployments", {"labelSelector": PARK_LABEL}
        what = f"watch deployments labelled {PARK_LABEL}"
        return self._watch(path, params, what=what, initial=lambda: self._collection(path, params, what))

    async def get_secret_data(self, namespace: str, name: str) -> dict[str, str]:
        """The decoded ``data`` of a Secret."""
        path = f"/api/v1/namespaces/{namespace}/secrets/{name}"
        secret = await self._request("GET", path, what=f"get secret {namespace}/{name}")
        data = secret.get("data") or {}
        return {key: base64.b64decode(value).decode() for key, value in data.items()}


@dataclass(slots=True)
class _Tracked:
    """One labelled Deployment as the waker knows it."""

    snapshot: DeploymentSnapshot
    raw_triggers: tuple[TriggerSettings, ...] = ()
    """The triggers as the hints give them (before credentials are resolved)."""
    hint_problem: str | None = None
    """Why the hints give nothing to measure (they do not parse, or name no trigger)."""
    prepared: tuple[TriggerSettings, ...] | None = None
    """The raw triggers that ``triggers`` were prepared from (None: not prepared yet)."""
    triggers: tuple[TriggerSettings, ...] = ()
    """What is measured: credentials-secret resolved into process-private variables."""
    prepare_problem: str | None = None
    """Why the triggers could not be prepared (a Secret we may not read); retried every round."""
    wake_replicas: int = 1
    probe: Probe | None = None


class Waker:
    """The waker's loop. ``leading`` tells whether this replica may measure and write."""

    def __init__(
        self,
        client: WakerClient,
        *,
        identity: str,
        interval: float = DEFAULT_INTERVAL,
        secret_namespaces: Iterable[str] = (),
        leading: Callable[[], bool] = lambda: True,
        fence: Callable[[Callable[[], Any]], Any] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._client = client
        self.identity = identity
        self.interval = interval
        self._secret_namespaces = frozenset(secret_namespaces)
        self._leading = leading
        self._fence = fence
        self._clock = clock
        self._pool = SourcePool()
        self._tracked: dict[tuple[str, str], _Tracked] = {}
        self._poke = asyncio.Event()
        self._dirty: set[tuple[str, str]] = set()
        """Deployments changed by watch events since they were last measured."""
        self._synced = asyncio.Event()
        self.rounds = 0
        """Completed poll rounds (tests and the benchmark read it)."""
        self.last_round_seconds = 0.0
        self.metrics = Metrics(
            [
                ("tidescale_waker_leader", "gauge", "1 while this waker holds the Lease and acts"),
                ("tidescale_waker_parked_deployments", "gauge", "Deployments with the park label it tracks"),
                ("tidescale_waker_rounds_total", "counter", "Completed full poll rounds"),
                ("tidescale_waker_round_duration_seconds", "gauge", "Duration of the last full poll round"),
                ("tidescale_waker_wakes_total", "counter", "Parked Deployments it scaled up"),
                ("tidescale_waker_acks_total", "counter", "Park requests it acknowledged"),
                ("tidescale_waker_measurement_failures_total", "counter", "Trigger measurements that failed"),
            ]
        )
        for name in ("wakes_total", "acks_total", "measurement_failures_total"):
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
        return Response(body=self.metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")

    async def run(self) -> None:
        """Watches and polls until cancelled; closes every broker connection on the way out."""
        watch = asyncio.create_task(self._watch(), name="waker-watch")
        try:
            await self._poll_forever()
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
            await self._pool.close()

    # -- the watch ----------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            try:
                async with contextlib.aclosing(self._client.watch_parked()) as events:
                    async for kind, obj in events:
                        snapshot = DeploymentSnapshot.from_object(cast(Mapping[str, Any], obj))
                        if kind == "DELETED":  # deleted, or no longer labelled
                            await self._untrack(snapshot.key)
                        else:
                            await self._observe(snapshot)
                            self._dirty.add(snapshot.key)
                        self._synced.set()
                        self._poke.set()
            except KubeError as exc:
                # The watch itself rides out API server restarts; this is RBAC or a bad request.
                # Start again from a fresh list, forgetting everything (nothing in memory matters).
                _log.error("watching labelled Deployments failed: %s; listing again in 5s", exc)
                for key in list(self._tracked):
                    await self._untrack(key)
                await asyncio.sleep(5.0)

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
            hints = parse_hints(snapshot.annotations)
            raw, tracked.wake_replicas = hints.triggers, hints.wake_replicas
            if not raw:
                problem = "its hints name no trigger"
        except (HintsInvalid, HintError) as exc:
            problem = f"its hints do not parse: {exc}"
        if problem is not None and problem != tracked.hint_problem:
            _log.warning("%s: %s", _name_of(snapshot), problem)
        tracked.hint_problem = problem
        if raw != tracked.raw_triggers:
            await self._release(tracked)
            tracked.raw_triggers, tracked.prepared, tracked.probe = raw, None, None

    async def _prepare(self, tracked: _Tracked) -> None:
        """Resolve credentials and take pool references for the current triggers (retried each
        round while it fails: a Secret created or a namespace allowed later is picked up)."""
        if tracked.prepared == tracked.raw_triggers and tracked.prepare_problem is None:
            return
        await self._release(tracked)
        try:
            resolved: list[TriggerSettings] = []
            for settings in tracked.raw_triggers:
                resolved.append(await self._with_credentials(settings, tracked.snapshot.namespace))
        except TidescaleError as exc:
            problem = f"cannot prepare its triggers: {exc}"
            if problem != tracked.prepare_problem:
                _log.warning("%s: %s", _name(tracked), problem)
            tracked.prepare_problem = problem
            return
        for settings in resolved:
            await self._pool.acquire(settings)
        tracked.triggers, tracked.prepared, tracked.prepare_problem = (
            tuple(resolved),
            tracked.raw_triggers,
            None,
        )

    async def _untrack(self, key: tuple[str, str]) -> None:
        tracked = self._tracked.pop(key, None)
        if tracked is not None:
            await self._release(tracked)

    async def _release(self, tracked: _Tracked) -> None:
        for settings in tracked.triggers:
            await self._pool.release(settings)
        tracked.triggers = ()

    async def _with_credentials(self, settings: TriggerSettings, namespace: str) -> TriggerSettings:
        """``credentials-secret`` -> the source's own ``*-env`` fields, via process-private variables.

        Only Secrets in allowed namespaces are read, and only the ones hints name."""
        secret = getattr(settings, "credentials_secret", None)
        if not secret:
            return settings
        if namespace not in self._secret_namespaces:
            raise BrokerAuthFailed(
                f"credentials-secret {secret!r} is in namespace {namespace}, where the waker may not read "
                "Secrets: add the namespace to the chart's waker.secretNamespaces",
                trigger=settings.name,
            )
        try:
            data = await self._client.get_secret_data(namespace, secret)
        except (KubeNotFound, KubeForbidden) as exc:
            raise BrokerAuthFailed(
                f"credentials-secret {namespace}/{secret}: {exc}", trigger=settings.name
            ) from exc
        tag = hashlib.sha256(f"{namespace}/{secret}".encode()).hexdigest()[:12].upper()
        names = {key: f"TIDESCALE_WAKER_{tag}_{key.upper()}" for key in ("username", "password")}
        for key, variable in names.items():
            if key not in data:
                raise BrokerAuthFailed(
                    f"credentials-secret {namespace}/{secret} has no key {key!r}", trigger=settings.name
                )
            os.environ[variable] = data[key]
        fields = {f.name for f in dataclasses.fields(cast(Any, settings))}
        changes: dict[str, str | None]
        if "sasl_username_env" in fields:  # Kafka
            changes = {"sasl_username_env": names["username"], "sasl_password_env": names["password"]}
            changes["sasl_password_file"] = None
        else:  # RabbitMQ
            changes = {"username_env": names["username"], "password_env": names["password"]}
            changes["password_file"] = None
        return cast(TriggerSettings, dataclasses.replace(cast(Any, settings), **changes))

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
                        "round: %d Deployments in %.3fs (interval %gs)",
                        len(self._tracked),
                        self.last_round_seconds,
                        self.interval,
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

        The triggers of all Deployments are measured in batches, one per broker cluster
        (:func:`by_cluster`): one ``measure_many`` of the cluster's source per round, whatever the
        number of Deployments naming it (docs/scale-to-zero.md, "What one round costs")."""
        chosen = [t for k, t in self._tracked.items() if keys is None or k in keys]
        for tracked in chosen:
            if tracked.hint_problem is None:
                await self._prepare(tracked)
        items = [t for t in chosen if t.hint_problem is not None or t.prepare_problem is None]
        gate = asyncio.Semaphore(_CLUSTER_CONCURRENCY)
        batches = {
            key: asyncio.ensure_future(self._measure_cluster(members, gate))
            for key, members in by_cluster(t.triggers for t in items if t.hint_problem is None).items()
        }

        async def probe(tracked: _Tracked) -> Probe | None:
            record = tracked.snapshot.record
            epoch = record.epoch if record is not None else 0
            if tracked.hint_problem is not None:
                # Hints that give nothing to measure can never wake it: a Deployment left at zero
                # for good is the one outcome worse than an extra pod. Its agents report the hints.
                why = f"{tracked.hint_problem}; woken so that its agents report it"
                return Probe(epoch=epoch, active=True, summary=why)
            results = [(await batches[_cluster_of(s)])[s] for s in tracked.triggers]
            failures = [r for r in results if not isinstance(r, Measurement)]
            measurements = [r for r in results if isinstance(r, Measurement)]
            if any(m.active for m in measurements):
                # One active trigger is enough to wake, even if another failed.
                summary = "; ".join(_describe(m) for m in measurements if m.active)
                return Probe(epoch=epoch, active=True, summary=summary)
            if failures:
                _log.info("%s: %s", _name(tracked), "; ".join(str(f) for f in failures))
                return None
            return Probe(epoch=epoch, active=False)

        async def probe_and_act(tracked: _Tracked) -> None:
            # Each Deployment is decided as soon as its clusters' batches are in: an active one
            # does not wait for the batches of clusters it does not name.
            await self._act(tracked, await probe(tracked))

        try:
            await asyncio.gather(*(probe_and_act(t) for t in items))
        finally:
            for batch in batches.values():
                batch.cancel()
            await asyncio.gather(*batches.values(), return_exceptions=True)

    async def _measure_cluster(
        self, members: list[TriggerSettings], gate: asyncio.Semaphore
    ) -> dict[TriggerSettings, Measurement | str]:
        """One cluster's batch: each trigger's measurement, or why it failed (worded for a person)."""
        async with gate:
            try:
                source = await self._pool.acquire(members[0])
            except SourceError as exc:
                self.metrics.inc("tidescale_waker_measurement_failures_total", amount=len(members))
                return dict.fromkeys(members, str(exc))
            try:
                measure_many = getattr(source, "measure_many", None)
                if callable(measure_many):
                    found = cast(Mapping[TriggerSettings, object], await measure_many(members))
                else:  # a source without batches: one by one, concurrently
                    singles = [measure_safely(source, s, Scope.GROUP) for s in members]
                    found = dict(zip(members, await asyncio.gather(*singles), strict=True))
            finally:
                await self._pool.release(members[0])
        results: dict[TriggerSettings, Measurement | str] = {}
        for settings in members:
            result = found.get(settings)
            if isinstance(result, Measurement):
                results[settings] = result
            elif isinstance(result, MeasurementFailure):
                results[settings] = result.error
            else:
                results[settings] = "the source gave no measurement"
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
                _log.warning("%s: %s not written: %s", _name(tracked), decision.action.value, exc)
                return
            tracked.snapshot = DeploymentSnapshot.from_object(cast(Mapping[str, Any], written))
            if decision.action is WakerAction.WAKE:
                self.metrics.inc("tidescale_waker_wakes_total")
            elif decision.action is WakerAction.ACK:
                self.metrics.inc("tidescale_waker_acks_total")
            _log.info("%s: %s (%s)", _name(tracked), decision.action.value, decision.why)
            await self._emit(tracked.snapshot, decision, cast(Mapping[str, Any], written))
            return

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
            await self._client.create_event(
                involved,
                reason=event.reason,
                message=event.message,
                event_type="Warning" if event.type == "Warning" else "Normal",
                reporting_instance=self.identity,
            )
        except KubeError as exc:
            # The write is what matters; a lost Event is only a lost note.
            _log.warning("%s: event %s not recorded: %s", _name_of(snapshot), event.reason, exc)
        if decision.action is WakerAction.WAKE:
            _log.info("%s: %s", _name_of(snapshot), event.message)


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


def _name(tracked: _Tracked) -> str:
    return _name_of(tracked.snapshot)


def _name_of(snapshot: DeploymentSnapshot) -> str:
    return f"{snapshot.namespace}/{snapshot.name}"


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
    parser.add_argument("--log-level", default=env.get("TIDESCALE_LOG_LEVEL", "INFO"))
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


async def _serve(args: argparse.Namespace) -> None:
    from tidescale.election import LeaseElector

    config = KubeConfig.from_kubeconfig(args.kubeconfig) if args.kubeconfig else KubeConfig.from_environment()
    namespaces = [n.strip() for n in args.secret_namespaces.split(",") if n.strip()]
    client = WakerClient(config)
    try:
        if args.no_election:
            waker = Waker(
                client, identity=args.identity, interval=args.interval, secret_namespaces=namespaces
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
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

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
