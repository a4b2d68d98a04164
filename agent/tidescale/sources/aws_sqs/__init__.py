"""The ``aws-sqs`` trigger: an SQS queue's approximate depth, from GetQueueAttributes.

- ``_settings``: the hints' fields, parsed and validated (pure; imported here);
- ``_sigv4``: AWS Signature Version 4 (pure; hashlib and hmac);
- ``_depth``: the arithmetic and the reading of SQS's answers (pure);
- ``_source``: the HTTP I/O (httpx, imported on the first request).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from tidescale.sources._kind import Endpoint, OpenOptions, SourceKind
from tidescale.sources.aws_sqs._settings import AWS_SQS_FIELDS, AwsSqsSettings, parse_aws_sqs_settings
from tidescale.sources.base import Source, TriggerSettings

__all__ = ["AWS_SQS_FIELDS", "KIND", "AwsSqsSettings", "parse_aws_sqs_settings"]


def _open(settings: TriggerSettings, options: OpenOptions) -> Source:
    from tidescale.sources.aws_sqs._source import AwsSqsSource

    assert isinstance(settings, AwsSqsSettings)
    return AwsSqsSource(settings, credentials=options.credentials)


def _endpoints(settings: TriggerSettings) -> list[Endpoint]:
    assert isinstance(settings, AwsSqsSettings)
    parts = urlsplit(settings.endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    field = "queue-url" if settings.endpoint == _origin(settings.queue_url) else "aws-endpoint"
    return [Endpoint(field=field, host=parts.hostname or "", port=port)]


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


KIND = SourceKind(
    type_name="aws-sqs",
    settings_class=AwsSqsSettings,
    fields=AWS_SQS_FIELDS,
    parse=parse_aws_sqs_settings,
    open=_open,
    endpoints=_endpoints,
)
