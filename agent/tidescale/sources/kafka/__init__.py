"""The ``kafka`` trigger: consumer-group lag (log-end minus committed offset, per partition).

- ``_settings``: the hints' fields, parsed and validated (pure; imported here);
- ``_lag``: the arithmetic from a broker snapshot (pure);
- ``_source``: the broker I/O (aiokafka, imported the first time a connection opens).
"""

from __future__ import annotations

from tidescale.sources._kind import Endpoint, OpenOptions, SourceKind
from tidescale.sources.base import Source, TriggerSettings
from tidescale.sources.kafka._settings import KAFKA_FIELDS, KafkaSettings, parse_kafka_settings

__all__ = ["KAFKA_FIELDS", "KIND", "KafkaSettings", "parse_kafka_settings"]


def _open(settings: TriggerSettings, options: OpenOptions) -> Source:
    from tidescale.sources.kafka._source import KafkaSource

    assert isinstance(settings, KafkaSettings)
    return KafkaSource(
        settings, pod_ip=options.pod_ip, credentials=options.credentials, address_check=options.address_check
    )


def _endpoints(settings: TriggerSettings) -> list[Endpoint]:
    assert isinstance(settings, KafkaSettings)
    found = []
    for server in settings.bootstrap_servers:
        host, _, number = server.rpartition(":")
        found.append(Endpoint(field="bootstrap-servers", host=host.strip("[]"), port=int(number)))
    return found


KIND = SourceKind(
    type_name="kafka",
    settings_class=KafkaSettings,
    fields=KAFKA_FIELDS,
    parse=parse_kafka_settings,
    open=_open,
    endpoints=_endpoints,
)
