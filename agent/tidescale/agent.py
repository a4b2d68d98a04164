"""The sidecar agent: runs beside every opted-in pod (``tidescale agent``).

Every agent of a Deployment:

* watches its Deployment and parses the hints on every change; a broken hint set is
  reported and the last good one stays in force;
* serves ``/healthz``, ``/readyz`` (both answer whenever the process serves: the agent
  never un-readies its workload), ``/metrics`` and ``/v1/lag`` (its own pod's lag,
  measured on demand and cached for one polling interval, so a follower that nobody
  asks costs no broker request and no wake-up);
* takes part in the Deployment's Lease election, watching the Lease rather than
  polling it.

The leader, every polling interval: measures every trigger group-wide from the broker
(one query per trigger per interval, whatever the replica count, exact even while the
group rebalances), runs the policy engine, and when the count changes makes a fenced
PATCH of ``deployments/{name}/scale`` (only while the Lease is provably held, and only
if the Deployment is unchanged since it was read), emits an Event (old -> new, why) and
updates the ``tidescale.io/status`` annotation. Every 15 s it also works out each pod's share
for the status, at a cost that does not grow with the replicas (see :mod:`tidescale._peer_share`:
Kafka's from the group's assignment, other sources from a bounded rotating sample of ``/v1/lag``).
Idle past the cooldown with min-replicas 0, it hands the Deployment to the waker
through the protocol in :mod:`tidescale.parking`.

A failure here never harms the workload: broker and API server outages are retried
with backoff and reported; missing RBAC is reported once (log + Event) while the agent
keeps serving its probes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson

from tidescale import _logging, _wallclock
from tidescale._deletion_cost import DELETION_COST_ANNOTATION, mark_for_scale_down
from tidescale._events import EventRecorder
from tidescale._metrics import AGENT_FAMILIES, LEADER_ONLY, Metrics, build_info
from tidescale._policy_state import POLICY_STATE_ANNOTATION
from tidescale._policy_state import encode as encode_policy_state
from tidescale._policy_state import restore as restore_policy_state
from tidescale._progress_window import DrainEstimate, Progress, ProgressWindow, merged_stall
from tidescale._state import STATE_LABEL, held_by, holds_count, state_of
from tidescale.election import LeaseElector, LeaseTiming, Term, lease_name
from tidescale.errors import HintsInvalid, KubeConflict, KubeError, LeadershipLost, TidescaleError
from tidescale.hints import AGENT_OWNED, Hints, format_duration, parse_hints
from tidescale.httpserver import HttpServer, Request, Response
from tidescale.kube import Deployment, KubeClient, KubeConfig, ObjectReference, Pod
from tidescale.parking import (
    PARK_RECORD_ANNOTATION,
    PROTOCOL_VERSION,
    STATUS_ANNOTATION,
    DeploymentSnapshot,
    LeaderAction,
    leader_step,
    newer_protocol,
)
from tidescale.policy import Decision, History, decide
from tidescale.rbac import describe_missing, missing_permissions
from tidescale.sources.base import (
    Measurement,
    MeasurementFailure,
    MeasurementWarning,
    Scope,
    Source,
    TriggerSettings,
)
from tidescale.sources.registry import SourcePool, measure_safely

__all__ = ["STATUS_ANNOTATION", "Agent", "AgentEnv", "main", "status_annotation"]

_log = logging.getLogger("tidescale.agent")

HINT_PREFIX = "tidescale.io/"
DEFAULT_PORT = 9464
PEER_REFRESH_SECONDS = 15.0
STATUS_HOLDING_INTERVAL = 10.0
"""While a window or policy holds the count, the status and policy state are written at least this
often: the times of the recommendations in the window are what a new leader restores."""
STATUS_HEARTBEAT = 60.0
"""Otherwise they are written when something in them changes, and at least this often (the
``updatedAt`` that ``tidescale status`` shows as the status's age)."""
_BACKOFF_MAX = 30.0

Reading = Measurement | MeasurementFailure


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentEnv:
    """What the injector tells the agent through its environment."""

    pod_name: str
    namespace: str
    pod_ip: str
    deployment: str
    port: int = DEFAULT_PORT

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> AgentEnv:
        names = {
            "pod_name": "POD_NAME",
            "namespace": "POD_NAMESPACE",
            "pod_ip": "POD_IP",
            "deployment": "TIDESCALE_DEPLOYMENT",
        }
        missing = [env for env in names.values() if not environ.get(env)]
        if missing:
            raise TidescaleError(
                f"the agent's environment lacks {', '.join(missing)}: the sidecar injector sets them "
                "(POD_* from the downward API, TIDESCALE_DEPLOYMENT from the owning ReplicaSet)"
            )
        port_text = environ.get("TIDESCALE_PORT", str(DEFAULT_PORT))
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise TidescaleError(f"TIDESCALE_PORT is {port_text!r}: expected a port number from 1 to 65535")
        return cls(**{field: environ[env] for field, env in names.items()}, port=int(port_text))


def _utc_now() -> datetime:
    return _wallclock.now()


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _reading_json(reading: Reading) -> dict[str, Any]:
    if isinstance(reading, MeasurementFailure):
        return {"trigger": reading.trigger, "error": reading.error}
    return {
        "trigger": reading.trigger,
        "value": reading.value,
        "target": reading.target,
        "active": reading.active,
        "replicaCap": reading.replica_cap,
        "detail": dict(reading.detail),
    }


def status_annotation(
    *,
    leader: str,
    term: int,
    current: int,
    desired: int,
    readings: Sequence[Reading],
    last_change: Mapping[str, Any] | None,
    pods: Mapping[str, float | None],
    dry_run: bool,
    held_by: Mapping[str, Any] | None = None,
    updated_at: str | None = None,
    pods_from: str | None = None,
    progress: Progress | None = None,
    now: float = 0.0,
) -> dict[str, Any]:
    """The JSON the leader keeps in ``tidescale.io/status`` (shown by ``kubectl describe``). Pure.

    ``progress``: the drain estimates and stall states of this tick, at monotonic time ``now``."""
    triggers: dict[str, Any] = {}
    for reading in readings:
        if isinstance(reading, MeasurementFailure):
            triggers[reading.trigger] = {"error": reading.error}
        else:
            triggers[reading.trigger] = {
                "value": reading.value,
                "target": reading.target,
                "active": reading.active,
            }
    for name, estimate in (progress.drain if progress else {}).items():
        if name in triggers:
            triggers[name]["drain"] = _drain_json(estimate)
    for name, stall in (progress.stalled() if progress else {}).items():
        if name in triggers:
            since = now if stall.since is None else stall.since
            triggers[name]["stalled"] = {
                "units": list(stall.units),
                "seconds": round(max(0.0, now - since), 1),
            }
    status: dict[str, Any] = {
        "version": PROTOCOL_VERSION,
        "leader": leader,
        "leaseTransitions": term,
        "replicas": {"current": current, "desired": desired},
        "triggers": triggers,
        "pods": dict(sorted(pods.items())),
    }
    if pods_from:
        status["podsFrom"] = pods_from
    if dry_run:
        status["dryRun"] = True
    if last_change:
        status["lastChange"] = dict(last_change)
    if held_by:
        status["heldBy"] = dict(held_by)
    if updated_at:
        status["updatedAt"] = updated_at
    return status


def _drain_json(estimate: DrainEstimate) -> dict[str, Any]:
    """A drain estimate for the status: the formula's inputs as measured, and its answer."""
    rates, recommendation = estimate.rates, estimate.recommendation

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    return {
        "targetSeconds": estimate.target_seconds,
        "backlog": estimate.backlog,
        "arrivalRate": rounded(rates.arrival),
        "perPodRate": rounded(estimate.per_pod_rate),
        "perPodRateAgeSeconds": rounded(estimate.rate_age),
        "busySeconds": round(rates.busy_seconds, 1),
        "replicas": recommendation.replicas,
        "measured": recommendation.measured,
        "clearsInSeconds": rounded(recommendation.clears_in),
        "reason": recommendation.reason,
    }


def _selector_of(deployment: Deployment) -> str | None:
    """The Deployment's ``matchLabels`` as a label selector (None without one)."""
    labels = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items())) or None


def _pod_ready_address(pod: Pod) -> str | None:
    status = pod.get("status") or {}
    if status.get("phase") != "Running" or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return None
    return status.get("podIP") or None


class Agent:
    """One agent: its Deployment's hints, its sources, its place in the election."""

    def __init__(
        self,
        env: AgentEnv,
        client: KubeClient,
        *,
        clock: Callable[[], float] = time.monotonic,
        peer_timeout: float = 1.0,
        peer_concurrency: int = 16,
    ) -> None:
        self.env = env
        self._client = client
        self._clock = clock
        self._peer_timeout = peer_timeout
        self._peer_limit = asyncio.Semaphore(peer_concurrency)
        self.hints: Hints | None = None
        """The last good hints (None until the first good set)."""
        self.hints_problem: str | None = None
        """What is wrong with the Deployment's current hints, while something is."""
        self.deployment: Deployment | None = None
        self._seen_hints: dict[str, str] | None = None
        self._policy_state_seen: tuple[str | None, float] = (None, self._clock())
        self._pool = SourcePool(pod_ip=env.pod_ip)
        self._sources: dict[str, tuple[TriggerSettings, Source | None]] = {}
        """Each trigger's settings and source; None until its first measurement (see _swap_sources)."""
        self._sources_lock = asyncio.Lock()
        self._local: tuple[Reading, ...] = ()
        self._local_at = -math.inf
        self._local_lock = asyncio.Lock()
        self._warned: dict[str, tuple[MeasurementWarning, ...]] = {}
        """Each trigger's source warnings last made Events (again only when they change)."""
        self._hints_ready = asyncio.Event()
        self._peers: dict[str, str] = {}
        self._peer_lag: dict[str, float | None] = {}
        self._elector: LeaseElector | None = None
        self._reported_problem: str | None = None
        self._events = EventRecorder(client, instance=env.pod_name, clock=clock)
        self.metrics = Metrics(
            AGENT_FAMILIES, const_labels={"namespace": env.namespace, "deployment": env.deployment}
        )
        self.metrics.set("tidescale_build_info", 1, build_info())
        self.metrics.set("tidescale_leader", 0)
        self.metrics.set("tidescale_protocol_hold", 0)

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """Serves, watches, campaigns and (when elected) leads until cancelled."""
        server = HttpServer(
            {
                "/healthz": {"GET": self._ok},
                "/readyz": {"GET": self._ok},
                "/metrics": {"GET": self._metrics},
                "/v1/lag": {"GET": self._lag},
            },
            host="0.0.0.0",  # noqa: S104 - the pod's address: peers and Prometheus reach it there
            port=self.env.port,
        )
        await server.start()
        _log.info("serving /healthz /readyz /metrics /v1/lag on port %d", server.port)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._check_permissions(), name="rbac-check")
                tasks.create_task(self._watch_deployment(), name="deployment-watch")
                tasks.create_task(self._campaign(), name="election")
        finally:
            await server.stop(grace=2.0)
            await self._pool.close()

    async def _ok(self, _: Request) -> Response:
        return Response(body=b"ok\n")

    async def _metrics(self, _: Request) -> Response:
        return Response(body=self.metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")

    async def _lag(self, _: Request) -> Response:
        readings = await self.local_readings()
        body = {
            "pod": self.env.pod_name,
            "takenAt": _iso(_utc_now()),
            "triggers": [_reading_json(r) for r in readings],
        }
        return Response(body=orjson.dumps(body), content_type="application/json")

    # ------------------------------------------------------------------ RBAC

    async def _check_permissions(self) -> None:
        """Once at start: anything missing is said once, in a log line and an Event; the agent stays up."""
        delay = 1.0
        while True:
            try:
                missing = await missing_permissions(self._client, self.env.namespace)
                break
            except KubeError as error:
                _log.warning("cannot review my permissions yet: %s", error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
        if not missing:
            _log.info("RBAC: every permission the agent needs is granted")
            return
        try:
            account = (await self._client.who_am_i()).removeprefix("system:serviceaccount:")
        except KubeError:
            account = "(this pod's ServiceAccount)"
        message = describe_missing(missing, namespace=self.env.namespace, service_account=account)
        _log.error("%s", message)
        await self._event("MissingPermissions", message, "Warning")

    # ------------------------------------------------------------------ hints

    async def _watch_deployment(self) -> None:
        delay = 1.0
        while True:
            try:
                async for kind, deployment in self._client.watch_deployment(
                    self.env.namespace, self.env.deployment
                ):
                    delay = 1.0
                    if kind == "DELETED":
                        _log.info("deployment %s was deleted", self.env.deployment)
                        continue
                    await self.apply_deployment(deployment)
            except KubeError as error:
                _log.warning(
                    "watching deployment %s failed, retrying in %.0fs: %s", self.env.deployment, delay, error
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)

    async def apply_deployment(self, deployment: Deployment) -> None:
        """Takes in a new state of the Deployment: re-parses the hints when they changed."""
        self.deployment = deployment
        annotations = (deployment.get("metadata") or {}).get("annotations") or {}
        policy_state = annotations.get(POLICY_STATE_ANNOTATION)
        if policy_state != self._policy_state_seen[0]:
            # When this process first saw it: the state is at least this old, whatever the clocks.
            self._policy_state_seen = (policy_state, self._clock())
        # What the agents and the waker write themselves (status, park record) is not a hint change.
        hints_now = {
            key: value
            for key, value in annotations.items()
            if key.startswith(HINT_PREFIX) and key.removeprefix(HINT_PREFIX) not in AGENT_OWNED
        }
        if hints_now == self._seen_hints:
            return
        self._seen_hints = hints_now
        try:
            hints = parse_hints(annotations)
        except HintsInvalid as invalid:
            kept = (
                "keeping the last good hints"
                if self.hints is not None
                else "not scaling until they are fixed"
            )
            self.hints_problem = f"{invalid}\n({kept})"
            self.metrics.set("tidescale_hints_valid", 0)
            _log.error("invalid hints on deployment %s: %s", self.env.deployment, self.hints_problem)
            return
        await self._swap_sources(hints)
        self.hints, self.hints_problem = hints, None
        self.metrics.set("tidescale_hints_valid", 1)
        self.metrics.set("tidescale_paused", 1 if hints.paused or hints.paused_replicas is not None else 0)
        self._local_at = -math.inf
        self._hints_ready.set()
        names = ", ".join(f"{t.name} ({hints.type_of(t.name)})" for t in hints.triggers) or "none"
        _log.info("hints applied: min %d, max %d, triggers %s", hints.min_replicas, hints.max_replicas, names)

    async def _swap_sources(self, hints: Hints) -> None:
        """Take in the new triggers. A source opens (and imports its broker client) at the trigger's
        first measurement, so a follower nobody asks for its lag loads no client: that is most of a
        follower's memory beyond the interpreter. While sources are open, the new ones are acquired
        before the old ones are released, so shared connections stay."""
        async with self._sources_lock:
            wanted = {settings.name: settings for settings in hints.triggers}
            any_open = any(source is not None for _, source in self._sources.values())
            kept: dict[str, tuple[TriggerSettings, Source | None]] = {}
            for name, settings in wanted.items():
                held = self._sources.get(name)
                if held is not None and held[0] == settings:
                    kept[name] = held
                else:
                    kept[name] = (settings, await self._pool.acquire(settings) if any_open else None)
            for name, (settings, source) in self._sources.items():
                if kept.get(name, (None,))[0] is not settings:
                    if source is not None:
                        await self._pool.release(settings)
                    for family in (*LEADER_ONLY, "tidescale_local_value"):
                        self.metrics.clear(family)
            self._sources = kept

    async def _opened_sources(self) -> list[tuple[TriggerSettings, Source]]:
        """Every trigger's settings and source, opening from the pool those not yet open."""
        async with self._sources_lock:
            opened = []
            for name, (settings, maybe) in list(self._sources.items()):
                source = maybe if maybe is not None else await self._pool.acquire(settings)
                self._sources[name] = (settings, source)
                opened.append((settings, source))
            return opened

    # ------------------------------------------------------------------ measuring

    async def _measure(self, scope: Scope) -> tuple[Reading, ...]:
        if not self._sources:
            return ()
        held = await self._opened_sources()
        return tuple(await asyncio.gather(*(self._measure_in_flight(one, scope) for one in held)))

    async def _measure_in_flight(self, held: tuple[TriggerSettings, Source], scope: Scope) -> Reading:
        """:meth:`_measure_one`, counted in ``tidescale_measurements_in_flight`` while it runs. The
        leader measures, decides, then waits its interval, so a slow broker stretches the loop
        instead of piling polls up: more than one per trigger and scope would be a bug."""
        labels = {**self.trigger_labels(held[0].name), "scope": scope.value}
        self.metrics.inc("tidescale_measurements_in_flight", labels)
        try:
            return await self._measure_one(held, scope)
        finally:
            self.metrics.inc("tidescale_measurements_in_flight", labels, -1.0)

    async def _measure_one(self, held: tuple[TriggerSettings, Source], scope: Scope) -> Reading:
        settings, source = held
        # The source bounds its own calls; this bounds the whole measurement, so that a stuck
        # broker never stalls the leader's loop.
        budget = float(getattr(settings, "timeout", 5.0)) * 2 + 1.0
        labels = {**self.trigger_labels(settings.name), "scope": scope.value}
        started = time.monotonic()
        try:
            async with asyncio.timeout(budget):
                reading = await measure_safely(source, settings, scope, clock=self._clock)
        except TimeoutError:
            reading = MeasurementFailure(
                trigger=settings.name,
                error=f"measurement took longer than {budget:g}s",
                taken_at=self._clock(),
            )
        self.metrics.observe("tidescale_measurement_duration_seconds", time.monotonic() - started, labels)
        self.metrics.inc("tidescale_measurements_total", labels)
        if isinstance(reading, Measurement) and scope is Scope.GROUP:
            await self._report_warnings(settings.name, reading.warnings)
        if isinstance(reading, MeasurementFailure):
            self.metrics.inc("tidescale_measurement_failures_total", labels)
            _log.warning(
                "measuring %s (%s) failed: %s",
                settings.name,
                scope.value,
                reading.error,
                extra={"trigger": settings.name},
            )
        return reading

    async def _report_warnings(self, trigger: str, warnings: tuple[MeasurementWarning, ...]) -> None:
        """A source's warnings about a reading that still counts (NoQueueMatched) as Warning Events and
        log lines when they appear or change; from the leader's group readings only, not every poll."""
        if self._warned.get(trigger, ()) == warnings:
            return
        self._warned[trigger] = warnings
        for warning in warnings:
            _log.warning("trigger %s: %s", trigger, warning.message, extra={"trigger": trigger})
            await self._event(warning.reason, warning.message, "Warning")

    def trigger_labels(self, trigger: str) -> dict[str, str]:
        """``trigger`` and ``type`` labels of a trigger's series."""
        types = self.hints.trigger_types if self.hints is not None else {}
        return {"trigger": trigger, "type": types.get(trigger, "unknown")}

    async def local_readings(self) -> tuple[Reading, ...]:
        """This pod's own lag, measured at most once per polling interval."""
        interval = self.hints.polling_interval if self.hints else 1.0
        async with self._local_lock:
            if self._clock() - self._local_at >= interval:
                self._local = await self._measure(Scope.LOCAL)
                self._local_at = self._clock()
                for reading in self._local:
                    if isinstance(reading, Measurement):
                        labels = self.trigger_labels(reading.trigger)
                        self.metrics.set("tidescale_local_value", reading.value, labels)
        return self._local

    # ------------------------------------------------------------------ election

    async def _campaign(self) -> None:
        await self._hints_ready.wait()
        assert self.hints is not None
        timing = self.hints.lease
        self._elector = LeaseElector(
            self._client,
            namespace=self.env.namespace,
            name=lease_name(self.env.deployment),
            identity=self.env.pod_name,
            timing=LeaseTiming(
                duration=timing.duration,
                renew_deadline=timing.renew_deadline,
                retry_period=timing.retry_period,
            ),
        )
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._run_elector(self._elector), name="lease")
            tasks.create_task(self._lead_whenever_elected(self._elector), name="leader")

    async def _run_elector(self, elector: LeaseElector) -> None:
        delay = 1.0
        while True:
            try:
                await elector.run()
            except KubeError as error:
                _log.warning("leader election failed, retrying in %.0fs: %s", delay, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)

    async def _lead_whenever_elected(self, elector: LeaseElector) -> None:
        while True:
            term = await elector.wait_leading()
            _log.info("leading deployment %s (lease transitions %d)", self.env.deployment, term.transitions)
            self.metrics.set("tidescale_leader", 1)
            try:
                await _Leadership(self, elector, term).run()
            finally:
                self.metrics.set("tidescale_leader", 0)
                _log.info("no longer leading deployment %s", self.env.deployment)

    # ------------------------------------------------------------------ reporting

    def _involved(self) -> ObjectReference:
        reference: ObjectReference = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "namespace": self.env.namespace,
            "name": self.env.deployment,
        }
        uid = ((self.deployment or {}).get("metadata") or {}).get("uid")
        if uid:
            reference["uid"] = uid
        return reference

    async def _event(self, reason: str, message: str, kind: Literal["Normal", "Warning"] = "Normal") -> None:
        try:
            await self._events.emit(self._involved(), reason=reason, message=message, event_type=kind)
        except KubeError as error:
            _log.warning("could not emit event %s (%s): %s", reason, message, error)


class _Leadership:
    """One term of leadership: the decide-and-act loop, the peers, the handoff to the waker."""

    def __init__(self, agent: Agent, elector: LeaseElector, term: Term) -> None:
        self.agent = agent
        self.elector = elector
        self.term = term
        # The previous leader's windows, cooldown and failure counts (tidescale.io/policy-state).
        annotations = ((agent.deployment or {}).get("metadata") or {}).get("annotations") or {}
        self.history = (
            History()
            if agent.hints is None
            else restore_policy_state(
                annotations,
                hints=agent.hints,
                now=agent._clock(),
                wall=_wallclock.time(),
                observed_ago=agent._clock() - agent._policy_state_seen[1],
            )
        )
        self.park_epoch: int | None = None
        self.last_change: dict[str, Any] | None = None
        self._last_status: dict[str, Any] | None = None
        self._last_status_at = -math.inf
        self._last_peers_at = -math.inf
        self._reported_problem: str | None = None
        self._dry_run_said: int | None = None
        self._marking_refused: str | None = None
        self._decision: Decision | None = None
        self._trigger_states: dict[str, str] = {}
        self._parking = False
        self._held_last_tick = False
        self._requested_at: float | None = None
        self._protocol_hold: str | None = None
        self._status_key: Any = None
        self._written_active = False
        self._state: str | None = (((agent.deployment or {}).get("metadata") or {}).get("labels") or {}).get(
            STATE_LABEL
        )
        self._peer_http: Any = None
        self._pods_from: str | None = None
        self._sampled_after: str | None = None
        self._progress_window = ProgressWindow()
        self._progress: Progress | None = None
        self._stalled: dict[str, tuple[str, ...]] = {}
        """Triggers said stalled (ConsumerStalled), with the units named then."""

    async def run(self) -> None:
        agent = self.agent
        peers = asyncio.create_task(self._watch_peers(), name="peers")
        try:
            while self.elector.term() == self.term:
                hints = agent.hints
                await self._report_hint_problem()
                if hints is not None and hints.triggers and agent.deployment is not None:
                    started = time.monotonic()
                    try:
                        await self.tick(hints, agent.deployment)
                        agent.metrics.observe(
                            "tidescale_decision_duration_seconds", time.monotonic() - started
                        )
                    except KubeError as error:
                        _log.warning("leader tick failed: %s", error)
                    except Exception:
                        # A bug in one tick must not take the agent (and its probes) down: say so
                        # loudly and try again next interval.
                        _log.exception("leader tick failed unexpectedly")
                await asyncio.sleep(hints.polling_interval if hints else 1.0)
        finally:
            for family in LEADER_ONLY:  # a new leader elsewhere reports them; no stale copy here
                agent.metrics.clear(family)
            agent.metrics.set("tidescale_protocol_hold", 0)
            peers.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await peers
            if self._peer_http is not None:
                await self._peer_http.aclose()

    async def _report_hint_problem(self) -> None:
        problem = self.agent.hints_problem
        if problem and problem != self._reported_problem:
            await self.agent._event("InvalidHints", problem, "Warning")
        self._reported_problem = problem

    async def tick(self, hints: Hints, deployment: Deployment) -> None:
        agent = self.agent
        if await self._hold(newer_protocol((deployment.get("metadata") or {}).get("annotations") or {})):
            return
        readings = await agent._measure(Scope.GROUP)
        current = int((deployment.get("spec") or {}).get("replicas", 1))
        pods = (deployment.get("status") or {}).get("replicas")  # the scale subresource's status.replicas
        ready = (deployment.get("status") or {}).get("readyReplicas")
        now = agent._clock()
        progress = self._progress_window.update(
            readings,
            drain_times={
                settings.name: drain_time
                for settings in hints.triggers
                if isinstance(drain_time := getattr(settings, "drain_time", None), int | float)
            },
            stall_after=hints.stall_after,
            now=now,
            current=current,
            ready=int(ready) if isinstance(ready, int) else 0,
            max_replicas=hints.max_replicas,
        )
        decision = decide(
            readings,
            current=current,
            hints=hints,
            now=now,
            history=self.history,
            pods=int(pods) if isinstance(pods, int) else None,
            drain=progress.recommendations(),
            stall=merged_stall(progress.stalled()),
        )
        self._progress = progress
        self._record(readings, decision, current)
        self._decision, self._parking = decision, False
        await self._report_triggers(decision)
        await self._report_stalls(progress, current, now)
        if current == 0:
            # The waker's: agents exist at zero only while pods still shut down after a park.
            self.history = decision.history_unapplied
            return
        annotations = (deployment.get("metadata") or {}).get("annotations") or {}
        if hints.min_replicas == 0 and (
            self.park_epoch is not None
            or PARK_RECORD_ANNOTATION in annotations
            or (decision.wants_zero and decision.desired == current)
        ):
            self.history = decision.history
            self._parking = True
            await self._park_step(hints, readings, idle=decision.wants_zero)
        elif decision.desired != current:
            await self._scale(hints, deployment, decision, current)
        else:
            self.history = decision.history
            self._dry_run_said = None
        await self._maybe_refresh_peers(readings)
        await self._maybe_write_status(hints, readings, current, decision.desired)

    async def _hold(self, why: str | None) -> bool:
        """Whether to hold (write nothing this tick): the Deployment carries a park record or status
        of a newer protocol version than this build speaks. Said once: log, gauge, Warning Event."""
        agent = self.agent
        if why is None:
            if self._protocol_hold is not None:
                _log.info(
                    "deployment %s is back to protocol %d: acting again",
                    agent.env.deployment,
                    PROTOCOL_VERSION,
                )
                agent.metrics.set("tidescale_protocol_hold", 0)
                self._protocol_hold = None
            return False
        if why != self._protocol_hold:
            self._protocol_hold = why
            _log.warning("holding deployment %s: %s", agent.env.deployment, why)
            agent.metrics.set("tidescale_protocol_hold", 1)
            await agent._event("ProtocolTooNew", why, "Warning")
        return True

    async def _report_triggers(self, decision: Decision) -> None:
        """TriggerFailing / FallbackApplied when a trigger's state worsens, Recovered when it is back."""
        for rec in decision.recommendations:
            before = self._trigger_states.get(rec.trigger, "ok")
            self._trigger_states[rec.trigger] = rec.state
            if rec.state == before:
                continue
            if rec.state == "failing":
                message = (
                    f"trigger {rec.trigger} cannot be measured ({rec.consecutive_failures} in a row): "
                    f"{rec.error}; it has no say in the count until it measures again"
                )
                await self.agent._event("TriggerFailing", message, "Warning")
            elif rec.state == "fallback":
                message = (
                    f"trigger {rec.trigger} failed {rec.consecutive_failures} times in a row: "
                    f"fallback applied, it asks for {rec.replicas} replicas"
                )
                await self.agent._event("FallbackApplied", message, "Warning")
            else:
                message = f"trigger {rec.trigger} measures again: {rec.value} for a target of {rec.target}"
                await self.agent._event("Recovered", message)

    async def _report_stalls(self, progress: Progress, current: int, now: float) -> None:
        """ConsumerStalled (Warning) once when a trigger's group stalls, ConsumerResumed when it
        makes progress again (or the detector stops watching it)."""
        stalled = progress.stalled()
        for name, state in sorted(stalled.items()):
            if name in self._stalled:
                continue
            self._stalled[name] = state.units
            where = ", ".join(state.units) if state.units else "its units"
            waited = format_duration(round(max(0.0, now - (now if state.since is None else state.since)), 3))
            message = (
                f"trigger {name}: no progress for {waited} on {where} while messages wait and every "
                f"pod is Ready (a poison message, a dead downstream, a rebalance loop?): holding "
                f"{current} replicas, since more pods would not help; scaling resumes with progress"
            )
            _log.warning("%s", message, extra={"trigger": name})
            await self.agent._event("ConsumerStalled", message, "Warning")
        for name in sorted(set(self._stalled) - set(stalled)):
            units = self._stalled.pop(name)
            where = ", ".join(units) if units else "its units"
            message = f"trigger {name}: progress again on {where}: scaling normally"
            _log.info("%s", message, extra={"trigger": name})
            await self.agent._event("ConsumerResumed", message)

    def _record(self, readings: Sequence[Reading], decision: Decision, current: int) -> None:
        metrics = self.agent.metrics
        progress = self._progress
        if progress is not None:
            for reading in readings:
                state = progress.stall.get(reading.trigger)
                labels = self.agent.trigger_labels(reading.trigger)
                if state is None:  # not watched (no counters, stall-after 0): no stale sample either
                    metrics.discard("tidescale_consumer_stalled", labels)
                else:
                    metrics.set("tidescale_consumer_stalled", 1 if state.stalled else 0, labels)
            for name, estimate in progress.drain.items():
                labels = self.agent.trigger_labels(name)
                for family, value in (
                    ("tidescale_drain_per_pod_rate", estimate.per_pod_rate),
                    ("tidescale_drain_arrival_rate", estimate.rates.arrival),
                    ("tidescale_drain_clear_seconds", estimate.recommendation.clears_in),
                ):
                    if value is None:
                        metrics.discard(family, labels)
                    else:
                        metrics.set(family, value, labels)
                metrics.set("tidescale_drain_replicas", estimate.recommendation.replicas, labels)
        for reading in readings:
            if isinstance(reading, Measurement):
                labels = self.agent.trigger_labels(reading.trigger)
                metrics.set("tidescale_trigger_value", reading.value, labels)
                metrics.set("tidescale_trigger_target", reading.target, labels)
                metrics.set("tidescale_trigger_active", 1 if reading.active else 0, labels)
        for rec in decision.recommendations:
            labels = self.agent.trigger_labels(rec.trigger)
            metrics.set("tidescale_trigger_failing", 1 if rec.state == "failing" else 0, labels)
            metrics.set("tidescale_trigger_fallback", 1 if rec.state == "fallback" else 0, labels)
        metrics.set("tidescale_desired_replicas", decision.desired)
        metrics.set("tidescale_current_replicas", current)
        direction = "up" if decision.desired > current else "down" if decision.desired < current else "none"
        metrics.inc("tidescale_decisions_total", {"direction": direction})

    async def _scale(self, hints: Hints, deployment: Deployment, decision: Decision, current: int) -> None:
        agent, env = self.agent, self.agent.env
        if hints.dry_run:
            self.history = decision.history_unapplied
            if self._dry_run_said != decision.desired:
                self._dry_run_said = decision.desired
                await agent._event(
                    "DryRun", f"would scale {current} -> {decision.desired}: {decision.reason}"
                )
            return
        selector = _selector_of(deployment)
        if decision.desired < current and hints.scale_down_marking and selector is not None:
            # Mark the idlest pods first, so the ReplicaSet removes those (docs/scale-down.md).
            try:
                marking = await mark_for_scale_down(
                    agent._client,
                    namespace=env.namespace,
                    selector=selector,
                    remove=current - decision.desired,
                    lag=agent._peer_lag,
                    leader=env.pod_name,
                    fenced=lambda write: self.elector.fenced(write, term=self.term),
                )
            except LeadershipLost as error:
                agent.metrics.inc("tidescale_scale_writes_total", {"result": "failed"})
                self.history = decision.history_unapplied
                _log.warning("scale write %d -> %d not made: %s", current, decision.desired, error)
                return
            if marking.refused is None:
                self._marking_refused = None
                if marking.plan.chosen:
                    _log.info("marked for removal: %s", ", ".join(marking.plan.chosen))
            elif marking.refused != self._marking_refused:
                self._marking_refused = marking.refused
                message = (
                    f"marking the idlest pods before scaling {current} -> {decision.desired} was refused: "
                    f"{marking.refused}. Scaling anyway: the ReplicaSet picks the pods to remove itself "
                    f"(newest first). Marking needs patch on pods in {env.namespace}, for the annotation "
                    f"{DELETION_COST_ANNOTATION} only (deploy/agent-rbac.yaml and deploy/agent-policy.yaml, "
                    'or the Helm chart\'s agent RBAC); tidescale.io/scale-down-marking: "false" turns it off'
                )
                _log.warning("%s", message)
                await agent._event("ScaleDownMarkingRefused", message, "Warning")
        version = (deployment.get("metadata") or {}).get("resourceVersion")
        try:
            await self.elector.fenced(
                lambda: agent._client.patch_scale(
                    env.namespace, env.deployment, decision.desired, resource_version=version
                ),
                term=self.term,
            )
        except KubeConflict:
            # The Deployment changed since it was read (a rollout, a hand edit): decide again next tick.
            agent.metrics.inc("tidescale_scale_writes_total", {"result": "conflict"})
            self.history = decision.history_unapplied
            return
        except (LeadershipLost, KubeError) as error:
            agent.metrics.inc("tidescale_scale_writes_total", {"result": "failed"})
            self.history = decision.history_unapplied
            _log.warning("scale write %d -> %d not made: %s", current, decision.desired, error)
            return
        agent.metrics.inc("tidescale_scale_writes_total", {"result": "ok"})
        self.history = decision.history
        self.last_change = {
            "at": _iso(_utc_now()),
            "from": current,
            "to": decision.desired,
            "reason": decision.reason,
        }
        _log.info("scaled %s: %s", env.deployment, decision.reason)
        await agent._event("Scaled", decision.reason)

    async def _park_step(self, hints: Hints, readings: Sequence[Reading], *, idle: bool) -> None:
        agent, env = self.agent, self.agent.env
        deployment = await agent._client.get_deployment(env.namespace, env.deployment)
        step = leader_step(
            DeploymentSnapshot.from_object(deployment),
            me=env.pod_name,
            lease_transitions=self.term.transitions,
            my_epoch=self.park_epoch,
            requested_ago=None if self._requested_at is None else agent._clock() - self._requested_at,
            idle=idle,
            now=_utc_now(),
            ack_timeout=hints.park_ack_timeout,
            triggers=tuple(settings.name for settings in hints.triggers),
            last_offsets=_log_end_offsets(readings),
        )
        if step.action is LeaderAction.HOLD:
            await self._hold(step.why)
            return
        if step.why:
            _log.info("park: %s", step.why)
        sent = agent._clock()
        if step.write is not None:
            body = step.write
            try:
                if step.fenced:
                    await self.elector.fenced(
                        lambda: agent._client.patch_deployment(env.namespace, env.deployment, body),
                        term=self.term,
                    )
                else:
                    await agent._client.patch_deployment(env.namespace, env.deployment, body)
            except KubeConflict:
                return  # someone (the waker) wrote first: read again and decide again next tick
            except (LeadershipLost, KubeError) as error:
                _log.warning("park write (%s) not made: %s", step.action.value, error)
                return
        if step.action is LeaderAction.REQUEST:
            self._requested_at = sent  # the ack timeout runs on this clock, not on requestedAt
        elif step.epoch is None:
            self._requested_at = None
        self.park_epoch = step.epoch
        if step.event is not None:
            await agent._event(
                step.event.reason, step.event.message, "Warning" if step.event.type == "Warning" else "Normal"
            )

    # ------------------------------------------------------------------ peers

    async def _watch_peers(self) -> None:
        agent = self.agent
        delay = 1.0
        while True:
            selector = _selector_of(agent.deployment) if agent.deployment else None
            if selector is None:
                await asyncio.sleep(1.0)
                continue
            try:
                async for kind, pod in agent._client.watch_pods(agent.env.namespace, selector):
                    delay = 1.0
                    name = (pod.get("metadata") or {}).get("name", "")
                    address = None if kind == "DELETED" else _pod_ready_address(pod)
                    if address is None:
                        agent._peers.pop(name, None)
                        agent._peer_lag.pop(name, None)
                    else:
                        agent._peers[name] = address
            except KubeError as error:
                _log.warning("watching peers failed, retrying in %.0fs: %s", delay, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)

    async def _maybe_refresh_peers(self, readings: Sequence[Reading] = ()) -> None:
        """Each pod's share, every PEER_REFRESH_SECONDS, at a cost independent of the replicas:
        attributed from the group's assignment when every trigger's source can say who consumes
        what, else from at most PEER_SAMPLE peers' /v1/lag (rotating; the rest keep their last)."""
        from tidescale._peer_share import basis_text, next_sample

        agent = self.agent
        if agent._clock() - self._last_peers_at < PEER_REFRESH_SECONDS:
            return
        self._last_peers_at = agent._clock()
        peers = dict(agent._peers)
        shares = await self._attributed(readings, peers)
        if shares is not None:
            agent._peer_lag = dict(shares)
            self._pods_from = basis_text(attributed=True, asked=0, pods=len(peers))
            return
        if self._peer_http is None:
            self._peer_http = _PeerHttp(timeout=agent._peer_timeout)
        asked = next_sample(list(peers), self._sampled_after)
        results = await asyncio.gather(
            *(self._peer_total(self._peer_http, name, peers[name]) for name in asked)
        )
        self._sampled_after = asked[-1] if asked else None
        lag = {name: agent._peer_lag.get(name) for name in peers}
        lag.update(zip(asked, results, strict=True))
        agent._peer_lag = lag
        self._pods_from = basis_text(attributed=False, asked=len(asked), pods=len(peers))

    async def _attributed(
        self, readings: Sequence[Reading], peers: Mapping[str, str]
    ) -> dict[str, float] | None:
        """Every pod's share from each trigger's owners (one broker request per trigger) and this
        tick's group readings; None when a trigger failed or its source cannot attribute."""
        from tidescale._peer_share import Attributing, attribute

        agent = self.agent
        measured = {r.trigger: r for r in readings if isinstance(r, Measurement)}
        if not agent._sources or set(measured) != set(agent._sources):
            return None
        details: list[Mapping[str, float]] = []
        owners: list[Mapping[str, str]] = []
        for name, (settings, source) in agent._sources.items():
            if not isinstance(source, Attributing):
                return None
            try:
                owner = await source.owners(settings)
            except TidescaleError as error:  # only the status's per-pod section waits for it
                _log.debug("trigger %s: cannot attribute lag to pods: %s", name, error)
                return None
            if owner is None:
                return None
            details.append(measured[name].detail)
            owners.append(owner)
        return attribute(details, owners, peers)

    async def _peer_total(self, http: Any, name: str, address: str) -> float | None:
        agent = self.agent
        if name == agent.env.pod_name:
            readings = await agent.local_readings()
            return sum(r.value for r in readings if isinstance(r, Measurement)) if readings else None
        async with agent._peer_limit:
            try:
                response = await http.get(f"http://{address}:{agent.env.port}/v1/lag")
                response.raise_for_status()
                # A peer's answer is the pod's to write: any shape but the expected one is a gap.
                triggers = orjson.loads(response.content).get("triggers", [])
                values = [t["value"] for t in triggers if isinstance(t.get("value"), int | float)]
            except Exception as error:  # a peer's failure is only a gap in the status
                agent.metrics.inc("tidescale_peer_requests_total", {"result": "failed"})
                _log.debug("peer %s (%s) did not report: %r", name, address, error)
                return None
        agent.metrics.inc("tidescale_peer_requests_total", {"result": "ok"})
        return float(sum(values)) if values else None

    # ------------------------------------------------------------------ status

    async def _maybe_write_status(
        self, hints: Hints, readings: Sequence[Reading], current: int, desired: int
    ) -> None:
        agent, env = self.agent, self.agent.env
        decision, deployment, wall = self._decision, agent.deployment or {}, _utc_now()
        state = state_of(
            hints_valid=agent.hints_problem is None,
            readings=readings,
            decision=decision,
            current=current,
            ready=(deployment.get("status") or {}).get("readyReplicas"),
            parking=self._parking,
            previous=self._state,
            held_last_tick=self._held_last_tick,
            hints=hints,
        )
        self._held_last_tick = holds_count(decision, current, hints)
        status = status_annotation(
            leader=env.pod_name,
            term=self.term.transitions,
            current=current,
            desired=desired,
            readings=readings,
            last_change=self.last_change,
            pods=agent._peer_lag,
            pods_from=self._pods_from,
            dry_run=hints.dry_run,
            held_by=None if decision is None else held_by(decision, hints, now=agent._clock(), wall=wall),
            updated_at=_iso(wall),
            progress=self._progress,
            now=agent._clock(),
        )
        policy_state = encode_policy_state(
            self.history, hints=hints, now=agent._clock(), wall=_wallclock.time()
        )
        shape, active = _policy_state_key(policy_state, hints)
        key = (_status_key(status), shape, state)
        since = agent._clock() - self._last_status_at
        # A Deployment write costs the API server and wakes every watcher of the Deployment (each
        # agent, the waker): only on change, on a slow heartbeat, and faster while a window holds.
        if (
            key == self._status_key
            and not (active and not self._written_active)
            and since < (STATUS_HOLDING_INTERVAL if state == "holding" else STATUS_HEARTBEAT)
        ):
            return
        annotations = {
            STATUS_ANNOTATION: orjson.dumps(status).decode(),
            POLICY_STATE_ANNOTATION: policy_state,
        }
        # One merge patch: the annotations and the state label (kubectl get deploy -L tidescale.io/state).
        body = {"metadata": {"annotations": annotations, "labels": {STATE_LABEL: state}}}
        try:
            await self.elector.fenced(
                lambda: agent._client.patch_deployment(env.namespace, env.deployment, body),
                term=self.term,
            )
        except (LeadershipLost, KubeError) as error:
            _log.warning("status annotation not written: %s", error)
            return
        self._last_status, self._last_status_at, self._state = status, agent._clock(), state
        self._status_key, self._written_active = key, active


PEER_ANSWER_LIMIT = 64 * 1024
"""Most bytes of a peer's /v1/lag answer (a few triggers' values; a pod could send anything)."""


class _PeerResponse:
    def __init__(self, url: str, status: int, content: bytes) -> None:
        self.url, self.status, self.content = url, status, content

    def raise_for_status(self) -> None:
        if self.status != 200:
            raise RuntimeError(f"GET {self.url}: HTTP {self.status}")


class _PeerHttp:
    """GET a peer's /v1/lag over :mod:`tidescale._http1` (httpx would add ~8 MiB to the leader):
    one short-lived connection per request (at most PEER_SAMPLE every PEER_REFRESH_SECONDS, each to
    another pod), the whole request bounded by ``timeout``, the answer by PEER_ANSWER_LIMIT."""

    def __init__(self, *, timeout: float) -> None:
        self._timeout = timeout

    async def get(self, url: str) -> _PeerResponse:
        from urllib.parse import urlsplit

        from tidescale._http1 import HttpClient

        parts = urlsplit(url)
        client = HttpClient(f"{parts.scheme}://{parts.netloc}", ssl_context=None, headers={}, max_requests=1)
        try:
            async with asyncio.timeout(self._timeout):
                response = await client.request("GET", parts.path, limit=PEER_ANSWER_LIMIT)
        finally:
            await client.aclose()
        return _PeerResponse(url, response.status, response.content)

    async def aclose(self) -> None:
        return None


def _status_key(status: Mapping[str, Any]) -> Any:
    """What of the status is worth a write when it changes: not the measured values, whether each
    trigger is active, or heldBy (under light load they move every poll; the state label says
    when a window or policy holds, and the heartbeat refreshes the rest), nor the write time or
    the peers' lag."""
    triggers = {
        name: {
            # The drain estimate moves every poll; a stall is worth a write when it starts or names
            # other units, not as its seconds grow.
            **{
                key: value
                for key, value in fields.items()
                if key not in ("value", "active", "drain", "stalled")
            },
            **({"stalled": fields["stalled"].get("units")} if "stalled" in fields else {}),
        }
        for name, fields in (status.get("triggers") or {}).items()
    }
    return orjson.dumps(
        {
            **{
                key: value
                for key, value in status.items()
                if key not in ("updatedAt", "pods", "podsFrom", "heldBy")
            },
            "triggers": triggers,
            "pods": sorted(status.get("pods") or {}),
        },
        option=orjson.OPT_SORT_KEYS,
    )


def _policy_state_key(text: str, hints: Hints) -> tuple[Any, bool]:
    """What of the policy state is worth a write when it changes, and whether a trigger was active
    at this tick (last active less than half an interval ago).

    Worth a write: the scale events, which triggers fail and whether past the fallback threshold.
    Not the recommendations: they decide something only while a window holds the count, and then
    the state is written every STATUS_HOLDING_INTERVAL (a new count is a write of its own). Ages
    are not either: they change every poll.
    Activity is the caller's: a turn to activity must be written at once (a new leader must not
    take an older last-active for the truth, or it parks early); a turn to idle need not (a new
    leader that reads "active at the write" counts it active until about when it took over; see
    _policy_state.restore), which spares a write per flap under light load."""
    body = orjson.loads(text)
    last_active = body.get("a")
    threshold = hints.fallback.failure_threshold if hints.fallback is not None else None
    shape = (
        tuple(tuple(event[1:]) for event in body.get("u") or ()),
        tuple(tuple(event[1:]) for event in body.get("d") or ()),
        tuple(
            (trigger, threshold is not None and count > threshold)
            for trigger, count, _ in body.get("f") or ()
        ),
    )
    return shape, last_active is not None and last_active < hints.polling_interval * 500


def _log_end_offsets(readings: Sequence[Reading]) -> dict[str, dict[str, int]]:
    """Per trigger, the per-unit values at the moment of a park request (diagnostics for the waker)."""
    return {
        reading.trigger: {unit: int(value) for unit, value in reading.detail.items()}
        for reading in readings
        if isinstance(reading, Measurement)
    }


# ---------------------------------------------------------------------- entry point


def _configure_logging(level: str, fmt: str | None = None, static: Mapping[str, str] | None = None) -> None:
    """JSON lines (or text) via tidescale._logging; a bad level or format never stops the workload's pod."""
    try:
        _logging.configure(level=level, fmt=fmt, static=static)
    except ValueError as error:
        _logging.configure(level="info", fmt=fmt if fmt in _logging.LOG_FORMATS else "json", static=static)
        _log.warning("%s; logging at info", error)


async def _serve(env: AgentEnv, config: KubeConfig) -> None:
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, main_task.cancel)
    # A few requests at once are plenty for one agent (watches have connections of their own).
    async with KubeClient(config, max_requests=4) as client:
        try:
            await Agent(env, client).run()
        except asyncio.CancelledError:
            _log.info("stopping: lease released, connections closed")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tidescale agent", description="The tidescale sidecar agent.")
    parser.add_argument("--kubeconfig", help="a kubeconfig for running outside a pod (default: in-cluster)")
    _logging.add_arguments(parser)
    args = parser.parse_args(argv)
    _configure_logging(args.log_level, args.log_format)
    try:
        env = AgentEnv.from_environ(os.environ)
        shifted = _wallclock.configure(os.environ)
        static = {"namespace": env.namespace, "deployment": env.deployment, "pod": env.pod_name}
        _configure_logging(args.log_level, args.log_format, static)
        if shifted:
            _log.warning(
                "wall clock shifted by %+gs (%s: for fault tests only)", shifted, _wallclock.OFFSET_ENV
            )
        if args.kubeconfig:
            from pathlib import Path

            config = KubeConfig.from_kubeconfig(Path(args.kubeconfig))
        else:
            config = KubeConfig.from_environment()
    except TidescaleError as error:
        print(f"tidescale agent: {error}", file=sys.stderr)
        return 2
    # asyncio's own loop, not uvloop: in every pod uvloop costs ~2 MiB of RSS and libuv's 4 resolver
    # threads (with their malloc arenas); the agent's loop is idle almost always (bench/results/agent.md).
    asyncio.run(_serve(env, config))
    return 0
