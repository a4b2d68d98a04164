"""PostgreSQL arithmetic: a query's answer to one number, and that number to a measurement (pure).

The answer must be exactly one row of exactly one column of a numeric type (smallint, integer,
bigint, real, double precision, numeric), neither NULL, negative nor infinite/NaN. The column's
type is checked when the statement is prepared, before it runs; the rows are fetched two at most
(one more than allowed, to tell "one" from "several" without reading a table into memory).
Anything else fails the reading with a :class:`QueryAnswerInvalid` naming what came back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal

from tidescale.errors import SourceError
from tidescale.sources.base import Measurement
from tidescale.sources.postgresql._settings import PostgreSQLSettings

__all__ = ["NUMERIC_TYPES", "QueryAnswerInvalid", "check_columns", "number_of", "postgresql_measurement"]

NUMERIC_TYPES = frozenset({"int2", "int4", "int8", "float4", "float8", "numeric"})
"""PostgreSQL's internal names of the column types a query may answer with."""

_EXPECTED = "one row of one numeric column (e.g. SELECT count(*) ...)"


class QueryAnswerInvalid(SourceError):
    """The query ran but its answer is not one non-negative number."""


def check_columns(columns: Sequence[tuple[str, str]]) -> None:
    """``columns`` are (name, type name) of the prepared statement's result."""
    if len(columns) != 1:
        shown = ", ".join(name for name, _ in columns) or "none"
        raise QueryAnswerInvalid(f"the query answers {len(columns)} columns ({shown}); expected {_EXPECTED}")
    name, type_name = columns[0]
    if type_name not in NUMERIC_TYPES:
        raise QueryAnswerInvalid(
            f"the query's column {name!r} is of type {type_name}, not a number; expected {_EXPECTED} "
            "(cast it, e.g. ...::bigint)"
        )


def number_of(rows: Sequence[Sequence[object]]) -> float:
    """The one number of the first (and only) row; at most two rows are ever passed."""
    if not rows:
        raise QueryAnswerInvalid(f"the query answered no row; expected {_EXPECTED}")
    if len(rows) > 1:
        raise QueryAnswerInvalid(f"the query answered more than one row; expected {_EXPECTED} (aggregate it)")
    value = rows[0][0] if rows[0] else None
    if value is None:
        raise QueryAnswerInvalid("the query answered NULL; expected a number (e.g. coalesce(..., 0))")
    if not isinstance(value, int | float | Decimal) or isinstance(value, bool):
        raise QueryAnswerInvalid(f"the query answered {type(value).__name__}, not a number")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise QueryAnswerInvalid(f"the query answered {value}; expected a finite number >= 0")
    return number


def postgresql_measurement(number: float, settings: PostgreSQLSettings, taken_at: float) -> Measurement:
    return Measurement(
        trigger=settings.name,
        value=number,
        target=settings.value,
        active=number > settings.activation_value,
        replica_cap=None,
        detail={"query": number},
        taken_at=taken_at,
    )
