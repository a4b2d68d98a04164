"""The rig's Kafka consumer reads a message's own work time from a header when told to
(WORK_SECONDS_HEADER, used by bench/bench_drain_time.py to change the cost mid-run)."""

from __future__ import annotations

from tests.workloads.kafka_consumer import message_work


def test_without_the_option_every_message_costs_the_default() -> None:
    assert message_work([("work-seconds", b"0.5")], None, 0.05) == 0.05


def test_a_message_carrying_the_header_costs_its_own_time() -> None:
    assert message_work([("other", b"9"), ("work-seconds", b"0.06")], "work-seconds", 0.02) == 0.06


def test_a_message_without_the_header_costs_the_default() -> None:
    assert message_work([], "work-seconds", 0.02) == 0.02
    assert message_work(None, "work-seconds", 0.02) == 0.02


def test_a_header_that_is_not_a_number_in_range_costs_the_default() -> None:
    for bad in (b"slow", b"-1", b"11", b"nan", b"inf"):
        assert message_work([("work-seconds", bad)], "work-seconds", 0.02) == 0.02
