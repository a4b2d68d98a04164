"""The worst ``validate_hints`` time found for hints up to the API server's 256 KiB annotation limit.

The validating webhook runs ``validate_hints`` on every Deployment write that carries hints (and
the waker ``parse_hints`` on every watch event), so no annotations may cost much, whatever they
hold. This throws at it: random hints (known and unknown keys, known fields with random values),
and hand-made bombs: partition lists of a million numbers, backtracking patterns, thousands of
keys, values near 256 KiB, deep nesting, non-ASCII text. Each case is timed (best of 3, so a
scheduler hiccup on the shared machine does not count) and the worst ones are reported.

    .venv/bin/python bench/bench_hints_fuzz.py
    .venv/bin/python bench/bench_hints_fuzz.py --write bench/results/hints_fuzz.md

Not a test: numbers are reported, never asserted. Target: worst under 10 ms.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import random
import string
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "agent")]

from tidescale.hints import KNOBS, validate_hints  # noqa: E402
from tidescale.sources.registry import TRIGGER_TYPES, field_docs  # noqa: E402

LIMIT = 256 * 1024
"""The API server's limit on all annotations of an object together, in bytes."""
P = "tidescale.io/"

Hints = dict[str, str]


def size(hints: Hints) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in hints.items())


def fit(hints: Hints) -> Hints:
    """Drops keys until the whole fits the API server's limit (as it would refuse the rest)."""
    while size(hints) > LIMIT:
        hints.pop(next(reversed(hints)))
    return hints


def bombs() -> Iterator[tuple[str, Hints]]:
    kafka = {P + "kafka.bootstrap-servers": "k:9092", P + "kafka.consumer-group": "g"}
    rabbit = {P + "rabbitmq.management-url": "http://r:15672"}
    yield "partitions 0-1000000 x 256", {**kafka, P + "kafka.partitions": ",".join(["0-1000000"] * 256)}
    yield "partitions 0-1000000 x 4000", {**kafka, P + "kafka.partitions": ",".join(["0-1000000"] * 4000)}
    yield "partitions 1 x 60000", {**kafka, P + "kafka.partitions": ",".join(["1"] * 60000)}
    yield "queue-pattern (a|a)+ x 100", {**rabbit, P + "rabbitmq.queue-pattern": "(a|a)+" * 100}
    yield "queue-pattern nested 1000", {**rabbit, P + "rabbitmq.queue-pattern": "(" * 500 + "a" + ")*" * 500}
    yield "queue-pattern 4 KiB alternation", {**rabbit, P + "rabbitmq.queue-pattern": "|".join(["ab"] * 1300)}
    yield "queue-pattern a{1000}{1000}", {**rabbit, P + "rabbitmq.queue-pattern": "(a{1000}){1000}"}
    yield "member pattern .*.*.* x 300", {**kafka, P + "kafka.member-client-id-pattern": ".*" * 300}
    yield "one 250 KiB value", {P + "kafka.topic": "x" * (250 * 1024)}
    yield "one 4 KiB topic list", {**kafka, P + "kafka.topic": ",".join(["t"] * 2000)}
    yield "bootstrap 4 KiB", {**kafka, P + "kafka.bootstrap-servers": ",".join(["a:1"] * 1000)}
    yield "5000 unknown knobs", fit({f"{P}knob-{i}": "1" for i in range(5000)})
    yield "255 unknown knobs", {f"{P}knob-{i}": "1" for i in range(255)}
    yield "255 near-miss knobs", {f"{P}min-replica{i}": "1" for i in range(255)}
    yield "5000 triggers", fit({f"{P}t{i}.type": "kafka" for i in range(5000)})
    yield (
        "16 full kafka triggers",
        {
            f"{P}t{i}.{k}": v
            for i in range(16)
            for k, v in {
                "type": "kafka",
                "bootstrap-servers": "k:9092",
                "consumer-group": "g",
                "topic": "a",
            }.items()
        },
    )
    yield "255 fields of one trigger", {f"{P}kafka.field{i}": "x" for i in range(255)}
    yield "unicode 4 KiB", {P + "kafka.topic": "é" * 2048}
    yield "long key names", fit({P + "x" * 250 + str(i): "1" for i in range(1000)})
    yield "durations with 4 KiB digits", {P + "cooldown": "9" * 4000 + "s"}
    yield "numbers with 4 KiB digits", {P + "max-replicas": "9" * 4096}
    yield "rate policies 4 KiB", {P + "scale-up-policies": ",".join(["4 pods/15s"] * 370)}


def random_hints(rng: random.Random) -> Hints:
    keys = [k.annotation for k in KNOBS]
    fields = {t: [d.field for d in field_docs(t)] for t in TRIGGER_TYPES}
    hints: Hints = {}
    for _ in range(rng.choice([1, 5, 20, 100, 300])):
        roll = rng.random()
        if roll < 0.3:
            key = rng.choice(keys)
        elif roll < 0.8:
            kind = rng.choice(TRIGGER_TYPES)
            trigger = kind if rng.random() < 0.5 else f"t{rng.randrange(40)}"
            key = f"{P}{trigger}.{rng.choice(fields[kind])}"
            if trigger != kind:
                hints[f"{P}{trigger}.type"] = kind
        else:
            key = P + "".join(rng.choices(string.ascii_lowercase + ".-", k=rng.randrange(1, 60)))
        hints[key] = random_value(rng)
    return fit(hints)


def random_value(rng: random.Random) -> str:
    length = rng.choice([0, 1, 5, 30, 300, 5000, 60000])
    alphabet = rng.choice(
        [string.digits + ",-", string.printable, "(a|)*+?{}[]\\.", "aé€\x00💥", "0123456789smh"]
    )
    return "".join(rng.choices(alphabet, k=length))


def timed(fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random", type=int, default=3000, help="random cases (default 3000)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args(argv)
    validate_hints({P + "kafka.queue": "warm-up"})  # imports and first compilations are not the bench's
    rng = random.Random(args.seed)
    rows: list[tuple[float, str, int, int]] = []
    for name, hints in bombs():
        seconds = timed(lambda h=hints: validate_hints(h))  # type: ignore[misc]
        rows.append((seconds, name, size(hints), len(validate_hints(hints))))
    random_worst: list[tuple[float, str, int, int]] = []
    for i in range(args.random):
        hints = random_hints(rng)
        seconds = timed(lambda h=hints: validate_hints(h))  # type: ignore[misc]
        random_worst.append((seconds, f"random #{i}", size(hints), len(validate_hints(hints))))
    random_worst.sort(reverse=True)
    every = sorted(rows + random_worst, reverse=True)
    lines = [
        "# validate_hints worst case (fuzz)",
        "",
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC. Machine: {platform.machine()}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()} (2 cores shared "
        "with other jobs). Each case: best of 3 runs.",
        "",
        f"Produced by `bench/bench_hints_fuzz.py` (seed {args.seed}): {len(rows)} hand-made bombs and "
        f"{args.random} random sets of hints, each cut to the API server's 256 KiB annotation limit.",
        "",
        f"**Worst: {every[0][0] * 1000:.2f} ms** ({every[0][1]}). Target: under 10 ms.",
        "",
        "| case | bytes | problems reported | ms |",
        "|---|---:|---:|---:|",
        *(
            f"| {name.replace('|', chr(92) + '|')} | {nbytes:,} | {problems} | {seconds * 1000:.3f} |"
            for seconds, name, nbytes, problems in rows
        ),
        "",
        f"Random cases: worst {random_worst[0][0] * 1000:.3f} ms, median "
        f"{random_worst[len(random_worst) // 2][0] * 1000:.3f} ms. The five worst:",
        "",
        "| case | bytes | problems reported | ms |",
        "|---|---:|---:|---:|",
        *(
            f"| {name} | {nbytes:,} | {problems} | {seconds * 1000:.3f} |"
            for seconds, name, nbytes, problems in random_worst[:5]
        ),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write is not None:
        args.write.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
