"""A cap on the size of one Kafka broker answer.

aiokafka reads every answer as a 4-byte length followed by ``readexactly(length)``: anything
listening where a tenant's hints point can announce 2 GiB and send it, and the process buffers
all of it, on each connection. aiokafka has no option for a limit, and it builds its connections by
name inside ``AIOKafkaClient.bootstrap`` and ``_get_conn`` (there is no factory to hand a subclass
to). So the cap sits on the one step every connection takes before it reads anything:
``AIOKafkaConnection._create_reader_task``, which starts the task that reads ``self._reader``.
The reader is wrapped there; the wrapper refuses a declared length above
:data:`MAX_ANSWER_BYTES`.

:func:`cap_answers` installs it once for the whole process, on purpose: every Kafka connection
tidescale opens (agent, waker, CLI) is a measurement connection, whose answers (metadata,
offsets, a tail fetch of at most 4 MiB) stay far below the cap.
"""

from __future__ import annotations

import logging
from typing import Any

from tidescale.errors import SourceError

MAX_ANSWER_BYTES = 64 << 20
"""Largest Kafka answer accepted (64 MiB): ~16 times the largest fetch the source asks for."""

_log = logging.getLogger("tidescale.sources.kafka")
_INSTALLED = "_tidescale_answer_cap"


class AnswerTooLarge(ConnectionError):
    """A broker announced an answer above the cap. Raised inside aiokafka's reader task; a
    ConnectionError, so aiokafka closes the connection as broken (without a traceback) and fails
    its pending requests with a KafkaConnectionError caused by this; :func:`refused_answer`
    finds it there."""


class _CappedReader:
    """The connection's StreamReader, but ``readexactly`` refuses a length above the cap."""

    __slots__ = ("_broker", "_reader")

    def __init__(self, reader: Any, broker: str) -> None:
        self._reader = reader
        self._broker = broker

    async def readexactly(self, size: int) -> bytes:
        if not 0 <= size <= MAX_ANSWER_BYTES:
            message = (
                f"Kafka broker {self._broker} announced an answer of {size:,} bytes: expected at most "
                f"{MAX_ANSWER_BYTES >> 20} MiB (a Kafka metadata or offsets answer is far smaller); check "
                "that bootstrap-servers names Kafka brokers"
            )
            _log.warning("%s", message)
            raise AnswerTooLarge(message)
        data: bytes = await self._reader.readexactly(size)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


def cap_answers() -> None:
    """Caps the answers of every aiokafka connection opened from now on (idempotent)."""
    from aiokafka.conn import AIOKafkaConnection

    if getattr(AIOKafkaConnection, _INSTALLED, False):
        return
    start_reading = AIOKafkaConnection._create_reader_task

    def capped_reader_task(self: Any) -> Any:
        self._reader = _CappedReader(self._reader, f"{self._host}:{self._port}")
        return start_reading(self)

    AIOKafkaConnection._create_reader_task = capped_reader_task
    setattr(AIOKafkaConnection, _INSTALLED, True)


def refused_answer(exc: BaseException) -> SourceError | None:
    """The SourceError for an answer the cap refused, if ``exc`` (or what caused it) is one."""
    seen: BaseException | None = exc
    for _depth in range(8):
        if seen is None:
            return None
        if isinstance(seen, AnswerTooLarge):
            return SourceError(str(seen))
        seen = seen.__cause__
    return None
