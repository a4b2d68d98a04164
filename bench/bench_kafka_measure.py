"""What one Kafka measurement costs: wall time and broker requests, local vs group-wide.

For topics of 1, 100 and 1,000 partitions (one message per partition, one
committed offset per partition, four live group members sharing the partitions, as
if four pods consumed), measures GROUP and LOCAL scope repeatedly through one
KafkaSource and reports the cold first measurement (coordinator and metadata
lookups included) and the steady state (median and p95 time, requests per
measurement). A third row per size measures GROUP scope with isolation-level
read-committed: every partition lags by one record there, so every partition's tail
is read (one Fetch per leader on top of the rest), the worst case of that option.

    .venv/bin/python bench/bench_kafka_measure.py                # starts the rig's Kafka
    .venv/bin/python bench/bench_kafka_measure.py --bootstrap host:port --pod-ip ADDR
    .venv/bin/python bench/bench_kafka_measure.py --write bench/results/kafka_measure.md

Not a test: numbers are reported, never asserted.
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "agent")]

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402

from tidescale.sources.base import Scope  # noqa: E402
from tidescale.sources.kafka._source import KafkaSettings, KafkaSource, parse_kafka_settings  # noqa: E402

SIZES = (1, 100, 1000)
REPEATS = 30
MEMBERS = 4
"""Group members, as if 4 pods consumed the topic; LOCAL measures the first one's share."""


async def _prepare(bootstrap: str, partitions: int) -> tuple[str, str]:
    topic, group = f"bench-{partitions}-{uuid.uuid4().hex[:6]}", f"bench-{uuid.uuid4().hex[:6]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name=topic, num_partitions=partitions, replication_factor=1)])
        while True:
            described = await admin.describe_topics([topic])
            parts = described[0]["partitions"] if described else []
            if len(parts) == partitions and all(p["leader"] >= 0 for p in parts):
                break
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    try:
        for p in range(partitions):
            await producer.send(topic, b"x", partition=p)
        await producer.flush()
    finally:
        await producer.stop()
    committer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await committer.start()
    try:
        offsets = {TopicPartition(topic, p): 0 for p in range(partitions)}
        committer.assign(list(offsets))
        await committer.commit(offsets)
    finally:
        await committer.stop()
    return topic, group


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


async def _bench_one(bootstrap: str, pod_ip: str, partitions: int) -> list[str]:
    topic, group = await _prepare(bootstrap, partitions)
    members = [
        AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group,
            enable_auto_commit=False,
            client_id=f"bench-{i}",
        )
        for i in range(MEMBERS)
    ]
    for member in members:
        await member.start()
    rows: list[str] = []
    try:
        while sum(len(m.assignment()) for m in members) < partitions:
            await asyncio.gather(*(m.getmany(timeout_ms=200) for m in members))
        # "This pod" is the first member that owns something (with 1 partition, only one does).
        mine = next(i for i, m in enumerate(members) if m.assignment())
        owned = len(members[mine].assignment())
        common = {"bootstrap-servers": bootstrap, "consumer-group": group, "topic": topic, "timeout": "30s"}
        settings = parse_kafka_settings("kafka", {**common, "member-client-id-pattern": f"bench-{mine}"})
        committed_only = parse_kafka_settings("kafka", {**common, "isolation-level": "read-committed"})
        for scope, expected, measured in (
            (Scope.GROUP, partitions, settings),
            (Scope.LOCAL, owned, settings),
            (Scope.GROUP, partitions, committed_only),
        ):
            rows.append(await _bench_scope(measured, scope, pod_ip, partitions, expected))
            print(rows[-1], flush=True)
    finally:
        for member in members:
            await member.stop()
    return rows


async def _bench_scope(
    settings: KafkaSettings, scope: Scope, pod_ip: str, partitions: int, expected: int
) -> str:
    source = KafkaSource(settings, pod_ip=pod_ip)
    try:
        started = time.perf_counter()
        first = await source.measure(settings, scope)
        cold_seconds, cold_requests = time.perf_counter() - started, source.requests
        times: list[float] = []
        before = source.requests
        for _ in range(REPEATS):
            started = time.perf_counter()
            last = await source.measure(settings, scope)
            times.append(time.perf_counter() - started)
        steady_requests = (source.requests - before) / REPEATS
    finally:
        await source.close()
    if not len(last.detail) == len(first.detail) == expected:
        raise RuntimeError(f"{scope.value} measured {len(last.detail)} partitions, expected {expected}")
    if scope is Scope.GROUP and last.value != partitions:
        raise RuntimeError(f"{scope.value} measured lag {last.value}, expected {partitions}")
    label = f"{scope.value}, read-committed" if settings.isolation_level == "read-committed" else scope.value
    return (
        f"| {partitions} | {label} | {expected} | {cold_seconds * 1000:.1f} | {cold_requests} | "
        f"{statistics.median(times) * 1000:.2f} | {_p95(times) * 1000:.2f} | {steady_requests:g} |"
    )


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if "model name" in line:
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _start_rig_kafka() -> tuple[str, str, object]:
    from tests.rig.kafka import Kafka
    from tests.rig.network import Network
    from tests.rig.paths import new_run_dir
    from tests.rig.processes import Supervisor

    run = new_run_dir()
    supervisor = Supervisor(run_dir=run)
    network = Network().open()
    kafka = Kafka.start(supervisor, network, run)

    def stop() -> None:
        supervisor.stop_all()
        network.close()

    return kafka.bootstrap, kafka.host, stop


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", help="an existing broker (default: start the rig's Kafka)")
    parser.add_argument("--pod-ip", help="the address this process connects from (needed with --bootstrap)")
    parser.add_argument("--write", type=Path, help="also write the results as Markdown to this file")
    args = parser.parse_args()
    stop = None
    if args.bootstrap:
        bootstrap, pod_ip = args.bootstrap, args.pod_ip or "127.0.0.1"
    else:
        bootstrap, pod_ip, stop = _start_rig_kafka()
    header = [
        "| topic partitions | scope | measured | cold ms | cold requests | steady median ms | steady p95 ms "
        "| steady requests |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(header), flush=True)
    rows: list[str] = []
    load_before = os.getloadavg()
    try:
        for size in SIZES:
            rows += await _bench_one(bootstrap, pod_ip, size)
        load_after = os.getloadavg()
    finally:
        if stop is not None:
            stop()  # type: ignore[operator]
    if args.write:
        cpu = _cpu_model()
        text = "\n".join(
            [
                "# Kafka measurement cost",
                "",
                f"Date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}. "
                f"Machine: {cpu}, {os.cpu_count()} cores (shared with other jobs), {platform.system()} "
                f"{platform.release()}, Python {platform.python_version()}. Broker: the rig's single-node "
                "KRaft Kafka on the same machine (one leader: one ListOffsets request for log-end and one "
                "for log-start per measurement; the topic layout comes from the cache, the log-end request "
                "probing the partition past the cached count so that partitions added are still seen by "
                "the next measurement). Load average (1 min) "
                f"{load_before[0]:.2f} before, {load_after[0]:.2f} after the run.",
                "",
                f"Produced by `bench/bench_kafka_measure.py`; {REPEATS} steady-state measurements per row. "
                "Cold = the first measurement of a fresh KafkaSource (bootstrap, FindCoordinator and "
                "Metadata included). Requests are broker requests counted by the source. The group has "
                f"{MEMBERS} live members (as if {MEMBERS} pods consumed); LOCAL measures the partitions of "
                "one of them ('measured'), found through DescribeGroups, GROUP measures all.",
                "",
                *header,
                *rows,
                "",
            ]
        )
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text)


if __name__ == "__main__":
    asyncio.run(main())
