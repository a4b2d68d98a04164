"""A few Prometheus metrics in text exposition format, without the client library.

The agent exposes a dozen series; prometheus_client would cost more memory in every
pod than the numbers it carries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["Metrics"]

Labels = tuple[tuple[str, str], ...]


@dataclass(kw_only=True, slots=True)
class _Family:
    name: str
    kind: str  # "gauge" | "counter"
    help: str
    samples: dict[Labels, float] = field(default_factory=dict)


def _labels(labels: Mapping[str, str] | None) -> Labels:
    return tuple(sorted((labels or {}).items()))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Metrics:
    """Gauges and counters named ``tidescale_*``; ``render()`` gives the /metrics body."""

    def __init__(self, families: Iterable[tuple[str, str, str]]) -> None:
        """``families``: (name, "gauge" | "counter", help)."""
        self._families = {name: _Family(name=name, kind=kind, help=help_) for name, kind, help_ in families}

    def set(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        self._families[name].samples[_labels(labels)] = value

    def inc(self, name: str, labels: Mapping[str, str] | None = None, amount: float = 1.0) -> None:
        samples = self._families[name].samples
        key = _labels(labels)
        samples[key] = samples.get(key, 0.0) + amount

    def clear(self, name: str) -> None:
        """Drop every sample of a gauge (e.g. when a trigger is removed)."""
        self._families[name].samples.clear()

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        return self._families[name].samples.get(_labels(labels))

    def render(self) -> bytes:
        lines: list[str] = []
        for family in self._families.values():
            lines.append(f"# HELP {family.name} {family.help}")
            lines.append(f"# TYPE {family.name} {family.kind}")
            for labels, value in sorted(family.samples.items()):
                text = ",".join(f'{key}="{_escape(val)}"' for key, val in labels)
                lines.append(
                    f"{family.name}{{{text}}} {_number(value)}" if text else f"{family.name} {_number(value)}"
                )
        return ("\n".join(lines) + "\n").encode()
