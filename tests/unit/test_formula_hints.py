"""The scaling-modifiers-* hints: parsed into Hints.scaling_modifiers, the formula compiled
against the declared triggers when the hints are parsed, one problem per bad field (KEDA's
``ValidateAndCompileScalingModifiers``: the formula is mandatory, a target above 0 with it)."""

from __future__ import annotations

from tidescale.hints import parse_hints, validate_hints

P = "tidescale.io/"
FORMULA, TARGET = P + "scaling-modifiers-formula", P + "scaling-modifiers-target"
ACTIVATION, METRIC_TYPE = P + "scaling-modifiers-activation-target", P + "scaling-modifiers-metric-type"


def triggers(*names: str) -> dict[str, str]:
    annotations: dict[str, str] = {}
    for name in names:
        annotations |= {
            P + f"{name}.type": "kafka",
            P + f"{name}.bootstrap-servers": "kafka:9092",
            P + f"{name}.consumer-group": "billing",
            P + f"{name}.topic": "orders",
        }
    return annotations


def problems(**given: str) -> dict[str, str]:
    """Annotation -> expected, for each problem (asserting one per annotation)."""
    found = validate_hints(triggers("orders", "orders-eu") | given)
    named = {p.annotation: p.expected for p in found}
    assert len(named) == len(found), found
    return named


def test_the_four_hints_parse_into_scaling_modifiers() -> None:
    hints = parse_hints(
        triggers("orders", "orders-eu")
        | {FORMULA: "orders + orders_eu", TARGET: "250", ACTIVATION: "5", METRIC_TYPE: "Value"}
    )
    modifiers = hints.scaling_modifiers
    assert modifiers is not None
    assert (modifiers.target, modifiers.activation_target, modifiers.metric_type) == (250, 5, "Value")
    assert modifiers.formula.triggers == {"orders", "orders-eu"}
    assert modifiers.formula.evaluate({"orders": 1, "orders-eu": 2}) == 3


def test_without_a_formula_there_are_no_scaling_modifiers_and_the_defaults_are_keda_s() -> None:
    assert parse_hints(triggers("orders")).scaling_modifiers is None
    modifiers = parse_hints(triggers("orders") | {FORMULA: "orders", TARGET: "1"}).scaling_modifiers
    assert modifiers is not None
    assert (modifiers.activation_target, modifiers.metric_type) == (0, "AverageValue")


def test_a_formula_naming_an_undeclared_trigger_is_one_problem_with_its_position() -> None:
    assert problems(**{FORMULA: "orders + refunds", TARGET: "100"}) == {
        FORMULA: "a trigger name (dashes written as underscores: orders, orders_eu) or a function, "
        "not 'refunds' (at character 10)"
    }


def test_a_formula_without_a_target_asks_for_one() -> None:
    assert problems(**{FORMULA: "orders"}) == {TARGET: f"a number above 0, since {FORMULA} is set"}


def test_a_bad_formula_and_a_missing_target_are_two_problems() -> None:
    assert set(problems(**{FORMULA: "orders +"})) == {FORMULA, TARGET}


def test_the_other_modifier_hints_without_a_formula_ask_for_the_formula_once() -> None:
    found = validate_hints(triggers("orders") | {TARGET: "100", ACTIVATION: "1", METRIC_TYPE: "Value"})
    assert [(p.annotation, p.expected) for p in found] == [
        (FORMULA, f"a formula, since {ACTIVATION} and {METRIC_TYPE} and {TARGET} are set")
    ]
    assert problems(**{TARGET: "100"}) == {FORMULA: f"a formula, since {TARGET} is set"}


def test_a_target_of_zero_a_negative_activation_and_an_unknown_metric_type_are_refused() -> None:
    found = problems(**{FORMULA: "orders", TARGET: "0", ACTIVATION: "-1", METRIC_TYPE: "Utilization"})
    assert set(found) == {TARGET, ACTIVATION, METRIC_TYPE}
    assert "above 0" in found[TARGET]


def test_a_formula_over_a_trigger_whose_own_fields_are_bad_reports_only_the_trigger() -> None:
    given = triggers("orders") | {P + "orders.lag-threshold": "many", FORMULA: "orders", TARGET: "1"}
    assert [p.annotation for p in validate_hints(given)] == [P + "orders.lag-threshold"]
