"""Shared machinery of the sources' settings parsers: field documentation and error collection.

A settings parser reads every field it knows, collects each problem as a
:class:`~tidescale.errors.HintError` naming the full annotation, and raises them
all at once as :class:`~tidescale.errors.HintsInvalid`, so a person fixes a
Deployment's hints in one go rather than one error per apply.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from tidescale.errors import HintError, HintsInvalid

__all__ = ["ANNOTATION_PREFIX", "FieldCollector", "FieldDoc"]

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


class FieldCollector:
    """Reads one trigger's raw fields, remembering every problem instead of stopping at the first.

    ``type`` is accepted and ignored: the hints layer uses it to choose the parser.
    """

    def __init__(self, trigger: str, raw: Mapping[str, str], known: Iterable[str]) -> None:
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
                        "a known field of a " + _kind(known_fields) + " trigger" + hint,
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


def _kind(known_fields: list[str]) -> str:
    # The message names the trigger kind so "did you mean" reads naturally for either source.
    return "kafka" if "consumer-group" in known_fields else "rabbitmq"


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
    try:
        re.compile(value)
    except re.error as exc:
        raise HintError(annotation, value, f"a regular expression ({exc})") from exc
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
