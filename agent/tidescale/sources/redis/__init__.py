"""The ``redis`` trigger: a list's length, or a stream's length, pending entries or consumer-group lag.

- ``_settings``: the hints' fields, parsed and validated (pure; imported here);
- ``_length``: the arithmetic from the server's replies (pure);
- ``_resp``: the bounded RESP2 codec (pure; why not redis-py is said there);
- ``_source``: the I/O (asyncio streams, imported the first time a source opens).
"""

from __future__ import annotations

from tidescale.sources._kind import Endpoint, OpenOptions, SourceKind
from tidescale.sources.base import Source, TriggerSettings
from tidescale.sources.redis._settings import REDIS_FIELDS, RedisSettings, parse_redis_settings

__all__ = ["KIND", "REDIS_FIELDS", "RedisSettings", "parse_redis_settings"]


def _open(settings: TriggerSettings, options: OpenOptions) -> Source:
    from tidescale.sources.redis._source import RedisSource

    assert isinstance(settings, RedisSettings)
    return RedisSource(settings, credentials=options.credentials)


def _endpoints(settings: TriggerSettings) -> list[Endpoint]:
    assert isinstance(settings, RedisSettings)
    return [Endpoint(field="address", host=settings.host, port=settings.port)]


KIND = SourceKind(
    type_name="redis",
    settings_class=RedisSettings,
    fields=REDIS_FIELDS,
    parse=parse_redis_settings,
    open=_open,
    endpoints=_endpoints,
)
