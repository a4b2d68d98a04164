"""The leader's memory of its triggers' progress: the rate window and the stall clock.

Each group-wide reading of a Kafka or RabbitMQ trigger carries a
:class:`~tidescale._rates.ProgressSnapshot` built by the source from what it already read (no
extra broker request). :class:`ProgressWindow` keeps, per trigger:

- for a trigger with a drain-time target, the snapshots of the rate window, thinned to at most
  :data:`MAX_SNAPSHOTS` (the leader's memory must not grow with the polling rate), from which
  :func:`~tidescale._rates.measure_rates` and :func:`~tidescale._drain.recommend_drain` give the
  trigger's recommendation;
- per trigger with a drain-time target, the last per-pod rate measured in this term, used for
  up to :data:`REMEMBER_RATE_SECONDS` while the window has none: a burst after a quiet minute
  finds no busy interval in the window (the rate is measured only while there is a backlog), and
  without the memory every such burst would be sized by the fallback threshold;
- for every trigger with counters, the stall detector's state
  (:func:`~tidescale._stall.observe_stall`) while ``stall-after`` is not 0.

The consumers of a snapshot are the Deployment's Ready pods: the drain formula counts pods, and a
Kafka group's member count is not read at the group-wide scope. The pods are Ready when
``readyReplicas`` reaches ``spec.replicas``. No I/O: the agent calls :meth:`ProgressWindow.update`
once per tick with the readings it measured.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from tidescale._drain import DrainInputs, DrainRecommendation, recommend_drain
from tidescale._rates import ProgressSnapshot, Rates, RateSettings, measure_rates
from tidescale._stall import MAX_NAMED_UNITS, StallState, observe_stall
from tidescale.sources.base import Measurement, MeasurementFailure

__all__ = ["MAX_SNAPSHOTS", "DrainEstimate", "Progress", "ProgressWindow", "merged_stall"]

MAX_SNAPSHOTS = 64
"""About the most snapshots kept per trigger, whatever the polling interval."""

REMEMBER_RATE_SECONDS = 900.0
"""How long a measured per-pod rate stands in while the window has none (15 min: long enough to
span the quiet gaps between bursts, short enough that a new message mix or release is measured
again before it is trusted for long)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DrainEstimate:
    """What a drain-time trigger's recommendation was computed from, for the status and metrics."""

    target_seconds: float
    backlog: float
    rates: Rates
    recommendation: DrainRecommendation
    per_pod_rate: float | None = None
    """The rate the recommendation used: this window's, or the remembered one."""
    rate_age: float | None = None
    """Seconds since ``per_pod_rate`` was measured: 0 for this window's, None when unknown."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Progress:
    """One tick's view: per trigger, its drain estimate and its stall state (where kept)."""

    drain: Mapping[str, DrainEstimate]
    stall: Mapping[str, StallState]
    """Triggers with counters, while stall detection is on."""

    def recommendations(self) -> dict[str, DrainRecommendation]:
        return {name: estimate.recommendation for name, estimate in self.drain.items()}

    def stalled(self) -> dict[str, StallState]:
        return {name: state for name, state in self.stall.items() if state.stalled}


class ProgressWindow:
    """Per trigger: the snapshots of the rate window and the stall state. One per leadership term."""

    def __init__(self, settings: RateSettings | None = None) -> None:
        self.settings = settings or RateSettings()
        self._snapshots: dict[str, list[ProgressSnapshot]] = {}
        self._stall: dict[str, StallState] = {}
        self._last_rate: dict[str, tuple[float, float]] = {}
        """Per trigger: the last per-pod rate measured, and when (the caller's clock)."""

    @property
    def kept(self) -> int:
        """Snapshots held, over all triggers."""
        return sum(len(snapshots) for snapshots in self._snapshots.values())

    def update(
        self,
        readings: Iterable[Measurement | MeasurementFailure],
        *,
        drain_times: Mapping[str, float],
        stall_after: float,
        now: float,
        current: int,
        ready: int,
        max_replicas: int,
    ) -> Progress:
        """Folds in one tick's readings. ``drain_times``: the triggers with a drain-time target;
        ``current``: spec.replicas; ``ready``: readyReplicas; ``now``: the caller's monotonic clock
        (the snapshots are restamped with it, so the decision and the rates share one clock)."""
        readings = list(readings)
        names = {reading.trigger for reading in readings}
        for gone in [name for name in self._snapshots if name not in drain_times or name not in names]:
            del self._snapshots[gone]
            self._last_rate.pop(gone, None)
        for gone in [name for name in self._stall if name not in names or stall_after <= 0]:
            del self._stall[gone]
        pods_ready = current > 0 and ready >= current
        drain: dict[str, DrainEstimate] = {}
        for reading in readings:
            if not isinstance(reading, Measurement) or reading.progress is None:
                continue  # a failed reading says nothing: the window and the clock stay as they are
            snapshot = replace(reading.progress, taken_at=now, consumers=max(ready, 0))
            if stall_after > 0:
                if snapshot.consumed:
                    self._stall[reading.trigger] = observe_stall(
                        self._stall.get(reading.trigger, StallState()),
                        snapshot,
                        pods_ready=pods_ready,
                        stall_after=stall_after,
                    )
                else:
                    # No counter to watch move (AMQP-only RabbitMQ, a group that never committed):
                    # a stall cannot be told from a consumer that reports nothing.
                    self._stall.pop(reading.trigger, None)
            target = drain_times.get(reading.trigger)
            if target is None:
                continue
            rates = measure_rates(self._keep(reading.trigger, snapshot), now=now, settings=self.settings)
            per_pod_rate, rate_age = self._per_pod_rate(reading.trigger, rates, now=now)
            cap = max_replicas if reading.replica_cap is None else min(reading.replica_cap, max_replicas)
            recommendation = recommend_drain(
                DrainInputs(
                    backlog=snapshot.backlog,
                    arrival_rate=rates.arrival,
                    per_pod_rate=per_pod_rate,
                    target_seconds=target,
                    cap=cap,
                    current=current,
                    threshold=reading.target,
                )
            )
            drain[reading.trigger] = DrainEstimate(
                target_seconds=target,
                backlog=snapshot.backlog,
                rates=rates,
                recommendation=recommendation,
                per_pod_rate=per_pod_rate,
                rate_age=rate_age,
            )
        return Progress(drain=drain, stall=dict(self._stall))

    def _per_pod_rate(self, trigger: str, rates: Rates, *, now: float) -> tuple[float | None, float | None]:
        """This window's per-pod rate (remembered), else the remembered one while young enough."""
        if rates.per_consumer is not None:
            self._last_rate[trigger] = (rates.per_consumer, now)
            return rates.per_consumer, 0.0
        remembered = self._last_rate.get(trigger)
        if remembered is None or now - remembered[1] > REMEMBER_RATE_SECONDS:
            self._last_rate.pop(trigger, None)
            return None, None
        return remembered[0], now - remembered[1]

    def _keep(self, trigger: str, snapshot: ProgressSnapshot) -> list[ProgressSnapshot]:
        """The trigger's snapshots with this one: only those that can still count (the window, and
        the warm-up before it, so that a pruned start does not restart the warm-up), at most about
        MAX_SNAPSHOTS of them (the newest always kept)."""
        span = self.settings.window + self.settings.warm_up
        # A new snapshot replaces the last when it is within ``gap`` of the one before: every two
        # kept snapshots span at least ``gap``, so at most about MAX_SNAPSHOTS fit in ``span``.
        gap = 2 * span / MAX_SNAPSHOTS
        kept = [s for s in self._snapshots.get(trigger, []) if s.taken_at >= snapshot.taken_at - span - gap]
        if kept and kept[-1].taken_at > snapshot.taken_at:
            kept = []  # the clock went backwards: start again rather than mix two time lines
        if len(kept) >= 2 and snapshot.taken_at - kept[-2].taken_at < gap:
            kept[-1] = snapshot  # too close to the one before the last: replace the last
        else:
            kept.append(snapshot)
        self._snapshots[trigger] = kept
        return kept


def merged_stall(stalled: Mapping[str, StallState]) -> StallState | None:
    """One state for the policy from the stalled triggers: the earliest clock, their units."""
    if not stalled:
        return None
    states = [stalled[name] for name in sorted(stalled)]
    starts = [state.since for state in states if state.since is not None]
    units = sorted({unit for state in states for unit in state.units})
    return StallState(
        stalled=True, since=min(starts) if starts else None, units=tuple(units[:MAX_NAMED_UNITS])
    )
