"""A Kafka answer is refused from its 4-byte length when that announces more than the cap.

The broker here is a hostile fake on loopback: it answers the client's first request (ApiVersions)
with a length of 2 GiB and then streams 80 MiB, which a client without the cap buffers whole.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tidescale.errors import SourceError
from tidescale.sources.base import Scope
from tidescale.sources.kafka import parse_kafka_settings
from tidescale.sources.kafka._frames import MAX_ANSWER_BYTES, AnswerTooLarge, _CappedReader
from tidescale.sources.kafka._source import KafkaSource

STREAMED = 80 << 20
"""More than the cap, so that a client without it would buffer every byte."""


class HostileKafka:
    """Answers the first request of each connection with ``declared`` and streams ``STREAMED`` bytes,
    counting for each connection the bytes the client's socket took."""

    def __init__(self, declared: int) -> None:
        self.declared = declared
        self.taken: list[int] = []
        self.server: asyncio.Server | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.taken)
        self.taken.append(0)
        try:
            (size,) = struct.unpack(">i", await reader.readexactly(4))
            await reader.readexactly(size)
            writer.write(struct.pack(">i", self.declared))
            chunk = bytes(1 << 20)
            for _ in range(STREAMED // len(chunk)):
                writer.write(chunk)
                await writer.drain()
                self.taken[index] += len(chunk)
            await reader.read()  # held open until the client goes
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest_asyncio.fixture(loop_scope="session")
async def hostile() -> AsyncIterator[tuple[HostileKafka, int]]:
    broker = HostileKafka(declared=2**31 - 1)
    broker.server = await asyncio.start_server(broker.serve, "127.0.0.1", 0)
    try:
        yield broker, broker.server.sockets[0].getsockname()[1]
    finally:
        broker.server.close()


async def test_a_broker_announcing_a_two_gib_answer_is_refused_at_its_length_and_named(
    hostile: tuple[HostileKafka, int],
) -> None:
    broker, port = hostile
    raw = {"bootstrap-servers": f"127.0.0.1:{port}", "consumer-group": "g", "topic": "t", "timeout": "5s"}
    settings = parse_kafka_settings("kafka", raw)
    source = KafkaSource(settings)
    try:
        with pytest.raises(SourceError) as refused:
            await source.measure(settings, Scope.GROUP)
    finally:
        await source.close()
    message = str(refused.value)
    assert f"127.0.0.1:{port}" in message
    assert "2,147,483,647 bytes" in message
    assert "at most 64 MiB" in message
    assert broker.taken, "the client never connected"
    # The client hung up at the length: only what the sockets' buffers took got through.
    assert max(broker.taken) < MAX_ANSWER_BYTES // 2, broker.taken


async def test_the_capped_reader_passes_lengths_up_to_the_cap_and_refuses_negative_ones() -> None:
    stream = asyncio.StreamReader()
    stream.feed_data(b"\x00\x00\x00\x07payload")
    reader = _CappedReader(stream, "k:9092")
    assert await reader.readexactly(4) == b"\x00\x00\x00\x07"
    assert await reader.readexactly(7) == b"payload"
    assert not reader.at_eof()
    for size in (-1, MAX_ANSWER_BYTES + 1):
        with pytest.raises(AnswerTooLarge, match=r"k:9092 announced an answer of"):
            await reader.readexactly(size)
