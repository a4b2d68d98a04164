"""Cron arithmetic: whether a moment is inside a start/end window, and the measurement (pure).

KEDA's rule (pkg/scalers/cron_scaler.go): with ``next_start`` and ``next_end`` the next times
each schedule fires after now, the trigger is active exactly when ``next_end <= next_start``:
the last boundary passed was a start. Inside, the metric is desired-replicas with a per-replica
target of 1, so the policy asks for exactly that many; outside it is 0 and inactive.

The expressions are evaluated by ``cronsim`` (one module of about 550 lines, no dependencies,
maintained by the Healthchecks.io author, Debian cron's rules for daylight-saving changes), rather
than a parser written here: a cron evaluator's hard part is exactly those rules (a time skipped
by the clock, a time that happens twice), which cronsim implements and tests against Debian cron.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from tidescale.sources.base import Measurement
from tidescale.sources.cron._settings import CronSettings

__all__ = ["cron_measurement", "inside_window", "next_fire"]


def next_fire(expression: str, after: datetime) -> datetime:
    """The first time ``expression`` fires strictly after ``after`` (an aware datetime, whose zone
    the expression is read in)."""
    from cronsim import CronSim

    return next(CronSim(expression, after))


def inside_window(settings: CronSettings, now: datetime) -> bool:
    """``now`` is any aware datetime; it is read in the trigger's time zone."""
    local = now.astimezone(ZoneInfo(settings.timezone))
    return next_fire(settings.end, local) <= next_fire(settings.start, local)


def cron_measurement(settings: CronSettings, now: datetime, taken_at: float) -> Measurement:
    active = inside_window(settings, now)
    return Measurement(
        trigger=settings.name,
        value=float(settings.desired_replicas) if active else 0.0,
        target=1.0,
        active=active,
        replica_cap=None,
        detail={"window:open": 1.0 if active else 0.0},
        taken_at=taken_at,
    )
