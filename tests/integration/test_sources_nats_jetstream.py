"""Our JetStream consumer backlogs against the server's own answers (its /jsz monitoring JSON and
the JetStream API's consumer info), on the rig's real nats-server."""

from __future__ import annotations

import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats as nats_client
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from tests.rig.nats import NatsServer
from tests.rig.network import Network
from tests.rig.processes import Supervisor, free_port
from tidescale._waker_guard import for_waker
from tidescale.credentials import Credentials
from tidescale.errors import BrokerAuthFailed, BrokerUnreachable, SourceError, SourceNotFound
from tidescale.sources.base import Measurement, MeasurementFailure, Scope
from tidescale.sources.nats_jetstream._settings import NatsJetStreamSettings, parse_nats_jetstream_settings
from tidescale.sources.nats_jetstream._source import NatsJetStreamSource
from tidescale.sources.registry import open_source

pytestmark = pytest.mark.rig

CONSUMER = "workers"


@dataclass(frozen=True, kw_only=True, slots=True)
class Backlog:
    stream: str
    subject: str
    info: Any
    """The JetStream API's consumer info (nats-py), read after the messages were fetched and acked."""


@asynccontextmanager
async def _backlog(
    nats: NatsServer, *, published: int, fetched: int = 0, acked: int = 0
) -> AsyncIterator[Backlog]:
    """A stream of ``published`` messages and a durable pull consumer that fetched ``fetched`` of them
    and acknowledged ``acked`` (the rest of the fetched ones stay ack-pending for 5 minutes)."""
    stream = f"S{uuid.uuid4().hex[:8].upper()}"
    subject = f"{stream.lower()}.jobs"
    connection = await nats_client.connect(nats.url)
    try:
        js = connection.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream.lower()}.>"])
        await js.add_consumer(
            stream,
            ConsumerConfig(
                durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT, ack_wait=300, filter_subject=subject
            ),
        )
        for number in range(published):
            await js.publish(subject, f"m{number}".encode())
        subscription = await js.pull_subscribe(subject, durable=CONSUMER, stream=stream)
        messages: list[Any] = []
        while len(messages) < fetched:
            messages += await subscription.fetch(fetched - len(messages), timeout=5)
        for message in messages[:acked]:
            await message.ack_sync()
        info = await js.consumer_info(stream, CONSUMER)
        yield Backlog(stream=stream, subject=subject, info=info)
    finally:
        await connection.close()


def _settings(nats: NatsServer, **fields: str) -> NatsJetStreamSettings:
    raw = {
        "monitoring-endpoint": nats.monitoring_endpoint,
        "consumer": CONSUMER,
        "lag-threshold": "5",
        **fields,
    }
    return parse_nats_jetstream_settings("nats-jetstream", raw)


async def _measure(settings: NatsJetStreamSettings) -> Measurement:
    source = open_source(settings)
    try:
        measured: Measurement = await source.measure(settings, Scope.GROUP)
        return measured
    finally:
        await source.close()


# -- the backlog equals the server's own answer ------------------------------------------------------


async def test_the_backlog_is_pending_plus_ack_pending_as_jsz_and_the_consumer_info_give_it(
    nats: NatsServer,
) -> None:
    async with _backlog(nats, published=10, fetched=3, acked=1) as backlog:
        measured = await _measure(_settings(nats, stream=backlog.stream))
        jsz = nats.jsz_consumer(backlog.stream, CONSUMER)
    assert (jsz["num_pending"], jsz["num_ack_pending"]) == (7, 2)
    assert (backlog.info.num_pending, backlog.info.num_ack_pending) == (7, 2)
    assert measured.value == jsz["num_pending"] + jsz["num_ack_pending"] == 9
    assert (measured.target, measured.active) == (5.0, True)
    assert measured.detail == {
        f"{backlog.stream}/{CONSUMER}:pending": 7.0,
        f"{backlog.stream}/{CONSUMER}:ack-pending": 2.0,
    }


async def test_a_drained_consumer_is_idle_and_the_activation_threshold_holds_a_small_backlog(
    nats: NatsServer,
) -> None:
    async with _backlog(nats, published=4, fetched=4, acked=4) as drained:
        idle = await _measure(_settings(nats, stream=drained.stream))
    async with _backlog(nats, published=3) as small:
        below = await _measure(_settings(nats, stream=small.stream, **{"activation-lag-threshold": "3"}))
    assert (idle.value, idle.active) == (0.0, False)
    assert (below.value, below.active) == (3.0, False)


async def test_many_triggers_of_one_account_cost_one_jsz_read_per_batch(nats: NatsServer) -> None:
    async with (
        _backlog(nats, published=2) as a,
        _backlog(nats, published=5, fetched=1) as b,
        _backlog(nats, published=0) as c,
    ):
        settings = [_settings(nats, stream=x.stream) for x in (a, b, c)]
        source = open_source(settings[0])
        assert isinstance(source, NatsJetStreamSource)
        try:
            results = await source.measure_many([*settings, settings[0]])
            assert source.requests == 1
        finally:
            await source.close()
        for s, backlog in zip(settings, (a, b, c), strict=True):
            result = results[s]
            jsz = nats.jsz_consumer(backlog.stream, CONSUMER)
            assert isinstance(result, Measurement)
            assert result.value == jsz["num_pending"] + jsz["num_ack_pending"]
    assert [r.value for r in results.values() if isinstance(r, Measurement)] == [2.0, 5.0, 0.0]


# -- missing objects, and a server that is not there ------------------------------------------------


async def test_a_missing_stream_consumer_or_account_is_named(nats: NatsServer) -> None:
    async with _backlog(nats, published=1) as backlog:
        with pytest.raises(SourceNotFound, match=r"no stream 'NOPE' in account '\$G'"):
            await _measure(_settings(nats, stream="NOPE"))
        with pytest.raises(SourceNotFound, match=f"no consumer 'other' on stream '{backlog.stream}'"):
            await _measure(_settings(nats, stream=backlog.stream, consumer="other"))
        with pytest.raises(SourceNotFound, match="no JetStream account 'TEAM_B'"):
            await _measure(_settings(nats, stream=backlog.stream, account="TEAM_B"))


async def test_a_missing_consumer_in_a_batch_fails_only_its_trigger(nats: NatsServer) -> None:
    async with _backlog(nats, published=2) as backlog:
        good = _settings(nats, stream=backlog.stream)
        missing = _settings(nats, stream=backlog.stream, consumer="gone")
        source = open_source(good)
        try:
            results = await source.measure_many([good, missing])
        finally:
            await source.close()
    assert isinstance(results[good], Measurement)
    assert results[good].value == 2.0
    assert isinstance(results[missing], MeasurementFailure)
    assert "no consumer 'gone'" in results[missing].error


async def test_a_server_that_is_down_is_unreachable_and_the_client_port_is_not_a_monitoring_endpoint(
    nats: NatsServer,
) -> None:
    down = f"{nats.host}:{free_port(nats.host)}"
    with pytest.raises(BrokerUnreachable, match="check monitoring-endpoint"):
        await _measure(_settings(nats, stream="S", **{"monitoring-endpoint": down}))
    with pytest.raises(SourceError, match="monitoring-endpoint"):
        await _measure(_settings(nats, stream="S", **{"monitoring-endpoint": f"{nats.host}:{nats.port}"}))


# -- https -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nats_tls(rig_supervisor: Supervisor, rig_network: Network, rig_run_dir: Path) -> Iterator[NatsServer]:
    """A second nats-server whose clients and monitoring endpoint use TLS (only this module's)."""
    server = NatsServer.start(rig_supervisor, rig_network, rig_run_dir, tls=True, name="nats-tls")
    yield server
    server.stop()


async def test_https_is_read_with_the_ca_of_tls_ca_file_and_refused_by_name_without_it(
    nats_tls: NatsServer,
) -> None:
    assert nats_tls.tls_ca is not None
    ca = str(nats_tls.tls_ca.cert_file)
    context = ssl.create_default_context(cafile=ca)
    connection = await nats_client.connect(nats_tls.url, tls=context)
    try:
        js = connection.jetstream()
        await js.add_stream(name="SECURE", subjects=["secure.>"])
        await js.add_consumer(
            "SECURE",
            ConsumerConfig(
                durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT, filter_subject="secure.jobs"
            ),
        )
        for number in range(4):
            await js.publish("secure.jobs", f"m{number}".encode())
    finally:
        await connection.close()
    https = {"use-https": "true", "stream": "SECURE"}
    measured = await _measure(_settings(nats_tls, **https, **{"tls-ca-file": ca}))
    jsz = nats_tls.jsz_consumer("SECURE", CONSUMER)
    assert measured.value == jsz["num_pending"] + jsz["num_ack_pending"] == 4
    with pytest.raises(BrokerAuthFailed, match=r"TLS certificate of .* is not trusted.*tls-ca-file"):
        await _measure(_settings(nats_tls, **https))
    # The waker: the Secret's ca.crt (PEM text) in place of the file, which it never reads.
    hinted = _settings(
        nats_tls, **https, **{"tls-ca-file": "/not/for/the/waker", "credentials-secret": "nats-ca"}
    )
    waker_settings = for_waker(hinted)
    assert isinstance(waker_settings, NatsJetStreamSettings)
    assert waker_settings.tls_ca_file is None
    secret = Credentials.of("team-a", "nats-ca", {"ca.crt": nats_tls.tls_ca.cert_pem.decode()})
    source = open_source(waker_settings, credentials=secret)
    try:
        assert (await source.measure(waker_settings, Scope.GROUP)).value == 4
    finally:
        await source.close()
    other_ca = Credentials.of("team-a", "nats-ca", {"ca.crt": _other_ca_pem(nats_tls)})
    source = open_source(waker_settings, credentials=other_ca)
    try:
        with pytest.raises(
            BrokerAuthFailed, match=r"not trusted.*key ca\.crt of credentials-secret team-a/nats-ca"
        ):
            await source.measure(waker_settings, Scope.GROUP)
    finally:
        await source.close()


def _other_ca_pem(server: NatsServer) -> str:
    from tests.rig.certs import CertificateAuthority

    return CertificateAuthority.create(
        server.directory / "other-ca", common_name="not-the-nats-ca"
    ).cert_pem.decode()


# -- a cluster: what the answering server sees -------------------------------------------------------------


@pytest.fixture(scope="module")
def nats_cluster(
    rig_supervisor: Supervisor, rig_network: Network, rig_run_dir: Path
) -> Iterator[list[NatsServer]]:
    """Three nats-servers in one JetStream cluster (only this module's)."""
    servers = NatsServer.start_cluster(rig_supervisor, rig_network, rig_run_dir)
    yield servers
    for server in servers:
        server.stop()


async def test_in_a_cluster_the_consumer_leaders_answer_is_read_and_a_followers_is_refused(
    nats_cluster: list[NatsServer],
) -> None:
    """docs/keda-mapping.md, "Cluster": a follower reports a replicated consumer's num_pending as 0
    (nats-server 2.15), so only the leader's answer is used: monitoring-endpoint lists every server
    and tidescale reads the one leading the consumer; a follower alone is a named error, not a low
    reading. A one-replica stream is read on the server that holds it."""
    connection = await nats_client.connect(nats_cluster[0].url)
    try:
        js = connection.jetstream()
        await js.add_stream(name="CL3", subjects=["cl3.>"], num_replicas=3)
        await js.add_stream(name="CL1", subjects=["cl1.>"], num_replicas=1)
        for stream, subject in (("CL3", "cl3.jobs"), ("CL1", "cl1.jobs")):
            config = ConsumerConfig(
                durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT, ack_wait=300, filter_subject=subject
            )
            await js.add_consumer(stream, config)
        for number in range(6):
            await js.publish("cl3.jobs", f"m{number}".encode())
        for number in range(2):
            await js.publish("cl1.jobs", f"m{number}".encode())
        subscription = await js.pull_subscribe("cl3.jobs", durable=CONSUMER, stream="CL3")
        messages = await subscription.fetch(2, timeout=5)
        await messages[0].ack_sync()
        info = await js.consumer_info("CL3", CONSUMER)
    finally:
        await connection.close()
    assert info.num_pending + info.num_ack_pending == 5  # the leader's view, through the JetStream API
    leader_name = info.cluster.leader
    leader = next(s for s in nats_cluster if s.name == leader_name)
    followers = [s for s in nats_cluster if s is not leader]
    every = ",".join(s.monitoring_endpoint for s in [*followers, leader])  # the leader listed last

    measured = await _measure(_settings(leader, stream="CL3", **{"monitoring-endpoint": every}))
    jsz = leader.jsz_consumer("CL3", CONSUMER)
    assert measured.value == jsz["num_pending"] + jsz["num_ack_pending"] == 5
    follower_view = followers[0].jsz_consumer("CL3", CONSUMER)
    assert follower_view["num_pending"] < jsz["num_pending"]  # why a follower's answer is not used
    with pytest.raises(SourceError, match=f"answered as the leader.*its leader: {leader_name}"):
        await _measure(_settings(followers[0], stream="CL3"))

    holder = next(s for s in nats_cluster if any(x["name"] == "CL1" for x in _streams(s)))
    elsewhere = next(s for s in nats_cluster if s is not holder)
    with pytest.raises(SourceNotFound, match="one of 3 in a cluster"):
        await _measure(_settings(elsewhere, stream="CL1"))
    one_replica = await _measure(_settings(elsewhere, stream="CL1", **{"monitoring-endpoint": every}))
    assert one_replica.value == 2


def _streams(server: NatsServer) -> list[dict[str, Any]]:
    details = server.jsz().get("account_details") or [{}]
    return list(details[0].get("stream_detail") or [])
