"""Scenarios for the HPA differential test: the named rows of issue 12 and a seeded generator.

A scenario is one HPA (autoscaling/v2, External metrics, AverageValue targets) on one
scale target, and a script: per metric, the value served at each tick of the scripted
metrics server's grid (``tests/rig/metrics_server.py``), or None for a failed query. The
same scenario maps to tidescale hints (:func:`hints_annotations`), so a replay can ask
``policy.decide`` what the HPA should have written.

Times are ticks of :data:`~tests.rig.metrics_server.GRID` seconds; windows and periods are
whole seconds chosen at least 0.4 s away from every multiple of the grid
(:func:`check_timing`), so a few milliseconds between the controller's clock and the
server's can never decide a comparison. The issue's 60 s windows become 10 s ones here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

from tests.rig.metrics_server import GRID, grid_margin, metric_name

MIN_MARGIN = 0.4
"""The least distance (seconds) between a window or period and a multiple of the grid."""
SAFE_SECONDS = tuple(w for w in range(1, 61) if grid_margin(w) > MIN_MARGIN - 1e-9)
"""Windows and periods (whole seconds) the generator may use."""
HPA_DEFAULT_PERIODS = (15, 300)
"""The HPA's defaulted scale policy period and scale-down window (kube-controller-manager's
--horizontal-pod-autoscaler-downscale-stabilization, left at 5m)."""

Select = Literal["Max", "Min", "Disabled"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Policy:
    kind: Literal["Pods", "Percent"]
    value: int
    period: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Rules:
    """One direction of the HPA's ``spec.behavior``; None fields are left to the API server's defaults."""

    window: int | None = None
    policies: tuple[Policy, ...] | None = None
    select: Select | None = None
    tolerance: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Behavior:
    up: Rules | None = None
    down: Rules | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Metric:
    target: int
    """The AverageValue target (per replica)."""
    values: tuple[int | None, ...]
    """The value served at each tick; None: the query fails."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Scenario:
    name: str
    title: str
    min_replicas: int
    """tidescale's min-replicas; the HPA gets max(1, this), as KEDA makes it."""
    max_replicas: int
    spec: int
    """The scale target's spec.replicas when the HPA is created."""
    metrics: tuple[Metric, ...]
    behavior: Behavior | None = None
    """None: the HPA's nil-behaviour (legacy) path, and no behaviour hint."""
    status: int | None = None
    """A fixed status.replicas; None: status follows the spec one sync behind."""
    wake: bool = False
    """The target starts at 0 and the test wakes it to 1 (as KEDA or tidescale's waker
    would) once the HPA has seen it at 0 for longer than every window."""

    @property
    def ticks(self) -> int:
        """Ticks compared: one HPA sync per tick from the first query on."""
        return max(len(m.values) for m in self.metrics)

    @property
    def hpa_min(self) -> int:
        return max(1, self.min_replicas)

    @property
    def initial_status(self) -> int:
        return self.spec if self.status is None else self.status

    def windows(self) -> tuple[int, ...]:
        """The stabilization windows (seconds) the HPA compares its recommendations' ages against."""
        if self.behavior is None:
            return (HPA_DEFAULT_PERIODS[1],)
        up, down = self.behavior.up, self.behavior.down
        return (
            0 if up is None or up.window is None else up.window,
            HPA_DEFAULT_PERIODS[1] if down is None or down.window is None else down.window,
        )

    def periods(self) -> tuple[int, ...]:
        """The rate policies' periods (seconds) the HPA compares its scale events' ages against."""
        if self.behavior is None:
            return ()
        found: list[int] = []
        for rules in (self.behavior.up, self.behavior.down):
            if rules is None or rules.policies is None:
                found.append(HPA_DEFAULT_PERIODS[0])
            else:
                found.extend(p.period for p in rules.policies)
        return tuple(found)

    def seconds(self) -> tuple[int, ...]:
        """Every window and period the HPA compares times against, defaults included."""
        return self.windows() + self.periods()


def check_timing(scenario: Scenario) -> None:
    """Raises ValueError when a window or period of ``scenario`` lies too near a multiple of the grid."""
    close = [w for w in scenario.seconds() if w > 0 and grid_margin(w) < MIN_MARGIN - 1e-9]
    if close:
        raise ValueError(
            f"scenario {scenario.name}: windows/periods {close} s lie within {MIN_MARGIN} s of a multiple of "
            f"the {GRID} s grid; use one of {SAFE_SECONDS[:12]}..."
        )


# ---------------------------------------------------------------- the issue's rows 1-10

T = 100  # the issue's target per replica


def _series(*parts: tuple[int | None, int]) -> tuple[int | None, ...]:
    """``(value, ticks), ...`` -> one value per tick."""
    return tuple(value for value, count in parts for _ in range(count))


NAMED: tuple[Scenario, ...] = (
    Scenario(
        name="s01-failed-sync-records-nothing",
        title="1: down window, every trigger fails inside it: a failed sync records nothing",
        min_replicas=1,
        max_replicas=20,
        spec=6,
        behavior=Behavior(down=Rules(window=10)),
        metrics=tuple(
            Metric(target=T, values=_series((600, 3), (200, 2), (None, 2), (200, 10))) for _ in range(2)
        ),
    ),
    Scenario(
        name="s02-failure-in-up-window",
        title="2: up window, a failure inside it records nothing; then the rate limit",
        min_replicas=1,
        max_replicas=20,
        spec=2,
        behavior=Behavior(up=Rules(window=10)),
        metrics=(Metric(target=T, values=_series((200, 4), (None, 2), (1000, 12))),),
    ),
    Scenario(
        name="s03-woken-from-zero",
        title="3: min 0, up window; woken 0 -> 1: nothing recorded at 0, the rate limit from 1",
        min_replicas=0,
        max_replicas=30,
        spec=0,
        wake=True,
        behavior=Behavior(up=Rules(window=10)),
        metrics=(Metric(target=T, values=_series((4000, 22))),),
    ),
    Scenario(
        name="s04a-legacy-path-from-1",
        title="4: no behaviour: the legacy limit max(2*current, 4): 1 -> 4 -> 8 -> 16",
        min_replicas=1,
        max_replicas=30,
        spec=1,
        metrics=(Metric(target=T, values=_series((4000, 8))),),
    ),
    Scenario(
        name="s04b-legacy-path-from-3",
        title="4: no behaviour: from 3 -> 6",
        min_replicas=1,
        max_replicas=30,
        spec=3,
        metrics=(Metric(target=T, values=_series((4000, 6))),),
    ),
    Scenario(
        name="s05-below-min",
        title="5: current below min -> min without reading metrics or recording",
        min_replicas=3,
        max_replicas=20,
        spec=1,
        metrics=(Metric(target=T, values=_series((800, 8))),),
    ),
    Scenario(
        name="s06-above-max",
        title="6: current above max -> max",
        min_replicas=1,
        max_replicas=10,
        spec=15,
        metrics=(Metric(target=T, values=_series((200, 8))),),
    ),
    Scenario(
        name="s07-outdated-event-slot-reused",
        title="7: down 10%/20s, window 0; +4, +4 after the up period: the outdated event's slot is reused",
        min_replicas=1,
        max_replicas=30,
        spec=10,
        behavior=Behavior(
            up=Rules(policies=(Policy(kind="Pods", value=4, period=4),), select="Max"),
            down=Rules(window=0, policies=(Policy(kind="Percent", value=10, period=20),)),
        ),
        metrics=(Metric(target=T, values=_series((1400, 4), (1800, 1), (100, 12))),),
    ),
    Scenario(
        name="s08-percent-rounding",
        title="8: up 10%/7s from 50: ceil(55.00000000000001) -> 56",
        min_replicas=1,
        max_replicas=100,
        spec=50,
        behavior=Behavior(up=Rules(policies=(Policy(kind="Percent", value=10, period=7),))),
        metrics=(Metric(target=T, values=_series((10000, 8))),),
    ),
    Scenario(
        name="s09-status-replicas-base",
        title="9: spec 10, 8 pods exist, window 0: AverageValue uses status replicas: 850/800 within -> 8",
        min_replicas=1,
        max_replicas=20,
        spec=10,
        status=8,
        behavior=Behavior(down=Rules(window=0)),
        metrics=(Metric(target=T, values=_series((850, 5))),),
    ),
    Scenario(
        name="s10a-tolerance-up",
        title="10: tolerance up 0.05 / down 0.2: 1080 -> 11",
        min_replicas=1,
        max_replicas=20,
        spec=10,
        behavior=Behavior(up=Rules(tolerance="0.05"), down=Rules(window=0, tolerance="0.2")),
        metrics=(Metric(target=T, values=_series((1080, 5))),),
    ),
    Scenario(
        name="s10b-tolerance-down",
        title="10: tolerance up 0.05 / down 0.2: 850 -> 10",
        min_replicas=1,
        max_replicas=20,
        spec=10,
        behavior=Behavior(up=Rules(tolerance="0.05"), down=Rules(window=0, tolerance="0.2")),
        metrics=(Metric(target=T, values=_series((850, 5))),),
    ),
)


# ---------------------------------------------------------------- the generator


def generate(seed: int, count: int) -> tuple[Scenario, ...]:
    """``count`` scenarios from ``seed``: the same seed always gives the same scenarios."""
    rng = random.Random(seed)
    return tuple(_generated(rng, f"g{seed}-{index:03d}") for index in range(count))


def _generated(rng: random.Random, name: str) -> Scenario:
    min_replicas = rng.choice((1, 1, 1, 2, 3))
    max_replicas = rng.randint(min_replicas + 3, 40)
    spec = rng.randint(min_replicas, min(max_replicas, 12))
    status = None if rng.random() < 0.75 else rng.randint(max(1, spec - 3), spec + 3)
    behavior = None if rng.random() < 0.3 else _behavior(rng)
    ticks = rng.randint(10, 20)
    rules = () if behavior is None else (behavior.up, behavior.down)
    tolerances = [0.1] + [float(r.tolerance) for r in rules if r is not None and r.tolerance]
    metrics = tuple(
        _metric(rng, ticks=ticks, spec=spec, max_replicas=max_replicas, tolerances=tolerances)
        for _ in range(1 if rng.random() < 0.8 else 2)
    )
    scenario = Scenario(
        name=name,
        title=f"generated ({'legacy path' if behavior is None else 'behaviour'}, {len(metrics)} metric(s))",
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        spec=spec,
        status=status,
        behavior=behavior,
        metrics=metrics,
    )
    check_timing(scenario)
    return scenario


def _behavior(rng: random.Random) -> Behavior:
    up = _rules(rng) if rng.random() < 0.7 else None
    down = _rules(rng) if rng.random() < 0.7 or up is None else None
    return Behavior(up=up, down=down)


def _rules(rng: random.Random) -> Rules:
    short = [s for s in SAFE_SECONDS if s <= 12]
    window = rng.choice((None, 0, 0, *short))
    policies = None
    if rng.random() < 0.6:
        policies = tuple(
            Policy(kind="Pods", value=rng.randint(1, 6), period=rng.choice(short))
            if rng.random() < 0.5
            else Policy(kind="Percent", value=rng.choice((10, 25, 50, 100, 200)), period=rng.choice(short))
            for _ in range(rng.randint(1, 2))
        )
    select: Select | None = rng.choice((None, None, "Max", "Min", "Max", "Min", "Disabled"))
    tolerance = rng.choice((None, None, None, "0", "0.05", "0.15", "0.2"))
    return Rules(window=window, policies=policies, select=select, tolerance=tolerance)


def _metric(
    rng: random.Random, *, ticks: int, spec: int, max_replicas: int, tolerances: list[float]
) -> Metric:
    target = rng.choice((10, 50, 100, 100, 250, 1000))
    level = int(target * spec * rng.uniform(0.3, 2.5))
    values: list[int | None] = []
    for _ in range(ticks):
        roll = rng.random()
        if roll < 0.1:
            values.append(None)
            continue
        if roll < 0.35:
            level = rng.randint(0, int(target * max_replicas * 1.3))
        elif roll < 0.55:
            # On, or just either side of, a tolerance boundary for some replica count (where
            # float arithmetic decides), or between the default tolerance and another.
            replicas = rng.randint(1, max_replicas)
            offset = max(0.0, rng.choice(tolerances) + rng.choice((0.0, 0.0, -0.01, 0.01, 0.05)))
            level = round(target * replicas * (1 + rng.choice((-1, 1)) * offset))
        else:
            level = max(0, int(level * rng.uniform(0.9, 1.1)))
        values.append(level)
    return Metric(target=target, values=tuple(values))


# ---------------------------------------------------------------- manifests and hints


def hpa_manifest(scenario: Scenario, *, namespace: str, api_version: str, kind: str) -> dict[str, Any]:
    """The HorizontalPodAutoscaler of ``scenario``, on the scale target of the same name."""
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": api_version, "kind": kind, "name": scenario.name},
        "minReplicas": scenario.hpa_min,
        "maxReplicas": scenario.max_replicas,
        "metrics": [
            {
                "type": "External",
                "external": {
                    "metric": {
                        "name": metric_name(scenario.name, index),
                        "selector": {"matchLabels": {"scenario": scenario.name}},
                    },
                    "target": {"type": "AverageValue", "averageValue": str(metric.target)},
                },
            }
            for index, metric in enumerate(scenario.metrics)
        ],
    }
    if scenario.behavior is not None:
        behavior = {}
        for key, rules in (("scaleUp", scenario.behavior.up), ("scaleDown", scenario.behavior.down)):
            if rules is not None:
                behavior[key] = _rules_manifest(rules)
        spec["behavior"] = behavior
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": scenario.name, "namespace": namespace},
        "spec": spec,
    }


def _rules_manifest(rules: Rules) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if rules.window is not None:
        found["stabilizationWindowSeconds"] = rules.window
    if rules.policies is not None:
        found["policies"] = [
            {"type": p.kind, "value": p.value, "periodSeconds": p.period} for p in rules.policies
        ]
    if rules.select is not None:
        found["selectPolicy"] = rules.select
    if rules.tolerance is not None:
        found["tolerance"] = rules.tolerance
    return found


def trigger_name(index: int) -> str:
    return f"m{index}"


def hints_annotations(scenario: Scenario) -> dict[str, str]:
    """The tidescale annotations that say what the HPA of ``scenario`` says."""
    prefix = "tidescale.io/"
    found = {
        f"{prefix}min-replicas": str(scenario.min_replicas),
        f"{prefix}max-replicas": str(scenario.max_replicas),
    }
    for index, metric in enumerate(scenario.metrics):
        trigger = f"{prefix}{trigger_name(index)}"
        found |= {
            f"{trigger}.type": "kafka",
            f"{trigger}.bootstrap-servers": "kafka:9092",
            f"{trigger}.consumer-group": "workers",
            f"{trigger}.topic": f"topic-{index}",
            f"{trigger}.lag-threshold": str(metric.target),
        }
    if scenario.behavior is not None:
        for direction, rules in (("up", scenario.behavior.up), ("down", scenario.behavior.down)):
            if rules is None:
                continue
            knob = f"{prefix}scale-{direction}-"
            if rules.window is not None:
                found[f"{knob}stabilization"] = f"{rules.window}s"
            if rules.policies is not None:
                found[f"{knob}policies"] = ", ".join(
                    f"{p.value} pods/{p.period}s" if p.kind == "Pods" else f"{p.value}%/{p.period}s"
                    for p in rules.policies
                )
            if rules.select is not None:
                found[f"{knob}select"] = rules.select.lower()
            if rules.tolerance is not None:
                found[f"{knob}tolerance"] = rules.tolerance
        if not any(key.startswith(f"{prefix}scale-") for key in found):
            # A behaviour with every field defaulted is still the HPA's behaviour path.
            found[f"{prefix}scale-up-select"] = "max"
    return found
