"""KEDA's ``scalingModifiers`` formula: a small, bounded expression language over trigger values.

KEDA evaluates the formula with expr-lang (``pkg/scaling/modifiers/formula.go``); tidescale
needs only the part of it that scaling formulas use, so this is a pure evaluator with no
dependency. A formula is compiled once, when the hints are parsed (problems become a
:class:`HintError` naming the annotation and the character position), and evaluated once per
decision (a value it cannot compute, such as a division by zero, raises
:class:`FormulaEvaluationError`, a :class:`SourceError`: the composite metric failed).

The language, with expr-lang's precedence from loosest to tightest::

    c ? a : b                 ternary (right-associative; c must be a comparison or boolean)
    ||  or                    boolean or (short-circuit)
    &&  and                   boolean and (short-circuit)
    ==  !=  <  >  <=  >=      comparisons (not chained)
    +  -                      addition, subtraction
    *  /  %                   multiplication, division, remainder (sign of the dividend, as Go)
    -x  +x  !x  not x         unary
    **  ^                     power (right-associative)
    ( )  numbers  true  false  trigger names  min(..) max(..) abs(x) floor(x) ceil(x) round(x)

A trigger is referenced by its name; a name's dashes are written as underscores
(``orders-eu`` is ``orders_eu``), since a dash is subtraction. Types are checked when compiling:
arithmetic takes numbers, ``&&``/``||``/``!`` and the ternary's condition take booleans, and the
formula's result must be a number.

Hostile input is bounded before and while parsing: at most :data:`MAX_FORMULA_CHARS`
characters, :data:`MAX_NODES` nodes, and :data:`MAX_DEPTH` levels both of parsing and of the
compiled tree (checked explicitly, so no input can reach Python's recursion limit); evaluation
visits each node at most once, so it is bounded by the node count.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from tidescale.errors import HintError, SourceError

__all__ = [
    "FUNCTIONS",
    "MAX_DEPTH",
    "MAX_FORMULA_CHARS",
    "MAX_NODES",
    "Formula",
    "FormulaEvaluationError",
    "ScalingModifiers",
    "compile_formula",
    "reference_name",
]

MAX_FORMULA_CHARS = 1024
"""Longest formula accepted."""
MAX_NODES = 256
"""Most operands, operators and calls in one formula."""
MAX_DEPTH = 64
"""Deepest nesting of parse levels (a parenthesis, call or ternary costs two, an operator one)."""

MetricType = Literal["AverageValue", "Value"]
_Type = Literal["number", "boolean"]


class FormulaEvaluationError(SourceError):
    """The formula has no value for these measurements (division by zero, overflow, ...).

    The policy engine treats it as a failed composite metric: no opinion, as KEDA's metrics
    server answers the HPA with no metric when ``expr.Run`` fails."""

    def __init__(self, message: str) -> None:
        super().__init__(message, trigger="scaling-modifiers")


# ---------------------------------------------------------------- the compiled form

# Nodes are small tuples, evaluated by :func:`_eval`:
#   ("num", float) | ("var", trigger) | ("neg", node) | ("not", node)
#   ("arith", op, left, right, pos) | ("cmp", op, left, right) | ("and" | "or", left, right)
#   ("cond", test, then, otherwise) | ("call", name, (args...), pos)
_Node = tuple[object, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class Formula:
    """A compiled formula: evaluate it with :meth:`evaluate`."""

    source: str
    triggers: frozenset[str]
    """The trigger names the formula reads."""
    _root: _Node = field(repr=False, compare=False)

    def evaluate(self, values: Mapping[str, float]) -> float:
        """The formula's value for trigger ``values`` (by trigger name); raises
        :class:`FormulaEvaluationError` when it has none."""
        result = _eval(self._root, values)
        assert isinstance(result, float)  # compile_formula checked the result type
        return result


@dataclass(frozen=True, kw_only=True, slots=True)
class ScalingModifiers:
    """KEDA's ``advanced.scalingModifiers``: one composite metric replaces every trigger's."""

    formula: Formula
    target: float
    activation_target: float = 0.0
    metric_type: MetricType = "AverageValue"
    """The composite metric's type; KEDA's default is AverageValue, whatever the triggers use."""


def reference_name(trigger: str) -> str:
    """How a formula names ``trigger``: its dashes become underscores."""
    return trigger.replace("-", "_")


# ---------------------------------------------------------------- tokens

_TOKEN = re.compile(
    r"\s*(?:"
    r"(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>\*\*|&&|\|\||==|!=|<=|>=|[-+*/%^<>!?:(),])"
    r")"
)
_WORDS = {"and": "&&", "or": "||", "not": "!"}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "num", "name", "op", "end"
    text: str
    pos: int  # 1-based character position


def _tokens(text: str, fail: Callable[[str, int], HintError]) -> list[_Token]:
    tokens: list[_Token] = []
    at = 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at >= len(text):
            tokens.append(_Token("end", "", at + 1))
            return tokens
        match = _TOKEN.match(text, at)
        if match is None or match.lastgroup is None:
            raise fail(f"an operator, number or trigger name, not {text[at]!r}", at + 1)
        kind = match.lastgroup
        word = match.group(kind)
        start = match.start(kind)
        if kind == "name" and word in _WORDS:
            kind, word = "op", _WORDS[word]
        tokens.append(_Token(kind, word, start + 1))
        if len(tokens) > 2 * MAX_NODES:
            raise fail(f"at most {MAX_NODES} operands and operators", start + 1)
        at = match.end()


# ---------------------------------------------------------------- parsing

_BINARY: dict[str, tuple[int, bool]] = {  # operator -> (precedence, right-associative)
    "||": (1, False),
    "&&": (2, False),
    "==": (3, False),
    "!=": (3, False),
    "<": (3, False),
    ">": (3, False),
    "<=": (3, False),
    ">=": (3, False),
    "+": (4, False),
    "-": (4, False),
    "*": (5, False),
    "/": (5, False),
    "%": (5, False),
    "**": (7, True),
    "^": (7, True),
}
_UNARY_PRECEDENCE = 6

FUNCTIONS: dict[str, tuple[int, int | None]] = {  # name -> (fewest, most arguments)
    "min": (1, None),
    "max": (1, None),
    "abs": (1, 1),
    "floor": (1, 1),
    "ceil": (1, 1),
    "round": (1, 1),
}


class _Parser:
    def __init__(self, tokens: list[_Token], names: Mapping[str, str], fail: Callable[[str, int], HintError]):
        self.tokens = tokens
        self.at = 0
        self.names = names  # reference name -> trigger name
        self.fail = fail
        self.depth = 0
        self.nodes = 0
        self.used: set[str] = set()

    # -- helpers

    def peek(self) -> _Token:
        return self.tokens[self.at]

    def take(self) -> _Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def expect(self, text: str) -> _Token:
        token = self.peek()
        if token.kind != "op" or token.text != text:
            raise self.fail(f"{text!r}, not {_shown(token)}", token.pos)
        return self.take()

    def node(self, pos: int) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.fail(f"at most {MAX_NODES} operands and operators", pos)

    def enter(self, pos: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"nesting at most {MAX_DEPTH} deep", pos)

    def want(self, typed: tuple[_Node, _Type], wanted: _Type, what: str, pos: int) -> _Node:
        node, kind = typed
        if kind != wanted:
            raise self.fail(f"a {wanted} {what}, not a {kind}", pos)
        return node

    # -- grammar

    def ternary(self) -> tuple[_Node, _Type]:
        start = self.peek().pos
        self.enter(start)
        test = self.binary(1)
        if self.peek().kind == "op" and self.peek().text == "?":
            question = self.take()
            self.node(question.pos)
            condition = self.want(test, "boolean", "condition before '?'", start)
            then, then_type = self.ternary()
            colon = self.expect(":")
            otherwise, otherwise_type = self.ternary()
            if then_type != otherwise_type:
                raise self.fail(
                    f"both branches of '?' of one type, not a {then_type} and a {otherwise_type}", colon.pos
                )
            test = (("cond", condition, then, otherwise), then_type)
        self.depth -= 1
        return test

    def binary(self, min_precedence: int) -> tuple[_Node, _Type]:
        self.enter(self.peek().pos)
        left = self.unary()
        while True:
            token = self.peek()
            if token.kind != "op" or token.text not in _BINARY:
                break
            precedence, right_assoc = _BINARY[token.text]
            if precedence < min_precedence:
                break
            self.take()
            self.node(token.pos)
            right_pos = self.peek().pos
            right = self.binary(precedence if right_assoc else precedence + 1)
            left = self.combine(token, left, right, right_pos)
            if precedence == 3 and self.peek().kind == "op" and _BINARY.get(self.peek().text, (0,))[0] == 3:
                raise self.fail(
                    "one comparison per operand ('a < b && b < c', not 'a < b < c')", self.peek().pos
                )
        self.depth -= 1
        return left

    def combine(
        self, op: _Token, left: tuple[_Node, _Type], right: tuple[_Node, _Type], right_pos: int
    ) -> tuple[_Node, _Type]:
        if op.text in ("&&", "||"):
            kind = "and" if op.text == "&&" else "or"
            return (
                (
                    kind,
                    self.want(left, "boolean", f"left of {op.text!r}", op.pos),
                    self.want(right, "boolean", f"right of {op.text!r}", right_pos),
                ),
                "boolean",
            )
        if op.text in ("==", "!="):
            if left[1] != right[1]:
                raise self.fail(
                    f"both sides of {op.text!r} of one type, not a {left[1]} and a {right[1]}", op.pos
                )
            return ("cmp", op.text, left[0], right[0]), "boolean"
        a = self.want(left, "number", f"left of {op.text!r}", op.pos)
        b = self.want(right, "number", f"right of {op.text!r}", right_pos)
        if _BINARY[op.text][0] == 3:
            return ("cmp", op.text, a, b), "boolean"
        return ("arith", "**" if op.text == "^" else op.text, a, b, op.pos), "number"

    def unary(self) -> tuple[_Node, _Type]:
        token = self.peek()
        if token.kind == "op" and token.text in ("-", "+", "!"):
            self.take()
            self.node(token.pos)
            self.enter(token.pos)
            operand_pos = self.peek().pos
            operand = self.binary(_UNARY_PRECEDENCE + 1)  # binds looser than **: -2**2 is -4
            self.depth -= 1
            if token.text == "!":
                return ("not", self.want(operand, "boolean", "operand of '!'", operand_pos)), "boolean"
            number = self.want(operand, "number", f"operand of unary {token.text!r}", operand_pos)
            return (("neg", number) if token.text == "-" else number), "number"
        return self.primary()

    def primary(self) -> tuple[_Node, _Type]:
        token = self.take()
        self.node(token.pos)
        if token.kind == "num":
            value = float(token.text)
            if not math.isfinite(value):
                raise self.fail(f"a finite number, not {token.text}", token.pos)
            return ("num", value), "number"
        if token.kind == "op" and token.text == "(":
            inner = self.ternary()
            self.expect(")")
            return inner
        if token.kind == "name":
            if token.text in ("true", "false"):
                return ("num", token.text == "true"), "boolean"
            if self.peek().kind == "op" and self.peek().text == "(":
                return self.call(token)
            trigger = self.names.get(token.text)
            if trigger is None:
                return self.unknown(token)
            self.used.add(trigger)
            return ("var", trigger), "number"
        raise self.fail(f"a number, trigger name, '(' or function call, not {_shown(token)}", token.pos)

    def call(self, name: _Token) -> tuple[_Node, _Type]:
        if name.text not in FUNCTIONS:
            raise self.fail(f"one of the functions {', '.join(FUNCTIONS)}, not {name.text!r}", name.pos)
        self.expect("(")
        self.enter(name.pos)
        args: list[_Node] = []
        if not (self.peek().kind == "op" and self.peek().text == ")"):
            while True:
                pos = self.peek().pos
                args.append(self.want(self.ternary(), "number", f"argument of {name.text}()", pos))
                if self.peek().kind == "op" and self.peek().text == ",":
                    self.take()
                    continue
                break
        self.expect(")")
        self.depth -= 1
        fewest, most = FUNCTIONS[name.text]
        if len(args) < fewest or (most is not None and len(args) > most):
            count = f"{fewest}" if fewest == most else f"at least {fewest}"
            raise self.fail(f"{count} argument(s) to {name.text}(), not {len(args)}", name.pos)
        return ("call", name.text, tuple(args), name.pos), "number"

    def unknown(self, token: _Token) -> tuple[_Node, _Type]:
        known = ", ".join(sorted(self.names)) or "none"
        raise self.fail(
            f"a trigger name (dashes written as underscores: {known}) or a function, not {token.text!r}",
            token.pos,
        )


def _shown(token: _Token) -> str:
    return "the end" if token.kind == "end" else repr(token.text)


def compile_formula(annotation: str, text: str, triggers: Sequence[str]) -> Formula:
    """The formula ``text`` over ``triggers`` (their names), compiled; raises :class:`HintError`
    naming ``annotation``, the character position and what was expected there."""

    def fail(expected: str, pos: int) -> HintError:
        return HintError(annotation, _clip(text), f"{expected} (at character {pos})")

    if len(text) > MAX_FORMULA_CHARS:
        raise fail(f"a formula of at most {MAX_FORMULA_CHARS} characters", MAX_FORMULA_CHARS + 1)
    if not text.strip():
        raise HintError(annotation, text, "a formula over the triggers, e.g. 'orders + payments'")
    parser = _Parser(_tokens(text, fail), {reference_name(t): t for t in triggers}, fail)
    root, kind = parser.ternary()
    end = parser.peek()
    if end.kind != "end":
        raise fail(f"an operator or the end of the formula, not {_shown(end)}", end.pos)
    if kind != "number":
        raise fail("a formula whose result is a number, not a boolean (try 'c ? a : b')", 1)
    if _depth(root) > MAX_DEPTH:
        # A long chain such as 1+1+...+1 is shallow to parse but deep to evaluate.
        raise fail(f"nesting at most {MAX_DEPTH} deep (split the chain with parentheses)", 1)
    return Formula(source=text, triggers=frozenset(parser.used), _root=root)


def _children(node: _Node) -> list[_Node]:
    children: list[_Node] = []
    for part in node[1:]:
        if isinstance(part, tuple) and part and isinstance(part[0], str):
            children.append(part)
        elif isinstance(part, tuple):  # a call's arguments
            children.extend(arg for arg in part if isinstance(arg, tuple))
    return children


def _depth(root: _Node) -> int:
    """The compiled tree's depth, walked without recursion."""
    deepest = 0
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in _children(node))
    return deepest


def _clip(text: str) -> str:
    return text if len(text) <= 80 else f"{text[:77]}..."


# ---------------------------------------------------------------- evaluation


def _eval(node: _Node, values: Mapping[str, float]) -> float | bool:
    # Recursion depth is bounded by the tree's depth, at most MAX_DEPTH (checked when compiling).
    kind = node[0]
    if kind == "num":
        value = node[1]
        assert isinstance(value, float | bool)
        return value
    if kind == "var":
        trigger = node[1]
        assert isinstance(trigger, str)
        if trigger not in values:
            raise FormulaEvaluationError(f"formula needs trigger {trigger}, which has no value")
        number = float(values[trigger])
        if not math.isfinite(number):
            raise FormulaEvaluationError(f"trigger {trigger}'s value {number} is not a finite number")
        return number
    if kind == "neg":
        return -_num(node[1], values)
    if kind == "not":
        return not _bool(node[1], values)
    if kind == "and":
        return _bool(node[1], values) and _bool(node[2], values)
    if kind == "or":
        return _bool(node[1], values) or _bool(node[2], values)
    if kind == "cond":
        return _eval(_sub(node[2] if _bool(node[1], values) else node[3]), values)
    if kind == "cmp":
        return _compare(str(node[1]), _eval(_sub(node[2]), values), _eval(_sub(node[3]), values))
    if kind == "arith":
        pos = node[4]
        assert isinstance(pos, int)
        return _arith(str(node[1]), _num(node[2], values), _num(node[3], values), pos)
    if kind == "call":
        args = node[2]
        assert isinstance(args, tuple)
        numbers = [_num(arg, values) for arg in args]
        return _call(str(node[1]), numbers)
    raise AssertionError(f"unknown node {kind!r}")


def _sub(node: object) -> _Node:
    assert isinstance(node, tuple)
    return node


def _num(node: object, values: Mapping[str, float]) -> float:
    result = _eval(_sub(node), values)
    assert isinstance(result, float)
    return result


def _bool(node: object, values: Mapping[str, float]) -> bool:
    result = _eval(_sub(node), values)
    assert isinstance(result, bool)
    return result


def _compare(op: str, a: float | bool, b: float | bool) -> bool:
    if op == "==":
        return a == b
    if op == "!=":
        return a != b
    if op == "<":
        return a < b
    if op == ">":
        return a > b
    if op == "<=":
        return a <= b
    return a >= b


def _arith(op: str, a: float, b: float, pos: int) -> float:
    if op in ("/", "%") and b == 0.0:
        what = "division" if op == "/" else "remainder"
        raise FormulaEvaluationError(f"{what} by zero at character {pos} of the formula")
    try:
        if op == "+":
            result = a + b
        elif op == "-":
            result = a - b
        elif op == "*":
            result = a * b
        elif op == "/":
            result = a / b
        elif op == "%":
            result = math.fmod(a, b)  # Go's math.Mod: the sign of the dividend
        else:
            result = math.pow(a, b)
    except OverflowError as exc:
        raise FormulaEvaluationError(f"{a:g} {op} {b:g} at character {pos} is too large") from exc
    except ValueError as exc:  # a negative number to a fractional power
        raise FormulaEvaluationError(f"{a:g} {op} {b:g} at character {pos} has no real value") from exc
    if not math.isfinite(result):
        raise FormulaEvaluationError(f"{a:g} {op} {b:g} at character {pos} is too large")
    return result


def _call(name: str, args: list[float]) -> float:
    if name == "min":
        return min(args)
    if name == "max":
        return max(args)
    (x,) = args
    if name == "abs":
        return abs(x)
    if name == "floor":
        return float(math.floor(x))
    if name == "ceil":
        return float(math.ceil(x))
    # expr-lang's round is Go's math.Round: half away from zero (Python's round is half to even).
    return math.copysign(math.floor(abs(x) + 0.5), x)
