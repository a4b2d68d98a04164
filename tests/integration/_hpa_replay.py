"""Replaying an HPA's recorded syncs through ``policy.decide`` (the HPA differential test).

Pure: a :class:`Recording` (the queries the scripted metrics server answered, the scale
writes the audit log saw) becomes the HPA's decisions in order (:func:`steps_of`), and
:func:`replay` asks ``decide`` the same questions with the same inputs. The one place that
knows ``decide``'s signature is :func:`_decide`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.integration._hpa_scenarios import Scenario, hints_annotations, trigger_name
from tests.rig.metrics_server import Query
from tidescale.hints import Hints, parse_hints
from tidescale.policy import Decision, History, decide
from tidescale.sources.base import Measurement, MeasurementFailure

AMBIGUOUS = 0.2
"""Two decisions this close (seconds) to a window or period apart: the rig could not keep the grid."""


def _decide(
    hints: Hints,
    *,
    values: Sequence[int | None],
    targets: Sequence[int],
    current: int,
    pods: int,
    now: float,
    history: History,
) -> Decision:
    """One HPA sync through tidescale's engine: the adapter between a recorded sync and ``decide``."""
    measurements = [
        MeasurementFailure(trigger=trigger_name(i), error="scripted failure", taken_at=now)
        if value is None
        else Measurement(
            trigger=trigger_name(i), value=float(value), target=float(target), active=value > 0, taken_at=now
        )
        for i, (value, target) in enumerate(zip(values, targets, strict=True))
    ]
    return decide(measurements, current=current, hints=hints, now=now, history=history, pods=pods)


@dataclass(frozen=True, kw_only=True, slots=True)
class Step:
    """One decision the HPA made, with what it read and wrote."""

    kind: str  # "sync"; "clamp": out of range, no metric read; "zero": the HPA at 0, before a wake
    tick: int
    at: float
    current: int
    pods: int
    values: tuple[int | None, ...]
    wrote: int
    """The spec.replicas after the step: the HPA's write, or ``current`` when it wrote nothing."""
    wrote_at: float | None = None
    """When the API server received that write (the HPA stamps its scale event just after)."""

    @property
    def until(self) -> float:
        """The latest the controller's clock can have read for this decision (its write, else its answer)."""
        return self.at if self.wrote_at is None else max(self.at, self.wrote_at)


@dataclass(frozen=True, kw_only=True, slots=True)
class Write:
    at: float
    replicas: int


@dataclass(kw_only=True)
class Recording:
    scenario: Scenario
    queries: list[Query]
    writes: list[Write]
    woken_at: float | None = None
    """When the test woke the target 0 -> 1 (wake scenarios)."""
    zero_seen_at: float | None = None
    """When the HPA was seen to have read the target at 0 (wake scenarios)."""
    reads: list[float] = field(default_factory=list)
    """When the HPA read the target's scale (the audit log), oldest first: a sync's start."""
    problems: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class Outcome:
    scenario: Scenario
    steps: list[Step]
    hpa: list[int]
    tidescale: list[int]
    reasons: list[str]
    problems: list[str]

    @property
    def passed(self) -> bool:
        return not self.problems and self.hpa == self.tidescale

    def first_divergence(self) -> int | None:
        return next(
            (i for i, (a, b) in enumerate(zip(self.hpa, self.tidescale, strict=True)) if a != b), None
        )

    def table(self) -> str:
        origin = next((s.at for s in self.steps if s.kind == "sync"), 0.0)
        lines = ["  step  kind   tick      t  spec status  values -> HPA wrote | decide  (reason)"]
        for i, (step, mine, why) in enumerate(zip(self.steps, self.tidescale, self.reasons, strict=True)):
            mark = "  " if mine == step.wrote else "!!"
            values = ",".join("fail" if v is None else str(v) for v in step.values)
            lines.append(
                f"{mark}{i:4d}  {step.kind:5s} {step.tick:5d} {step.at - origin:6.2f} {step.current:5d} "
                f"{step.pods:6d}  {values:>6s} -> {step.wrote:9d} | {mine:6d}  ({why})"
            )
        return "\n".join(lines)

    def explain(self) -> str:
        s = self.scenario
        head = f"{s.name} ({s.title})"
        if self.problems:
            return f"{head}: the recording cannot be replayed: " + "; ".join(self.problems)
        index = self.first_divergence()
        if index is None:
            return f"{head}: decide wrote what the HPA wrote\n{self.table()}"
        return (
            f"{head}: decide gave {self.tidescale[index]} where the HPA wrote {self.steps[index].wrote} "
            f"at step {index}\nhints: {hints_annotations(s)}\n{self.table()}"
        )


def steps_of(recording: Recording) -> tuple[list[Step], list[str]]:
    """The HPA's decisions, in order, from the queries it made and the writes it did."""
    scenario = recording.scenario
    problems = list(recording.problems)
    by_tick: dict[int, list[Query]] = {}
    for query in recording.queries:
        by_tick.setdefault(query.tick, []).append(query)
    syncs = []
    for tick in sorted(by_tick):
        queries = sorted(by_tick[tick], key=lambda q: q.metric)
        if [q.metric for q in queries] != list(range(len(scenario.metrics))):
            problems.append(f"tick {tick}: the HPA asked for metrics {[q.metric for q in queries]}")
            continue
        syncs.append(queries)
    if not syncs or syncs[-1][0].tick < scenario.ticks:
        last = syncs[-1][0].tick if syncs else None
        problems.append(f"the HPA's last query was at tick {last}, short of {scenario.ticks}")
        return [], problems
    steps: list[Step] = []
    first = syncs[0][0]
    values = tuple(first_values(scenario))

    def spec_before(moment: float) -> int:
        found = 1 if recording.woken_at is not None and recording.woken_at < moment else scenario.spec
        for write in recording.writes:
            if write.at < moment:
                found = write.replicas
        return found

    if recording.zero_seen_at is not None:
        # The HPA saw the target at 0 (and did nothing) before it was woken.
        steps.append(
            Step(kind="zero", tick=-1, at=recording.zero_seen_at, current=0, pods=0, values=values, wrote=0)
        )
    # Writes before the first query: syncs that read no metric (the target out of [min, max]).
    for write in (w for w in recording.writes if w.at < first.arrived):
        current = spec_before(write.at)
        steps.append(
            Step(
                kind="clamp",
                tick=-1,
                at=write.at,
                current=current,
                pods=scenario.initial_status,
                values=values,
                wrote=write.replicas,
                wrote_at=write.at,
            )
        )
    for queries, following in itertools.pairwise(syncs):
        head = queries[0]
        if head.tick >= scenario.ticks:
            break
        inside = [w for w in recording.writes if head.arrived <= w.at < following[0].arrived]
        if len(inside) > 1:
            problems.append(f"tick {head.tick}: the HPA wrote {[w.replicas for w in inside]} in one sync")
        steps.append(
            Step(
                kind="sync",
                tick=head.tick,
                at=max(q.answered for q in queries),
                current=spec_before(head.arrived),
                pods=head.status_replicas,
                values=tuple(q.value for q in queries),
                wrote=spec_before(following[0].arrived),
                wrote_at=inside[-1].at if inside else None,
            )
        )
    problems += _ambiguous(scenario, steps, first_read=min(recording.reads, default=None))
    return steps, problems


def first_values(scenario: Scenario) -> list[int | None]:
    return [m.values[0] for m in scenario.metrics]


def _ambiguous(scenario: Scenario, steps: Sequence[Step], *, first_read: float | None = None) -> list[str]:
    """Comparisons the HPA made whose side a few hundred milliseconds could change.

    The HPA compares the age of each recommendation it remembers (one per sync that read a
    metric, and the current count at its first sync) with the stabilization windows, and
    the age of each scale event (one per write) with the policies' periods. The replay
    uses the server's clock: each decision at its answer, which the controller's clock
    reads up to :data:`AMBIGUOUS` later, or (a starved controller can take seconds) as
    late as the write the audit log saw. The first recommendation is the current count
    when the HPA first read the scale (``first_read``), which may be well before its first
    query was answered.
    """
    timed = [s for s in steps if s.kind != "zero"]
    if not timed:
        return []
    deciding = [s for s in timed if s.kind == "clamp" or any(v is not None for v in s.values)]
    # (earliest, latest) time the HPA may have stamped what it remembers, and the spans it compares.
    remembered = []
    if not any(s.kind == "zero" for s in steps):  # else the first recommendation is the 0, waited out
        start = timed[0].at if first_read is None else min(first_read, timed[0].at)
        remembered.append((start, timed[0].at, scenario.windows()))
    remembered += [(s.at, s.until, scenario.windows()) for s in deciding if s.kind == "sync"]
    remembered += [(s.at, s.until, scenario.periods()) for s in timed if s.wrote != s.current]
    found = []
    for later in deciding:
        for earliest, latest, spans in remembered:
            if later.at <= earliest:
                continue
            youngest, oldest = later.at - latest, later.until - earliest
            for span in spans:
                if span > 0 and youngest - AMBIGUOUS < span < oldest + AMBIGUOUS:
                    found.append(f"an age of {youngest:.3f}-{oldest:.3f} s compared with {span} s")
    return sorted(set(found))[:3]


def replay(recording: Recording) -> Outcome:
    scenario = recording.scenario
    steps, problems = steps_of(recording)
    hints = parse_hints(hints_annotations(scenario))
    targets = [m.target for m in scenario.metrics]
    history = History()
    mine: list[int] = []
    reasons: list[str] = []
    for step in steps:
        decision = _decide(
            hints,
            values=step.values,
            targets=targets,
            current=step.current,
            pods=step.pods,
            now=step.at,
            history=history,
        )
        mine.append(decision.desired)
        reasons.append(decision.reason)
        wrote = step.wrote != step.current
        history = decision.history if wrote and decision.desired == step.wrote else decision.history_unapplied
    return Outcome(
        scenario=scenario,
        steps=steps,
        hpa=[s.wrote for s in steps],
        tidescale=mine,
        reasons=reasons,
        problems=problems,
    )
