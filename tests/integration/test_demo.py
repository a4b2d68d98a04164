"""``make demo`` ends with a picture: the short profile (one burst, park, a burst at zero, wake)
run as ``make demo`` runs it, and the data inside the PNG it writes checked: the replicas rise
with the burst, reach zero, and wake."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.rig.paths import REPO_ROOT
from tests.rig.plot import read_png


@pytest.mark.rig
def test_the_short_demo_writes_a_png_whose_replicas_rise_with_the_burst_reach_zero_and_wake(
    tmp_path: Path,
) -> None:
    picture = tmp_path / "demo.png"
    env = {**os.environ, "DEMO_PROFILE": "short", "DEMO_SECONDS": "240", "DEMO_PNG": str(picture)}
    result = subprocess.run(
        [sys.executable, "-m", "tests.rig.demo"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert str(picture) in result.stdout, output[-4000:]
    (width, height), timeline = read_png(picture)
    assert (width, height) == (960, 420)
    samples = timeline.samples
    kinds = [mark.kind for mark in timeline.marks]
    assert "park" in kinds, f"never reached zero: {output[-3000:]}"
    park = next(mark.t for mark in timeline.marks if mark.kind == "park")
    wakes = [mark.t for mark in timeline.marks if mark.kind == "wake" and mark.t > park]
    assert wakes, f"parked but never woke: {output[-3000:]}"
    before_park = [s for s in samples if s.t < park]
    assert max(s.lag for s in before_park) > 0, "the first burst never showed as lag"
    assert max(s.replicas for s in before_park) > 1, "the replicas did not rise with the burst"
    assert any(s.replicas == 0 for s in samples if park <= s.t < wakes[0])
    assert any(s.replicas >= 1 for s in samples if s.t >= wakes[0])
    assert any(s.lag > 0 for s in samples if park <= s.t <= wakes[0]), "the wake had no lag before it"
    assert "Event Woken" in result.stdout, "the waker's Event (signed tidescale-waker) was not shown"
    # The leader's tidescale.io/state label (kubectl get deploy -L tidescale.io/state), as it changed.
    assert "-> scaling" in result.stdout, output[-3000:]
    assert "-> parked" in result.stdout, output[-3000:]
