"""The annotation contract: what parses, into what, and the reference generated from it."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from tidescale.errors import HintsInvalid
from tidescale.hints import (
    KNOBS,
    Fallback,
    Hints,
    LeaseTimings,
    RatePolicy,
    ScalingRules,
    format_duration,
    parse_hints,
    parse_rate_policies,
    reference_markdown,
    validate_hints,
)

P = "tidescale.io/"
KAFKA = {
    P + "kafka.bootstrap-servers": "kafka-0.kafka:9092",
    P + "kafka.consumer-group": "billing",
    P + "kafka.topic": "orders",
}


def test_a_deployment_without_hints_gets_the_defaults_and_no_triggers() -> None:
    hints = parse_hints({"app.kubernetes.io/name": "billing", "deployment.kubernetes.io/revision": "3"})
    assert hints == Hints()
    assert hints.triggers == ()
    assert validate_hints({}) == ()


def test_the_defaults_are_the_contracts_and_the_kubernetes_ones() -> None:
    hints = Hints()
    assert (hints.min_replicas, hints.max_replicas, hints.wake_replicas) == (1, 10, 1)
    assert (hints.polling_interval, hints.cooldown, hints.tolerance) == (1.0, 300.0, 0.1)
    assert hints.scale_up == ScalingRules(
        stabilization=0.0,
        policies=(
            RatePolicy(kind="pods", value=4, period=15.0),
            RatePolicy(kind="percent", value=100, period=15.0),
        ),
        select="max",
    )
    assert hints.scale_down == ScalingRules(
        stabilization=300.0, policies=(RatePolicy(kind="percent", value=100, period=15.0),), select="max"
    )
    assert hints.lease == LeaseTimings(duration=15.0, renew_deadline=10.0, retry_period=2.0)
    assert (hints.fallback, hints.paused, hints.paused_replicas, hints.dry_run) == (None, False, None, False)


def test_every_documented_default_parses_to_the_dataclass_default() -> None:
    given = {knob.annotation: knob.default for knob in KNOBS if knob.default is not None}
    # Giving a behaviour knob, even at its default, takes the HPA's behaviour path (as a
    # ScaledObject's advanced.horizontalPodAutoscalerConfig.behavior does): that alone differs.
    assert parse_hints(given) == replace(Hints(), behavior=True)


def test_every_documented_example_parses_on_its_own() -> None:
    for knob in KNOBS:
        given = {knob.annotation: knob.example}
        if knob.name == "fallback-failure-threshold":
            given[P + "fallback-replicas"] = "1"
        if knob.name == "fallback-replicas":
            given[P + "fallback-failure-threshold"] = "3"
        if knob.name == "lease-renew-deadline":
            given[P + "lease-duration"] = "30s"
        if knob.name == "lease-retry-period":
            given[P + "lease-renew-deadline"] = "5s"
        if knob.name.startswith("scaling-modifiers-"):  # a formula needs its triggers and a target
            for trigger in ("orders", "payments"):
                given[P + trigger + ".type"] = "kafka"
                given |= {k.replace("kafka.", trigger + "."): v for k, v in KAFKA.items()}
            given.setdefault(P + "scaling-modifiers-formula", "(orders + payments) / 2")
            given.setdefault(P + "scaling-modifiers-target", "100")
        assert validate_hints(given) == (), knob.name


def test_the_common_case_of_one_topic_with_min_and_max_takes_five_annotations() -> None:
    given = {**KAFKA, P + "min-replicas": "0", P + "max-replicas": "12"}
    hints = parse_hints(given)
    assert len(given) == 5
    assert (hints.min_replicas, hints.max_replicas) == (0, 12)
    (trigger,) = hints.triggers
    assert trigger.name == "kafka"
    assert hints.type_of("kafka") == "kafka"
    assert hints.metric_of("kafka") == "lag"


def test_every_knob_parses_to_its_type() -> None:
    hints = parse_hints(
        {
            P + "min-replicas": "2",
            P + "max-replicas": "40",
            P + "wake-replicas": "3",
            P + "polling-interval": "500ms",
            P + "cooldown": "10m",
            P + "tolerance": "0.05",
            P + "scale-up-stabilization": "30s",
            P + "scale-down-stabilization": "1m30s",
            P + "scale-up-policies": "10 pods/30s",
            P + "scale-up-select": "Min",
            P + "scale-down-policies": "10%/1m, 5 pods/1m",
            P + "scale-down-select": "disabled",
            P + "fallback-failure-threshold": "3",
            P + "fallback-replicas": "6",
            P + "dry-run": "true",
            P + "lease-duration": "30s",
            P + "lease-renew-deadline": "20s",
            P + "lease-retry-period": "4s",
        }
    )
    assert (hints.min_replicas, hints.max_replicas, hints.wake_replicas) == (2, 40, 3)
    assert (hints.polling_interval, hints.cooldown, hints.tolerance) == (0.5, 600.0, 0.05)
    assert hints.scale_up == ScalingRules(
        stabilization=30.0, policies=(RatePolicy(kind="pods", value=10, period=30.0),), select="min"
    )
    assert hints.scale_down == ScalingRules(
        stabilization=90.0,
        policies=(
            RatePolicy(kind="percent", value=10, period=60.0),
            RatePolicy(kind="pods", value=5, period=60.0),
        ),
        select="disabled",
    )
    assert hints.fallback == Fallback(failure_threshold=3, replicas=6)
    assert hints.dry_run is True
    assert hints.lease == LeaseTimings(duration=30.0, renew_deadline=20.0, retry_period=4.0)


def test_paused_replicas_implies_paused() -> None:
    hints = parse_hints({P + "paused-replicas": "0"})
    assert (hints.paused, hints.paused_replicas) == (True, 0)
    assert parse_hints({P + "paused": "true"}).paused_replicas is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "4 pods/15s, 100%/15s",
            (RatePolicy(kind="pods", value=4, period=15), RatePolicy(kind="percent", value=100, period=15)),
        ),
        ("1 pod/1m", (RatePolicy(kind="pods", value=1, period=60),)),
        ("10%/1m30s", (RatePolicy(kind="percent", value=10, period=90),)),
        ("200 % / 30m", (RatePolicy(kind="percent", value=200, period=1800),)),
    ],
)
def test_rate_policies_are_written_as_pods_or_percent_per_period(
    text: str, expected: tuple[RatePolicy, ...]
) -> None:
    assert parse_rate_policies(P + "scale-up-policies", text) == expected


def test_a_rate_policy_prints_as_it_is_written() -> None:
    assert [str(p) for p in parse_rate_policies("x", "4 pods/15s, 100%/15s, 1 pod/1m30s")] == [
        "4 pods/15s",
        "100%/15s",
        "1 pod/1m30s",
    ]


def test_durations_print_in_the_hints_own_notation() -> None:
    assert [format_duration(s) for s in (0, 0.25, 15, 60, 90, 300, 3600, 5400)] == [
        "0s",
        "250ms",
        "15s",
        "1m",
        "1m30s",
        "5m",
        "1h",
        "90m",
    ]


def test_annotations_the_agent_writes_itself_are_not_hints() -> None:
    given = {P + "status": "{not: hints}", P + "park-epoch": "7", P + "park-record": "whatever", **KAFKA}
    assert validate_hints(given) == ()


def test_the_park_ack_timeout_is_a_hint_checked_like_any_other() -> None:
    assert parse_hints({**KAFKA}).park_ack_timeout == 30.0
    assert parse_hints({P + "park-ack-timeout": "1m", **KAFKA}).park_ack_timeout == 60.0
    (problem,) = validate_hints({P + "park-ack-timeout": "30", **KAFKA})
    assert problem.annotation == P + "park-ack-timeout"


def test_several_named_triggers_each_have_their_type_and_metric() -> None:
    hints = parse_hints(
        {
            P + "orders.type": "kafka",
            P + "orders.bootstrap-servers": "kafka:9092",
            P + "orders.consumer-group": "billing",
            P + "refunds.type": "rabbitmq",
            P + "refunds.management-url": "http://rabbitmq:15672",
            P + "refunds.queue": "refunds",
            P + "rates.type": "RabbitMQ",
            P + "rates.management-url": "http://rabbitmq:15672",
            P + "rates.queue": "refunds",
            P + "rates.mode": "message-rate",
        }
    )
    assert [t.name for t in hints.triggers] == ["orders", "rates", "refunds"]
    assert dict(hints.trigger_types) == {"orders": "kafka", "rates": "rabbitmq", "refunds": "rabbitmq"}
    assert dict(hints.trigger_metrics) == {
        "orders": "lag",
        "rates": "message rate",
        "refunds": "queue length",
    }


def test_a_shorthand_trigger_may_state_its_own_type() -> None:
    assert parse_hints({**KAFKA, P + "kafka.type": "kafka"}).type_of("kafka") == "kafka"


def test_every_problem_of_a_deployment_comes_back_in_one_call() -> None:
    problems = validate_hints(
        {
            P + "min-replicas": "-1",
            P + "cooldown": "5",
            P + "scale-up-select": "fastest",
            P + "orders.type": "kafka",
            P + "max-replica": "3",
        }
    )
    named = {p.annotation for p in problems}
    assert {
        P + "min-replicas",
        P + "cooldown",
        P + "scale-up-select",
        P + "max-replica",
        P + "orders.bootstrap-servers",
        P + "orders.consumer-group",
    } <= named
    with pytest.raises(HintsInvalid) as raised:
        parse_hints({P + "min-replicas": "-1", P + "cooldown": "5"})
    assert len(raised.value.problems) == 2


def test_an_unknown_knob_suggests_the_closest_one() -> None:
    (problem,) = validate_hints({P + "scale-down-stabilisation": "5m"})
    assert "did you mean tidescale.io/scale-down-stabilization?" in str(problem)


def test_an_unknown_trigger_field_suggests_the_closest_field() -> None:
    problems = validate_hints({**KAFKA, P + "kafka.lag-treshold": "50"})
    assert [p.annotation for p in problems] == [P + "kafka.lag-treshold"]
    assert "did you mean tidescale.io/kafka.lag-threshold?" in str(problems[0])


def test_a_misspelt_source_type_as_trigger_name_suggests_the_type() -> None:
    problems = validate_hints({P + "kafak.topic": "orders"})
    assert [p.annotation for p in problems] == [P + "kafak.type"]
    assert "did you mean tidescale.io/kafka.topic?" in str(problems[0])


def test_a_problem_reads_as_annotation_value_and_expected_form() -> None:
    (problem,) = validate_hints({P + "cooldown": "5"})
    assert str(problem) == (
        'tidescale.io/cooldown is \'5\': expected a duration such as "30s", "5m" or "1m30s" from 0s to 24h'
        " (did you mean '5s'?)"  # KEDA's bare seconds (cooldownPeriod: 300): the unit is suggested
    )
    assert (problem.annotation, problem.value) == (P + "cooldown", "5")


def test_the_reference_in_the_docs_is_what_the_code_generates() -> None:
    reference = Path(__file__).resolve().parents[2] / "docs" / "hints-reference.md"
    assert reference.read_text(encoding="utf-8") == reference_markdown(), (
        "docs/hints-reference.md is out of date: run .venv/bin/python tools/gen_hints_reference.py"
    )


def test_the_reference_lists_every_knob_and_every_trigger_field() -> None:
    from tidescale.sources.registry import TRIGGER_TYPES, field_docs

    text = reference_markdown()
    for knob in KNOBS:
        assert f"`{knob.annotation}`" in text
    for source_type in TRIGGER_TYPES:
        for doc in field_docs(source_type):
            assert f"`tidescale.io/{source_type}.{doc.field}`" in text


def _keda_mapping_names() -> set[str]:
    text = (Path(__file__).resolve().parents[2] / "docs" / "keda-mapping.md").read_text(encoding="utf-8")
    return set(re.findall(r"tidescale\.io/[a-z0-9<>.-]+", text))


def test_every_annotation_in_the_keda_mapping_exists() -> None:
    from tidescale.sources.registry import TRIGGER_TYPES, field_docs

    known = {knob.annotation for knob in KNOBS} | {P + "inject"}
    known |= {f"{P}{name}.{field}" for name in ("<trigger>", "orders") for field in ("type", "<field>")}
    for source_type in TRIGGER_TYPES:
        known |= {f"{P}{source_type}.{doc.field}" for doc in field_docs(source_type)}
    assert _keda_mapping_names() - known == set()


def test_the_keda_mapping_covers_every_knob_and_trigger_field() -> None:
    from tidescale.sources.registry import TRIGGER_TYPES, field_docs

    wanted = {knob.annotation for knob in KNOBS}
    for source_type in TRIGGER_TYPES:
        wanted |= {f"{P}{source_type}.{doc.field}" for doc in field_docs(source_type)}
    assert wanted - _keda_mapping_names() == set()
