"""Fixtures of the fault suite: the scale-to-zero tests' background loop (a Deployment watch and
warm producers off the test's thread) and their undo list, reused rather than copied, and the
shared prologue's fixtures (tests/faults/prologue.py)."""

from __future__ import annotations

from tests.faults.prologue import armed_kafka, armed_rabbitmq, led_kafka
from tests.integration.test_scale_to_zero import background, teardown

__all__ = ["armed_kafka", "armed_rabbitmq", "background", "led_kafka", "teardown"]
