"""Sample PostgreSQL job-table consumer workload for the rig: takes one queued row of table ``jobs``
at a time (FOR UPDATE SKIP LOCKED), takes WORK_SECONDS, deletes it, and appends its ``state``
column (the test's message id) to RECORD_FILE.

Env: PG_DSN (a libpq URL with the user's password), WORK_SECONDS (default 0.05), RECORD_FILE
(optional). SIGTERM: finish the row in hand, exit 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

TAKE = (
    "DELETE FROM jobs WHERE id = (SELECT id FROM jobs ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1) "
    "RETURNING state"
)


async def consume() -> int:
    import asyncpg

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    work = float(os.environ.get("WORK_SECONDS", "0.05"))
    record = os.environ.get("RECORD_FILE")
    connection = await asyncpg.connect(os.environ["PG_DSN"], ssl="disable")
    out = open(record, "a", buffering=1) if record else None  # noqa: ASYNC230, SIM115 - opened once, lives as long as the loop
    print("consuming jobs", flush=True)
    try:
        while not stop.is_set():
            async with connection.transaction():
                taken = await connection.fetchval(TAKE)
                if taken is not None:
                    await asyncio.sleep(work)
            if taken is None:
                await asyncio.sleep(0.2)
            elif out is not None:
                out.write(taken + "\n")
    finally:
        await connection.close()
        if out is not None:
            out.close()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(consume()))
