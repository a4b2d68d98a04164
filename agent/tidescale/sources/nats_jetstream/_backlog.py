"""From a NATS server's ``/jsz?acc=<account>&consumers=true`` answer to a consumer's backlog (pure).

KEDA's nats-jetstream scaler reads the same answer: the account (matched by ID or name), its stream
(``stream_detail[].name``), the consumer (``consumer_detail[].name``), and scales on
``num_pending + num_ack_pending``: messages not yet delivered to the consumer plus those delivered
and not yet acknowledged. The differences: a missing account, stream or consumer is a
:class:`SourceNotFound` naming which (KEDA: "stream not found" / "consumer not found", or a stale
previous stream), and a consumer without the two counts is an error rather than 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tidescale.errors import SourceError, SourceNotFound
from tidescale.sources.base import Measurement
from tidescale.sources.nats_jetstream._settings import NatsJetStreamSettings

__all__ = ["ConsumerBacklog", "consumer_backlog", "leader_backlog", "nats_jetstream_measurement"]

_MAX_COUNT = 1 << 63


@dataclass(frozen=True, kw_only=True, slots=True)
class ConsumerBacklog:
    """The two counts of one consumer, as the server reported them."""

    pending: int
    """``num_pending``: messages of the stream (matching the consumer's filter) not yet delivered."""
    ack_pending: int
    """``num_ack_pending``: delivered, not yet acknowledged."""
    leader: str | None = None
    """The server leading the consumer (``cluster.leader``), when reported."""
    cluster_size: int = 1
    """``meta_cluster.cluster_size`` of the answering server (1 for a single server)."""
    from_leader: bool = True
    """Whether the answering server leads the consumer. A follower does not keep the consumer's
    pending count (nats-server 2.15 reports 0 there), so only the leader's answer is used."""

    @property
    def total(self) -> int:
        return self.pending + self.ack_pending


def _count(detail: Mapping[str, Any], key: str, what: str) -> int:
    value = detail.get(key)
    # bool is an int in Python: true/false are not counts.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < _MAX_COUNT:
        raise SourceError(
            f"{what} has no usable {key} ({str(value)[:32]}): not a /jsz answer this source knows"
        )
    return value


def _list(container: Mapping[str, Any], key: str) -> list[Any]:
    value = container.get(key)
    return value if isinstance(value, list) else []


def consumer_backlog(answer: Any, settings: NatsJetStreamSettings, *, where: str) -> ConsumerBacklog:
    """The backlog of ``settings.consumer``; SourceNotFound naming the missing account, stream or
    consumer, SourceError for JetStream off or an answer of another shape."""
    if not isinstance(answer, Mapping):
        raise SourceError(
            f"{where} answered /jsz with something not a JSON object: check monitoring-endpoint"
        )
    if answer.get("disabled") is True:
        raise SourceError(
            f"{where} has JetStream disabled: check monitoring-endpoint (a server started with -js)"
        )
    meta = answer.get("meta_cluster")
    size = meta.get("cluster_size") if isinstance(meta, Mapping) else None
    cluster_size = size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else 1
    accounts = [
        a
        for a in _list(answer, "account_details")
        if isinstance(a, Mapping) and settings.account in (a.get("id"), a.get("name"))
    ]
    if not accounts:
        raise SourceNotFound(
            f"{where} has no JetStream account {settings.account!r}: check account (a name, or the "
            "public key of an operator-mode account; $G without accounts)"
        )
    streams = [
        s
        for s in _list(accounts[0], "stream_detail")
        if isinstance(s, Mapping) and s.get("name") == settings.stream
    ]
    in_cluster = (
        f" (this server is one of {cluster_size} in a cluster, and a server lists only the streams it holds "
        "a replica of: point monitoring-endpoint at one that does)"
        if cluster_size > 1
        else ""
    )
    if not streams:
        raise SourceNotFound(
            f"{where} has no stream {settings.stream!r} in account {settings.account!r}: check "
            f"stream{in_cluster}"
        )
    consumers = [
        c
        for c in _list(streams[0], "consumer_detail")
        if isinstance(c, Mapping) and c.get("name") == settings.consumer
    ]
    if not consumers:
        raise SourceNotFound(
            f"{where} has no consumer {settings.consumer!r} on stream {settings.stream!r}: check consumer "
            "and that the workload created it (a durable consumer)"
        )
    detail = consumers[0]
    what = f"consumer {settings.consumer!r} of stream {settings.stream!r} at {where}"
    cluster = detail.get("cluster")
    leader = cluster.get("leader") if isinstance(cluster, Mapping) else None
    replicas = cluster.get("replicas") if isinstance(cluster, Mapping) else None
    # A server lists the consumer's other peers under replicas: the leader names itself leader and
    # is not among them; a follower names a leader that is (or none, while one is elected).
    peers = (
        {r.get("name") for r in replicas if isinstance(r, Mapping)} if isinstance(replicas, list) else set()
    )
    from_leader = not isinstance(cluster, Mapping) or (
        isinstance(leader, str) and bool(leader) and leader not in peers
    )
    return ConsumerBacklog(
        pending=_count(detail, "num_pending", what),
        ack_pending=_count(detail, "num_ack_pending", what),
        leader=str(leader)[:255] if isinstance(leader, str) else None,
        cluster_size=cluster_size,
        from_leader=from_leader,
    )


def leader_backlog(answers: Sequence[tuple[str, Any]], settings: NatsJetStreamSettings) -> ConsumerBacklog:
    """The backlog from the answer of the server leading the consumer, among the answers of every
    listed server (``(where, answer or SourceError)``). A single server's answer is its own leader's.
    Only followers answered: SourceError naming the leader to list; nobody had the consumer: the
    first server's SourceNotFound; nothing usable: the first error."""
    errors: list[SourceError] = []
    followers: list[ConsumerBacklog] = []
    for where, answer in answers:
        if isinstance(answer, SourceError):
            errors.append(answer)
            continue
        try:
            backlog = consumer_backlog(answer, settings, where=where)
        except SourceError as exc:
            errors.append(exc)
            continue
        if backlog.from_leader:
            return backlog
        followers.append(backlog)
    if followers:
        leader = followers[0].leader or "none elected yet"
        listed = ", ".join(where for where, _ in answers)
        raise SourceError(
            f"no listed monitoring endpoint ({listed}) answered as the leader of consumer "
            f"{settings.consumer!r} of stream {settings.stream!r} (its leader: {leader}); a follower does "
            "not keep the consumer's pending count: list every server of the cluster in monitoring-endpoint"
        )
    not_found = [e for e in errors if isinstance(e, SourceNotFound)]
    raise (not_found[0] if not_found and len(not_found) == len(errors) else errors[0])


def nats_jetstream_measurement(
    backlog: ConsumerBacklog, settings: NatsJetStreamSettings, taken_at: float
) -> Measurement:
    """The backlog as the metric, lag-threshold as the per-replica target, and activity above
    activation-lag-threshold (KEDA: ``totalLag > activationLagThreshold``)."""
    return Measurement(
        trigger=settings.name,
        value=float(backlog.total),
        target=float(settings.lag_threshold),
        active=backlog.total > settings.activation_lag_threshold,
        detail={
            f"{settings.stream}/{settings.consumer}:pending": float(backlog.pending),
            f"{settings.stream}/{settings.consumer}:ack-pending": float(backlog.ack_pending),
        },
        taken_at=taken_at,
    )
