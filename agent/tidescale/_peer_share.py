"""Each pod's share of the lag, for the status's ``pods`` section, at a cost that does not grow
with the replica count.

The leader used to ask every Ready peer's ``/v1/lag`` every 15 s: at 1,000 replicas that is
1,000 HTTP requests and, behind each, one local broker measurement (a DescribeGroups, an
OffsetFetch and two ListOffsets per pod) per refresh. Now:

* **Attribution** (Kafka, the usual case): the group's members, as one DescribeGroups answer
  gives them, say which client host holds which partitions; the leader's own group-wide reading
  says each partition's lag; the pod watch says which pod has which address. Joining the three
  gives every pod's share with one broker request per trigger per refresh and no request to a
  peer, whatever the replica count. Pure: :func:`attribute`.
* **Sampling** (a trigger whose source cannot say who consumes what, or a Kafka trigger whose
  members are told apart by client id rather than address): at most :data:`PEER_SAMPLE` peers'
  ``/v1/lag`` per refresh, rotating through the pods by name, each keeping its last answer until
  its turn comes again. Pure: :func:`next_sample`.

Each agent's local measurement (``/v1/lag``, ``tidescale_local_value``) stays: it answers an
operator or ``tidescale explain`` asking one pod directly, and the sampled path reads it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

__all__ = ["PEER_SAMPLE", "Attributing", "attribute", "basis_text", "next_sample"]

PEER_SAMPLE = 8
"""Most peers whose ``/v1/lag`` the leader asks per refresh when it cannot attribute."""


@runtime_checkable
class Attributing(Protocol):
    """A source that can say, from one group-wide broker request, who consumes each unit."""

    async def owners(self, settings: object) -> Mapping[str, str] | None:
        """Unit key (``topic/partition``, as in ``Measurement.detail``) -> the consuming member's
        network address; None when this trigger's members are not told apart by address."""
        ...


def attribute(
    details: Sequence[Mapping[str, float]],
    owners: Sequence[Mapping[str, str]],
    addresses: Mapping[str, str],
) -> dict[str, float]:
    """Every pod's share: for each trigger (``details[i]`` its per-unit lag from the leader's group
    reading, ``owners[i]`` its unit -> address), the lag of the units a member at the pod's address
    holds, summed over the triggers. A pod holding nothing has 0; a unit whose address is no pod's
    (a consumer outside the Deployment), or which no member holds (a rebalance), counts for none."""
    pod_of = {address: name for name, address in addresses.items()}
    shares = dict.fromkeys(addresses, 0.0)
    for detail, owner in zip(details, owners, strict=True):
        for unit, lag in detail.items():
            pod = pod_of.get(owner.get(unit, ""))
            if pod is not None:
                shares[pod] += lag
    return shares


def next_sample(names: Sequence[str], after: str | None, size: int = PEER_SAMPLE) -> list[str]:
    """The next ``size`` pod names (sorted) after ``after``, wrapping around: over successive
    refreshes every pod is asked once before any is asked twice, whatever comes and goes."""
    ordered = sorted(set(names))
    if len(ordered) <= size:
        return ordered
    start = 0 if after is None else next((i for i, n in enumerate(ordered) if n > after), 0)
    return [ordered[(start + i) % len(ordered)] for i in range(size)]


def basis_text(*, attributed: bool, asked: int, pods: int) -> str:
    """What the status's ``podsFrom`` says about where the per-pod numbers came from."""
    if attributed:
        return "group description (the consumer group's assignment and the leader's reading)"
    return f"sampled: {asked} of {pods} pods' /v1/lag per refresh, the others as last answered"
