"""The policy engine's cost: time per ``decide`` call and the size of the saved policy state.

Pure, no rig. Drives ``decide`` like the leader (one call per second of simulated time) over
a random lag walk, on the nil-behaviour path and on the behaviour path with the longest
windows the HPA allows (1 h each), and reports the median and 99th percentile time per call,
the history's length in memory, and the ``tidescale.io/policy-state`` annotation's size after
each run. Not a test: numbers are reported, never asserted.

    .venv/bin/python bench/bench_policy.py --write bench/results/policy.md
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

from tidescale._policy_state import encode
from tidescale.hints import Hints, parse_hints
from tidescale.policy import History, decide
from tidescale.sources.base import Measurement

P = "tidescale.io/"


def hints(extra: dict[str, str]) -> Hints:
    base = {
        P + "kafka.bootstrap-servers": "kafka:9092",
        P + "kafka.consumer-group": "g",
        P + "kafka.topic": "t",
        P + "max-replicas": "100",
    }
    return parse_hints({**base, **{P + k: v for k, v in extra.items()}})


def run(name: str, h: Hints, seconds: int, seed: int) -> str:
    rng = random.Random(seed)
    history, current, lag = History(), 1, 0.0
    times = []
    for now in range(seconds):
        lag = max(0.0, lag + rng.gauss(0, 300))
        reading = Measurement(trigger="kafka", value=lag, target=100, active=lag > 0, taken_at=now)
        start = time.perf_counter()
        decision = decide([reading], current=current, hints=h, now=now, history=history)
        times.append(time.perf_counter() - start)
        history, current = decision.history, decision.desired
    state = encode(history, hints=h, now=seconds, wall=time.time())
    p99 = statistics.quantiles(times, n=100)[98]
    return (
        f"| {name} | {seconds} | {statistics.median(times) * 1e6:.0f} | {p99 * 1e6:.0f} | "
        f"{len(history.recommendations)} | {len(history.scale_up_events) + len(history.scale_down_events)} | "
        f"{len(state)} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=7200)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    rows = [
        run("nil behaviour (KEDA's default HPA)", hints({}), args.seconds, args.seed),
        run("behaviour, defaults", hints({"scale-up-select": "max"}), args.seconds, args.seed),
        run(
            "behaviour, 1h windows, 1 pod/1s + 10%/30m",
            hints(
                {
                    "scale-up-stabilization": "1h",
                    "scale-down-stabilization": "1h",
                    "scale-up-policies": "1 pod/1s, 10%/30m",
                    "scale-down-policies": "1 pod/1s, 10%/30m",
                }
            ),
            args.seconds,
            args.seed,
        ),
    ]
    text = "\n".join(
        [
            "# Policy engine: time per decision and saved state size",
            "",
            f"`bench/bench_policy.py --seconds {args.seconds} --seed {args.seed}` (one decide per simulated",
            "second over a random lag walk, max-replicas 100). Times in microseconds on this machine",
            "(2 shared cores). History = entries in memory at the end; state = bytes of the",
            "`tidescale.io/policy-state` annotation at the end (limit 8192).",
            "",
            "| hints | decisions | median µs | p99 µs | recommendations | scale events | state bytes |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    print(text)
    if args.write:
        args.write.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
