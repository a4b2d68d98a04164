"""The azure-queue trigger without a server: settings, Shared Key signing, connection strings, the
arithmetic, and the service's recorded answers."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tidescale.errors import BrokerAuthFailed, HintsInvalid, SourceError, SourceNotFound
from tidescale.sources.azure_queue import KIND
from tidescale.sources.azure_queue._depth import (
    count_from_header,
    count_peeked,
    error_from_answer,
    queue_measurement,
)
from tidescale.sources.azure_queue._settings import AzureQueueSettings, parse_azure_queue_settings
from tidescale.sources.azure_queue._sharedkey import (
    authorization,
    connection_string_credentials,
    rfc1123,
    string_to_sign,
)

# Azurite's published development key (Microsoft's documentation; not a secret).
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
KEY = {"account-key-env": "AZURE_STORAGE_KEY"}
DATE = "Wed, 02 Dec 2026 08:00:00 GMT"


def parse(**fields: str) -> AzureQueueSettings:
    return parse_azure_queue_settings(
        "az", {"queue-name": "orders", "account-name": "ordersstore", **KEY, **fields}
    )


def problems(raw: dict[str, str]) -> dict[str, str]:
    with pytest.raises(HintsInvalid) as caught:
        parse_azure_queue_settings("az", raw)
    return {p.annotation.removeprefix("tidescale.io/az."): p.expected for p in caught.value.problems}


# -- settings ---------------------------------------------------------------------------------


def test_the_endpoint_is_the_accounts_in_the_public_cloud_by_default() -> None:
    settings = parse()
    assert settings.endpoint == "https://ordersstore.queue.core.windows.net"
    assert (settings.queue_length, settings.activation_queue_length, settings.strategy) == (5.0, 0.0, "all")


@pytest.mark.parametrize(
    ("cloud", "host"),
    [
        ("AzureUSGovernmentCloud", "ordersstore.queue.core.usgovcloudapi.net"),
        ("azurechinacloud", "ordersstore.queue.core.chinacloudapi.cn"),
    ],
)
def test_a_cloud_gives_its_queue_suffix(cloud: str, host: str) -> None:
    assert parse(cloud=cloud).endpoint == f"https://{host}"


def test_a_private_cloud_needs_an_endpoint_suffix_and_uses_it() -> None:
    raw = {"queue-name": "orders", "account-name": "ordersstore", **KEY, "cloud": "Private"}
    assert "a value with cloud Private" in problems(raw)["endpoint-suffix"]
    settings = parse_azure_queue_settings("az", {**raw, "endpoint-suffix": "queue.local.azurestack.external"})
    assert settings.endpoint == "https://ordersstore.queue.local.azurestack.external"


def test_an_endpoint_suffix_that_contradicts_the_cloud_is_refused() -> None:
    found = problems(
        {"queue-name": "q12", "account-name": "acct", **KEY, "endpoint-suffix": "queue.evil.example"}
    )
    assert "cloud Private" in found["endpoint-suffix"]


def test_an_explicit_endpoint_is_used_as_given_and_named_to_the_waker() -> None:
    settings = parse(endpoint="http://10.0.0.5:10001/devstoreaccount1/")
    assert settings.endpoint == "http://10.0.0.5:10001/devstoreaccount1"
    (endpoint,) = KIND.endpoints(settings)
    assert (endpoint.field, endpoint.host, endpoint.port) == ("endpoint", "10.0.0.5", 10001)
    (default,) = KIND.endpoints(parse())
    assert (default.field, default.host, default.port) == (
        "account-name",
        "ordersstore.queue.core.windows.net",
        443,
    )


@pytest.mark.parametrize("name", ["ab", "Orders", "or--ders", "-orders", "orders-", "o" * 64, "ord_ers"])
def test_a_queue_name_must_follow_azures_rules(name: str) -> None:
    assert "3 to 63 lower-case" in problems({"queue-name": name, "account-name": "acct", **KEY})["queue-name"]


def test_exactly_one_credential_source_is_needed() -> None:
    none = problems({"queue-name": "orders", "account-name": "acct", "credentials-secret": "azure"})
    assert "credentials-secret serves the waker only" in none["connection-string-env"]
    two = problems({"queue-name": "orders", "account-name": "acct", **KEY, "sas-token-file": "/s"})
    assert two == {
        "sas-token-file": "one credential source only, not both account-key-env and sas-token-file"
    }


def test_every_bad_field_is_reported_at_once_with_a_did_you_mean() -> None:
    found = problems(
        {
            "queue-name": "orders",
            **KEY,
            "queue-length": "-2",
            "queue-length-strategy": "some",
            "queueLength": "5",
            "endpoint": "ftp://x",
        }
    )
    assert set(found) == {"account-name", "queue-length", "queue-length-strategy", "queueLength", "endpoint"}
    assert "queue-length" in found["queueLength"]


def test_kedas_visibleonly_spelling_is_accepted() -> None:
    assert parse(**{"queue-length-strategy": "visibleonly"}).strategy == "visible-only"
    assert parse(**{"queue-length-strategy": "visible-only"}).strategy == "visible-only"


# -- Shared Key ---------------------------------------------------------------------------------


def test_the_string_to_sign_of_get_queue_metadata_follows_the_documented_layout() -> None:
    text = string_to_sign(
        method="get",
        account="devstoreaccount1",
        path="/devstoreaccount1/orders",
        query=[("comp", "metadata")],
        headers={"x-ms-version": "2021-12-02", "X-Ms-Date": DATE},
    )
    # VERB, eleven empty standard headers, the x-ms- headers sorted, then /account + path (a
    # path-style URL keeps the account in its path) and each query parameter on its own line.
    assert text == (
        "GET\n\n\n\n\n\n\n\n\n\n\n\n"
        f"x-ms-date:{DATE}\nx-ms-version:2021-12-02\n"
        "/devstoreaccount1/devstoreaccount1/orders\ncomp:metadata"
    )


def test_query_parameters_are_sorted_lower_cased_and_multiple_values_joined() -> None:
    text = string_to_sign(
        method="GET",
        account="a",
        path="/q/messages",
        query=[("PeekOnly", "true"), ("numofmessages", "32"), ("include", "b"), ("include", "a")],
        headers={},
    )
    assert text.endswith("/a/q/messages\ninclude:a,b\nnumofmessages:32\npeekonly:true")


def test_a_zero_content_length_signs_as_empty() -> None:
    text = string_to_sign(method="PUT", account="a", path="/q", query=[], headers={"Content-Length": "0"})
    assert text.startswith("PUT\n\n\n\n")


# Signatures computed by Azurite's own code (computeHMACSHA256 in its common/utils, which it uses
# to verify requests) over the same strings to sign, with the development key.
@pytest.mark.parametrize(
    ("account", "path", "query", "signature"),
    [
        ("devstoreaccount1", "/devstoreaccount1/orders", [("comp", "metadata")],
         "khUxmWlLrsA2vQwzXeymR6P8outEZSB1Z87foTCaMZg="),
        ("myaccount", "/orders/messages", [("numofmessages", "32"), ("peekonly", "true")],
         "+pQ9nNO+UP9X5Lua/sqGAlaH3YP9/lYRnV9vGj9a52c="),
    ],
)  # fmt: skip
def test_the_signature_is_the_one_azurite_computes(
    account: str, path: str, query: list[tuple[str, str]], signature: str
) -> None:
    text = string_to_sign(
        method="GET",
        account=account,
        path=path,
        query=query,
        headers={"x-ms-date": DATE, "x-ms-version": "2021-12-02"},
    )
    assert authorization(account, base64.b64decode(DEV_KEY), text) == f"SharedKey {account}:{signature}"


def test_the_date_header_is_rfc1123_in_gmt() -> None:
    assert rfc1123(datetime(2015, 6, 26, 23, 39, 12, tzinfo=UTC)) == "Fri, 26 Jun 2015 23:39:12 GMT"


# -- connection strings -------------------------------------------------------------------------

ENDPOINT = "https://acct.queue.core.windows.net"


def test_a_connection_string_gives_the_account_key_or_the_sas_token() -> None:
    key, sas = connection_string_credentials(
        f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={DEV_KEY};EndpointSuffix=core.windows.net",
        account="acct",
        endpoint=ENDPOINT,
        where="env X",
    )
    assert (key, sas) == (base64.b64decode(DEV_KEY), None)
    key, sas = connection_string_credentials(
        f"QueueEndpoint={ENDPOINT}/;SharedAccessSignature=?sv=2021-12-02&sig=abc%3D",
        account="acct",
        endpoint=ENDPOINT,
        where="env X",
    )
    assert (key, sas) == (None, "sv=2021-12-02&sig=abc%3D")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (f"AccountName=other;AccountKey={DEV_KEY}", "names account 'other'"),
        (
            f"AccountName=acct;AccountKey={DEV_KEY};QueueEndpoint=http://169.254.169.254/",
            "QueueEndpoint other",
        ),
        ("AccountName=acct;AccountKey=not base64!", "is not base64"),
        ("AccountName=acct", "neither AccountKey nor SharedAccessSignature"),
        ("AccountName", "an item without '='"),
    ],
)
def test_a_connection_string_that_disagrees_with_the_hints_or_lacks_a_credential_is_refused(
    text: str, error: str
) -> None:
    with pytest.raises(BrokerAuthFailed, match=error) as caught:
        connection_string_credentials(text, account="acct", endpoint=ENDPOINT, where="env X")
    assert DEV_KEY not in str(caught.value)


# -- arithmetic and answers ---------------------------------------------------------------------

# A Peek Messages answer as the Queue service gives it (one message shown; texts are XML-escaped).
PEEK = (
    b'<?xml version="1.0" encoding="utf-8"?><QueueMessagesList><QueueMessage><MessageId>1</MessageId>'
    b"<InsertionTime>Wed, 02 Dec 2026 08:00:00 GMT</InsertionTime><ExpirationTime>Wed, 09 Dec 2026 08:00:00 "
    b"GMT</ExpirationTime><DequeueCount>0</DequeueCount><MessageText>&lt;QueueMessage&gt;</MessageText>"
    b"</QueueMessage>"
)


def peek_answer(count: int) -> bytes:
    head, message = PEEK.split(b"<QueueMessagesList>", 1)
    return head + b"<QueueMessagesList>" + message * count + b"</QueueMessagesList>"


def test_peeked_messages_are_counted_and_an_escaped_element_in_a_text_is_not() -> None:
    assert count_peeked(b'<?xml version="1.0"?><QueueMessagesList />', queue="q") == 0
    assert count_peeked(PEEK + b"</QueueMessagesList>", queue="q") == 1


def test_a_peek_answer_that_is_not_a_message_list_or_too_long_is_refused() -> None:
    with pytest.raises(SourceError, match="not a QueueMessagesList"):
        count_peeked(b"<Error/>", queue="q")
    with pytest.raises(SourceError, match="expected at most 32"):
        count_peeked(b"<QueueMessagesList>" + b"<QueueMessage></QueueMessage>" * 33, queue="q")


@pytest.mark.parametrize("header", [None, "", "-1", "1.5", "1" * 16])
def test_an_absent_or_malformed_count_header_fails_instead_of_reading_zero(header: str | None) -> None:
    with pytest.raises(SourceError, match="x-ms-approximate-messages-count"):
        count_from_header(header, queue="q")


def test_all_reads_the_approximate_count_and_visible_only_the_peek_below_32() -> None:
    all_ = queue_measurement(parse(), peeked=None, approximate=12, taken_at=0.0)
    assert (all_.value, all_.detail, all_.active) == (12.0, {"approximate": 12.0}, True)
    visible = parse(**{"queue-length-strategy": "visible-only"})
    assert queue_measurement(visible, peeked=5, approximate=None, taken_at=0.0).value == 5.0
    assert queue_measurement(visible, peeked=32, approximate=90, taken_at=0.0).value == 90.0
    with pytest.raises(SourceError, match="no approximate count"):
        queue_measurement(visible, peeked=32, approximate=None, taken_at=0.0)


@given(
    peeked=st.integers(0, 32),
    approximate=st.integers(0, 10**9),
    visible_only=st.booleans(),
    activation=st.integers(0, 100),
)
@example(peeked=32, approximate=90, visible_only=True, activation=0)
def test_the_metric_follows_kedas_strategy_and_is_active_above_activation(
    peeked: int, approximate: int, visible_only: bool, activation: int
) -> None:
    settings = parse(
        **{
            "queue-length-strategy": "visible-only" if visible_only else "all",
            "activation-queue-length": str(activation),
        }
    )
    peek = count_peeked(peek_answer(peeked), queue="orders") if visible_only else None
    measured = queue_measurement(settings, peeked=peek, approximate=approximate, taken_at=0.0)
    expected = peeked if visible_only and peeked < 32 else approximate
    assert measured.value == expected
    assert measured.active == (expected > activation)


# Error answers as the Queue service gives them: (HTTP status, x-ms-error-code).
@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (404, "QueueNotFound", SourceNotFound),
        (404, "ResourceNotFound", SourceNotFound),
        (403, "AuthenticationFailed", BrokerAuthFailed),
        (403, "AuthorizationPermissionMismatch", BrokerAuthFailed),
        (403, None, BrokerAuthFailed),
        (503, "ServerBusy", SourceError),
    ],
)
def test_an_error_answer_is_named_by_its_code(
    status: int, code: str | None, error: type[SourceError]
) -> None:
    found = error_from_answer(status, code, where="Azure Queue service at acct", queue="orders")
    assert type(found) is error
    assert f"HTTP {status}" in str(found)
