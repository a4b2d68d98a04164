"""The cron "source": the clock. No connection, nothing to batch but the reading of the clock."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from tidescale.sources.base import Measurement, MeasurementFailure, Scope, TriggerSettings
from tidescale.sources.cron._settings import CronSettings
from tidescale.sources.cron._window import cron_measurement

__all__ = ["CronSource"]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class CronSource:
    """Measures cron triggers against ``clock`` (the wall clock; tests give a fake one)."""

    def __init__(self, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self._clock = clock

    async def measure(self, settings: TriggerSettings, scope: Scope) -> Measurement:
        return cron_measurement(_cron(settings), self._clock(), time.monotonic())

    async def measure_many(
        self, settings: Iterable[TriggerSettings]
    ) -> dict[CronSettings, Measurement | MeasurementFailure]:
        """Every trigger against one reading of the clock (the waker's poll)."""
        now, taken_at = self._clock(), time.monotonic()
        return {s: cron_measurement(s, now, taken_at) for s in dict.fromkeys(_cron(x) for x in settings)}

    def forget(self, settings: TriggerSettings) -> None:
        """Nothing is kept per trigger."""

    async def close(self) -> None:
        """Nothing to close."""


def _cron(settings: TriggerSettings) -> CronSettings:
    if not isinstance(settings, CronSettings):
        raise TypeError(f"CronSource cannot measure {type(settings).__name__}")
    return settings
