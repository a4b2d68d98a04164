"""Write docs/hints-reference.md from the code (``--check``: exit 1 if the file is out of date)."""

from __future__ import annotations

import sys
from pathlib import Path

from tidescale.hints import reference_markdown

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "hints-reference.md"


def main(argv: list[str]) -> int:
    text = reference_markdown()
    if "--check" in argv:
        if not REFERENCE.exists() or REFERENCE.read_text(encoding="utf-8") != text:
            print(f"{REFERENCE} is out of date: run python tools/gen_hints_reference.py", file=sys.stderr)
            return 1
        return 0
    REFERENCE.write_text(text, encoding="utf-8")
    print(f"wrote {REFERENCE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
