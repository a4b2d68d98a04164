"""Parsers for the values of hint annotations: durations, counts, flags, choices, lists.

Each takes the full annotation name (for the message) and the string given, and
returns the typed value or raises :class:`~tidescale.errors.HintError` naming the
annotation, the value and the form expected. Pure; shared by ``hints`` and the
sources' settings parsers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from tidescale.errors import HintError

__all__ = [
    "format_duration",
    "parse_bool",
    "parse_choice",
    "parse_duration",
    "parse_float",
    "parse_int",
    "parse_list",
    "parse_ranges",
]

_DURATION = re.compile(r"(?P<number>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def parse_duration(annotation: str, value: str, *, minimum: float = 0.0, maximum: float = 86400.0) -> float:
    """``"30s"``, ``"5m"``, ``"1m30s"``, ``"250ms"`` -> seconds. A bare number is refused:
    ``"30"`` could mean seconds or minutes, and a guess would be wrong half the time."""
    text = value.strip()
    expected = (
        f'a duration such as "30s", "5m" or "1m30s" from {format_duration(minimum)} '
        f"to {format_duration(maximum)}"
    )
    position, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != position:
            break
        total += float(match["number"]) * _UNIT_SECONDS[match["unit"]]
        position = match.end()
    if not text or position != len(text) or not (minimum <= total <= maximum):
        raise HintError(annotation, value, expected)
    return total


def parse_int(annotation: str, value: str, *, minimum: int = 0, maximum: int = 1_000_000) -> int:
    text = value.strip()
    if not re.fullmatch(r"[+-]?\d+", text) or not (minimum <= int(text) <= maximum):
        raise HintError(annotation, value, f"a whole number from {minimum} to {maximum}")
    return int(text)


def parse_float(
    annotation: str,
    value: str,
    *,
    minimum: float = 0.0,
    maximum: float = 1e15,
    exclusive_minimum: bool = False,
) -> float:
    low = f"above {_fmt(minimum)}" if exclusive_minimum else f"from {_fmt(minimum)}"
    expected = f"a number {low} to {_fmt(maximum)}"
    try:
        number = float(value.strip())
    except ValueError as exc:
        raise HintError(annotation, value, expected) from exc
    too_low = number <= minimum if exclusive_minimum else number < minimum
    if not math.isfinite(number) or too_low or number > maximum:
        raise HintError(annotation, value, expected)
    return number


def parse_bool(annotation: str, value: str) -> bool:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise HintError(annotation, value, '"true" or "false"')


def parse_choice(annotation: str, value: str, choices: Iterable[str]) -> str:
    """Case-insensitive; returns the canonical spelling from ``choices``."""
    options = list(choices)
    for option in options:
        if value.strip().lower() == option.lower():
            return option
    raise HintError(annotation, value, "one of " + ", ".join(f'"{o}"' for o in options))


def parse_list(annotation: str, value: str) -> tuple[str, ...]:
    """Comma-separated, blanks trimmed, no empty items."""
    items = tuple(item.strip() for item in value.split(","))
    if not value.strip() or any(not item for item in items):
        raise HintError(annotation, value, 'a comma-separated list with no empty items, e.g. "a,b"')
    return items


def parse_ranges(annotation: str, value: str, *, maximum: int = 1_000_000) -> frozenset[int]:
    """``"1,2,10-20"`` -> {1, 2, 10, ..., 20} (KEDA's partitionLimitation form)."""
    expected = 'numbers and inclusive ranges, comma-separated, e.g. "0,2,10-20"'
    numbers: set[int] = set()
    for item in parse_list(annotation, value):
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", item)
        if match is None:
            raise HintError(annotation, value, expected)
        low = int(match[1])
        high = int(match[2]) if match[2] is not None else low
        if high < low or high > maximum:
            raise HintError(annotation, value, expected + f" (low <= high <= {maximum})")
        numbers.update(range(low, high + 1))
    return frozenset(numbers)


def format_duration(seconds: float) -> str:
    """Seconds in the hints' own notation: ``15s``, ``5m``, ``1m30s``, ``250ms``, ``24h``."""
    if 0 < seconds < 1:
        return f"{_plain(seconds * 1000)}ms"
    if seconds >= 60 and seconds == int(seconds):
        minutes, rest = divmod(int(seconds), 60)
        if minutes >= 60 and minutes % 60 == 0 and rest == 0:
            return f"{minutes // 60}h"
        return f"{minutes}m" + (f"{rest}s" if rest else "")
    return f"{_plain(seconds)}s"


def _plain(number: float) -> str:
    """A number as people write it: no exponent, no trailing zeros (``1000.125``, ``15``)."""
    return f"{number:.6f}".rstrip("0").rstrip(".")


def _fmt(seconds: float) -> str:
    return f"{seconds:g}"
