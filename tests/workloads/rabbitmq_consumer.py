"""Sample RabbitMQ consumer workload for the rig: consumes RABBITMQ_QUEUE with
prefetch 1, takes WORK_SECONDS per message, acks after the work, and appends each
message body (the test's message id) to RECORD_FILE.

Env: RABBITMQ_URL (amqp URL with the test user's credentials), RABBITMQ_QUEUE,
WORK_SECONDS (default 0.05), RECORD_FILE (optional). SIGTERM: finish, close, exit 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys


async def consume() -> int:
    import aio_pika

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    work = float(os.environ.get("WORK_SECONDS", "0.05"))
    record = os.environ.get("RECORD_FILE")
    connection = await aio_pika.connect_robust(os.environ["RABBITMQ_URL"])
    out = open(record, "a", buffering=1) if record else None  # noqa: ASYNC230, SIM115 - opened once, lives as long as the loop
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1)
        queue = await channel.declare_queue(os.environ["RABBITMQ_QUEUE"], durable=True)
        print(f"consuming {queue.name}", flush=True)

        async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with message.process():
                await asyncio.sleep(work)
                if out is not None:
                    out.write(message.body.decode() + "\n")

        tag = await queue.consume(handle)
        await stop.wait()
        await queue.cancel(tag)
    finally:
        await connection.close()
        if out is not None:
            out.close()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(consume()))
