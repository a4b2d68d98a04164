"""Scale-down picks the idlest pods: the ranking (pure, property-tested) and the leader's writes
around a scale-down (marks before the scale write, each fenced; a refusal still scales and is said
once; the hint turns it off)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tests.unit.test_leader_writes as leader_writes
from tidescale._deletion_cost import (
    DELETION_COST_ANNOTATION,
    MARK_BASE,
    MAX_MARKS,
    PodFacts,
    is_tidescale_mark,
    plan_marks,
    pod_facts,
    removal_order,
)
from tidescale._events import EventRecorder
from tidescale.errors import KubeForbidden, LeadershipLost
from tidescale.kube import Pod

# ---------------------------------------------------------------- the ranking


def facts(name: str, **known: Any) -> PodFacts:
    return PodFacts(name=name, created=known.pop("created", "2026-12-02T10:00:00Z"), **known)


def names(pods: list[PodFacts]) -> list[str]:
    return [pod.name for pod in pods]


def test_pods_with_lag_stay_and_idle_pods_go_first_whatever_their_age() -> None:
    pods = [
        facts("old-idle", lag=0.0, created="2026-12-02T09:00:00Z"),
        facts("new-busy", lag=40.0, created="2026-12-02T11:00:00Z"),
        facts("mid-busier", lag=90.0, created="2026-12-02T10:00:00Z"),
        facts("unknown", created="2026-12-02T10:30:00Z"),
    ]
    assert names(removal_order(pods)) == ["old-idle", "unknown", "new-busy", "mid-busier"]


def test_not_ready_pods_go_before_any_ready_one() -> None:
    pods = [facts("ready-idle", lag=0.0), facts("starting", ready=False, lag=500.0)]
    assert names(removal_order(pods)) == ["starting", "ready-idle"]


def test_among_idle_pods_fewer_unacked_deliveries_go_first() -> None:
    pods = [
        facts("holds-3", lag=0.0, unacked=3),
        facts("holds-0", lag=0.0, unacked=0),
        facts("holds-1", unacked=1),
    ]
    assert names(removal_order(pods)) == ["holds-0", "holds-3", "holds-1"]


def test_with_nothing_known_the_newest_goes_first_and_the_leader_stays_among_equals() -> None:
    pods = [
        facts("a", created="2026-12-02T09:00:00Z"),
        facts("b", created="2026-12-02T11:00:00Z", leader=True),
        facts("c", created="2026-12-02T10:00:00Z"),
    ]
    assert names(removal_order(pods)) == ["c", "a", "b"]


pod_strategy = st.builds(
    PodFacts,
    name=st.text(alphabet="abcdef0123", min_size=1, max_size=6),
    created=st.sampled_from(["", "2026-12-02T09:00:00Z", "2026-12-02T10:00:00Z", "2026-12-02T10:00:01Z"]),
    ready=st.booleans(),
    lag=st.none() | st.floats(min_value=0, max_value=1e6),
    unacked=st.none() | st.integers(min_value=0, max_value=1000),
    leader=st.booleans(),
    cost=st.none() | st.sampled_from(["-1000", "-950", "-901", "-900", "0", "5", "junk", " -999 "]),
)
pod_lists = st.lists(pod_strategy, max_size=30, unique_by=lambda pod: pod.name)


@given(pod_lists)
def test_the_order_is_a_permutation_and_does_not_depend_on_the_input_order(pods: list[PodFacts]) -> None:
    ordered = removal_order(pods)
    assert sorted(names(ordered)) == sorted(names(pods))
    assert names(removal_order(list(reversed(pods)))) == names(ordered)


@given(pod_lists)
def test_no_ready_pod_is_ranked_before_a_pod_that_is_not_ready(pods: list[PodFacts]) -> None:
    readiness = [pod.ready for pod in removal_order(pods)]
    assert readiness == sorted(readiness)


@given(pod_lists, st.integers(min_value=-3, max_value=40), st.integers(min_value=0, max_value=10))
def test_the_plan_marks_exactly_the_cheapest_pods_and_leaves_no_stale_mark_on_pods_that_stay(
    pods: list[PodFacts], remove: int, limit: int
) -> None:
    plan = plan_marks(pods, remove, limit=limit)
    ours = [pod for pod in pods if pod.cost is None or is_tidescale_mark(pod.cost)]
    expected = names(removal_order(ours))[: max(0, min(remove, limit))] if remove > 0 and limit > 0 else []
    assert list(plan.chosen) == expected
    # After the writes, the chosen pods and only they carry a tidescale mark (within the bound).
    after = {
        pod.name: plan.writes.get(pod.name, pod.cost) if pod.name in plan.writes else pod.cost for pod in pods
    }
    marked = {name for name, cost in after.items() if is_tidescale_mark(cost)}
    if remove > 0 and limit > 0:
        stale = [pod for pod in pods if pod.name not in plan.chosen and is_tidescale_mark(pod.cost)]
        if len(stale) <= limit:
            assert marked == set(plan.chosen)
        assert len(plan.writes) <= 2 * limit
    else:
        assert plan.writes == {}
    # A cost someone else set is never touched, and its pod is never chosen.
    for pod in pods:
        if pod.cost is not None and not is_tidescale_mark(pod.cost):
            assert pod.name not in plan.writes
            assert pod.name not in plan.chosen


def test_marks_count_up_from_the_base_in_removal_order_and_stale_marks_are_removed_first() -> None:
    pods = [
        facts("busy", lag=10.0, cost="-1000"),  # marked by an earlier scale-down that did not happen
        facts("idle-1", lag=0.0, created="2026-12-02T11:00:00Z"),
        facts("idle-2", lag=0.0, created="2026-12-02T10:00:00Z"),
    ]
    plan = plan_marks(pods, 2)
    assert plan.chosen == ("idle-1", "idle-2")
    assert list(plan.writes.items()) == [
        ("busy", None),
        ("idle-1", str(MARK_BASE)),
        ("idle-2", str(MARK_BASE + 1)),
    ]


def test_a_pod_whose_deletion_cost_someone_else_set_is_neither_marked_nor_chosen_even_when_idlest() -> None:
    """An operator (or a test) protecting a pod with a cost of its own: tidescale must not
    overwrite it with a low mark and have the ReplicaSet delete the pod it protected."""
    pods = [
        facts("protected", lag=0.0, created="2026-12-02T12:00:00Z", cost="1000"),
        facts("idle", lag=0.0, created="2026-12-02T11:00:00Z"),
        facts("busy", lag=50.0, created="2026-12-02T10:00:00Z"),
    ]
    plan = plan_marks(pods, 1)
    assert plan.chosen == ("idle",)
    assert dict(plan.writes) == {"idle": str(MARK_BASE)}


def test_at_most_max_marks_pods_are_marked_per_scale_down() -> None:
    pods = [facts(f"p{i:04d}", lag=0.0) for i in range(3 * MAX_MARKS)]
    plan = plan_marks(pods, 2 * MAX_MARKS)
    assert len(plan.chosen) == MAX_MARKS
    assert len(plan.writes) == MAX_MARKS


def test_a_tidescale_mark_is_a_short_integer_in_its_own_range() -> None:
    assert [is_tidescale_mark(value) for value in ("-1000", "-901", " -950")] == [True, True, True]
    outside = ("-900", "-1001", "1" * 5000, "x", "", None)
    assert [is_tidescale_mark(value) for value in outside] == [False] * len(outside)


def test_pod_facts_reads_readiness_age_and_cost_and_skips_pods_already_going() -> None:
    pod: Pod = {
        "metadata": {
            "name": "orders-7d9-abcde",
            "creationTimestamp": "2026-12-02T10:00:00Z",
            "annotations": {DELETION_COST_ANNOTATION: "-999"},
        },
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    found = pod_facts(pod, lag={"orders-7d9-abcde": 12.0}, leader="orders-7d9-abcde")
    assert found == PodFacts(
        name="orders-7d9-abcde",
        created="2026-12-02T10:00:00Z",
        ready=True,
        lag=12.0,
        leader=True,
        cost="-999",
    )
    not_ready: Pod = {"metadata": {"name": "x"}, "status": {"phase": "Running", "conditions": []}}
    assert pod_facts(not_ready, lag={}) == PodFacts(name="x", ready=False)
    going: Pod = {"metadata": {"name": "y", "deletionTimestamp": "2026-12-02T10:00:00Z"}}
    assert pod_facts(going, lag={}) is None


# ---------------------------------------------------------------- the leader's writes


def running(name: str, created: str, cost: str | None = None) -> Pod:
    annotations = {} if cost is None else {DELETION_COST_ANNOTATION: cost}
    return {
        "metadata": {"name": name, "creationTimestamp": created, "annotations": annotations},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }


class PodsKube(leader_writes.FakeKube):
    """The fake API server of test_leader_writes, with the Deployment's pods; every write in order."""

    def __init__(self, pods: list[Pod], *, refuse: bool = False) -> None:
        super().__init__()
        self.pods = pods
        self.refuse = refuse
        self.writes: list[tuple[str, Any]] = []
        self.in_fence = False
        """Set by the elector while a fenced write runs."""

    async def list_pods(self, namespace: str, label_selector: str) -> list[Pod]:
        assert label_selector == "app=orders"
        return self.pods

    async def patch_pod_annotations(
        self, namespace: str, name: str, annotations: dict[str, str | None]
    ) -> Pod:
        if self.refuse:
            raise KubeForbidden(f'pods "{name}" is forbidden: cannot patch resource "pods"', code=403)
        assert self.in_fence, "a pod write outside the Lease fence"
        self.writes.append(("pod", (name, annotations[DELETION_COST_ANNOTATION])))
        return {}

    async def patch_scale(self, namespace: str, name: str, replicas: int, **_: Any) -> dict[str, Any]:
        self.writes.append(("scale", replicas))
        return await super().patch_scale(namespace, name, replicas)


class FencingElector(leader_writes.Elector):
    """Leading, and saying so to the fake API server while a fenced write runs (or never leading)."""

    def __init__(self, kube: PodsKube, *, lost: bool = False) -> None:
        self.kube = kube
        self.lost = lost

    async def fenced(self, write: Any, *, term: Any = None) -> Any:
        if self.lost:
            raise LeadershipLost("orders-7d9-abcde does not hold lease shop/tidescale-orders")
        self.kube.in_fence = True
        try:
            return await write()
        finally:
            self.kube.in_fence = False


ME = leader_writes.ENV.pod_name
PODS = [
    running(ME, "2026-12-02T09:00:00Z"),
    running("orders-7d9-bbbbb", "2026-12-02T09:30:00Z"),
    running("orders-7d9-ccccc", "2026-12-02T10:00:00Z"),
    running("orders-7d9-ddddd", "2026-12-02T10:30:00Z", cost="-1000"),
]


def scaling_down(**knobs: str) -> tuple[Any, PodsKube, Any]:
    annotations = leader_writes.hints_annotations(
        min_replicas="1", max_replicas="10", scale_down_stabilization="0s", **knobs
    )
    leadership, _, clock = leader_writes.leader(annotations, replicas=4)
    kube = PodsKube(PODS)
    leadership.agent._client = kube
    leadership.agent._events = EventRecorder(kube, instance=ME, clock=clock)  # type: ignore[arg-type]
    leadership.elector = FencingElector(kube)
    assert leadership.agent.deployment is not None
    leadership.agent.deployment["spec"]["selector"] = {"matchLabels": {"app": "orders"}}
    # What the peers said: the newest pod holds lag, the others none.
    leadership.agent._peer_lag = {
        "orders-7d9-ddddd": 80.0,
        "orders-7d9-ccccc": 0.0,
        "orders-7d9-bbbbb": 0.0,
        ME: 0.0,
    }
    return leadership, kube, clock


async def test_the_leader_marks_the_idlest_pods_before_the_scale_write_each_fenced() -> None:
    leadership, kube, clock = scaling_down()
    await leader_writes.run_ticks(leadership, clock, [150.0])  # 2 of 4 replicas wanted
    assert kube.writes == [
        ("pod", ("orders-7d9-ddddd", None)),  # busy now: its old mark goes
        ("pod", ("orders-7d9-ccccc", str(MARK_BASE))),  # idle, the newest of the idle
        ("pod", ("orders-7d9-bbbbb", str(MARK_BASE + 1))),  # idle; the leader, idle too, stays
        ("scale", 2),
    ]


async def test_a_refused_marking_still_scales_and_is_said_once_naming_the_rbac_it_needs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    leadership, kube, clock = scaling_down()
    kube.refuse = True
    await leader_writes.run_ticks(leadership, clock, [150.0])
    leadership.agent.deployment["spec"]["replicas"] = 4  # the ReplicaSet has not caught up: again
    await leader_writes.run_ticks(leadership, clock, [150.0])
    assert kube.scale_writes == [2, 2]
    warnings = [e for e in kube.events if e["reason"] == "ScaleDownMarkingRefused"]
    assert len(warnings) == 1
    assert "forbidden" in warnings[0]["message"]
    assert "patch on pods in shop" in warnings[0]["message"]
    assert warnings[0]["event_type"] == "Warning"
    said = [r for r in caplog.records if "marking the idlest pods" in r.getMessage()]
    assert len(said) == 1  # not again on the second scale-down: the Event would only count up


async def test_the_hint_turns_marking_off_and_a_scale_up_never_marks() -> None:
    leadership, kube, clock = scaling_down(scale_down_marking="false")
    await leader_writes.run_ticks(leadership, clock, [150.0])
    assert kube.writes == [("scale", 2)]
    leadership, kube, clock = scaling_down()
    await leader_writes.run_ticks(leadership, clock, [900.0])
    assert kube.writes == [("scale", 8)]  # 9 wanted, 8 by the default scale-up policy (+100%)


async def test_a_leader_that_lost_its_lease_while_marking_does_not_scale() -> None:
    leadership, kube, clock = scaling_down()
    leadership.elector = FencingElector(kube, lost=True)
    await leader_writes.run_ticks(leadership, clock, [150.0])
    assert kube.writes == []
