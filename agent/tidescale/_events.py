"""Events aggregated like the kubelet's: a repeat is one more ``count``, not a new Event.

client-go's EventCorrelator keys an Event by its source, object, reason, type and message; a
repeat of a key seen within the window PATCHes the Event already written (``count`` + 1,
``lastTimestamp`` now) instead of creating another. So ``kubectl describe`` shows
``(x12 over 5m)`` rather than twelve lines. When the PATCH cannot be made (the Event has
expired, or the Role lacks ``patch events``), a new Event is created and counting starts again.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from tidescale.errors import KubeError
from tidescale.kube import AGENT_COMPONENT, KubeClient, ObjectReference

__all__ = ["AGGREGATION_WINDOW", "EventRecorder"]

AGGREGATION_WINDOW = 600.0
"""Seconds within which a repeat counts on the first Event (client-go's spam/aggregation window)."""

_Key = tuple[str, str, str, str, str, str]


@dataclass(kw_only=True, slots=True)
class _Seen:
    name: str
    namespace: str
    count: int
    at: float


class EventRecorder:
    """Writes Events on behalf of one component (``tidescale-agent``, ``tidescale-waker``)."""

    def __init__(
        self,
        client: KubeClient,
        *,
        instance: str,
        component: str = AGENT_COMPONENT,
        window: float = AGGREGATION_WINDOW,
        clock: Callable[[], float] = time.monotonic,
        remember: int = 512,
    ) -> None:
        self._client = client
        self.instance = instance
        self.component = component
        self._window = window
        self._clock = clock
        self._remember = remember
        self._seen: OrderedDict[_Key, _Seen] = OrderedDict()

    async def emit(
        self,
        involved: ObjectReference,
        *,
        reason: str,
        message: str,
        event_type: Literal["Normal", "Warning"] = "Normal",
    ) -> None:
        """Create the Event, or count a repeat on the one already written. Raises KubeError."""
        key: _Key = (
            involved["namespace"],
            involved["kind"],
            involved["name"],
            reason,
            event_type,
            message[:1024],
        )
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen.at < self._window:
            try:
                await self._client.patch_event(
                    seen.namespace, seen.name, count=seen.count + 1, last_timestamp=datetime.now(UTC)
                )
            except KubeError:
                pass  # expired or not ours to patch: a fresh Event below
            else:
                seen.count += 1
                seen.at = now
                self._seen.move_to_end(key)
                return
        event = await self._client.create_event(
            involved,
            reason=reason,
            message=message,
            event_type=event_type,
            reporting_instance=self.instance,
            component=self.component,
        )
        name = str((event.get("metadata") or {}).get("name") or "")
        if name:
            self._seen[key] = _Seen(name=name, namespace=involved["namespace"], count=1, at=now)
            self._seen.move_to_end(key)
            while len(self._seen) > self._remember:
                self._seen.popitem(last=False)
