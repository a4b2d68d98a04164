"""A few Prometheus metrics in text exposition format, without the client library.

The agent exposes a dozen series; prometheus_client would cost more memory in every
pod than the numbers it carries. Every series the agent exposes is declared in
:data:`AGENT_FAMILIES` (docs/metrics.md lists them, and a unit test keeps the two equal).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["AGENT_FAMILIES", "DURATION_BUCKETS", "LEADER_ONLY", "Metrics", "build_info"]

Labels = tuple[tuple[str, str], ...]

DURATION_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds: from a local broker answer to a measurement's whole budget."""

AGENT_FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("tidescale_build_info", "gauge", "Always 1: the agent's version and Python"),
    ("tidescale_leader", "gauge", "1 while this agent leads its Deployment"),
    ("tidescale_hints_valid", "gauge", "1 while the Deployment's hints parse"),
    (
        "tidescale_protocol_hold",
        "gauge",
        "1 while the leader holds: the park record or status is of a newer protocol version",
    ),
    ("tidescale_paused", "gauge", "1 while the hints pause scaling (paused, paused-replicas)"),
    ("tidescale_trigger_value", "gauge", "Last measured value of a trigger (lag, queue length)"),
    ("tidescale_trigger_target", "gauge", "Per-replica target of a trigger"),
    ("tidescale_trigger_active", "gauge", "1 while a trigger is above its activation threshold"),
    ("tidescale_trigger_failing", "gauge", "1 while a trigger's last measurement failed"),
    ("tidescale_trigger_fallback", "gauge", "1 while a trigger's fallback replicas apply"),
    ("tidescale_local_value", "gauge", "This pod's own share of a trigger's value"),
    (
        "tidescale_consumer_stalled",
        "gauge",
        "1 while a trigger's consumers make no progress with lag and Ready pods",
    ),
    (
        "tidescale_drain_per_pod_rate",
        "gauge",
        "Messages one pod processes per second while busy (drain-time triggers)",
    ),
    ("tidescale_drain_arrival_rate", "gauge", "Messages arriving per second (drain-time triggers)"),
    ("tidescale_drain_replicas", "gauge", "Replicas the drain-time target asks for"),
    (
        "tidescale_drain_clear_seconds",
        "gauge",
        "Seconds the drain-time replicas need to clear the backlog at the measured rates",
    ),
    ("tidescale_desired_replicas", "gauge", "Replicas the leader's last decision asked for"),
    ("tidescale_current_replicas", "gauge", "spec.replicas when the leader last decided"),
    ("tidescale_decisions_total", "counter", "Leader decisions, by what they did"),
    ("tidescale_decision_duration_seconds", "histogram", "Time of one leader tick: measure, decide, write"),
    ("tidescale_scale_writes_total", "counter", "Scale writes, by result"),
    ("tidescale_measurements_total", "counter", "Measurements made, by trigger, type and scope"),
    ("tidescale_measurement_failures_total", "counter", "Failed measurements, by trigger, type and scope"),
    ("tidescale_measurement_duration_seconds", "histogram", "Time of one measurement, by trigger and scope"),
    ("tidescale_measurements_in_flight", "gauge", "Measurements running, by trigger and scope (at most 1)"),
    ("tidescale_peer_requests_total", "counter", "Requests to peers' /v1/lag, by result"),
)
"""(name, kind, help) of every series of the agent."""

LEADER_ONLY: tuple[str, ...] = (
    "tidescale_trigger_value",
    "tidescale_trigger_target",
    "tidescale_trigger_active",
    "tidescale_trigger_failing",
    "tidescale_trigger_fallback",
    "tidescale_consumer_stalled",
    "tidescale_drain_per_pod_rate",
    "tidescale_drain_arrival_rate",
    "tidescale_drain_replicas",
    "tidescale_drain_clear_seconds",
    "tidescale_desired_replicas",
    "tidescale_current_replicas",
)
"""Gauges only the leader sets: dropped when leadership ends, so a failover leaves no stale copy."""


def build_info() -> dict[str, str]:
    """The ``tidescale_build_info`` labels: the installed package's version and the Python's."""
    import platform

    return {"version": installed_version("tidescale"), "python": platform.python_version()}


def installed_version(distribution: str, *, path: Iterable[str] | None = None) -> str:
    """The ``Version`` of an installed distribution, read from its ``.dist-info/METADATA`` on
    ``sys.path`` ("unknown" when none is found). ``importlib.metadata.version`` finds the same file,
    but importing it (email, zipfile, csv, ...) costs ~4.4 MiB of RSS in every agent."""
    import os
    import sys

    prefix = f"{distribution}-"
    for entry in sys.path if path is None else path:
        try:
            with os.scandir(entry or ".") as found:
                folders = sorted(
                    e.name for e in found if e.name.startswith(prefix) and e.name.endswith(".dist-info")
                )
        except OSError:
            continue
        for folder in folders:
            try:
                with open(os.path.join(entry or ".", folder, "METADATA"), encoding="utf-8") as metadata:
                    for line in metadata:
                        if not line.strip():
                            break  # the headers end at the first blank line
                        if line.startswith("Version:"):
                            return line.partition(":")[2].strip()
            except OSError:
                continue
    return "unknown"


@dataclass(kw_only=True, slots=True)
class _Histogram:
    counts: list[int]
    total: float = 0.0


@dataclass(kw_only=True, slots=True)
class _Family:
    name: str
    kind: str  # "gauge" | "counter" | "histogram"
    help: str
    samples: dict[Labels, float] = field(default_factory=dict)
    histograms: dict[Labels, _Histogram] = field(default_factory=dict)


def _labels(labels: Mapping[str, str] | None) -> Labels:
    return tuple(sorted((labels or {}).items()))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _text(labels: Iterable[tuple[str, str]]) -> str:
    return ",".join(f'{key}="{_escape(val)}"' for key, val in labels)


class Metrics:
    """Gauges, counters and histograms named ``tidescale_*``; ``render()`` gives the /metrics body.

    ``const_labels`` (``namespace``, ``deployment``) go on every sample.
    """

    def __init__(
        self,
        families: Iterable[tuple[str, str, str]],
        *,
        const_labels: Mapping[str, str] | None = None,
        buckets: tuple[float, ...] = DURATION_BUCKETS,
    ) -> None:
        """``families``: (name, "gauge" | "counter" | "histogram", help)."""
        self._families = {name: _Family(name=name, kind=kind, help=help_) for name, kind, help_ in families}
        self._const = _labels(const_labels)
        self._buckets = buckets

    def names(self) -> tuple[str, ...]:
        return tuple(self._families)

    def set(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        self._families[name].samples[_labels(labels)] = value

    def inc(self, name: str, labels: Mapping[str, str] | None = None, amount: float = 1.0) -> None:
        samples = self._families[name].samples
        key = _labels(labels)
        samples[key] = samples.get(key, 0.0) + amount

    def observe(self, name: str, seconds: float, labels: Mapping[str, str] | None = None) -> None:
        """One observation of a histogram."""
        family = self._families[name]
        histogram = family.histograms.setdefault(
            _labels(labels), _Histogram(counts=[0] * (len(self._buckets) + 1))
        )
        for index, bound in enumerate(self._buckets):
            if seconds <= bound:
                histogram.counts[index] += 1
        histogram.counts[-1] += 1
        histogram.total += seconds

    def clear(self, name: str) -> None:
        """Drop every sample of a series (a trigger removed, leadership lost)."""
        self._families[name].samples.clear()
        self._families[name].histograms.clear()

    def discard(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        """Drop one sample (a value that is not known at the moment)."""
        self._families[name].samples.pop(_labels(labels), None)

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        return self._families[name].samples.get(_labels(labels))

    def render(self) -> bytes:
        lines: list[str] = []
        for family in self._families.values():
            lines.append(f"# HELP {family.name} {family.help}")
            lines.append(f"# TYPE {family.name} {family.kind}")
            for labels, value in sorted(family.samples.items()):
                text = _text(sorted((*self._const, *labels)))
                lines.append(
                    f"{family.name}{{{text}}} {_number(value)}" if text else f"{family.name} {_number(value)}"
                )
            for labels, histogram in sorted(family.histograms.items()):
                base = sorted((*self._const, *labels))
                for bound, count in zip((*map(repr, self._buckets), "+Inf"), histogram.counts, strict=True):
                    lines.append(f"{family.name}_bucket{{{_text([*base, ('le', bound)])}}} {count}")
                text = _text(base)
                suffix = f"{{{text}}}" if text else ""
                lines.append(f"{family.name}_sum{suffix} {_number(histogram.total)}")
                lines.append(f"{family.name}_count{suffix} {histogram.counts[-1]}")
        return ("\n".join(lines) + "\n").encode()
