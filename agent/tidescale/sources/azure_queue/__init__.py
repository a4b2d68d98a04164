"""The ``azure-queue`` trigger: an Azure Storage queue's approximate message count.

- ``_settings``: the hints' fields, parsed and validated (pure; imported here);
- ``_sharedkey``: Shared Key signing and connection strings (pure; hmac, base64);
- ``_depth``: the arithmetic and the reading of the service's answers (pure);
- ``_source``: the HTTP I/O (httpx, imported on the first request).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from tidescale.sources._kind import Endpoint, OpenOptions, SourceKind
from tidescale.sources.azure_queue._settings import (
    AZURE_QUEUE_FIELDS,
    AzureQueueSettings,
    parse_azure_queue_settings,
)
from tidescale.sources.base import Source, TriggerSettings

__all__ = ["AZURE_QUEUE_FIELDS", "KIND", "AzureQueueSettings", "parse_azure_queue_settings"]


def _open(settings: TriggerSettings, options: OpenOptions) -> Source:
    from tidescale.sources.azure_queue._source import AzureQueueSource

    assert isinstance(settings, AzureQueueSettings)
    return AzureQueueSource(settings, credentials=options.credentials)


def _endpoints(settings: TriggerSettings) -> list[Endpoint]:
    assert isinstance(settings, AzureQueueSettings)
    parts = urlsplit(settings.endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return [Endpoint(field=settings.endpoint_field, host=parts.hostname or "", port=port)]


KIND = SourceKind(
    type_name="azure-queue",
    settings_class=AzureQueueSettings,
    fields=AZURE_QUEUE_FIELDS,
    parse=parse_azure_queue_settings,
    open=_open,
    endpoints=_endpoints,
)
