"""Sample NATS JetStream consumer workload for the rig: pulls from the durable consumer
NATS_CONSUMER of stream NATS_STREAM one message at a time, takes WORK_SECONDS per message, acks
after the work, and appends each message body (the test's message id) to RECORD_FILE.

Env: NATS_URL, NATS_STREAM, NATS_CONSUMER, NATS_SUBJECT (the consumer's filter),
WORK_SECONDS (default 0.05), RECORD_FILE (optional). SIGTERM: finish, close, exit 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys


async def consume() -> int:
    import nats
    import nats.errors

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    work = float(os.environ.get("WORK_SECONDS", "0.05"))
    record = os.environ.get("RECORD_FILE")
    connection = await nats.connect(os.environ["NATS_URL"])
    out = open(record, "a", buffering=1) if record else None  # noqa: ASYNC230, SIM115 - opened once, lives as long as the loop
    try:
        js = connection.jetstream()
        subscription = await js.pull_subscribe(
            os.environ["NATS_SUBJECT"], durable=os.environ["NATS_CONSUMER"], stream=os.environ["NATS_STREAM"]
        )
        print(f"consuming {os.environ['NATS_STREAM']}/{os.environ['NATS_CONSUMER']}", flush=True)
        while not stop.is_set():
            try:
                messages = await subscription.fetch(1, timeout=0.5)
            except nats.errors.TimeoutError:
                continue
            for message in messages:
                await asyncio.sleep(work)
                if out is not None:
                    out.write(message.data.decode() + "\n")
                await message.ack()
    finally:
        await connection.close()
        if out is not None:
            out.close()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(consume()))
