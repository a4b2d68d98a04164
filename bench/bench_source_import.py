"""The agent's memory with each trigger type: VmRSS of a fresh interpreter after ``import
tidescale.agent`` and uvloop (what every agent holds), then after one measurement of one trigger of
that type (its client imported, its client object built, one connection attempt).

The measurement goes to a local port with nothing listening, so every client gets as far as a
connection without needing a server: what it loads and builds for that is what an agent of that
trigger type holds (the answers themselves are a few KiB). Each trigger type runs in its own
interpreter, three times; the table gives the median.

    .venv/bin/python bench/bench_source_import.py [--out bench/results/source_import.md]

A trigger type without an example below is listed as not measured: add one line to EXAMPLES.
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

REPO = Path(__file__).resolve().parents[1]
PYTHON = str(REPO / ".venv" / "bin" / "python")
TARGET_MIB = 40.0

# One trigger of each type pointing at 127.0.0.1:<closed port>; {port} is filled in per run.
EXAMPLES: dict[str, dict[str, str]] = {
    "kafka": {"bootstrap-servers": "127.0.0.1:{port}", "consumer-group": "g", "topic": "t"},
    "rabbitmq": {"management-url": "http://127.0.0.1:{port}", "queue": "q"},
    "prometheus": {"server-address": "http://127.0.0.1:{port}", "query": "sum(up)", "threshold": "10"},
    "nats-jetstream": {"monitoring-endpoint": "127.0.0.1:{port}", "stream": "S", "consumer": "c"},
}

_CHILD = r"""
import asyncio, json, socket, sys

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

import tidescale.agent, uvloop
base = rss()
trigger_type, raw = sys.argv[1], json.loads(sys.argv[2])
if trigger_type != "none":
    from tidescale.errors import SourceError
    from tidescale.sources.base import Scope
    from tidescale.sources.registry import open_source, settings_parser

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = settings_parser(trigger_type)("t", {k: v.replace("{port}", str(port)) for k, v in raw.items()})

    async def once():
        source = open_source(settings)
        try:
            await source.measure(settings, Scope.GROUP)
        except SourceError:
            pass
        finally:
            await source.close()

    uvloop.run(once())
heavy = sorted(m for m in ("aiokafka", "aio_pika", "aiormq", "httpx", "orjson", "ssl", "kubernetes_asyncio")
               if m in sys.modules)
print(json.dumps({"base": base, "after": rss(), "modules": heavy}))
"""


def measure(trigger_type: str, raw: dict[str, str]) -> dict[str, object]:
    runs = []
    for _ in range(3):
        out = subprocess.run(
            [PYTHON, "-c", _CHILD, trigger_type, json.dumps(raw)],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
            timeout=120,
        ).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    return {
        "base": statistics.median(r["base"] for r in runs),
        "after": statistics.median(r["after"] for r in runs),
        "modules": runs[0]["modules"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "source_import.md")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "agent"))
    from tidescale.sources.registry import TRIGGER_TYPES

    rows = [("none (agent + uvloop only)", measure("none", {}))]
    missing = [t for t in TRIGGER_TYPES if t not in EXAMPLES]
    rows += [(t, measure(t, EXAMPLES[t])) for t in TRIGGER_TYPES if t in EXAMPLES]
    lines = [
        "# The agent's RSS with each trigger type",
        "",
        f"Run {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC by `bench/bench_source_import.py` on "
        f"{platform.node()} ({os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.machine()}); the machine was shared with other sessions' "
        "work (memory figures are per process and not affected by load).",
        "",
        "Each row: a fresh interpreter imports `tidescale.agent` and uvloop, then opens one source of that "
        "trigger type and measures once against a closed local port (the client imported and built, one "
        "connection attempt), then reads VmRSS. Median of 3 runs. Target: at most "
        f"{TARGET_MIB:.0f} MiB with any one trigger.",
        "",
        "| trigger type | VmRSS after import (MiB) | VmRSS after one measurement (MiB) "
        "| added by the trigger (MiB) | within target | client modules loaded |",
        "|---|---|---|---|---|---|",
    ]
    for name, found in rows:
        base, after = float(found["base"]), float(found["after"])  # type: ignore[arg-type]
        modules = ", ".join(found["modules"])  # type: ignore[arg-type]
        ok = "yes" if after <= TARGET_MIB else "NO"
        lines.append(f"| {name} | {base:.1f} | {after:.1f} | {after - base:+.1f} | {ok} | {modules} |")
    if missing:
        lines += ["", f"Not measured (no example in the bench yet): {', '.join(missing)}."]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
