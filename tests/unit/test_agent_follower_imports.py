"""A follower holds what its role needs: the agent, its hints and the API client. A trigger's source
(and its broker client: aiokafka, aio-pika, ...) opens at the first local measurement, and the other
source types' settings modules are never imported. Checked in a fresh interpreter (sys.modules)."""

from __future__ import annotations

import json
import subprocess
import sys

# A follower of a Deployment with a Kafka and a RabbitMQ trigger: it applies the hints (as from its
# Deployment watch) and is asked for nothing else. Then, when asked, it measures its local lag.
_FOLLOWER = """
import asyncio, json, sys
from typing import Any, cast
from tidescale.agent import Agent, AgentEnv

WATCHED = ("aiokafka", "aio_pika", "aiormq", "asyncpg", "redis", "nats", "httpx", "httpcore", "anyio",
           "tidescale.sources.kafka._source", "tidescale.sources.rabbitmq._source",
           *(f"tidescale.sources.{other}" for other in ("redis", "postgresql", "cron", "prometheus",
             "nats_jetstream", "aws_sqs", "azure_queue")))

def loaded() -> list[str]:
    return sorted(name for name in WATCHED if name in sys.modules)

DEPLOYMENT = {"metadata": {"name": "orders", "annotations": {
    "tidescale.io/orders.type": "kafka",
    "tidescale.io/orders.bootstrap-servers": "127.0.0.1:1",
    "tidescale.io/orders.consumer-group": "billing",
    "tidescale.io/orders.timeout": "1s",
    "tidescale.io/refunds.type": "rabbitmq",
    "tidescale.io/refunds.management-url": "http://127.0.0.1:1",
    "tidescale.io/refunds.queue": "refunds",
    "tidescale.io/refunds.timeout": "1s",
}}}

async def main() -> dict[str, Any]:
    env = AgentEnv(pod_name="orders-1", namespace="shop", pod_ip="127.0.0.1", deployment="orders")
    agent = Agent(env, cast(Any, None))
    await agent.apply_deployment(cast(Any, DEPLOYMENT))
    assert agent.hints is not None and len(agent.hints.triggers) == 2, agent.hints_problem
    follower = loaded()
    readings = await agent.local_readings()  # nothing listens on 127.0.0.1:1: two failures
    return {"follower": follower, "measured": loaded(), "readings": len(readings)}

print(json.dumps(asyncio.run(main())))
"""


def _run_follower() -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _FOLLOWER], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_a_follower_with_kafka_and_rabbitmq_triggers_loads_no_broker_client_until_it_measures() -> None:
    result = _run_follower()
    assert result["follower"] == []


def test_a_follower_asked_for_its_lag_opens_only_its_own_triggers_sources() -> None:
    result = _run_follower()
    measured = result["measured"]
    assert isinstance(measured, list)
    assert "tidescale.sources.kafka._source" in measured
    assert "tidescale.sources.rabbitmq._source" in measured
    assert not {"tidescale.sources.redis", "tidescale.sources.postgresql", "asyncpg"} & set(measured)
    assert not {"httpx", "httpcore", "anyio", "aio_pika"} & set(measured)  # the management API: _http1
    assert result["readings"] == 2
