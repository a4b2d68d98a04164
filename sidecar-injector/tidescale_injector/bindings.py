"""Whether the pods of a hinted Deployment may act as the agent, told at ``kubectl apply`` time.

A team that forgets the one ``kubectl create rolebinding`` gets agents that can do nothing: not
even an Event, since ``events create`` comes with the same binding. Nobody looks at an agent's
container log, so the validating webhook asks the API server (a SubjectAccessReview: may the pod
template's ServiceAccount update Leases in its namespace?) and adds a warning with the exact line
to run. A SubjectAccessReview reads no RoleBinding and no Secret: the injector needs only
``create subjectaccessreviews``. Answers are cached per (namespace, ServiceAccount), bounded in
count and time; any failure to ask means no warning (the webhook never waits long nor fails).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

__all__ = ["BindingCheck", "Reviewer", "missing_binding_warning"]

_log = logging.getLogger("tidescale.injector")

Reviewer = Callable[[str, str], Awaitable[bool]]
"""``allowed(namespace, service_account)``: may it update Leases in ``namespace``?"""

_MAX_ENTRIES = 4096


def missing_binding_warning(namespace: str, service_account: str, cluster_role: str) -> str:
    return (
        f"the pods' ServiceAccount {namespace}/{service_account} lacks the tidescale agent's permissions "
        f"(it may not update leases in {namespace}), so its agents can neither lead nor scale nor say so "
        f"in an Event; run: kubectl create rolebinding tidescale-agent --clusterrole={cluster_role} "
        f"--serviceaccount={namespace}:{service_account} -n {namespace}"
    )


class BindingCheck:
    """Asks once per (namespace, ServiceAccount) and remembers: granted for ``granted_ttl``
    seconds, missing for ``missing_ttl`` (short, so the apply after the fix is quiet)."""

    def __init__(
        self,
        reviewer: Reviewer,
        *,
        cluster_role: str,
        timeout: float = 1.0,
        granted_ttl: float = 300.0,
        missing_ttl: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reviewer = reviewer
        self._cluster_role = cluster_role
        self._timeout = timeout
        self._granted_ttl = granted_ttl
        self._missing_ttl = missing_ttl
        self._clock = clock
        self._known: dict[tuple[str, str], tuple[float, bool]] = {}

    async def warning(self, namespace: str, service_account: str) -> str | None:
        """The warning to show, or None when the binding is there or the question failed."""
        key = (namespace, service_account)
        now = self._clock()
        known = self._known.get(key)
        if known is not None and known[0] > now:
            allowed = known[1]
        else:
            try:
                async with asyncio.timeout(self._timeout):
                    allowed = await self._reviewer(namespace, service_account)
            except Exception as exc:  # the API server slow or refusing: no warning, never a failure
                _log.info("could not check %s/%s's agent permissions: %s", namespace, service_account, exc)
                return None
            if len(self._known) >= _MAX_ENTRIES:
                self._known.clear()
            self._known[key] = (now + (self._granted_ttl if allowed else self._missing_ttl), allowed)
        return None if allowed else missing_binding_warning(namespace, service_account, self._cluster_role)
