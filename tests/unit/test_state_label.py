"""``heldBy`` in the status annotation and the ``tidescale.io/state`` label, from real decisions."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from tidescale._state import STATES, held_by, holds_count, state_of
from tidescale.agent import status_annotation
from tidescale.hints import Hints, parse_hints
from tidescale.policy import Decision, History, decide
from tidescale.sources.base import Measurement, MeasurementFailure

P = "tidescale.io/"
WALL = datetime(2026, 12, 2, 5, 0, 0, tzinfo=UTC)


def hints(**knobs: str) -> Hints:
    annotations = {
        P + "orders.type": "kafka",
        P + "orders.bootstrap-servers": "kafka:9092",
        P + "orders.consumer-group": "billing",
        P + "orders.topic": "orders",
    }
    annotations.update({P + name.replace("_", "-"): value for name, value in knobs.items()})
    return parse_hints(annotations)


def lag(value: float, at: float) -> Measurement:
    return Measurement(trigger="orders", value=value, target=100, active=value > 0, taken_at=at)


def held_down_by_window() -> tuple[Hints, Decision]:
    """At 4 replicas for lag 400 at t=0, then lag 100 at t=10 inside a 60 s down window."""
    h = hints(scale_down_stabilization="60s", min_replicas="1")
    first = decide([lag(400, 0)], current=4, hints=h, now=0.0, history=History())
    second = decide([lag(100, 10)], current=first.desired, hints=h, now=10.0, history=first.history)
    return h, second


def test_a_count_held_by_the_down_window_says_window_and_until_the_high_recommendation_leaves_it() -> None:
    h, decision = held_down_by_window()
    assert decision.desired == 4
    held = held_by(decision, h, now=10.0, wall=WALL)
    assert held is not None
    assert held["kind"] == "window"
    assert "scale-down stabilization" in held["by"]
    # The recommendation of 4 was made at t=0: it leaves the 60 s window at t=60, 50 s after now.
    assert held["until"] == "2026-12-02T05:00:50Z"


def test_a_free_decision_is_held_by_nothing_and_its_state_is_scaling() -> None:
    h = hints(min_replicas="1")
    decision = decide([lag(400, 0)], current=2, hints=h, now=0.0, history=History())
    assert decision.capped_by is None
    assert held_by(decision, h, now=0.0, wall=WALL) is None
    state = state_of(
        hints_valid=True,
        readings=[lag(400, 0)],
        decision=decision,
        current=2,
        ready=2,
        parking=False,
        previous=None,
    )
    assert state == "scaling"


def test_a_count_held_by_a_window_is_in_the_holding_state() -> None:
    _, decision = held_down_by_window()
    state = state_of(
        hints_valid=True,
        readings=[lag(100, 10)],
        decision=decision,
        current=4,
        ready=4,
        parking=False,
        previous="scaling",
    )
    assert state == "holding"


def test_a_count_held_for_a_single_poll_is_still_scaling_and_holding_starts_at_the_second() -> None:
    _, decision = held_down_by_window()
    assert holds_count(decision, 4)
    args = {"hints_valid": True, "readings": [lag(100, 10)], "decision": decision, "current": 4, "ready": 4}
    first = state_of(**args, parking=False, previous="scaling", held_last_tick=False)  # type: ignore[arg-type]
    second = state_of(**args, parking=False, previous=first, held_last_tick=True)  # type: ignore[arg-type]
    assert (first, second) == ("scaling", "holding")


def test_every_trigger_failing_or_broken_hints_is_the_error_state() -> None:
    failing = MeasurementFailure(trigger="orders", error="unreachable", taken_at=0.0)
    args = {"decision": None, "current": 2, "ready": 2, "parking": False, "previous": "scaling"}
    assert state_of(hints_valid=True, readings=[failing], **args) == "error"  # type: ignore[arg-type]
    assert state_of(hints_valid=False, readings=[lag(1, 0)], **args) == "error"  # type: ignore[arg-type]


def test_a_park_under_way_is_parked_and_the_first_ticks_after_it_are_waking_until_a_pod_is_ready() -> None:
    base = {"hints_valid": True, "readings": [lag(0, 0)], "decision": None, "current": 1}
    assert state_of(**base, ready=1, parking=True, previous="scaling") == "parked"  # type: ignore[arg-type]
    assert state_of(**base, ready=0, parking=False, previous="parked") == "waking"  # type: ignore[arg-type]
    assert state_of(**base, ready=1, parking=False, previous="waking") == "scaling"  # type: ignore[arg-type]


def test_the_status_annotation_carries_held_by_and_updated_at() -> None:
    h, decision = held_down_by_window()
    status = status_annotation(
        leader="p-0",
        term=1,
        current=4,
        desired=4,
        readings=[lag(100, 10)],
        last_change=None,
        pods={},
        dry_run=False,
        held_by=held_by(decision, h, now=10.0, wall=WALL),
        updated_at="2026-12-02T05:00:00Z",
    )
    assert status["updatedAt"] == "2026-12-02T05:00:00Z"
    assert status["heldBy"]["kind"] == "window"


@given(
    hints_valid=st.booleans(),
    failing=st.booleans(),
    current=st.integers(0, 50),
    ready=st.none() | st.integers(0, 50),
    parking=st.booleans(),
    previous=st.none() | st.sampled_from(STATES),
)
def test_the_state_is_always_one_of_the_five_label_values(
    hints_valid: bool, failing: bool, current: int, ready: int | None, parking: bool, previous: str | None
) -> None:
    reading = MeasurementFailure(trigger="orders", error="x", taken_at=0.0) if failing else lag(5, 0)
    state = state_of(
        hints_valid=hints_valid,
        readings=[reading],
        decision=None,
        current=current,
        ready=ready,
        parking=parking,
        previous=previous,
    )
    assert state in STATES
