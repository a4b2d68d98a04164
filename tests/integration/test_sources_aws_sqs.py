"""Our SQS numbers against ElasticMQ's own answer, on the rig's real ElasticMQ.

ElasticMQ's answer is read with the query protocol (XML) by the test; tidescale speaks the JSON
protocol, signed. ElasticMQ checks no signature, so refused credentials are covered by the unit
tests' recorded AWS answers (tests/unit/test_aws_sqs.py), not here.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.rig.elasticmq import REGION, ElasticMQ
from tests.rig.processes import free_port
from tidescale.credentials import Credentials
from tidescale.errors import BrokerAuthFailed, BrokerUnreachable, SourceNotFound
from tidescale.sources.aws_sqs._settings import AwsSqsSettings, parse_aws_sqs_settings
from tidescale.sources.aws_sqs._source import AwsSqsSource
from tidescale.sources.base import Measurement, MeasurementFailure, Scope

pytestmark = pytest.mark.rig

KEY_ENV, SECRET_ENV = "TIDESCALE_TEST_SQS_KEY_ID", "TIDESCALE_TEST_SQS_SECRET"


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv(KEY_ENV, "AKIDRIGEXAMPLE")
    monkeypatch.setenv(SECRET_ENV, "rig-secret")
    return {"access-key-id-env": KEY_ENV, "secret-access-key-env": SECRET_ENV}


def settings_for(elasticmq: ElasticMQ, queue: str, keys: dict[str, str], **extra: str) -> AwsSqsSettings:
    return parse_aws_sqs_settings(
        "sqs", {"queue-url": elasticmq.queue_url(queue), "aws-region": REGION, **keys, **extra}
    )


def new_queue(elasticmq: ElasticMQ) -> str:
    name = f"jobs-{uuid.uuid4().hex[:8]}"
    elasticmq.create_queue(name)
    return name


async def measure(settings: AwsSqsSettings, credentials: Credentials | None = None) -> Measurement:
    source = AwsSqsSource(settings, credentials=credentials)
    try:
        return await source.measure(settings, Scope.GROUP)
    finally:
        await source.close()


async def test_the_metric_is_what_elasticmq_reports_for_visible_in_flight_and_delayed_messages(
    elasticmq: ElasticMQ, keys: dict[str, str]
) -> None:
    queue = new_queue(elasticmq)
    elasticmq.send(queue, 7)
    in_flight = elasticmq.receive(queue, 3)
    elasticmq.send(queue, 2, delay_seconds=600)
    own = elasticmq.attributes(queue)
    visible = int(own["ApproximateNumberOfMessages"])
    not_visible = int(own["ApproximateNumberOfMessagesNotVisible"])
    delayed = int(own["ApproximateNumberOfMessagesDelayed"])
    assert (visible, not_visible, delayed, len(in_flight)) == (4, 3, 2, 3)  # the setup took

    default = await measure(settings_for(elasticmq, queue, keys))
    assert default.value == visible + not_visible
    assert default.detail == {"visible": visible, "in-flight": not_visible}
    assert default.active
    with_delayed = await measure(settings_for(elasticmq, queue, keys, **{"scale-on-delayed": "true"}))
    assert with_delayed.value == visible + not_visible + delayed
    visible_only = await measure(settings_for(elasticmq, queue, keys, **{"scale-on-in-flight": "false"}))
    assert visible_only.value == visible


async def test_an_empty_queue_reads_zero_and_is_inactive_and_activation_is_a_strict_bound(
    elasticmq: ElasticMQ, keys: dict[str, str]
) -> None:
    queue = new_queue(elasticmq)
    empty = await measure(settings_for(elasticmq, queue, keys))
    assert (empty.value, empty.active) == (0.0, False)
    elasticmq.send(queue, 2)
    at_bound = await measure(settings_for(elasticmq, queue, keys, **{"activation-queue-length": "2"}))
    assert (at_bound.value, at_bound.active) == (2.0, False)
    elasticmq.send(queue, 1)
    above = await measure(settings_for(elasticmq, queue, keys, **{"activation-queue-length": "2"}))
    assert (above.value, above.active) == (3.0, True)


async def test_a_missing_queue_is_source_not_found_naming_it(
    elasticmq: ElasticMQ, keys: dict[str, str]
) -> None:
    with pytest.raises(SourceNotFound, match="no queue 'never-made'"):
        await measure(settings_for(elasticmq, "never-made", keys))


async def test_a_server_that_is_down_is_broker_unreachable(
    elasticmq: ElasticMQ, keys: dict[str, str]
) -> None:
    closed = free_port(elasticmq.host)  # nothing listens there
    url = f"http://{elasticmq.host}:{closed}/000000000000/jobs"
    settings = parse_aws_sqs_settings("sqs", {"queue-url": url, "aws-region": REGION, **keys})
    with pytest.raises(BrokerUnreachable, match="cannot reach SQS at"):
        await measure(settings)


async def test_an_unset_key_variable_is_refused_before_any_request(
    elasticmq: ElasticMQ, keys: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_ENV)
    settings = settings_for(elasticmq, new_queue(elasticmq), keys)
    source = AwsSqsSource(settings)
    with pytest.raises(BrokerAuthFailed, match=f"{SECRET_ENV} .* is not set"):
        await source.measure(settings, Scope.GROUP)
    assert source.requests == 0
    await source.close()


async def test_keys_from_files_and_from_the_wakers_secret_are_used(
    elasticmq: ElasticMQ, tmp_path: Path, keys: dict[str, str]
) -> None:
    queue = new_queue(elasticmq)
    elasticmq.send(queue, 5)
    (tmp_path / "id").write_text("AKIDFROMFILE\n")
    (tmp_path / "secret").write_text("file-secret\n")
    files = {"access-key-id-file": str(tmp_path / "id"), "secret-access-key-file": str(tmp_path / "secret")}
    assert (await measure(settings_for(elasticmq, queue, files))).value == 5
    secret = Credentials.of(
        "team-a", "sqs", {"AWS_ACCESS_KEY_ID": "AKIDWAKER", "AWS_SECRET_ACCESS_KEY": "waker-secret"}
    )
    assert (await measure(settings_for(elasticmq, queue, keys), credentials=secret)).value == 5
    lacking = Credentials.of("team-a", "sqs", {"AWS_ACCESS_KEY_ID": "AKIDWAKER"})
    with pytest.raises(BrokerAuthFailed, match="has no key 'AWS_SECRET_ACCESS_KEY'"):
        await measure(settings_for(elasticmq, queue, keys), credentials=lacking)


async def test_a_batch_sends_one_request_per_queue_and_a_missing_queue_fails_alone(
    elasticmq: ElasticMQ, keys: dict[str, str]
) -> None:
    queues = [new_queue(elasticmq) for _ in range(12)]
    for count, queue in enumerate(queues):
        elasticmq.send(queue, count)
    batch = [settings_for(elasticmq, q, keys) for q in queues]
    missing = settings_for(elasticmq, "not-there", keys)
    source = AwsSqsSource(batch[0])
    try:
        found = await source.measure_many([*batch, missing, batch[0]])
    finally:
        await source.close()
    assert source.requests == len(queues) + 1
    for count, (queue, settings) in enumerate(zip(queues, batch, strict=True)):
        measured = found[settings]
        assert isinstance(measured, Measurement)
        assert measured.value == count == int(elasticmq.attributes(queue)["ApproximateNumberOfMessages"])
    failure = found[missing]
    assert isinstance(failure, MeasurementFailure)
    assert "no queue 'not-there'" in failure.error
