"""Properties of the stall detector: never a stall while offsets advance, without lag, with pods
not Ready or with the detector off; a stall after exactly ``stall_after`` seconds without
progress, naming the units with lag; cleared by the first progress."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from tidescale._rates import ProgressSnapshot
from tidescale._stall import MAX_NAMED_UNITS, StallState, observe_stall

EXAMPLES = settings(max_examples=100, deadline=None)
UNITS = ("orders/0", "orders/1", "orders/2")


@dataclass(frozen=True)
class Step:
    gap: float
    advance: tuple[int, ...]
    lag: tuple[float, ...]
    ready: bool


steps = st.lists(
    st.builds(
        Step,
        gap=st.floats(0.1, 30.0),
        # Mostly nothing consumed: a stall needs runs of snapshots without progress.
        advance=st.one_of(st.just((0,) * len(UNITS)), st.tuples(*(st.integers(0, 3) for _ in UNITS))),
        lag=st.tuples(*(st.sampled_from([0.0, 0.0, 1.0, 500.0]) for _ in UNITS)),
        ready=st.booleans(),
    ),
    min_size=1,
    max_size=25,
)


def run(steps_: Sequence[Step], *, stall_after: float) -> list[tuple[Step, StallState]]:
    state = StallState()
    moment = 0.0
    offsets = [100] * len(UNITS)
    seen = []
    for step in steps_:
        moment += step.gap
        offsets = [offset + step_ for offset, step_ in zip(offsets, step.advance, strict=True)]
        snapshot = ProgressSnapshot(
            taken_at=moment,
            consumed=dict(zip(UNITS, offsets, strict=True)),
            lag=dict(zip(UNITS, step.lag, strict=True)),
        )
        state = observe_stall(state, snapshot, pods_ready=step.ready, stall_after=stall_after)
        seen.append((step, state))
    return seen


@EXAMPLES
@given(steps_=steps, stall_after=st.floats(0.5, 120.0))
def test_a_stall_is_never_reported_while_offsets_advance(steps_: list[Step], stall_after: float) -> None:
    for index, (step, state) in enumerate(run(steps_, stall_after=stall_after)):
        if index > 0 and any(step.advance):
            assert not state.stalled


@EXAMPLES
@given(steps_=steps, stall_after=st.floats(0.5, 120.0))
def test_a_stall_is_never_reported_without_lag_or_with_pods_not_ready(
    steps_: list[Step], stall_after: float
) -> None:
    for step, state in run(steps_, stall_after=stall_after):
        if not any(step.lag) or not step.ready:
            assert not state.stalled


@EXAMPLES
@given(steps_=steps)
def test_a_stall_after_of_zero_turns_the_detector_off(steps_: list[Step]) -> None:
    assert not any(state.stalled for _, state in run(steps_, stall_after=0.0))


@EXAMPLES
@given(gaps=st.lists(st.floats(0.1, 10.0), min_size=2, max_size=40), stall_after=st.floats(0.5, 60.0))
def test_lag_without_progress_is_a_stall_from_stall_after_seconds_on_and_not_before(
    gaps: list[float], stall_after: float
) -> None:
    frozen = [Step(gap=gap, advance=(0, 0, 0), lag=(0.0, 7.0, 3.0), ready=True) for gap in gaps]
    first_moment = gaps[0]
    moment = 0.0
    for step, state in run(frozen, stall_after=stall_after):
        moment += step.gap
        assert state.stalled == (moment - first_moment >= stall_after)
        if state.stalled:
            assert state.units == ("orders/1", "orders/2")


@EXAMPLES
@given(
    stuck=st.lists(st.floats(0.1, 10.0), min_size=1, max_size=30),
    stall_after=st.floats(0.5, 20.0),
    unit=st.integers(0, len(UNITS) - 1),
)
def test_the_first_progress_clears_a_stall(stuck: list[float], stall_after: float, unit: int) -> None:
    frozen = [
        Step(gap=gap, advance=(0, 0, 0), lag=(5.0, 5.0, 5.0), ready=True)
        for gap in [*stuck, stall_after + 0.01]
    ]
    advance = tuple(1 if index == unit else 0 for index in range(len(UNITS)))
    resumed = Step(gap=1.0, advance=advance, lag=(5.0, 5.0, 5.0), ready=True)
    seen = run([*frozen, resumed], stall_after=stall_after)
    assert seen[-2][1].stalled
    assert not seen[-1][1].stalled
    assert seen[-1][1].units == ()


def test_a_stall_names_at_most_the_cap_of_units() -> None:
    many = {f"orders/{index}": 1.0 for index in range(MAX_NAMED_UNITS * 3)}
    state = StallState()
    for moment in (0.0, 10.0):
        snapshot = ProgressSnapshot(taken_at=moment, consumed=dict.fromkeys(many, 5), lag=many)
        state = observe_stall(state, snapshot, pods_ready=True, stall_after=5.0)
    assert state.stalled
    assert len(state.units) == MAX_NAMED_UNITS


def test_a_snapshot_older_than_the_last_is_ignored() -> None:
    state = StallState()
    for moment in (10.0, 20.0):
        snapshot = ProgressSnapshot(taken_at=moment, consumed={"q": 5}, lag={"q": 1.0})
        state = observe_stall(state, snapshot, pods_ready=True, stall_after=5.0)
    late = ProgressSnapshot(taken_at=12.0, consumed={"q": 9}, lag={"q": 1.0})
    assert observe_stall(state, late, pods_ready=True, stall_after=5.0) == state
