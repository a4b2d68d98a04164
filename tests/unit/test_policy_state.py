"""The policy state annotation: a new leader that restores it decides as the old one would have,
the annotation stays small, and anything hostile is refused whole (the leader starts empty)."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidescale._policy_state import (
    MAX_ITEMS,
    MAX_STATE_BYTES,
    POLICY_STATE_ANNOTATION,
    PolicyStateInvalid,
    decode,
    encode,
    restore,
)
from tidescale.hints import Hints, parse_hints
from tidescale.policy import History, Recommendation, decide
from tidescale.sources.base import Measurement

from .test_policy_properties import Reading, hints_strategy, readings

P = "tidescale.io/"
WALL = 1_800_000_000.0


def kafka_hints(**knobs: str) -> Hints:
    annotations = {
        P + "orders.type": "kafka",
        P + "orders.bootstrap-servers": "kafka:9092",
        P + "orders.consumer-group": "billing",
        P + "orders.topic": "orders",
    }
    annotations.update({P + name.replace("_", "-"): value for name, value in knobs.items()})
    return parse_hints(annotations)


def lag(value: float, at: float, active: bool = True) -> Measurement:
    return Measurement(trigger="orders", value=value, target=100, active=active, taken_at=at)


def failover(history: History, hints: Hints, *, old_now: float, new_now: float, gap: float = 0.0) -> History:
    """The old leader writes at ``old_now``; a new one (another clock) restores ``gap`` s later."""
    text = encode(history, hints=hints, now=old_now, wall=WALL)
    return restore({POLICY_STATE_ANNOTATION: text}, hints=hints, now=new_now, wall=WALL + gap)


def test_a_new_leader_does_not_scale_down_before_the_old_leaders_window_ends() -> None:
    hints = kafka_hints(scale_down_stabilization="60s")
    history, current = History(), 6
    for t, value in ((0, 600), (30, 200)):
        decision = decide([lag(value, t)], current=current, hints=hints, now=t, history=history)
        history, current = decision.history, decision.desired
    assert current == 6
    # A new leader, its monotonic clock 5000 s ahead, takes over 10 s later.
    restored = failover(history, hints, old_now=30, new_now=5040, gap=10)
    assert decide([lag(200, 5040)], current=6, hints=hints, now=5040, history=restored).desired == 6
    assert decide([lag(200, 5061)], current=6, hints=hints, now=5061, history=restored).desired == 2
    fresh = decide([lag(200, 5040)], current=6, hints=hints, now=5040, history=History())
    assert fresh.desired == 6  # an empty history holds by its own seed: the state is what ends it at t61


def test_a_new_leader_keeps_the_cooldown_running() -> None:
    hints = kafka_hints(min_replicas="0", cooldown="120s")
    decision = decide([lag(50, 0)], current=1, hints=hints, now=0, history=History())
    idle = decide([lag(0, 40, active=False)], current=1, hints=hints, now=40, history=decision.history)
    # The old leader's last write came after the turn to idle (a change it writes at once).
    restored = failover(idle.history, hints, old_now=40, new_now=900, gap=30)
    assert restored.last_active == 830
    quiet = decide([lag(0, 950, active=False)], current=1, hints=hints, now=950, history=restored)
    assert quiet.wants_zero is False
    later = decide([lag(0, 951, active=False)], current=1, hints=hints, now=951, history=restored)
    assert later.wants_zero is True


def test_a_state_written_while_active_counts_the_old_leader_active_until_a_lease_duration_ago() -> None:
    hints = kafka_hints(min_replicas="0", cooldown="120s", lease_duration="15s")
    decision = decide([lag(50, 0)], current=1, hints=hints, now=0, history=History())
    # Written at its last active tick; the old leader then lived on (its later heartbeat is lost).
    restored = failover(decision.history, hints, old_now=0, new_now=900, gap=30)
    assert restored.last_active == 885


def test_a_writer_whose_wall_clock_runs_behind_does_not_age_the_state_beyond_what_the_reader_saw() -> None:
    hints = kafka_hints(min_replicas="0", cooldown="120s")
    decision = decide([lag(50, 0)], current=1, hints=hints, now=0, history=History())
    idle = decide([lag(0, 40, active=False)], current=1, hints=hints, now=40, history=decision.history)
    text = encode(idle.history, hints=hints, now=40, wall=WALL)
    # Written 10 s ago by a clock 50 s behind the reader's: the wall clocks say 60 s.
    annotations = {POLICY_STATE_ANNOTATION: text}
    skewed = restore(annotations, hints=hints, now=900, wall=WALL + 60)
    seen = restore(annotations, hints=hints, now=900, wall=WALL + 60, observed_ago=10)
    assert skewed.last_active == 800  # 50 s too early: it would park 50 s before the cooldown ends
    assert seen.last_active == 850
    ahead = restore(annotations, hints=hints, now=900, wall=WALL - 60, observed_ago=10)
    assert ahead.last_active == 860  # a writer ahead of the reader: as if written just now


def test_a_state_older_than_the_cooldown_restarts_last_active() -> None:
    hints = kafka_hints(min_replicas="0", cooldown="60s")
    decision = decide([lag(50, 0)], current=1, hints=hints, now=0, history=History())
    restored = failover(decision.history, hints, old_now=0, new_now=500, gap=3600)
    assert restored.last_active == 500


def test_failure_counts_survive_a_failover() -> None:
    hints = kafka_hints(fallback_failure_threshold="5", fallback_replicas="3")
    history = History(seeded=True)
    for t in range(3):  # no measurement at all is a failure
        history = decide([], current=1, hints=hints, now=t, history=history).history
    restored = failover(history, hints, old_now=2, new_now=100)
    assert restored.failures_of("orders") == 3


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        '{"v": 2}',
        '{"v":1,"w":0,"r":[],"u":[],"d":[],"f":[],"a":null,"x":1}',
        '{"v":1,"w":0,"r":[[0,-1]],"u":[],"d":[],"f":[],"a":null}',
        '{"v":1,"w":0,"r":[[0,true]],"u":[],"d":[],"f":[],"a":null}',
        '{"v":1,"w":0,"r":[],"u":[[0,0,0]],"d":[],"f":[],"a":null}',
        '{"v":1,"w":0,"r":[],"u":[],"d":[],"f":[["Bad Name",1,0]],"a":null}',
        '{"v":1,"w":"now","r":[],"u":[],"d":[],"f":[],"a":null}',
        '{"v":1,"w":0,"r":' + json.dumps([[0, 1]] * (MAX_ITEMS + 1)) + ',"u":[],"d":[],"f":[],"a":null}',
        "x" * (MAX_STATE_BYTES + 1),
    ],
)
def test_a_hostile_state_is_refused_and_the_leader_starts_empty(
    text: str, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(PolicyStateInvalid):
        decode(text, now=0, wall=WALL)
    with caplog.at_level(logging.WARNING, logger="tidescale.policy"):
        assert restore({POLICY_STATE_ANNOTATION: text}, hints=Hints(), now=0, wall=WALL) == History()
    assert POLICY_STATE_ANNOTATION in caplog.text


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=300)
    | st.recursive(
        st.none() | st.integers() | st.text(max_size=5),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=2), c, max_size=8),
    ).map(json.dumps)
)
def test_no_input_makes_restore_raise(text: str) -> None:
    restored = restore({POLICY_STATE_ANNOTATION: text}, hints=Hints(), now=0, wall=WALL)
    assert isinstance(restored, History)


@settings(max_examples=150, deadline=None)
@given(
    hints_strategy(allow_pause=False),
    st.integers(1, 30),
    st.lists(st.tuples(st.sampled_from([1, 5, 15, 30, 61]), st.tuples(readings, readings)), max_size=25),
    st.integers(0, 25),
)
def test_a_restored_leader_decides_exactly_as_the_old_one_would_have(
    hints: Hints, start: int, plan: list[tuple[int, tuple[Reading, Reading]]], cut: int
) -> None:
    current, history, now = start, History(), 1000
    shadow: History | None = None  # the new leader's history, on a clock 7000 s ahead
    for index, (dt, pair) in enumerate(plan):
        now += dt
        taken = [r.at(t.name, now) for t, r in zip(hints.triggers, pair, strict=False)]
        old = decide(taken, current=current, hints=hints, now=now, history=history)
        if index == cut:
            shadow = failover(old.history, hints, old_now=now, new_now=now + 7000)
        elif shadow is not None:
            moved = [r.at(t.name, now + 7000) for t, r in zip(hints.triggers, pair, strict=False)]
            new = decide(moved, current=current, hints=hints, now=now + 7000, history=shadow)
            assert (new.desired, new.wants_zero) == (old.desired, old.wants_zero), (old, new)
            shadow = new.history
        current, history = old.desired, old.history
        size = len(encode(history, hints=hints, now=now, wall=WALL))
        assert size <= MAX_STATE_BYTES


def test_the_state_keeps_one_entry_per_distinct_count_in_a_long_window() -> None:
    hints = kafka_hints(scale_down_stabilization="1h", scale_up_stabilization="1h")
    history = History(
        recommendations=tuple(Recommendation(at=float(t), replicas=t % 7) for t in range(3600)), seeded=True
    )
    body = json.loads(encode(history, hints=hints, now=3600, wall=WALL))
    assert len(body["r"]) <= 2 * 7
