"""Drain-time target against fixed lag thresholds and KEDA's defaults (issue 18), on the rig.

One Kafka topic, one scripted workload, several configurations side by side: each is its own
Deployment of Kafka consumers (consumer + injected agent, as in bench_agent.py) in its own
namespace and consumer group, all reading every message of the same topic, so every
configuration sees the same bursts at the same moments on the same (shared, loaded) machine.

The script: steady arrival (--arrival messages/s) and a fixed sequence of bursts (--bursts,
messages produced at once, --spacing seconds apart), played twice: the first half at
--cost-before seconds of work per message, the second at --cost-after. The cost travels in
each message (header ``work-seconds``, read by the rig's consumer through WORK_SECONDS_HEADER),
so a message produced after the change costs the new price in every configuration.

Configurations (--configs picks among them):
- ``drain-time``: ``tidescale.io/kafka.drain-time`` = --target, everything else the defaults
  (while the per-pod rate is unknown, the default lag threshold, 10, decides); and the same with
  each --drain-fallback lag threshold, which decides only while the rate is unknown;
- ``lag-threshold N`` for each N of --thresholds, tidescale's defaults otherwise (polling 1 s,
  KEDA's default HPA behaviour);
- ``keda-emulated``: KEDA's defaults reproduced by tidescale's HPA-identical policy: lag
  threshold 10, no behaviour (the HPA's nil-behaviour path KEDA creates by default), and a
  decision every 15 s (the HPA's sync, which asks KEDA's metrics server for a fresh lag; KEDA's
  30 s pollingInterval drives only 0 <-> 1, and every Deployment here keeps one replica);
- ``keda-emulated-30s``: the same deciding every 30 s (KEDA's pollingInterval), the slower reading.
Every configuration: min 1, max --partitions replicas (the partition cap).

Every --sample seconds: each group's lag (log-end minus committed offsets, from the broker) and
each Deployment's spec.replicas and status.readyReplicas. Figures per configuration and half:
per burst, drain time (from the burst's first send to the first sample with lag <= --settled
after the burst lifted it above; not drained when that does not happen before the next burst
or the end), misses (drain time above --target or not drained), most replicas, and pod-seconds
(readyReplicas integrated over time). The best fixed threshold after the fact is picked by the
rule in _drain_figures.best_configuration (fewest misses, then fewest pod-seconds), written
down before any run was looked at.

    .venv/bin/python bench/bench_drain_time.py --write bench/results/drain-time.md
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import shlex
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import REPO, Rig, load_average, machine, rig
from _drain_figures import Burst, Outcome, best_configuration, drain_time, pod_seconds, series_max
from tests.integration.rigkube import (
    agent_container,
    apply,
    kafka_consumer_deployment,
    namespace_with_agent_rbac,
)

WORK_HEADER = "work-seconds"
DRAIN_TIME = "drain-time"
KEDA = "keda-emulated"
KEDA_30S = "keda-emulated-30s"


# -- configurations and the script ---------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Configuration:
    label: str
    hints: dict[str, str]
    """Hints beyond the trigger's connection and min/max (keys without ``tidescale.io/``)."""
    says: str
    """What it is, for the report."""
    slug: str
    """For names: namespace, group."""


def configurations(args: argparse.Namespace) -> list[Configuration]:
    target = f"{args.target:g}s"
    known = [
        Configuration(
            label=f"drain-time {target}",
            hints={"kafka.drain-time": target},
            says=(
                f"`kafka.drain-time: {target}`, defaults otherwise (polling 1 s, no behaviour; while the "
                "per-pod rate is unknown the default lag-threshold, 10, decides)"
            ),
            slug="drain",
        ),
        *(
            Configuration(
                label=f"drain-time {target} + lag-threshold {fallback}",
                hints={"kafka.drain-time": target, "kafka.lag-threshold": str(fallback)},
                says=(
                    f"`kafka.drain-time: {target}` with `kafka.lag-threshold: {fallback}`, which decides "
                    "only while the per-pod rate is unknown (docs/policy.md: the fallback), defaults "
                    "otherwise"
                ),
                slug=f"drainfb{fallback}",
            )
            for fallback in args.drain_fallback
        ),
        *(
            Configuration(
                label=f"lag-threshold {threshold}",
                hints={"kafka.lag-threshold": str(threshold)},
                says=f"`kafka.lag-threshold: {threshold}`, defaults otherwise (polling 1 s, no behaviour)",
                slug=f"lag{threshold}",
            )
            for threshold in args.thresholds
        ),
        Configuration(
            label=KEDA,
            hints={"kafka.lag-threshold": "10", "polling-interval": "15s"},
            says="KEDA's defaults emulated: `kafka.lag-threshold: 10`, no behaviour, a decision every 15 s",
            slug="keda15",
        ),
        Configuration(
            label=KEDA_30S,
            hints={"kafka.lag-threshold": "10", "polling-interval": "30s"},
            says="the same, a decision every 30 s (KEDA's pollingInterval)",
            slug="keda30",
        ),
    ]
    if args.scale_down_stabilization:
        # Not KEDA's: its rows keep KEDA's defaults whatever this run tries for tidescale's.
        window = {"scale-down-stabilization": args.scale_down_stabilization}
        words = (
            f"; `scale-down-stabilization: {args.scale_down_stabilization}` (so the behaviour path, "
            "with the default scale-up policies 4 pods and 100 % per 15 s)"
        )
        known = [
            c
            if c.slug.startswith("keda")
            else Configuration(
                label=c.label,
                hints={**c.hints, **window},
                says=c.says.replace(", no behaviour", "") + words,
                slug=c.slug,
            )
            for c in known
        ]
    wanted = set(args.configs)
    chosen = [c for c in known if c.slug.startswith("drain") and DRAIN_TIME in wanted]
    chosen += [c for c in known if c.slug.startswith("lag") and "thresholds" in wanted]
    chosen += [c for c in known if c.slug == "keda15" and KEDA in wanted]
    chosen += [c for c in known if c.slug == "keda30" and KEDA_30S in wanted]
    return chosen


@dataclass(frozen=True, kw_only=True, slots=True)
class Script:
    bursts: tuple[Burst, ...]
    change_at: float
    """When the per-message cost changes (the second half starts)."""
    end: float


def script(args: argparse.Namespace) -> Script:
    half = args.first + args.spacing * len(args.bursts)
    bursts = tuple(
        Burst(at=offset + args.first + index * args.spacing, messages=messages)
        for offset in (0.0, half)
        for index, messages in enumerate(args.bursts)
    )
    return Script(bursts=bursts, change_at=half, end=2 * half)


# -- the run ------------------------------------------------------------------------------------


def deployment(
    name: str, *, bootstrap: str, topic: str, group: str, hints: dict[str, str], cost: float
) -> dict[str, Any]:
    agent = agent_container(name, log_level="warning")
    annotations = {
        f"tidescale.io/{key}": value
        for key, value in {
            "kafka.bootstrap-servers": bootstrap,
            "kafka.consumer-group": group,
            "kafka.topic": topic,
            **hints,
        }.items()
    }
    return kafka_consumer_deployment(
        name,
        bootstrap=bootstrap,
        topic=topic,
        group=group,
        env=[
            {"name": "WORK_SECONDS", "value": f"{cost:g}"},
            {"name": "WORK_SECONDS_HEADER", "value": WORK_HEADER},
        ],
        metadata={"annotations": annotations},
        sidecars=[agent],
    )


@dataclass(kw_only=True, slots=True)
class Samples:
    lag: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    ready: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    spec: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    bursts: list[tuple[float, float, int]] = field(default_factory=list)
    """(first send, last acknowledged, messages), seconds since the start."""
    sample_errors: int = 0
    arrived: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class Placed:
    configuration: Configuration
    namespace: str
    name: str
    group: str


async def wait_ready(client: Any, placed: list[Placed], limit: float) -> None:
    """Every Deployment has its one pod Ready and a Lease holder (its leader decides)."""
    deadline = time.monotonic() + limit
    pending = list(placed)
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready within {limit:.0f}s: {', '.join(p.namespace for p in pending)}")
        still = []
        for item in pending:
            status = (await client.get_deployment(item.namespace, item.name)).get("status") or {}
            try:
                lease = await client.get_lease(item.namespace, f"tidescale-{item.name}")
                holder = (lease.get("spec") or {}).get("holderIdentity")
            except Exception:
                holder = None
            if int(status.get("readyReplicas") or 0) < 1 or not holder:
                still.append(item)
        pending = still
        await asyncio.sleep(2.0)


async def sample_lag(
    admin: Any, probe: Any, topic: str, partitions: list[Any], placed: list[Placed]
) -> dict[str, float]:
    ends = await probe.end_offsets(partitions)
    answers = await asyncio.gather(*(admin.list_consumer_group_offsets(p.group) for p in placed))
    lags = {}
    for item, committed in zip(placed, answers, strict=True):
        total = 0
        for tp in partitions:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            total += max(0, ends[tp] - done)
        lags[item.configuration.label] = float(total)
    return lags


async def play(args: argparse.Namespace, the_rig: Rig, chosen: list[Configuration], plan: Script) -> Samples:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    from tidescale.kube import KubeClient, KubeConfig

    plane, kafka = the_rig.plane, the_rig.kafka
    run = uuid.uuid4().hex[:6]
    topic = f"drain-{run}"
    await asyncio.to_thread(kafka.create_topic, topic, args.partitions)
    placed = []
    for configuration in chosen:
        namespace = f"drain-{configuration.slug}-{run}"
        group = f"drain-{configuration.slug}-{run}"
        await asyncio.to_thread(namespace_with_agent_rbac, plane, namespace)
        hints = {"min-replicas": "1", "max-replicas": str(args.partitions), **configuration.hints}
        manifest = deployment(
            "orders", bootstrap=kafka.bootstrap, topic=topic, group=group, hints=hints, cost=args.cost_before
        )
        await asyncio.to_thread(apply, plane, manifest, namespace=namespace)
        placed.append(Placed(configuration=configuration, namespace=namespace, name="orders", group=group))
        print(f"deployed {configuration.label} in {namespace}", flush=True)

    samples = Samples()
    for item in placed:
        label = item.configuration.label
        samples.lag[label], samples.ready[label], samples.spec[label] = [], [], []
    cost = {"now": args.cost_before}
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    probe = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, linger_ms=5)
    await admin.start()
    await probe.start()
    await producer.start()
    partitions = [TopicPartition(topic, p) for p in range(args.partitions)]
    tasks: list[asyncio.Task[None]] = []
    try:
        async with KubeClient(KubeConfig.from_kubeconfig(plane.admin_kubeconfig)) as client:
            await wait_ready(client, placed, limit=300)
            print("every configuration has a Ready pod and a leader; settling", flush=True)
            await asyncio.sleep(args.settle)
            began = time.monotonic()

            def now() -> float:
                return time.monotonic() - began

            async def sampler() -> None:
                while True:
                    tick = now()
                    try:
                        lags = await sample_lag(admin, probe, topic, partitions, placed)
                        for label, lag in lags.items():
                            samples.lag[label].append((tick, lag))
                        deployments = await asyncio.gather(
                            *(client.get_deployment(item.namespace, item.name) for item in placed)
                        )
                        for item, found in zip(placed, deployments, strict=True):
                            label = item.configuration.label
                            status, spec = found.get("status") or {}, found.get("spec") or {}
                            samples.ready[label].append((tick, float(status.get("readyReplicas") or 0)))
                            samples.spec[label].append((tick, float(spec.get("replicas") or 0)))
                    except Exception as error:  # one lost sample must not end the run
                        samples.sample_errors += 1
                        print(f"sample at {tick:.1f}s failed: {error!r}", flush=True)
                    await asyncio.sleep(max(0.0, tick + args.sample - now()))

            def headers() -> list[tuple[str, bytes]]:
                return [(WORK_HEADER, f"{cost['now']:g}".encode())]

            async def arrivals() -> None:
                while True:
                    due = samples.arrived / args.arrival
                    await asyncio.sleep(max(0.0, due - now()))
                    await producer.send(topic, b"a", key=uuid.uuid4().bytes, headers=headers())
                    samples.arrived += 1

            tasks = [asyncio.create_task(sampler()), asyncio.create_task(arrivals())]
            changed = False
            for burst in plan.bursts:
                if not changed and burst.at >= plan.change_at:
                    await asyncio.sleep(max(0.0, plan.change_at - now()))
                    cost["now"] = args.cost_after
                    changed = True
                    print(
                        f"{now():7.1f}s cost per message {args.cost_before:g}s -> {args.cost_after:g}s",
                        flush=True,
                    )
                await asyncio.sleep(max(0.0, burst.at - now()))
                first = now()
                sends = [
                    await producer.send(topic, b"b", key=uuid.uuid4().bytes, headers=headers())
                    for _ in range(burst.messages)
                ]
                await asyncio.gather(*sends)
                samples.bursts.append((first, now(), burst.messages))
                lags = {label: series[-1][1] for label, series in samples.lag.items() if series}
                print(
                    f"{first:7.1f}s burst of {burst.messages} sent in {now() - first:.1f}s; lag {lags}",
                    flush=True,
                )
            await asyncio.sleep(max(0.0, plan.end - now()))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await producer.stop()
        await probe.stop()
        await admin.close()
        for item in placed:
            await asyncio.to_thread(plane.kubectl, "delete", "namespace", item.namespace, "--wait=false")
    return samples


# -- figures and the report ---------------------------------------------------------------------


def figures(
    args: argparse.Namespace, chosen: list[Configuration], plan: Script, samples: Samples
) -> dict[str, Any]:
    halves = {"before": (0.0, plan.change_at), "after": (plan.change_at, plan.end)}
    starts = [first for first, _, _ in samples.bursts]
    result: dict[str, Any] = {}
    for configuration in chosen:
        label = configuration.label
        lag, ready, spec = samples.lag[label], samples.ready[label], samples.spec[label]
        per_half: dict[str, Any] = {}
        for half, (start, end) in halves.items():
            drains = []
            for index, (first, _, messages) in enumerate(samples.bursts):
                if not start <= first < end:
                    continue
                until = starts[index + 1] if index + 1 < len(starts) else plan.end
                seconds = drain_time(lag, burst_at=first, until=until, settled=args.settled)
                drains.append(
                    {
                        "messages": messages,
                        "at": round(first, 1),
                        "drain": None if seconds is None else round(seconds, 1),
                    }
                )
            misses = sum(1 for d in drains if d["drain"] is None or d["drain"] > args.target)
            per_half[half] = {
                "bursts": drains,
                "misses": misses,
                "pod_seconds": round(pod_seconds(ready, start, end), 1),
                "max_ready": series_max(ready, start, end),
                "max_spec": series_max(spec, start, end),
            }
        result[label] = per_half
    return result


def outcomes(figures_: dict[str, Any], labels: list[str], halves: tuple[str, ...]) -> dict[str, Outcome]:
    return {
        label: Outcome(
            misses=sum(figures_[label][half]["misses"] for half in halves),
            pod_seconds=sum(figures_[label][half]["pod_seconds"] for half in halves),
        )
        for label in labels
    }


def _drains(bursts: list[dict[str, Any]]) -> str:
    return ", ".join(
        f"{b['messages']}: {'not drained' if b['drain'] is None else format(b['drain'], '.0f') + ' s'}"
        for b in bursts
    )


def report(
    args: argparse.Namespace,
    chosen: list[Configuration],
    plan: Script,
    samples: Samples,
    found: dict[str, Any],
    started: datetime.datetime,
    load_start: str,
    load_end: str,
    command: str,
) -> str:
    thresholds = [c.label for c in chosen if c.slug.startswith("lag")]
    whole = best_configuration(outcomes(found, thresholds, ("before", "after")))
    best_half = {
        half: best_configuration(outcomes(found, thresholds, (half,))) for half in ("before", "after")
    }
    lines = [
        "# Drain-time target against fixed lag thresholds and KEDA's defaults",
        "",
        f"Date: {started:%Y-%m-%d %H:%M} UTC. Machine: {machine()}; load average at the start {load_start}, "
        f"at the end {load_end} (the machine is shared with other helpers' rig runs and builds, so "
        "processing rates vary with their load; every configuration runs side by side and sees the same "
        "load at the same moments). Control plane, Kafka, the pod runner and every pod (consumer + agent) "
        f"run on this machine (the rig). Command: `{command}`.",
        "",
        "## Workload",
        "",
        f"One {args.partitions}-partition topic; every configuration is its own Deployment and "
        f"consumer group reading all of it. Steady arrival {args.arrival:g} messages/s throughout; "
        f"bursts of {', '.join(str(b) for b in args.bursts)} messages (produced at once), "
        f"{args.spacing:g} s apart, first at {args.first:g} s, played twice: before the change "
        f"(0-{plan.change_at:g} s) each message costs {args.cost_before * 1000:g} ms of work, after it "
        f"({plan.change_at:g}-{plan.end:g} s) {args.cost_after * 1000:g} ms (the cost travels in the "
        "message, so the change reaches every configuration at the same message). The consumer "
        f"commits after every message. Drain target {args.target:g} s. Run length {plan.end:g} s "
        f"after a {args.settle:g} s settle (sizes scaled to keep one run under ~25 min). Samples "
        f"every {args.sample:g} s ({samples.sample_errors} failed).",
        "",
        "Drain time: from a burst's first send to the first sample with the group's lag at or below "
        f"{args.settled:g} after the burst lifted it above that; `not drained` when that did not happen "
        "before the next burst (or the end). A miss: drain time above the target or not drained. "
        "Pod-seconds: the Deployment's `status.readyReplicas` integrated over the half. Most replicas: "
        "the highest readyReplicas (spec.replicas in brackets) in the half.",
        "",
        "## Configurations",
        "",
        f"Every one: min-replicas 1, max-replicas {args.partitions} (= partitions, the Kafka cap).",
        "",
        *(f"- **{c.label}**: {c.says}" for c in chosen),
        "",
        "The KEDA rows are an **emulation** through tidescale's HPA-identical policy "
        "(tests/integration/test_hpa_differential.py shows that policy matches the real HPA controller), "
        "not KEDA itself. KEDA's defaults: lagThreshold 10, no `behavior` (the HPA's nil-behaviour path: "
        "up to max(2 x current, 4) per sync, scale-down stabilization 300 s), pollingInterval 30 s, HPA "
        "sync 15 s. With those defaults the HPA asks KEDA's metrics server for the lag at each 15 s "
        "sync, and the metrics server reads the broker then (useCachedMetrics is off by default); the 30 s "
        "pollingInterval drives only activation 0 <-> 1, which does not happen here (min 1). So "
        "`keda-emulated` decides every 15 s from a fresh lag, as the HPA would; `keda-emulated-30s` "
        "decides every 30 s, the slower reading. What differs from the real thing: the agent's leader "
        "reads and decides in one step (no metrics-server hop, no HPA sync phase offset), and its 15 s "
        "clock starts when it became leader, not at the controller manager's.",
        "",
        "## Results",
        "",
        "| configuration | half | drain time per burst (messages: seconds) | misses | most replicas "
        "| pod-seconds |",
        "|---|---|---|---:|---:|---:|",
    ]
    for configuration in chosen:
        for half in ("before", "after"):
            row = found[configuration.label][half]
            cost = args.cost_before if half == "before" else args.cost_after
            most = "-" if row["max_ready"] is None else f"{row['max_ready']:.0f} ({row['max_spec']:.0f})"
            lines.append(
                f"| {configuration.label} | {half} ({cost * 1000:g} ms) | {_drains(row['bursts'])} | "
                f"{row['misses']} | {most} | {row['pod_seconds']:.0f} |"
            )
    if args.missing:
        lines.append(f"| drain-time {args.target:g}s | both | not measured: {args.missing} | - | - | - |")
    lines += ["", "Totals over the run:", "", "| configuration | misses | pod-seconds |", "|---|---:|---:|"]
    totals = outcomes(found, [c.label for c in chosen], ("before", "after"))
    for label, outcome in totals.items():
        lines.append(f"| {label} | {outcome.misses} | {outcome.pod_seconds:.0f} |")
    lines += [
        "",
        "## The best fixed threshold, chosen after the fact",
        "",
        "The rule, written down before the run (bench/_drain_figures.py, `best_configuration`): the "
        "fewest misses of the drain target over the run, and among those the fewest pod-seconds.",
        "",
        f"- over the whole run: **{whole or '-'}**",
        f"- had only the first half been played: {best_half['before'] or '-'}; only the second: "
        f"{best_half['after'] or '-'}",
        "",
        "## Every sample",
        "",
        "Per configuration, the changes of readyReplicas (seconds: count) and the lag every 10th sample:",
        "",
        "```",
    ]
    for configuration in chosen:
        label = configuration.label
        changes, last = [], None
        for at, value in samples.ready[label]:
            if value != last:
                changes.append(f"{at:.0f}:{value:.0f}")
                last = value
        lines.append(json.dumps({"configuration": label, "ready_changes": " ".join(changes)}))
        lines.append(
            json.dumps(
                {
                    "configuration": label,
                    "lag": " ".join(f"{at:.0f}:{v:.0f}" for at, v in samples.lag[label][::10]),
                }
            )
        )
    lines += ["```", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--configs",
        nargs="+",
        default=[DRAIN_TIME, "thresholds", KEDA, KEDA_30S],
        choices=[DRAIN_TIME, "thresholds", KEDA, KEDA_30S],
    )
    parser.add_argument("--thresholds", type=int, nargs="+", default=[500, 1000, 2000])
    parser.add_argument(
        "--drain-fallback",
        type=int,
        nargs="*",
        default=[1000],
        help="also run drain-time with each of these lag thresholds as its fallback",
    )
    parser.add_argument("--target", type=float, default=60.0, help="drain-time target, seconds")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--arrival", type=float, default=5.0, help="steady arrival, messages/s")
    parser.add_argument(
        "--bursts", type=int, nargs="+", default=[3000, 800, 5000], help="burst sizes, each half"
    )
    parser.add_argument("--spacing", type=float, default=100.0, help="seconds between bursts")
    parser.add_argument(
        "--first", type=float, default=10.0, help="seconds from a half's start to its first burst"
    )
    parser.add_argument(
        "--cost-before", type=float, default=0.02, help="seconds of work per message, first half"
    )
    parser.add_argument(
        "--cost-after", type=float, default=0.06, help="seconds of work per message, second half"
    )
    parser.add_argument("--settled", type=float, default=20.0, help="lag counted as drained")
    parser.add_argument("--sample", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds after every leader is up")
    parser.add_argument(
        "--scale-down-stabilization",
        default="",
        help="a scale-down stabilization for every configuration but KEDA's (default: none given)",
    )
    parser.add_argument("--missing", default="", help="a drain-time row to mark not measured, with why")
    parser.add_argument("--write", type=Path, default=None, help="write the markdown report here")
    args = parser.parse_args()
    chosen = configurations(args)
    plan = script(args)
    command = "bench/bench_drain_time.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    started = datetime.datetime.now(datetime.UTC)
    load_start = load_average()
    print(f"{len(chosen)} configurations, {plan.end:g} s script: {[c.label for c in chosen]}", flush=True)
    with rig(pod_runner=True) as the_rig:
        samples = asyncio.run(play(args, the_rig, chosen, plan))
    found = figures(args, chosen, plan, samples)
    print(json.dumps(found), flush=True)
    text = report(args, chosen, plan, samples, found, started, load_start, load_average(), command)
    print(text)
    if args.write is not None:
        (args.write if args.write.is_absolute() else REPO / args.write).write_text(text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
