"""The ``rabbitmq`` trigger: queue length or message rate, from the management API or AMQP.

- ``_settings``: the hints' fields, parsed and validated (pure; imported here);
- ``_depth``: the arithmetic from a queue listing (pure);
- ``_source``: the broker I/O (httpx for the management API, aio-pika for AMQP, imported on use).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from tidescale.sources._kind import Endpoint, OpenOptions, SourceKind
from tidescale.sources.base import Source, TriggerSettings
from tidescale.sources.rabbitmq._settings import RABBITMQ_FIELDS, RabbitMQSettings, parse_rabbitmq_settings

__all__ = ["KIND", "RABBITMQ_FIELDS", "RabbitMQSettings", "parse_rabbitmq_settings"]

_DEFAULT_PORTS = {"http": 80, "https": 443, "amqp": 5672, "amqps": 5671}


def _open(settings: TriggerSettings, options: OpenOptions) -> Source:
    from tidescale.sources.rabbitmq._source import RabbitMQSource

    assert isinstance(settings, RabbitMQSettings)
    return RabbitMQSource(settings, pod_ip=options.pod_ip, credentials=options.credentials)


def _endpoints(settings: TriggerSettings) -> list[Endpoint]:
    assert isinstance(settings, RabbitMQSettings)
    # The management API is used when given; the AMQP URL only without it.
    for field_name, url in (("management-url", settings.management_url), ("amqp-url", settings.amqp_url)):
        if url is None:
            continue
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)
        return [Endpoint(field=field_name, host=parts.hostname or "", port=port)]
    return []


KIND = SourceKind(
    type_name="rabbitmq",
    settings_class=RabbitMQSettings,
    fields=RABBITMQ_FIELDS,
    parse=parse_rabbitmq_settings,
    open=_open,
    endpoints=_endpoints,
)
