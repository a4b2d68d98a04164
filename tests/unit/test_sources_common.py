"""The fields every broker source shares (sources/_common.py): one wording, one parser, one check."""

from __future__ import annotations

import pytest

from tidescale.errors import HintsInvalid
from tidescale.sources._common import (
    check_one_secret_source,
    credentials_secret_field,
    parse_timeout,
    timeout_field,
)
from tidescale.sources._fields import FieldCollector
from tidescale.sources.kafka import KAFKA_FIELDS, parse_kafka_settings
from tidescale.sources.rabbitmq import RABBITMQ_FIELDS, parse_rabbitmq_settings


def test_credentials_secret_row_names_every_key_the_waker_reads() -> None:
    row = credentials_secret_field(keys=("username", "password", "ca.crt"), example="creds")
    assert "with keys username, password and ca.crt;" in row.meaning
    assert "with keys token;" in credentials_secret_field(keys=("token",), example="x").meaning


def test_kafka_and_rabbitmq_document_timeout_and_credentials_secret_alike() -> None:
    for fields in (KAFKA_FIELDS, RABBITMQ_FIELDS):
        by_name = {doc.field: doc for doc in fields}
        assert by_name["timeout"] == timeout_field()
        assert by_name["credentials-secret"].meaning.startswith(
            "Secret in the Deployment's namespace with keys username"
        )


def test_timeout_is_bounded_the_same_in_every_source() -> None:
    assert parse_timeout("a", "250ms") == 0.25
    kafka = {"bootstrap-servers": "k:9092", "consumer-group": "g", "timeout": "5m"}
    rabbit = {"amqp-url": "amqp://r:5672", "queue": "q", "timeout": "5m"}
    for parse, raw in ((parse_kafka_settings, kafka), (parse_rabbitmq_settings, rabbit)):
        with pytest.raises(HintsInvalid) as caught:
            parse("t", raw)  # type: ignore[operator]
        (problem,) = caught.value.problems
        assert problem.annotation == "tidescale.io/t.timeout"


def test_a_secret_named_by_both_a_variable_and_a_file_is_one_problem_naming_both() -> None:
    fields = FieldCollector(
        "t", {"password-env": "P", "password-file": "/p"}, ("password-env", "password-file"), kind="x"
    )
    check_one_secret_source(fields, "password-env", "password-file")
    with pytest.raises(HintsInvalid) as caught:
        fields.finish()
    (problem,) = caught.value.problems
    assert problem.annotation == "tidescale.io/t.password-file"
    assert "either password-file or password-env, not both" in str(problem)


def test_kafka_refuses_a_sasl_password_from_both_a_variable_and_a_file() -> None:
    raw = {
        "bootstrap-servers": "k:9092",
        "consumer-group": "g",
        "sasl": "plain",
        "sasl-username-env": "U",
        "sasl-password-env": "P",
        "sasl-password-file": "/p",
    }
    with pytest.raises(HintsInvalid) as caught:
        parse_kafka_settings("kafka", raw)
    assert [p.annotation for p in caught.value.problems] == ["tidescale.io/kafka.sasl-password-file"]
