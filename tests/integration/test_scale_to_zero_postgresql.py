"""Scale to zero on a PostgreSQL query: the real agent beside a job-table consumer, the real waker
(reading the read-only user's password from the namespace's Secret), the rig's PostgreSQL. Parks when
the query answers 0, wakes on the next row. The helpers are test_scale_to_zero's."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.rigkube import (
    _consumer_deployment,
    agent_container,
    apply,
    namespace_with_agent_rbac,
    unique,
    waker_rbac,
)
from tests.integration.test_scale_to_zero import (
    FAST,
    Background,
    Observer,
    Setup,
    WakerProcess,
    arm,
    events,
)
from tests.rig.controlplane import ControlPlane
from tests.rig.podrunner import PodRunner
from tests.rig.postgresql import READER, PostgreSQL
from tests.rig.processes import Supervisor
from tidescale.kube import KubeConfig

pytestmark = pytest.mark.rig


@pytest.fixture
def background() -> Iterator[Background]:
    loop = Background()
    yield loop
    loop.close()


@pytest.fixture
def teardown(control_plane: ControlPlane) -> Iterator[list[Callable[[], None]]]:
    undo: list[Callable[[], None]] = []
    yield undo
    for step in reversed(undo):
        with contextlib.suppress(Exception):  # every step runs, whatever the one before did
            step()


class JobIds:
    """Inserts numbered rows into the test database's ``jobs`` with psql; remembers every id."""

    def __init__(self, postgresql: PostgreSQL, database: str) -> None:
        self._postgresql, self.database = postgresql, database
        self.produced: set[str] = set()
        self._counter = 0

    def send(self, count: int = 1) -> list[str]:
        ids = [f"p{self._counter + i:05d}" for i in range(count)]
        self._counter += count
        rows = ",".join(f"('{i}')" for i in ids)
        self._postgresql.psql(f"INSERT INTO jobs (state) VALUES {rows}", database=self.database)  # noqa: S608
        self.produced.update(ids)
        return ids

    def close(self) -> None:
        self._postgresql.psql(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)", database="postgres")


def postgresql_consumer_deployment(
    name: str,
    *,
    postgresql: PostgreSQL,
    database: str,
    secret: str,
    annotations: dict[str, str],
    record_file: Path,
) -> dict[str, Any]:
    """The sample job consumer (as the superuser: it deletes rows) with the agent beside it; the
    agent reads the read-only user's password from Secret ``secret`` (key password)."""
    agent = agent_container(name)
    agent["env"] = [
        *agent["env"],
        {"name": "PG_PASSWORD", "valueFrom": {"secretKeyRef": {"name": secret, "key": "password"}}},
    ]
    dsn = f"postgresql://postgres:{postgresql.superuser_password}@{postgresql.host}:{postgresql.port}/{database}"
    consumer = {
        "name": "consumer",
        "image": "tidescale-test/postgresql-consumer",
        "env": [
            {"name": "PG_DSN", "value": dsn},
            {"name": "WORK_SECONDS", "value": "0.02"},
            {"name": "RECORD_FILE", "value": str(record_file)},
        ],
    }
    return _consumer_deployment(name, annotations, 1, "workload", containers=[consumer, agent])


def test_a_postgresql_deployment_parks_when_the_query_answers_zero_and_wakes_on_the_next_row(
    control_plane: ControlPlane,
    pod_runner: PodRunner,
    postgresql: PostgreSQL,
    rig_supervisor: Supervisor,
    rig_run_dir: Path,
    background: Background,
    teardown: list[Callable[[], None]],
) -> None:
    namespace, name, secret = unique("stz-pg"), "jobs", "pg-credentials"
    database = namespace.replace("-", "_")
    postgresql.psql(f"CREATE DATABASE {database}", database="postgres")
    postgresql.psql(
        f"CREATE TABLE jobs (id serial PRIMARY KEY, state text NOT NULL); GRANT SELECT ON jobs TO {READER}",
        database=database,
    )
    namespace_with_agent_rbac(control_plane, namespace)
    kubeconfig = waker_rbac(control_plane, [namespace])
    control_plane.kubectl(
        "create",
        "secret",
        "generic",
        secret,
        "-n",
        namespace,
        f"--from-literal=password={postgresql.reader_password}",
    )
    hints = {
        "tidescale.io/postgresql.host": postgresql.host,
        "tidescale.io/postgresql.port": str(postgresql.port),
        "tidescale.io/postgresql.database": database,
        "tidescale.io/postgresql.username": READER,
        "tidescale.io/postgresql.sslmode": "disable",
        "tidescale.io/postgresql.query": "SELECT count(*) FROM jobs",
        "tidescale.io/postgresql.value": "20",
        "tidescale.io/postgresql.password-env": "PG_PASSWORD",
        "tidescale.io/postgresql.credentials-secret": secret,
        "tidescale.io/polling-interval": "1s",
        **{f"tidescale.io/{k}": v for k, v in FAST.items()},
    }
    record = rig_run_dir / f"{namespace}-consumed.txt"
    deployment = postgresql_consumer_deployment(
        name, postgresql=postgresql, database=database, secret=secret, annotations=hints, record_file=record
    )
    apply(control_plane, deployment, namespace=namespace)
    observer = Observer(
        background, KubeConfig.from_kubeconfig(control_plane.admin_kubeconfig), namespace, name
    )
    setup = Setup(
        namespace=namespace,
        name=name,
        observer=observer,
        record=record,
        waker=WakerProcess(rig_supervisor, kubeconfig, namespace),
    )
    ids = JobIds(postgresql, database)
    arm(teardown, control_plane, setup, ids)  # type: ignore[arg-type]
    setup.waker.start()
    first = ids.send(30)
    setup.wait_consumed(set(first))

    requested = observer.wait_label("requested", timeout=60)
    watching = observer.wait_label("watching", timeout=15, after=requested)
    parked = observer.wait_parked(timeout=15, after=watching)
    time.sleep(2.0)  # several polls of the empty table: it stays parked
    assert observer.replicas_now() == 0

    second = ids.send(5)
    observer.wait_awake(timeout=20, after=parked)
    setup.wait_consumed(set(first) | set(second))
    # The park itself is seen by the watch (wait_parked); the agent's Parked Event is not asserted:
    # the leader's pod is ended by that very park and its Event was seen lost (2 runs in 6).
    assert events(control_plane, namespace, "Woken")
    observer.check_invariants()
