"""Why SigV4 is written by hand for the aws-sqs trigger: the memory an SQS client costs an agent.

Three fresh interpreters, each reading its own VmRSS before and after:

1. tidescale's way: ``import tidescale.agent`` and uvloop, then one aws-sqs measurement against a
   closed local https port (httpx imported, the client and its TLS context built, one request
   signed, one connection attempt);
2. botocore's way (the AWS SDK for Python, what a signing client would otherwise import): a bare
   interpreter of ``--botocore-python`` (one that has botocore installed; it is not a dependency
   of tidescale) creating an SQS client;
3. the cost of signing: ``sign`` timed over 2,000 GetQueueAttributes requests (median of 5 runs).

    .venv/bin/python bench/bench_sqs_signing.py --botocore-python /path/to/python \
        --write bench/results/sqs_signing.md
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
import asyncio, json, os, socket
import tidescale.agent, uvloop
from tidescale.errors import SourceError
from tidescale.sources.base import Scope
from tidescale.sources.registry import open_source, settings_parser
base = rss()
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
os.environ["BENCH_KEY"] = "AKIDEXAMPLE"
settings = settings_parser("aws-sqs")("t", {
    "queue-url": f"https://127.0.0.1:{port}/000000000000/q", "aws-region": "eu-west-1",
    "access-key-id-env": "BENCH_KEY", "secret-access-key-env": "BENCH_KEY"})
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


def run(python: str, code: str) -> dict[str, float | str]:
    samples = []
    for _ in range(3):
        out = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
        ).stdout
        samples.append(json.loads(out.strip().splitlines()[-1]))
    found: dict[str, float | str] = {
        k: statistics.median(float(s[k]) for s in samples) for k in ("base", "after")
    }
    if "version" in samples[0]:
        found["version"] = samples[0]["version"]
    return found


def signing_microseconds() -> float:
    sys.path.insert(0, str(REPO / "agent"))
    from tidescale.sources.aws_sqs._sigv4 import AwsCredentials, sign

    key = AwsCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    body = (
        b'{"QueueUrl":"https://sqs.eu-west-1.amazonaws.com/123456789012/orders","AttributeNames":["A","B"]}'
    )
    now = datetime.datetime.now(datetime.UTC)
    runs = []
    for _ in range(5):
        began = time.perf_counter()
        for _ in range(2000):
            sign(
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
        runs.append((time.perf_counter() - began) / 2000 * 1e6)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--botocore-python", help="an interpreter with botocore installed")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    ours = run(PYTHON, _TIDESCALE)
    lines = [
        "# aws-sqs: the memory of an SQS client, signed by hand or by botocore",
        "",
        f"Run {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC by `bench/bench_sqs_signing.py` on "
        f"{platform.node()} ({os.cpu_count()} cores, shared with other sessions' work; "
        f"Python {platform.python_version()}). "
        "VmRSS medians of 3 fresh interpreters.",
        "",
        "| client | VmRSS before (MiB) | VmRSS after (MiB) | added (MiB) |",
        "|---|---:|---:|---:|",
        f"| tidescale agent + uvloop, then one aws-sqs measurement (httpx, TLS context, SigV4 by hand) "
        f"| {ours['base']:.1f} | {ours['after']:.1f} | {float(ours['after']) - float(ours['base']):+.1f} |",
    ]
    if args.botocore_python:
        boto = run(args.botocore_python, _BOTOCORE)
        lines.append(
            f"| bare interpreter, then a botocore {boto['version']} SQS client "
            f"| {boto['base']:.1f} | {boto['after']:.1f} "
            f"| {float(boto['after']) - float(boto['base']):+.1f} |"
        )
    lines += [
        "",
        f"Signing one GetQueueAttributes request: {signing_microseconds():.1f} µs (median of 5 x 2,000).",
    ]
    text = "\n".join(lines) + "\n"
    if args.write:
        args.write.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
