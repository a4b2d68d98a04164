"""Another team's wake latency while a hostile namespace attacks the waker (issue 11's "Done when").

Starts the rig's control plane and Kafka and runs TWO ``tidescale waker`` processes elected through
one Lease (the chart's defaults: 2 replicas, interval 1 s), as the waker's ServiceAccount with
deploy/waker-rbac.yaml, allowed to read Secrets in team B's and the hostile namespace.

Team B's wake is timed exactly as bench_waker.py times it (``_common.wake_one``): a probe
Deployment parked by hand on its own one-partition topic and idle group, 1.5 s for the waker to
see it, then one message produced; latency = from just before ``send_and_wait`` to the first GET
(every 10 ms) showing spec.replicas >= 1.

Samples alternate in blocks (quiet, attack, quiet, attack, ...; ``--block`` samples each) so that
whatever else loads the machine falls on both alike. An attack block starts the full attack of
tests/integration/test_hostile_waker.py (``tests/integration/_hostile_tenant.py``: 40 blackholed
Kafka brokers at the maximum timeout, 2 GiB Kafka answers, regex and partition bombs, non-JSON,
non-UTF-8, 24 MiB and 200k-deep management answers, the waker's token, kubeconfig, environment and
another team's Secret as credentials, link-local, loopback and API server addresses), waits until
every refusal has its Warning Event and the blackholed batches are all in flight, then samples; it
ends by deleting the hostile Deployments and hanging up the blackholes, and waits for no batch in
flight. Reports p50/p95/max per phase, the leader's CPU and RSS per phase, restarts, and the bytes
of any credential the fake brokers received. Not a test: numbers are reported, never asserted.

    .venv/bin/python bench/bench_waker_attack.py --write bench/results/waker_attack.md
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from _common import (
    apply,
    cpu_seconds,
    kafka_parked,
    load_average,
    machine,
    memory_kib,
    percentile,
    probe_setup,
    rig,
    wake_one,
)
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from tests.integration._hostile_tenant import (
    BLACKHOLES,
    Recorder,
    apply_all,
    attack,
    connected,
    credentials_seen,
    in_flight,
    secret,
    tenant_namespace,
    token_of,
    waker_metric,
)
from tests.integration.rigkube import WAKER_NAMESPACE

from tidescale.kube import KubeConfig
from tidescale.waker import WakerClient

INTERVAL = 1.0
"""The chart's ``waker.interval``."""
PHASES = ("quiet", "attack")


async def _until(what: str, check: Any, *, limit: float, every: float = 0.5) -> None:
    deadline = time.monotonic() + limit
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {limit:g}s waiting for {what}")
        await asyncio.sleep(every)


class Bench:
    """One run: the rig's pieces, the two wakers, the tenants and what every phase measured."""

    def __init__(self, pieces: Any, args: argparse.Namespace) -> None:
        self.pieces = pieces
        self.args = args
        self.plane = pieces.plane
        self.kafka = pieces.kafka
        self.samples: list[dict[str, Any]] = []
        self.cpu = {phase: 0.0 for phase in PHASES}
        self.wall = {phase: 0.0 for phase in PHASES}
        self.recorders: list[Recorder] = []
        self.wakers: list[tuple[Any, int]] = []

    async def recorder(
        self, host: str | None = None, *, http: bool = True, kafka_bomb: bool = False
    ) -> Recorder:
        started = await Recorder(host=host or self.kafka.host, http=http, kafka_bomb=kafka_bomb).start()
        self.recorders.append(started)
        return started

    def start_wakers(self, kubeconfig: Path, namespaces: list[str], canary: str) -> None:
        from tests.rig.processes import free_port

        lease = f"bench-attack-{uuid.uuid4().hex[:6]}"
        for index in range(2):  # the chart's two replicas, one Lease
            port = free_port()
            folder = self.args.profile
            profile = ["-m", "cProfile", "-o", str(folder / f"waker-{index}.prof")] if folder else []
            argv = [sys.executable, *profile, "-m", "tidescale.cli", "waker"]
            argv += ["--kubeconfig", str(kubeconfig)]
            argv += [
                "--lease-namespace",
                WAKER_NAMESPACE,
                "--lease-name",
                lease,
                "--identity",
                f"waker-{index}",
            ]
            argv += ["--interval", str(INTERVAL), "--secret-namespaces", ",".join(namespaces)]
            argv += ["--port", str(port)]
            env = {**os.environ, "CANARY": canary, "TIDESCALE_LOG_LEVEL": "INFO"}
            self.wakers.append(
                (self.pieces.supervisor.start(f"bench-attack-waker-{index}", argv, env=env), port)
            )

    async def leader(self) -> tuple[Any, int]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for process, port in self.wakers:
                try:
                    if await waker_metric(port, "tidescale_waker_leader") == 1:
                        return process, port
                except (OSError, httpx.HTTPError):
                    pass
            await asyncio.sleep(0.5)
        raise RuntimeError("no waker led within 60s")

    async def run(self) -> dict[str, Any]:
        plane, kafka = self.plane, self.kafka
        team_b, hostile = tenant_namespace(plane, "team-b"), tenant_namespace(plane, "hostile")
        waker_kubeconfig = plane.service_account_kubeconfig(WAKER_NAMESPACE, "tidescale-waker")
        canary_env = f"env-canary-{uuid.uuid4().hex}"
        canary_file = self.pieces.run_dir / "stolen-token"
        canary_file.write_text(f"file-canary-{uuid.uuid4().hex}")
        password_b = f"teamb-{uuid.uuid4().hex}"
        secret(plane, team_b, "creds", "teamb", password_b)
        secret(plane, hostile, "creds", "thief", f"hostile-{uuid.uuid4().hex}")
        evil, evil_kafka = await self.recorder(), await self.recorder(http=False)
        kafka_bomb = await self.recorder(http=False, kafka_bomb=True)
        loopback = await self.recorder("127.0.0.1", http=False)

        self.start_wakers(waker_kubeconfig, [team_b, hostile], canary_env)
        leader, port = await self.leader()
        print(f"leader: pid {leader.pid}, port {port}", flush=True)

        client = WakerClient(KubeConfig.from_kubeconfig(plane.admin_kubeconfig))
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
        await admin.start()
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
        await producer.start()
        per_phase = -(-self.args.samples // self.args.block)
        tenant = {
            "evil": evil,
            "evil_kafka": evil_kafka,
            "kafka_bomb": kafka_bomb,
            "loopback": loopback,
            "kafka_bootstrap": kafka.bootstrap,
            "api_server": plane.server.split("://", 1)[1].rstrip("/"),
            "stolen_file": canary_file,
            "waker_kubeconfig": waker_kubeconfig,
            "env_name": "CANARY",
        }
        try:
            for index in range(2 * per_phase):
                phase = PHASES[index % 2]
                if phase == "attack":
                    holes = await self.start_attack(hostile, f"-{index}", port, tenant)
                await self.sample_block(phase, client, admin, producer, team_b, leader.pid, port)
                if phase == "attack":
                    await self.stop_attack(hostile, holes, port)
        finally:
            await producer.stop()
            await admin.close()
            await client.aclose()
            for recorder in self.recorders:
                await recorder.stop()

        hwm = memory_kib(leader.pid).get("VmHWM", 0) / 1024
        secrets = {
            "the waker's token": token_of(waker_kubeconfig),
            "the waker's environment": canary_env,
            "the waker's file": canary_file.read_text(),
            "team B's password": password_b,
        }
        received = b"".join(bytes(r.received) for r in self.recorders)
        wakers = []
        for process, _port in self.wakers:
            log = process.log.read_text(errors="replace")
            wakers.append(
                {
                    "alive": process.alive(),
                    "starts": log.count("serving /healthz"),
                    "task_restarts": log.count("task failed ("),
                    "secrets_in_log": [label for label, value in secrets.items() if value in log],
                    "kafka_answers_refused": log.count("announced an answer of"),
                }
            )
        return {
            "hwm_mib": hwm,
            "stolen": credentials_seen(received, secrets),
            "received_bytes": len(received),
            "wakers": wakers,
            "kafka_bomb_connections": kafka_bomb.connections,
        }

    async def start_attack(
        self, hostile: str, suffix: str, port: int, tenant: dict[str, Any]
    ) -> list[Recorder]:
        """Fresh blackholes and every hostile Deployment; returns once the attack runs in full."""
        holes = [await self.recorder(http=False) for _ in range(BLACKHOLES)]
        planned = attack(holes=holes, **tenant)
        apply_all(self.plane, planned.deployments(hostile, suffix))
        await _until(
            "a Warning Event for every refused hint",
            lambda: planned.refusals_reported(self.plane, hostile, suffix),
            limit=120,
            every=1.0,
        )
        await _until("the blackholes connected to", lambda: connected(holes), limit=60)
        await _until("every blackholed batch in flight", lambda: in_flight(port, BLACKHOLES), limit=60)
        return holes

    async def stop_attack(self, hostile: str, holes: list[Recorder], port: int) -> None:
        """Deletes the hostile Deployments, hangs up the blackholes, waits for no batch in flight."""
        self.plane.kubectl("delete", "deployments", "--all", "-n", hostile, "--wait=false")
        for hole in holes:
            await hole.stop()

        async def idle() -> bool:
            return await waker_metric(port, "tidescale_waker_batches_in_flight") == 0

        await _until("no batch in flight after the attack", idle, limit=90)

    async def sample_block(
        self, phase: str, client: WakerClient, admin: Any, producer: Any, namespace: str, pid: int, port: int
    ) -> None:
        bootstrap = self.kafka.bootstrap
        cpu_before, began = cpu_seconds(pid), time.monotonic()
        for _ in range(self.args.block):
            name, topic, group = await probe_setup(admin, bootstrap)
            apply(
                self.pieces.kubectl,
                self.plane.admin_kubeconfig,
                [kafka_parked(name, namespace, bootstrap, topic, group)],
            )
            await asyncio.sleep(1.5)  # the watch event arrives and a round or two pass (as bench_waker.py)
            batches = await waker_metric(port, "tidescale_waker_batches_in_flight")
            leading = await waker_metric(port, "tidescale_waker_leader") == 1
            seconds = await wake_one(client, producer, namespace, name, topic)
            row = {
                "phase": phase,
                "seconds": round(seconds, 3),
                "batches_in_flight": batches,
                "leader_unchanged": leading,
                "load1": float(load_average().split()[0]),
                "rss_mib": round(memory_kib(pid).get("VmRSS", 0) / 1024, 1),
            }
            print(json.dumps(row), flush=True)
            self.samples.append(row)
        self.cpu[phase] += cpu_seconds(pid) - cpu_before
        self.wall[phase] += time.monotonic() - began


ATTACK = (
    f"{BLACKHOLES} blackholed Kafka brokers with `timeout: 120s`; a Kafka port announcing a 2 GiB answer; "
    "`(a|a)+b` against a hostile queue listing; 256 x `0-1000000` partitions (and 300, refused); "
    "non-JSON, non-UTF-8, non-numeric, 24 MiB and 200,000-deep management answers; the waker's token "
    "file, kubeconfig and an environment variable as password sources, its token file as a Kafka SASL "
    "password; another team's Secret name; 169.254.169.254, 127.0.0.1 and the API server's address"
)


def _phase_row(bench: Bench, phase: str) -> str:
    values = [s["seconds"] for s in bench.samples if s["phase"] == phase]
    loads1 = [s["load1"] for s in bench.samples if s["phase"] == phase]
    rss = max(s["rss_mib"] for s in bench.samples if s["phase"] == phase)
    millicores = 1000 * bench.cpu[phase] / bench.wall[phase] if bench.wall[phase] else 0.0
    return (
        f"| {'no attack' if phase == 'quiet' else 'attack running'} | {len(values)} "
        f"| {statistics.median(values):.2f} | {percentile(values, 0.95):.2f} | {max(values):.2f} "
        f"| {millicores:.0f} | {rss:.0f} | {min(loads1):.1f}-{max(loads1):.1f} |"
    )


def _waker_row(index: int, waker: dict[str, Any]) -> str:
    return (
        f"| waker-{index} | {'yes' if waker['alive'] else 'NO'} | {waker['starts']} "
        f"| {waker['task_restarts']} | {waker['kafka_answers_refused']} "
        f"| {', '.join(waker['secrets_in_log']) or 'none'} |"
    )


def _report(bench: Bench, outcome: dict[str, Any], started: datetime.datetime, loads: tuple[str, str]) -> str:
    args = bench.args
    command = "bench/bench_waker_attack.py" + "".join(
        f" --{k} {v}" for k, v in (("samples", args.samples), ("block", args.block))
    )
    in_flight_attack = [s["batches_in_flight"] for s in bench.samples if s["phase"] == "attack"]
    same_leader = all(s["leader_unchanged"] for s in bench.samples)
    before_attack = max(s["rss_mib"] for s in bench.samples[: args.block])
    stolen = outcome["stolen"]
    lines = [
        "# Waker: another team's wake latency while a hostile namespace attacks",
        "",
        f"Date: {started:%Y-%m-%d %H:%M} UTC. Machine: {machine()}. Load average (1, 5, 15 min) at the "
        f"start {loads[0]}, at the end {loads[1]}. {args.note}".rstrip(),
        "",
        f"Command: `{command}`. Control plane and Kafka are the rig's, on the same machine; the fake "
        "brokers run in the benchmark's own event loop (their work, if anything, slows the attack "
        "phase's measurement).",
        "",
        "Configuration: the chart's defaults. Two `tidescale waker` processes elected through one Lease "
        f"(`waker.replicas: 2`), interval {INTERVAL:g} s, default broker networks (link-local, loopback "
        "and the API server denied), as the waker's ServiceAccount with `deploy/waker-rbac.yaml`, "
        "allowed Secrets in team B's and the hostile namespace. Processes on the host, so without the "
        "chart's 256 MiB memory limit. CPU and RSS are the leader's.",
        "",
        "Latency: team B's probe Deployment parked by hand on its own topic and idle group, 1.5 s later "
        "one message produced; from just before `send_and_wait` to the first GET showing "
        "spec.replicas >= 1 (every 10 ms), as `bench/bench_waker.py` measures it. Samples alternate "
        f"in blocks of {args.block}: quiet, attack, quiet, attack, ...",
        "",
        "The attack (`tests/integration/_hostile_tenant.py`, as `tests/integration/test_hostile_waker.py` "
        "plays it), started afresh for each attack block and sampled only once every refused hint has "
        f"its Warning Event and all {BLACKHOLES} blackholed batches are in flight: {ATTACK}.",
        "",
        "| phase | samples | p50 s | p95 s | max s | leader CPU (millicores) "
        "| leader RSS MiB (max at a sample) | load1 range |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
        *(_phase_row(bench, phase) for phase in PHASES),
        "",
        f"Leader's RSS before the first attack: {before_attack:.0f} MiB; its peak over the run (VmHWM): "
        f"{outcome['hwm_mib']:.0f} MiB (memory freed after an attack block mostly stays with the process, "
        "so a quiet block after an attack shows what the attack left). Broker batches in "
        f"flight when each attack sample began: {min(in_flight_attack):.0f} to "
        f"{max(in_flight_attack):.0f}. "
        + ("The same waker led for every sample." if same_leader else "LEADERSHIP CHANGED during the run."),
        "",
        "| waker | alive at the end | process starts | supervised task restarts "
        "| Kafka answers refused (2 GiB) | credentials in its log |",
        "|---|---|---:|---:|---:|---|",
        *(_waker_row(index, waker) for index, waker in enumerate(outcome["wakers"])),
        "",
        f"Credentials received by the fake brokers ({outcome['received_bytes']:,} bytes received in all, "
        "searched for the waker's token, its environment canary, its file canary and team B's password, "
        "in clear, base64 and as HTTP basic auth): "
        + (", ".join(f"{label}: {count} bytes" for label, count in stolen.items()) if stolen else "0 bytes")
        + ".",
        "",
        "## Every sample",
        "",
        "```",
        *(json.dumps(s) for s in bench.samples),
        "```",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--samples", type=int, default=20, help="wake samples per phase")
    parser.add_argument("--block", type=int, default=5, help="samples per block before the phase changes")
    parser.add_argument("--note", default="", help="a sentence about the machine (e.g. who else ran on it)")
    parser.add_argument("--write", type=Path, default=None, help="write the markdown report here")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="run the wakers under cProfile, stats written in this folder",
    )
    args = parser.parse_args()
    started = datetime.datetime.now(datetime.UTC)
    load_start = load_average()
    with rig() as pieces:
        bench = Bench(pieces, args)
        outcome = asyncio.run(bench.run())
    report = _report(bench, outcome, started, (load_start, load_average()))
    print(report)
    if args.write is not None:
        args.write.write_text(report)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
