"""The ``cron`` trigger: desired replicas inside a schedule window (KEDA's cron scaler).

- ``_settings``: the hints' fields, parsed and validated (pure; imported here);
- ``_window``: whether now is inside the window, and the measurement (pure);
- ``_source``: the clock (no connection: endpoints are none).
"""

from __future__ import annotations

from tidescale.sources._kind import Endpoint, OpenOptions, SourceKind
from tidescale.sources.base import Source, TriggerSettings
from tidescale.sources.cron._settings import CRON_FIELDS, CronSettings, parse_cron_settings

__all__ = ["CRON_FIELDS", "KIND", "CronSettings", "parse_cron_settings"]


def _open(settings: TriggerSettings, options: OpenOptions) -> Source:
    from tidescale.sources.cron._source import CronSource

    assert isinstance(settings, CronSettings)
    return CronSource()


def _endpoints(settings: TriggerSettings) -> list[Endpoint]:
    return []


KIND = SourceKind(
    type_name="cron",
    settings_class=CronSettings,
    fields=CRON_FIELDS,
    parse=parse_cron_settings,
    open=_open,
    endpoints=_endpoints,
)
