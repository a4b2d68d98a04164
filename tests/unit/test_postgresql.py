"""PostgreSQL: the settings parser and the query answer's arithmetic (no server)."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidescale.errors import HintsInvalid
from tidescale.sources.postgresql._answer import (
    QueryAnswerInvalid,
    check_columns,
    number_of,
    postgresql_measurement,
)
from tidescale.sources.postgresql._settings import MAX_QUERY_BYTES, parse_postgresql_settings

BASE = {
    "host": "postgres.db",
    "database": "orders",
    "username": "autoscaler",
    "query": "SELECT count(*) FROM jobs",
    "value": "10",
}


def _problems(raw: dict[str, str]) -> dict[str, str]:
    with pytest.raises(HintsInvalid) as caught:
        parse_postgresql_settings("jobs", raw)
    return {p.annotation: str(p) for p in caught.value.problems}


def test_the_defaults_are_libpq_s_port_and_sslmode() -> None:
    s = parse_postgresql_settings("pg", BASE)
    assert (s.host, s.port, s.database, s.username, s.sslmode, s.value, s.activation_value, s.timeout) == (
        "postgres.db",
        5432,
        "orders",
        "autoscaler",
        "prefer",
        10.0,
        0.0,
        5.0,
    )


def test_a_trailing_semicolon_is_dropped_so_the_query_prepares_as_one_statement() -> None:
    assert parse_postgresql_settings("pg", {**BASE, "query": " SELECT 1 ;; "}).query == "SELECT 1"


@pytest.mark.parametrize(
    ("raw", "annotation", "words"),
    [
        ({k: v for k, v in BASE.items() if k != "query"}, "query", "required"),
        ({k: v for k, v in BASE.items() if k != "value"}, "value", "required"),
        ({k: v for k, v in BASE.items() if k != "host"}, "host", "required"),
        ({**BASE, "query": "SELECT " + "1" * MAX_QUERY_BYTES}, "query", f"1 to {MAX_QUERY_BYTES} bytes"),
        ({**BASE, "host": "db:5432"}, "host", "the port goes in port"),
        ({**BASE, "port": "0"}, "port", "1 to 65535"),
        ({**BASE, "sslmode": "allow-ish"}, "sslmode", '"verify-full"'),
        ({**BASE, "tls-ca-file": "/ca.crt"}, "tls-ca-file", "verify-ca or verify-full"),
        ({**BASE, "password-env": "P", "password-file": "/p"}, "password-file", "not both"),
        ({**BASE, "targetQueryValue": "3"}, "targetQueryValue", "known field of a postgresql trigger"),
    ],
)
def test_a_bad_field_is_named_with_what_was_expected(
    raw: dict[str, str], annotation: str, words: str
) -> None:
    assert words in _problems(raw)[f"tidescale.io/jobs.{annotation}"]


def test_connections_are_shared_by_server_database_and_login_not_by_query() -> None:
    a = parse_postgresql_settings("a", BASE)
    b = parse_postgresql_settings("b", {**BASE, "query": "SELECT 2"})
    assert a.cluster_key == b.cluster_key
    assert a.cluster_key != parse_postgresql_settings("c", {**BASE, "database": "other"}).cluster_key


@pytest.mark.parametrize("type_name", ["int2", "int4", "int8", "float4", "float8", "numeric"])
def test_one_numeric_column_is_accepted(type_name: str) -> None:
    check_columns([("count", type_name)])


@pytest.mark.parametrize(
    ("columns", "words"),
    [
        ([], "0 columns (none)"),
        ([("a", "int8"), ("b", "int8")], "2 columns (a, b)"),
        ([("n", "text")], "text"),
    ],
)
def test_anything_but_one_numeric_column_is_refused_before_the_query_runs(
    columns: list[tuple[str, str]], words: str
) -> None:
    with pytest.raises(QueryAnswerInvalid, match=re.escape(words)):
        check_columns(columns)


@given(st.one_of(st.integers(0, 10**18), st.floats(0, 1e15), st.decimals(0, 10**12, places=3)))
def test_one_non_negative_number_reads_as_itself(number: int | float | Decimal) -> None:
    assert number_of([(number,)]) == float(number)


@pytest.mark.parametrize(
    ("rows", "words"),
    [
        ([], "no row"),
        ([(1,), (2,)], "more than one row"),
        ([(None,)], "NULL"),
        ([(-1,)], ">= 0"),
        ([(float("inf"),)], ">= 0"),
        ([(Decimal("NaN"),)], ">= 0"),
        ([("7",)], "str, not a number"),
        ([(True,)], "bool, not a number"),
    ],
)
def test_every_other_answer_is_refused_by_name(rows: list[tuple[object, ...]], words: str) -> None:
    with pytest.raises(QueryAnswerInvalid, match=words):
        number_of(rows)


@given(st.floats(0, 1e9), st.floats(0, 1e9))
def test_the_trigger_is_active_exactly_when_the_number_is_above_the_activation_value(
    number: float, activation: float
) -> None:
    settings = parse_postgresql_settings("pg", {**BASE, "activation-value": repr(activation)})
    m = postgresql_measurement(number, settings, 1.0)
    assert (m.value, m.target, m.active) == (number, 10.0, number > activation)
