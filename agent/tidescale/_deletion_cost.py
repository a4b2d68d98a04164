"""Scale-down picks the idlest pods: which pods the leader marks with
``controller.kubernetes.io/pod-deletion-cost`` before it lowers the replica count.

The ReplicaSet controller deletes, among Running and Ready pods, those with the lowest deletion
cost first; by default it removes the newest. The leader knows better which pods are cheap to
lose: those with no lag on the partitions assigned to them and no unacknowledged deliveries.
So, before a scale-down from ``current`` to ``desired``, it marks the ``current - desired``
least costly pods (capped at :data:`MAX_MARKS`) with costs ``MARK_BASE + rank`` and removes the
marks it wrote earlier from every pod that must now stay (a mark left behind would make a later
scale-down, or a rollout, remove that pod first). A cost in ``MARK_BASE .. MARK_BASE + MAX_MARKS - 1``
is taken for tidescale's own; a pod carrying a cost outside that range (set by someone else: an
operator protecting a pod, a test, another controller) is neither marked nor unmarked, and not
counted among the pods chosen: the ReplicaSet weighs that cost against the marks itself.

:func:`removal_order` and :func:`plan_marks` are pure; :func:`pod_facts` reads a Pod object.
What is not known about a pod (its lag before the peers answered, unacked counts from a source
that cannot attribute them) ranks it as unknown: after the pods known to be idle, before the
pods known to be busy; among equals the leader's own pod stays (no Lease handover), then the
newest goes first, as the ReplicaSet itself would choose.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from tidescale.errors import KubeError, KubeNotFound
from tidescale.kube import KubeClient, Pod

__all__ = [
    "DELETION_COST_ANNOTATION",
    "MARK_BASE",
    "MAX_MARKS",
    "MarkOutcome",
    "MarkPlan",
    "PodFacts",
    "is_tidescale_mark",
    "mark_for_scale_down",
    "plan_marks",
    "pod_facts",
    "removal_order",
]

DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
MARK_BASE = -1000
"""The cost of the first pod to go; the next ones get -999, -998, ..."""
MAX_MARKS = 100
"""At most this many pods are marked (and at most this many stale marks cleared) per scale-down:
the pod patches of one decision are bounded whatever the size of the step."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PodFacts:
    """What the leader knows about one pod of its Deployment; None: not known."""

    name: str
    created: str = ""
    """``metadata.creationTimestamp`` (RFC 3339, UTC: it sorts as text)."""
    ready: bool = True
    lag: float | None = None
    """Lag on the partitions (or queue share) assigned to this pod."""
    unacked: int | None = None
    """Deliveries this pod holds unacknowledged."""
    leader: bool = False
    cost: str | None = None
    """The pod's deletion-cost annotation as it is now."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MarkPlan:
    """The pod writes before one scale-down: annotation value per pod (None removes it)."""

    chosen: tuple[str, ...] = ()
    """The pods meant to go, least costly first."""
    writes: Mapping[str, str | None] = field(default_factory=dict)
    """Only the pods whose annotation must change: stale marks removed first, then new marks."""


def is_tidescale_mark(value: str | None) -> bool:
    """Whether a deletion-cost value is one tidescale writes (bounded parse: it is tenant input)."""
    if value is None or len(value) > 12:
        return False
    try:
        cost = int(value.strip())
    except ValueError:
        return False
    return MARK_BASE <= cost < MARK_BASE + MAX_MARKS


def _known_zero_first(value: float | None) -> tuple[int, float]:
    """Known idle (0), then unknown, then known busy (least first)."""
    if value is None:
        return (1, 0.0)
    if value <= 0:
        return (0, 0.0)
    return (2, float(value))


def _removal_key(pod: PodFacts) -> tuple[object, ...]:
    # Timestamps share one format, so the text, negated char by char, sorts newest first (an
    # unknown time, empty, sorts as the newest).
    newest_first = tuple(-ord(char) for char in pod.created)
    return (
        pod.ready,
        _known_zero_first(pod.lag),
        _known_zero_first(None if pod.unacked is None else float(pod.unacked)),
        pod.leader,
        newest_first,
        pod.name,
    )


def removal_order(pods: Sequence[PodFacts]) -> list[PodFacts]:
    """The pods, cheapest to remove first: not Ready; then no lag (known) before lag unknown
    before lag (least first); the same for unacked deliveries; the leader's own pod after its
    equals; then newest first; the name breaks what is left, so the order is total."""
    return sorted(pods, key=_removal_key)


def plan_marks(pods: Sequence[PodFacts], remove: int, *, limit: int = MAX_MARKS) -> MarkPlan:
    """The marks for a scale-down that removes ``remove`` of ``pods``: the ``min(remove, limit)``
    cheapest get a tidescale mark (unless they carry one already), every other pod loses the
    tidescale mark it carries (at most ``limit`` of them). Nothing when nothing is removed."""
    if remove <= 0 or limit <= 0:
        return MarkPlan()
    # Someone else's cost is their decision about that pod: never overwritten.
    order = removal_order([pod for pod in pods if pod.cost is None or is_tidescale_mark(pod.cost)])
    chosen = order[: min(remove, limit)]
    chosen_names = {pod.name for pod in chosen}
    stale = [pod.name for pod in order if pod.name not in chosen_names and is_tidescale_mark(pod.cost)]
    writes: dict[str, str | None] = dict.fromkeys(stale[:limit])
    for rank, pod in enumerate(chosen):
        if not is_tidescale_mark(pod.cost):
            writes[pod.name] = str(MARK_BASE + rank)
    return MarkPlan(chosen=tuple(pod.name for pod in chosen), writes=writes)


def pod_facts(
    pod: Pod,
    *,
    lag: Mapping[str, float | None],
    unacked: Mapping[str, int | None] | None = None,
    leader: str = "",
) -> PodFacts | None:
    """A Pod object and what the leader measured about it; None for a pod already going away
    (its deletion was asked for) or without a name."""
    metadata = pod.get("metadata") or {}
    name = metadata.get("name")
    if not name or metadata.get("deletionTimestamp"):
        return None
    status = pod.get("status") or {}
    conditions = status.get("conditions") or []
    ready = status.get("phase") == "Running" and any(
        isinstance(cond, Mapping) and (cond.get("type"), cond.get("status")) == ("Ready", "True")
        for cond in conditions
    )
    annotations = metadata.get("annotations") or {}
    cost = annotations.get(DELETION_COST_ANNOTATION)
    created = metadata.get("creationTimestamp")
    return PodFacts(
        name=name,
        created=created if isinstance(created, str) else "",
        ready=ready,
        lag=lag.get(name),
        unacked=(unacked or {}).get(name),
        leader=name == leader,
        cost=cost if isinstance(cost, str) else None,
    )


Fenced = Callable[[Callable[[], Awaitable[Pod]]], Awaitable[Pod]]
"""Runs one pod write only while the Lease is provably held (``LeaseElector.fenced``)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MarkOutcome:
    """What a scale-down's marking did: the plan, the writes made, and what stopped it, if anything."""

    plan: MarkPlan
    written: tuple[str, ...] = ()
    refused: str | None = None
    """The API server's refusal (RBAC, admission policy, outage) that stopped the marking."""


async def mark_for_scale_down(
    client: KubeClient,
    *,
    namespace: str,
    selector: str,
    remove: int,
    lag: Mapping[str, float | None],
    leader: str,
    fenced: Fenced,
    unacked: Mapping[str, int | None] | None = None,
) -> MarkOutcome:
    """Lists the Deployment's pods, plans the marks for removing ``remove`` of them and writes
    them, each through ``fenced``. Stops at the first refusal and says what it was (the caller
    scales anyway: the ReplicaSet then picks by its own ranking); LeadershipLost propagates."""
    try:
        listed = await client.list_pods(namespace, selector)
    except KubeError as error:
        return MarkOutcome(plan=MarkPlan(), refused=str(error))
    facts = [
        found
        for found in (pod_facts(pod, lag=lag, unacked=unacked, leader=leader) for pod in listed)
        if found is not None
    ]
    plan = plan_marks(facts, remove)
    written: list[str] = []
    for name, value in plan.writes.items():

        def write(name: str = name, value: str | None = value) -> Awaitable[Pod]:
            return client.patch_pod_annotations(namespace, name, {DELETION_COST_ANNOTATION: value})

        try:
            await fenced(write)
        except KubeNotFound:
            continue  # gone meanwhile: one pod fewer to choose from, nothing to undo
        except KubeError as error:
            return MarkOutcome(plan=plan, written=tuple(written), refused=str(error))
        written.append(name)
    return MarkOutcome(plan=plan, written=tuple(written))
