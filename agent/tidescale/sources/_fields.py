"""Shared machinery of the sources' settings parsers: field documentation and error collection.

A settings parser reads every field it knows, collects each problem as a
:class:`~tidescale.errors.HintError` naming the full annotation, and raises them
all at once as :class:`~tidescale.errors.HintsInvalid`, so a person fixes a
Deployment's hints in one go rather than one error per apply.
"""

from __future__ import annotations

import bisect
import difflib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from tidescale._values import parse_duration
from tidescale.errors import HintError, HintsInvalid

__all__ = [
    "ANNOTATION_PREFIX",
    "DRAIN_TIME_DOC",
    "LIMITS",
    "MAX_PARTITION",
    "MAX_PARTITION_RANGES",
    "MAX_REGEX_LENGTH",
    "FieldCollector",
    "FieldDoc",
    "LimitDoc",
    "PartitionRanges",
    "compile_linear",
    "parse_drain_time",
]

ANNOTATION_PREFIX = "tidescale.io/"

T = TypeVar("T")

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@dataclass(frozen=True, kw_only=True, slots=True)
class FieldDoc:
    """One trigger field, as the generated hints reference shows it."""

    field: str
    """The field name without prefix, e.g. ``lag-threshold``."""
    type: str
    """The form of the value, worded for a person, e.g. ``whole number > 0``."""
    default: str | None
    """The default as it would be written in the annotation; None when required or unset."""
    meaning: str
    example: str


@dataclass(frozen=True, kw_only=True, slots=True)
class LimitDoc:
    """One bound on what hints may ask for, as the generated hints reference shows it."""

    what: str
    limit: str
    error: str
    """The expected-part of the error a value past the limit gets."""


MAX_PARTITION_RANGES = 256
"""Most comma-separated items in ``partitions``: kept as ranges, never expanded into a set."""
MAX_PARTITION = 1_000_000
"""Highest partition number ``partitions`` may name (Kafka clusters stay far below it)."""
MAX_REGEX_LENGTH = 1024
"""Longest regular expression (queue-pattern, member-client-id-pattern), in characters."""
_REGEX_MEMORY = 1 << 20
"""Bytes RE2 may use for one compiled pattern; a larger one is refused."""

_PARTITIONS_EXPECTED = (
    f'numbers and inclusive ranges, comma-separated, e.g. "0,2,10-20" (at most {MAX_PARTITION_RANGES} '
    f"items, low <= high <= {MAX_PARTITION})"
)
_REGEX_EXPECTED = (
    f"a regular expression in RE2 syntax (at most {MAX_REGEX_LENGTH} characters; no backreferences "
    "or lookarounds: patterns are matched in linear time)"
)

LIMITS: tuple[LimitDoc, ...] = (
    LimitDoc(
        what="`<trigger>.partitions` items",
        limit=f"{MAX_PARTITION_RANGES} items, numbers up to {MAX_PARTITION}",
        error=_PARTITIONS_EXPECTED,
    ),
    LimitDoc(
        what="`<trigger>.queue-pattern`, `<trigger>.member-client-id-pattern`",
        limit=f"{MAX_REGEX_LENGTH} characters, RE2 syntax, {_REGEX_MEMORY // 1024} KiB compiled",
        error=_REGEX_EXPECTED,
    ),
)


class PartitionRanges:
    """Partition numbers as sorted, merged inclusive ranges: membership is a binary search, and
    ``0-1000000`` costs one pair, not a million numbers (a hint must not be a memory bomb)."""

    __slots__ = ("_highs", "_lows", "ranges")

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        merged: list[tuple[int, int]] = []
        for low, high in sorted(ranges):
            if merged and low <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], high))
            else:
                merged.append((low, high))
        self.ranges: tuple[tuple[int, int], ...] = tuple(merged)
        self._lows = [low for low, _ in merged]
        self._highs = [high for _, high in merged]

    def __contains__(self, number: object) -> bool:
        if not isinstance(number, int):
            return False
        at = bisect.bisect_right(self._lows, number) - 1
        return at >= 0 and number <= self._highs[at]

    def __len__(self) -> int:
        return sum(high - low + 1 for low, high in self.ranges)

    def __iter__(self) -> Iterator[int]:
        for low, high in self.ranges:
            yield from range(low, high + 1)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PartitionRanges):
            return self.ranges == other.ranges
        if isinstance(other, (set, frozenset)):
            # Compared with a set of numbers by content; the length check first keeps it cheap.
            return len(other) == len(self) and all(n in self for n in other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.ranges)

    def __repr__(self) -> str:
        return "PartitionRanges(" + ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in self.ranges) + ")"


def parse_partitions(annotation: str, value: str) -> PartitionRanges:
    """``"1,2,10-20"`` -> ranges (KEDA's partitionLimitation form), capped in items and numbers."""
    items = value.split(",")
    if len(items) > MAX_PARTITION_RANGES:
        raise HintError(annotation, f"{len(items)} items", _PARTITIONS_EXPECTED)
    ranges: list[tuple[int, int]] = []
    for item in items:
        match = re.fullmatch(r"\s*(\d{1,7})(?:\s*-\s*(\d{1,7}))?\s*", item)
        if match is None:
            raise HintError(annotation, value, _PARTITIONS_EXPECTED)
        low = int(match[1])
        high = int(match[2]) if match[2] is not None else low
        if high < low or high > MAX_PARTITION:
            raise HintError(annotation, value, _PARTITIONS_EXPECTED)
        ranges.append((low, high))
    return PartitionRanges(ranges)


def compile_linear(pattern: str) -> Any:
    """``pattern`` compiled by RE2 (matching in time linear in the text, whatever the pattern);
    raises ``ValueError`` for a pattern RE2 refuses. RE2 is imported here, on first use."""
    import re2  # type: ignore[import-untyped,unused-ignore]

    options = re2.Options()
    options.log_errors = False
    options.max_mem = _REGEX_MEMORY
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise ValueError(str(detail)) from exc


class FieldCollector:
    """Reads one trigger's raw fields, remembering every problem instead of stopping at the first.

    ``type`` is accepted and ignored: the hints layer uses it to choose the parser.
    """

    def __init__(self, trigger: str, raw: Mapping[str, str], known: Iterable[str], *, kind: str) -> None:
        self.trigger = trigger
        self.raw = raw
        self.problems: list[HintError] = []
        known_fields = [*known, "type"]
        for field_name in raw:
            if field_name not in known_fields:
                close = difflib.get_close_matches(field_name, known_fields, n=1, cutoff=0.6)
                hint = f' (did you mean "{self.annotation(close[0])}"?)' if close else ""
                self.problems.append(
                    HintError(
                        self.annotation(field_name),
                        raw[field_name],
                        f"a known field of a {kind} trigger{hint}",
                    )
                )

    def annotation(self, field_name: str) -> str:
        return f"{ANNOTATION_PREFIX}{self.trigger}.{field_name}"

    def has(self, field_name: str) -> bool:
        return field_name in self.raw

    def get(self, field_name: str, parse: Callable[[str, str], T], default: T) -> T:
        """The parsed value, or ``default`` when absent or invalid (the problem is recorded)."""
        if field_name not in self.raw:
            return default
        try:
            return parse(self.annotation(field_name), self.raw[field_name])
        except HintError as problem:
            self.problems.append(problem)
            return default

    def require(self, field_name: str, parse: Callable[[str, str], T], placeholder: T) -> T:
        """Like :meth:`get`, but absence is a problem too."""
        if field_name not in self.raw:
            self.problems.append(
                HintError(self.annotation(field_name), None, "a value (this field is required)")
            )
            return placeholder
        return self.get(field_name, parse, placeholder)

    def problem(self, field_name: str, expected: str) -> None:
        self.problems.append(HintError(self.annotation(field_name), self.raw.get(field_name), expected))

    def finish(self) -> None:
        if self.problems:
            raise HintsInvalid(tuple(self.problems))


MIN_DRAIN_TIME = 1.0
"""Shortest drain-time target: below a second the polling interval decides, not the target."""
MAX_DRAIN_TIME = 86400.0

DRAIN_TIME_DOC = FieldDoc(
    field="drain-time",
    type="duration",
    default=None,
    meaning="Drain-time target: desired replicas = the fewest that clear the backlog within this time at "
    "the measured per-pod rate plus the arrival rate; the threshold decides until the rate is measured "
    "(docs/policy.md, Drain-time target).",
    example="60s",
)


def parse_drain_time(annotation: str, value: str) -> float:
    return parse_duration(annotation, value, minimum=MIN_DRAIN_TIME, maximum=MAX_DRAIN_TIME)


def parse_env_name(annotation: str, value: str) -> str:
    text = value.strip()
    if not _ENV_NAME.fullmatch(text):
        raise HintError(annotation, value, "an environment variable name such as KAFKA_PASSWORD")
    return text


def parse_file_path(annotation: str, value: str) -> str:
    text = value.strip()
    if not text.startswith("/") or "\x00" in text:
        raise HintError(
            annotation, value, "an absolute file path inside the container, e.g. /secrets/password"
        )
    return text


def parse_secret_name(annotation: str, value: str) -> str:
    text = value.strip()
    if len(text) > 253 or not _DNS_SUBDOMAIN.fullmatch(text):
        raise HintError(
            annotation, value, "the name of a Secret in the Deployment's namespace (DNS subdomain)"
        )
    return text


def parse_regex(annotation: str, value: str) -> str:
    if len(value) > MAX_REGEX_LENGTH:
        raise HintError(annotation, value[:64] + "...", _REGEX_EXPECTED)
    try:
        compile_linear(value)
    except ValueError as exc:
        raise HintError(annotation, value, f"{_REGEX_EXPECTED}; RE2 says: {exc}") from exc
    try:
        # The agent matches member-client-id-pattern with Python's re: the pattern must compile there
        # too, and re's parser recurses (a few hundred nested groups raise RecursionError).
        re.compile(value)
    except (re.error, RecursionError, OverflowError) as exc:
        raise HintError(
            annotation,
            value,
            f"{_REGEX_EXPECTED}; Python's re cannot compile it (too deeply nested, or {type(exc).__name__})",
        ) from exc
    return value


def parse_url(annotation: str, value: str, *, schemes: tuple[str, ...]) -> str:
    """A URL with one of ``schemes`` and a host; a password in it is refused (no secrets in annotations)."""
    text = value.strip()
    expected = "a URL starting with " + " or ".join(f"{s}://" for s in schemes) + " and naming a host"
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise HintError(annotation, value, expected) from exc
    if parts.scheme not in schemes or not parts.hostname:
        raise HintError(annotation, value, expected)
    if parts.password is not None:
        raise HintError(
            annotation,
            _redact(text),
            "a URL without a password: put the password in a Secret and name it with "
            "password-file, password-env or credentials-secret",
        )
    return text


def _redact(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()
