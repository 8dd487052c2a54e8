"""``calculator``: arithmetic on numbers, evaluated from the syntax tree — never with ``eval``.

Only numbers, ``+ - * / // % **``, parentheses, a few constants (``pi``, ``e``, ``tau``) and
functions from :data:`FUNCTIONS` are understood; any other syntax (names, attributes,
subscripts, strings, comprehensions, lambdas, ...) is refused before anything runs. Sizes are
bounded so no expression can take long: the length of the text, the number of syntax nodes,
the bits of any integer, and exponents (checked before the power is computed).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from spine.tools.tool import ModelArguments, Tool, ToolContext, ToolFailure

__all__ = ["CONSTANTS", "FUNCTIONS", "CalculatorArguments", "calculator_tool", "evaluate"]

MAX_LENGTH = 500
MAX_NODES = 200
MAX_INT_BITS = 4096
MAX_FACTORIAL = 1000

Number = int | float

CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _factorial(n: Number) -> int:
    if not isinstance(n, int) or n < 0:
        raise ValueError("factorial takes a non-negative integer")
    if n > MAX_FACTORIAL:
        raise ValueError(f"factorial is limited to n <= {MAX_FACTORIAL}")
    return math.factorial(n)


def _round(value: Number, digits: Number | None = None) -> Number:
    if digits is None:
        return round(value)
    # round(5, -10**1000) would build 10**(10**1000) before answering.
    if not isinstance(digits, int) or abs(digits) > 100:
        raise ValueError("round takes at most 100 digits")
    return round(value, digits)


FUNCTIONS: dict[str, Callable[..., Number]] = {
    "abs": abs,
    "round": _round,
    "min": min,
    "max": max,
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log": math.log,
    "log2": math.log2,
    "log10": math.log10,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "asin": math.asin,
    "acos": math.acos,
    "atan": math.atan,
    "floor": math.floor,
    "ceil": math.ceil,
    "factorial": _factorial,
}

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}


class CalculatorArguments(BaseModel):
    """What the model passes to ``calculator``."""

    model_config = ConfigDict(extra="forbid")

    expression: str = Field(
        min_length=1,
        max_length=MAX_LENGTH,
        description=(
            "An arithmetic expression, e.g. '(2 + 3) * 4 ** 2 / 7' or 'sqrt(2) * pi'. "
            "Operators: + - * / // % **; functions: " + ", ".join(sorted(FUNCTIONS)) + "."
        ),
    )


class CalculationError(ToolFailure):
    """The expression is not one the calculator evaluates."""


def evaluate(expression: str) -> Number:
    """Evaluate an arithmetic expression; raise :class:`CalculationError` when it cannot."""
    if len(expression) > MAX_LENGTH:
        raise CalculationError(f"the expression is longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise CalculationError(f"not an arithmetic expression: {exc}") from exc
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise CalculationError(f"the expression has more than {MAX_NODES} parts")
    try:
        result = _eval(tree.body)
    except ZeroDivisionError as exc:
        raise CalculationError("division by zero") from exc
    except (OverflowError, ValueError, TypeError) as exc:
        raise CalculationError(str(exc) or type(exc).__name__) from exc
    if isinstance(result, float) and not math.isfinite(result):
        raise CalculationError("the result is not a finite number")
    return result


def _eval(node: ast.expr) -> Number:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise CalculationError(f"{node.value!r} is not a number")
        return _bounded(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return _bounded(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _bounded(_UNARY[type(node.op)](_eval(node.operand)))
    if isinstance(node, ast.Name) and node.id in CONSTANTS:
        return CONSTANTS[node.id]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in FUNCTIONS
        and not node.keywords
        and not any(isinstance(arg, ast.Starred) for arg in node.args)
    ):
        args = [_eval(arg) for arg in node.args]
        return _bounded(FUNCTIONS[node.func.id](*args))
    raise CalculationError(f"{_describe(node)} is not allowed in an arithmetic expression")


def _check_power(base: Number, exponent: Number) -> None:
    if isinstance(base, int) and isinstance(exponent, int):
        if exponent > 0 and abs(base) > 1 and exponent * math.log2(abs(base)) > MAX_INT_BITS:
            raise CalculationError(f"{base} ** {exponent} is too large")
    elif abs(exponent) > 10_000:
        raise CalculationError(f"the exponent {exponent} is too large")


def _bounded(value: Any) -> Number:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CalculationError(f"the result {value!r} is not a real number")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise CalculationError("the number is too large")
    return value


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return f"the name {node.id!r}"
    if isinstance(node, ast.Call):
        return "this function call"
    return f"{type(node).__name__} syntax"


def calculator_tool() -> Tool[CalculatorArguments]:
    """Return the ``calculator`` tool."""

    async def run(args: CalculatorArguments, ctx: ToolContext) -> dict[str, Any]:
        return {"expression": args.expression, "result": evaluate(args.expression)}

    return Tool(
        name="calculator",
        description=(
            "Evaluate an arithmetic expression exactly (integers) or in floating point, "
            "e.g. '17 * 23 + 2 ** 10'. Use it for any arithmetic instead of guessing."
        ),
        arguments=ModelArguments(CalculatorArguments),
        handler=run,
        timeout=2.0,
        effect="read",
    )
