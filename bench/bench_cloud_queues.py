"""Why aws-sqs and azure-queue sign their requests by hand: the memory their clients cost an agent.

Fresh interpreters, each reading its own VmRSS before and after (median of 3):

1. tidescale's way, per trigger type: ``import tidescale.agent`` and uvloop, then one measurement
   against a closed local https port (httpx imported, the client and its TLS context built, one
   request signed, one connection attempt): aws-sqs (SigV4) and azure-queue (Shared Key);
2. botocore's way (the AWS SDK for Python, what an SQS client would otherwise import): a bare
   interpreter of ``--botocore-python`` (one that has botocore installed; it is not a dependency
   of tidescale) creating an SQS client;
3. the cost of signing: SigV4's ``sign`` and Shared Key's ``string_to_sign`` + ``authorization``,
   each timed over 2,000 requests (median of 5 runs);
4. with ``--steady``, running agents on the rig (control plane, pod runner, ElasticMQ, Azurite):
   one Deployment per trigger type at one replica (min = max = 1, polling interval 1 s, the
   queue idle), each pod the sample consumer plus the agent; after the pods are Ready and
   ``--settle`` seconds, each agent's VmRSS, peak, Pss and CPU over ``--window`` seconds
   (bench/bench_agent.py's method, which measures the Kafka agent).

    .venv/bin/python bench/bench_cloud_queues.py --botocore-python /path/to/python --steady \
        --write bench/results/cloud_queues.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = str(REPO / ".venv" / "bin" / "python")

_RSS = """
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
"""

_TIDESCALE = (
    _RSS
    + """
import asyncio, json, os, socket, sys
import tidescale.agent, uvloop
from tidescale.errors import SourceError
from tidescale.sources.base import Scope
from tidescale.sources.registry import open_source, settings_parser
base = rss()
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
os.environ["BENCH_KEY"] = (  # Azurite's published development key
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==")
if sys.argv[1] == "aws-sqs":
    settings = settings_parser("aws-sqs")("t", {
        "queue-url": f"https://127.0.0.1:{port}/000000000000/q", "aws-region": "eu-west-1",
        "access-key-id-env": "BENCH_KEY", "secret-access-key-env": "BENCH_KEY"})
else:
    settings = settings_parser("azure-queue")("t", {
        "queue-name": "orders", "account-name": "acct", "endpoint": f"https://127.0.0.1:{port}/acct",
        "account-key-env": "BENCH_KEY", "queue-length-strategy": "visible-only"})
async def once():
    source = open_source(settings)
    try:
        await source.measure(settings, Scope.GROUP)
    except SourceError:
        pass
    finally:
        await source.close()
uvloop.run(once())
print(json.dumps({"base": base, "after": rss()}))
"""
)

_BOTOCORE = (
    _RSS
    + """
import json
base = rss()
import botocore, botocore.session
client = botocore.session.get_session().create_client(
    "sqs", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="y")
print(json.dumps({"base": base, "after": rss(), "version": botocore.__version__}))
"""
)


def run(python: str, code: str, *args: str) -> dict[str, float | str]:
    samples = []
    for _ in range(3):
        out = subprocess.run(
            [python, "-c", code, *args], capture_output=True, text=True, check=True, cwd=REPO
        ).stdout
        samples.append(json.loads(out.strip().splitlines()[-1]))
    found: dict[str, float | str] = {
        k: statistics.median(float(s[k]) for s in samples) for k in ("base", "after")
    }
    if "version" in samples[0]:
        found["version"] = samples[0]["version"]
    return found


def _median_microseconds(one: Callable[[], object]) -> float:
    runs = []
    for _ in range(5):
        began = time.perf_counter()
        for _ in range(2000):
            one()
        runs.append((time.perf_counter() - began) / 2000 * 1e6)
    return statistics.median(runs)


def signing_microseconds() -> tuple[float, float]:
    """(SigV4 of a GetQueueAttributes, Shared Key of a Get Queue Metadata), microseconds each."""
    sys.path.insert(0, str(REPO / "agent"))
    from tidescale.sources.aws_sqs._sigv4 import AwsCredentials, sign
    from tidescale.sources.azure_queue._sharedkey import authorization, rfc1123, string_to_sign

    key = AwsCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    body = (
        b'{"QueueUrl":"https://sqs.eu-west-1.amazonaws.com/123456789012/orders","AttributeNames":["A","B"]}'
    )
    now = datetime.datetime.now(datetime.UTC)

    def sigv4() -> object:
        return sign(
            method="POST",
            host="sqs.eu-west-1.amazonaws.com",
            path="/",
            headers={"content-type": "application/x-amz-json-1.0", "x-amz-target": "AmazonSQS.X"},
            body=body,
            credentials=key,
            region="eu-west-1",
            service="sqs",
            now=now,
        )

    def shared_key() -> object:
        headers = {"x-ms-date": rfc1123(now), "x-ms-version": "2021-12-02"}
        text = string_to_sign(
            method="GET", account="acct", path="/orders", query=[("comp", "metadata")], headers=headers
        )
        return authorization("acct", b"0123456789abcdef0123456789abcdef", text)

    return _median_microseconds(sigv4), _median_microseconds(shared_key)


def steady_state(settle: float, window: float) -> list[str]:
    """Rows of running agents, one per trigger type (see the module docs, item 4)."""
    sys.path[:0] = [str(REPO), str(REPO / "agent"), str(REPO / "bench")]
    from bench_agent import agent_pids, cpu_seconds, memory_kib, ready_pods
    from tests.integration.rigkube import apply, namespace_with_agent_rbac, unique
    from tests.integration.test_scale_to_zero_azure_queue import queue_deployment
    from tests.integration.test_scale_to_zero_sqs import sqs_deployment
    from tests.rig.azurite import ACCOUNT, KEY, Azurite
    from tests.rig.controlplane import ControlPlane
    from tests.rig.elasticmq import REGION, ElasticMQ
    from tests.rig.network import Network
    from tests.rig.paths import ControlPlaneBinaries, new_run_dir
    from tests.rig.podrunner import PodRunner
    from tests.rig.processes import Supervisor

    fixed = {"tidescale.io/min-replicas": "1", "tidescale.io/max-replicas": "1"}
    run_dir = new_run_dir()
    supervisor = Supervisor(run_dir=run_dir)
    network = Network().open()
    runner = None
    rows = []
    try:
        plane = ControlPlane.start(supervisor, network, run_dir, binaries=ControlPlaneBinaries.from_cache())
        elasticmq = ElasticMQ.start(supervisor, network, run_dir)
        azurite = Azurite.start(supervisor, network, run_dir)
        runner = PodRunner(
            kubeconfig=plane.admin_kubeconfig, server=plane.server, network=network, run_dir=run_dir
        ).start()
        namespaces = {}
        for trigger in ("aws-sqs", "azure-queue"):
            namespace = namespaces[trigger] = unique(f"bench-{trigger}")
            namespace_with_agent_rbac(plane, namespace)
            queue = unique("jobs")
            record = run_dir / f"{namespace}.txt"
            if trigger == "aws-sqs":
                url = elasticmq.create_queue(queue)
                plane.kubectl(
                    "create", "secret", "generic", "sqs-credentials", "-n", namespace,
                    "--from-literal=AWS_ACCESS_KEY_ID=AKIDBENCH",
                    "--from-literal=AWS_SECRET_ACCESS_KEY=bench",
                )  # fmt: skip
                hints = {
                    "tidescale.io/aws-sqs.queue-url": url,
                    "tidescale.io/aws-sqs.aws-region": REGION,
                    "tidescale.io/aws-sqs.access-key-id-env": "AWS_ACCESS_KEY_ID",
                    "tidescale.io/aws-sqs.secret-access-key-env": "AWS_SECRET_ACCESS_KEY",
                    **fixed,
                }
                apply(plane, sqs_deployment("jobs", url, hints, record), namespace=namespace)
            else:
                azurite.create_queue(queue)
                plane.kubectl(
                    "create", "secret", "generic", "azure-storage", "-n", namespace,
                    f"--from-literal=AZURE_STORAGE_KEY={KEY}",
                )  # fmt: skip
                hints = {
                    "tidescale.io/azure-queue.queue-name": queue,
                    "tidescale.io/azure-queue.account-name": ACCOUNT,
                    "tidescale.io/azure-queue.endpoint": azurite.endpoint,
                    "tidescale.io/azure-queue.account-key-env": "AZURE_STORAGE_KEY",
                    **fixed,
                }
                apply(plane, queue_deployment("jobs", azurite, queue, hints, record), namespace=namespace)
        deadline = time.monotonic() + 180
        while any(not ready_pods(plane, ns, "jobs") for ns in namespaces.values()):
            if time.monotonic() > deadline:
                raise RuntimeError("the bench's pods did not become Ready within 180 s")
            time.sleep(1.0)
        time.sleep(settle)
        pids = {t: next(iter(agent_pids(runner, ns).values())) for t, ns in namespaces.items()}
        before = {t: cpu_seconds(pid) for t, pid in pids.items()}
        began = time.monotonic()
        time.sleep(window)
        elapsed = time.monotonic() - began
        for trigger, pid in pids.items():
            memory = memory_kib(pid)
            millicores = 1000 * (cpu_seconds(pid) - before[trigger]) / elapsed
            rows.append(
                f"| {trigger} | {memory['VmRSS'] / 1024:.1f} | {memory['VmHWM'] / 1024:.1f} "
                f"| {memory['Pss'] / 1024:.1f} | {millicores:.1f} |"
            )
    finally:
        if runner is not None:
            runner.stop()
        supervisor.stop_all()
        network.close()
    return [
        "",
        f"## Running agents (rig, 1 replica, queue idle, {settle:g} s settle, {window:g} s window)",
        "",
        "| trigger | VmRSS (MiB) | peak VmHWM (MiB) | Pss (MiB) | CPU (millicores) |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
        "Target: RSS <= 40 MiB. The Kafka agent's figures by the same method: bench/results/agent.md.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--botocore-python", help="an interpreter with botocore installed")
    parser.add_argument("--steady", action="store_true", help="also measure running agents on the rig")
    parser.add_argument("--settle", type=float, default=20.0)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    lines = [
        "# aws-sqs and azure-queue: the memory of their clients, signed by hand (or by botocore)",
        "",
        f"Run {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC by `bench/bench_cloud_queues.py` on "
        f"{platform.node()} ({os.cpu_count()} cores, shared with other sessions' work; "
        f"Python {platform.python_version()}). "
        "VmRSS medians of 3 fresh interpreters.",
        "",
        "| client | VmRSS before (MiB) | VmRSS after (MiB) | added (MiB) |",
        "|---|---:|---:|---:|",
    ]
    for trigger, how in (("aws-sqs", "SigV4"), ("azure-queue", "Shared Key")):
        ours = run(PYTHON, _TIDESCALE, trigger)
        lines.append(
            f"| tidescale agent + uvloop, then one {trigger} measurement (httpx, TLS context, {how} by hand) "
            f"| {ours['base']:.1f} | {ours['after']:.1f} "
            f"| {float(ours['after']) - float(ours['base']):+.1f} |"
        )
    if args.botocore_python:
        boto = run(args.botocore_python, _BOTOCORE)
        lines.append(
            f"| bare interpreter, then a botocore {boto['version']} SQS client "
            f"| {boto['base']:.1f} | {boto['after']:.1f} "
            f"| {float(boto['after']) - float(boto['base']):+.1f} |"
        )
    sigv4, shared_key = signing_microseconds()
    lines += [
        "",
        f"Signing one request (median of 5 x 2,000): SigV4 (GetQueueAttributes) {sigv4:.1f} µs, "
        f"Shared Key (Get Queue Metadata) {shared_key:.1f} µs.",
        "",
        "The Azure SDK (azure-storage-queue with azure-core) is not installed here and was not measured.",
    ]
    if args.steady:
        lines += steady_state(args.settle, args.window)
    text = "\n".join(lines) + "\n"
    if args.write:
        args.write.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
