"""A catalog of wrong hints: each names the annotation at fault, and nothing escapes but HintsInvalid."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidescale.errors import HintError, HintsInvalid
from tidescale.hints import KNOBS, parse_hints, validate_hints

P = "tidescale.io/"
KAFKA = {
    P + "kafka.bootstrap-servers": "kafka-0.kafka:9092",
    P + "kafka.consumer-group": "billing",
    P + "kafka.topic": "orders",
}
RABBIT = {P + "rabbitmq.management-url": "http://rabbitmq:15672", P + "rabbitmq.queue": "jobs"}

# (why it is wrong, the annotations, the annotation the message must name, words the message must hold)
CATALOG: list[tuple[str, dict[str, str], str, str]] = [
    ("bare number as duration", {P + "cooldown": "300"}, P + "cooldown", "duration"),
    ("unknown unit", {P + "polling-interval": "5 sec"}, P + "polling-interval", "duration"),
    ("days are not a unit", {P + "cooldown": "1d"}, P + "cooldown", "duration"),
    ("polling faster than 100ms", {P + "polling-interval": "10ms"}, P + "polling-interval", "from 100ms"),
    (
        "stabilization past the HPA's hour",
        {P + "scale-down-stabilization": "2h"},
        P + "scale-down-stabilization",
        "to 1h",
    ),
    ("negative min", {P + "min-replicas": "-1"}, P + "min-replicas", "whole number from 0"),
    ("zero max", {P + "max-replicas": "0"}, P + "max-replicas", "whole number from 1"),
    ("fractional count", {P + "max-replicas": "2.5"}, P + "max-replicas", "whole number"),
    ("words for a count", {P + "wake-replicas": "two"}, P + "wake-replicas", "whole number"),
    ("zero wake", {P + "wake-replicas": "0"}, P + "wake-replicas", "from 1"),
    (
        "min above max",
        {P + "min-replicas": "5", P + "max-replicas": "3"},
        P + "min-replicas",
        "at most max-replicas (3)",
    ),
    (
        "min above the default max",
        {P + "min-replicas": "11"},
        P + "min-replicas",
        "at most max-replicas (10)",
    ),
    (
        "max below the default min",
        {P + "max-replicas": "1", P + "min-replicas": "2"},
        P + "min-replicas",
        "max-replicas (1)",
    ),
    ("wake above max", {P + "wake-replicas": "20"}, P + "wake-replicas", "at most max-replicas (10)"),
    ("tolerance of 1", {P + "tolerance": "1"}, P + "tolerance", "not including, 1"),
    ("negative tolerance", {P + "tolerance": "-0.1"}, P + "tolerance", "from 0"),
    ("tolerance as percent", {P + "tolerance": "10%"}, P + "tolerance", "number"),
    (
        "policy without period unit",
        {P + "scale-up-policies": "4 pods/15"},
        P + "scale-up-policies",
        "4 pods/15s",
    ),
    (
        "policy of zero pods",
        {P + "scale-down-policies": "0 pods/15s"},
        P + "scale-down-policies",
        "at least 1",
    ),
    ("policy of zero period", {P + "scale-up-policies": "4 pods/0s"}, P + "scale-up-policies", "above 0s"),
    (
        "policy period past the HPA's 30m",
        {P + "scale-up-policies": "4 pods/1h"},
        P + "scale-up-policies",
        "30m",
    ),
    (
        "empty policy in the list",
        {P + "scale-up-policies": "4 pods/15s,,100%/15s"},
        P + "scale-up-policies",
        "empty",
    ),
    ("unknown select", {P + "scale-up-select": "fastest"}, P + "scale-up-select", '"max", "min", "disabled"'),
    ("yes-ish boolean", {P + "paused": "sure"}, P + "paused", '"true" or "false"'),
    (
        "threshold without replicas",
        {P + "fallback-failure-threshold": "3"},
        P + "fallback-replicas",
        "is missing",
    ),
    (
        "replicas without threshold",
        {P + "fallback-replicas": "2"},
        P + "fallback-failure-threshold",
        "is missing",
    ),
    (
        "negative failure threshold",
        {P + "fallback-failure-threshold": "-1", P + "fallback-replicas": "2"},
        P + "fallback-failure-threshold",
        "from 0",
    ),
    (
        "fallback above max",
        {P + "fallback-failure-threshold": "3", P + "fallback-replicas": "50"},
        P + "fallback-replicas",
        "max-replicas",
    ),
    (
        "pinned but not paused",
        {P + "paused": "false", P + "paused-replicas": "2"},
        P + "paused",
        "pinning implies paused",
    ),
    (
        "lease not longer than renew",
        {P + "lease-duration": "10s"},
        P + "lease-duration",
        "longer than lease-renew-deadline",
    ),
    ("renew within 1.2 x retry", {P + "lease-retry-period": "9s"}, P + "lease-retry-period", "1.2 x"),
    ("unknown knob", {P + "max-replica": "3"}, P + "max-replica", "did you mean tidescale.io/max-replicas?"),
    ("British spelling", {P + "scale-up-stabilisation": "1m"}, P + "scale-up-stabilisation", "did you mean"),
    ("opt-in as annotation", {P + "inject": "true"}, P + "inject", "label"),
    (
        "upper-case key",
        {P + "Max-Replicas": "3"},
        P + "Max-Replicas",
        "did you mean tidescale.io/max-replicas?",
    ),
    ("missing topic's cluster", {P + "kafka.topic": "orders"}, P + "kafka.bootstrap-servers", "missing"),
    (
        "missing consumer group",
        {P + "kafka.bootstrap-servers": "kafka:9092"},
        P + "kafka.consumer-group",
        "missing",
    ),
    ("zero lag threshold", {**KAFKA, P + "kafka.lag-threshold": "0"}, P + "kafka.lag-threshold", ""),
    (
        "unknown kafka field",
        {**KAFKA, P + "kafka.topics": "orders"},
        P + "kafka.topics",
        "did you mean tidescale.io/kafka.topic?",
    ),
    (
        "misspelt trigger type as name",
        {P + "kafak.topic": "orders"},
        P + "kafak.type",
        "did you mean tidescale.io/kafka.topic?",
    ),
    ("named trigger without type", {P + "orders.topic": "orders"}, P + "orders.type", '"kafka", "rabbitmq"'),
    (
        "unknown trigger type",
        {P + "orders.type": "sqs", P + "orders.queue": "q"},
        P + "orders.type",
        '"kafka", "rabbitmq"',
    ),
    (
        "shorthand with another type",
        {**RABBIT, P + "rabbitmq.type": "kafka"},
        P + "rabbitmq.type",
        "named after a source type",
    ),
    ("trigger name not a DNS label", {P + "Orders_1.type": "kafka"}, P + "Orders_1.type", "DNS label"),
    (
        "password in the URL",
        {P + "rabbitmq.management-url": "http://guest:guest@rabbitmq:15672", P + "rabbitmq.queue": "jobs"},
        P + "rabbitmq.management-url",
        "password",
    ),
    (
        "queue and pattern together",
        {**RABBIT, P + "rabbitmq.queue-pattern": "jobs-.*"},
        P + "rabbitmq.queue-pattern",
        "queue",
    ),
    (
        "no queue at all",
        {P + "rabbitmq.management-url": "http://rabbitmq:15672"},
        P + "rabbitmq.queue",
        "queue-pattern",
    ),
    ("unknown rabbitmq mode", {**RABBIT, P + "rabbitmq.mode": "bytes"}, P + "rabbitmq.mode", "queue-length"),
]


def test_the_catalog_holds_at_least_thirty_wrong_hint_sets() -> None:
    assert len(CATALOG) >= 30
    assert len({why for why, *_ in CATALOG}) == len(CATALOG)


@pytest.mark.parametrize(("why", "annotations", "annotation", "words"), CATALOG, ids=[c[0] for c in CATALOG])
def test_wrong_hints_yield_a_clear_message_naming_the_annotation(
    why: str, annotations: dict[str, str], annotation: str, words: str
) -> None:
    problems = validate_hints(annotations)
    named = [p for p in problems if p.annotation == annotation]
    assert named, f"{why}: no problem names {annotation}; got {[str(p) for p in problems]}"
    assert any(words in str(p) for p in named), f"{why}: {[str(p) for p in named]}"
    assert all(str(p).startswith(p.annotation + " is ") for p in problems)
    with pytest.raises(HintsInvalid) as raised:
        parse_hints(annotations)
    assert [str(p) for p in raised.value.problems] == [str(p) for p in problems]


_KEYS = st.one_of(
    st.sampled_from([k.annotation for k in KNOBS]),
    st.sampled_from([*KAFKA, *RABBIT, P + "orders.type", P + "orders.topic", P + "status", "app/x"]),
    st.text(min_size=0, max_size=20).map(lambda s: P + s),
    st.builds(lambda a, b: f"{P}{a}.{b}", st.text(max_size=8), st.text(max_size=12)),
)
_VALUES = st.one_of(
    st.sampled_from(
        ["0", "1", "-1", "10s", "5m", "true", "kafka", "rabbitmq", "4 pods/15s", "", " ", "nan", "1e999"]
    ),
    st.text(max_size=30),
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_KEYS, _VALUES, max_size=8))
def test_any_annotations_give_hints_or_hints_invalid_and_never_anything_else(
    annotations: dict[str, str],
) -> None:
    problems = validate_hints(annotations)
    assert all(isinstance(p, HintError) and p.annotation.startswith(P) for p in problems)
    if not problems:
        parse_hints(annotations)
        return
    with pytest.raises(HintsInvalid) as raised:
        parse_hints(annotations)
    assert [str(p) for p in raised.value.problems] == [str(p) for p in problems]
