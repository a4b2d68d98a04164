"""The cron trigger's settings: a daily (weekly, monthly...) window of desired replicas.

Schedules are 5-field cron expressions (minute hour day-of-month month day-of-week), as KEDA's
cron scaler parses them; they are checked here by the same parser that evaluates them
(``cronsim``, imported on first use: it is small and imports nothing else).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tidescale._values import parse_int
from tidescale.errors import HintError
from tidescale.sources._fields import FieldCollector, FieldDoc

__all__ = ["CRON_FIELDS", "MAX_DESIRED_REPLICAS", "CronSettings", "parse_cron_settings"]

MAX_DESIRED_REPLICAS = 10_000
_MAX_EXPRESSION = 256


@dataclass(frozen=True, kw_only=True, slots=True)
class CronSettings:
    """One cron trigger. Hashable."""

    name: str
    start: str = ""
    end: str = ""
    timezone: str = "UTC"
    desired_replicas: int = 1

    @property
    def cluster_key(self) -> tuple[object, ...]:
        """Every cron trigger shares one source: it only reads the clock."""
        return ("cron",)


def _parse_schedule(annotation: str, value: str) -> str:
    text = " ".join(value.split())
    expected = 'a 5-field cron expression (minute hour day-of-month month day-of-week), e.g. "0 8 * * 1-5"'
    if len(text) > _MAX_EXPRESSION or len(text.split(" ")) != 5:
        raise HintError(annotation, value[:64], expected)
    from datetime import UTC, datetime

    from cronsim import CronSim, CronSimError

    try:
        next(CronSim(text, datetime(2026, 1, 1, tzinfo=UTC)))
    except (CronSimError, StopIteration, ValueError) as exc:
        raise HintError(annotation, value, f"{expected}; {exc or 'it never fires'}") from exc
    return text


def _parse_timezone(annotation: str, value: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    text = value.strip()
    try:
        if not text or len(text) > 64 or ".." in text or text.startswith("/"):
            raise ValueError(text)
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise HintError(annotation, value, 'an IANA time zone name, e.g. "Europe/Berlin" or "UTC"') from exc
    return text


def _parse_desired(annotation: str, value: str) -> int:
    return parse_int(annotation, value, minimum=1, maximum=MAX_DESIRED_REPLICAS)


CRON_FIELDS: tuple[FieldDoc, ...] = (
    FieldDoc(
        field="start",
        type="cron expression (5 fields)",
        default=None,
        meaning="When the window opens (required).",
        example="0 8 * * 1-5",
    ),
    FieldDoc(
        field="end",
        type="cron expression (5 fields)",
        default=None,
        meaning="When the window closes (required, not the same as start). Inside the window means the "
        "next end comes before (or with) the next start, as KEDA decides it.",
        example="0 18 * * 1-5",
    ),
    FieldDoc(
        field="timezone",
        type="IANA time zone",
        default="UTC",
        meaning="The time zone the expressions are read in. Across a daylight-saving change a time that "
        "does not exist fires at the first minute after the jump, and a repeated time fires once, as "
        "Debian's cron does.",
        example="Europe/Berlin",
    ),
    FieldDoc(
        field="desired-replicas",
        type=f"whole number 1-{MAX_DESIRED_REPLICAS}",
        default=None,
        meaning="Replicas inside the window (required); outside, the trigger asks for none and is inactive.",
        example="5",
    ),
)


def parse_cron_settings(trigger: str, raw: Mapping[str, str]) -> CronSettings:
    """``raw`` maps field names (no prefix) to strings; raises HintsInvalid listing every problem."""
    fields = FieldCollector(trigger, raw, (doc.field for doc in CRON_FIELDS), kind="cron")
    settings = CronSettings(
        name=trigger,
        start=fields.require("start", _parse_schedule, ""),
        end=fields.require("end", _parse_schedule, ""),
        timezone=fields.get("timezone", _parse_timezone, "UTC"),
        desired_replicas=fields.require("desired-replicas", _parse_desired, 1),
    )
    if settings.start and settings.start == settings.end:
        fields.problem("end", "a schedule different from start (the window would be empty)")
    fields.finish()
    return settings
