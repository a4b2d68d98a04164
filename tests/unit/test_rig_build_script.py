"""The rig's build script ends with one clear line when a tool is missing (no stack trace)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

BUILD = Path(__file__).resolve().parents[2] / "tests" / "rig" / "build" / "build.sh"


def run_without(tmp_path: Path, piece: str, **env: str) -> subprocess.CompletedProcess[str]:
    # A PATH with the shell's basics only: no Go, no Java, no Maven.
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("bash", "dirname", "mkdir", "sed", "awk", "id", "env", "cat", "rm", "mv", "flock"):
        for directory in ("/usr/bin", "/bin"):
            if (Path(directory) / tool).exists():
                (bare / tool).symlink_to(Path(directory) / tool)
                break
    return subprocess.run(
        ["/bin/bash", str(BUILD), piece],
        env={"PATH": str(bare), "HOME": str(tmp_path), "TIDESCALE_RIG_CACHE": str(tmp_path / "cache"), **env},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    ("piece", "tool"),
    [
        ("kubernetes", "go"),
        ("etcd", "go"),
        ("helm", "go"),
        ("kafka", "java"),
        ("nats", "go"),
        ("prometheus", "apt-get"),
        ("elasticmq", "java"),
        ("azurite", "node"),
    ],
)
def test_a_missing_tool_ends_the_build_with_one_line_naming_it_and_how_to_get_it(
    tmp_path: Path, piece: str, tool: str
) -> None:
    result = run_without(tmp_path, piece)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"rig: missing '{tool}': install")
    assert "Traceback" not in result.stderr


def test_an_unknown_piece_is_refused_with_the_pieces_it_knows(tmp_path: Path) -> None:
    result = run_without(tmp_path, "kubelet")
    assert result.returncode == 2
    assert "unknown piece 'kubelet'" in result.stderr
    assert "kubernetes" in result.stderr


def test_a_malformed_kubernetes_version_ends_the_build_with_one_line_naming_the_form_expected(
    tmp_path: Path,
) -> None:
    result = run_without(tmp_path, "kubernetes", TIDESCALE_RIG_KUBERNETES_VERSION="1.30")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("rig: Kubernetes version '1.30' is not of the form v1.<minor>.<patch>")
