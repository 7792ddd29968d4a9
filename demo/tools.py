"""The demo's tools: the calculator, `lookup` (facts of the demo world, in English or Chinese) and `convert`
(exact unit conversion). The tool-use data and the agentic rollout offer these; scripts/mcp_demo_tools.py
serves the same three over MCP.

Descriptions are kept short on purpose: the schemas are rendered into every prompt of a tiny model.
"""
from __future__ import annotations

from fractions import Fraction
from functools import lru_cache, partial

from model.tools import CALCULATOR, Tool, ToolError, format_number

from .world import FACT_ATTRS, Name, build_world, kind_of


# ---- lookup ----------------------------------------------------------------------------------------------

def _key(name: str) -> str:
    return " ".join(name.split()).casefold()


@lru_cache(maxsize=4)
def _index(seed: int) -> dict:
    """Lower-cased English and Chinese name -> (entity, language), built once per world."""
    world = build_world(seed)
    index = {}
    for entity in world.countries + world.towns + world.people + world.herbs:
        for lang in ("en", "zh"):
            index[_key(entity.name[lang])] = (entity, lang)
    return index


def _value(x, lang: str):
    if isinstance(x, int):
        return x  # a year stays a number
    return x[lang] if isinstance(x, Name) else x.name[lang]  # a town or country answers with its name


def lookup_in(seed: int, name: str) -> dict:
    """The facts of the entity called `name`, in the language of the name given."""
    found = _index(seed).get(_key(name))
    if found is None:
        raise ToolError(f"no town, person, country or herb called {name.strip()!r}")
    entity, lang = found
    kind = kind_of(entity)
    return {"name": entity.name[lang], "kind": kind} | {a: _value(getattr(entity, a), lang) for a in FACT_ATTRS[kind]}


# ---- convert ---------------------------------------------------------------------------------------------

# unit -> (dimension, size in the dimension's base unit: metre, gram, second), all exact by definition.
UNITS = {
    "mm": ("length", Fraction(1, 1000)), "cm": ("length", Fraction(1, 100)), "m": ("length", Fraction(1)),
    "km": ("length", Fraction(1000)), "inch": ("length", Fraction("0.0254")), "foot": ("length", Fraction("0.3048")),
    "mile": ("length", Fraction("1609.344")),
    "g": ("mass", Fraction(1)), "kg": ("mass", Fraction(1000)), "pound": ("mass", Fraction("453.59237")),
    "ounce": ("mass", Fraction("453.59237") / 16),
    "second": ("time", Fraction(1)), "minute": ("time", Fraction(60)), "hour": ("time", Fraction(3600)),
    "day": ("time", Fraction(86400)),
}
ALIASES = {
    "mm": "millimetre millimetres millimeter millimeters 毫米",
    "cm": "centimetre centimetres centimeter centimeters 厘米",
    "m": "metre metres meter meters 米",
    "km": "kilometre kilometres kilometer kilometers 千米 公里",
    "inch": "in inches 英寸", "foot": "ft feet 英尺", "mile": "mi miles 英里",
    "g": "gram grams 克", "kg": "kilogram kilograms 千克 公斤", "pound": "lb lbs pounds 磅", "ounce": "oz ounces 盎司",
    "second": "s sec secs seconds 秒", "minute": "min mins minutes 分钟", "hour": "h hr hrs hours 小时",
    "day": "d days 天",
}
UNIT_NAMES = {unit: unit for unit in UNITS} | {name: unit for unit, names in ALIASES.items() for name in names.split()}


def _unit(text: str) -> str:
    unit = UNIT_NAMES.get(text.strip().casefold()) if isinstance(text, str) else None
    if unit is None:
        raise ToolError(f"unknown unit {text!r} (known: {', '.join(UNITS)})")
    return unit


def convert(value, from_unit: str, to_unit: str) -> str:
    """`value` from_unit in to_unit, exactly: "1.609344 km", "1/3 ≈ 0.333333333333 hour"."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
        raise ToolError("value must be a finite number")
    # repr gives the decimal the caller wrote (1.1, not the binary float 1.100000000000000088...).
    exact = Fraction(value) if isinstance(value, int) else Fraction(repr(value))
    (dim_from, size_from), (dim_to, size_to) = UNITS[_unit(from_unit)], UNITS[_unit(to_unit)]
    if dim_from != dim_to:
        raise ToolError(f"cannot convert {from_unit.strip()} ({dim_from}) to {to_unit.strip()} ({dim_to})")
    return f"{format_number(exact * size_from / size_to)} {to_unit.strip()}"


# ---- the tools -------------------------------------------------------------------------------------------

def demo_tools(seed: int = 42) -> list[Tool]:
    """The calculator, lookup (in the world `build_world(seed)`) and convert."""
    string = {"type": "string"}
    return [
        CALCULATOR,
        Tool("lookup", "Facts about a town, person, country or herb",
             {"type": "object", "properties": {"name": string}, "required": ["name"]},
             partial(lookup_in, seed)),
        Tool("convert", "Convert a quantity between units",
             {"type": "object", "properties": {"value": {"type": "number"}, "from_unit": string, "to_unit": string},
              "required": ["value", "from_unit", "to_unit"]},
             convert),
    ]
