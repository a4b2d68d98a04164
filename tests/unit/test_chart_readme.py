"""The chart's README is generated from values.yaml: it must be current and list every value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import gen_chart_readme  # noqa: E402


def _leaves(values: object, prefix: str = "") -> list[str]:
    if isinstance(values, dict) and values:
        return [leaf for key, value in values.items() for leaf in _leaves(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


def test_the_chart_readme_is_what_the_generator_writes_from_values_yaml() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_chart_readme.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_every_leaf_value_of_the_chart_has_a_row_with_its_description_or_its_parents() -> None:
    values = yaml.safe_load((gen_chart_readme.CHART / "values.yaml").read_text())
    rows = dict(gen_chart_readme.documented_keys((gen_chart_readme.CHART / "values.yaml").read_text()))

    def described(leaf: str) -> bool:
        parts = leaf.split(".")
        return any(rows.get(".".join(parts[:n])) for n in range(len(parts), 0, -1))

    missing = [leaf for leaf in _leaves(values) if not described(leaf)]
    assert missing == []


def test_a_continued_comment_and_a_nested_key_are_read_as_one_description_of_the_dotted_key() -> None:
    text = "top:\n  # -- first line\n  # second line\n  inner: 3\n# a section note\nother: 1\n"
    assert gen_chart_readme.documented_keys(text) == [
        ("top.inner", "first line second line"),
        ("other", "a section note"),
    ]
