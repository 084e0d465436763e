"""A calculator for the math route: the model writes the arithmetic, this module does it.

Small models set up a word problem far better than they multiply 17 by 23. With `tool: calculator` on a
route the model is asked for one arithmetic expression; `evaluate` computes it exactly. It is not Python's
eval: the expression is parsed with `ast` and walked here, allowing only numbers, + - * / // % **, unary
signs, parentheses, list/tuple literals and a few functions (sum, min, max, abs, round, sqrt, range),
with bounds on exponents, ranges and magnitudes, so no input can run code or exhaust memory or time.
"""

from __future__ import annotations

import ast
import math
import operator
import re

MAX_ABS = 1e18
MAX_EXPONENT = 64
MAX_RANGE = 100_000
MAX_NODES = 200

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


def _range(*args):
    if not 1 <= len(args) <= 3 or not all(isinstance(a, int) for a in args):
        raise CalcError("range takes 1 to 3 integers")
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise CalcError("range too long")
    return list(r)


def _seq(name):
    def f(*args):
        items = list(args[0]) if len(args) == 1 and isinstance(args[0], list) else list(args)
        if not items and name != "sum":
            raise CalcError(f"{name} of nothing")
        return {"sum": sum, "min": min, "max": max}[name](_number(x) for x in items)
    return f


_FUNCS = {"sum": _seq("sum"), "min": _seq("min"), "max": _seq("max"), "abs": lambda x: abs(_number(x)),
          "round": lambda x, n=0: round(_number(x), int(n)) if n else round(_number(x)),
          "sqrt": lambda x: math.sqrt(_number(x)) if _number(x) >= 0 else _raise("square root of a negative"),
          "range": _range}


def _raise(msg):
    raise CalcError(msg)


def _eval(node):
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        return _number(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _number(_UNARY[type(node.op)](_number(_eval(node.operand))))
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
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS
            and not node.keywords):
        return _FUNCS[node.func.id](*[_eval(a) for a in node.args])
    raise CalcError(f"{type(node).__name__} is not allowed")


def evaluate(expression: str) -> int | float:
    """The value of an arithmetic expression, or CalcError."""
    expression = expression.strip().replace("×", "*").replace("÷", "/").replace("^", "**")
    if not expression or len(expression) > 300:
        raise CalcError("empty or too long")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise CalcError(f"not an expression: {exc.msg}") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise CalcError("expression too long")
    value = _eval(tree)
    if isinstance(value, list):
        raise CalcError("the expression is a list, not a number")
    return value


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
