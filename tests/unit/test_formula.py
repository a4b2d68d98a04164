"""The scaling-modifiers formula evaluator (tidescale._formula): each operator, precedence, the
functions, compile-time problems (with their position) and evaluation errors."""

from __future__ import annotations

import pytest

from tidescale._formula import (
    MAX_DEPTH,
    MAX_FORMULA_CHARS,
    MAX_NODES,
    FormulaEvaluationError,
    compile_formula,
)
from tidescale.errors import HintError, SourceError

KEY = "tidescale.io/scaling-modifiers-formula"
TRIGGERS = ("orders", "payments", "orders-eu")
VALUES = {"orders": 30.0, "payments": 12.0, "orders-eu": 5.0}


def value(text: str, values: dict[str, float] | None = None) -> float:
    return compile_formula(KEY, text, TRIGGERS).evaluate(VALUES if values is None else values)


def problem(text: str, triggers: tuple[str, ...] = TRIGGERS) -> HintError:
    with pytest.raises(HintError) as caught:
        compile_formula(KEY, text, triggers)
    assert caught.value.annotation == KEY
    return caught.value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("orders + payments", 42.0),
        ("orders - payments", 18.0),
        ("orders * payments", 360.0),
        ("orders / payments", 2.5),
        ("orders % 7", 2.0),
        ("-7 % 3", -1.0),  # Go's math.Mod: the sign of the dividend (Python's % gives 2)
        ("7 % -3", 1.0),
        ("2 ** 10", 1024.0),
        ("2 ^ 3", 8.0),
        ("-orders", -30.0),
        ("+orders", 30.0),
        ("(orders + payments) / 2", 21.0),
        ("orders_eu * 2", 10.0),
        ("1.5e2 + .5", 150.5),
    ],
)
def test_each_arithmetic_operator_computes_as_expr_lang_does(text: str, expected: float) -> None:
    assert value(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("orders > 20 ? 1 : 0", 1.0),
        ("orders < 20 ? 1 : 0", 0.0),
        ("orders >= 30 ? 1 : 0", 1.0),
        ("orders <= 29 ? 1 : 0", 0.0),
        ("orders == 30 ? 1 : 0", 1.0),
        ("orders != 30 ? 1 : 0", 0.0),
        ("orders > 1 && payments > 100 ? 1 : 0", 0.0),
        ("orders > 1 and payments > 1 ? 1 : 0", 1.0),
        ("orders > 100 || payments > 1 ? 1 : 0", 1.0),
        ("orders > 100 or payments > 100 ? 1 : 0", 0.0),
        ("!(orders > 1) ? 1 : 0", 0.0),
        ("not (orders > 100) ? 1 : 0", 1.0),
        ("(orders > 1) == true ? 1 : 0", 1.0),
        ("false ? 1 : 2", 2.0),
    ],
)
def test_comparisons_and_boolean_operators_choose_the_ternary_branch(text: str, expected: float) -> None:
    assert value(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 + 2 * 3", 7.0),
        ("(1 + 2) * 3", 9.0),
        ("10 - 4 - 3", 3.0),  # left-associative
        ("64 / 4 / 2", 8.0),
        ("2 ** 3 ** 2", 512.0),  # right-associative
        ("-2 ** 2", -4.0),  # unary minus binds looser than power, as in expr-lang
        ("2 * -3", -6.0),
        ("1 + 2 > 2 ? 10 : 20", 10.0),  # arithmetic before comparison
        ("true || false && false ? 1 : 0", 1.0),  # && before ||
        ("false ? 1 : true ? 2 : 3", 2.0),  # the ternary nests to the right
        ("orders > 2 ? orders : payments", 30.0),
    ],
)
def test_precedence_and_associativity_follow_expr_lang(text: str, expected: float) -> None:
    assert value(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("min(orders, payments, 7)", 7.0),
        ("max(orders, payments)", 30.0),
        ("max(3)", 3.0),
        ("abs(payments - orders)", 18.0),
        ("floor(2.7)", 2.0),
        ("floor(-2.2)", -3.0),
        ("ceil(2.1)", 3.0),
        ("ceil(-2.7)", -2.0),
        ("round(2.5)", 3.0),  # Go's math.Round: half away from zero
        ("round(-2.5)", -3.0),
        ("round(2.4)", 2.0),
        ("ceil(orders / 7) + floor(payments / 5)", 7.0),
    ],
)
def test_the_functions_compute_as_expr_lang_does(text: str, expected: float) -> None:
    assert value(text) == expected


def test_the_ternary_and_boolean_operators_short_circuit_so_a_guarded_division_has_a_value() -> None:
    zero = {"orders": 30.0, "payments": 0.0, "orders-eu": 0.0}
    assert value("payments != 0 ? orders / payments : 0", zero) == 0.0
    assert value("payments == 0 || orders / payments > 1 ? 1 : 2", zero) == 1.0
    assert value("payments != 0 && orders / payments > 1 ? 1 : 2", zero) == 2.0


def test_the_formula_records_which_triggers_it_reads() -> None:
    assert compile_formula(KEY, "orders + orders_eu * 2", TRIGGERS).triggers == {"orders", "orders-eu"}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("orders / (payments - 12)", "division by zero at character 8"),
        ("orders % (payments - 12)", "remainder by zero at character 8"),
        ("(0 - orders) ** 0.5", "has no real value"),
        ("10 ** 400", "too large"),
        ("1e300 * 1e300", "too large"),
    ],
)
def test_a_formula_without_a_value_raises_the_named_measurement_error(text: str, error: str) -> None:
    formula = compile_formula(KEY, text, TRIGGERS)
    with pytest.raises(FormulaEvaluationError, match=error) as caught:
        formula.evaluate(VALUES)
    assert isinstance(caught.value, SourceError)


def test_a_trigger_without_a_value_is_a_measurement_error_not_a_key_error() -> None:
    formula = compile_formula(KEY, "orders + payments", TRIGGERS)
    with pytest.raises(FormulaEvaluationError, match="payments"):
        formula.evaluate({"orders": 1.0})


def test_a_non_finite_trigger_value_is_a_measurement_error() -> None:
    formula = compile_formula(KEY, "orders", TRIGGERS)
    with pytest.raises(FormulaEvaluationError, match="not a finite number"):
        formula.evaluate({"orders": float("nan")})


@pytest.mark.parametrize(
    ("text", "expected", "position"),
    [
        ("orders + refunds", "not 'refunds'", 10),
        ("orders +", "not the end", 9),
        ("orders + * 2", "not '*'", 10),
        ("orders $ 2", "not '$'", 8),
        ("(orders + 1", "')', not the end", 12),
        ("orders + 1)", "the end of the formula, not ')'", 11),
        ("orders > 1", "result is a number", 1),
        ("orders ? 1 : 2", "boolean condition", 1),
        ("orders > 1 ? 1 : orders > 2", "of one type", 16),
        ("1 < orders < 3", "one comparison per operand", 12),
        ("orders && payments", "boolean left of '&&'", 8),
        ("!orders", "boolean operand of '!'", 2),
        ("-(orders > 1)", "number operand of unary '-'", 2),
        ("(orders > 1) + 1", "number left of '+'", 14),
        ("orders == (payments > 1) ? 1 : 0", "of one type", 8),
        ("sqrt(orders)", "one of the functions", 1),
        ("abs(orders, payments)", "1 argument(s) to abs(), not 2", 1),
        ("min()", "at least 1 argument(s) to min(), not 0", 1),
        ("1e999", "a finite number", 1),
        ("orders-eu", "not 'eu'", 8),  # a dash is subtraction: write orders_eu
    ],
)
def test_a_bad_formula_names_the_annotation_what_was_expected_and_where(
    text: str, expected: str, position: int
) -> None:
    error = problem(text)
    assert expected in error.expected
    assert f"(at character {position})" in error.expected


def test_an_unknown_name_lists_the_names_the_formula_may_use() -> None:
    assert "orders, orders_eu, payments" in problem("refunds").expected


def test_an_empty_formula_asks_for_one() -> None:
    assert "a formula over the triggers" in problem("  ").expected


def test_a_formula_longer_than_the_cap_is_refused_before_it_is_read() -> None:
    assert f"at most {MAX_FORMULA_CHARS} characters" in problem("1+" * MAX_FORMULA_CHARS + "1").expected


def test_a_formula_with_more_nodes_than_the_cap_is_refused() -> None:
    text = "+".join(["1"] * (MAX_NODES // 2 + 1))
    assert len(text) <= MAX_FORMULA_CHARS
    assert f"at most {MAX_NODES} operands" in problem(text).expected


@pytest.mark.parametrize(
    "text",
    [
        "(" * 200 + "1" + ")" * 200,
        "-" * 500 + "1",
        "!" * 500 + "true ? 1 : 0",
        "2**" * 100 + "2",
        "1 > 0 ? " * 120 + "1" + " : 0" * 120,
        "min(" * 150 + "1" + ")" * 150,
    ],
)
def test_deep_nesting_is_refused_with_a_named_error_not_a_recursion_error(text: str) -> None:
    assert f"nesting at most {MAX_DEPTH}" in problem(text[:MAX_FORMULA_CHARS]).expected


def test_a_long_chain_deeper_than_the_cap_when_evaluated_is_refused() -> None:
    assert f"nesting at most {MAX_DEPTH}" in problem("+".join(["orders"] * (MAX_DEPTH + 1))).expected
    assert value("+".join(["orders"] * MAX_DEPTH)) == 30.0 * MAX_DEPTH


def test_nesting_just_inside_the_cap_still_compiles() -> None:
    assert value("(" * 10 + "orders" + ")" * 10) == 30.0
