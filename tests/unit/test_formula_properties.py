"""Properties of the scaling-modifiers formula evaluator: any input compiles or is refused with a
HintError; a compiled formula evaluates to a finite number or raises FormulaEvaluationError,
nothing else; the compiled tree stays within the node and depth caps; and precedence matches
the explicitly parenthesised reading."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from tidescale._formula import (
    FUNCTIONS,
    MAX_DEPTH,
    MAX_FORMULA_CHARS,
    MAX_NODES,
    Formula,
    FormulaEvaluationError,
    compile_formula,
)
from tidescale.errors import HintError

KEY = "tidescale.io/scaling-modifiers-formula"
TRIGGERS = ("orders", "payments", "orders-eu")

_PIECES = [
    "orders", "payments", "orders_eu", "refunds", "0", "1", "2.5", "1e308", "-", "+", "*", "/", "%",
    "**", "^", "(", ")", "(", ")", "?", ":", "<", ">", "<=", ">=", "==", "!=", "&&", "||", "!",
    "and", "or", "not", "true", "false", ",", " ", "$", ".", "e", "1_0", *FUNCTIONS, "sqrt",
]  # fmt: skip

texts = st.one_of(
    st.lists(st.sampled_from(_PIECES), max_size=80).map("".join),
    st.lists(st.sampled_from(_PIECES), max_size=400).map(" ".join),
    st.text(max_size=200),
    st.builds(lambda n, op: op.join(["1"] * n), st.integers(1, 300), st.sampled_from(["+", "*", "**"])),
    st.builds(lambda n, s: s * n, st.integers(0, 600), st.sampled_from(["(", "-", "!", "2**", "min(", "a?"])),
)
values = st.fixed_dictionaries(
    {
        name: st.one_of(
            st.sampled_from([0.0, 1.0, -1.0, 0.5, 1e300]),
            st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300),
        )
        for name in TRIGGERS
    }
)

_ARITH = {"+": 4, "-": 4, "*": 5, "/": 5, "%": 5}

# Well-formed formulas, so that evaluation (not only parsing) is exercised.
_leaves = st.sampled_from(["orders", "payments", "orders_eu", "0", "1", "2", "0.5", "1e300", "(0 - 3)"])


def _extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    condition = st.builds(
        lambda a, op, b: f"{a} {op} {b}", inner, st.sampled_from(["<", ">", "<=", ">=", "==", "!="]), inner
    )
    return st.one_of(
        st.builds(lambda a, op, b: f"({a} {op} {b})", inner, st.sampled_from([*_ARITH, "**"]), inner),
        st.builds(lambda a: f"-{a}", inner),
        st.builds(lambda f, a: f"{f}({a})", st.sampled_from(["abs", "floor", "ceil", "round"]), inner),
        st.builds(lambda f, a, b: f"{f}({a}, {b})", st.sampled_from(["min", "max"]), inner, inner),
        st.builds(lambda c, a, b: f"({c} ? {a} : {b})", condition, inner, inner),
        st.builds(
            lambda c, d, op, a, b: f"({c} {op} !({d}) ? {a} : {b})",
            condition, condition, st.sampled_from(["&&", "||"]), inner, inner,
        ),
    )  # fmt: skip


formulas = st.recursive(_leaves, _extend, max_leaves=40)


def _tree_size(formula: Formula) -> tuple[int, int]:
    """(nodes, depth) of the compiled tree."""
    nodes, deepest = 0, 0
    stack: list[tuple[object, int]] = [(formula._root, 1)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        deepest = max(deepest, depth)
        assert isinstance(node, tuple)
        for part in node[1:]:
            if isinstance(part, tuple) and part and isinstance(part[0], str):
                stack.append((part, depth + 1))
            elif isinstance(part, tuple):  # a call's arguments
                stack.extend((arg, depth + 1) for arg in part)
    return nodes, deepest


@settings(max_examples=400, deadline=None)
@given(text=texts, readings=values)
def test_any_text_compiles_or_is_refused_and_evaluates_or_raises_only_the_named_error(
    text: str, readings: dict[str, float]
) -> None:
    formula = _compiled(text[: MAX_FORMULA_CHARS + 10])
    if isinstance(formula, HintError):
        assert formula.annotation == KEY
        return
    nodes, depth = _tree_size(formula)
    assert nodes <= MAX_NODES
    assert depth <= MAX_DEPTH
    result = _evaluated(formula, readings)
    if isinstance(result, FormulaEvaluationError):
        return
    assert isinstance(result, float)
    assert math.isfinite(result)


def _compiled(text: str) -> Formula | HintError:
    try:
        return compile_formula(KEY, text, TRIGGERS)
    except HintError as exc:
        return exc


def _evaluated(formula: Formula, readings: dict[str, float]) -> float | FormulaEvaluationError:
    try:
        return formula.evaluate(readings)
    except FormulaEvaluationError as exc:
        return exc


numbers = st.integers(min_value=-50, max_value=50).map(str)


@settings(max_examples=400, deadline=None)
@given(text=formulas, readings=values)
def test_a_well_formed_formula_has_a_finite_value_or_raises_only_the_named_error(
    text: str, readings: dict[str, float]
) -> None:
    formula = _compiled(text)
    if isinstance(formula, HintError):  # only the caps may refuse a well-formed formula
        assert "at most" in formula.expected
        return
    result = _evaluated(formula, readings)
    if isinstance(result, FormulaEvaluationError):
        assert str(result).startswith("trigger scaling-modifiers: ")
        return
    assert isinstance(result, float)
    assert math.isfinite(result)


@settings(max_examples=300, deadline=None)
@given(
    a=numbers, b=numbers, c=numbers, op1=st.sampled_from(sorted(_ARITH)), op2=st.sampled_from(sorted(_ARITH))
)
def test_two_operators_group_as_the_precedence_table_says(a: str, b: str, c: str, op1: str, op2: str) -> None:
    """``a op1 b op2 c`` reads as ``(a op1 b) op2 c`` unless op2 binds tighter."""
    grouped = f"{a} {op1} ({b} {op2} {c})" if _ARITH[op2] > _ARITH[op1] else f"({a} {op1} {b}) {op2} {c}"

    def run(text: str) -> float | str:
        try:
            return compile_formula(KEY, text, TRIGGERS).evaluate({})
        except FormulaEvaluationError as exc:
            return str(exc).split(" at character")[0]

    plain, explicit = run(f"{a} {op1} {b} {op2} {c}"), run(grouped)
    assert plain == explicit


@settings(max_examples=200, deadline=None)
@given(readings=values)
def test_a_guarded_division_never_fails_whatever_the_values(readings: dict[str, float]) -> None:
    formula = compile_formula(KEY, "payments != 0 ? min(orders / payments, 1e6) : 0", TRIGGERS)
    result = _evaluated(formula, readings)
    if isinstance(result, FormulaEvaluationError):
        assert "too large" in str(result)  # 1e300 / 1e-300 overflows; never a division by zero
    else:
        assert result <= 1e6
