"""The tools sandbox (model/tools.py) and the demo's tools (demo/tools.py): the calculator checked against
Python's own Fractions, run_call's refusals, lookup against the demo world, exact unit conversion."""
import json
import random
import re
import threading
import time
from fractions import Fraction

import pytest

from demo.tools import convert, demo_tools, lookup_in
from demo.world import build_world, facts_of
from model.toolcall import ToolCall
from model.tools import CALCULATOR, Tool, ToolError, calculator, format_number, run_call


def value_of(text: str) -> Fraction:
    """The exact value a calculator result states ("156", "0.125", "1/3 ≈ 0.333333333333")."""
    return Fraction(text.split(" ≈ ")[0])


# ---- calculator -------------------------------------------------------------------------------------------

PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


def random_expression(rng: random.Random, depth: int):
    """(text, exact value or None when it divides by zero). Parentheses only where precedence needs them
    (and now and then where it does not), so the parser's precedence and left-associativity are on trial."""
    if depth == 0 or rng.random() < 0.25:
        if rng.random() < 0.3:
            text = f"{rng.randint(0, 99)}.{rng.randint(0, 999):03d}".rstrip("0").rstrip(".")
        else:
            text = str(rng.randint(0, 30))
        if rng.random() < 0.15:
            text = "-" + text
        return text, Fraction(text), 3  # (text, value, precedence of its top operator)
    op = rng.choice("+-*/")
    left, lv, lp = random_expression(rng, depth - 1)
    right, rv, rp = random_expression(rng, depth - 1)
    if lp < PRECEDENCE[op] or rng.random() < 0.1:
        left = f"({left})"
    if rp <= PRECEDENCE[op] or rng.random() < 0.1:  # a - (b - c), a / (b * c): the right side binds first
        right = f"({right})"
    if lv is None or rv is None or (op == "/" and rv == 0):
        value = None
    else:
        value = lv + rv if op == "+" else lv - rv if op == "-" else lv * rv if op == "*" else lv / rv
    return f"{left}{rng.choice(['', ' '])}{op}{rng.choice(['', ' '])}{right}", value, PRECEDENCE[op]


def test_calculator_matches_fractions_on_random_expressions():
    rng = random.Random(0)
    checked = refused = 0
    while checked < 400:
        text, value, _ = random_expression(rng, rng.randint(1, 4))
        if len(text) > 200:
            continue
        if value is None:
            with pytest.raises(ToolError, match="division by zero"):
                calculator(text)
            refused += 1
            continue
        result = calculator(text)
        assert value_of(result) == value, text
        if value.denominator == 1:
            assert result == str(value.numerator)
        elif " ≈ " in result:  # a non-terminating decimal: 12 significant digits
            approx = result.split(" ≈ ")[1]
            assert abs(float(approx) - float(value)) <= abs(float(value)) * 1e-11, text
            assert len(approx.lstrip("-0.").split("E")[0].replace(".", "")) == 12, result
        else:  # terminating: the exact decimal, no fraction
            assert "/" not in result and Fraction(result) == value
        checked += 1
    assert refused > 0  # the generator did produce divisions by zero


@pytest.mark.parametrize("expression, expected", [
    ("12*13", "156"), ("2**3**2", "512"), ("2^3^2", "512"), ("-2**2", "-4"), ("(-2)**2", "4"), ("2**-2", "0.25"),
    ("2**-1**2", "0.5"), ("7//2", "3"), ("-7//2", "-4"), ("-7 % 3", "2"), ("7 % -3", "-2"), ("10-4-3", "3"),
    ("64/4/2", "8"), ("2+3*4", "14"), ("(2+3)*4", "20"), ("--3", "3"), ("+-+3", "-3"), ("1/8", "0.125"),
    ("-5/2", "-2.5"), ("1/3", "1/3 ≈ 0.333333333333"), ("-2/3", "-2/3 ≈ -0.666666666667"), ("0.1+0.2", "0.3"),
    ("1.5*4", "6"), (".5+1.", "1.5"), ("１２×１３", "156"), ("7÷2", "3.5"), ("3−5", "-2"), ("（1＋2）＊3", "9"),
    ("0**0", "1"), ("10**64", "1" + "0" * 64), (" 2 * ( 3 + 4 ) ", "14"),
])
def test_calculator_precedence_and_format(expression, expected):
    assert calculator(expression) == expected


@pytest.mark.parametrize("expression, message", [
    ("__import__('os')", "'_' at position 0"), ("1+a", "'a' at position 2"), ('"1"', "'\"' at position 0"),
    ("2**10000", "exponent"), ("99**64", "too large"), ("1" * 300, "longer than 200"), ("1/0", "division by zero"),
    ("5//0", "division by zero"), ("5%(1-1)", "division by zero"), ("0**-1", "division by zero"),
    ("(" * 60 + "1" + ")" * 60, "nested"), ("-" * 60 + "1", "nested"), ("2**0.5", "whole-number"),
    ("1 2", "expected an operator"), ("(1+2", "expected ')'"), ("1+", "expected a number"), ("", "empty"),
    ("3²", "'²' at position 1"), ("1e5", "'e' at position 1"), ("abs(1)", "'a' at position 0"),
])
def test_calculator_refuses(expression, message):
    start = time.perf_counter()
    with pytest.raises(ToolError, match=re.escape(message)):
        calculator(expression)
    assert time.perf_counter() - start < 0.1  # refused before any big work


def test_calculator_refuses_non_strings():
    with pytest.raises(ToolError):
        calculator(12)


@pytest.mark.parametrize("value, text", [
    (Fraction(156), "156"), (Fraction(-3), "-3"), (Fraction(1, 8), "0.125"), (Fraction(-5, 2), "-2.5"),
    (Fraction(1, 1000), "0.001"), (Fraction(-1, 40), "-0.025"), (Fraction(1, 3), "1/3 ≈ 0.333333333333"),
    (Fraction(1, 7), "1/7 ≈ 0.142857142857"),
])
def test_format_number(value, text):
    assert format_number(value) == text


def test_calculator_tool_schema():
    assert CALCULATOR.schema() == {"type": "function", "function": {
        "name": "calculator", "description": "Exact arithmetic on an expression",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}


# ---- run_call ---------------------------------------------------------------------------------------------

def error_of(text: str) -> str:
    """The message of an error result, checking its shape: one line of JSON with only "error"."""
    assert "\n" not in text
    obj = json.loads(text)
    assert list(obj) == ["error"] and obj["error"]
    return obj["error"]


def tool(name="t", fn=lambda x: x, properties=None, required=("x",)):
    return Tool(name, "test", {"type": "object", "properties": properties or {"x": {"type": "string"}},
                               "required": list(required)}, fn)


def test_run_call_good_calls():
    assert run_call([CALCULATOR], ToolCall("calculator", {"expression": "12*13"})) == "156"
    assert run_call({"calculator": CALCULATOR}, ToolCall("calculator", {"expression": "1/3"})).startswith("1/3 ≈")
    # Other results as compact JSON, Chinese kept as is.
    echo = tool(fn=lambda x: {"x": x, "n": [1, 2]})
    assert run_call([echo], ToolCall("t", {"x": "中文"})) == '{"x":"中文","n":[1,2]}'


def test_run_call_refuses_bad_calls():
    tools = [CALCULATOR]
    assert "unknown tool 'calc'" in error_of(run_call(tools, ToolCall("calc", {"expression": "1"})))
    assert "missing argument: expression" in error_of(run_call(tools, ToolCall("calculator", {})))
    assert "unexpected argument: precision" in error_of(
        run_call(tools, ToolCall("calculator", {"expression": "1", "precision": 3})))
    assert "must be of type string, got int" in error_of(run_call(tools, ToolCall("calculator", {"expression": 12})))
    assert "'a' at position 2" in error_of(run_call(tools, ToolCall("calculator", {"expression": "1+a"})))


def test_run_call_checks_json_types():
    number = tool(fn=lambda x: "ok", properties={"x": {"type": "number"}})
    assert run_call([number], ToolCall("t", {"x": 1.5})) == "ok"
    assert run_call([number], ToolCall("t", {"x": 2})) == "ok"
    assert "got bool" in error_of(run_call([number], ToolCall("t", {"x": True})))  # a bool is no number in JSON
    assert "got str" in error_of(run_call([number], ToolCall("t", {"x": "2"})))
    choice = tool(fn=lambda x: "ok", properties={"x": {"type": ["string", "null"], "enum": ["a", None]}})
    assert run_call([choice], ToolCall("t", {"x": None})) == "ok"
    assert "one of" in error_of(run_call([choice], ToolCall("t", {"x": "b"})))


def test_run_call_reports_a_crashing_tool():
    def crash(x):
        raise ValueError("bad things")
    message = error_of(run_call([tool(fn=crash)], ToolCall("t", {"x": "1"})))
    assert "t failed" in message and "ValueError" in message and "bad things" in message

    def complain(x):
        raise ToolError("x must be shorter\nplease")
    assert error_of(run_call([tool(fn=complain)], ToolCall("t", {"x": "1"}))) == "x must be shorter please"


def test_run_call_times_out():
    release = threading.Event()
    slow = tool(fn=lambda x: release.wait(10) and "late")
    start = time.perf_counter()
    try:
        message = error_of(run_call([slow], ToolCall("t", {"x": "1"}), timeout=0.05))
    finally:
        release.set()  # let the abandoned worker finish
    assert "timed out after 0.05 s" in message
    assert time.perf_counter() - start < 1


def test_run_call_refuses_oversized_and_unserialisable_results():
    big = tool(fn=lambda x: "y" * 2001)
    assert "2001 characters" in error_of(run_call([big], ToolCall("t", {"x": "1"})))
    assert run_call([big], ToolCall("t", {"x": "1"}), max_chars=3000) == "y" * 2001
    odd = tool(fn=lambda x: {1, 2})
    assert "not JSON" in error_of(run_call([odd], ToolCall("t", {"x": "1"})))


# ---- the demo's tools -------------------------------------------------------------------------------------

def expected_facts(entity, lang: str) -> dict:
    facts = {"name": entity.name[lang], "kind": type(entity).__name__.lower()}
    for fact in facts_of(entity):
        obj = fact.obj
        facts[fact.relation.split(".")[1]] = obj if isinstance(obj, int) else getattr(obj, "name", obj)[lang]
    return facts


def test_lookup_matches_the_world_in_both_languages():
    world = build_world(42)
    tools = demo_tools(42)
    for entity in world.countries + world.towns + world.people + world.herbs:
        for lang in ("en", "zh"):
            assert lookup_in(42, entity.name[lang]) == expected_facts(entity, lang)
    town = world.towns[0]
    # Through run_call, with the case and spacing a model might use.
    got = json.loads(run_call(tools, ToolCall("lookup", {"name": f"  {town.name.en.upper()} "})))
    assert got == expected_facts(town, "en") and isinstance(got["founded"], int)
    assert json.loads(run_call(tools, ToolCall("lookup", {"name": town.name.zh})))["country"] == town.country.name.zh
    person = world.people[0]
    assert lookup_in(42, person.name.en)["hometown"] == person.hometown.name.en
    assert lookup_in(42, world.countries[0].name.zh)["capital"] == world.countries[0].capital.name.zh


def test_lookup_unknown_name():
    message = error_of(run_call(demo_tools(42), ToolCall("lookup", {"name": "Paris"})))
    assert message == "no town, person, country or herb called 'Paris'"


def test_lookup_follows_the_seed():
    other = build_world(7).towns[0]
    assert lookup_in(7, other.name.en) == expected_facts(other, "en")


@pytest.mark.parametrize("value, src, dst, expected", [
    (1, "mile", "km", "1.609344 km"), (90, "minutes", "hour", "1.5 hour"), (1.1, "kg", "g", "1100 g"),
    (1, "pound", "ounce", "16 ounce"), (12, "inches", "foot", "1 foot"), (1, "day", "second", "86400 second"),
    (20, "分钟", "小时", "1/3 ≈ 0.333333333333 小时"), (2, "公里", "米", "2000 米"), (1, "公斤", "克", "1000 克"),
    (-3.5, "m", "cm", "-350 cm"), (1, "inch", "mm", "25.4 mm"),
])
def test_convert_is_exact(value, src, dst, expected):
    assert convert(value, src, dst) == expected


def test_convert_refuses():
    tools = demo_tools(42)
    assert "cannot convert kg (mass) to m (length)" in error_of(
        run_call(tools, ToolCall("convert", {"value": 3, "from_unit": "kg", "to_unit": "m"})))
    assert "unknown unit 'parsec'" in error_of(
        run_call(tools, ToolCall("convert", {"value": 3, "from_unit": "parsec", "to_unit": "m"})))
    with pytest.raises(ToolError):
        convert(float("nan"), "m", "km")


def test_demo_tools_schemas():
    tools = demo_tools()
    assert [t.name for t in tools] == ["calculator", "lookup", "convert"]
    for t in tools:
        schema = t.schema()["function"]
        assert schema["parameters"]["required"] == list(schema["parameters"]["properties"])
        assert len(schema["description"]) < 50  # rendered into every prompt of a tiny model
