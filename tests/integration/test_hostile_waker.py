"""A hostile tenant against the real ``tidescale waker`` process, beside a second team's parked Deployment.

The hostile namespace writes every hint of issue 11 (items 1-6) at fake brokers that record every
byte they receive: the waker's token file and kubeconfig as a password file, the waker's own
environment variables, a Secret of another team, non-JSON, non-UTF-8 and oversized management API
answers, a backtracking queue-pattern against a hostile queue listing, partition bombs, 40
blackholed brokers at the maximum timeout, link-local, loopback and API server addresses. Meanwhile
team B's Deployment, parked for real through the handoff, must wake from a produced message.
"""

from __future__ import annotations

import base64
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.integration._hostile_tenant import (
    BLACKHOLES,
    Recorder,
    apply_all,
    attack,
    connected,
    credentials_seen,
    in_flight,
    parked_by_hand,
    rabbit,
    secret,
    tenant_namespace,
    token_of,
    unique,
)
from tests.integration.test_waker import (
    WAKER_NAMESPACE,
    admin,  # noqa: F401 - a fixture
    create_deployment,
    eventually,
    idle_kafka_group,
    kafka_hints,
    park,
    produce,
    request,
    woken,
)
from tests.rig.controlplane import ControlPlane
from tests.rig.kafka import Kafka
from tests.rig.processes import Managed, Supervisor, free_port
from tidescale.waker import WakerClient

pytestmark = pytest.mark.rig


@pytest_asyncio.fixture(loop_scope="session")
async def recorders(kafka: Kafka) -> AsyncIterator[Callable[..., Any]]:
    started: list[Recorder] = []

    async def start(host: str | None = None, *, http: bool = True, kafka_bomb: bool = False) -> Recorder:
        recorder = await Recorder(host=host or kafka.host, http=http, kafka_bomb=kafka_bomb).start()
        started.append(recorder)
        return recorder

    yield start
    for recorder in started:
        await recorder.stop()


# -- the test ------------------------------------------------------------------------------------------


async def test_a_hostile_namespace_steals_nothing_and_does_not_stop_another_teams_wake(
    control_plane: ControlPlane,
    kafka: Kafka,
    admin: WakerClient,  # noqa: F811 - the fixture imported above
    rig_supervisor: Supervisor,
    recorders: Callable[..., Any],
    tmp_path: Path,
) -> None:
    team_b, hostile = tenant_namespace(control_plane, "team-b"), tenant_namespace(control_plane, "hostile")
    waker_kubeconfig = control_plane.service_account_kubeconfig(WAKER_NAMESPACE, "tidescale-waker")
    canary_env = f"env-canary-{uuid.uuid4().hex}"
    canary_file = tmp_path / "token"
    canary_file.write_text(f"file-canary-{uuid.uuid4().hex}")
    password_b, password_h = f"teamb-{uuid.uuid4().hex}", f"hostile-{uuid.uuid4().hex}"
    secret(control_plane, team_b, "creds", "teamb", password_b)
    secret(control_plane, hostile, "creds", "thief", password_h)

    evil = await recorders()  # the hostile tenant's own management API
    evil_kafka = await recorders(http=False)
    kafka_bomb = await recorders(http=False, kafka_bomb=True)
    broker_b = await recorders()  # team B's own management API
    loopback = await recorders("127.0.0.1", http=False)
    holes = [await recorders(http=False) for _ in range(BLACKHOLES)]

    # Team B: a Kafka Deployment parked through the real handoff, and one with Secret credentials.
    topic, group = await idle_kafka_group(kafka)
    create_deployment(control_plane, team_b, "orders", kafka_hints(kafka, topic, group))
    billing = parked_by_hand(team_b, "billing", rabbit(broker_b.url, **{"credentials-secret": "creds"}))
    apply_all(control_plane, [billing])

    port = free_port()
    argv = [sys.executable, "-m", "tidescale.cli", "waker", "--kubeconfig", str(waker_kubeconfig)]
    argv += ["--lease-namespace", WAKER_NAMESPACE, "--identity", unique("waker"), "--interval", "0.5"]
    argv += ["--secret-namespaces", f"{team_b},{hostile}", "--port", str(port)]
    waker: Managed = rig_supervisor.start(
        unique("hostile-waker"), argv, env={**os.environ, "CANARY": canary_env}
    )
    try:
        await park(admin, team_b, "orders", await request(admin, team_b, "orders"))

        planned = attack(
            evil=evil,
            evil_kafka=evil_kafka,
            kafka_bomb=kafka_bomb,
            loopback=loopback,
            holes=holes,
            kafka_bootstrap=kafka.bootstrap,
            api_server=control_plane.server.split("://", 1)[1].rstrip("/"),
            stolen_file=canary_file,
            waker_kubeconfig=waker_kubeconfig,
            env_name="CANARY",
        )
        apply_all(control_plane, planned.deployments(hostile))

        await eventually(
            "a Warning Event naming the annotation of every refused hint",
            lambda: planned.refusals_reported(control_plane, hostile),
        )
        await eventually("the blackholes being connected to", lambda: connected(holes), timeout=60.0)
        await eventually(
            "every blackholed batch in flight", lambda: in_flight(port, BLACKHOLES), timeout=60.0
        )

        # The attack runs: team B's parked Deployment wakes from one message all the same (how fast:
        # bench/bench_waker_attack.py).
        await produce(kafka, topic)
        await eventually("team B's wake", lambda: woken(admin, team_b, "orders", 1), timeout=60.0)
        await eventually(
            "team B's Secret-credentials Deployment woken", lambda: woken(admin, team_b, "billing", 1)
        )
    finally:
        alive = waker.alive()
        log = waker.log.read_text(errors="replace")
        waker.stop()

    assert alive, f"the waker died:\n{log[-3000:]}"
    assert log.count("serving /healthz") == 1  # never restarted
    stolen = bytes(evil.received) + bytes(evil_kafka.received) + bytes(loopback.received)
    secrets = {
        "the waker's token": token_of(waker_kubeconfig),
        "the waker's environment": canary_env,
        "the waker's file": canary_file.read_text(),
        "team B's password": password_b,
    }
    assert credentials_seen(stolen, secrets) == {}
    assert [label for label, value in secrets.items() if value in log] == []
    basic_b = base64.b64encode(f"teamb:{password_b}".encode())
    assert basic_b in bytes(broker_b.received)  # its own, to its own
    assert basic_b not in bytes(evil.received)
    assert (evil_kafka.connections, loopback.connections) == (0, 0)
    # A Kafka answer announcing 2 GiB is refused at its length (sources/kafka/_frames.py).
    assert kafka_bomb.connections >= 1
    assert f"Kafka broker {kafka_bomb.address} announced an answer of 2,147,483,647 bytes" in log
