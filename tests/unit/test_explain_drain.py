"""``tidescale explain`` speaks the drain-time target's language and says when a stalled group holds
the count, from what the leader wrote in its status."""

from __future__ import annotations

import json

from tests.unit.test_cli import HINTS, LEASE, NOW, deployment, status
from tidescale._cli_explain import explain_text
from tidescale._cli_view import view_of

REASON = "backlog 48,000, arriving 350/s, each pod 220/s: 5 pods clear it in 58 s (target 60 s)"


def drain_status(**trigger: object) -> str:
    body = json.loads(status())
    body["triggers"]["kafka"].update(trigger)
    return json.dumps(body)


def test_explain_shows_the_drain_reason_and_the_count_it_asks_for_and_next_follows_it() -> None:
    annotations = {
        **HINTS,
        "tidescale.io/kafka.drain-time": "60s",
        "tidescale.io/status": drain_status(value=48_000, drain={"replicas": 5, "reason": REASON}),
    }
    text = explain_text(view_of(deployment(annotations), lease=LEASE, events=[]), wall=NOW)
    lines = text.splitlines()
    assert "  kafka  lag 48,000 / 100 -> wants 5 (drain-time target), active" in lines
    assert f"         drain: {REASON}" in lines
    # The threshold would ask for 480 (capped by max 6); the drain estimate asks for 5.
    assert any(line.startswith("Next: ") and "3 -> 5" in line and REASON in line for line in lines), text


def test_explain_says_a_stalled_group_holds_the_count_and_names_its_partitions() -> None:
    annotations = {
        **HINTS,
        "tidescale.io/status": drain_status(stalled={"units": ["orders/0", "orders/3"], "seconds": 320}),
    }
    text = explain_text(view_of(deployment(annotations), lease=LEASE, events=[]), wall=NOW)
    assert "STALLED: no progress for 5m20s on orders/0, orders/3: the count is held" in text


def test_a_hostile_status_cannot_make_explain_print_pages() -> None:
    annotations = {
        **HINTS,
        "tidescale.io/status": drain_status(
            drain={"replicas": "many", "reason": "x" * 10_000},
            stalled={"units": ["y" * 10_000] * 1000, "seconds": "long"},
        ),
    }
    text = explain_text(view_of(deployment(annotations), lease=LEASE, events=[]), wall=NOW)
    assert max(len(line) for line in text.splitlines()) < 400
