"""Sample Redis list consumer workload for the rig: pops REDIS_LIST (BLPOP, one second at a
time), takes WORK_SECONDS per item, and appends each item (the test's message id) to RECORD_FILE.

Env: REDIS_ADDRESS (host:port), REDIS_PASSWORD, REDIS_LIST, WORK_SECONDS (default 0.05),
RECORD_FILE (optional). SIGTERM: finish the item in hand, exit 0. It speaks RESP with
tidescale's own codec (no Redis client library is installed).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from tidescale.sources.redis._resp import RespError, encode_command, read_reply


async def consume() -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    work = float(os.environ.get("WORK_SECONDS", "0.05"))
    record = os.environ.get("RECORD_FILE")
    host, _, port = os.environ["REDIS_ADDRESS"].rpartition(":")
    key = os.environ["REDIS_LIST"]
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(encode_command("AUTH", os.environ["REDIS_PASSWORD"]))
    await writer.drain()
    if isinstance(answer := await read_reply(reader), RespError):
        print(f"AUTH refused: {answer.message}", flush=True)
        return 1
    out = open(record, "a", buffering=1) if record else None  # noqa: ASYNC230, SIM115 - opened once, lives as long as the loop
    print(f"consuming {key}", flush=True)
    try:
        while not stop.is_set():
            writer.write(encode_command("BLPOP", key, "1"))
            await writer.drain()
            reply = await read_reply(reader)
            if isinstance(reply, list) and len(reply) == 2 and isinstance(reply[1], bytes):
                await asyncio.sleep(work)
                if out is not None:
                    out.write(reply[1].decode() + "\n")
    finally:
        writer.close()
        if out is not None:
            out.close()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(consume()))
