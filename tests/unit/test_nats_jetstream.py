"""NATS JetStream: the settings parser and the backlog arithmetic from recorded /jsz answers
(no server). ``RECORDED`` is nats-server 2.15.2's answer to ``/jsz?acc=$G&consumers=true`` after 10
messages were published and 3 fetched, 1 of them acknowledged (trimmed of fields nobody reads);
tests/integration/test_sources_nats_jetstream.py checks the same on the real server."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidescale.errors import BrokerUnreachable, HintsInvalid, SourceError, SourceNotFound
from tidescale.sources.nats_jetstream import KIND
from tidescale.sources.nats_jetstream._backlog import (
    consumer_backlog,
    leader_backlog,
    nats_jetstream_measurement,
)
from tidescale.sources.nats_jetstream._settings import NatsJetStreamSettings, parse_nats_jetstream_settings

BASIC = {"monitoring-endpoint": "nats.messaging:8222", "stream": "ORDERS", "consumer": "workers"}
BASE = NatsJetStreamSettings(
    name="nats-jetstream",
    monitoring_host="nats.messaging",
    monitoring_port=8222,
    stream="ORDERS",
    consumer="workers",
)
WHERE = "the NATS monitoring endpoint http://nats.messaging:8222"

RECORDED: dict[str, Any] = {
    "server_id": "NAYNMMCHIVW2D7U3CVV4AG6FNZQ27YBKJRLURX66FJDEZF45PUNCHEUO",
    "now": "2026-12-02T07:54:03.781768225Z",
    "streams": 1,
    "consumers": 1,
    "messages": 10,
    "account_details": [
        {
            "name": "$G",
            "id": "$G",
            "stream_detail": [
                {
                    "name": "ORDERS",
                    "cluster": {"leader": "spn-test"},
                    "state": {"messages": 10, "first_seq": 1, "last_seq": 10, "consumer_count": 1},
                    "consumer_detail": [
                        {
                            "stream_name": "ORDERS",
                            "name": "workers",
                            "delivered": {"consumer_seq": 3, "stream_seq": 3},
                            "ack_floor": {"consumer_seq": 1, "stream_seq": 1},
                            "num_ack_pending": 2,
                            "num_redelivered": 0,
                            "num_waiting": 0,
                            "num_pending": 7,
                        }
                    ],
                }
            ],
        }
    ],
    "total": 1,
}


def _problems(raw: dict[str, str]) -> dict[str, str]:
    with pytest.raises(HintsInvalid) as caught:
        parse_nats_jetstream_settings("queue", raw)
    return {p.annotation: str(p) for p in caught.value.problems}


def _answer(pending: int, ack_pending: int, **consumer: Any) -> dict[str, Any]:
    answer = copy.deepcopy(RECORDED)
    detail = answer["account_details"][0]["stream_detail"][0]["consumer_detail"][0]
    detail.update({"num_pending": pending, "num_ack_pending": ack_pending, **consumer})
    return answer


# -- settings ---------------------------------------------------------------------------------------


def test_defaults_follow_keda_except_the_account() -> None:
    s = parse_nats_jetstream_settings("nats-jetstream", BASIC)
    assert s == BASE
    assert (s.account, s.lag_threshold, s.activation_lag_threshold, s.use_https, s.timeout) == (
        "$G",
        10,
        0,
        False,
        5.0,
    )
    assert s.base_url == "http://nats.messaging:8222"


def test_every_field_parses_to_its_type() -> None:
    s = parse_nats_jetstream_settings(
        "queue",
        {
            **BASIC,
            "monitoring-endpoint": "[fd00::1]:8223",
            "use-https": "true",
            "account": "ACCOUNTPUBLICKEY",
            "lag-threshold": "50",
            "activation-lag-threshold": "5",
            "tls-ca-file": "/etc/nats/ca.crt",
            "timeout": "2s",
        },
    )
    assert (s.monitoring_host, s.monitoring_port, s.base_url) == ("fd00::1", 8223, "https://[fd00::1]:8223")
    assert (s.account, s.lag_threshold, s.activation_lag_threshold) == ("ACCOUNTPUBLICKEY", 50, 5)
    assert (s.tls_ca_file, s.timeout) == ("/etc/nats/ca.crt", 2.0)
    assert KIND.endpoints(s)[0].host == "fd00::1"


def test_the_required_fields_are_each_named_when_missing() -> None:
    problems = _problems({})
    for name in ("monitoring-endpoint", "stream", "consumer"):
        assert "required" in problems[f"tidescale.io/queue.{name}"]


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("monitoring-endpoint", "http://nats:8222", "host:port"),
        ("monitoring-endpoint", "nats", "host:port"),
        ("monitoring-endpoint", "nats:0", "host:port"),
        ("monitoring-endpoint", "[not-ipv6]:8222", "host:port"),
        ("stream", "orders.new", "JetStream stream name"),
        ("stream", "a b", "JetStream stream name"),
        ("consumer", "w*", "JetStream consumer name"),
        ("consumer", "x" * 256, "JetStream consumer name"),
        ("account", " ", "account name"),
        ("lag-threshold", "0", "from 1"),
        ("lag-threshold", "2.5", "whole number"),
        ("activation-lag-threshold", "-1", "from 0"),
        ("use-https", "yes please", '"true" or "false"'),
        ("timeout", "0s", "duration"),
    ],
)
def test_a_bad_value_is_named_with_what_was_expected(field: str, value: str, expected: str) -> None:
    problems = _problems({**BASIC, field: value})
    assert expected in problems[f"tidescale.io/queue.{field}"]


def test_a_ca_file_needs_https() -> None:
    problems = _problems({**BASIC, "tls-ca-file": "/ca.crt"})
    assert "use-https true" in problems["tidescale.io/queue.tls-ca-file"]


def test_an_unknown_field_is_named_with_a_suggestion() -> None:
    problems = _problems({**BASIC, "lagThreshold": "5"})
    assert "did you mean" in problems["tidescale.io/queue.lagThreshold"]
    assert "nats-jetstream trigger" in problems["tidescale.io/queue.lagThreshold"]


def test_triggers_on_one_endpoint_share_a_connection() -> None:
    a = parse_nats_jetstream_settings("a", BASIC)
    b = parse_nats_jetstream_settings("b", {**BASIC, "stream": "OTHER", "account": "B"})
    c = parse_nats_jetstream_settings("c", {**BASIC, "use-https": "true"})
    assert a.cluster_key == b.cluster_key != c.cluster_key


# -- the backlog --------------------------------------------------------------------------------------


def test_the_recorded_answer_gives_pending_plus_ack_pending() -> None:
    backlog = consumer_backlog(RECORDED, BASE, where=WHERE)
    assert (backlog.pending, backlog.ack_pending, backlog.total) == (7, 2, 9)
    assert (backlog.leader, backlog.cluster_size) == (None, 1)
    measured = nats_jetstream_measurement(backlog, BASE, 4.0)
    assert (measured.value, measured.target, measured.active, measured.taken_at) == (9.0, 10.0, True, 4.0)
    assert measured.detail == {"ORDERS/workers:pending": 7.0, "ORDERS/workers:ack-pending": 2.0}


def test_the_account_matches_by_id_or_name_as_keda_does() -> None:
    answer = copy.deepcopy(RECORDED)
    answer["account_details"][0].update({"name": "ORDERS_TEAM", "id": "AB3PUBLICKEY"})
    for account in ("ORDERS_TEAM", "AB3PUBLICKEY"):
        assert consumer_backlog(answer, replace(BASE, account=account), where=WHERE).total == 9


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (replace(BASE, account="B"), "no JetStream account 'B'"),
        (replace(BASE, stream="NOPE"), "no stream 'NOPE' in account '$G'"),
        (replace(BASE, consumer="gone"), "no consumer 'gone' on stream 'ORDERS'"),
    ],
)
def test_a_missing_account_stream_or_consumer_is_named(settings: NatsJetStreamSettings, message: str) -> None:
    with pytest.raises(SourceNotFound) as caught:
        consumer_backlog(RECORDED, settings, where=WHERE)
    assert message in str(caught.value)


def test_an_answer_without_details_for_the_account_is_a_missing_account() -> None:
    # What the server answers for acc=<unknown>: the totals, no account_details.
    answer = {k: v for k, v in RECORDED.items() if k != "account_details"}
    with pytest.raises(SourceNotFound, match="no JetStream account"):
        consumer_backlog(answer, BASE, where=WHERE)


def test_jetstream_disabled_is_said_so() -> None:
    with pytest.raises(SourceError, match="JetStream disabled"):
        consumer_backlog({"server_id": "X", "disabled": True}, BASE, where=WHERE)


@pytest.mark.parametrize("bad", [None, "7", -1, 1.5, True, 1 << 63])
def test_a_count_that_is_not_a_whole_number_is_an_error_never_zero(bad: Any) -> None:
    with pytest.raises(SourceError, match="no usable num_pending"):
        consumer_backlog(_answer(bad, 0), BASE, where=WHERE)


@pytest.mark.parametrize("answer", [[], "x", {"account_details": "no"}, {"account_details": [{"id": "$G"}]}])
def test_anything_else_is_a_source_error_never_another_exception(answer: Any) -> None:
    with pytest.raises(SourceError):
        consumer_backlog(answer, BASE, where=WHERE)


def test_a_clustered_answer_reports_its_size_and_the_consumers_leader() -> None:
    answer = _answer(1, 1, cluster={"leader": "nats-2"})
    answer["meta_cluster"] = {"name": "c", "leader": "nats-0", "cluster_size": 3}
    backlog = consumer_backlog(answer, BASE, where=WHERE)
    assert (backlog.leader, backlog.cluster_size, backlog.total) == ("nats-2", 3, 2)


# -- properties -------------------------------------------------------------------------------------

counts = st.integers(0, 10**15)


@given(
    pending=counts, ack_pending=counts, activation=st.integers(0, 10**12), threshold=st.integers(1, 10**12)
)
def test_the_metric_is_the_sum_and_activity_is_strictly_above_activation(
    pending: int, ack_pending: int, activation: int, threshold: int
) -> None:
    settings = replace(BASE, activation_lag_threshold=activation, lag_threshold=threshold)
    measured = nats_jetstream_measurement(
        consumer_backlog(_answer(pending, ack_pending), settings, where=WHERE), settings, 0.0
    )
    assert measured.value == float(pending + ack_pending)
    assert measured.active == (pending + ack_pending > activation)
    assert measured.target == float(threshold)


@given(st.lists(st.sampled_from(["ORDERS", "A", "B", "C"]), max_size=6), st.integers(0, 100))
def test_other_streams_and_consumers_beside_it_never_change_the_reading(names: list[str], noise: int) -> None:
    answer = copy.deepcopy(RECORDED)
    streams = answer["account_details"][0]["stream_detail"]
    for name in names:
        consumers = [{"name": n, "num_pending": noise, "num_ack_pending": noise} for n in ("x", "workers")]
        streams.append({"name": name + "-other", "consumer_detail": consumers})
    streams[0]["consumer_detail"].insert(
        0, {"name": "sibling", "num_pending": noise, "num_ack_pending": noise}
    )
    assert consumer_backlog(answer, BASE, where=WHERE).total == 9


# -- the waker's guard ------------------------------------------------------------------------------


def test_the_waker_measures_a_plain_trigger_refuses_tls_files_and_checks_the_endpoint() -> None:
    from tidescale._waker_guard import broker_endpoints, refusal

    with_ca = parse_nats_jetstream_settings("q", {**BASIC, "use-https": "true", "tls-ca-file": "/ca.crt"})
    assert refusal(BASE) is None
    refused = refusal(with_ca)
    assert refused is not None
    assert refused[0] == "tidescale.io/q.tls-ca-file"
    assert broker_endpoints(BASE) == [
        ("tidescale.io/nats-jetstream.monitoring-endpoint", "nats.messaging", 8222)
    ]


def test_the_reasons_call_the_metric_a_backlog() -> None:
    from tidescale.hints import parse_hints

    hints = parse_hints({f"tidescale.io/nats-jetstream.{k}": v for k, v in BASIC.items()})
    assert hints.metric_of("nats-jetstream") == "backlog"


async def test_a_batch_against_a_server_that_is_down_fails_every_trigger_without_raising() -> None:
    import socket

    from tidescale.sources.base import MeasurementFailure
    from tidescale.sources.nats_jetstream._source import NatsJetStreamSource

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings = [
        parse_nats_jetstream_settings(
            "q", {**BASIC, "monitoring-endpoint": f"127.0.0.1:{port}", "stream": s, "account": a}
        )
        for s, a in (("A", "$G"), ("B", "$G"), ("C", "TEAM"))
    ]
    source = NatsJetStreamSource(settings[0])
    try:
        results = await source.measure_many(settings)
    finally:
        await source.close()
    assert set(results) == set(settings)
    assert all(isinstance(r, MeasurementFailure) and "cannot reach" in r.error for r in results.values())
    assert source.requests == 2  # one per account


def test_a_stream_missing_on_a_cluster_member_says_where_to_point() -> None:
    answer = copy.deepcopy(RECORDED)
    answer["meta_cluster"] = {"cluster_size": 3}
    with pytest.raises(SourceNotFound, match="one of 3 in a cluster"):
        consumer_backlog(answer, replace(BASE, stream="ELSEWHERE"), where=WHERE)


def test_a_secret_stands_in_for_the_ca_file_only() -> None:
    problems = _problems({**BASIC, "credentials-secret": "nats-ca"})
    assert "tls-ca-file with it" in problems["tidescale.io/queue.credentials-secret"]
    s = parse_nats_jetstream_settings(
        "q", {**BASIC, "use-https": "true", "tls-ca-file": "/ca.crt", "credentials-secret": "nats-ca"}
    )
    assert s.credentials_secret == "nats-ca"


# -- a cluster: the consumer leader's answer ----------------------------------------------------------


def _clustered(pending: int, *, leader: str, peers: tuple[str, ...]) -> dict[str, Any]:
    cluster = {"name": "c", "leader": leader, "replicas": [{"name": p, "current": True} for p in peers]}
    answer = _answer(pending, 1, cluster=cluster)
    answer["meta_cluster"] = {"cluster_size": 3}
    return answer


def test_several_endpoints_are_parsed_and_each_is_an_endpoint_the_waker_checks() -> None:
    s = parse_nats_jetstream_settings(
        "q", {**BASIC, "monitoring-endpoint": "n0.nats:8222, n1.nats:8222,n2.nats:8223"}
    )
    assert s.endpoints == (("n0.nats", 8222), ("n1.nats", 8222), ("n2.nats", 8223))
    assert s.urls[2] == "http://n2.nats:8223"
    assert [(e.host, e.port) for e in KIND.endpoints(s)] == list(s.endpoints)
    assert (
        "each monitoring endpoint once"
        in _problems({**BASIC, "monitoring-endpoint": "a:1,a:1"})["tidescale.io/queue.monitoring-endpoint"]
    )
    many = ",".join(f"n{i}:8222" for i in range(17))
    assert (
        "1 to 16"
        in _problems({**BASIC, "monitoring-endpoint": many})["tidescale.io/queue.monitoring-endpoint"]
    )


def test_the_leader_is_the_server_not_among_the_peers_it_lists() -> None:
    assert consumer_backlog(RECORDED, BASE, where=WHERE).from_leader  # a single server
    leader = consumer_backlog(_clustered(7, leader="n1", peers=("n0", "n2")), BASE, where=WHERE)
    follower = consumer_backlog(_clustered(0, leader="n1", peers=("n1", "n2")), BASE, where=WHERE)
    electing = consumer_backlog(_clustered(0, leader="", peers=("n1", "n2")), BASE, where=WHERE)
    assert (leader.from_leader, follower.from_leader, electing.from_leader) == (True, False, False)


def test_the_leaders_answer_is_used_wherever_it_is_listed() -> None:
    follower = ("n0", _clustered(0, leader="n1", peers=("n1", "n2")))
    leader = ("n1", _clustered(7, leader="n1", peers=("n0", "n2")))
    down = ("n2", BrokerUnreachable("cannot reach n2"))
    for answers in ([follower, leader, down], [down, leader, follower], [leader]):
        assert leader_backlog(answers, BASE).total == 8


def test_followers_only_is_an_error_naming_the_leader_never_their_low_count() -> None:
    followers = [(w, _clustered(0, leader="n1", peers=("n1", "n2"))) for w in ("n0", "n2")]
    with pytest.raises(SourceError, match=r"its leader: n1.*list every server"):
        leader_backlog(followers, BASE)


def test_nobody_holding_the_stream_is_not_found_and_an_outage_is_said_first() -> None:
    missing = ("n0", _answer(1, 1))
    with pytest.raises(SourceNotFound, match="no stream 'NOPE'"):
        leader_backlog([missing, ("n1", _answer(1, 1))], replace(BASE, stream="NOPE"))
    with pytest.raises(BrokerUnreachable):
        leader_backlog([("n0", BrokerUnreachable("down")), missing], replace(BASE, stream="NOPE"))
