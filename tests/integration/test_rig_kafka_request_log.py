"""The rig's Kafka with its request log on (``Kafka.start(..., request_log=True)``): every request
the broker completes is one line naming the client id, which is how ``bench/bench_keda.py``
counts each side's broker requests."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.rigkube import wait_for
from tests.rig.kafka import Kafka
from tests.rig.network import Network
from tests.rig.processes import Supervisor

# Only bench-keda counts broker requests from the log: it runs this check first (marker long,
# so make test does not pay its ~20 s).
pytestmark = [pytest.mark.rig, pytest.mark.long]

_REQUEST = re.compile(r"Completed request:(\{.*)$")


async def _send(bootstrap: str, topic: str, client_id: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, client_id=client_id)
    await producer.start()
    try:
        for i in range(count):
            await producer.send_and_wait(topic, str(i).encode())
    finally:
        await producer.stop()


def test_the_broker_logs_every_request_it_completes_with_the_clients_id(
    rig_supervisor: Supervisor, rig_network: Network, rig_run_dir: Path
) -> None:
    kafka = Kafka.start(
        rig_supervisor, rig_network, rig_run_dir / f"request-log-{uuid.uuid4().hex[:6]}", request_log=True
    )
    try:
        kafka.create_topic("logged", 1)
        asyncio.run(_send(kafka.bootstrap, "logged", "counted-client", 3))

        def logged() -> Counter[str]:
            headers = []
            for line in kafka.request_log_file.read_text().splitlines():
                match = _REQUEST.search(line)
                if match is not None:
                    headers.append(json.JSONDecoder().raw_decode(match[1])[0]["requestHeader"])
            return Counter(h["requestApiKeyName"] for h in headers if h["clientId"] == "counted-client")

        # The broker writes a request's line after it answers: the last Produce's line can land a
        # moment after the client has its answer (seen: 2 of 3 when read at once).
        wait_for("three Produce lines in the request log", lambda: logged()["PRODUCE"] >= 3, timeout=30)
        produced = logged()
        # One Produce request per send_and_wait (acks wait for each), plus the client's metadata calls.
        assert produced["PRODUCE"] == 3
        assert produced["METADATA"] >= 1
    finally:
        kafka.stop()
