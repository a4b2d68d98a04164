"""Webhook latency at 100 concurrent pod creations, as the API server measures it.

Starts the rig's control plane and one injector process (``python -m tidescale_injector``,
TLS, on the bridge address), registers the mutating webhook by ``url``, then creates
``--concurrency`` labelled pods at once (as a ReplicaSet would make them), ``--rounds``
times. Reads three views of the latency:

- the API server's ``apiserver_admission_webhook_admission_duration_seconds`` for the
  webhook (the target's definition; its buckets are coarse: 5 ms, 25 ms, 100 ms, ...),
- the injector's own ``tidescale_injector_admission_duration_seconds`` (handler time),
- the client's wall time for each whole pod create (admission, validation, etcd).

    .venv/bin/python bench/bench_webhook.py
    .venv/bin/python bench/bench_webhook.py --write bench/results/webhook.md

Not a test: numbers are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import math
import os
import platform
import re
import ssl
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "agent"), str(REPO / "sidecar-injector")]

import httpx  # noqa: E402
from tests.rig.certs import CertificateAuthority  # noqa: E402
from tests.rig.controlplane import ControlPlane  # noqa: E402
from tests.rig.network import Network  # noqa: E402
from tests.rig.paths import ControlPlaneBinaries, new_run_dir  # noqa: E402
from tests.rig.processes import Supervisor, free_port, wait_until  # noqa: E402

HOOK = "bench.injector.tidescale.io"
API_METRIC = "apiserver_admission_webhook_admission_duration_seconds"
OWN_METRIC = "tidescale_injector_admission_duration_seconds"


def histogram(text: str, metric: str, selector: str) -> dict[float, float]:
    """Cumulative bucket counts of ``metric`` over every series whose labels contain ``selector``."""
    buckets: dict[float, float] = defaultdict(float)
    pattern = re.compile(rf"^{metric}_bucket\{{(?P<labels>[^}}]*)\}} (?P<value>\S+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if match and selector in match["labels"]:
            le = re.search(r'le="([^"]+)"', match["labels"])
            assert le is not None
            buckets[math.inf if le[1] == "+Inf" else float(le[1])] += float(match["value"])
    return dict(buckets)


def delta(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    return {le: count - before.get(le, 0.0) for le, count in after.items()}


def quantile(buckets: dict[float, float], q: float) -> tuple[float, float]:
    """(upper bound of the bucket holding quantile q, linear estimate inside it), in seconds."""
    bounds = sorted(buckets)
    total = buckets[math.inf]
    rank = q * total
    lower, below = 0.0, 0.0
    for le in bounds:
        if buckets[le] >= rank:
            if le == math.inf:
                return math.inf, lower
            inside = buckets[le] - below
            return le, lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = le, buckets[le]
    return math.inf, lower


def pod(ns: str, index: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"bench-{index}-{uuid.uuid4().hex[:6]}",
            "namespace": ns,
            "labels": {"app": "bench", "tidescale.io/inject": "true", "pod-template-hash": "6b7c9"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "bench-6b7c9",
                    "uid": str(uuid.uuid4()),
                    "controller": True,
                }
            ],
        },
        "spec": {"containers": [{"name": "main", "image": "example.invalid/worker:1"}]},
    }


async def create_burst(
    api: httpx.AsyncClient, ns: str, count: int, round_index: int
) -> tuple[list[float], int]:
    async def one(index: int) -> tuple[float, bool]:
        started = time.perf_counter()
        response = await api.post(f"/api/v1/namespaces/{ns}/pods", json=pod(ns, round_index * count + index))
        response.raise_for_status()
        injected = any(
            c["name"] == "tidescale-agent" for c in response.json()["spec"].get("initContainers", [])
        )
        return time.perf_counter() - started, injected

    results = await asyncio.gather(*(one(i) for i in range(count)))
    return [seconds for seconds, _ in results], sum(1 for _, injected in results if injected)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def snapshot(
    plane: ControlPlane, injector_url: str, own: ssl.SSLContext, pids: dict[str, int]
) -> dict[str, Any]:
    """Histograms, the injector's connection count and each process's CPU time, now."""
    own_text = httpx.get(injector_url + "/metrics", verify=own).text
    connections = re.search(r"^tidescale_injector_connections_total (\S+)$", own_text, re.MULTILINE)
    return {
        "api": histogram(plane.apiserver_metrics(), API_METRIC, f'name="{HOOK}"'),
        "own": histogram(own_text, OWN_METRIC, 'webhook="mutate"'),
        "connections": float(connections[1]) if connections else 0.0,
        "cpu": {name: cpu_seconds(pid) for name, pid in pids.items()},
    }


async def measure(
    plane: ControlPlane, injector_url: str, injector_ca: Path, pids: dict[str, int], args: argparse.Namespace
) -> list[dict[str, Any]]:
    context = ssl.create_default_context(cafile=str(plane.ca_file))
    context.load_cert_chain(str(plane.pki.admin.cert_file), str(plane.pki.admin.key_file))
    limits = httpx.Limits(max_connections=max(args.concurrency))
    own = ssl.create_default_context(cafile=str(injector_ca))
    levels = []
    async with httpx.AsyncClient(base_url=plane.server, verify=context, timeout=30, limits=limits) as api:
        ns = f"bench-{uuid.uuid4().hex[:6]}"
        (await api.post("/api/v1/namespaces", json={"metadata": {"name": ns}})).raise_for_status()
        # Warm up: the configuration reaches the API server through an informer; connections open.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            _, injected = await create_burst(api, ns, 1, 10_000 + int(time.monotonic()))
            if injected:
                break
            await asyncio.sleep(0.3)
        await create_burst(api, ns, max(args.concurrency), 9_999)
        for level, concurrency in enumerate(args.concurrency):
            rounds = max(args.rounds, args.samples // concurrency)
            before = await asyncio.to_thread(snapshot, plane, injector_url, own, pids)
            walls: list[float] = []
            injected_total = 0
            for r in range(rounds):
                seconds, injected = await create_burst(
                    api, ns, concurrency, (level + 1) * 100_000 + r * concurrency
                )
                walls.extend(seconds)
                injected_total += injected
                await asyncio.sleep(0.5 if concurrency > 10 else 0.05)
            after = await asyncio.to_thread(snapshot, plane, injector_url, own, pids)
            levels.append(
                {
                    "concurrency": concurrency,
                    "rounds": rounds,
                    "api": delta(after["api"], before["api"]),
                    "own": delta(after["own"], before["own"]),
                    "connections": after["connections"] - before["connections"],
                    "cpu": {name: after["cpu"][name] - before["cpu"][name] for name in pids},
                    "walls": walls,
                    "injected": injected_total,
                }
            )
        levels.append(await direct_round_trips(injector_url, own, ns, args.samples))
    return levels


async def direct_round_trips(injector_url: str, own: ssl.SSLContext, ns: str, count: int) -> dict[str, Any]:
    """The injector alone: sequential reviews from one kept-alive Python client, wall time each."""
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": ns,
            "operation": "CREATE",
            "object": pod(ns, 0),
        },
    }
    body = json.dumps(review).encode()
    walls = []
    async with httpx.AsyncClient(verify=own, timeout=10) as hook:
        for _ in range(count):
            started = time.perf_counter()
            (await hook.post(injector_url + "/mutate", content=body)).raise_for_status()
            walls.append(time.perf_counter() - started)
    return {"direct": True, "walls": walls}


def run(args: argparse.Namespace) -> dict[str, Any]:
    run_dir = new_run_dir()
    supervisor = Supervisor(run_dir=run_dir)
    network = Network().open()
    try:
        plane = ControlPlane.start(supervisor, network, run_dir, binaries=ControlPlaneBinaries.from_cache())
        host = plane.node_address
        port = free_port(host)
        ca = CertificateAuthority.create(run_dir / "injector-ca")
        pair = ca.issue_serving_cert("injector", dns_names=["injector.bench"], ip_addresses=[host])
        process = supervisor.start(
            "injector",
            [
                sys.executable,
                "-m",
                "tidescale_injector",
                f"--listen={host}:{port}",
                f"--tls-cert-file={pair.cert_file}",
                f"--tls-key-file={pair.key_file}",
                "--native-sidecars=true",
                "--agent-image=tidescale:bench",
            ],
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(REPO / "agent"), str(REPO / "sidecar-injector")]),
            },
        )
        url = f"https://{host}:{port}"
        own = ssl.create_default_context(cafile=str(ca.cert_file))
        wait_until(
            "injector",
            lambda: httpx.get(url + "/readyz", verify=own).status_code == 200,
            timeout=30,
            process=process,
        )
        config = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": HOOK},
            "webhooks": [
                {
                    "name": HOOK,
                    "clientConfig": {
                        "url": url + "/mutate",
                        "caBundle": base64.b64encode(ca.cert_pem).decode(),
                    },
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["pods"],
                        }
                    ],
                    "objectSelector": {"matchLabels": {"tidescale.io/inject": "true"}},
                    "namespaceSelector": {
                        "matchExpressions": [
                            {
                                "key": "kubernetes.io/metadata.name",
                                "operator": "NotIn",
                                "values": ["kube-system"],
                            }
                        ]
                    },
                    "failurePolicy": "Ignore",
                    "reinvocationPolicy": args.reinvocation,
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "timeoutSeconds": 5,
                }
            ],
        }
        plane.kubectl("apply", "-f", "-", input=json.dumps(config))
        pids = {"injector": process.pid, **{p.name: p.pid for p in plane.processes}}
        levels = asyncio.run(measure(plane, url, ca.cert_file, pids, args))
        return {"version": plane.version, "levels": levels}
    finally:
        supervisor.stop_all()
        network.close()


def fmt_ms(seconds: float) -> str:
    return "inf" if math.isinf(seconds) else f"{seconds * 1000:.2f}"


def quantiles_row(label: str, buckets: dict[float, float]) -> str:
    p50, p95, p99 = (quantile(buckets, q)[1] for q in (0.5, 0.95, 0.99))
    bound = quantile(buckets, 0.99)[0]
    cells = [label, fmt_ms(p50), fmt_ms(p95), fmt_ms(p99), fmt_ms(bound), f"{buckets.get(math.inf, 0):.0f}"]
    return "| " + " | ".join(cells) + " |"


def report(result: dict[str, Any], args: argparse.Namespace) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cpu_model = "unknown CPU"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    with open("/proc/loadavg") as load:
        loadavg = load.read().split()[0]
    lines = [
        f"## reinvocationPolicy {args.reinvocation}",
        "",
        f"Date: {now}. Machine: {cpu_model}, {os.cpu_count()} cores shared with other jobs (load average "
        f"{loadavg} at the end), Linux {platform.release()}, Python {platform.python_version()}. API server "
        f"{result['version']} (the rig's), injector `python -m tidescale_injector` "
        "(uvloop, TLS, one process) on the same machine, reached by `url` on the rig's bridge. "
        f"Command: `bench/bench_webhook.py --reinvocation {args.reinvocation}`.",
        "",
        "| concurrent creates | view | p50 ms | p95 ms | p99 ms | p99 bucket bound ms | samples |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for level in result["levels"]:
        if level.get("direct"):
            walls = sorted(level["walls"])
            w50, w95, w99 = (walls[min(len(walls) - 1, int(q * len(walls)))] for q in (0.5, 0.95, 0.99))
            cells = [
                "1 | injector alone: a Python client's round trip",
                fmt_ms(w50),
                fmt_ms(w95),
                fmt_ms(w99),
            ]
            lines.append("| " + " | ".join([*cells, "-", str(len(walls))]) + " |")
            continue
        c = level["concurrency"]
        lines.append(quantiles_row(f"{c} | API server `{API_METRIC}`", level["api"]))
        lines.append(quantiles_row(f"{c} | injector handler `{OWN_METRIC}`", level["own"]))
        walls = sorted(level["walls"])
        w50, w95, w99 = (walls[min(len(walls) - 1, int(q * len(walls)))] for q in (0.5, 0.95, 0.99))
        cells = [
            f"{c} | client: whole pod create",
            fmt_ms(w50),
            fmt_ms(w95),
            fmt_ms(w99),
            "-",
            str(len(walls)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
        cpu = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in sorted(level["cpu"].items()))
        notes.append(
            f"- {c} concurrent: {level['rounds']} rounds, {len(walls)} pods ({level['injected']} came back "
            f"with the agent), {level['own'].get(math.inf, 0):.0f} webhook calls, "
            f"{level['connections']:.0f} new connections to the injector; CPU time used: {cpu}."
        )
    lines += ["", *notes, ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--rounds", type=int, default=5, help="at least this many rounds per level")
    parser.add_argument("--samples", type=int, default=200, help="at least this many pods per level")
    parser.add_argument("--reinvocation", choices=("IfNeeded", "Never"), default="IfNeeded")
    parser.add_argument("--write", type=Path, help="write the Markdown report here")
    args = parser.parse_args()
    text = report(run(args), args)
    print(text)
    if args.write:
        args.write.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
