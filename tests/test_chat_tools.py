"""Tool use end to end, on a real tiny MiniMind: the shared loop (model/chat.py `chat_with_tools`), eval_model.py,
the MCP demo server, the terminal API client and the web chat.

The model is trained here, in seconds, until its greedy replies are known (tests/helpers.py `memorizing_model`):
asked QUESTION with the calculator on offer (alone, or among the three demo tools as the MCP server lists them),
it calls CALL; given the tool's result, it answers ANSWER. Everything between (parsing the call from the token
stream, running the real calculator, rendering the result back into the prompt) is the real code.
"""
import io
import os
import subprocess
import sys

import pytest

from demo.tools import demo_tools
from model.chat import ReplyStream, chat_prompt_ids, chat_with_tools
from model.generation import generate_reply
from model.toolcall import ToolCall
from tests.helpers import ROOT, memorizing_model, save_checkpoint, tokenizer

QUESTION = "What is 12*13?"
CALL = ToolCall("calculator", {"expression": "12*13"})
ANSWER = "12*13 = 156."
TOOL_LINE = '[tool] calculator({"expression": "12*13"}) → 156'
MCP_SERVER = f'"{sys.executable}" scripts/mcp_demo_tools.py'

def examples(offered) -> list[tuple[list[int], list[int]]]:
    """(prompt, reply) token ids of the two turns, as the loop renders them: the call, then the answer."""
    tok, schemas = tokenizer(), [tool.schema() for tool in offered]
    asked = [{"role": "user", "content": QUESTION}]
    first = chat_prompt_ids(tok, asked, schemas)
    second = chat_prompt_ids(tok, asked + [{"role": "assistant", "content": "", "tool_calls": [CALL.openai("call_0")]},
                                           {"role": "tool", "tool_call_id": "call_0", "content": "156"}], schemas)
    assert second[:len(first)] == first
    call = second[len(first):second.index(tok.eos_token_id, len(first)) + 1]  # the call as the template writes it
    return [(first, call), (second, tok(ANSWER, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model, checkpoint path): the calculator alone on offer (--tools calculator), or the three demo tools
    (as the MCP demo server lists them)."""
    tools = demo_tools()
    model = memorizing_model(examples(tools[:1]) + examples(tools))
    return model, save_checkpoint(model, tmp_path_factory.mktemp("tool_model"))


def model_turn(model, offered):
    """generate_turn for chat_with_tools: one greedy reply of the in-process model."""
    names = [tool.name for tool in offered]

    def turn(messages):
        ids = chat_prompt_ids(tokenizer(), messages, [tool.schema() for tool in offered])
        reply = ReplyStream(tokenizer(), prompt_ids=ids, tools=names)
        for _ in generate_reply(model, ids, reply, max_new_tokens=64, temperature=0):
            pass
        return reply
    return turn


def test_loop_runs_the_call_answers_and_stops_at_max_turns(trained):
    model, _ = trained
    calculator = demo_tools()[:1]
    messages, seen = [{"role": "user", "content": QUESTION}], []
    reply = chat_with_tools(model_turn(model, calculator), messages, calculator, 4, lambda *run: seen.append(run))
    assert (reply.content, reply.tool_calls) == (ANSWER, [])
    assert seen == [(CALL, "156")]  # the real calculator's result
    user, assistant, result = messages  # the exchange before the answer, in OpenAI's form
    call_id = assistant["tool_calls"][0]["id"]
    assert assistant == {"role": "assistant", "content": "", "tool_calls": [CALL.openai(call_id)]}
    assert result == {"role": "tool", "tool_call_id": call_id, "content": "156"}

    messages, seen = [{"role": "user", "content": QUESTION}], []
    reply = chat_with_tools(model_turn(model, calculator), messages, calculator, 1, lambda *run: seen.append(run))
    assert reply.tool_calls == [CALL]  # the limit: the call is returned, not run
    assert seen == [] and len(messages) == 1


def test_cli_calls_the_calculator_then_answers(trained):
    """eval_model.py in a subprocess, chatting from piped stdin."""
    command = [sys.executable, "eval_model.py", "--load_from", str(trained[1]), "--interactive", "--temperature",
               "0", "--max_new_tokens", "64", "--device", "cpu", "--dtype", "float32", "--tools", "calculator"]
    result = subprocess.run(command, cwd=ROOT, input=QUESTION + "\n", capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # see conftest's one_torch_thread
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "tools: calculator" in out
    assert TOOL_LINE in out and ANSWER in out.split(TOOL_LINE)[1]  # the answer comes after the result
    assert "<tool_call>" not in out and "stopped" not in out


def test_cli_with_the_mcp_server_and_its_limits(trained, capsys, monkeypatch):
    """In process (the subprocess test above covers the script's start): the tools of the MCP demo server, then
    --max_tool_turns 1, then flags that name what is wrong."""
    import eval_model
    flags = ["--load_from", str(trained[1]), "--interactive", "--temperature", "0", "--max_new_tokens", "64",
             "--device", "cpu", "--dtype", "float32"]
    monkeypatch.setattr("sys.stdin", io.StringIO(QUESTION + "\n"))
    eval_model.main(flags + ["--mcp", MCP_SERVER])
    out = capsys.readouterr().out
    assert "tools: calculator, lookup, convert" in out  # listed by the server, run by it
    assert TOOL_LINE in out and ANSWER in out.split(TOOL_LINE)[1]

    monkeypatch.setattr("sys.stdin", io.StringIO(QUESTION + "\n"))
    eval_model.main(flags + ["--tools", "all", "--max_tool_turns", "1"])
    out = capsys.readouterr().out
    assert TOOL_LINE not in out and ANSWER not in out
    assert "[tool] stopped: the reply limit (--max_tool_turns 1) came first, the last calls were not run" in out

    for bad, message in ((["--tools", "abacus"], "unknown tool abacus: there are calculator, lookup, convert"),
                         (["--mcp", "no-such-command-here"], "--mcp 'no-such-command-here'")):
        with pytest.raises(SystemExit) as exit_info:
            eval_model.main(flags + bad)
        assert message in str(exit_info.value.code)


def test_web_chat_shows_each_call_folded(trained, tmp_path):
    from tests.test_web_demo import open_demo
    save_checkpoint(trained[0], tmp_path)
    app = open_demo(tmp_path)
    app.sidebar.slider[0].set_value(0.0)  # greedy
    app.sidebar.slider[2].set_value(64)  # max new tokens: the call is 47
    app.sidebar.multiselect[0].select("calculator")
    app.chat_input[0].set_value(QUESTION).run()
    assert not app.exception
    assistant = app.chat_message[1]
    call, = assistant.expander
    assert call.label == 'Tool call: `calculator({"expression": "12*13"})`'
    assert call.code[0].value == "156"
    assert assistant.markdown[-1].value == ANSWER

    app.run()  # a rerun shows the conversation again from the session: the call is still folded there
    assert [e.label for e in app.chat_message[1].expander] == [call.label]


def test_api_client_runs_the_servers_tool_calls_on_the_mcp_server(trained, capsys, monkeypatch):
    """The standard OpenAI client loop: the server (this project's, on the trained model) answers with
    `tool_calls`, the client runs them on the MCP demo server and sends the results back as `tool` messages."""
    from scripts import chat_openai_api
    from tests.test_serve import live_server
    monkeypatch.setattr("sys.stdin", io.StringIO(QUESTION + "\n"))
    with live_server(trained[0]) as url:
        chat_openai_api.main(["--base_url", f"{url}/v1", "--temperature", "0", "--max_tokens", "64",
                              "--mcp", MCP_SERVER])
    out = capsys.readouterr().out
    assert "tools: calculator, lookup, convert" in out
    assert TOOL_LINE in out and ANSWER in out.split(TOOL_LINE)[1]
