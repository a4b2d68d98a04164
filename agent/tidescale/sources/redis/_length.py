"""Redis arithmetic: pure functions from the server's replies to a measurement.

- A list trigger's metric is the key's length: LLEN, or (as KEDA's redis scaler does) SCARD,
  ZCARD or HLEN when the key holds a set, sorted set or hash. A missing key is an empty list:
  Redis deletes a list when its last element is popped, so "no key" is how an empty list looks.
- A stream trigger reads XINFO GROUPS and XLEN. ``length`` is XLEN; ``pending`` is the group's
  pending entries (delivered, not acknowledged: what XPENDING counts); ``lag`` is the group's
  ``lag`` (entries not yet delivered to it, Redis >= 7). A missing stream is an error, not 0:
  unlike a list, an empty stream stays, so a missing one is a misnamed key or a producer that
  never ran, and reading 0 would park the workload on a typo.
- Lag is sometimes unknown to the server itself (``lag`` nil, after entries were deleted from the
  middle of the stream): the metric is then XLEN, an upper bound of the entries the group has not
  read, and the trigger stays active. A group not created yet (consumers create it, and they are
  at zero) counts the whole stream as its lag, as KEDA does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tidescale.errors import SourceError, SourceNotFound
from tidescale.sources.base import Measurement
from tidescale.sources.redis._resp import Reply, RespError
from tidescale.sources.redis._settings import RedisSettings

__all__ = [
    "CARDINALITY_COMMANDS",
    "GroupInfo",
    "RedisSnapshot",
    "groups_from_xinfo",
    "length_from_reply",
    "redis_measurement",
    "stream_snapshot",
]

CARDINALITY_COMMANDS = {b"list": "LLEN", b"set": "SCARD", b"zset": "ZCARD", b"hash": "HLEN"}
"""The length command of each key type a list trigger accepts (TYPE's answer -> command)."""

UNKNOWN_LAG_KEY = "lag:unknown"
"""Detail key present (1) when the server could not say the group's lag and XLEN stood in for it."""
MISSING_GROUP_KEY = "group:missing"
"""Detail key present (1) when the consumer group does not exist yet and XLEN stood in for its lag."""


@dataclass(frozen=True, kw_only=True, slots=True)
class GroupInfo:
    """One consumer group of XINFO GROUPS."""

    name: str
    pending: int
    lag: int | None
    """None when the server says nil (it cannot compute the lag) or says nothing (Redis < 7)."""
    lag_reported: bool
    """False when the reply has no ``lag`` field at all (Redis < 7)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RedisSnapshot:
    length: int
    """The list's (set's, hash's) length, or the stream's XLEN."""
    groups: tuple[GroupInfo, ...] | None = None
    """The stream's consumer groups; None for a list trigger."""


def length_from_reply(reply: Reply, what: str) -> int:
    """An integer reply (LLEN, XLEN, SCARD...) as a length; SourceError for anything else."""
    if isinstance(reply, RespError):
        raise SourceError(f"{what} failed: {reply.message}")
    if not isinstance(reply, int) or isinstance(reply, bool) or reply < 0:
        raise SourceError(f"{what} answered {_shown(reply)}, not a length")
    return reply


def groups_from_xinfo(reply: Reply, stream: str) -> tuple[GroupInfo, ...]:
    """XINFO GROUPS' answer: a list of flat field/value lists, one per group."""
    if isinstance(reply, RespError):
        if "no such key" in reply.message.lower():
            raise SourceNotFound(
                f"there is no stream {stream!r}: check stream, and that the producer created it"
            )
        raise SourceError(f"XINFO GROUPS {stream!r} failed: {reply.message}")
    if not isinstance(reply, list):
        raise SourceError(f"XINFO GROUPS {stream!r} answered {_shown(reply)}, not a list of groups")
    return tuple(_group(item, stream) for item in reply)


def _group(item: Reply, stream: str) -> GroupInfo:
    if not isinstance(item, list) or len(item) % 2:
        raise SourceError(f"XINFO GROUPS {stream!r} answered a group that is not field/value pairs")
    fields = {
        key.decode("utf-8", "replace"): value
        for key, value in zip(item[::2], item[1::2], strict=True)
        if isinstance(key, bytes)
    }
    name, pending, lag = fields.get("name"), fields.get("pending"), fields.get("lag")
    if not isinstance(name, bytes) or not isinstance(pending, int) or pending < 0:
        raise SourceError(f"XINFO GROUPS {stream!r} answered a group without a name or a pending count")
    if lag is not None and (not isinstance(lag, int) or lag < 0):
        raise SourceError(f"XINFO GROUPS {stream!r} answered a lag of {_shown(lag)}, not a count")
    return GroupInfo(
        name=name.decode("utf-8", "replace"), pending=pending, lag=lag, lag_reported="lag" in fields
    )


def stream_snapshot(xinfo: Reply, xlen: Reply, stream: str) -> RedisSnapshot:
    """A stream trigger's snapshot from its pipelined XINFO GROUPS and XLEN replies."""
    groups = groups_from_xinfo(xinfo, stream)
    return RedisSnapshot(length=length_from_reply(xlen, f"XLEN {stream!r}"), groups=groups)


def redis_measurement(snapshot: RedisSnapshot, settings: RedisSettings, taken_at: float) -> Measurement:
    """SourceNotFound when the consumer group a pending trigger names is missing; SourceError when
    lag is asked of a server that does not report it (Redis < 7)."""
    detail: dict[str, float] = {}
    unknown = False
    if settings.list_name is not None or settings.stream_metric == "length":
        value = float(snapshot.length)
        detail[settings.key] = value
    else:
        detail["stream:length"] = float(snapshot.length)
        group = _find(snapshot.groups or (), settings.consumer_group or "")
        if settings.stream_metric == "pending":
            if group is None:
                raise SourceNotFound(
                    f"stream {settings.key!r} has no consumer group {settings.consumer_group!r}: check "
                    "consumer-group (pending entries are a group's)"
                )
            value = float(group.pending)
        elif group is None:
            value = float(snapshot.length)
            detail[MISSING_GROUP_KEY] = 1.0
        elif group.lag is None:
            if not group.lag_reported:
                raise SourceError(
                    f"the server reports no lag for group {group.name!r} of stream {settings.key!r}: "
                    "stream-metric lag needs Redis >= 7 (use pending, or length)"
                )
            value = float(snapshot.length)
            unknown = True
            detail[UNKNOWN_LAG_KEY] = 1.0
        else:
            value = float(group.lag)
        if group is not None:
            detail["group:pending"] = float(group.pending)
    return Measurement(
        trigger=settings.name,
        value=value,
        target=settings.value,
        active=unknown or value > settings.activation_value,
        replica_cap=None,
        detail=detail,
        taken_at=taken_at,
    )


def _find(groups: Sequence[GroupInfo], name: str) -> GroupInfo | None:
    return next((g for g in groups if g.name == name), None)


def _shown(reply: Reply) -> str:
    text = repr(reply)
    return text if len(text) <= 64 else text[:61] + "..."
