"""What each trigger type costs the agent in memory: VmRSS of a fresh process after one measurement.

For every trigger type with an example below, a fresh interpreter imports ``tidescale.agent`` and
uvloop (what every agent holds), reads VmRSS, opens that type's source and measures once against
an address where nothing listens (127.0.0.1:9, one second's timeout): that first measurement
imports the type's client library exactly as a running agent's first poll does. VmRSS is read
again after it. The measurement's failure is expected and only its error's class is reported.
Also measured: the clients considered and not chosen (redis-py, psycopg 3), imported alone on
top of the same baseline, when installed.

    .venv/bin/python bench/bench_source_import.py --write bench/results/source_import.md
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
from pathlib import Path

EXAMPLES: dict[str, dict[str, str]] = {
    "kafka": {"bootstrap-servers": "127.0.0.1:9", "consumer-group": "g", "topic": "t", "timeout": "1s"},
    "rabbitmq": {"management-url": "http://127.0.0.1:9", "queue": "q", "timeout": "1s"},
    "redis": {"address": "127.0.0.1:9", "list": "jobs", "timeout": "1s"},
    "postgresql": {
        "host": "127.0.0.1",
        "port": "9",
        "database": "d",
        "username": "u",
        "query": "SELECT 1",
        "value": "1",
        "timeout": "1s",
    },
    "cron": {"start": "0 8 * * *", "end": "0 18 * * *", "desired-replicas": "2"},
}
ALTERNATIVES = {"redis-py (redis.asyncio)": "redis.asyncio", "psycopg 3 (binary)": "psycopg"}
RUNS = 5

_RSS = """
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1])
"""

_ONE_TYPE = (
    _RSS
    + """
import asyncio, json, sys
import tidescale.agent, uvloop
from tidescale.sources.base import Scope
from tidescale.sources.registry import open_source, settings_parser
base = rss()
type_name, raw = sys.argv[1], json.loads(sys.argv[2])
settings = settings_parser(type_name)("t", raw)
async def once():
    source = open_source(settings)
    try:
        await source.measure(settings, Scope.GROUP)
        return "ok"
    except Exception as exc:
        return type(exc).__name__
    finally:
        await source.close()
outcome = asyncio.run(once())
print(json.dumps({"base": base, "after": rss(), "outcome": outcome}))
"""
)

_ALTERNATIVE = (
    _RSS
    + """
import importlib, json, sys
import tidescale.agent, uvloop
base = rss()
importlib.import_module(sys.argv[1])
print(json.dumps({"base": base, "after": rss(), "outcome": "imported"}))
"""
)


def _run(code: str, *args: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _row(name: str, code: str, *args: str) -> tuple[str, float, float, float, str]:
    results = [_run(code, *args) for _ in range(RUNS)]
    base = statistics.median(int(str(r["base"])) for r in results) / 1024
    after = statistics.median(int(str(r["after"])) for r in results) / 1024
    return name, base, after, after - base, str(results[0]["outcome"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="also write the results as Markdown to this file")
    args = parser.parse_args()
    rows = [_row(t, _ONE_TYPE, t, json.dumps(raw)) for t, raw in EXAMPLES.items()]
    alternatives = []
    for label, module in ALTERNATIVES.items():
        try:
            alternatives.append(_row(label, _ALTERNATIVE, module))
        except subprocess.CalledProcessError:
            alternatives.append((label, 0.0, 0.0, 0.0, "not installed"))
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Agent memory per trigger type",
        "",
        f"Date: {now}. Machine: {platform.machine()}, {os.cpu_count()} cores (shared with other jobs), "
        f"Linux {platform.release()}, Python {platform.python_version()}.",
        "",
        "Produced by `bench/bench_source_import.py`; medians of "
        f"{RUNS} fresh processes per row. Baseline: `import tidescale.agent, uvloop` (what every agent "
        "holds). Then one measurement of that trigger type against 127.0.0.1:9 (nothing listens), "
        "which imports its client library as a running agent's first poll does. Target: <= 40 MiB.",
        "",
        "| trigger type | baseline MiB | after one measurement MiB | added MiB | measurement |",
        "|---|---:|---:|---:|---|",
        *(f"| {n} | {b:.1f} | {a:.1f} | {d:+.1f} | {o} |" for n, b, a, d, o in rows),
        "",
        "Clients considered and not chosen, imported alone on the same baseline:",
        "",
        "| client | baseline MiB | after import MiB | added MiB | |",
        "|---|---:|---:|---:|---|",
        *(f"| {n} | {b:.1f} | {a:.1f} | {d:+.1f} | {o} |" for n, b, a, d, o in alternatives),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        args.write.write_text(text)


if __name__ == "__main__":
    main()
