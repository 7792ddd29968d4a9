"""Serve the demo's tools (calculator, lookup, convert) as a Model Context Protocol server over stdio.

    python scripts/mcp_demo_tools.py [--seed 42]     # stdio: an MCP client starts it and talks on stdin/stdout

    from model.tools import mcp_tools
    tools, close = mcp_tools([sys.executable, "scripts/mcp_demo_tools.py"])

It uses the SDK's low-level `Server`, not `MCPServer`'s decorators, so the listed input schemas are exactly
our `Tool.parameters` (the decorator would derive its own from Python signatures). Calls run through
`model.tools.execute`, the same argument checks, time limit and output limit as a local `run_call`; a failure
comes back as an MCP error result (isError) with the one-line message, never as a crashed request.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # for `python scripts/<name>.py`: the packages sit beside scripts/
import anyio
from mcp import types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from demo.tools import demo_tools
from model.toolcall import ToolCall
from model.tools import Tool, ToolError, execute


def build_server(tools: list[Tool]) -> Server:
    by_name = {t.name: t for t in tools}
    listing = types.ListToolsResult(tools=[types.Tool(name=t.name, description=t.description, input_schema=t.parameters)
                                           for t in tools])

    async def list_tools(ctx, params) -> types.ListToolsResult:
        return listing

    async def call_tool(ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        call = ToolCall(params.name, params.arguments or {})
        try:
            # In a worker thread: execute blocks while it waits for the tool, and the server must keep reading.
            text = await anyio.to_thread.run_sync(execute, by_name, call)
        except ToolError as e:
            return types.CallToolResult(content=[types.TextContent(type="text", text=str(e))], is_error=True)
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    return Server("minimind-demo-tools", on_list_tools=list_tools, on_call_tool=call_tool)


async def serve(seed: int):
    server = build_server(demo_tools(seed))
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=42, help="the demo world's seed (as make_demo_data.py)")
    args = parser.parse_args(argv)
    anyio.run(serve, args.seed)


if __name__ == "__main__":
    main()
