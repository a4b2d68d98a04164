"""How late RabbitMQ's management API reports a queue's messages: the floor of a RabbitMQ wake.

The waker (and KEDA's RabbitMQ scaler over HTTP) read queue depths from the management API
(``GET /api/queues/{vhost}``). Those counts are statistics the broker collects, not the queue's
live state, so a message published to an empty queue shows up in the API some time later. This
measures that delay on the rig's RabbitMQ (``collect_statistics_interval`` 1 s), apart from
anything tidescale does:

- declare: a fresh durable queue is declared -> the API shows ``messages_ready`` for it at all;
- publish: one persistent message (publisher confirms) into that empty queue, after its counts
  are known -> the API shows ``messages_ready >= 1``;
- passive declare: the same over AMQP (``queue.declare`` passive answers the live ready count).

Polls every 20 ms. Not a test: numbers are reported, never asserted.

    .venv/bin/python bench/bench_rabbitmq_stats_delay.py --write bench/results/rabbitmq_stats_delay.md
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "agent")]

import aio_pika  # noqa: E402
import httpx  # noqa: E402
from tests.rig.network import Network  # noqa: E402
from tests.rig.paths import new_run_dir  # noqa: E402
from tests.rig.processes import Supervisor  # noqa: E402
from tests.rig.rabbitmq import RabbitMQ  # noqa: E402

POLL = 0.02


async def _until(check: Callable[[], Awaitable[bool]], what: str, limit: float = 60.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if await check():
            return time.monotonic() - start
        await asyncio.sleep(POLL)
    raise RuntimeError(f"{what} did not happen within {limit:g}s")


async def _ready(http: httpx.AsyncClient, url: str) -> int | None:
    value = (await http.get(url)).json().get("messages_ready")
    return value if isinstance(value, int) else None


async def _sample(
    channel: aio_pika.abc.AbstractChannel, http: httpx.AsyncClient, base: str
) -> tuple[float, ...]:
    queue = f"stats-delay-{uuid.uuid4().hex[:8]}"
    url = f"{base}/api/queues/%2F/{queue}"

    async def known() -> bool:
        return await _ready(http, url) is not None

    async def seen() -> bool:
        return (await _ready(http, url) or 0) >= 1

    await channel.declare_queue(queue, durable=True)
    declared = await _until(known, "the counts of a fresh queue")
    await asyncio.sleep(1.5)
    message = aio_pika.Message(b"x", delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
    await channel.default_exchange.publish(message, routing_key=queue)
    published = await _until(seen, "the published message in the API")
    start = time.monotonic()
    passive = await channel.declare_queue(queue, passive=True)
    if passive.declaration_result.message_count < 1:
        raise RuntimeError("a passive declare did not see the message")
    round_trip = time.monotonic() - start
    await channel.queue_delete(queue)
    return declared, published, round_trip


async def _measure(broker: RabbitMQ, samples: int) -> list[tuple[float, ...]]:
    found = []
    connection = await aio_pika.connect(broker.amqp_url)
    async with connection, httpx.AsyncClient(auth=(broker.username, broker.password), timeout=5) as http:
        channel = await connection.channel(publisher_confirms=True)
        for index in range(samples):
            found.append(await _sample(channel, http, broker.management_url))
            declared, published, _ = found[-1]
            print(f"sample {index + 1}: declare -> counts {declared:.2f}s, publish -> seen {published:.2f}s")
    return found


def _row(name: str, values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[max(0, round(0.95 * len(ordered)) - 1)]
    return (
        f"| {name} | {statistics.median(ordered):.2f} | {p95:.2f} | {ordered[0]:.2f} | {ordered[-1]:.2f} "
        f"| {len(ordered)} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    run_dir = new_run_dir()
    supervisor = Supervisor(run_dir=run_dir)
    network = Network().open()
    try:
        broker = RabbitMQ.start(supervisor, network, run_dir)
        found = asyncio.run(_measure(broker, args.samples))
    finally:
        supervisor.stop_all()
        network.close()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        "# RabbitMQ management API: how late it reports messages",
        "",
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC. Machine: {os.cpu_count()} cores "
        f"(shared with other jobs; load average at the end {load}), {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}. Broker: the rig's RabbitMQ "
        "(Debian's rabbitmq-server, `collect_statistics_interval` 1 s). "
        "Command: `bench/bench_rabbitmq_stats_delay.py`.",
        "",
        "| interval | p50 s | p95 s | min s | max s | samples |",
        "|---|---:|---:|---:|---:|---:|",
        _row("fresh queue declared -> its counts in `GET /api/queues/%2F/{queue}`", [f[0] for f in found]),
        _row("message published (confirmed) -> `messages_ready >= 1` in the API", [f[1] for f in found]),
        _row("AMQP passive `queue.declare` round trip, answering the live count", [f[2] for f in found]),
        "",
        "A wake through the management API cannot be faster than the second row plus the waker's round"
        " (1 s) and one PATCH.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.write:
        args.write.write_text(report)


if __name__ == "__main__":
    main()
