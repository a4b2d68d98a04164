"""The hint value parsers: what each accepts, and that each refusal names annotation, value and form."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidescale._values import (
    format_duration,
    parse_bool,
    parse_choice,
    parse_duration,
    parse_float,
    parse_int,
    parse_list,
    parse_ranges,
)
from tidescale.errors import HintError

A = "tidescale.io/x"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1m30s", 90), ("250ms", 0.25), ("1h", 3600), (" 2h ", 7200), ("1.5s", 1.5)],
)
def test_durations_carry_a_unit(text: str, seconds: float) -> None:
    assert parse_duration(A, text) == seconds


@pytest.mark.parametrize("text", ["30", "", "5 m", "m", "1d", "-5s", "5s5", "s5", "1m 30s", "25h"])
def test_a_duration_without_a_known_unit_or_out_of_range_is_refused(text: str) -> None:
    with pytest.raises(HintError) as raised:
        parse_duration(A, text)
    assert (raised.value.annotation, raised.value.value) == (A, text)
    assert "from 0s to 24h" in raised.value.expected


def test_a_duration_below_its_minimum_is_refused() -> None:
    with pytest.raises(HintError, match="from 100ms to 1h"):
        parse_duration(A, "10ms", minimum=0.1, maximum=3600)


@given(st.floats(0, 86400).map(lambda s: round(s, 3)))
@settings(max_examples=200)
def test_a_printed_duration_parses_back_to_itself(seconds: float) -> None:
    assert parse_duration(A, format_duration(seconds)) == pytest.approx(seconds, abs=1e-6)


def test_integers_are_whole_and_within_their_range() -> None:
    assert parse_int(A, " 7 ") == 7
    assert parse_int(A, "+3", minimum=1) == 3
    for text in ("2.5", "", "seven", "1e3", "-1"):
        with pytest.raises(HintError, match="whole number from 0 to 1000000"):
            parse_int(A, text)
    with pytest.raises(HintError, match="from 1 to 5"):
        parse_int(A, "6", minimum=1, maximum=5)


def test_floats_are_finite_and_within_their_range() -> None:
    assert parse_float(A, "0.5") == 0.5
    assert parse_float(A, "0", minimum=0) == 0
    for text in ("nan", "inf", "-inf", "1e999", "x", ""):
        with pytest.raises(HintError):
            parse_float(A, text)
    with pytest.raises(HintError, match="above 0"):
        parse_float(A, "0", exclusive_minimum=True)


def test_booleans_take_the_usual_spellings_and_nothing_else() -> None:
    assert [parse_bool(A, t) for t in ("true", "True", "yes", "on", "1")] == [True] * 5
    assert [parse_bool(A, t) for t in ("false", "FALSE", "no", "off", "0")] == [False] * 5
    with pytest.raises(HintError, match='"true" or "false"'):
        parse_bool(A, "sure")


def test_a_choice_is_case_insensitive_and_canonical() -> None:
    assert parse_choice(A, " Max ", ("max", "min")) == "max"
    with pytest.raises(HintError, match='one of "max", "min"'):
        parse_choice(A, "most", ("max", "min"))


def test_lists_are_comma_separated_without_empty_items() -> None:
    assert parse_list(A, "a, b ,c") == ("a", "b", "c")
    for text in ("", " ", "a,,b", "a,"):
        with pytest.raises(HintError, match="no empty items"):
            parse_list(A, text)


def test_ranges_are_numbers_and_inclusive_spans() -> None:
    assert parse_ranges(A, "1,2,10-12") == frozenset({1, 2, 10, 11, 12})
    assert parse_ranges(A, "3 - 4") == frozenset({3, 4})
    for text in ("5-3", "a", "1-", "-1"):
        with pytest.raises(HintError, match="ranges"):
            parse_ranges(A, text)


@given(st.text(max_size=20))
@settings(max_examples=200)
def test_no_parser_raises_anything_but_a_hint_error(text: str) -> None:
    parsers = [
        lambda: parse_duration(A, text),
        lambda: parse_int(A, text),
        lambda: parse_float(A, text),
        lambda: parse_bool(A, text),
        lambda: parse_choice(A, text, ("a", "b")),
        lambda: parse_list(A, text),
        lambda: parse_ranges(A, text),
    ]
    refusals = []
    for parse in parsers:
        try:
            parse()
        except HintError as exc:
            refusals.append(exc)
    assert all((r.annotation, r.value) == (A, text) for r in refusals)
