"""The waker's batching: triggers grouped by cluster, one OffsetFetch plan per group, shared arithmetic."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidescale.sources.base import Scope
from tidescale.sources.kafka._source import (
    KafkaSettings,
    assemble_snapshot,
    fetch_plan,
    needs_log_start,
    select_partitions,
)
from tidescale.sources.kafka._source import _offset_fetch_groups as offset_fetch_groups
from tidescale.sources.rabbitmq._source import RabbitMQSettings
from tidescale.waker import by_cluster

KAFKA = KafkaSettings(name="kafka", bootstrap_servers=("k:9092",), consumer_group="g", topics=("orders",))
RABBIT = RabbitMQSettings(name="rabbitmq", management_url="http://r:15672", queue="jobs")


def test_equal_triggers_of_many_deployments_are_one_trigger_of_one_batch() -> None:
    deployments = [(KAFKA,), (replace(KAFKA),), (KAFKA, RABBIT), (replace(RABBIT),)]
    batches = by_cluster(deployments)
    assert list(batches.values()) == [[KAFKA], [RABBIT]]


def test_triggers_naming_other_brokers_or_identities_go_to_other_batches() -> None:
    other_brokers = replace(KAFKA, bootstrap_servers=("k2:9092",))
    other_group = replace(KAFKA, consumer_group="h")
    other_user = replace(KAFKA, sasl="plain", sasl_username_env="U", sasl_password_env="P")
    other_vhost = replace(RABBIT, vhost="v2")  # one management API serves every vhost
    batches = by_cluster([(KAFKA, other_brokers, other_group, other_user, RABBIT, other_vhost)])
    assert sorted(map(len, batches.values())) == [1, 1, 2, 2]
    assert batches[KAFKA.cluster_key] == [KAFKA, other_group]
    assert batches[RABBIT.cluster_key] == [RABBIT, other_vhost]


def test_a_group_is_fetched_once_for_the_union_of_its_triggers_partitions() -> None:
    one = replace(KAFKA, name="a")
    two = replace(KAFKA, name="b", topics=("orders", "refunds"))
    plan = fetch_plan(
        {
            one: [("orders", 0), ("orders", 1)],
            two: [("orders", 1), ("orders", 2), ("refunds", 0)],
            replace(KAFKA, consumer_group="h"): [],
        }
    )
    assert plan == {"g": (("orders", (0, 1, 2)), ("refunds", (0,))), "h": ()}


def test_a_group_with_a_trigger_naming_no_topic_fetches_every_committed_offset() -> None:
    no_topic = replace(KAFKA, name="b", topics=())
    assert fetch_plan({KAFKA: [("orders", 0)], no_topic: None}) == {"g": None}
    assert fetch_plan({no_topic: None, KAFKA: [("orders", 0)]}) == {"g": None}


_PARTITIONS = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 5)), max_size=8)


@given(st.lists(st.tuples(st.sampled_from(["g", "h"]), st.one_of(st.none(), _PARTITIONS)), max_size=6))
def test_the_plan_asks_every_group_for_at_least_what_each_of_its_triggers_wants(
    triggers: list[tuple[str, list[tuple[str, int]] | None]],
) -> None:
    wanted = {
        replace(KAFKA, name=f"t{i}", consumer_group=group): partitions
        for i, (group, partitions) in enumerate(triggers)
    }
    plan = fetch_plan(wanted)
    assert set(plan) == {s.consumer_group for s in wanted}
    for settings, partitions in wanted.items():
        asked = plan[settings.consumer_group]
        if partitions is None:
            assert asked is None
        elif asked is not None:
            flat = {(t, p) for t, parts in asked for p in parts}
            assert set(partitions) <= flat


@given(
    committed=st.dictionaries(st.integers(0, 7), st.one_of(st.none(), st.integers(0, 50))),
    other_partitions=st.integers(0, 20),
    partitions=st.one_of(st.none(), st.frozensets(st.integers(0, 7), min_size=1)),
)
def test_a_snapshot_from_batch_wide_offsets_equals_one_from_the_triggers_own(
    committed: dict[int, int | None], other_partitions: int, partitions: frozenset[int] | None
) -> None:
    settings = replace(KAFKA, partitions=partitions)
    layout = {"orders": 8}
    wanted = select_partitions(layout, settings)
    own_committed = {("orders", p): committed.get(p) for p in range(8)}
    own_end = {("orders", p): 100 + p for p in range(8)}
    others = {("other", p): p for p in range(other_partitions)}
    alone = assemble_snapshot(
        settings,
        layout=layout,
        wanted=wanted,
        committed={tp: own_committed[tp] for tp in wanted},
        log_end={tp: own_end[tp] for tp in wanted},
        log_start={},
        scope=Scope.GROUP,
    )
    batched = assemble_snapshot(
        settings,
        layout=layout,
        wanted=wanted,
        committed={**own_committed, **others},
        log_end={**own_end, **others},
        log_start=others,
        scope=Scope.GROUP,
    )
    assert batched == alone


def test_log_start_offsets_are_read_only_for_the_earliest_rule() -> None:
    assert not needs_log_start(KAFKA)
    assert needs_log_start(replace(KAFKA, offset_reset_policy="earliest"))
    assert not needs_log_start(
        replace(KAFKA, offset_reset_policy="earliest", scale_to_zero_on_invalid_offset=True)
    )


def test_the_multi_group_offset_fetch_is_version_8_with_null_topics_for_every_committed_offset() -> None:
    request = offset_fetch_groups()([("g", None), ("h", (("t", (0, 2)),))])
    built = request.prepare({9: (1, 9)})
    assert built.API_VERSION == 8
    # compact arrays and strings are length + 1; null is 0; every struct ends in empty tagged fields
    assert built.encode() == (
        b"\x03"  # two groups
        b"\x02g\x00\x00"  # "g", topics null, tags
        b"\x02h"
        b"\x02"
        b"\x02t"
        b"\x03\x00\x00\x00\x00\x00\x00\x00\x02"
        b"\x00"
        b"\x00"  # "h": t [0, 2]
        b"\x00"  # require_stable false
        b"\x00"
    )


def test_a_broker_without_offset_fetch_version_8_is_refused_at_send_so_groups_go_one_by_one() -> None:
    request = offset_fetch_groups()([("g", None)])
    with pytest.raises(NotImplementedError):
        request.prepare({9: (1, 7)})
