"""Each pod's share of the lag in the status, at a leader cost that does not grow with the replicas:
attributed from the consumer group's assignment (no request to any peer), or sampled from at most
PEER_SAMPLE peers' /v1/lag per refresh, rotating so that every pod is asked in turn."""

from __future__ import annotations

import asyncio
import math
import struct
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidescale._peer_share import PEER_SAMPLE, Attributing, attribute, next_sample
from tidescale.agent import PEER_REFRESH_SECONDS, Agent, AgentEnv, _Leadership
from tidescale.election import Term
from tidescale.hints import parse_hints
from tidescale.sources.base import Measurement, Scope
from tidescale.sources.kafka._lag import GroupMember
from tidescale.sources.kafka._settings import parse_kafka_settings
from tidescale.sources.kafka._source import KafkaSource

ENV = AgentEnv(pod_name="orders-0000", namespace="shop", pod_ip="10.0.0.0", deployment="orders")
TERM = Term(holder=ENV.pod_name, transitions=1, resource_version="1")

# ---------------------------------------------------------------------- pure: attribute


def test_a_pods_share_is_the_lag_of_the_partitions_its_address_holds() -> None:
    detail = {"orders/0": 5.0, "orders/1": 7.0, "orders/2": 11.0, "orders/3": 13.0}
    owners = {"orders/0": "10.0.0.1", "orders/1": "10.0.0.1", "orders/2": "10.0.0.2"}
    addresses = {"a": "10.0.0.1", "b": "10.0.0.2", "c": "10.0.0.3"}
    assert attribute([detail], [owners], addresses) == {"a": 12.0, "b": 11.0, "c": 0.0}


def test_shares_of_several_triggers_add_up_per_pod() -> None:
    shares = attribute(
        [{"a/0": 1.0}, {"b/0": 2.0, "b/1": 4.0}],
        [{"a/0": "10.0.0.1"}, {"b/0": "10.0.0.1", "b/1": "10.0.0.2"}],
        {"x": "10.0.0.1", "y": "10.0.0.2"},
    )
    assert shares == {"x": 3.0, "y": 4.0}


units = st.lists(st.integers(0, 40), unique=True, max_size=30).map(lambda ps: [f"t/{p}" for p in ps])


@given(
    units=units,
    lags=st.lists(st.floats(0, 1e6, allow_nan=False), min_size=30, max_size=30),
    holders=st.lists(st.integers(0, 12), min_size=30, max_size=30),
    pods=st.integers(0, 10),
)
def test_attribution_counts_every_unit_held_at_a_pods_address_once_and_nothing_else(
    units: list[str], lags: list[float], holders: list[int], pods: int
) -> None:
    detail = dict(zip(units, lags, strict=False))
    # Holder 0 is "no member holds it" (a rebalance); addresses above ``pods`` are consumers
    # outside the Deployment.
    owners = {unit: f"10.0.0.{h}" for unit, h in zip(units, holders, strict=False) if h}
    addresses = {f"pod-{i}": f"10.0.0.{i}" for i in range(1, pods + 1)}
    shares = attribute([detail], [owners], addresses)
    assert set(shares) == set(addresses)
    for pod, address in addresses.items():
        expected = sum(lag for unit, lag in detail.items() if owners.get(unit) == address)
        assert math.isclose(shares[pod], expected, rel_tol=1e-9, abs_tol=1e-6)
    at_pods = sum(lag for unit, lag in detail.items() if owners.get(unit) in set(addresses.values()))
    assert math.isclose(sum(shares.values()), at_pods, rel_tol=1e-9, abs_tol=1e-6)


# ---------------------------------------------------------------------- pure: next_sample


@given(
    names=st.lists(st.text("abcdefgh", min_size=1, max_size=4), unique=True, max_size=60),
    size=st.integers(1, 12),
)
def test_successive_samples_ask_every_pod_once_before_any_twice(names: list[str], size: int) -> None:
    asked: list[str] = []
    after: str | None = None
    rounds = math.ceil(len(names) / size) if names else 1
    for _ in range(rounds):
        sample = next_sample(names, after, size)
        assert len(sample) <= size
        assert len(set(sample)) == len(sample)
        asked.extend(sample)
        after = sample[-1] if sample else None
    assert set(asked) == set(names)
    first_round = asked[: len(names)]
    assert len(set(first_round)) == len(first_round)


def test_a_sample_continues_after_a_pod_that_has_gone() -> None:
    assert next_sample(["a", "b", "d", "e"], "c", 2) == ["d", "e"]
    assert next_sample(["a", "b", "d", "e"], "e", 2) == ["a", "b"]


# ---------------------------------------------------------------------- the leader's refresh


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Elector:
    def term(self) -> Term:
        return TERM


class Http:
    """Peers' /v1/lag, every request recorded."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def get(self, url: str) -> Any:
        self.asked.append(url)
        http = self

        class Answer:
            content = b'{"triggers": [{"trigger": "orders", "value": 3}]}'

            def raise_for_status(self) -> None:
                assert http is not None

        return Answer()

    async def aclose(self) -> None:
        return None


class OwningSource:
    """A source that can say who consumes each partition (one broker request per call)."""

    def __init__(self, owners: dict[str, str] | None) -> None:
        self.owners_asked = 0
        self._owners = owners

    async def owners(self, settings: object) -> dict[str, str] | None:
        self.owners_asked += 1
        return self._owners

    async def measure(self, settings: object, scope: Scope) -> Measurement:
        raise AssertionError("the leader's refresh must not measure")

    async def close(self) -> None:
        return None


class PlainSource:
    async def measure(self, settings: object, scope: Scope) -> Measurement:
        raise AssertionError("the leader's refresh must not measure")

    async def close(self) -> None:
        return None


def leadership(source: object, replicas: int) -> tuple[_Leadership, Clock]:
    clock = Clock()
    agent = Agent(ENV, cast(Any, object()), clock=clock)
    hints = parse_hints(
        {
            "tidescale.io/orders.type": "kafka",
            "tidescale.io/orders.bootstrap-servers": "kafka:9092",
            "tidescale.io/orders.consumer-group": "billing",
            "tidescale.io/orders.topic": "orders",
        }
    )
    agent.hints = hints
    agent._sources = {"orders": (hints.triggers[0], cast(Any, source))}
    # Every pod but the leader itself (whose own share the sample would measure locally).
    agent._peers = {f"orders-{i:04d}": f"10.0.{i // 250}.{i % 250}" for i in range(1, replicas + 1)}
    return _Leadership(agent, cast(Any, Elector()), TERM), clock


def group_reading(partitions: int) -> Measurement:
    detail = {f"orders/{p}": float(p) for p in range(partitions)}
    return Measurement(
        trigger="orders", value=sum(detail.values()), target=10, active=True, detail=detail, taken_at=0.0
    )


@pytest.mark.parametrize("replicas", [10, 100, 1000])
async def test_with_attribution_the_leader_asks_no_peer_and_the_broker_once_per_refresh(
    replicas: int,
) -> None:
    owners = {f"orders/{p}": f"10.0.0.{1 + p % 3}" for p in range(12)}
    source = OwningSource(owners)
    lead, clock = leadership(source, replicas)
    http = Http()
    lead._peer_http = http
    await lead._maybe_refresh_peers((group_reading(12),))
    assert http.asked == []
    assert source.owners_asked == 1
    pods = lead.agent._peer_lag
    assert len(pods) == replicas
    assert pods["orders-0001"] == sum(float(p) for p in range(12) if p % 3 == 0)
    assert sum(v or 0.0 for v in pods.values()) == sum(float(p) for p in range(12))
    assert (lead._pods_from or "").startswith("group description")
    clock.now += PEER_REFRESH_SECONDS - 0.1
    await lead._maybe_refresh_peers((group_reading(12),))
    assert source.owners_asked == 1, "no second broker request within the refresh period"


@pytest.mark.parametrize("replicas", [10, 100, 1000])
async def test_without_attribution_the_leader_asks_at_most_the_sample_per_refresh(replicas: int) -> None:
    lead, clock = leadership(PlainSource(), replicas)
    http = Http()
    lead._peer_http = http
    refreshes = math.ceil(replicas / PEER_SAMPLE)
    for _ in range(refreshes):
        before = len(http.asked)
        await lead._maybe_refresh_peers((group_reading(12),))
        assert len(http.asked) - before <= PEER_SAMPLE
        clock.now += PEER_REFRESH_SECONDS
    assert len(set(http.asked)) == replicas, "every peer asked once in ceil(replicas / sample) refreshes"
    assert all(value == 3.0 for value in lead.agent._peer_lag.values())
    asked = min(replicas, PEER_SAMPLE)
    assert (
        lead._pods_from
        == f"sampled: {asked} of {replicas} pods' /v1/lag per refresh, the others as last answered"
    )


async def test_a_failed_trigger_or_members_told_apart_by_client_id_fall_back_to_the_sample() -> None:
    lead, _ = leadership(OwningSource(None), 20)
    lead._peer_http = Http()
    await lead._maybe_refresh_peers((group_reading(12),))
    assert (lead._pods_from or "").startswith("sampled")
    lead, _ = leadership(OwningSource({"orders/0": "10.0.0.1"}), 20)
    lead._peer_http = Http()
    await lead._maybe_refresh_peers(())  # the trigger failed this tick: nothing to attribute
    assert (lead._pods_from or "").startswith("sampled")


# ---------------------------------------------------------------------- the Kafka source's owners


def assignment(*pairs: tuple[str, list[int]]) -> bytes:
    blob = struct.pack(">hi", 0, len(pairs))
    for topic, partitions in pairs:
        name = topic.encode()
        blob += struct.pack(">h", len(name)) + name + struct.pack(">i", len(partitions))
        blob += struct.pack(f">{len(partitions)}i", *partitions)
    return blob + struct.pack(">i", -1)


async def test_the_kafka_source_names_each_partitions_member_address_from_one_describe() -> None:
    source = KafkaSource(parse_kafka_settings("orders", kafka_fields()))
    assert isinstance(source, Attributing)
    calls: list[str] = []

    async def ensure() -> None:
        calls.append("connect")

    async def coordinator(group: str) -> int:
        calls.append("coordinator")
        return 1

    async def describe(group: str, node: int) -> list[GroupMember]:
        calls.append("describe")
        return [
            GroupMember(
                member_id="m1",
                client_id="c",
                client_host="/10.0.0.1",
                assignment=assignment(("orders", [0, 2])),
            ),
            GroupMember(
                member_id="m2", client_id="c", client_host="10.0.0.2", assignment=assignment(("orders", [1]))
            ),
            GroupMember(member_id="m3", client_id="c", client_host="/10.0.0.3", assignment=b""),
        ]

    source._ensure_client = ensure  # type: ignore[method-assign]
    source._coordinator = coordinator  # type: ignore[method-assign]
    source._describe_group = describe  # type: ignore[method-assign]
    owners = await source.owners(parse_kafka_settings("orders", kafka_fields()))
    assert owners == {"orders/0": "10.0.0.1", "orders/2": "10.0.0.1", "orders/1": "10.0.0.2"}
    assert calls.count("describe") == 1
    pattern = parse_kafka_settings("orders", kafka_fields(**{"member-client-id-pattern": "orders-.*"}))
    assert await source.owners(pattern) is None


def kafka_fields(**extra: str) -> dict[str, str]:
    return {
        "bootstrap-servers": "kafka:9092",
        "consumer-group": "billing",
        "topic": "orders",
        **extra,
    }


# ---------------------------------------------------------------------- a peer's answer is hostile


async def _serve_once(body: bytes) -> tuple[asyncio.AbstractServer, int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_peer_answer_is_read_over_http1_and_bounded_in_size() -> None:
    from tidescale._http1 import BodyTooLarge
    from tidescale.agent import PEER_ANSWER_LIMIT, _PeerHttp

    small, small_port = await _serve_once(b'{"triggers": [{"value": 3}]}')
    huge, huge_port = await _serve_once(b"x" * (PEER_ANSWER_LIMIT + 1))
    async with small, huge:
        http = _PeerHttp(timeout=5.0)
        answer = await http.get(f"http://127.0.0.1:{small_port}/v1/lag")
        assert answer.content == b'{"triggers": [{"value": 3}]}'
        with pytest.raises(BodyTooLarge):
            await http.get(f"http://127.0.0.1:{huge_port}/v1/lag")


@pytest.mark.parametrize(
    "content", [b"[1, 2]", b'{"triggers": 7}', b'{"triggers": [1, {"value": 2}]}', b"not json"]
)
async def test_a_peer_answer_of_the_wrong_shape_is_a_gap_not_a_failed_tick(content: bytes) -> None:
    lead, _ = leadership(PlainSource(), 1)

    class Shaped(Http):
        async def get(self, url: str) -> Any:
            answer = await super().get(url)
            answer.content = content
            return answer

    http = Shaped()
    lead._peer_http = http
    await lead._maybe_refresh_peers((group_reading(12),))
    assert len(http.asked) == 1
    assert lead.agent._peer_lag == {"orders-0001": None}
