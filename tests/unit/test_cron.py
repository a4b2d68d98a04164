"""Cron: the settings parser and the window rule against a fake clock (midnight, weekdays, DST)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidescale.errors import HintsInvalid
from tidescale.sources.base import Scope
from tidescale.sources.cron._settings import CronSettings, parse_cron_settings
from tidescale.sources.cron._source import CronSource
from tidescale.sources.cron._window import cron_measurement, inside_window

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def _window(start: str, end: str, timezone: str = "UTC", replicas: int = 4) -> CronSettings:
    raw = {"start": start, "end": end, "timezone": timezone, "desired-replicas": str(replicas)}
    return parse_cron_settings("cron", raw)


def _problems(raw: dict[str, str]) -> dict[str, str]:
    with pytest.raises(HintsInvalid) as caught:
        parse_cron_settings("jobs", raw)
    return {p.annotation: str(p) for p in caught.value.problems}


# -- settings ---------------------------------------------------------------------------------------


def test_the_timezone_defaults_to_utc_and_blanks_in_expressions_are_normalised() -> None:
    s = parse_cron_settings("c", {"start": "0  8 * * 1-5", "end": "0 18 * * 1-5", "desired-replicas": "3"})
    assert (s.start, s.end, s.timezone, s.desired_replicas) == ("0 8 * * 1-5", "0 18 * * 1-5", "UTC", 3)


@pytest.mark.parametrize(
    ("raw", "annotation", "words"),
    [
        ({"end": "0 9 * * *", "desired-replicas": "2"}, "start", "required"),
        ({"start": "0 8 * * *", "end": "0 9 * * *"}, "desired-replicas", "required"),
        ({"start": "0 8 * *", "end": "0 9 * * *", "desired-replicas": "2"}, "start", "5-field cron"),
        ({"start": "0 0 8 * * *", "end": "0 9 * * *", "desired-replicas": "2"}, "start", "5-field cron"),
        ({"start": "@daily", "end": "0 9 * * *", "desired-replicas": "2"}, "start", "5-field cron"),
        ({"start": "61 8 * * *", "end": "0 9 * * *", "desired-replicas": "2"}, "start", "5-field cron"),
        ({"start": "0 8 31 2 *", "end": "0 9 * * *", "desired-replicas": "2"}, "start", "5-field cron"),
        ({"start": "0 8 * * *", "end": "0  8 * * *", "desired-replicas": "2"}, "end", "different from start"),
        ({"start": "0 8 * * *", "end": "0 9 * * *", "desired-replicas": "0"}, "desired-replicas", "1 to"),
        (
            {"start": "0 8 * * *", "end": "0 9 * * *", "desired-replicas": "2", "timezone": "Mars/Base"},
            "timezone",
            "IANA time zone",
        ),
        (
            {
                "start": "0 8 * * *",
                "end": "0 9 * * *",
                "desired-replicas": "2",
                "timezone": "../../etc/passwd",
            },
            "timezone",
            "IANA time zone",
        ),
        (
            {"start": "0 8 * * *", "end": "0 9 * * *", "desiredReplicas": "2"},
            "desiredReplicas",
            "known field",
        ),
    ],
)
def test_a_bad_field_is_named_with_what_was_expected(
    raw: dict[str, str], annotation: str, words: str
) -> None:
    assert words in _problems(raw)[f"tidescale.io/jobs.{annotation}"]


# -- the window -------------------------------------------------------------------------------------


def _cyclic_inside(minute: int, start: int, end: int) -> bool:
    """Minute of the day inside [start, end), wrapping past midnight when end < start."""
    return start <= minute < end if start < end else minute >= start or minute < end


def _daily(minute_of_day: int) -> str:
    return f"{minute_of_day % 60} {minute_of_day // 60} * * *"


_instants = st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31))


@given(_instants, st.integers(0, 1439), st.integers(0, 1439))
def test_a_daily_utc_window_holds_from_its_start_minute_to_just_before_its_end_across_midnight(
    moment: datetime, start: int, end: int
) -> None:
    if start == end:
        return
    now = moment.replace(tzinfo=UTC)
    settings = _window(_daily(start), _daily(end))
    m = cron_measurement(settings, now, 0.0)
    expected = _cyclic_inside(now.hour * 60 + now.minute, start, end)
    assert (m.active, m.value, m.target) == (expected, 4.0 if expected else 0.0, 1.0)


# Local times from 01:00 to 03:59 are where clocks jump in Europe and America; a window whose
# boundaries avoid them is a plain wall-clock window on every day, the change days included.
_calm_minutes = st.integers(0, 1439).filter(lambda m: not 60 <= m < 240)


@given(_instants, _calm_minutes, _calm_minutes, st.sampled_from(["Europe/Berlin", "America/New_York"]))
def test_a_window_away_from_the_clock_change_hours_follows_local_wall_clock_time_all_year(
    moment: datetime, start: int, end: int, zone: str
) -> None:
    if start == end:
        return
    now = moment.replace(tzinfo=UTC)
    local = now.astimezone(ZoneInfo(zone))
    expected = _cyclic_inside(local.hour * 60 + local.minute, start, end)
    assert inside_window(_window(_daily(start), _daily(end), zone), now) == expected


def test_a_window_ending_at_a_time_the_spring_change_skips_closes_at_the_first_minute_after_it() -> None:
    # Berlin, 29 March 2026: 02:00 becomes 03:00. The window 01:30-02:30 closes at 03:00 that night.
    settings = _window("30 1 * * *", "30 2 * * *", "Europe/Berlin")
    assert inside_window(settings, datetime(2026, 3, 29, 1, 45, tzinfo=BERLIN))
    assert inside_window(settings, datetime(2026, 3, 29, 0, 59, tzinfo=UTC))  # 01:59 CET
    assert not inside_window(settings, datetime(2026, 3, 29, 3, 0, tzinfo=BERLIN))
    assert not inside_window(settings, datetime(2026, 3, 29, 3, 10, tzinfo=BERLIN))


def test_a_window_over_the_autumn_change_lasts_its_wall_clock_span_plus_the_repeated_hour() -> None:
    # New York, 1 November 2026: 02:00 EDT becomes 01:00 EST. 00:30-03:30 is open for four hours.
    settings = _window("30 0 * * *", "30 3 * * *", "America/New_York")
    opened = datetime(2026, 11, 1, 4, 30, tzinfo=UTC)  # 00:30 EDT
    inside = [inside_window(settings, opened + timedelta(minutes=m)) for m in range(0, 300, 10)]
    assert inside == [m < 240 for m in range(0, 300, 10)]


def test_a_weekday_window_is_closed_over_the_weekend() -> None:
    settings = _window("0 9 * * 1-5", "0 17 * * 1-5")
    friday, saturday, monday = (datetime(2026, 12, d, 12, 0, tzinfo=UTC) for d in (4, 5, 7))
    assert inside_window(settings, friday)
    assert not inside_window(settings, saturday)
    assert inside_window(settings, monday)
    assert not inside_window(settings, monday.replace(hour=17))


async def test_the_source_reads_its_clock_once_per_batch_and_knows_no_scope() -> None:
    readings: list[datetime] = []

    def clock() -> datetime:
        readings.append(datetime(2026, 12, 2, 10, 0, tzinfo=UTC))
        return readings[-1]

    source = CronSource(clock=clock)
    inside, outside = _window("0 9 * * *", "0 11 * * *", replicas=6), _window("0 12 * * *", "0 13 * * *")
    found = await source.measure_many([inside, outside, inside])
    assert (found[inside].value, found[outside].value) == (6.0, 0.0)  # type: ignore[union-attr]
    assert len(readings) == 1
    assert (await source.measure(inside, Scope.LOCAL)).active
