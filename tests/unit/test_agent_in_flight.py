"""The agent counts the measurements it is running, so a slow broker that stretches the leader's
loop shows as one long measurement, never as polls piling up."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, cast

from tidescale.agent import Agent, AgentEnv
from tidescale.sources.base import Measurement, Scope, TriggerSettings

ENV = AgentEnv(pod_name="orders-7d9-abcde", namespace="shop", pod_ip="10.0.0.5", deployment="orders")
LABELS = {"trigger": "orders", "type": "unknown", "scope": "group"}


@dataclass(frozen=True)
class Settings:
    name: str = "orders"
    timeout: float = 5.0


class SlowSource:
    """Answers only when the test releases it."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def measure(self, settings: TriggerSettings, scope: Scope) -> Measurement:
        self.started.set()
        await self.release.wait()
        return Measurement(trigger=settings.name, value=7, target=10, active=True, taken_at=0.0)

    async def close(self) -> None:
        return None


async def test_a_measurement_counts_as_in_flight_while_it_runs_and_not_after() -> None:
    agent = Agent(ENV, cast(Any, None))
    source = SlowSource()
    agent._sources = {"orders": (Settings(), source)}
    measuring = asyncio.create_task(agent._measure(Scope.GROUP))
    await asyncio.wait_for(source.started.wait(), 5)
    assert agent.metrics.value("tidescale_measurements_in_flight", LABELS) == 1
    source.release.set()
    (reading,) = await asyncio.wait_for(measuring, 5)
    assert isinstance(reading, Measurement)
    assert reading.value == 7
    assert agent.metrics.value("tidescale_measurements_in_flight", LABELS) == 0


async def test_a_measurement_cut_short_by_its_budget_leaves_nothing_in_flight() -> None:
    agent = Agent(ENV, cast(Any, None))
    source = SlowSource()
    agent._sources = {"orders": (Settings(timeout=0.01), source)}  # budget: 2 x 0.01 + 1 s
    (reading,) = await asyncio.wait_for(agent._measure(Scope.GROUP), 10)
    assert not isinstance(reading, Measurement)
    assert agent.metrics.value("tidescale_measurements_in_flight", LABELS) == 0
