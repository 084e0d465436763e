"""The math route's calculator: exact arithmetic, and nothing else gets evaluated."""

from __future__ import annotations

import gc
import math
import random
import sys
import time
import warnings

import pytest

from swarm_edge import calc
from swarm_edge.calc import CalcError, evaluate, expression_in, show


@pytest.mark.parametrize("expr, value", [
    ("17 * 23", 391), ("40 * (1 - 0.15)", 34.0), ("(12 + 18 + 24 + 30) / 4", 21.0), ("2 ** 10", 1024),
    ("2^10", 1024), ("-3 + +5", 2), ("sum(range(1, 51))", 1275), ("max([3, 9, 2])", 9), ("round(2.567, 2)", 2.57),
    ("sqrt(1764)", 42.0), ("7 // 2 + 7 % 2", 4), ("6 × 7", 42), ("84 ÷ 2", 42.0),
])
def test_arithmetic(expr, value):
    assert evaluate(expr) == pytest.approx(value)


@pytest.mark.parametrize("expr", [
    "__import__('os').system('true')", "(1).__class__", "open('/etc/passwd')", "[x for x in range(3)]",
    "lambda: 1", "x + 1", "9 ** 9 ** 9", "10 ** 400", "sum(range(10 ** 9))", "1 / 0", "'a' * 3", "True + 1",
    "", "1 +", "[1, 2]", "sqrt(-1)", "max()", "2 ** 0.5 ** 200 + 1e308 * 10", "+".join(["1"] * 150),
])
def test_refuses_everything_else(expr):
    with pytest.raises(CalcError):
        evaluate(expr)


@pytest.mark.parametrize("text, expr", [
    ("17 * 23", "17 * 23"), ("```python\n(37 - 9) / 4\n```", "(37 - 9) / 4"),
    ("Expression: 3 * 60 * 60", "3 * 60 * 60"),
    ("x = 250 * 6", "250 * 6"), ("2 * 12 + 4 * 3 = 36", "2 * 12 + 4 * 3"), ("The total is\n5 * 2.5.", "5 * 2.5"),
    ("I cannot compute that.", None), ("print(2 + 2)", None),
])
def test_expression_in_model_output(text, expr):
    assert expression_in(text) == expr


def test_show():
    assert (show(34.0), show(391), show(1 / 3), show(2.5)) == ("34", "391", "0.333333", "2.5")


# ---------------------------------------------------------------- hostile input: the text is model output that
# any API client can steer, evaluated on the daemon's event loop. Only CalcError may escape, and quickly.

BOUND_S = 0.05  # CPU time of one call; the worst input found takes under 1 ms (see test_worst_inputs_are_cheap)


def timed(func, text):
    """(outcome, CPU seconds): the value or the exception raised, and the least CPU time of up to three tries.

    CPU time, without the garbage collector (a full pass over the test process can take 50 ms), and tried again
    when over the bound: a slow input is slow every time, a page-fault storm on a shared machine is not.
    """
    best = float("inf")
    for _ in range(3):
        gc.disable()
        t0 = time.thread_time()
        try:
            outcome = func(text)
        except Exception as exc:  # the test sorts them out
            outcome = exc
        finally:
            best = min(best, time.thread_time() - t0)
            gc.enable()
        if best < BOUND_S:
            break
    return outcome, best


@pytest.mark.parametrize("expr, message", [
    ("round(1, -10 ** 7)", "round's digits must be between -18 and 18"),  # was 10**(10**7): 8 s, hours beyond
    ("round(1, 19)", "between -18 and 18"), ("round(1, [2])", "round's digits must be an integer"),
    ("round(2.5, 1.5)", "must be an integer"), ("round(1, 2, 3)", "round takes 1 to 2 arguments, not 3"),
    ("range(1, 2, 0)", "step must not be zero"), ("range(1.5)", "range's arguments must be an integer"),
    ("range(10 ** 6)", "range longer than 100000"), ("range(1, 2, 3, 4)", "range takes 1 to 3 arguments, not 4"),
    ("abs(1, 2)", "abs takes 1 argument, not 2"), ("abs([1])", "not a number"), ("sqrt()", "sqrt takes 1 argument"),
    ("sqrt(4, 9)", "sqrt takes 1 argument, not 2"), ("sqrt([4])", "not a number"), ("min(range(0))", "min of nothing"),
    ("max([])", "max of nothing"), ("sum([[1]])", "not a number"), ("sum(range(3), 1)", "not a number"),
    ("sum()", "sum takes 1 to 200 arguments, not 0"), ("abs(x=1)", "without keywords"), ("(1)(2)", "can be called"),
])
def test_function_arguments_are_checked(expr, message):
    outcome, cpu = timed(evaluate, expr)
    assert isinstance(outcome, CalcError) and message in str(outcome), repr(outcome)
    assert cpu < BOUND_S


@pytest.mark.parametrize("expr, value", [
    ("sum(range(1, 100001))", 5000050000), ("sum(range(10, -11, -3))", 7), ("min(range(7, -3, -2))", -1),
    ("max(range(7, -3, -2))", 7), ("sum(range(0))", 0), ("round(1234.5678, -2)", 1200.0), ("round(-17, -1)", -20),
    ("round(2.5)", 2), ("sum(1, 2, 3)", 6), ("max(4)", 4), ("min((3, 1, 2))", 1),
])
def test_bounded_functions_still_compute(expr, value):
    result = evaluate(expr)
    assert result == value and type(result) is type(value)


# The slowest inputs found (handcrafted, then 200k random expressions hill-climbed on time): all parse-bound.
WORST = [
    "+".join(["sum(range(99999))"] * 16),  # was 1 s: every range was built and summed item by item
    "+".join(["max(range(-10**18,10**18,10**13))"] * 8), "+".join(["1"] * 150), "-" * 299 + "1",
    "max(" + ",".join("9" * 147) + ")", "[" * 150 + "]" * 150, "+".join(["abs(abs(abs(abs(abs(-1)))))"] * 10),
    "+".join(["999999999**64"] * 21), "+".join(["round(1e18,-18)"] * 19), "9" * 300,
]


@pytest.mark.parametrize("expr", WORST, ids=range(len(WORST)))
def test_worst_inputs_are_cheap(expr):
    outcome, cpu = timed(evaluate, expr[:300])
    assert isinstance(outcome, int | float | CalcError), repr(outcome)
    assert cpu < BOUND_S, f"{cpu * 1000:.1f} ms"


def test_exhausted_stack_is_a_calc_error():
    """A RecursionError (here: the walk starts with little stack left) comes out as CalcError, not a traceback."""
    depth = 0
    frame = sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + 60)
    try:
        outcome, _ = timed(evaluate, "abs(" * 50 + "1" + ")" * 50)
    finally:
        sys.setrecursionlimit(limit)
    assert isinstance(outcome, CalcError) and "RecursionError" in str(outcome), repr(outcome)


def test_memory_error_is_a_calc_error(monkeypatch):
    """Fake: the walk is made to run out of memory; evaluate still raises only CalcError."""
    def walk(_node):
        raise MemoryError

    monkeypatch.setattr(calc, "_eval", walk)
    with pytest.raises(CalcError, match="MemoryError"):
        evaluate("1 + 1")


@pytest.mark.parametrize("expr", ["1if 1 else 2", "0x1for", "'a\\,b' * 2"])
def test_parser_warnings_do_not_reach_stderr(expr):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CalcError):
            evaluate(expr)
    assert not caught, [str(w.message) for w in caught]


NAMES = ["sum", "min", "max", "abs", "round", "sqrt", "range", "__import__", "lambda", "x", "True", "None", "open"]
SOUP = [*"0123456789", "1e308", "9" * 40, "1e-320", "10**18", "-10**7", ".", "+", "-", "*", "/", "//", "%", "**",
        "^", "×", "÷", "(", ")", "[", "]", ",", " ", "=", "'", '"', "j", "e", "_", ":", "\x00", "\\", "#", "@", "~",
        "<<", "not", "==", "\n", *NAMES]


def soup(rnd: random.Random) -> str:
    """Random token soup: mostly not even syntax."""
    return "".join(rnd.choice(SOUP) for _ in range(rnd.randint(1, 80)))


def expression(rnd: random.Random, depth: int = 0) -> str:
    """A random, syntactically valid expression: calls of any arity, lists, huge and tiny numbers, every operator."""
    pick = rnd.random()
    if depth > 4 or pick < 0.3:
        return rnd.choice(["0", "1", "2", "7", "0.5", "-3", "64", "99999", "1e18", "1e-300", "10**18", "-10**7",
                           "999999999", "3.25", "[]"])
    if pick < 0.6:
        op = rnd.choice(["+", "-", "*", "/", "//", "%", "**"])
        return f"({expression(rnd, depth + 1)}{op}{expression(rnd, depth + 1)})"
    def args(most):
        return ", ".join(expression(rnd, depth + 1) for _ in range(rnd.randint(0, most)))

    name = rnd.choice(NAMES[:7])
    if name in ("sum", "min", "max") and rnd.random() < 0.5:
        return f"{name}(range({args(3)}))" if rnd.random() < 0.5 else f"{name}([{args(6)}])"
    return f"{name}({args(3)})"


def _seq(func):
    return lambda *args: func(args[0] if len(args) == 1 and isinstance(args[0], list | tuple | range) else args)


# Python's own functions, called the way calc documents them (one list or range, or the numbers themselves)
ORACLE = {"__builtins__": {}, "sum": _seq(sum), "min": _seq(min), "max": _seq(max), "abs": abs, "round": round,
          "sqrt": math.sqrt, "range": range}


def test_fuzz_evaluate_raises_only_calc_error_and_agrees_with_python():
    rnd = random.Random(20240611)
    texts = [soup(rnd) for _ in range(3000)] + [expression(rnd) for _ in range(3000)]
    values = 0
    for text in texts:
        outcome, cpu = timed(evaluate, text)
        assert isinstance(outcome, int | float | CalcError), f"{text!r}: {outcome!r}"
        assert cpu < BOUND_S, f"{text!r}: {cpu * 1000:.1f} ms"
        if not isinstance(outcome, CalcError):
            values += 1
            assert not isinstance(outcome, bool) and math.isfinite(outcome) and abs(outcome) <= calc.MAX_ABS
            if not set(text) & set("×÷^"):  # whatever calc accepts is Python arithmetic with Python's answer
                expected = eval(text, ORACLE)  # only text that calc has just accepted
                assert outcome == expected and type(outcome) is type(expected), text
    assert values > 1000  # the generator reaches the evaluator, not only the parser


def test_fuzz_expression_in_raises_nothing_and_finds_only_what_evaluates():
    rnd = random.Random(7)
    found = 0
    for _ in range(1500):
        lines = [rnd.choice(["", "Expression: ", "x = ", "```python\n", "Answer: "])
                 + (expression(rnd) if rnd.random() < 0.5 else soup(rnd)) for _ in range(rnd.randint(1, 6))]
        text = "\n".join(lines)
        outcome, cpu = timed(expression_in, text)
        assert outcome is None or isinstance(outcome, str), f"{text!r}: {outcome!r}"
        assert cpu < BOUND_S, f"{text!r}: {cpu * 1000:.1f} ms"
        if outcome is not None:
            found += 1
            assert outcome in text and isinstance(evaluate(outcome), int | float)
    assert found > 300
