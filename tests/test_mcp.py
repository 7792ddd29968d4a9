"""The demo's tools over the Model Context Protocol: scripts/mcp_demo_tools.py (server) and mcp_tools (client),
each also checked against the SDK's own other half, so neither of ours is the only judge of the other."""
import json
import os
import sys
import threading

import anyio
import pytest

from demo.tools import demo_tools, lookup_in
from demo.world import build_world
from model.toolcall import ToolCall
from model.tools import mcp_tools, run_call

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER = os.path.join(ROOT, "scripts", "mcp_demo_tools.py")


def server_children() -> list[int]:
    """Our child processes running the demo server (Linux /proc)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError, IndexError):
            continue  # it exited while we looked
        if ppid == os.getpid() and b"mcp_demo_tools.py" in cmdline:
            pids.append(int(pid))
    return pids


@pytest.fixture(scope="module")
def served():
    """One server for the module (each start costs seconds of imports): (tools, close, its pid)."""
    before = set(server_children())
    tools, close = mcp_tools([sys.executable, SERVER])
    (pid,) = set(server_children()) - before
    yield tools, close, pid
    close()


def test_lists_the_demo_tools_with_their_exact_schemas(served):
    tools, _, _ = served
    # Compared as rendered JSON, key order included: the chat template writes the schemas into the prompt.
    assert [json.dumps(t.schema(), ensure_ascii=False) for t in tools] == \
        [json.dumps(t.schema(), ensure_ascii=False) for t in demo_tools()]


def test_calls_give_what_local_calls_give(served):
    tools, _, _ = served
    local = demo_tools()
    town = build_world(42).towns[3]
    calls = [ToolCall("calculator", {"expression": "12*13"}), ToolCall("calculator", {"expression": "1/3"}),
             ToolCall("lookup", {"name": town.name.zh}), ToolCall("lookup", {"name": town.name.en}),
             ToolCall("convert", {"value": 1, "from_unit": "mile", "to_unit": "km"})]
    for call in calls:
        assert run_call(tools, call) == run_call(local, call)
    assert run_call(tools, calls[0]) == "156"
    assert json.loads(run_call(tools, calls[2]))["name"] == town.name.zh


def test_tool_errors_come_back_as_error_results(served):
    tools, _, _ = served
    for call in (ToolCall("calculator", {"expression": "1+a"}), ToolCall("lookup", {"name": "Paris"}),
                 ToolCall("convert", {"value": 1, "from_unit": "kg", "to_unit": "m"})):
        text = run_call(tools, call)
        assert "error" in json.loads(text) and text == run_call(demo_tools(), call)
    # The server checks arguments itself too (a client need not): straight to the tool's fn, past run_call.
    calculator = next(t for t in tools if t.name == "calculator")
    with pytest.raises(Exception, match="missing argument: expression"):
        calculator.fn()


def test_a_server_that_does_not_start():
    threads = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="did not start.*FileNotFoundError"):
        mcp_tools([os.path.join(ROOT, "no-such-server")])
    with pytest.raises(RuntimeError, match="did not start"):
        mcp_tools([sys.executable, "-c", "pass"])  # exits at once: an error, not a hang
    assert set(threading.enumerate()) <= threads  # the client's loop thread is gone


def test_server_with_the_sdk_client():
    """The SDK's own ClientSession against our server, with --seed: a second world."""
    from mcp import ClientSession, StdioServerParameters, stdio_client

    person = build_world(7).people[0]

    async def talk():
        params = StdioServerParameters(command=sys.executable, args=[SERVER, "--seed", "7"])
        async with stdio_client(params, errlog=sys.__stderr__) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            listed = (await session.list_tools()).tools
            ok = await session.call_tool("lookup", {"name": person.name.en})
            bad = await session.call_tool("calculator", {"expression": "2**10000"})
            missing = await session.call_tool("nope", {})
        return listed, ok, bad, missing

    listed, ok, bad, missing = anyio.run(talk)
    assert {t.name: t.input_schema for t in listed} == {
        t.name: t.schema()["function"]["parameters"] for t in demo_tools(7)}
    assert not ok.is_error and json.loads(ok.content[0].text) == lookup_in(7, person.name.en)
    assert bad.is_error and "exponent" in bad.content[0].text
    assert missing.is_error and "unknown tool 'nope'" in missing.content[0].text


def test_close_stops_the_server(served):
    """Last in the file: it closes the module's server."""
    tools, close, pid = served
    close()
    close()  # a second close is harmless
    assert pid not in server_children()
    assert not any(t.name == "mcp-client" for t in threading.enumerate())
    assert "closed" in json.loads(run_call(tools, ToolCall("calculator", {"expression": "1"})))["error"]
