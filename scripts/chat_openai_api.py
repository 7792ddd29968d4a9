"""Chat in the terminal with any OpenAI-compatible endpoint: this project's server, vLLM, Ollama, llama.cpp...

    python scripts/serve_openai_api.py --model_mode 3 &          # in another terminal
    python scripts/chat_openai_api.py                             # http://127.0.0.1:8998/v1
    python scripts/chat_openai_api.py --base_url http://127.0.0.1:11434/v1 --model minimind
    python scripts/chat_openai_api.py --tools calculator --mcp "python scripts/mcp_demo_tools.py"

Streams the reply, keeps the conversation (the last --history_cnt exchanges go with each question) and shows
a reasoning model's `reasoning_content` apart from its answer. Type 'exit' or Ctrl-D to leave.

With tools, the standard OpenAI client loop: the request lists them (`tools`), the server answers with
`tool_calls`, this client runs them here and sends the results back as `tool` messages, until an answer.
"""
import argparse
import json
import os
import sys
import time
from contextlib import ExitStack

from openai import OpenAI, OpenAIError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # for `python scripts/<name>.py`: the packages sit beside scripts/
from demo.tools import demo_tools
from model.chat import (Delta, ReplyPrinter, add_tool_args, chat_with_tools, open_tools, print_tool_call,
                        recent_history)
from model.toolcall import ToolCallError, parse_call


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base_url", default="http://127.0.0.1:8998/v1")
    parser.add_argument("--api_key", default="none", help="the server's --api_key, if it has one")
    parser.add_argument("--model", default=None, help="default: the first model the server lists")
    parser.add_argument("--max_tokens", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=0.85)
    parser.add_argument("--top_p", type=float, default=0.85)
    parser.add_argument("--history_cnt", type=int, default=4, help="previous exchanges sent with a question")
    add_tool_args(parser)
    return parser.parse_args(argv)


def stream_reply(client, args, messages, schemas) -> Delta:
    """Print one reply as it streams, thinking apart from the answer; return it whole, with its tool calls."""
    stream = client.chat.completions.create(model=args.model, messages=messages, max_tokens=args.max_tokens,
                                            temperature=args.temperature, top_p=args.top_p, stream=True,
                                            **({"tools": schemas} if schemas else {}))  # OpenAI refuses []
    printer, reply, start = ReplyPrinter(), Delta(), time.perf_counter()
    calls = {}  # index -> [name, arguments]: a call streams as pieces of its JSON arguments
    for chunk in stream:
        if chunk.choices:
            delta = chunk.choices[0].delta
            # `reasoning_content` is not in OpenAI's schema: the client keeps it among the extra fields.
            text = Delta((delta.model_extra or {}).get("reasoning_content") or "", delta.content or "")
            printer(text)
            reply += text
            for piece in delta.tool_calls or []:
                if piece.function:
                    call = calls.setdefault(piece.index, ["", ""])
                    call[0] += piece.function.name or ""
                    call[1] += piece.function.arguments or ""
    printer.end()
    print(f"[{time.perf_counter() - start:.1f} s]")
    try:  # the one parser of calls, so arguments that are not a JSON object are refused here as everywhere
        reply.tool_calls = [parse_call(json.dumps({"name": name, "arguments": arguments or "{}"}))
                            for name, arguments in calls.values()]
    except ToolCallError as e:
        raise ToolCallError(f"the server sent a tool call that does not parse: {e}") from None
    return reply


def main(argv=None):
    args = parse_args(argv)
    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    with ExitStack() as stack:
        try:
            tools = stack.enter_context(open_tools(args, demo_tools()))
        except ValueError as e:  # a tool that does not exist, an MCP server that does not start
            sys.exit(f"error: {e}")
        try:
            args.model = args.model or client.models.list().data[0].id
        except OpenAIError as e:
            sys.exit(f"error: {args.base_url}: {e}")
        print(f"chatting with {args.model} at {args.base_url}; 'exit' to leave")
        if tools:
            print(f"tools: {', '.join(tool.name for tool in tools)}")
        chat(client, args, tools)


def chat(client, args, tools):
    """Questions from the keyboard, each answered through the tool loop."""
    schemas = [tool.schema() for tool in tools]
    history = []
    while True:
        try:
            question = input("\nyou> ").strip()
        except (EOFError, KeyboardInterrupt):
            break
        if question in ("exit", "quit"):
            break
        if not question:
            continue
        messages = recent_history(history, args.history_cnt) + [{"role": "user", "content": question}]
        print("minimind> ", end="", flush=True)
        try:
            reply = chat_with_tools(lambda sent: stream_reply(client, args, sent, schemas), messages,
                                    tools, args.max_tool_turns, print_tool_call)
        except (OpenAIError, ToolCallError) as e:
            print(f"\nerror: {e}")
            continue
        if reply.tool_calls:
            print(f"[tool] stopped: the reply limit (--max_tool_turns {args.max_tool_turns}) came first, "
                  "the last calls were not run")
        # Only the question and the final answer stay in the history: small models have short contexts.
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": reply.content}]


if __name__ == "__main__":
    main()
