"""The demo's PNG writer (tests/rig/plot.py): marks where replicas reach and leave zero, a valid PNG
that carries its own data, and corruption detected on reading."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.rig.plot import Timeline, read_png, write_png


def test_reaching_zero_is_a_park_mark_and_leaving_it_a_wake_mark() -> None:
    timeline = Timeline()
    for t, replicas in enumerate([1, 4, 2, 0, 0, 3, 1]):
        timeline.add(float(t), 10.0, replicas)
    assert [(m.kind, m.t) for m in timeline.marks] == [("park", 3.0), ("wake", 5.0)]


def test_the_png_decodes_to_its_size_and_carries_the_timeline(tmp_path: Path) -> None:
    timeline = Timeline()
    for t, (lag, replicas) in enumerate([(400, 1), (300, 6), (0, 2), (0, 0), (150, 0), (100, 3)]):
        timeline.add(t * 5.0, float(lag), replicas)
    size, back = read_png(write_png(timeline, tmp_path / "demo.png"))
    assert size == (960, 420)
    assert back == timeline


def test_a_corrupted_png_is_refused_with_the_chunk_named(tmp_path: Path) -> None:
    path = write_png(Timeline(), tmp_path / "demo.png")
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # inside the IDAT chunk
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"IDAT.*bad CRC"):
        read_png(path)


@settings(deadline=None, max_examples=25)
@given(st.lists(st.tuples(st.floats(0, 1e6), st.integers(0, 500)), max_size=40))
def test_any_timeline_draws_without_error_and_reads_back(points: list[tuple[float, int]]) -> None:
    import tempfile

    timeline = Timeline()
    for t, (lag, replicas) in enumerate(points):
        timeline.add(float(t), lag, replicas)
    with tempfile.TemporaryDirectory() as directory:
        _, back = read_png(write_png(timeline, Path(directory) / "p.png"))
    assert back == timeline
