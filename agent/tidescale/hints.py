"""The annotation contract: a Deployment's ``tidescale.io/`` annotations -> typed :class:`Hints`.

Pure. Two entry points over one implementation:

- :func:`parse_hints` for the agent and the waker: the typed hints, or
  :class:`~tidescale.errors.HintsInvalid` carrying every problem at once;
- :func:`validate_hints` for the validating webhook and ``tidescale lint``: the
  problems only, and it never raises.

The scaling knobs live in one table, :data:`KNOBS`; trigger fields belong to the
sources and are reached through :mod:`tidescale.sources.registry` by type. The
reference document (``docs/hints-reference.md``) is rendered from the same
tables by :func:`reference_markdown`, so it cannot drift from the parser.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from tidescale import _values
from tidescale._formula import ScalingModifiers, compile_formula
from tidescale._values import format_duration
from tidescale.errors import HintError, HintsInvalid
from tidescale.sources.base import TriggerSettings

__all__ = [
    "AGENT_OWNED",
    "BEHAVIOR_KNOBS",
    "KNOBS",
    "PREFIX",
    "Fallback",
    "Hints",
    "Knob",
    "LeaseTimings",
    "RatePolicy",
    "ScalingRules",
    "format_duration",
    "parse_hints",
    "parse_rate_policies",
    "reference_markdown",
    "validate_hints",
]

PREFIX = "tidescale.io/"
AGENT_OWNED = ("status", "park-record", "park-epoch", "policy-state")
"""Keys under the prefix the agent writes itself (not hints; never validated)."""

_TRIGGER_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_MAX_STABILIZATION = 3600.0  # the HPA's own limit on stabilizationWindowSeconds
_MAX_POLICY_PERIOD = 1800.0  # the HPA's own limit on periodSeconds
MAX_HINT_BYTES = 4096
"""Longest value of one hint, in UTF-8 bytes (the longest real one, a broker list, is far shorter)."""
MAX_HINT_KEYS = 256
"""Most ``tidescale.io/`` hints on one Deployment (tidescale's own keys not counted)."""
MAX_TRIGGERS = 16
"""Most triggers on one Deployment: each costs every waker round and every agent poll."""
_MAX_SUGGESTED = 3
"""Problems past this many get no did-you-mean: each suggestion compares the key with every known
one (about 1 ms), and 255 unknown keys would otherwise cost seconds (bench/results/hints_fuzz.md)."""

Select = Literal["max", "min", "disabled"]
FallbackBehavior = Literal["static", "currentReplicas", "currentReplicasIfHigher", "currentReplicasIfLower"]
MetricType = Literal["AverageValue", "Value"]
ReplicaCapRule = Literal["metric-value", "replicas"]
BEHAVIOR_KNOBS = (
    "scale-up-stabilization",
    "scale-down-stabilization",
    "scale-up-policies",
    "scale-down-policies",
    "scale-up-select",
    "scale-down-select",
    "scale-up-tolerance",
    "scale-down-tolerance",
)
"""The knobs of the HPA's ``spec.behavior``: giving any of them takes the HPA's behaviour path."""


# ---------------------------------------------------------------- values


@dataclass(frozen=True, kw_only=True, slots=True)
class RatePolicy:
    """At most ``value`` pods (or percent of the replicas) of change per ``period`` seconds."""

    kind: Literal["pods", "percent"]
    value: int
    period: float

    def __str__(self) -> str:
        amount = f"{self.value}%" if self.kind == "percent" else f"{self.value} pod{'s' * (self.value != 1)}"
        return f"{amount}/{format_duration(self.period)}"


@dataclass(frozen=True, kw_only=True, slots=True)
class ScalingRules:
    """One direction's behaviour, as the HPA's ``behavior.scaleUp`` / ``scaleDown``."""

    stabilization: float
    policies: tuple[RatePolicy, ...]
    select: Select = "max"


@dataclass(frozen=True, kw_only=True, slots=True)
class Fallback:
    """KEDA's ``fallback``: once a trigger has failed more than ``failure_threshold`` times in a
    row, it reports ``replicas`` x its target (which then goes through tolerance like any value)."""

    failure_threshold: int
    replicas: int
    behavior: FallbackBehavior = "static"
    failure_interval: float = 0.0
    """Count at most one failure per this many seconds (0: every decision counts one)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class LeaseTimings:
    """client-go's leader election timings, in seconds."""

    duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


_DEFAULT_UP = ScalingRules(
    stabilization=0.0,
    policies=(
        RatePolicy(kind="pods", value=4, period=15.0),
        RatePolicy(kind="percent", value=100, period=15.0),
    ),
)
_DEFAULT_DOWN = ScalingRules(
    stabilization=300.0, policies=(RatePolicy(kind="percent", value=100, period=15.0),)
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Hints:
    """Everything a Deployment's annotations say about how to scale it.

    The defaults here equal what :func:`parse_hints` gives for a Deployment with no
    hints (a unit test keeps the two, and the reference, in step)."""

    min_replicas: int = 1
    max_replicas: int = 10
    wake_replicas: int = 1
    polling_interval: float = 1.0
    cooldown: float = 300.0
    stall_after: float = 300.0
    """Seconds without progress (with lag, pods Ready) before a group is stalled; 0: never."""
    park_ack_timeout: float = 30.0
    """How long the leader waits for the waker to acknowledge a park request."""
    tolerance: float = 0.1
    scale_up: ScalingRules = _DEFAULT_UP
    scale_down: ScalingRules = _DEFAULT_DOWN
    behavior: bool = False
    """Whether any behaviour knob (:data:`BEHAVIOR_KNOBS`) or paused-scale-in/out is given: the
    HPA's behaviour path. False: the HPA's nil-behaviour path (what KEDA creates by default)."""
    tolerance_up: float | None = None
    """The behaviour's scale-up tolerance; None: ``tolerance``."""
    tolerance_down: float | None = None
    """The behaviour's scale-down tolerance; None: ``tolerance``."""
    metric_type: MetricType = "AverageValue"
    replica_cap: ReplicaCapRule = "metric-value"
    paused_scale_in: bool = False
    paused_scale_out: bool = False
    fallback: Fallback | None = None
    scaling_modifiers: ScalingModifiers | None = None
    """KEDA's scalingModifiers: one composite metric (a formula over the triggers) replaces theirs."""
    paused: bool = False
    """Freeze at the current count; also true whenever ``paused_replicas`` is set."""
    paused_replicas: int | None = None
    dry_run: bool = False
    scale_down_marking: bool = True
    """Before a scale-down, mark the idlest pods with pod-deletion-cost so the ReplicaSet removes them."""
    lease: LeaseTimings = field(default_factory=LeaseTimings)
    triggers: tuple[TriggerSettings, ...] = ()
    """Each trigger's settings, ordered by name."""
    trigger_types: Mapping[str, str] = field(default_factory=dict)
    """Trigger name -> source type (``kafka``, ``rabbitmq``)."""
    trigger_metrics: Mapping[str, str] = field(default_factory=dict)
    """Trigger name -> what its value counts, for reasons: ``lag``, ``queue length``, ``message rate``."""

    def type_of(self, trigger: str) -> str:
        return self.trigger_types[trigger]

    def metric_of(self, trigger: str) -> str:
        return self.trigger_metrics.get(trigger, "value")


# ---------------------------------------------------------------- the knob table


@dataclass(frozen=True, kw_only=True, slots=True)
class Knob:
    """One scaling annotation: its parser and the words the reference prints for it."""

    name: str
    type: str
    default: str | None
    meaning: str
    example: str
    parse: Callable[[str, str], Any]

    @property
    def annotation(self) -> str:
        return PREFIX + self.name


def _int(minimum: int, maximum: int = 1_000_000) -> Callable[[str, str], int]:
    return lambda annotation, value: _values.parse_int(annotation, value, minimum=minimum, maximum=maximum)


def _duration(minimum: float = 0.0, maximum: float = 86400.0) -> Callable[[str, str], float]:
    def parse(annotation: str, value: str) -> float:
        try:
            return _values.parse_duration(annotation, value, minimum=minimum, maximum=maximum)
        except HintError as exc:
            # KEDA's habit (cooldownPeriod: 300): a bare number of seconds. Say what to write instead.
            if re.fullmatch(r"\d+(\.\d+)?", value.strip()):
                raise HintError(
                    annotation, value, f"{exc.expected} (did you mean '{value.strip()}s'?)"
                ) from exc
            raise

    return parse


_MIN_STALL_AFTER = 10.0
"""Shortest stall-after other than off: a rebalance alone pauses a group for seconds."""


def _stall_after(annotation: str, value: str) -> float:
    """``"0"`` (or ``"0s"``) turns the detector off; otherwise a duration of at least 10s."""
    if value.strip() in ("0", "0s"):
        return 0.0
    try:
        return _values.parse_duration(annotation, value, minimum=_MIN_STALL_AFTER, maximum=86400.0)
    except HintError as exc:
        raise HintError(annotation, value, f'"0" (off) or {exc.expected}') from exc


def _select(annotation: str, value: str) -> str:
    return _values.parse_choice(annotation, value, ("max", "min", "disabled"))


def _tolerance(annotation: str, value: str) -> float:
    number = _values.parse_float(annotation, value, minimum=0.0, maximum=1.0)
    if number >= 1.0:
        raise HintError(annotation, value, "a number from 0 up to, but not including, 1 (e.g. 0.1)")
    return number


def _metric_type(annotation: str, value: str) -> str:
    return _values.parse_choice(annotation, value, ("AverageValue", "Value"))


def _formula_text(annotation: str, value: str) -> str:
    # Compiled against the trigger names once every trigger is known (_scaling_modifiers).
    return value


def _is_are(things: Sequence[object]) -> str:
    return "is" if len(things) == 1 else "are"


def _positive_number(annotation: str, value: str) -> float:
    number = _values.parse_float(annotation, value, minimum=0.0)
    if number <= 0.0:
        raise HintError(annotation, value, "a number above 0 (e.g. 100)")
    return number


def _number(annotation: str, value: str) -> float:
    return _values.parse_float(annotation, value, minimum=0.0)


def _replica_cap(annotation: str, value: str) -> str:
    return _values.parse_choice(annotation, value, ("metric-value", "replicas"))


def _fallback_behavior(annotation: str, value: str) -> str:
    return _values.parse_choice(
        annotation, value, ("static", "currentReplicas", "currentReplicasIfHigher", "currentReplicasIfLower")
    )


_POLICY = re.compile(r"(?P<value>\d+)\s*(?P<unit>%|pods?)\s*/\s*(?P<period>\S+)", re.IGNORECASE)


def parse_rate_policies(annotation: str, value: str) -> tuple[RatePolicy, ...]:
    """``"4 pods/15s, 100%/15s"`` -> rate policies (the HPA's ``Pods`` / ``Percent`` per period)."""
    expected = (
        'comma-separated policies such as "4 pods/15s, 100%/15s": a count of pods or a percentage '
        f"(at least 1) per period (above 0s, at most {format_duration(_MAX_POLICY_PERIOD)})"
    )
    policies = []
    for item in _values.parse_list(annotation, value):
        match = _POLICY.fullmatch(item)
        if match is None or int(match["value"]) < 1:
            raise HintError(annotation, value, expected)
        try:
            period = _values.parse_duration(annotation, match["period"], maximum=_MAX_POLICY_PERIOD)
        except HintError as exc:
            raise HintError(annotation, value, expected) from exc
        if period <= 0:
            raise HintError(annotation, value, expected)
        kind: Literal["pods", "percent"] = "percent" if match["unit"] == "%" else "pods"
        policies.append(RatePolicy(kind=kind, value=int(match["value"]), period=period))
    return tuple(policies)


_EXAMPLE_TRIGGER = "kafka"

KNOBS: tuple[Knob, ...] = (
    Knob(
        name="min-replicas",
        type="integer >= 0",
        default="1",
        meaning="Fewest replicas. 0 allows scale to zero: the Deployment is handed to the waker "
        "once every trigger has been inactive for the cooldown.",
        example="0",
        parse=_int(0),
    ),
    Knob(
        name="max-replicas",
        type="integer >= 1",
        default="10",
        meaning="Most replicas; at least min-replicas.",
        example="30",
        parse=_int(1),
    ),
    Knob(
        name="wake-replicas",
        type="integer >= 1",
        default="1",
        meaning="Replicas the waker starts when a trigger becomes active at zero (at most max-replicas).",
        example="2",
        parse=_int(1),
    ),
    Knob(
        name="polling-interval",
        type="duration",
        default="1s",
        meaning="How often the leader measures and decides. A measurement older than three "
        "intervals counts as a failure.",
        example="5s",
        parse=_duration(minimum=0.1, maximum=3600.0),
    ),
    Knob(
        name="cooldown",
        type="duration",
        default="300s",
        meaning="How long every trigger must stay inactive before going to zero (only with min-replicas 0).",
        example="10m",
        parse=_duration(),
    ),
    Knob(
        name="stall-after",
        type="duration or 0",
        default="5m",
        meaning="A group that consumes nothing this long while it has lag and its pods are Ready is "
        "stalled: hold the replica count instead of adding pods, with a ConsumerStalled Warning Event "
        "naming the partitions or queues, until it consumes again (docs/policy.md). 0 turns it off.",
        example="2m",
        parse=_stall_after,
    ),
    Knob(
        name="park-ack-timeout",
        type="duration",
        default="30s",
        meaning="How long the leader waits for the waker to acknowledge a park request before it "
        "gives up, stays at its replicas and emits a WakerUnavailable Event (only with min-replicas 0).",
        example="1m",
        parse=_duration(1.0, 600.0),
    ),
    Knob(
        name="tolerance",
        type="number in [0, 1)",
        default="0.1",
        meaning="No change while the value is within this fraction of the target for the current "
        "replicas (the HPA's tolerance).",
        example="0.05",
        parse=_tolerance,
    ),
    Knob(
        name="scale-up-tolerance",
        type="number in [0, 1)",
        default=None,
        meaning="Scale up only when the value exceeds the target for the current replicas by more "
        "than this fraction (the HPA's behavior.scaleUp.tolerance). Unset: tolerance.",
        example="0.05",
        parse=_tolerance,
    ),
    Knob(
        name="scale-down-tolerance",
        type="number in [0, 1)",
        default=None,
        meaning="Scale down only when the value is below the target for the current replicas by more "
        "than this fraction (the HPA's behavior.scaleDown.tolerance). Unset: tolerance.",
        example="0.2",
        parse=_tolerance,
    ),
    Knob(
        name="metric-type",
        type="AverageValue | Value",
        default="AverageValue",
        meaning="How the HPA reads every trigger's value (KEDA's metricType): AverageValue divides it "
        "by the target per replica; Value compares it with the target for the ready pods as a whole.",
        example="Value",
        parse=_metric_type,
    ),
    Knob(
        name="replica-cap",
        type="metric-value | replicas",
        default="metric-value",
        meaning="How a trigger's cap (Kafka: partitions) applies: metric-value lowers the value to "
        "cap x target when value / target (integer division) exceeds the cap, as KEDA's Kafka scaler "
        "does; replicas caps the trigger's replica recommendation instead.",
        example="replicas",
        parse=_replica_cap,
    ),
    Knob(
        name="scale-up-stabilization",
        type="duration",
        default="0s",
        meaning="Scale up only to the lowest recommendation of this window.",
        example="30s",
        parse=_duration(maximum=_MAX_STABILIZATION),
    ),
    Knob(
        name="scale-down-stabilization",
        type="duration",
        default="300s",
        meaning="Scale down only to the highest recommendation of this window.",
        example="1m",
        parse=_duration(maximum=_MAX_STABILIZATION),
    ),
    Knob(
        name="scale-up-policies",
        type="rate policies",
        default="4 pods/15s, 100%/15s",
        meaning="How fast replicas may be added: pods or percent of the replicas per period.",
        example="10 pods/30s",
        parse=parse_rate_policies,
    ),
    Knob(
        name="scale-up-select",
        type="max | min | disabled",
        default="max",
        meaning="Which scale-up policy applies: the one allowing the most change, the least, "
        "or no scale-up at all.",
        example="min",
        parse=_select,
    ),
    Knob(
        name="scale-down-policies",
        type="rate policies",
        default="100%/15s",
        meaning="How fast replicas may be removed.",
        example="10%/1m, 5 pods/1m",
        parse=parse_rate_policies,
    ),
    Knob(
        name="scale-down-select",
        type="max | min | disabled",
        default="max",
        meaning="Which scale-down policy applies: the one allowing the most change, the least, "
        "or no scale-down at all.",
        example="disabled",
        parse=_select,
    ),
    Knob(
        name="fallback-failure-threshold",
        type="integer >= 0",
        default=None,
        meaning="Once a trigger has failed more than this many times in a row (KEDA's "
        "failureThreshold), it reports fallback-replicas x its target. Unset: no fallback (a failing "
        "trigger has no opinion).",
        example="3",
        parse=_int(0),
    ),
    Knob(
        name="fallback-failure-interval",
        type="duration",
        default=None,
        meaning="Count at most one failure per this interval. KEDA counts one per HPA metric request "
        "(15s) and one per its own poll (30s): 10s makes a migrated failureThreshold fall back after "
        "the same wall-clock time. Unset or 0s: every decision counts one.",
        example="10s",
        parse=_duration(maximum=3600.0),
    ),
    Knob(
        name="fallback-behavior",
        type="static | currentReplicas | currentReplicasIfHigher | currentReplicasIfLower",
        default=None,
        meaning="KEDA's fallback.behavior: fallback-replicas, the current count, or the higher or "
        "lower of the two. Unset: static.",
        example="currentReplicasIfHigher",
        parse=_fallback_behavior,
    ),
    Knob(
        name="scaling-modifiers-formula",
        type="formula",
        default=None,
        meaning="KEDA's advanced.scalingModifiers.formula: one composite metric computed from the "
        "triggers' values (a trigger by its name, dashes as underscores), which replaces theirs; "
        "+ - * / % ** ( ) comparisons && || ! c ? a : b min max abs floor ceil round. "
        "Needs scaling-modifiers-target.",
        example="(orders + payments) / 2",
        parse=_formula_text,
    ),
    Knob(
        name="scaling-modifiers-target",
        type="number > 0",
        default=None,
        meaning="KEDA's scalingModifiers.target: the composite metric's target (per replica for "
        "AverageValue).",
        example="100",
        parse=_positive_number,
    ),
    Knob(
        name="scaling-modifiers-activation-target",
        type="number >= 0",
        default=None,
        meaning="KEDA's scalingModifiers.activationTarget: the Deployment is active while the "
        "composite metric is above this (the triggers' own activation no longer counts). Unset: 0.",
        example="10",
        parse=_number,
    ),
    Knob(
        name="scaling-modifiers-metric-type",
        type="AverageValue | Value",
        default=None,
        meaning="KEDA's scalingModifiers.metricType: how the HPA reads the composite metric "
        "(metric-type applies to the triggers, not to the composite). Unset: AverageValue.",
        example="Value",
        parse=_metric_type,
    ),
    Knob(
        name="fallback-replicas",
        type="integer >= 0",
        default=None,
        meaning="Replicas a failing trigger asks for; required with fallback-failure-threshold.",
        example="6",
        parse=_int(0),
    ),
    Knob(
        name="paused",
        type="boolean",
        default="false",
        meaning="Freeze at the current count: measure and report, never scale.",
        example="true",
        parse=_values.parse_bool,
    ),
    Knob(
        name="paused-replicas",
        type="integer >= 0",
        default=None,
        meaning="Pin to this count, even outside min/max; implies paused.",
        example="0",
        parse=_int(0),
    ),
    Knob(
        name="paused-scale-in",
        type="boolean",
        default="false",
        meaning="Never scale down nor to zero (KEDA's autoscaling.keda.sh/paused-scale-in).",
        example="true",
        parse=_values.parse_bool,
    ),
    Knob(
        name="paused-scale-out",
        type="boolean",
        default="false",
        meaning="Never scale up nor from zero (KEDA's autoscaling.keda.sh/paused-scale-out).",
        example="true",
        parse=_values.parse_bool,
    ),
    Knob(
        name="dry-run",
        type="boolean",
        default="false",
        meaning="Decide and report (Events, status annotation), never write the replica count.",
        example="true",
        parse=_values.parse_bool,
    ),
    Knob(
        name="scale-down-marking",
        type="boolean",
        default="true",
        meaning="Before a scale-down, mark the idlest pods (no lag, fewest unacked, newest) with "
        "controller.kubernetes.io/pod-deletion-cost so the ReplicaSet removes those; false: the "
        "ReplicaSet's own choice (newest first).",
        example="false",
        parse=_values.parse_bool,
    ),
    Knob(
        name="lease-duration",
        type="duration",
        default="15s",
        meaning="Leader election: how long a Lease is valid without renewal. "
        "Must exceed lease-renew-deadline.",
        example="30s",
        parse=_duration(minimum=1.0, maximum=3600.0),
    ),
    Knob(
        name="lease-renew-deadline",
        type="duration",
        default="10s",
        meaning="Leader election: the leader gives up if it cannot renew within this time. "
        "Must exceed 1.2 x lease-retry-period.",
        example="20s",
        parse=_duration(minimum=0.5, maximum=3600.0),
    ),
    Knob(
        name="lease-retry-period",
        type="duration",
        default="2s",
        meaning="Leader election: how often candidates try to acquire and the leader renews.",
        example="4s",
        parse=_duration(minimum=0.1, maximum=3600.0),
    ),
)
_KNOBS_BY_NAME = {knob.name: knob for knob in KNOBS}


# ---------------------------------------------------------------- parsing


def parse_hints(annotations: Mapping[str, str]) -> Hints:
    """The typed hints of one Deployment; raises :class:`HintsInvalid` with every problem found."""
    hints, problems = _parse(annotations)
    if problems:
        raise HintsInvalid(problems)
    assert hints is not None  # _parse returns hints whenever it found no problem
    return hints


def validate_hints(annotations: Mapping[str, str]) -> tuple[HintError, ...]:
    """Every problem in one Deployment's hints (empty when they are fine). Never raises."""
    try:
        return _parse(annotations)[1]
    except Exception as exc:  # the webhook must answer even if a source's parser has a bug
        return (HintError(PREFIX + "*", None, f"hints that tidescale can check (internal error: {exc!r})"),)


def _over_limits(annotations: Mapping[str, str]) -> tuple[HintError, ...]:
    """The caps of :data:`LIMIT_ROWS`, checked before anything is parsed, so the work done for any
    annotations (up to the API server's 256 KiB) is bounded whatever they hold."""
    keys = [k for k in annotations if k.startswith(PREFIX) and not _agent_owned(k[len(PREFIX) :])]
    if len(keys) > MAX_HINT_KEYS:
        return (HintError(PREFIX + "*", f"{len(keys)} hints", _TOO_MANY_KEYS),)
    problems = [
        HintError(key, _shortened(annotations[key]), _TOO_LONG)
        for key in sorted(keys)
        if len(annotations[key]) > MAX_HINT_BYTES // 4 and len(annotations[key].encode()) > MAX_HINT_BYTES
    ]
    triggers = {k[len(PREFIX) :].partition(".")[0] for k in keys if "." in k[len(PREFIX) :]}
    if len(triggers) > MAX_TRIGGERS:
        problems.append(HintError(PREFIX + "<trigger>.*", f"{len(triggers)} triggers", _TOO_MANY_TRIGGERS))
    return tuple(problems)


def _shortened(value: str) -> str:
    return f"{value[:40]}... ({len(value.encode())} bytes)"


_TOO_MANY_KEYS = f"at most {MAX_HINT_KEYS} tidescale.io/ hints on one Deployment"
_TOO_LONG = f"a value of at most {MAX_HINT_BYTES} bytes"
_TOO_MANY_TRIGGERS = f"at most {MAX_TRIGGERS} triggers on one Deployment"
LIMIT_ROWS: tuple[tuple[str, str, str], ...] = (
    ("`tidescale.io/` hints on one Deployment", str(MAX_HINT_KEYS), _TOO_MANY_KEYS),
    ("bytes in one hint's value", str(MAX_HINT_BYTES), _TOO_LONG),
    ("triggers on one Deployment", str(MAX_TRIGGERS), _TOO_MANY_TRIGGERS),
)
"""Every bound on hints (with those of the sources' fields): what, the limit, the error's expected part."""


def _parse(annotations: Mapping[str, str]) -> tuple[Hints | None, tuple[HintError, ...]]:
    over = _over_limits(annotations)
    if over:
        return None, over
    problems: list[HintError] = []
    knob_values: dict[str, Any] = {}
    trigger_fields: dict[str, dict[str, str]] = {}
    for key in sorted(annotations):
        if not key.startswith(PREFIX):
            continue
        name = key[len(PREFIX) :]
        value = annotations[key]
        if _agent_owned(name):
            continue
        if "." in name:
            trigger, _, trigger_field = name.partition(".")
            trigger_fields.setdefault(trigger, {})[trigger_field] = value
        elif name in _KNOBS_BY_NAME:
            try:
                knob_values[name] = _KNOBS_BY_NAME[name].parse(key, value)
            except HintError as exc:
                problems.append(exc)
        elif len(problems) < _MAX_SUGGESTED:
            problems.append(_unknown_key(key, value, trigger_fields=_all_trigger_names(annotations)))
        else:
            problems.append(HintError(key, value, "a known tidescale.io/ annotation (see the reference)"))
    problems.extend(_cross_check(knob_values))
    triggers, trigger_types, trigger_metrics = _parse_triggers(trigger_fields, problems)
    modifiers = _scaling_modifiers(knob_values, sorted(trigger_fields), problems)
    if problems:
        return None, tuple(problems)
    hints = _assemble(knob_values, triggers, trigger_types, trigger_metrics)
    return replace(hints, scaling_modifiers=modifiers), ()


def _scaling_modifiers(
    values: Mapping[str, Any], trigger_names: Sequence[str], problems: list[HintError]
) -> ScalingModifiers | None:
    """KEDA's ValidateAndCompileScalingModifiers: the formula compiled against the declared
    triggers; a target with it; no other scaling-modifiers-* without it."""
    formula_key = "scaling-modifiers-formula"
    given = [name for name in values if name.startswith("scaling-modifiers-")]
    if formula_key not in values:
        if given:
            names = " and ".join(PREFIX + name for name in sorted(given))
            since = f"a formula, since {names} {_is_are(given)} set"
            problems.append(HintError(PREFIX + formula_key, None, since))
        return None
    target_key = PREFIX + "scaling-modifiers-target"
    if "scaling-modifiers-target" not in values and not any(p.annotation == target_key for p in problems):
        problems.append(
            HintError(
                PREFIX + "scaling-modifiers-target",
                None,
                f"a number above 0, since {PREFIX}{formula_key} is set",
            )
        )
    try:
        formula = compile_formula(PREFIX + formula_key, values[formula_key], trigger_names)
    except HintError as exc:
        problems.append(exc)
        return None
    if "scaling-modifiers-target" not in values:
        return None
    return ScalingModifiers(
        formula=formula,
        target=values["scaling-modifiers-target"],
        activation_target=values.get("scaling-modifiers-activation-target", 0.0),
        metric_type=values.get("scaling-modifiers-metric-type", "AverageValue"),
    )


def _agent_owned(name: str) -> bool:
    return name in AGENT_OWNED


def _knob(values: Mapping[str, Any], name: str) -> Any:
    """The parsed value of a knob, or its default when not given."""
    if name in values:
        return values[name]
    knob = _KNOBS_BY_NAME[name]
    return None if knob.default is None else knob.parse(knob.annotation, knob.default)


def _cross_check(values: Mapping[str, Any]) -> list[HintError]:
    """Rules between knobs; a knob that did not parse is not checked again here."""
    problems: list[HintError] = []
    low, high = _knob(values, "min-replicas"), _knob(values, "max-replicas")
    if low > high:
        given = "min-replicas" if "min-replicas" in values else "max-replicas"
        problems.append(
            HintError(
                PREFIX + given,
                str(values[given]),
                f"min-replicas ({low}) at most max-replicas ({high})",
            )
        )
    if "wake-replicas" in values and values["wake-replicas"] > high:
        problems.append(
            HintError(
                PREFIX + "wake-replicas", str(values["wake-replicas"]), f"at most max-replicas ({high})"
            )
        )
    threshold, replicas = "fallback-failure-threshold", "fallback-replicas"
    if (threshold in values) != (replicas in values):
        missing, present = (replicas, threshold) if threshold in values else (threshold, replicas)
        problems.append(HintError(PREFIX + missing, None, f"a value, since {PREFIX}{present} is set"))
    if replicas in values and values[replicas] > high:
        problems.append(HintError(PREFIX + replicas, str(values[replicas]), f"at most max-replicas ({high})"))
    if "paused-replicas" in values and values.get("paused") is False:
        problems.append(
            HintError(
                PREFIX + "paused",
                "false",
                f'"true" or no value, since {PREFIX}paused-replicas is set (pinning implies paused)',
            )
        )
    duration, renew, retry = (
        _knob(values, n) for n in ("lease-duration", "lease-renew-deadline", "lease-retry-period")
    )
    if not duration > renew:
        given = "lease-duration" if "lease-duration" in values else "lease-renew-deadline"
        problems.append(
            HintError(
                PREFIX + given,
                format_duration(values.get(given, duration if given == "lease-duration" else renew)),
                f"lease-duration ({format_duration(duration)}) longer than "
                f"lease-renew-deadline ({format_duration(renew)})",
            )
        )
    if not renew > 1.2 * retry:
        given = "lease-renew-deadline" if "lease-renew-deadline" in values else "lease-retry-period"
        problems.append(
            HintError(
                PREFIX + given,
                format_duration(values.get(given, renew if given == "lease-renew-deadline" else retry)),
                f"lease-renew-deadline ({format_duration(renew)}) longer than 1.2 x "
                f"lease-retry-period ({format_duration(retry)})",
            )
        )
    return problems


def _assemble(
    values: Mapping[str, Any],
    triggers: tuple[TriggerSettings, ...],
    trigger_types: dict[str, str],
    trigger_metrics: dict[str, str],
) -> Hints:
    threshold = values.get("fallback-failure-threshold")
    paused_replicas = values.get("paused-replicas")
    return Hints(
        min_replicas=_knob(values, "min-replicas"),
        max_replicas=_knob(values, "max-replicas"),
        wake_replicas=_knob(values, "wake-replicas"),
        polling_interval=_knob(values, "polling-interval"),
        cooldown=_knob(values, "cooldown"),
        stall_after=_knob(values, "stall-after"),
        park_ack_timeout=_knob(values, "park-ack-timeout"),
        tolerance=_knob(values, "tolerance"),
        scale_up=ScalingRules(
            stabilization=_knob(values, "scale-up-stabilization"),
            policies=_knob(values, "scale-up-policies"),
            select=_knob(values, "scale-up-select"),
        ),
        scale_down=ScalingRules(
            stabilization=_knob(values, "scale-down-stabilization"),
            policies=_knob(values, "scale-down-policies"),
            select=_knob(values, "scale-down-select"),
        ),
        behavior=any(name in values for name in BEHAVIOR_KNOBS)
        or bool(_knob(values, "paused-scale-in"))
        or bool(_knob(values, "paused-scale-out")),
        tolerance_up=values.get("scale-up-tolerance"),
        tolerance_down=values.get("scale-down-tolerance"),
        metric_type=_knob(values, "metric-type"),
        replica_cap=_knob(values, "replica-cap"),
        paused_scale_in=_knob(values, "paused-scale-in"),
        paused_scale_out=_knob(values, "paused-scale-out"),
        fallback=None
        if threshold is None
        else Fallback(
            failure_threshold=threshold,
            replicas=values["fallback-replicas"],
            behavior=values.get("fallback-behavior", "static"),
            failure_interval=values.get("fallback-failure-interval", 0.0),
        ),
        paused=bool(_knob(values, "paused")) or paused_replicas is not None,
        paused_replicas=paused_replicas,
        dry_run=_knob(values, "dry-run"),
        scale_down_marking=_knob(values, "scale-down-marking"),
        lease=LeaseTimings(
            duration=_knob(values, "lease-duration"),
            renew_deadline=_knob(values, "lease-renew-deadline"),
            retry_period=_knob(values, "lease-retry-period"),
        ),
        triggers=triggers,
        trigger_types=trigger_types,
        trigger_metrics=trigger_metrics,
    )


# ---------------------------------------------------------------- triggers


def _registry() -> Any:
    # Imported on use: sources sit after hints in the one-way flow (hints -> sources ->
    # policy), and the contract reaches them only through the registry, by type name.
    from tidescale.sources import registry

    return registry


def _trigger_types() -> tuple[str, ...]:
    return tuple(_registry().TRIGGER_TYPES)


def _field_rows(source_type: str) -> list[tuple[str, str, str | None, str, str]]:
    """(field, type, default, meaning, example) of each field of one source type."""
    rows = []
    for doc in _registry().field_docs(source_type):
        if isinstance(doc, tuple):
            rows.append(doc)
        else:  # the registry's FieldDoc
            rows.append((doc.field, doc.type, doc.default, doc.meaning, doc.example))
    return rows


def _field_names(source_type: str) -> list[str]:
    return [row[0] for row in _field_rows(source_type)]


def _all_trigger_names(annotations: Mapping[str, str]) -> Iterable[str]:
    """Every ``<trigger>.<field>`` a did-you-mean may point at, for keys without a dot."""
    keys = [k[len(PREFIX) :] for k in annotations if k.startswith(PREFIX)]
    declared = {n.partition(".")[0] for n in keys if "." in n}  # only keys with a field name triggers
    names = set(_trigger_types()) | {d for d in declared if _TRIGGER_NAME.fullmatch(d)}
    return sorted(names)


def _parse_triggers(
    trigger_fields: Mapping[str, Mapping[str, str]], problems: list[HintError]
) -> tuple[tuple[TriggerSettings, ...], dict[str, str], dict[str, str]]:
    known_types = _trigger_types()
    settings: list[TriggerSettings] = []
    types: dict[str, str] = {}
    metrics: dict[str, str] = {}
    for name in sorted(trigger_fields):
        fields = dict(trigger_fields[name])
        source_type = _trigger_type(name, fields, known_types, problems)
        if source_type is None:
            continue
        allowed = _field_names(source_type)
        for unknown in sorted(set(fields) - set(allowed)):
            key = f"{PREFIX}{name}.{unknown}"
            suggestion = _suggest(unknown, allowed) if len(problems) < _MAX_SUGGESTED else None
            hint = f" (did you mean {PREFIX}{name}.{suggestion}?)" if suggestion else ""
            problems.append(
                HintError(
                    key,
                    fields.pop(unknown),
                    f"a {source_type} trigger field{hint}; see docs/hints-reference.md",
                )
            )
        try:
            parsed = _registry().settings_parser(source_type)(name, fields)
        except HintsInvalid as exc:
            problems.extend(exc.problems)
            continue
        except HintError as exc:
            problems.append(exc)
            continue
        settings.append(parsed)
        types[name] = source_type
        metrics[name] = _metric_noun(source_type, fields)
    return tuple(settings), types, metrics


def _trigger_type(
    name: str, fields: dict[str, str], known_types: Sequence[str], problems: list[HintError]
) -> str | None:
    """The source type of trigger ``name`` (removing its ``type`` field), or None after a problem."""
    some_field = next(iter(sorted(fields)))
    if not _TRIGGER_NAME.fullmatch(name) or len(name) > 63:
        problems.append(
            HintError(
                f"{PREFIX}{name}.{some_field}",
                fields[some_field],
                "a trigger name of lowercase letters, digits and '-', starting and ending with a letter "
                "or digit, at most 63 characters (a DNS label), before the dot",
            )
        )
        return None
    given = fields.pop("type", None)
    if given is not None:
        try:
            declared = _values.parse_choice(f"{PREFIX}{name}.type", given, known_types)
        except HintError as exc:
            problems.append(exc)
            return None
        if name in known_types and declared != name:
            problems.append(
                HintError(
                    f"{PREFIX}{name}.type",
                    given,
                    f'"{name}" or no value: a trigger named after a source type is of that type',
                )
            )
            return None
        return declared
    if name in known_types:
        return name
    suggestion = _suggest(name, known_types)
    hint = f"; or did you mean {PREFIX}{suggestion}.{some_field}?" if suggestion else ""
    choices = ", ".join(f'"{t}"' for t in known_types)
    problems.append(
        HintError(
            f"{PREFIX}{name}.type",
            None,
            f"one of {choices}, since {PREFIX}{name}.{some_field} declares a trigger named {name!r}{hint}",
        )
    )
    return None


def _metric_noun(source_type: str, fields: Mapping[str, str]) -> str:
    if source_type == "kafka":
        return "lag"
    if source_type == "rabbitmq":
        return "message rate" if fields.get("mode", "").strip().lower() == "message-rate" else "queue length"
    if source_type == "redis":
        if "stream" not in fields:
            return "list length"
        metric = fields.get("stream-metric", "pending" if "consumer-group" in fields else "length")
        return {"lag": "lag", "pending": "pending entries"}.get(metric.strip().lower(), "stream length")
    if source_type == "cron":
        return "desired replicas"
    if source_type == "nats-jetstream":
        return "backlog"
    if source_type in ("aws-sqs", "azure-queue"):
        return "queue length"
    return "value"


# ---------------------------------------------------------------- did you mean


def _unknown_key(key: str, value: str, *, trigger_fields: Iterable[str]) -> HintError:
    name = key[len(PREFIX) :]
    if name == "inject":
        return HintError(
            key, value, 'the pod-template label tidescale.io/inject: "true" instead (opting in is a label)'
        )
    candidates = [knob.name for knob in KNOBS]
    for trigger in trigger_fields:
        candidates.extend(f"{trigger}.{f}" for f in _fields_for_suggestion(trigger))
    suggestion = _suggest(name, candidates)
    hint = f"did you mean {PREFIX}{suggestion}? " if suggestion else ""
    return HintError(key, value, f"a known tidescale.io/ annotation ({hint}see docs/hints-reference.md)")


def _fields_for_suggestion(trigger: str) -> list[str]:
    types = _trigger_types()
    return _field_names(trigger) if trigger in types else ["type"]


def _suggest(word: str, candidates: Iterable[str]) -> str | None:
    options = list(candidates)
    by_lower = {option.lower(): option for option in options}
    matches = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[matches[0]] if matches else None


# ---------------------------------------------------------------- the reference


def _cell(text: str | None) -> str:
    return "—" if text is None else text.replace("|", "\\|")


def reference_markdown() -> str:
    """The annotation reference, rendered from the knob table and the sources' field tables."""
    registry = _registry()
    lines = [
        "# Hints reference",
        "",
        "<!-- Generated by tools/gen_hints_reference.py from tidescale.hints and the sources' field",
        "     tables. Do not edit by hand: a unit test fails when this file and the code disagree. -->",
        "",
        "Annotations on the Deployment's `metadata.annotations`, all under the prefix `tidescale.io/`.",
        'Opting in is separate: the pod-template label `tidescale.io/inject: "true"`.',
        "",
        "Value forms: durations are written with a unit (`250ms`, `30s`, `5m`, `1m30s`, `1h`; a bare",
        "number is refused); booleans are `true`/`false`; lists are comma-separated.",
        "Every problem names the annotation, the value given and the form expected, and all problems",
        "of a Deployment are reported together (`tidescale lint`, and `kubectl apply` warnings from",
        "the validating webhook). An unknown key under the prefix is an error with a suggestion.",
        "",
        "## Scaling",
        "",
        "| annotation | type | default | meaning | example |",
        "|---|---|---|---|---|",
    ]
    for knob in KNOBS:
        lines.append(
            f"| `{knob.annotation}` | {_cell(knob.type)} | {_cell(knob.default and f'`{knob.default}`')} "
            f"| {_cell(knob.meaning)} | `{_cell(knob.example)}` |"
        )
    lines += [
        "",
        "Rules between annotations: min-replicas <= max-replicas; wake-replicas and fallback-replicas",
        "<= max-replicas; fallback-failure-threshold and fallback-replicas come together;",
        "paused-replicas cannot be combined with `paused: false`; lease-duration > lease-renew-deadline",
        "> 1.2 x lease-retry-period (client-go's rule).",
        "",
        "Rate policies follow the HPA's `behavior`: each policy allows at most N pods (`4 pods/15s`)",
        "or N percent of the replicas at the start of the period (`100%/15s`) of change per period;",
        "`max` applies the policy allowing the most change, `min` the least, `disabled` forbids that",
        "direction.",
        "",
        "## Triggers",
        "",
        "`tidescale.io/<trigger>.<field>`. A trigger is either named after its source type",
        "(`tidescale.io/kafka.topic`: the shorthand for one trigger), or any DNS label declared",
        "with `tidescale.io/<trigger>.type` (several triggers per Deployment; the largest desired",
        "count wins):",
        "",
        "```yaml",
        "tidescale.io/orders.type: kafka",
        "tidescale.io/orders.bootstrap-servers: kafka-0.kafka:9092",
        "tidescale.io/orders.consumer-group: billing",
        "tidescale.io/orders.topic: orders",
        "tidescale.io/refunds.type: rabbitmq",
        "tidescale.io/refunds.management-url: http://rabbitmq:15672",
        "tidescale.io/refunds.queue: refunds",
        "```",
        "",
        "| annotation | type | default | meaning | example |",
        "|---|---|---|---|---|",
        "| `tidescale.io/<trigger>.type` | "
        + " \\| ".join(registry.TRIGGER_TYPES)
        + " | the trigger's name, when that is a type | The source type; required unless the trigger "
        "is named after its type. | `kafka` |",
    ]
    for source_type in registry.TRIGGER_TYPES:
        lines += [
            "",
            f"### {source_type}",
            "",
            "| annotation | type | default | meaning | example |",
            "|---|---|---|---|---|",
        ]
        for name, kind, default, meaning, example in _field_rows(source_type):
            lines.append(
                f"| `tidescale.io/{source_type}.{name}` | {_cell(kind)} | "
                f"{_cell(default and f'`{default}`')} | {_cell(meaning)} | `{_cell(example)}` |"
            )
    lines += [
        "",
        "## Limits",
        "",
        "Every hint is bounded, so that checking any Deployment's annotations (up to the API server's",
        "256 KiB) and measuring its triggers costs bounded time and memory. A value past a limit is",
        "refused with the error shown (after `expected`); the first three are checked before",
        "anything else is parsed.",
        "",
        "| what | limit | error |",
        "|---|---|---|",
        *(
            f"| {_cell(what)} | {_cell(limit)} | {_cell(error)} |"
            for what, limit, error in (
                *LIMIT_ROWS,
                *((d.what, d.limit, d.error) for d in registry.LIMITS),
            )
        ),
        "",
        "## Written by tidescale itself",
        "",
        "`tidescale.io/status`, `tidescale.io/policy-state` and every key starting with",
        "`tidescale.io/park-` are written by the agent and the waker (status, the policy engine's",
        "windows, cooldown and failure counts for the next leader, and the scale-to-zero handoff).",
        "They are not hints and are never validated.",
        "",
    ]
    return "\n".join(lines)
