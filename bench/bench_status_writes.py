"""The leader's Deployment writes per minute for one steady Deployment: this build against the previous.

Starts the rig (control plane, Kafka, pod runner) itself and stops everything it started. Four
Deployments side by side, each in its own namespace, each at 1 replica with min = max = 1
(nothing scales) and a 1 s polling interval, default hints otherwise:

- ``previous/idle`` and ``previous/traffic``: agents of the previous build (``--previous``, a
  commit; its ``agent/tidescale`` is unpacked with ``git archive`` and put on PYTHONPATH);
- ``this/idle`` and ``this/traffic``: agents of the working tree.

``traffic`` gets ``--rate`` messages a second (the consumer keeps up: the lag moves between 0 and
a few). After every Deployment has a leader and ``--settle`` seconds, the API server's audit log
is read for ``--window`` seconds: every successful write by an agent pod (the pod's name comes
from its bound token), by resource and verb. Not a test: numbers are reported, never asserted.

    .venv/bin/python bench/bench_status_writes.py --write bench/results/status_writes.md
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "agent"), str(REPO / "bench")]

import bench_agent  # noqa: E402
from tests.integration.rigkube import apply, namespace_with_agent_rbac, unique  # noqa: E402

from tidescale.kube import parse_time  # noqa: E402

BUILDS = ("previous", "this")
LOADS = ("idle", "traffic")


def unpack_previous(commit: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", commit, "agent/tidescale"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "agent"


def agent_writes(
    plane: Any, namespace: str, since: datetime.datetime, until: datetime.datetime
) -> Counter[str]:
    """Successful writes by agent pods in ``namespace`` received in [since, until), as 'verb resource'."""
    found: Counter[str] = Counter()
    for event in plane.audit_events():
        ref = event.get("objectRef") or {}
        if ref.get("namespace") != namespace or (event.get("responseStatus") or {}).get("code") not in (
            200,
            201,
        ):
            continue
        extra = (event.get("user") or {}).get("extra") or {}
        if not extra.get("authentication.kubernetes.io/pod-name"):
            continue
        received = parse_time(event.get("requestReceivedTimestamp"))
        if received is None or not since <= received < until:
            continue
        resource = str(ref.get("resource", "")) + ("/" + ref["subresource"] if ref.get("subresource") else "")
        found[f"{event['verb']} {resource}"] += 1
    return found


async def measure(args: argparse.Namespace, plane: Any, kafka: Any, previous: Path) -> dict[str, Any]:
    setups: dict[tuple[str, str], str] = {}
    traffic: list[Any] = []
    for build in BUILDS:
        for load in LOADS:
            namespace, name = unique(f"writes-{build}-{load}"), "orders"
            topic, group = unique("orders"), unique("orders-group")
            kafka.create_topic(topic, 3)
            namespace_with_agent_rbac(plane, namespace)
            annotations = bench_agent.hints(
                kafka.bootstrap,
                topic,
                group,
                {"min-replicas": "1", "max-replicas": "1", "polling-interval": "1s"},
            )
            deployment = bench_agent.consumer_deployment(
                name,
                bootstrap=kafka.bootstrap,
                topic=topic,
                group=group,
                annotations=annotations,
                replicas=1,
                agent_path=previous if build == "previous" else None,
            )
            apply(plane, deployment, namespace=namespace)
            setups[(build, load)] = namespace
            if load == "traffic":
                traffic.append(bench_agent.Traffic(kafka.bootstrap, topic, args.rate))
    for namespace in setups.values():
        await bench_agent.wait_until(
            f"a leader in {namespace}",
            lambda ns=namespace: bench_agent.lease_holder(plane, ns, "orders"),
            limit=120,
        )
    for producer in traffic:
        producer.start()
    await asyncio.sleep(args.settle)
    since = datetime.datetime.now(datetime.UTC)
    await asyncio.sleep(args.window)
    until = datetime.datetime.now(datetime.UTC)
    for producer in traffic:
        await producer.stop()
    await asyncio.sleep(3.0)  # the audit log is written at the end of each request
    return {key: agent_writes(plane, namespace, since, until) for key, namespace in setups.items()}


def report(args: argparse.Namespace, results: dict[tuple[str, str], Counter[str]], started: str) -> str:
    minutes = args.window / 60
    kinds = sorted({kind for counts in results.values() for kind in counts})
    lines = [
        "# Leader writes per minute, one steady Deployment (bench/bench_status_writes.py)",
        "",
        f"- date: {started}",
        f"- machine: {bench_agent.machine()}; the rig (control plane, Kafka, pod runner) on the same machine",
        f"- configuration: 1 replica, min = max = 1, polling interval 1 s, default hints otherwise; "
        f"window {args.window:g} s after {args.settle:g} s settling; traffic {args.rate:g} messages/s "
        "(the consumer keeps up); the four Deployments ran side by side",
        f"- previous build: `{args.previous}` (git archive, PYTHONPATH); this build: the working tree",
        f"- command: `.venv/bin/python bench/bench_status_writes.py --window {args.window:g} "
        f"--settle {args.settle:g} --rate {args.rate:g} --previous {args.previous}`",
        "",
        "Successful writes by the agent pods, per minute, from the API server's audit log:",
        "",
        "| build | load | " + " | ".join(f"`{kind}`" for kind in kinds) + " |",
        "|---|---|" + "---|" * len(kinds),
    ]
    for build in BUILDS:
        for load in LOADS:
            counts = results[(build, load)]
            cells = " | ".join(f"{counts.get(kind, 0) / minutes:.1f}" for kind in kinds)
            lines.append(f"| {build} | {load} | {cells} |")
    lines += [
        "",
        "`patch deployments` is the status + policy-state + state-label write (and any park write);"
        " `update leases` the Lease renewals (every retry period, 2 s), unchanged by this work.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--window", type=float, default=180.0, help="seconds counted")
    parser.add_argument("--settle", type=float, default=30.0, help="seconds after every leader is elected")
    parser.add_argument("--rate", type=float, default=10.0, help="traffic, messages per second")
    parser.add_argument("--previous", default="afe7718", help="the commit to compare with")
    parser.add_argument("--write", type=Path, default=None, help="write the markdown report here")
    args = parser.parse_args()
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        previous = unpack_previous(args.previous, Path(scratch))
        with bench_agent.rig() as (plane, _runner, kafka):
            results = asyncio.run(measure(args, plane, kafka, previous))
    text = report(args, results, started)
    print(text)
    print(f"(took {time.monotonic() - began:.0f} s)")
    if args.write is not None:
        args.write.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
