"""A bounded RESP2 codec: the few bytes of the Redis protocol the source needs, and nothing else.

Why not redis-py (``redis.asyncio``): the waker connects to servers that tenants name, and a
tenant's server is hostile input. redis-py reads whatever length a bulk reply announces
(``$1000000000`` makes it buffer a gigabyte before any timeout can help) and has no setting to
cap a reply; its import also costs the agent 6.5 MiB, where this codec costs 0.2 MiB
(bench/results/source_import.md).
The source sends six commands (AUTH, SELECT, LLEN, TYPE + SCARD/ZCARD/HLEN, XLEN, XINFO GROUPS)
and reads their replies, which this module does in about a hundred lines, with every reply
bounded: :data:`MAX_REPLY_BYTES` bytes, :data:`MAX_ELEMENTS` array items, :data:`MAX_DEPTH`
levels of nesting.

Pure apart from reading an ``asyncio.StreamReader`` (the tests feed one bytes, no socket).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from tidescale.errors import SourceError

__all__ = [
    "MAX_DEPTH",
    "MAX_ELEMENTS",
    "MAX_REPLY_BYTES",
    "Reply",
    "RespError",
    "encode_command",
    "read_reply",
]

MAX_REPLY_BYTES = 1 << 20
"""Most bytes one reply may take (strings and headers): XINFO GROUPS of about 7,000 groups."""
MAX_ELEMENTS = 100_000
"""Most array items, at every level, in one reply."""
MAX_DEPTH = 4
"""Deepest nesting of arrays in one reply (XINFO GROUPS needs 2)."""
MAX_LINE_BYTES = 64 << 10
"""Longest header or simple-string line (the StreamReader's limit must be at least this)."""

_INTEGER = re.compile(rb"-?\d{1,19}")


@dataclass(frozen=True, slots=True)
class RespError:
    """An error reply (``-WRONGTYPE ...``): a value, so that one failed command of a pipeline
    fails only its own trigger."""

    message: str

    @property
    def code(self) -> str:
        """The first word: ``WRONGTYPE``, ``NOAUTH``, ``WRONGPASS``, ``NOPERM``, ``ERR``..."""
        return self.message.split(" ", 1)[0]


Reply = int | bytes | None | RespError | list["Reply"]


def encode_command(*args: str | bytes | int) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Budget:
    __slots__ = ("bytes_left", "elements_left")

    def __init__(self, max_bytes: int, max_elements: int) -> None:
        self.bytes_left = max_bytes
        self.elements_left = max_elements

    def spend_bytes(self, count: int) -> None:
        self.bytes_left -= count
        if self.bytes_left < 0:
            raise SourceError(f"the server's reply is larger than {MAX_REPLY_BYTES >> 10} KiB: refused")

    def spend_elements(self, count: int) -> None:
        self.elements_left -= count
        if self.elements_left < 0:
            raise SourceError(f"the server's reply has more than {MAX_ELEMENTS} items: refused")


async def read_reply(
    reader: asyncio.StreamReader, *, max_bytes: int = MAX_REPLY_BYTES, max_elements: int = MAX_ELEMENTS
) -> Reply:
    """One reply. SourceError for a reply past a bound or not RESP; ``asyncio.IncompleteReadError``
    when the connection ends first (the caller's: it owns the connection)."""
    return await _read(reader, _Budget(max_bytes, max_elements), depth=0)


async def _line(reader: asyncio.StreamReader, budget: _Budget) -> bytes:
    try:
        line = await reader.readuntil(b"\r\n")
    except asyncio.LimitOverrunError as exc:
        raise SourceError(f"the server sent a line longer than {MAX_LINE_BYTES >> 10} KiB: refused") from exc
    budget.spend_bytes(len(line))
    return line[:-2]


def _integer(body: bytes) -> int:
    if _INTEGER.fullmatch(body) is None:
        raise SourceError(f"the server sent {body[:32]!r} where RESP has a number: not a Redis server?")
    return int(body)


async def _read(reader: asyncio.StreamReader, budget: _Budget, *, depth: int) -> Reply:
    line = await _line(reader, budget)
    kind, body = line[:1], line[1:]
    if kind == b"+":
        return body
    if kind == b"-":
        return RespError(body.decode("utf-8", "replace"))
    if kind == b":":
        return _integer(body)
    if kind == b"$":
        size = _integer(body)
        if size == -1:
            return None
        if size < 0:
            raise SourceError(f"the server announced a string of {size} bytes: not RESP")
        budget.spend_bytes(size + 2)
        data = await reader.readexactly(size + 2)
        if data[-2:] != b"\r\n":
            raise SourceError("the server's string does not end with CRLF: not RESP")
        return data[:-2]
    if kind == b"*":
        count = _integer(body)
        if count == -1:
            return None
        if count < 0:
            raise SourceError(f"the server announced an array of {count} items: not RESP")
        if depth >= MAX_DEPTH:
            raise SourceError(f"the server's reply nests arrays deeper than {MAX_DEPTH}: refused")
        budget.spend_elements(count)
        return [await _read(reader, budget, depth=depth + 1) for _ in range(count)]
    raise SourceError(f"the server sent {line[:32]!r}, which is not RESP2: not a Redis server?")
