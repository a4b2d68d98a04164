"""From a Prometheus instant-query answer to one number and a :class:`Measurement` (pure).

The answer of ``GET /api/v1/query`` is ``{"status": "success", "data": {"resultType": ..., "result":
...}}``. What is read, following KEDA's prometheus scaler (``ExecutePromQuery``) except where noted:

- a vector of one series: its value;
- a vector of no series (the series is gone, or never scraped): 0 with ignore-null-values (KEDA's
  default), else an error;
- a vector of several series: an error naming the count (KEDA: "returned multiple elements");
- a scalar (``scalar(...)``, ``vector(1)`` is a vector, ``1`` is a scalar): its value. KEDA's JSON
  decoding fails on a scalar answer, so a scalar query that fails there works here;
- NaN, +Inf or -Inf: 0 with ignore-null-values, else an error (KEDA does the same);
- a matrix (a range selector such as ``foo[5m]`` without a function) or a string: an error saying
  what was expected (KEDA reads a matrix's missing ``value`` as an empty result).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tidescale.errors import SourceError, SourceNotFound
from tidescale.sources._http import quoted
from tidescale.sources.base import Measurement
from tidescale.sources.prometheus._settings import PrometheusSettings

__all__ = ["QueryValue", "prometheus_measurement", "query_value", "sample_number"]

_MAX_NUMBER_TEXT = 64
"""Longest text of one sample value read (Prometheus writes at most ~25 characters)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class QueryValue:
    """What one instant query gave."""

    value: float
    """The number scaled on (0 when a null was read as 0)."""
    null: str | None = None
    """Why the value is a stand-in 0 (``empty`` result, ``NaN``, ``+Inf``, ``-Inf``), or None."""


def sample_number(sample: Any, what: str) -> float:
    """The float of a ``[<unix time>, "<value>"]`` sample; SourceError for anything else."""
    if not isinstance(sample, list) or len(sample) != 2 or not isinstance(sample[1], str):
        raise SourceError(f'{what}: a sample is not [time, "value"]: not a Prometheus query answer')
    text = sample[1]
    if len(text) > _MAX_NUMBER_TEXT:
        raise SourceError(f"{what}: a sample value of {len(text)} characters is not a number")
    try:
        return float(text)  # Prometheus writes NaN, +Inf and -Inf as Go does, which float() reads
    except ValueError as exc:
        raise SourceError(f"{what}: the sample value {quoted(text, 32)!r} is not a number") from exc


def query_value(answer: Any, settings: PrometheusSettings, *, where: str) -> QueryValue:
    """The number an answer gives for ``settings.query``; SourceError (SourceNotFound for an empty
    result without ignore-null-values) naming the query and what was expected otherwise."""
    what = f"{where} for query {settings.shown_query}"
    if not isinstance(answer, Mapping):
        raise SourceError(f"{what}: the answer is not a JSON object: not a Prometheus query API")
    if answer.get("status") != "success":
        kind = quoted(answer.get("errorType") or "unknown", 64)
        detail = quoted(answer.get("error") or "no error given")
        raise SourceError(f"{what}: the query failed ({kind}: {detail}): check query")
    data = answer.get("data")
    if not isinstance(data, Mapping):
        raise SourceError(f"{what}: the answer has no data object: not a Prometheus query API")
    result_type, result = data.get("resultType"), data.get("result")
    if result_type == "scalar":
        return _finite_or_null(sample_number(result, what), settings, what)
    if result_type == "vector":
        if not isinstance(result, list):
            raise SourceError(f"{what}: the vector result is not a list: not a Prometheus query answer")
        if len(result) > 1:
            raise SourceError(
                f"{what}: the query returned {len(result)} series; expected one: aggregate them "
                "(sum(...), max(...), or by no label)"
            )
        series = result[0] if result else None
        sample = series.get("value") if isinstance(series, Mapping) else None
        if not result or sample == []:  # no series, or (as KEDA reads it) a series without a sample
            if settings.ignore_null_values:
                return QueryValue(value=0.0, null="empty")
            raise SourceNotFound(
                f"{what}: the result is empty (no series): check the query and that its target is "
                "scraped, or set ignore-null-values true to read it as 0"
            )
        return _finite_or_null(sample_number(sample, what), settings, what)
    if result_type == "matrix":
        raise SourceError(
            f"{what}: the query returned a range vector (matrix); expected an instant vector or a scalar: "
            "apply a function to the range (rate(x[5m]), max_over_time(x[5m])...)"
        )
    raise SourceError(
        f"{what}: the query returned a {quoted(result_type, 32)}; expected a scalar or a vector of one series"
    )


def _finite_or_null(number: float, settings: PrometheusSettings, what: str) -> QueryValue:
    if math.isfinite(number):
        return QueryValue(value=number)
    text = "NaN" if math.isnan(number) else "+Inf" if number > 0 else "-Inf"
    if settings.ignore_null_values:
        return QueryValue(value=0.0, null=text)
    raise SourceError(
        f"{what}: the value is {text}; expected a finite number (or set ignore-null-values true)"
    )


def prometheus_measurement(found: QueryValue, settings: PrometheusSettings, taken_at: float) -> Measurement:
    """The measurement of one query value: the metric, the threshold as the per-replica target, and
    activity above activation-threshold (KEDA: ``val > activationThreshold``)."""
    detail: dict[str, float] = {"null-read-as-0": 1.0} if found.null is not None else {}
    return Measurement(
        trigger=settings.name,
        value=found.value,
        target=settings.threshold,
        active=found.value > settings.activation_threshold,
        detail=detail,
        taken_at=taken_at,
    )
