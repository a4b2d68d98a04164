"""Sample Kafka consumer workload for the rig: consumes a topic in a group, takes
WORK_SECONDS per message (so lag builds up), commits after each message, and
appends every consumed message's value (the test's message id) to RECORD_FILE.

Env: KAFKA_BOOTSTRAP, KAFKA_TOPIC, KAFKA_GROUP, WORK_SECONDS (default 0.05),
RECORD_FILE (optional), POD_NAME (client id, so members are recognisable), PAUSE_FILE
(optional: while that file exists the consumer is stuck, as on a dead downstream: it stays in
its group, keeps its partitions, and consumes and commits nothing),
WORK_SECONDS_HEADER (optional): the name of a message header that, when a message carries it,
gives that message's own work time in seconds (0 to 10; otherwise WORK_SECONDS), so a producer
can change the per-message cost in the middle of a run (bench/bench_drain_time.py).
On SIGTERM it finishes the message in hand, commits, leaves the group and exits 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys


async def consume() -> int:
    from aiokafka import AIOKafkaConsumer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    work = float(os.environ.get("WORK_SECONDS", "0.05"))
    work_header = os.environ.get("WORK_SECONDS_HEADER")
    record = os.environ.get("RECORD_FILE")
    pause = os.environ.get("PAUSE_FILE")
    consumer = AIOKafkaConsumer(
        os.environ["KAFKA_TOPIC"],
        bootstrap_servers=os.environ["KAFKA_BOOTSTRAP"],
        group_id=os.environ["KAFKA_GROUP"],
        client_id=os.environ.get("POD_NAME", "kafka-consumer"),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=1,
    )
    await consumer.start()
    print(f"consuming {os.environ['KAFKA_TOPIC']} as {os.environ['KAFKA_GROUP']}", flush=True)
    out = open(record, "a", buffering=1) if record else None  # noqa: ASYNC230, SIM115 - opened once, lives as long as the loop
    try:
        while not stop.is_set():
            if pause and os.path.exists(pause):  # noqa: ASYNC240 - a stat per 0.1 s in a test workload
                await asyncio.sleep(0.1)
                continue
            batch = await consumer.getmany(timeout_ms=200, max_records=1)
            for _partition, messages in batch.items():
                for message in messages:
                    await asyncio.sleep(message_work(message.headers, work_header, work))
                    if out is not None and message.value is not None:
                        out.write(message.value.decode() + "\n")
                    await consumer.commit()
    finally:
        await consumer.stop()
        if out is not None:
            out.close()
    print("stopped", flush=True)
    return 0


def message_work(headers: object, header: str | None, default: float) -> float:
    """The message's own work time from ``header`` when it carries a number in [0, 10], else
    ``default``."""
    if header is None or not isinstance(headers, (list, tuple)):
        return default
    for entry in headers:
        if (
            isinstance(entry, tuple)
            and len(entry) == 2
            and entry[0] == header
            and isinstance(entry[1], bytes)
        ):
            try:
                value = float(entry[1][:32])
            except ValueError:
                return default
            return value if 0.0 <= value <= 10.0 else default
    return default


if __name__ == "__main__":
    sys.exit(asyncio.run(consume()))
