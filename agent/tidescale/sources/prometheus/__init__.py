"""The ``prometheus`` trigger: the value of a PromQL instant query (``GET /api/v1/query``).

- ``_settings``: the hints' fields, parsed and validated (pure; imported here);
- ``_result``: from a query answer to a number and a measurement (pure);
- ``_source``: the HTTP I/O (httpx, imported the first time a client opens).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from tidescale.sources._kind import Endpoint, OpenOptions, SourceKind
from tidescale.sources.base import Source, TriggerSettings
from tidescale.sources.prometheus._settings import (
    PROMETHEUS_FIELDS,
    PrometheusSettings,
    parse_prometheus_settings,
)

__all__ = ["KIND", "PROMETHEUS_FIELDS", "PrometheusSettings", "parse_prometheus_settings"]


def _open(settings: TriggerSettings, options: OpenOptions) -> Source:
    from tidescale.sources.prometheus._source import PrometheusSource

    assert isinstance(settings, PrometheusSettings)
    return PrometheusSource(settings, credentials=options.credentials)


def _endpoints(settings: TriggerSettings) -> list[Endpoint]:
    assert isinstance(settings, PrometheusSettings)
    parts = urlsplit(settings.server_address)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return [Endpoint(field="server-address", host=parts.hostname or "", port=port)]


KIND = SourceKind(
    type_name="prometheus",
    settings_class=PrometheusSettings,
    fields=PROMETHEUS_FIELDS,
    parse=parse_prometheus_settings,
    open=_open,
    endpoints=_endpoints,
)
