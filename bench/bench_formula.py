"""The scaling-modifiers formula's cost: compile time (paid once, when hints are parsed), time
per evaluation (paid once per decision), and what a formula adds to one ``decide`` call.

Pure, no rig. Formulas range from KEDA's documentation examples to the largest formula the caps
allow (256 nodes, 64 levels). Reports the median and 99th percentile. Not a test: numbers are
reported, never asserted.

    .venv/bin/python bench/bench_formula.py --write bench/results/formula.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from tidescale._formula import MAX_DEPTH, compile_formula
from tidescale.hints import Hints, parse_hints
from tidescale.policy import History, decide
from tidescale.sources.base import Measurement

P = "tidescale.io/"
KEY = P + "scaling-modifiers-formula"
TRIGGERS = ("orders", "payments")
VALUES = {"orders": 300.0, "payments": 200.0}
FORMULAS = {
    "sum (KEDA docs)": "orders + payments",
    "mean (KEDA docs)": "(orders + payments) / 2",
    "ternary (KEDA docs)": "orders > 2 ? orders : payments",
    "guarded ratio with functions": "payments > 0 ? min(ceil(orders / payments) * 100, 1e6) : orders",
    "longest chain (64 deep)": "+".join(["orders"] * MAX_DEPTH),
    "largest (247 nodes)": "+".join("(" + "+".join(["orders"] * 15) + ")" for _ in range(8)),
}


def timed(fn: Callable[[], object], rounds: int) -> tuple[float, float]:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def hints(formula: str | None) -> Hints:
    annotations: dict[str, str] = {P + "max-replicas": "100"}
    for trigger in TRIGGERS:
        annotations |= {
            P + f"{trigger}.type": "kafka",
            P + f"{trigger}.bootstrap-servers": "kafka:9092",
            P + f"{trigger}.consumer-group": "g",
            P + f"{trigger}.topic": trigger,
        }
    if formula is not None:
        annotations |= {KEY: formula, P + "scaling-modifiers-target": "100"}
    return parse_hints(annotations)


def decide_once(h: Hints) -> Callable[[], object]:
    readings = [
        Measurement(trigger=t, value=v, target=100, active=True, taken_at=0.0) for t, v in VALUES.items()
    ]
    return lambda: decide(readings, current=3, hints=h, now=0.0, history=History())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5000)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    lines = [
        "# scaling-modifiers formula: cost (bench/bench_formula.py)",
        "",
        f"{args.rounds} rounds each, on the project's 2 shared cores; microseconds.",
        "",
        "| formula | chars | compile median | compile p99 | evaluate median | evaluate p99 |",
        "|---|---|---|---|---|---|",
    ]
    for name, text in FORMULAS.items():
        formula = compile_formula(KEY, text, TRIGGERS)
        c_med, c_p99 = timed(lambda: compile_formula(KEY, text, TRIGGERS), args.rounds)  # noqa: B023
        e_med, e_p99 = timed(lambda: formula.evaluate(VALUES), args.rounds)  # noqa: B023
        lines.append(f"| {name} | {len(text)} | {c_med:.1f} | {c_p99:.1f} | {e_med:.1f} | {e_p99:.1f} |")
    lines += ["", "| decide, 2 triggers | median | p99 |", "|---|---|---|"]
    largest = FORMULAS["largest (247 nodes)"]
    for name, text in (("no formula", None), ("sum", "orders + payments"), ("largest", largest)):
        med, p99 = timed(decide_once(hints(text)), args.rounds)
        lines.append(f"| {name} | {med:.1f} | {p99:.1f} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.write:
        args.write.write_text(report)


if __name__ == "__main__":
    main()
