"""The elector's pure decisions: client-go's rules, the records it writes, the provable hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidescale.election import (
    Action,
    LeaseRecord,
    LeaseTiming,
    decide,
    holds,
    lease_name,
    next_spec,
    released_spec,
)
from tidescale.errors import HintError
from tidescale.kube import parse_time

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def _record(holder: str | None, *, duration: int = 15, transitions: int = 3, rv: str = "7") -> LeaseRecord:
    return LeaseRecord(
        holder=holder,
        duration_seconds=duration,
        acquire_time=T0,
        renew_time=T0 + timedelta(seconds=4),
        transitions=transitions,
        resource_version=rv,
    )


def test_lease_is_named_after_the_deployment() -> None:
    assert lease_name("orders") == "tidescale-orders"


def test_client_go_defaults_are_valid() -> None:
    timing = LeaseTiming()
    assert (timing.duration, timing.renew_deadline, timing.retry_period) == (15.0, 10.0, 2.0)


@pytest.mark.parametrize(
    ("duration", "renew", "retry", "annotation"),
    [
        (10.0, 10.0, 2.0, "tidescale.io/lease-duration"),
        (15.0, 2.4, 2.0, "tidescale.io/lease-renew-deadline"),
        (15.0, 10.0, 0.0, "tidescale.io/lease-retry-period"),
    ],
)
def test_timings_breaking_client_go_validity_name_the_annotation(
    duration: float, renew: float, retry: float, annotation: str
) -> None:
    with pytest.raises(HintError) as caught:
        LeaseTiming(duration=duration, renew_deadline=renew, retry_period=retry)
    assert caught.value.annotation == annotation


def test_fractional_duration_is_written_rounded_up() -> None:
    assert LeaseTiming(duration=10.2, renew_deadline=10.0, retry_period=2.0).duration_seconds == 11


def test_no_lease_means_create() -> None:
    assert decide(None, identity="a", observed_at=0.0, now=0.0).action is Action.CREATE


def test_our_own_lease_is_renewed_at_once() -> None:
    assert decide(_record("a"), identity="a", observed_at=100.0, now=100.0).action is Action.RENEW


def test_someone_elses_lease_waits_a_full_duration_from_our_observation() -> None:
    decision = decide(_record("b"), identity="a", observed_at=100.0, now=114.9)
    assert decision.action is Action.WAIT
    assert decision.until == 115.0
    assert decide(_record("b"), identity="a", observed_at=100.0, now=115.0).action is Action.ACQUIRE


def test_a_released_lease_is_taken_at_once() -> None:
    released = _record(None, duration=1)
    assert decide(released, identity="a", observed_at=100.0, now=100.0).action is Action.ACQUIRE


def test_the_records_own_duration_counts_not_ours() -> None:
    short = _record("b", duration=3)
    assert decide(short, identity="a", observed_at=100.0, now=103.0).action is Action.ACQUIRE


def test_taking_over_counts_a_transition_and_restarts_acquire_time() -> None:
    now = T0 + timedelta(minutes=5)
    spec = next_spec(_record("b", transitions=3), identity="a", timing=LeaseTiming(), now=now)
    assert spec["holderIdentity"] == "a"
    assert spec["leaseTransitions"] == 4
    assert parse_time(spec["acquireTime"]) == now
    assert parse_time(spec["renewTime"]) == now
    assert spec["leaseDurationSeconds"] == 15


def test_renewing_keeps_acquire_time_and_transitions() -> None:
    now = T0 + timedelta(minutes=5)
    spec = next_spec(_record("a", transitions=3), identity="a", timing=LeaseTiming(), now=now)
    assert spec["leaseTransitions"] == 3
    assert parse_time(spec["acquireTime"]) == T0
    assert parse_time(spec["renewTime"]) == now


def test_a_new_lease_starts_at_zero_transitions() -> None:
    assert next_spec(None, identity="a", timing=LeaseTiming(), now=T0)["leaseTransitions"] == 0


def test_times_are_written_in_utc_with_microseconds() -> None:
    local = datetime(2026, 3, 1, 14, 0, 0, 250000).astimezone()
    spec = next_spec(None, identity="a", timing=LeaseTiming(), now=local)
    assert spec["renewTime"] is not None
    assert spec["renewTime"].endswith("Z")
    assert parse_time(spec["renewTime"]) == local


def test_release_clears_the_holder_and_shortens_the_lease_keeping_transitions() -> None:
    spec = released_spec(_record("a", transitions=5), now=T0)
    assert spec["holderIdentity"] is None
    assert spec["leaseDurationSeconds"] == 1
    assert spec["leaseTransitions"] == 5


def test_hold_is_provable_strictly_before_the_renew_deadline() -> None:
    assert holds(renewed_at=50.0, now=59.99, renew_deadline=10.0)
    assert not holds(renewed_at=50.0, now=60.0, renew_deadline=10.0)
    assert not holds(renewed_at=None, now=0.0, renew_deadline=10.0)


def test_a_record_differs_from_another_only_by_its_spec() -> None:
    record = _record("a", rv="7")
    assert record.same_content(_record("a", rv="8"))
    assert not record.same_content(_record("b", rv="7"))
    assert not record.same_content(None)


@given(
    holder=st.sampled_from(["a", "b", None]),
    observed_at=st.floats(0, 1e6),
    elapsed=st.floats(0, 100),
    duration=st.integers(1, 60),
)
def test_a_follower_never_takes_a_held_lease_before_its_duration(
    holder: str | None, observed_at: float, elapsed: float, duration: int
) -> None:
    record = _record(holder, duration=duration)
    decision = decide(record, identity="a", observed_at=observed_at, now=observed_at + elapsed)
    if decision.action is Action.ACQUIRE and holder is not None:
        assert elapsed >= duration
    if holder == "a":
        assert decision.action is Action.RENEW
