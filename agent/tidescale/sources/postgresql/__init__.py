"""The ``postgresql`` trigger: one number from a query, run read-only and bounded in time.

- ``_settings``: the hints' fields, parsed and validated (pure; imported here);
- ``_answer``: the query's answer to a measurement (pure);
- ``_source``: the I/O (asyncpg, imported the first time a source opens).
"""

from __future__ import annotations

from tidescale.sources._kind import Endpoint, OpenOptions, SourceKind
from tidescale.sources.base import Source, TriggerSettings
from tidescale.sources.postgresql._settings import (
    POSTGRESQL_FIELDS,
    PostgreSQLSettings,
    parse_postgresql_settings,
)

__all__ = ["KIND", "POSTGRESQL_FIELDS", "PostgreSQLSettings", "parse_postgresql_settings"]


def _open(settings: TriggerSettings, options: OpenOptions) -> Source:
    from tidescale.sources.postgresql._source import PostgreSQLSource

    assert isinstance(settings, PostgreSQLSettings)
    return PostgreSQLSource(settings, credentials=options.credentials)


def _endpoints(settings: TriggerSettings) -> list[Endpoint]:
    assert isinstance(settings, PostgreSQLSettings)
    return [Endpoint(field="host", host=settings.host, port=settings.port)]


KIND = SourceKind(
    type_name="postgresql",
    settings_class=PostgreSQLSettings,
    fields=POSTGRESQL_FIELDS,
    parse=parse_postgresql_settings,
    open=_open,
    endpoints=_endpoints,
)
