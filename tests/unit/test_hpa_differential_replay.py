"""The HPA differential test's pure parts: its scenarios, its grid, its replay (no rig)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.integration._hpa_replay import Recording, Write, replay, steps_of
from tests.integration._hpa_scenarios import (
    MIN_MARGIN,
    NAMED,
    Metric,
    Scenario,
    check_timing,
    generate,
    hints_annotations,
)
from tests.rig.metrics_server import GRID, Query, grid_margin
from tidescale.hints import parse_hints

LEGACY = Scenario(
    name="legacy",
    title="legacy path from 1",
    min_replicas=1,
    max_replicas=30,
    spec=1,
    metrics=(Metric(target=100, values=(4000,) * 6),),
)


def _queries(scenario: Scenario, specs: list[int], *, origin: float = 1000.0) -> list[Query]:
    """The queries an HPA that read ``specs`` (one per tick) would have made, one per grid point."""
    return [
        Query(
            hpa=scenario.name,
            metric=0,
            tick=tick,
            arrived=origin + tick * GRID - 0.5,
            answered=origin + tick * GRID,
            status_replicas=specs[tick - 1] if tick else spec,
            value=scenario.metrics[0].values[min(tick, len(scenario.metrics[0].values) - 1)],
            selector=f"scenario={scenario.name}",
            user="system:serviceaccount:kube-system:horizontal-pod-autoscaler",
        )
        for tick, spec in enumerate(specs)
    ]


def _writes(specs: list[int], *, origin: float = 1000.0) -> list[Write]:
    return [
        Write(at=origin + tick * GRID + 0.02, replicas=after)
        for tick, (before, after) in enumerate(itertools.pairwise(specs))
        if after != before
    ]


def test_every_scenario_keeps_its_windows_and_periods_clear_of_the_grid() -> None:
    for scenario in NAMED + generate(12, 300):
        check_timing(scenario)
        assert all(w == 0 or grid_margin(w) > MIN_MARGIN - 1e-9 for w in scenario.seconds()), scenario.name


def test_a_window_on_a_multiple_of_the_grid_is_refused() -> None:
    scenario = replace(LEGACY, name="bad", behavior=None)
    check_timing(scenario)
    from tests.integration._hpa_scenarios import Behavior, Rules

    bad = replace(scenario, behavior=Behavior(down=Rules(window=8)))
    with pytest.raises(ValueError, match=r"windows/periods \[8\] s"):
        check_timing(bad)


@given(st.integers(min_value=1, max_value=500))
def test_a_multiple_of_the_grid_has_no_margin_and_nothing_has_more_than_half_a_step(steps: int) -> None:
    assert grid_margin(steps * GRID) < 1e-9
    assert grid_margin(steps * GRID + 0.3) <= GRID / 2


def test_the_generator_gives_the_same_scenarios_for_the_same_seed_and_others_for_another() -> None:
    assert generate(5, 20) == generate(5, 20)
    assert generate(5, 20) != generate(6, 20)


def test_every_scenario_maps_to_hints_that_parse() -> None:
    for scenario in NAMED + generate(12, 300):
        hints = parse_hints(hints_annotations(scenario))
        assert hints.behavior == (scenario.behavior is not None), scenario.name
        assert len(hints.triggers) == len(scenario.metrics)


def test_a_recording_of_what_decide_would_write_replays_as_the_same() -> None:
    specs = [1, 4, 8, 16, 30, 30, 30]
    outcome = replay(Recording(scenario=LEGACY, queries=_queries(LEGACY, specs), writes=_writes(specs)))
    assert outcome.problems == []
    assert outcome.hpa == [4, 8, 16, 30, 30, 30]
    assert outcome.passed, outcome.explain()


def test_a_recording_where_the_hpa_wrote_otherwise_replays_as_a_difference_naming_the_step() -> None:
    specs = [1, 5, 10, 20, 30, 30, 30]
    outcome = replay(Recording(scenario=LEGACY, queries=_queries(LEGACY, specs), writes=_writes(specs)))
    assert not outcome.passed
    assert outcome.first_divergence() == 0
    assert "decide gave 4 where the HPA wrote 5 at step 0" in outcome.explain()


def test_a_write_before_the_first_query_is_a_clamp_step_read_without_metrics() -> None:
    scenario = replace(LEGACY, name="below-min", min_replicas=3, spec=1)
    specs = [3, 6, 12, 24, 30, 30, 30]
    writes = [Write(at=990.0, replicas=3), *_writes(specs)]
    steps, problems = steps_of(Recording(scenario=scenario, queries=_queries(scenario, specs), writes=writes))
    assert problems == []
    assert (steps[0].kind, steps[0].current, steps[0].wrote) == ("clamp", 1, 3)
    assert [s.wrote for s in steps[1:]] == [6, 12, 24, 30, 30, 30]


def test_two_writes_in_one_sync_make_the_recording_unreplayable() -> None:
    specs = [1, 4, 8, 16, 30, 30, 30]
    writes = [*_writes(specs)[:2], Write(at=1000 + 2 * GRID + 0.5, replicas=9), *_writes(specs)[2:]]
    _, problems = steps_of(Recording(scenario=LEGACY, queries=_queries(LEGACY, specs), writes=writes))
    assert any("in one sync" in p for p in problems)


def test_decisions_a_window_apart_give_or_take_the_margin_make_the_recording_unreplayable() -> None:
    from tests.integration._hpa_scenarios import Behavior, Rules

    scenario = replace(LEGACY, name="windowed", behavior=Behavior(down=Rules(window=10)))
    specs = [1, 4, 8, 16, 30, 30, 30]
    queries = _queries(scenario, specs)
    # The rig fell behind: the fifth answer went out 10.05 s after the first.
    queries[4] = replace(queries[4], answered=queries[0].answered + 10.05)
    _, problems = steps_of(Recording(scenario=scenario, queries=queries, writes=_writes(specs)))
    assert any("an age of 10.050-10.050 s compared with 10 s" in p for p in problems)


def test_a_recording_that_stops_short_of_the_scenario_is_unreplayable() -> None:
    specs = [1, 4, 8]
    _, problems = steps_of(Recording(scenario=LEGACY, queries=_queries(LEGACY, specs), writes=_writes(specs)))
    assert any("short of 6" in p for p in problems)


def test_a_write_long_after_its_answer_makes_a_period_ambiguous() -> None:
    from tests.integration._hpa_scenarios import Behavior, Policy, Rules

    up = Rules(policies=(Policy(kind="Pods", value=4, period=15),))
    scenario = replace(
        LEGACY,
        name="slow-write",
        behavior=Behavior(up=up),
        metrics=(Metric(target=100, values=(4000,) * 12),),
    )
    specs = [1, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 9, 9]
    writes = _writes(specs)
    # The starved controller wrote (and stamped its scale event) 0.9 s after the answer:
    # at tick 10 (16 s) the event may be 15.1 s old or, on the controller's clock, 14.9 s.
    writes[0] = Write(at=writes[0].at + 0.9, replicas=writes[0].replicas)
    _, problems = steps_of(Recording(scenario=scenario, queries=_queries(scenario, specs), writes=writes))
    assert any("compared with 15 s" in p for p in problems)


def test_a_first_scale_read_long_before_the_first_answer_makes_an_up_window_ambiguous() -> None:
    from tests.integration._hpa_scenarios import Behavior, Rules

    scenario = replace(LEGACY, name="slow-first-sync", behavior=Behavior(up=Rules(window=2)))
    specs = [4, 8, 8, 8, 8, 8, 8]
    # The HPA took its first recommendation (the current count) when it read the scale,
    # 0.5 s before its first query was answered: at the second sync, 1.6 s later on the
    # server's clock, that recommendation may be more than 2 s old on the controller's.
    recording = Recording(
        scenario=scenario, queries=_queries(scenario, specs), writes=_writes(specs), reads=[999.5]
    )
    _, problems = steps_of(recording)
    assert any("compared with 2 s" in p for p in problems)
    recording.reads = [999.99]
    _, problems = steps_of(recording)
    assert problems == []
