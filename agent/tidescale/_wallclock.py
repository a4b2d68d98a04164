"""The agent's wall clock, with a test-only offset (``TIDESCALE_CLOCK_OFFSET_SECONDS``).

Every wall-clock time the agent writes or compares (Lease acquireTime/renewTime, park record
times, the status and policy-state stamps) comes from here, so that the fault suite can run
one agent as if its node's clock were off (tests/faults/test_clock_skew.py) without faketime.
The monotonic clock, which the election's safety and the policy's windows rest on, is never
shifted: skew between nodes does not change how fast time passes on each.

The offset is read once, at agent start (:func:`configure`); unset means 0. It is not a setting
for production: a real node's clock is what it is, and the injector never sets it.
"""

from __future__ import annotations

import math
import time as _time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from tidescale.errors import TidescaleError

__all__ = ["OFFSET_ENV", "configure", "now", "offset", "time"]

OFFSET_ENV = "TIDESCALE_CLOCK_OFFSET_SECONDS"
_MAX_OFFSET = 7 * 86400.0
_offset = 0.0


def configure(environ: Mapping[str, str]) -> float:
    """Reads the offset from ``environ`` once; returns it. Raises TidescaleError on a bad value."""
    global _offset
    text = environ.get(OFFSET_ENV, "").strip()
    if not text:
        _offset = 0.0
        return _offset
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or abs(value) > _MAX_OFFSET:
        raise TidescaleError(
            f"{OFFSET_ENV} is {text[:40]!r}: expected a number of seconds from "
            f"-{_MAX_OFFSET:g} to {_MAX_OFFSET:g} (a test-only clock shift)"
        )
    _offset = value
    return _offset


def offset() -> float:
    """The shift in force, in seconds (0 outside the fault tests)."""
    return _offset


def now() -> datetime:
    """The agent's wall-clock time, in UTC."""
    return datetime.now(UTC) + timedelta(seconds=_offset)


def time() -> float:
    """The agent's wall-clock time, in seconds since the epoch."""
    return _time.time() + _offset
