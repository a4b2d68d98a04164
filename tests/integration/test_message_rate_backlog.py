"""message-rate activation holds while a backlog remains: a RabbitMQ Deployment scaled on the publish
rate parks only when its queue is empty, never with messages stranded (the real agent, waker, broker).

Reuses the scale-to-zero machinery of ``test_scale_to_zero``: the Deployment's watch, the publisher,
the sample consumer that records every message it consumed, and the waker process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.test_scale_to_zero import FAST, Background, arm, rabbitmq_setup
from tests.rig.controlplane import ControlPlane
from tests.rig.podrunner import PodRunner
from tests.rig.processes import Supervisor
from tests.rig.rabbitmq import RabbitMQ
from tidescale.sources.base import Scope
from tidescale.sources.rabbitmq._source import RabbitMQSource, parse_rabbitmq_settings

pytestmark = pytest.mark.rig

PASSWORD_ENV = "TIDESCALE_TEST_BACKLOG_PASSWORD"
BURST = 24
WORK_SECONDS = 0.5


class Sampler:
    """Measures the trigger as the waker does (GROUP scope) every half second on the background
    loop, keeping (when, publish rate, backlog, active) for every reading."""

    def __init__(self, background: Background, rabbitmq: RabbitMQ, queue: str) -> None:
        os.environ[PASSWORD_ENV] = rabbitmq.password
        url = rabbitmq.management_url.replace("://", f"://{rabbitmq.username}@", 1)
        self.settings = parse_rabbitmq_settings(
            "rabbitmq",
            {"management-url": url, "queue": queue, "mode": "message-rate", "password-env": PASSWORD_ENV},
        )
        self.readings: list[tuple[float, float, float, bool]] = []
        self.failures: list[str] = []
        self._background = background
        self._task = background.run(self._start())

    async def _start(self) -> asyncio.Task[None]:
        return asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        source = RabbitMQSource(self.settings)
        try:
            while True:
                try:
                    m = await source.measure(self.settings, Scope.GROUP)
                    self.readings.append((time.monotonic(), m.value, m.detail["total:backlog"], m.active))
                except Exception as exc:  # kept apart: only successful readings prove anything
                    self.failures.append(repr(exc))
                await asyncio.sleep(0.5)
        finally:
            await source.close()

    def stop(self) -> None:
        async def cancel() -> None:
            self._task.cancel()

        self._background.run(cancel())


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
        with contextlib.suppress(Exception):
            step()


def test_a_message_rate_deployment_drains_its_backlog_before_it_parks(
    control_plane: ControlPlane,
    pod_runner: PodRunner,
    rabbitmq: RabbitMQ,
    rig_supervisor: Supervisor,
    rig_run_dir: Path,
    background: Background,
    teardown: list[Callable[[], None]],
) -> None:
    setup, ids = rabbitmq_setup(
        control_plane,
        rig_supervisor,
        background,
        rabbitmq,
        rig_run_dir,
        "rate-backlog",
        work_seconds=WORK_SECONDS,
        extra={"rabbitmq.mode": "message-rate", "rabbitmq.value": "5", **FAST},
    )
    arm(teardown, control_plane, setup, ids)
    observer = setup.observer
    setup.waker.start()
    # Nothing published yet: rate 0, empty queue, so the Deployment parks first.
    parked = observer.wait_parked(timeout=60)
    sampler = Sampler(background, rabbitmq, ids.queue)
    teardown.append(sampler.stop)

    burst = set(ids.send(BURST))  # then publishing stops for good
    published_at = time.monotonic()
    awake = observer.wait_awake(timeout=30, after=parked)
    # Slow work (0.5 s a message, one consumer): the rate falls to 0 long before the queue empties.
    requested = observer.wait_label("requested", timeout=BURST * WORK_SECONDS + 90, after=awake)
    park_requested_at = observer.states[requested].at

    # The park was asked for only once every message had been consumed ...
    assert burst <= setup.consumed()
    # ... and not for want of a moment when the rate alone would have parked it: a reading after
    # publishing stopped shows rate 0 with messages still queued, and the trigger active.
    stranded = [
        (rate, backlog, active)
        for at, rate, backlog, active in sampler.readings
        if published_at < at < park_requested_at and rate == 0.0 and backlog > 0
    ]
    assert stranded, (
        f"no reading with rate 0 and a backlog before the park: {sampler.readings} {sampler.failures}"
    )
    assert all(active for _, _, active in stranded)
    observer.check_invariants()
