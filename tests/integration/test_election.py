"""Three electors in one process against the rig's API server, as ServiceAccounts bound to the
agent Role: one leader, hand-over on release and on a crash, transitions, fenced writes, and never
two electors that believe they lead at the same moment."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import pytest_asyncio

from tests.integration.test_kube_client import agent_kubeconfig
from tests.rig.controlplane import ControlPlane
from tidescale.election import LeaseElector, LeaseTiming, Term
from tidescale.errors import LeadershipLost
from tidescale.kube import KubeClient, KubeConfig, parse_time

pytestmark = pytest.mark.rig

NAMESPACE = "election"
# Short but valid (4 > 3 > 1.2 x 1) so that expiry tests take seconds, not minutes.
TIMING = LeaseTiming(duration=4.0, renew_deadline=3.0, retry_period=1.0)


@pytest_asyncio.fixture(loop_scope="session")
async def clients(control_plane: ControlPlane) -> AsyncIterator[list[KubeClient]]:
    """One client per agent, as each pod has its own."""
    config = KubeConfig.from_kubeconfig(agent_kubeconfig(control_plane, NAMESPACE, "agent"))
    opened = [KubeClient(config) for _ in range(3)]
    try:
        yield opened
    finally:
        for client in opened:
            await client.aclose()


@dataclass
class Campaign:
    """Electors, their tasks, when each started leading, and is_leader() sampled every 5 ms."""

    electors: list[LeaseElector]
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    started: list[tuple[float, str, Term]] = field(default_factory=list)
    most_at_once: int = 0
    samples: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def started_leading(self, who: str, term: Term) -> None:
        self.started.append((time.monotonic(), who, term))
        self.changed.set()

    async def sample(self) -> None:
        while True:
            leaders = [e.identity for e in self.electors if e.is_leader()]
            self.most_at_once = max(self.most_at_once, len(leaders))
            self.samples += 1
            await asyncio.sleep(0.005)

    async def next_leader(self, *, after: int, within: float) -> tuple[float, str, Term]:
        async with asyncio.timeout(within):
            while len(self.started) <= after:
                self.changed.clear()
                await self.changed.wait()
        return self.started[after]

    def elector(self, identity: str) -> LeaseElector:
        return next(e for e in self.electors if e.identity == identity)


@contextlib.asynccontextmanager
async def campaign(clients: list[KubeClient], lease: str, *, release: bool) -> AsyncIterator[Campaign]:
    found = Campaign(electors=[])
    for index, client in enumerate(clients):
        identity = f"{lease}-pod-{index}"
        found.electors.append(
            LeaseElector(
                client,
                namespace=NAMESPACE,
                name=lease,
                identity=identity,
                timing=TIMING,
                release_on_cancel=release,
                on_started_leading=functools.partial(found.started_leading, identity),
            )
        )
    sampler = asyncio.create_task(found.sample())
    for elector in found.electors:
        found.tasks[elector.identity] = asyncio.create_task(elector.run())
    try:
        yield found
    finally:
        for task in [*found.tasks.values(), sampler]:
            task.cancel()
        await asyncio.gather(*found.tasks.values(), sampler, return_exceptions=True)


async def test_one_leader_and_a_release_hands_over_within_a_retry_period(clients: list[KubeClient]) -> None:
    async with campaign(clients, "release", release=True) as run:
        _, first, term = await run.next_leader(after=0, within=TIMING.duration + TIMING.retry_period)
        await asyncio.sleep(2 * TIMING.retry_period)  # a few renewals
        assert [e.identity for e in run.electors if e.is_leader()] == [first]
        lease = await clients[0].get_lease(NAMESPACE, "release")
        assert lease["spec"]["holderIdentity"] == first
        assert lease["spec"]["leaseTransitions"] == 0
        assert lease["spec"]["leaseDurationSeconds"] == 4
        renewed = parse_time(lease["spec"]["renewTime"])
        assert renewed is not None
        assert renewed.utcoffset() is not None
        assert str(lease["spec"]["renewTime"]).endswith("Z")

        run.tasks[first].cancel()
        await asyncio.gather(run.tasks[first], return_exceptions=True)
        released_at = time.monotonic()
        handed, second, new_term = await run.next_leader(
            after=1, within=TIMING.duration + TIMING.retry_period
        )
        assert second != first
        assert handed - released_at < TIMING.retry_period
        lease = await clients[0].get_lease(NAMESPACE, "release")
        assert lease["spec"]["holderIdentity"] == second
        assert lease["spec"]["leaseTransitions"] == 1  # the release keeps the count; taking it adds one
        assert new_term.transitions == 1

        # The old leader's term is over: its fenced writes are refused before they are sent.
        with pytest.raises(LeadershipLost):
            await run.elector(first).fenced(lambda: clients[0].get_lease(NAMESPACE, "release"), term=term)
        written = await run.elector(second).fenced(lambda: clients[1].get_lease(NAMESPACE, "release"))
        assert written["spec"]["holderIdentity"] == second
    assert run.samples > 100
    assert run.most_at_once == 1


async def test_a_crashed_leader_is_replaced_after_lease_duration_and_never_overlaps(
    clients: list[KubeClient],
) -> None:
    async with campaign(clients, "crash", release=False) as run:
        _, first, _ = await run.next_leader(after=0, within=TIMING.duration + TIMING.retry_period)
        await asyncio.sleep(TIMING.retry_period * 1.5)
        run.tasks[first].cancel()  # stops renewing and does not release: a SIGKILL as the others see it
        await asyncio.gather(run.tasks[first], return_exceptions=True)
        crashed_at = time.monotonic()
        replaced, second, term = await run.next_leader(after=1, within=3 * TIMING.duration)
        assert second != first
        # The others saw its last renewal at most one retry period before the crash.
        waited = replaced - crashed_at
        assert TIMING.duration - TIMING.retry_period <= waited <= TIMING.duration + TIMING.retry_period
        lease = await clients[0].get_lease(NAMESPACE, "crash")
        assert lease["spec"]["holderIdentity"] == second
        assert lease["spec"]["leaseTransitions"] == 1
        assert term.transitions == 1
    assert run.most_at_once == 1


async def test_followers_are_not_leaders_and_their_fenced_writes_are_refused(
    clients: list[KubeClient],
) -> None:
    async with campaign(clients, "fenced", release=True) as run:
        _, leader, _ = await run.next_leader(after=0, within=TIMING.duration + TIMING.retry_period)
        followers = [e for e in run.electors if e.identity != leader]
        assert all(not e.is_leader() and e.term() is None for e in followers)
        for follower in followers:
            with pytest.raises(LeadershipLost):
                await follower.fenced(lambda: clients[0].get_lease(NAMESPACE, "fenced"))
        # Followers learn the record from their watch, without polling.
        await asyncio.sleep(TIMING.retry_period * 1.5)
        assert all(e.record is not None and e.record.holder == leader for e in followers)
