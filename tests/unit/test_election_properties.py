"""Safety of the elector's rules, by simulation: no two electors ever believe they lead at once.

A small discrete-event simulation runs several electors against a Lease store with
compare-and-swap on resourceVersion (the API server's optimistic concurrency). Every
request and answer has its own delay, answers can be lost, and each elector's monotonic
clock runs at its own rate within (1 +- RHO) of real time. Electors use the pure
functions of tidescale.election (``decide``, ``next_spec``, ``released_spec``,
``holds``) exactly as LeaseElector does. An elector "believes it leads" from the
moment a successful write's answer arrives until its own clock passes the send time of
that write plus renew_deadline (or until it releases).

Assumption stated by the test: clock rates within 10 % (RHO) of real time; the module
docstring of tidescale.election shows why anything under 20 % is safe with 15 s / 10 s.
"""

from __future__ import annotations

import functools
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tidescale.election import Action, LeaseRecord, LeaseTiming, decide, next_spec, released_spec
from tidescale.kube import LeaseSpec, parse_time

RHO = 0.10
TIMING = LeaseTiming()
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Store:
    record: LeaseRecord | None = None
    revision: int = 0

    def write(self, spec: LeaseSpec, expected: str | None) -> LeaseRecord | None:
        """Compare-and-swap: ``expected`` None means create (fails if the Lease exists)."""
        if expected is None and self.record is not None:
            return None
        if expected is not None and (self.record is None or self.record.resource_version != expected):
            return None
        self.revision += 1
        self.record = LeaseRecord(
            holder=spec.get("holderIdentity"),
            duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=parse_time(spec.get("acquireTime")),
            renew_time=parse_time(spec.get("renewTime")),
            transitions=int(spec.get("leaseTransitions") or 0),
            resource_version=str(self.revision),
        )
        return self.record


@dataclass
class Elector:
    name: str
    rate: float
    offset: float
    observed: LeaseRecord | None = None
    observed_at: float = 0.0
    renewed_at: float | None = None
    leading: bool = False
    epoch: int = 0
    beliefs: list[list[float]] = field(default_factory=list)

    def local(self, t: float) -> float:
        return self.offset + self.rate * t

    def real(self, local: float) -> float:
        return (local - self.offset) / self.rate

    def observe(self, record: LeaseRecord | None, t: float) -> None:
        current = self.observed
        stale = record is not None and current is not None
        if stale and int(record.resource_version) <= int(current.resource_version):  # type: ignore[union-attr]
            return
        if record is None or not record.same_content(current):
            self.observed_at = self.local(t)
        self.observed = record
        if self.leading and (record is None or record.holder != self.name):
            self.leading = False


@dataclass(frozen=True)
class Step:
    who: int
    gap: float
    delays: tuple[float, float, float, float]
    lost: bool
    release: bool


class Simulation:
    def __init__(self, electors: list[Elector]) -> None:
        self.electors = electors
        self.store = Store()
        self.queue: list[tuple[float, int, Callable[[float], None]]] = []
        self.seq = itertools.count()

    def at(self, t: float, action: Callable[[float], None]) -> None:
        heapq.heappush(self.queue, (t, next(self.seq), action))

    def run(self, steps: list[Step]) -> None:
        t = 0.0
        for step in steps:
            t += step.gap
            self.at(t, functools.partial(self.step, step))
        while self.queue:
            now, _, action = heapq.heappop(self.queue)
            action(now)

    def step(self, step: Step, now: float) -> None:
        elector = self.electors[step.who]
        read, answer, send, _ = step.delays
        if step.release and elector.leading:
            self.release(elector, now, send)
            return
        epoch = elector.epoch
        self.at(now + read, lambda t: self.read(elector, epoch, t + answer, step))

    def read(self, elector: Elector, epoch: int, arrives: float, step: Step) -> None:
        snapshot = self.store.record
        self.at(arrives, lambda t: self.decide(elector, epoch, snapshot, t, step))

    def decide(
        self, elector: Elector, epoch: int, snapshot: LeaseRecord | None, t: float, step: Step
    ) -> None:
        if epoch != elector.epoch:
            return
        elector.observe(snapshot, t)
        decision = decide(
            elector.observed, identity=elector.name, observed_at=elector.observed_at, now=elector.local(t)
        )
        if decision.action is Action.WAIT:
            return
        wall = EPOCH + timedelta(seconds=elector.local(t))
        spec = next_spec(elector.observed, identity=elector.name, timing=TIMING, now=wall)
        expected = None if elector.observed is None else elector.observed.resource_version
        sent_local = elector.local(t)
        _, _, send, reply = step.delays

        def arrive(at: float) -> None:
            written = self.store.write(spec, expected)
            if written is None or step.lost:
                return
            self.at(at + reply, lambda back: self.answered(elector, epoch, written, sent_local, back))

        self.at(t + send, arrive)

    def answered(
        self, elector: Elector, epoch: int, written: LeaseRecord, sent_local: float, t: float
    ) -> None:
        if epoch != elector.epoch:
            return  # the elector released meanwhile: its run was cancelled, answers are dropped
        elector.observe(written, t)
        elector.renewed_at = sent_local
        end = elector.real(sent_local + TIMING.renew_deadline)
        if not elector.leading:
            elector.leading = True
            elector.beliefs.append([t, end])
        elif elector.beliefs:
            elector.beliefs[-1][1] = max(elector.beliefs[-1][1], end)
        if elector.beliefs[-1][0] >= elector.beliefs[-1][1]:
            elector.beliefs.pop()
            elector.leading = False

    def release(self, elector: Elector, now: float, send: float) -> None:
        # LeaseElector stops believing before it sends the release.
        elector.epoch += 1
        elector.leading = False
        for belief in elector.beliefs:
            belief[1] = min(belief[1], now)
        record = elector.observed
        if record is None or record.holder != elector.name:
            return
        spec = released_spec(record, now=EPOCH + timedelta(seconds=elector.local(now)))
        expected = record.resource_version

        def arrive(_at: float) -> None:
            self.store.write(spec, expected)

        self.at(now + send, arrive)


def overlaps(electors: list[Elector]) -> list[tuple[str, str, list[float], list[float]]]:
    found = []
    for first, second in itertools.combinations(electors, 2):
        for a in first.beliefs:
            for b in second.beliefs:
                if a[0] < b[1] and b[0] < a[1]:
                    found.append((first.name, second.name, a, b))
    return found


steps = st.builds(
    Step,
    who=st.integers(0, 2),
    gap=st.floats(0.0, 2.0),
    delays=st.tuples(*(st.floats(0.0, 1.5) for _ in range(4))),
    lost=st.booleans(),
    release=st.integers(0, 9).map(lambda n: n == 0),  # now and then the leader is stopped
)


@st.composite
def schedules(draw: st.DrawFn) -> list[Step]:
    """Phases in which some electors step regularly and the others are silent (paused, dead,
    partitioned): the situations in which leadership changes hands."""
    schedule: list[Step] = []
    for _ in range(draw(st.integers(1, 8))):
        active = sorted(draw(st.sets(st.integers(0, 2), min_size=1)))
        period = draw(st.floats(0.2, 3.0))
        for _ in range(draw(st.integers(1, 12))):
            for index, who in enumerate(active):
                step = draw(steps)
                schedule.append(
                    Step(
                        who=who,
                        gap=period if index == 0 else step.gap / 10,
                        delays=step.delays,
                        lost=step.lost,
                        release=step.release,
                    )
                )
    return schedule


@settings(max_examples=300, deadline=None)
@given(
    rates=st.lists(st.floats(1 - RHO, 1 + RHO), min_size=3, max_size=3),
    offsets=st.lists(st.floats(0, 1e5), min_size=3, max_size=3),
    schedule=schedules(),
)
def test_no_two_electors_believe_they_lead_at_overlapping_times(
    rates: list[float], offsets: list[float], schedule: list[Step]
) -> None:
    electors = [
        Elector(name=f"pod-{i}", rate=r, offset=o)
        for i, (r, o) in enumerate(zip(rates, offsets, strict=True))
    ]
    Simulation(electors).run(schedule)
    assert overlaps(electors) == []


def _regular(who: list[int], *, until: float, every: float = 2.0) -> list[Step]:
    schedule, t = [], 0.0
    while t < until:
        for index, w in enumerate(who):
            schedule.append(
                Step(who=w, gap=every if index == 0 else 0.0, delays=(0.01,) * 4, lost=False, release=False)
            )
        t += every
    return schedule


def test_electors_stepping_regularly_settle_on_exactly_one_leader() -> None:
    electors = [Elector(name=f"pod-{i}", rate=1.0, offset=0.0) for i in range(3)]
    Simulation(electors).run(_regular([0, 1, 2], until=60.0))
    assert [len(e.beliefs) for e in electors] == [1, 0, 0]
    assert overlaps(electors) == []


def test_a_silent_leader_is_replaced_only_after_a_lease_duration() -> None:
    electors = [Elector(name=f"pod-{i}", rate=1.0, offset=0.0) for i in range(2)]
    simulation = Simulation(electors)
    # pod-0 leads for 10 s and falls silent; pod-1 keeps stepping.
    schedule = _regular([0, 1], until=10.0) + _regular([1], until=30.0)
    simulation.run(schedule)
    first, second = electors[0].beliefs[0], electors[1].beliefs[0]
    assert second[0] >= first[1]
    assert second[0] - 10.0 >= TIMING.duration - 2.0  # from pod-1's last observation of a renewal
    assert simulation.store.record is not None
    assert simulation.store.record.transitions == 1


def test_the_checker_catches_a_follower_whose_clock_runs_far_too_fast() -> None:
    # A clock at 2x real time breaks the assumption: the follower's 15 s pass in 7.5 s,
    # before the leader's 10 s renew deadline. The simulation must see the overlap.
    electors = [Elector(name="pod-0", rate=1.0, offset=0.0), Elector(name="pod-1", rate=2.0, offset=0.0)]
    schedule = [Step(who=0, gap=0.0, delays=(0.0,) * 4, lost=False, release=False)]
    schedule += [Step(who=1, gap=0.5, delays=(0.0,) * 4, lost=False, release=False) for _ in range(40)]
    Simulation(electors).run(schedule)
    assert overlaps(electors) != []
