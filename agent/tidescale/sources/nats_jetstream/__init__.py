"""The ``nats-jetstream`` trigger: a consumer's backlog (pending + ack-pending) from the server's
monitoring endpoint (``/jsz``), as KEDA reads it.

- ``_settings``: the hints' fields, parsed and validated (pure; imported here);
- ``_backlog``: from a /jsz answer to a consumer's backlog and a measurement (pure);
- ``_source``: the HTTP I/O (httpx, imported the first time a client opens).
"""

from __future__ import annotations

from tidescale.sources._kind import Endpoint, OpenOptions, SourceKind
from tidescale.sources.base import Source, TriggerSettings
from tidescale.sources.nats_jetstream._settings import (
    NATS_JETSTREAM_FIELDS,
    NatsJetStreamSettings,
    parse_nats_jetstream_settings,
)

__all__ = ["KIND", "NATS_JETSTREAM_FIELDS", "NatsJetStreamSettings", "parse_nats_jetstream_settings"]


def _open(settings: TriggerSettings, options: OpenOptions) -> Source:
    from tidescale.sources.nats_jetstream._source import NatsJetStreamSource

    assert isinstance(settings, NatsJetStreamSettings)
    # The monitoring endpoint takes no login: the waker's Secret only stands in for tls-ca-file.
    return NatsJetStreamSource(settings, credentials=options.credentials)


def _endpoints(settings: TriggerSettings) -> list[Endpoint]:
    assert isinstance(settings, NatsJetStreamSettings)
    return [Endpoint(field="monitoring-endpoint", host=host, port=port) for host, port in settings.endpoints]


KIND = SourceKind(
    type_name="nats-jetstream",
    settings_class=NatsJetStreamSettings,
    fields=NATS_JETSTREAM_FIELDS,
    parse=parse_nats_jetstream_settings,
    open=_open,
    endpoints=_endpoints,
)
