"""``tidescale lint FILE...``: check the tidescale hints of Deployment manifests.

Reads YAML (several documents per file) or JSON, lists every problem of every
Deployment with its file and name, and exits 1 when there is any, 0 when all are
clean, 2 when a file cannot be read. ``-`` reads standard input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any

from tidescale.hints import validate_hints

__all__ = ["main"]


def _documents(text: str) -> Iterator[Any]:
    import yaml  # only the CLI pays for it

    for document in yaml.safe_load_all(text):
        if isinstance(document, dict) and document.get("kind") == "List":
            yield from document.get("items") or []
        else:
            yield document


def lint_text(text: str, *, origin: str) -> tuple[list[str], int]:
    """Problems (one line each) and the number of Deployments checked."""
    problems: list[str] = []
    checked = 0
    for document in _documents(text):
        if not isinstance(document, dict) or document.get("kind") != "Deployment":
            continue
        checked += 1
        metadata = document.get("metadata") or {}
        name = f"{metadata.get('namespace', 'default')}/{metadata.get('name', '?')}"
        annotations = {str(k): str(v) for k, v in (metadata.get("annotations") or {}).items()}
        problems += [f"{origin}: deployment {name}: {problem}" for problem in validate_hints(annotations)]
    return problems, checked


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tidescale lint", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="manifest files (YAML or JSON), or - for standard input")
    args = parser.parse_args(argv)
    problems: list[str] = []
    checked = 0
    for path in args.files:
        try:
            text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()  # noqa: SIM115
            found, count = lint_text(text, origin=path)
        except (OSError, UnicodeDecodeError) as error:
            print(f"tidescale lint: cannot read {path}: {error}", file=sys.stderr)
            return 2
        except Exception as error:  # yaml's errors: not worth importing yaml at module level to name them
            print(f"tidescale lint: {path} is not valid YAML or JSON: {error}", file=sys.stderr)
            return 2
        problems += found
        checked += count
    for problem in problems:
        print(problem)
    print(f"{checked} deployment(s) checked, {len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0
