"""One log format for the agent, the injector and the waker: a JSON object a line, or text for people.

Every line carries ``time`` (UTC, RFC 3339 with milliseconds), ``level``, ``msg`` and
``logger``, plus whichever of ``namespace``, ``deployment``, ``pod`` and ``trigger`` are
known: the process's own (``static``, e.g. the agent's pod and Deployment) and those a
call passes with ``extra={"trigger": ...}``. An exception adds ``error`` (its traceback).

``--log-format text`` (or ``TIDESCALE_LOG_FORMAT=text``) prints the same fields as
``TIME LEVEL logger: msg key=value ...`` for a person at a terminal.

Pure standard library: the agent imports this at start in every pod.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any, Literal

import orjson

__all__ = [
    "CONTEXT_FIELDS",
    "LOG_FORMATS",
    "JsonFormatter",
    "TextFormatter",
    "add_arguments",
    "configure",
    "parse_level",
    "split_arguments",
]

LogFormat = Literal["json", "text"]
LOG_FORMATS: tuple[LogFormat, ...] = ("json", "text")
CONTEXT_FIELDS = ("namespace", "deployment", "pod", "trigger")
"""The fields a line may carry besides time, level, logger and msg, in this order."""

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "warn": logging.WARNING}
_LEVELS |= {"error": logging.ERROR, "critical": logging.CRITICAL}


def parse_level(text: str) -> int:
    """``debug``, ``info``, ``warning``, ``error`` (any case) -> the logging level; else ValueError."""
    level = _LEVELS.get(text.strip().lower())
    if level is None:
        raise ValueError(f"log level {text!r}: expected one of debug, info, warning, error")
    return level


def _stamp(record: logging.LogRecord) -> str:
    seconds = int(record.created)
    millis = int((record.created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _level_name(record: logging.LogRecord) -> str:
    return "warning" if record.levelno == logging.WARNING else record.levelname.lower()


class _ContextFormatter(logging.Formatter):
    def __init__(self, static: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.static = {k: v for k, v in (static or {}).items() if k in CONTEXT_FIELDS and v}

    def context(self, record: logging.LogRecord) -> dict[str, str]:
        fields = dict(self.static)
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None and value != "":
                fields[name] = str(value)
        return {name: fields[name] for name in CONTEXT_FIELDS if name in fields}


class JsonFormatter(_ContextFormatter):
    """One JSON object a line: time, level, logger, msg, then the known context fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _stamp(record),
            "level": _level_name(record),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(self.context(record))
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


class TextFormatter(_ContextFormatter):
    """``2026-11-28T03:00:00.123Z INFO tidescale.agent: msg namespace=shop deployment=orders``."""

    def format(self, record: logging.LogRecord) -> str:
        context = " ".join(f"{key}={value}" for key, value in self.context(record).items())
        text = f"{_stamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if context:
            text += f" {context}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure(
    *,
    level: str | int = "info",
    fmt: str | None = None,
    static: Mapping[str, str] | None = None,
    stream: IO[str] | None = None,
) -> None:
    """Route the root logger to ``stream`` (standard error) in ``fmt`` (default: ``$TIDESCALE_LOG_FORMAT``,
    else json), replacing any handler set before. Raises ValueError naming a bad level or format."""
    chosen = (fmt or os.environ.get("TIDESCALE_LOG_FORMAT") or "json").strip().lower()
    if chosen not in LOG_FORMATS:
        raise ValueError(f"log format {chosen!r}: expected json or text")
    number = level if isinstance(level, int) else parse_level(level)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(static) if chosen == "json" else TextFormatter(static))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(number)
    # httpx logs every request at info: that is debug detail here (the API client, peers, brokers).
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(number if number <= logging.DEBUG else logging.WARNING)


def add_arguments(parser: Any, *, environ: Mapping[str, str] | None = None) -> None:
    """``--log-level`` and ``--log-format`` on an argparse parser, defaulting from the environment
    (``TIDESCALE_LOG_LEVEL``, ``TIDESCALE_LOG_FORMAT``) as the chart and the injector set them."""
    env = os.environ if environ is None else environ
    parser.add_argument(
        "--log-level",
        default=env.get("TIDESCALE_LOG_LEVEL", "info"),
        help="debug, info, warning or error (default: $TIDESCALE_LOG_LEVEL, else info)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=(env.get("TIDESCALE_LOG_FORMAT") or "json").lower(),
        help="json: one object a line (default); text: for people at a terminal",
    )


def split_arguments(
    argv: Sequence[str], environ: Mapping[str, str] | None = None
) -> tuple[list[str], str, str | None]:
    """Take ``--log-level`` and ``--log-format`` (``--flag value`` or ``--flag=value``) out of ``argv``
    for a command whose own parser does not know them: (the rest, level, format or None)."""
    env = os.environ if environ is None else environ
    level, fmt = env.get("TIDESCALE_LOG_LEVEL", "info"), env.get("TIDESCALE_LOG_FORMAT") or None
    rest: list[str] = []
    items = list(argv)
    index = 0
    while index < len(items):
        item = items[index]
        name, equals, value = item.partition("=")
        if name in ("--log-level", "--log-format"):
            if not equals:
                if index + 1 >= len(items):
                    raise ValueError(f"{name} needs a value")
                value = items[index + 1]
                index += 1
            if name == "--log-level":
                level = value
            else:
                fmt = value
        else:
            rest.append(item)
        index += 1
    return rest, level, fmt
