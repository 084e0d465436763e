"""A calculator for the math route: the model writes the arithmetic, this module does it.

Small models set up a word problem far better than they multiply 17 by 23. With `tool: calculator` on a
route the model is asked for one arithmetic expression; `evaluate` computes it exactly. It is not Python's
eval: the expression is parsed with `ast` and walked here, allowing only numbers, + - * / // % **, unary
signs, parentheses, list/tuple literals and a few functions (sum, min, max, abs, round, sqrt, range),
with bounds on exponents, ranges, magnitudes and every function's arguments, so no input can run code or
exhaust memory or time: the text is model output that any API client can steer, and it is evaluated on the
daemon's event loop. Whatever the text, `evaluate` returns a number or raises CalcError.
"""

from __future__ import annotations

import ast
import math
import operator
import re
import warnings

MAX_ABS = 1e18        # every value: literals, intermediate results, function arguments and results
MAX_EXPONENT = 64
MAX_NDIGITS = 18      # round(x, n) with n = -10**7 would build 10**(10**7)
MAX_RANGE = 100_000   # ranges stay lazy (sum/min/max of one are O(1)), this only bounds nonsense
MAX_NODES = 200
MAX_CHARS = 300

_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


class CalcError(ValueError):
    """The text is not an expression this calculator accepts, or its value is out of bounds."""


def _number(x):
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise CalcError("not a number")
    if isinstance(x, float) and not math.isfinite(x) or abs(x) > MAX_ABS:
        raise CalcError("number out of range")
    return x


def _integer(x, what: str, low: int, high: int) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise CalcError(f"{what} must be an integer")
    if not low <= x <= high:
        raise CalcError(f"{what} must be between {low} and {high}")
    return x


def _range(*given):
    args = [_integer(a, "range's arguments", -int(MAX_ABS), int(MAX_ABS)) for a in given]
    if len(args) == 3 and args[2] == 0:
        raise CalcError("range's step must not be zero")
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise CalcError(f"range longer than {MAX_RANGE}")
    return r


def _items(name: str, args: tuple) -> range | list:
    """What sum/min/max work on: one list or range argument, or the arguments themselves, all numbers."""
    items = args[0] if len(args) == 1 and isinstance(args[0], list | range) else args
    if name != "sum" and not items:
        raise CalcError(f"{name} of nothing")
    return items if isinstance(items, range) else [_number(x) for x in items]  # a range: bounded integers


def _sum(*args):
    items = _items("sum", args)
    if isinstance(items, range):  # arithmetic series: n * (first + last) is even, so the division is exact
        return len(items) * (items[0] + items[-1]) // 2 if items else 0
    return sum(items)


def _min(*args):
    items = _items("min", args)
    return min(items[0], items[-1]) if isinstance(items, range) else min(items)


def _max(*args):
    items = _items("max", args)
    return max(items[0], items[-1]) if isinstance(items, range) else max(items)


def _round(x, ndigits=None):
    if ndigits is None:
        return round(_number(x))
    return round(_number(x), _integer(ndigits, "round's digits", -MAX_NDIGITS, MAX_NDIGITS))


def _sqrt(x):
    if _number(x) < 0:
        raise CalcError("square root of a negative")
    return math.sqrt(x)


# name: (fewest arguments, most arguments, function); sum/min/max take one list or up to MAX_NODES numbers
_FUNCS = {"sum": (1, MAX_NODES, _sum), "min": (1, MAX_NODES, _min), "max": (1, MAX_NODES, _max),
          "abs": (1, 1, lambda x: abs(_number(x))), "round": (1, 2, _round), "sqrt": (1, 1, _sqrt),
          "range": (1, 3, _range)}


def _call(node: ast.Call):
    if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS or node.keywords:
        raise CalcError("only sum, min, max, abs, round, sqrt and range can be called, without keywords")
    name = node.func.id
    fewest, most, func = _FUNCS[name]
    if not fewest <= len(node.args) <= most:
        takes = fewest if fewest == most else f"{fewest} to {most}"
        raise CalcError(f"{name} takes {takes} argument{'s' if most > 1 else ''}, not {len(node.args)}")
    value = func(*[_eval(a) for a in node.args])
    return value if isinstance(value, range) else _number(value)


def _eval(node):
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        return _number(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _number(_UNARY[type(node.op)](_number(_eval(node.operand))))  # type: ignore[operator]
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
        left, right = _number(_eval(node.left)), _number(_eval(node.right))
        if isinstance(node.op, ast.Pow) and (abs(right) > MAX_EXPONENT or abs(left) > MAX_ABS ** 0.5 and right > 2):
            raise CalcError("exponent too large")
        try:
            return _number(_BIN[type(node.op)](left, right))
        except ZeroDivisionError:
            raise CalcError("division by zero") from None
        except OverflowError:
            raise CalcError("number out of range") from None
    if isinstance(node, ast.List | ast.Tuple):
        return [_eval(e) for e in node.elts]
    if isinstance(node, ast.Call):
        return _call(node)
    raise CalcError(f"{type(node).__name__} is not allowed")


def _evaluate(expression: str) -> int | float:
    if not isinstance(expression, str) or len(expression) > 2 * MAX_CHARS:  # before any O(length) work
        raise CalcError("not a string, or too long")
    expression = expression.strip().replace("×", "*").replace("÷", "/").replace("^", "**")
    if not expression or len(expression) > MAX_CHARS:
        raise CalcError("empty or too long")
    try:
        with warnings.catch_warnings():  # "invalid decimal literal", "invalid escape": a stderr line per request
            warnings.simplefilter("ignore")
            tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise CalcError(f"not an expression: {exc.msg}") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise CalcError("expression too long")
    value = _eval(tree)
    if isinstance(value, list | range):
        raise CalcError("the expression is a list, not a number")
    return value


def evaluate(expression: str) -> int | float:
    """The value of an arithmetic expression, or CalcError (never any other exception, whatever the text)."""
    try:
        return _evaluate(expression)
    except CalcError:
        raise
    except Exception as exc:  # RecursionError, MemoryError, a parser quirk: still only "not an expression"
        raise CalcError(f"cannot evaluate this ({type(exc).__name__})") from exc


_FENCE = re.compile(r"```[a-zA-Z]*\n?|```")
_LABEL = re.compile(r"^\s*(?:expression|answer|result|python)\s*[:=]\s*", re.I)


def expression_in(text: str) -> str | None:
    """The expression a model wrote: the first line that parses, without fences, labels or `x = `."""
    for line in _FENCE.sub("\n", text).splitlines():
        line = _LABEL.sub("", line.strip()).rstrip(".;")
        if "=" in line and "==" not in line:
            line = line.split("=", 1)[1] if re.match(r"^\s*[A-Za-z_]\w*\s*=", line) else line.split("=", 1)[0]
        line = line.strip()
        if not line or not re.search(r"\d", line):
            continue
        try:
            evaluate(line)
        except CalcError:
            continue
        return line
    return None


def show(value: int | float) -> str:
    """A value as a person writes it: integers without ".0", others to at most 6 decimals."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.6f}".rstrip("0").rstrip(".")
