"""The aws-sqs trigger without a server: its settings, its arithmetic, and SQS's recorded answers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidescale.errors import BrokerAuthFailed, HintsInvalid, SourceError, SourceNotFound
from tidescale.sources.aws_sqs import KIND
from tidescale.sources.aws_sqs._depth import (
    DELAYED,
    IN_FLIGHT,
    VISIBLE,
    attribute_names,
    attributes_from_answer,
    error_from_answer,
    sqs_measurement,
)
from tidescale.sources.aws_sqs._settings import AwsSqsSettings, parse_aws_sqs_settings, region_of_host

URL = "https://sqs.eu-west-1.amazonaws.com/123456789012/orders"
KEYS = {"access-key-id-env": "AWS_ACCESS_KEY_ID", "secret-access-key-env": "AWS_SECRET_ACCESS_KEY"}


def parse(**fields: str) -> AwsSqsSettings:
    return parse_aws_sqs_settings("sqs", {"queue-url": URL, **KEYS, **fields})


def problems(raw: dict[str, str]) -> dict[str, str]:
    with pytest.raises(HintsInvalid) as caught:
        parse_aws_sqs_settings("sqs", raw)
    return {p.annotation.removeprefix("tidescale.io/sqs."): p.expected for p in caught.value.problems}


def test_an_aws_queue_url_gives_the_region_and_the_endpoint() -> None:
    settings = parse()
    assert settings.region == "eu-west-1"
    assert settings.endpoint == "https://sqs.eu-west-1.amazonaws.com"
    assert settings.queue_name == "orders"
    assert (settings.queue_length, settings.activation_queue_length) == (5.0, 0.0)
    assert (settings.scale_on_in_flight, settings.scale_on_delayed) == (True, False)


@pytest.mark.parametrize(
    ("host", "region"),
    [
        ("sqs.eu-west-1.amazonaws.com", "eu-west-1"),
        ("sqs-fips.us-gov-west-1.amazonaws.com", "us-gov-west-1"),
        ("ap-south-1.queue.amazonaws.com", "ap-south-1"),
        ("sqs.cn-north-1.amazonaws.com.cn", "cn-north-1"),
        ("queue.amazonaws.com", "us-east-1"),
        ("elasticmq.local", None),
        ("sqs.eu-west-1.amazonaws.com.evil.example", None),
    ],
)
def test_the_region_is_read_from_regional_sqs_hosts_only(host: str, region: str | None) -> None:
    assert region_of_host(host) == region


def test_a_queue_url_whose_host_names_no_region_needs_aws_region() -> None:
    raw = {"queue-url": "http://10.0.0.5:9324/000000000000/orders", **KEYS}
    assert "no region" in problems(raw)["aws-region"]
    settings = parse_aws_sqs_settings("sqs", {**raw, "aws-region": "elasticmq"})
    assert settings.endpoint == "http://10.0.0.5:9324"
    assert settings.region == "elasticmq"


def test_aws_endpoint_replaces_the_queue_urls_host_and_its_path_is_refused() -> None:
    assert parse(**{"aws-endpoint": "https://vpce-1.sqs.eu-west-1.vpce.amazonaws.com/"}).endpoint == (
        "https://vpce-1.sqs.eu-west-1.vpce.amazonaws.com"
    )
    assert (
        "without path"
        in problems({"queue-url": URL, **KEYS, "aws-endpoint": "https://e.example/x"})["aws-endpoint"]
    )


@pytest.mark.parametrize(
    "url",
    [
        "orders",
        "https://sqs.eu-west-1.amazonaws.com/orders",
        "https://sqs.eu-west-1.amazonaws.com/123/orders/extra",
        "https://sqs.eu-west-1.amazonaws.com/123/bad name",
        "https://sqs.eu-west-1.amazonaws.com/123/orders?x=1",
        "ftp://sqs.eu-west-1.amazonaws.com/123/orders",
    ],
)
def test_a_queue_url_must_be_scheme_host_account_and_queue(url: str) -> None:
    assert "/<account>/<queue name>" in problems({"queue-url": url, **KEYS})["queue-url"]


def test_a_password_in_the_queue_url_is_refused_without_showing_it() -> None:
    found = problems({"queue-url": "https://u:hunter2@sqs.eu-west-1.amazonaws.com/1/q", **KEYS})
    assert "without a password" in found["queue-url"]
    with pytest.raises(HintsInvalid) as caught:
        parse_aws_sqs_settings("sqs", {"queue-url": "https://u:hunter2@sqs.eu-west-1.amazonaws.com/1/q"})
    assert "hunter2" not in str(caught.value)


def test_the_access_key_and_secret_need_an_agent_side_source_even_with_credentials_secret() -> None:
    found = problems({"queue-url": URL, "credentials-secret": "sqs-credentials"})
    assert "credentials-secret serves the waker only" in found["access-key-id-env"]
    assert "secret-access-key-env" in found


def test_a_credential_named_by_both_env_and_file_is_refused() -> None:
    found = problems({"queue-url": URL, **KEYS, "session-token-file": "/t", "session-token-env": "T"})
    assert found == {"session-token-file": "either session-token-file or session-token-env, not both"}


def test_every_bad_field_is_reported_at_once_with_a_did_you_mean() -> None:
    found = problems(
        {
            "queue-url": URL,
            **KEYS,
            "queue-length": "0",
            "activation-queue-length": "-1",
            "scale-on-inflight": "true",
            "aws-region": "EU West",
            "timeout": "9",
        }
    )
    assert set(found) == {
        "queue-length",
        "activation-queue-length",
        "scale-on-inflight",
        "aws-region",
        "timeout",
    }
    assert "scale-on-in-flight" in found["scale-on-inflight"]


def test_the_queue_url_is_required() -> None:
    assert problems(dict(KEYS))["queue-url"] == "a value (this field is required)"


def test_the_waker_connects_to_the_endpoint_named_by_the_field_that_set_it() -> None:
    (default,) = KIND.endpoints(parse())
    assert (default.field, default.host, default.port) == ("queue-url", "sqs.eu-west-1.amazonaws.com", 443)
    (chosen,) = KIND.endpoints(parse(**{"aws-endpoint": "http://10.1.2.3:9324"}))
    assert (chosen.field, chosen.host, chosen.port) == ("aws-endpoint", "10.1.2.3", 9324)


def test_the_attributes_asked_for_follow_the_in_flight_and_delayed_flags() -> None:
    assert attribute_names(parse()) == (VISIBLE, IN_FLIGHT)
    assert attribute_names(parse(**{"scale-on-in-flight": "false"})) == (VISIBLE,)
    assert attribute_names(parse(**{"scale-on-delayed": "true"})) == (VISIBLE, IN_FLIGHT, DELAYED)


# A recorded answer of SQS (JSON protocol) to GetQueueAttributes for the three counts.
RECORDED = {"Attributes": {VISIBLE: "12", IN_FLIGHT: "3", DELAYED: "4"}}


def test_the_metric_is_visible_plus_in_flight_by_default_and_delayed_on_request() -> None:
    attributes = attributes_from_answer(RECORDED)
    default = sqs_measurement(attributes, parse(), 1.0)
    assert (default.value, default.target, default.active) == (15.0, 5.0, True)
    assert default.detail == {"visible": 12.0, "in-flight": 3.0}
    assert sqs_measurement(attributes, parse(**{"scale-on-delayed": "true"}), 1.0).value == 19.0
    assert sqs_measurement(attributes, parse(**{"scale-on-in-flight": "false"}), 1.0).value == 12.0


def test_a_count_the_answer_lacks_fails_the_measurement_instead_of_reading_zero() -> None:
    with pytest.raises(SourceError, match="lacks ApproximateNumberOfMessagesNotVisible"):
        sqs_measurement({VISIBLE: "0"}, parse(), 1.0)


@pytest.mark.parametrize("raw", ["-1", "1.5", "", "1" * 16, "12 "])
def test_a_count_that_is_not_digits_is_refused(raw: str) -> None:
    with pytest.raises(SourceError, match="expected a count"):
        sqs_measurement({VISIBLE: raw, IN_FLIGHT: "0"}, parse(), 1.0)


def test_an_answer_without_attributes_is_an_error() -> None:
    with pytest.raises(SourceError, match="no Attributes"):
        attributes_from_answer({"Attributes": ["x"]})


@given(
    visible=st.integers(0, 10**9),
    in_flight=st.integers(0, 10**9),
    delayed=st.integers(0, 10**9),
    on_in_flight=st.booleans(),
    on_delayed=st.booleans(),
    activation=st.integers(0, 10**9),
)
def test_the_metric_is_the_sum_of_the_counted_attributes_and_active_above_activation(
    visible: int, in_flight: int, delayed: int, on_in_flight: bool, on_delayed: bool, activation: int
) -> None:
    settings = parse(
        **{
            "scale-on-in-flight": str(on_in_flight).lower(),
            "scale-on-delayed": str(on_delayed).lower(),
            "activation-queue-length": str(activation),
        }
    )
    attributes = {VISIBLE: str(visible), IN_FLIGHT: str(in_flight), DELAYED: str(delayed)}
    measured = sqs_measurement(attributes, settings, 0.0)
    expected = visible + (in_flight if on_in_flight else 0) + (delayed if on_delayed else 0)
    assert measured.value == expected
    assert measured.active == (expected > activation)
    assert sum(measured.detail.values()) == expected


# Error answers as SQS's JSON protocol gives them (type, HTTP status).
@pytest.mark.parametrize(
    ("status", "answer", "error"),
    [
        (400, {"__type": "com.amazonaws.sqs#QueueDoesNotExist",
               "message": "The specified queue does not exist."}, SourceNotFound),
        (400, {"__type": "com.amazon.coral.service#UnrecognizedClientException",
               "message": "The security token included in the request is invalid."}, BrokerAuthFailed),
        (400, {"__type": "com.amazon.coral.service#InvalidSignatureException",
               "message": "The request signature we calculated does not match the signature you provided."},
         BrokerAuthFailed),
        (400, {"__type": "com.amazon.coral.service#AccessDeniedException",
               "message": "User: arn:aws:iam::1:user/x is not authorized to perform: sqs:getqueueattributes"},
         BrokerAuthFailed),
        (403, None, BrokerAuthFailed),
        (500, {"__type": "com.amazonaws.sqs#InternalError", "message": "We encountered an internal error."},
         SourceError),
    ],
)  # fmt: skip
def test_an_error_answer_is_named_by_its_type(status: int, answer: object, error: type[SourceError]) -> None:
    found = error_from_answer(status, answer, where="SQS at sqs.eu-west-1.amazonaws.com", queue="orders")
    assert type(found) is error
    assert f"HTTP {status}" in str(found) or "orders" in str(found)


def test_the_servers_error_message_is_cut_to_200_characters() -> None:
    found = error_from_answer(500, {"__type": "X", "message": "m" * 10_000}, where="SQS", queue="q")
    assert len(str(found)) < 400
