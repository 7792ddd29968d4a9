"""Tools the model can call, and the sandbox that runs them.

A `Tool` is a name, a short description, a JSON schema of its arguments and a Python function; `schema()`
is the OpenAI form the chat template lists in the system turn. `run_call` runs one parsed `ToolCall` and
always returns the text of the tool message: a model's bad call (unknown tool, wrong arguments, a tool's
complaint, a crash, a time-out, a flood of output) becomes `{"error": "..."}` that the model can read and
recover from, never an exception in the caller's loop.

`calculator` is exact arithmetic with a parser of its own (never `eval`), and `mcp_tools` turns the tools of a
Model Context Protocol server into `Tool`s, so the CLI, the web chat and the agentic rollout treat local and
remote tools alike. This module imports neither torch nor transformers; `mcp` is imported only by `mcp_tools`.
"""
from __future__ import annotations

import json
import re
import sys
import threading
from dataclasses import dataclass
from decimal import Context, Decimal
from fractions import Fraction
from typing import Callable

from .toolcall import ToolCall


class ToolError(Exception):
    """A tool's complaint about its arguments; the message goes back to the model, so it says what to fix."""


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object
    fn: Callable[..., object]  # fn(**arguments) -> str, or a JSON-serialisable value

    def schema(self) -> dict:
        """The OpenAI `tools` entry, as the chat template renders it."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


# ---- running a call -------------------------------------------------------------------------------------

JSON_TYPES = {"string": str, "number": (int, float), "integer": int, "boolean": bool, "array": list,
              "object": dict, "null": type(None)}


def _type_ok(value, types) -> bool:
    for t in [types] if isinstance(types, str) else types:
        if t not in JSON_TYPES:
            return True  # a type we do not know: the tool itself judges the value
        if isinstance(value, bool) and t != "boolean":
            continue  # bool is an int subclass in Python, never a number in JSON
        if isinstance(value, JSON_TYPES[t]) or (t == "integer" and isinstance(value, float) and value.is_integer()):
            return True
    return False


def check_arguments(parameters: dict, arguments: dict) -> str | None:
    """What is wrong with `arguments` under the schema's required/properties/types/enum, or None.
    Extra arguments are refused unless the schema says `additionalProperties: true`: a tiny model that
    invents an argument should hear so rather than have it silently dropped."""
    properties = parameters.get("properties", {})
    missing = [k for k in parameters.get("required", []) if k not in arguments]
    if missing:
        return f"missing argument{'s' * (len(missing) > 1)}: {', '.join(missing)}"
    if parameters.get("additionalProperties") is not True:
        extra = [k for k in arguments if k not in properties]
        if extra:
            return (f"unexpected argument{'s' * (len(extra) > 1)}: {', '.join(extra)} "
                    f"(expected: {', '.join(properties)})")
    for key, value in arguments.items():
        spec = properties.get(key, {})
        if "type" in spec and not _type_ok(value, spec["type"]):
            return f"argument {key!r} must be of type {spec['type']}, got {type(value).__name__}"
        if "enum" in spec and value not in spec["enum"]:
            return f"argument {key!r} must be one of {spec['enum']}"
    return None


def result_text(value) -> str:
    """A tool's result as the tool message: a str as is, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def error_text(message: str) -> str:
    return json.dumps({"error": " ".join(str(message).split())}, ensure_ascii=False)  # one line


def execute(tools, call: ToolCall, timeout: float = 5.0, max_chars: int = 2000) -> str:
    """`run_call`, but every failure is raised as ToolError with the one-line message (the MCP server needs
    to tell errors from results)."""
    by_name = tools if isinstance(tools, dict) else {t.name: t for t in tools}
    tool = by_name.get(call.name)
    if tool is None:
        raise ToolError(f"unknown tool {call.name!r} (available: {', '.join(by_name) or 'none'})")
    problem = check_arguments(tool.parameters, call.arguments)
    if problem:
        raise ToolError(f"{tool.name}: {problem}")

    # A daemon thread, not a ThreadPoolExecutor: Python cannot kill a running function, so on a time-out we
    # only stop waiting, and an executor's threads would still be joined (hang) at interpreter exit. That is
    # why every tool bounds its own work (the calculator its input length, depth and exponents).
    box = {}

    def work():
        try:
            box["value"] = tool.fn(**call.arguments)
        except BaseException as e:  # reported to the caller's thread below
            box["error"] = e

    worker = threading.Thread(target=work, daemon=True, name=f"tool-{tool.name}")
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise ToolError(f"{tool.name} timed out after {timeout:g} s")
    if "error" in box:
        e = box["error"]
        # A tool's own complaint goes back as the tool wrote it: the model knows which tool it called.
        raise ToolError(str(e) if isinstance(e, ToolError) else f"{tool.name} failed: {type(e).__name__}: {e}")
    try:
        text = result_text(box["value"])
    except (TypeError, ValueError) as e:
        raise ToolError(f"{tool.name} returned a result that is not JSON ({e})") from None
    if len(text) > max_chars:
        raise ToolError(f"{tool.name} returned {len(text)} characters, more than the limit of {max_chars}")
    return text


def run_call(tools, call: ToolCall, timeout: float = 5.0, max_chars: int = 2000) -> str:
    """The text of the tool message for `call`. Never raises: any failure is '{"error": "<one line>"}'.
    tools: dict name -> Tool, or a list of Tool. The tool runs in a worker thread that is abandoned, not
    stopped, after `timeout` seconds (Python cannot kill a running function), so a tool must bound its own
    work; `max_chars` caps the result the model has to read."""
    try:
        return execute(tools, call, timeout, max_chars)
    except ToolError as e:
        return error_text(str(e))
    except Exception as e:  # a broken Tool object (e.g. a schema that is not a dict): still the model's turn
        return error_text(f"{call.name} failed: {type(e).__name__}: {e}")


# ---- the calculator -------------------------------------------------------------------------------------

MAX_EXPRESSION_CHARS, MAX_DEPTH, MAX_EXPONENT, MAX_DIGITS = 200, 50, 64, 100
_LIMIT = 10 ** MAX_DIGITS
# Full-width forms (ＡＳＣＩＩ shifted by 0xFEE0) and the typographic operators, one character for one, so an
# error's position still points into the text the model wrote.
_NORMALISE = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)} | {ord("×"): "*", ord("÷"): "/", ord("−"): "-",
                                                               ord("\u3000"): " "}
_TOKEN = re.compile(r"\s*(?:([0-9]+(?:\.[0-9]*)?|\.[0-9]+)|(\*\*|//|[-+*/%^()]))")


def _tokens(written: str) -> list[tuple[int, str]]:
    """(position, token) pairs; a number is a token of digits, anything not arithmetic is refused."""
    text, out, i = written.translate(_NORMALISE), [], 0
    while i < len(text):
        m = _TOKEN.match(text, i)
        if not m:
            if not text[i:].strip():
                break
            j = len(text) - len(text[i:].lstrip())  # the offending character, past any spaces
            raise ToolError(f"unexpected character {written[j]!r} at position {j}: only numbers, + - * / // % ** ^ "
                            f"and parentheses are allowed")
        out.append((m.start(m.lastindex), "**" if m.group(m.lastindex) == "^" else m.group(m.lastindex)))
        i = m.end()
    return out


def _bounded(x: Fraction) -> Fraction:
    if abs(x.numerator) >= _LIMIT or x.denominator >= _LIMIT:
        raise ToolError(f"number too large (more than {MAX_DIGITS} digits)")
    return x


class _Parser:
    """Precedence and associativity as in Python: + - < * / // % < unary - + < ** (right-associative,
    binding tighter than a unary minus on its left: -2**2 = -4, and 2**-1 = 0.5)."""

    def __init__(self, text: str):
        self.tokens, self.i, self.depth = _tokens(text), 0, 0

    def peek(self) -> str | None:
        return self.tokens[self.i][1] if self.i < len(self.tokens) else None

    def take(self) -> str:
        self.i += 1
        return self.tokens[self.i - 1][1]

    def fail(self, what: str):
        if self.i < len(self.tokens):
            pos, tok = self.tokens[self.i]
            raise ToolError(f"{what}, found {tok!r} at position {pos}")
        raise ToolError(f"{what}, found the end of the expression")

    def parse(self) -> Fraction:
        if not self.tokens:
            raise ToolError("empty expression")
        value = self.sum()
        if self.peek() is not None:
            self.fail("expected an operator")
        return value

    def deeper(self, rule) -> Fraction:
        # Parentheses, signs and exponents are where the grammar recurses: one counter caps all three.
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ToolError(f"expression nested more than {MAX_DEPTH} levels deep")
        value = rule()
        self.depth -= 1
        return value

    def sum(self) -> Fraction:
        value = self.product()
        while self.peek() in ("+", "-"):
            op, right = self.take(), self.product()
            value = _bounded(value + right if op == "+" else value - right)
        return value

    def product(self) -> Fraction:
        value = self.unary()
        while self.peek() in ("*", "/", "//", "%"):
            op, right = self.take(), self.unary()
            if op != "*" and right == 0:
                raise ToolError("division by zero")
            value = (value * right if op == "*" else value / right if op == "/"
                     else Fraction(value // right) if op == "//" else value % right)
            value = _bounded(value)
        return value

    def unary(self) -> Fraction:
        if self.peek() in ("+", "-"):
            value = -self.deeper(self.unary) if self.take() == "-" else self.deeper(self.unary)
            return value
        return self.power()

    def power(self) -> Fraction:
        base = self.atom()
        if self.peek() != "**":
            return base
        self.take()
        exponent = self.deeper(self.unary)
        if exponent.denominator != 1:
            raise ToolError("only whole-number exponents are supported")
        if abs(exponent) > MAX_EXPONENT:
            raise ToolError(f"exponent {exponent} is out of range (at most {MAX_EXPONENT} in size)")
        if base == 0 and exponent < 0:
            raise ToolError("division by zero")
        # Refuse before computing: (bits - 1) * |exponent| is a lower bound on the result's size in bits.
        bits = max(abs(base.numerator).bit_length(), base.denominator.bit_length()) - 1
        if bits * abs(exponent) > MAX_DIGITS * 3.33:
            raise ToolError(f"number too large (more than {MAX_DIGITS} digits)")
        return _bounded(base ** int(exponent))

    def atom(self) -> Fraction:
        token = self.peek()
        if token == "(":
            self.take()
            value = self.deeper(self.sum)
            if self.peek() != ")":
                self.fail("expected ')'")
            self.take()
            return value
        if token is None or not (token[0].isdigit() or token[0] == "."):
            self.fail("expected a number or '('")
        return _bounded(Fraction(self.take()))


def format_number(x: Fraction) -> str:
    """An exact value as text: "156", "0.125", "-2.5", or for a decimal that never ends, the fraction and
    12 significant digits: "1/3 ≈ 0.333333333333"."""
    if x.denominator == 1:
        return str(x.numerator)
    twos, fives = _multiplicity(x.denominator, 2), _multiplicity(x.denominator, 5)
    if x.denominator == 2 ** twos * 5 ** fives:  # only then does the decimal end, after max(twos, fives) digits
        k = max(twos, fives)
        digits = str(abs(x.numerator) * 10 ** k // x.denominator).rjust(k + 1, "0")
        return f"{'-' * (x < 0)}{digits[:-k]}.{digits[-k:]}"
    approx = Context(prec=12).divide(Decimal(x.numerator), Decimal(x.denominator))
    return f"{x.numerator}/{x.denominator} ≈ {approx}"


def _multiplicity(n: int, p: int) -> int:
    k = 0
    while n % p == 0:
        n, k = n // p, k + 1
    return k


def calculate(expression: str) -> Fraction:
    """The exact value of an arithmetic expression; ToolError says what is wrong with one."""
    if not isinstance(expression, str):
        raise ToolError("the expression must be a string")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    return _Parser(expression).parse()


def calculator(expression: str) -> str:
    """Exact arithmetic: integers and decimals, + - * / // % ** (or ^), unary signs and parentheses,
    computed in fractions. "12*13" -> "156", "1/8" -> "0.125", "1/3" -> "1/3 ≈ 0.333333333333"."""
    return format_number(calculate(expression))


CALCULATOR = Tool("calculator", "Exact arithmetic on an expression",
                  {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
                  calculator)


# ---- tools from an MCP server ---------------------------------------------------------------------------

def mcp_tools(command: list[str], timeout: float = 30.0) -> tuple[list[Tool], Callable[[], None]]:
    """Start a Model Context Protocol stdio server (`command`: its argv), list its tools and return them as
    Tools whose fn calls the server synchronously, plus close(), which stops the server.

    The SDK is async and its session must be entered and left by one task, so a background thread runs an
    asyncio loop with one task that owns the session from start to close; tool calls are submitted to that
    loop from any thread. `timeout` bounds the start and each call. A tool error from the server (isError)
    is raised as ToolError with the server's text, so run_call reports it like a local tool's complaint.
    Raises RuntimeError, saying why, when the server does not start or list its tools.
    """
    import asyncio  # here, not at the top: asyncio and mcp cost a tool user that never runs a server
    import concurrent.futures

    from mcp import ClientSession, StdioServerParameters, stdio_client

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True, name="mcp-client")
    thread.start()
    state, ready, stop = {}, concurrent.futures.Future(), asyncio.Event()  # ready: the server's tool listing

    async def own_session():
        state["task"] = asyncio.current_task()
        params = StdioServerParameters(command=command[0], args=list(command[1:]))
        # The server's stderr goes to the process's own: the SDK's default binds sys.stderr at its import, which
        # may be a stream replaced since (under pytest, an old test's closed capture), and needs a real file.
        async with stdio_client(params, errlog=sys.__stderr__) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            state["session"] = session
            ready.set_result((await session.list_tools()).tools)
            await stop.wait()

    async def shut_down(grace: float):
        stop.set()  # leaving the contexts closes the server's stdin and waits for it to exit
        if not (await asyncio.wait([state["task"]], timeout=grace))[0]:
            # Still starting (or stuck): cancelling runs the SDK's bounded shutdown, which terminates and
            # then kills the server. The loop must keep running until that is done, or the process lingers.
            state["task"].cancel()
            await asyncio.wait([state["task"]])

    owner = asyncio.run_coroutine_threadsafe(own_session(), loop)

    def close(grace: float = timeout):
        if "closed" in state:
            return
        state["closed"] = True
        asyncio.run_coroutine_threadsafe(shut_down(grace), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

    # Whichever comes first: the listing, or the owner's end (the command does not start, the server dies).
    concurrent.futures.wait([ready, owner], timeout, return_when=concurrent.futures.FIRST_COMPLETED)
    if not ready.done():
        close(grace=0)
        error = owner.exception() if owner.done() and not owner.cancelled() else None
        while isinstance(error, BaseExceptionGroup):  # anyio wraps the cause in task-group layers
            error = error.exceptions[0]
        why = f"{type(error).__name__}: {error}" if error else f"no tool listing within {timeout:g} s"
        raise RuntimeError(f"MCP server {' '.join(command)!r} did not start ({why})") from error
    listed = ready.result()

    def make_fn(name: str):
        def fn(**arguments):
            if "closed" in state:
                raise ToolError(f"the MCP server of {name} is closed")
            result = asyncio.run_coroutine_threadsafe(
                state["session"].call_tool(name, arguments, read_timeout_seconds=timeout), loop).result(timeout + 1)
            texts = [block.text if block.type == "text" else f"[{block.type} content]" for block in result.content]
            if result.is_error:
                raise ToolError("\n".join(texts) or "the server reported an error")
            if not texts and result.structured_content is not None:
                return result.structured_content
            return "\n".join(texts)
        return fn

    tools = [Tool(t.name, t.description or "", _conventional(t.input_schema), make_fn(t.name)) for t in listed]
    return tools, close


def _conventional(schema):
    """A JSON schema with its keys in the usual order: "type", "properties" (the required ones first, in the
    order `required` lists them), "required", then the rest. Servers built on the SDK send every key sorted,
    and the chat template renders a schema as written, so without this an MCP tool would not read the same
    in the prompt as the very same tool run locally."""
    if isinstance(schema, list):
        return [_conventional(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    first = [k for k in ("type", "description", "properties", "items", "required") if k in schema]
    out = {}
    for key in first + [k for k in schema if k not in first]:
        value = schema[key]
        if key == "properties" and isinstance(value, dict):  # a map of names to schemas, not a schema
            required = [k for k in schema.get("required", []) if k in value]
            out[key] = {k: _conventional(value[k]) for k in required + [k for k in value if k not in required]}
        else:
            out[key] = _conventional(value)
    return out
