"""The demo's picture: lag and replicas over time, park and wake marked, as a PNG written with
zlib alone (no plotting library in the image or the venv). The samples ride in the PNG itself,
in a ``tEXt`` chunk (keyword ``tidescale-demo``, JSON), so a test checks the picture's data."""

from __future__ import annotations

import itertools
import json
import struct
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Mark", "Sample", "Timeline", "read_png", "write_png"]

KEYWORD = "tidescale-demo"
WIDTH, HEIGHT = 960, 420
LEFT, RIGHT, TOP, BOTTOM = 60, 60, 40, 40
WHITE, GRID, AXIS = (255, 255, 255), (225, 225, 225), (80, 80, 80)
LAG, REPLICAS, PARK, WAKE = (31, 119, 180), (230, 120, 20), (150, 150, 150), (44, 160, 44)

# 3x5 glyphs, rows top to bottom, '#' lit.
_FONT = {
    "0": "####.##.##.####",
    "1": ".#.##..#..#.###",
    "2": "###..#####..###",
    "3": "###..####..####",
    "4": "#.##.####..#..#",
    "5": "####..###..####",
    "6": "####..####.####",
    "7": "###..#..#..#..#",
    "8": "####.#####.####",
    "9": "####.####..####",
    "A": ".#.#.#####.##.#",
    "C": "####..#..#..###",
    "E": "####..####..###",
    "G": "####..#.##.####",
    "I": "###.#..#..#.###",
    "K": "#.##.###.#.##.#",
    "L": "#..#..#..#..###",
    "P": "####.#####..#..",
    "R": "####.###.#.##.#",
    "S": "####..###..####",
    "W": "#.##.########.#",
    " ": "...............",
    "(": ".#.#..#..#...#.",
    ")": ".#...#..#..#.#.",
    "/": "..#..#.#..#.#..",
    "-": "......###......",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class Sample:
    t: float
    """Seconds since the demo's first burst."""
    lag: float
    replicas: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Mark:
    t: float
    kind: str
    """``park`` (replicas reached 0) or ``wake`` (from 0 back up)."""


@dataclass(kw_only=True, slots=True)
class Timeline:
    samples: list[Sample] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)

    def add(self, t: float, lag: float, replicas: int) -> None:
        """One sample; a park or wake mark when the replicas reach 0 or leave it."""
        if self.samples:
            before = self.samples[-1].replicas
            if before > 0 and replicas == 0:
                self.marks.append(Mark(t=t, kind="park"))
            elif before == 0 and replicas > 0:
                self.marks.append(Mark(t=t, kind="wake"))
        self.samples.append(Sample(t=t, lag=lag, replicas=replicas))

    def to_json(self) -> dict[str, Any]:
        return {"samples": [asdict(s) for s in self.samples], "marks": [asdict(m) for m in self.marks]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Timeline:
        return cls(
            samples=[Sample(**s) for s in data["samples"]],
            marks=[Mark(**m) for m in data["marks"]],
        )


class _Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(WHITE) * (width * height))

    def dot(self, x: int, y: int, color: tuple[int, int, int]) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = (y * self.width + x) * 3
            self.pixels[i : i + 3] = bytes(color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: tuple[int, int, int], thick: int = 1) -> None:
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for step in range(steps + 1):
            x = round(x0 + (x1 - x0) * step / steps)
            y = round(y0 + (y1 - y0) * step / steps)
            for dx in range(thick):
                for dy in range(thick):
                    self.dot(x + dx, y + dy, color)

    def text(self, x: int, y: int, words: str, color: tuple[int, int, int], scale: int = 2) -> None:
        for n, char in enumerate(words.upper()):
            glyph = _FONT.get(char, _FONT[" "]).ljust(15, ".")
            for row in range(5):
                for col in range(3):
                    if glyph[row * 3 + col] == "#":
                        for sx in range(scale):
                            for sy in range(scale):
                                self.dot(x + (n * 4 + col) * scale + sx, y + row * scale + sy, color)

    def png(self, text_chunks: dict[str, str]) -> bytes:
        raw = b"".join(
            b"\x00" + bytes(self.pixels[y * self.width * 3 : (y + 1) * self.width * 3])
            for y in range(self.height)
        )

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        texts = b"".join(
            chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1"))
            for key, value in text_chunks.items()
        )
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + texts
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b"")
        )


def _nice_max(value: float) -> float:
    for top in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000):
        if value <= top:
            return float(top)
    return float(value)


def write_png(timeline: Timeline, path: Path) -> Path:
    """Lag (blue, left axis) and replicas (orange, right axis) over time; park grey, wake green."""
    canvas = _Canvas(WIDTH, HEIGHT)
    samples: Sequence[Sample] = timeline.samples or [Sample(t=0.0, lag=0.0, replicas=0)]
    t_max = max(max(s.t for s in samples), 1.0)
    lag_max = _nice_max(max(s.lag for s in samples))
    replicas_max = -(-max(max(s.replicas for s in samples), 1) // 4) * 4
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x_of(t: float) -> int:
        return LEFT + round(plot_w * t / t_max)

    def y_of(value: float, top: float) -> int:
        return TOP + plot_h - round(plot_h * value / top)

    for tick in range(5):
        y = TOP + round(plot_h * tick / 4)
        canvas.line(LEFT, y, LEFT + plot_w, y, GRID)
        canvas.text(4, y - 5, f"{round(lag_max * (4 - tick) / 4)}", LAG)
        canvas.text(LEFT + plot_w + 8, y - 5, f"{round(replicas_max * (4 - tick) / 4)}", REPLICAS)
    canvas.line(LEFT, TOP, LEFT, TOP + plot_h, AXIS)
    canvas.line(LEFT, TOP + plot_h, LEFT + plot_w, TOP + plot_h, AXIS)
    for second in range(0, int(t_max) + 1, max(10, int(t_max) // 10 // 10 * 10 or 10)):
        canvas.line(x_of(second), TOP + plot_h, x_of(second), TOP + plot_h + 4, AXIS)
        canvas.text(x_of(second) - 6, TOP + plot_h + 10, str(second), AXIS)
    canvas.text(LEFT + plot_w - 10, TOP + plot_h + 26, "S", AXIS)
    for mark in timeline.marks:
        color = PARK if mark.kind == "park" else WAKE
        for y in range(TOP, TOP + plot_h, 6):
            canvas.line(x_of(mark.t), y, x_of(mark.t), y + 3, color, thick=2)
        canvas.text(x_of(mark.t) + 4, TOP + 4, mark.kind, color)
    for before, after in itertools.pairwise(samples):
        canvas.line(
            x_of(before.t), y_of(before.lag, lag_max), x_of(after.t), y_of(after.lag, lag_max), LAG, thick=2
        )
        y_before = y_of(before.replicas, replicas_max)
        canvas.line(x_of(before.t), y_before, x_of(after.t), y_before, REPLICAS, thick=3)
        canvas.line(
            x_of(after.t), y_before, x_of(after.t), y_of(after.replicas, replicas_max), REPLICAS, thick=3
        )
    canvas.text(LEFT, 12, "LAG", LAG, scale=3)
    canvas.text(LEFT + 60, 12, "REPLICAS", REPLICAS, scale=3)
    canvas.text(LEFT + 200, 12, "PARK", PARK, scale=3)
    canvas.text(LEFT + 270, 12, "WAKE", WAKE, scale=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(canvas.png({KEYWORD: json.dumps(timeline.to_json(), separators=(",", ":"))}))
    return path


def read_png(path: Path) -> tuple[tuple[int, int], Timeline]:
    """The size and the timeline of a PNG written by :func:`write_png`; checks every chunk's CRC and
    that the pixel data decompresses to the size the header declares. Raises ValueError otherwise."""
    data = path.read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError(f"{path} is not a PNG (bad signature)")
    offset, size, idat, timeline = 8, (0, 0), b"", None
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        if zlib.crc32(kind + body) != crc:
            raise ValueError(f"{path}: chunk {kind!r} has a bad CRC")
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        elif kind == b"tEXt":
            key, _, value = body.partition(b"\x00")
            if key.decode("latin-1") == KEYWORD:
                timeline = Timeline.from_json(json.loads(value.decode("latin-1")))
        offset += 12 + length
    if len(zlib.decompress(idat)) != size[1] * (1 + 3 * size[0]):
        raise ValueError(f"{path}: the pixel data does not match the {size[0]}x{size[1]} header")
    if timeline is None:
        raise ValueError(f"{path}: no {KEYWORD} data chunk")
    return (int(size[0]), int(size[1])), timeline
