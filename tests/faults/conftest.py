"""Fixtures of the fault suite: the scale-to-zero tests' background loop (a Deployment watch and
warm producers off the test's thread) and their undo list, reused rather than copied."""

from __future__ import annotations

from tests.integration.test_scale_to_zero import background, teardown

__all__ = ["background", "teardown"]
