"""Tool use through the API server (OpenAI function calling), driven by the official `openai` client.

A random model makes no calls, and `scripted_model` cannot say one (its next token depends on the current
one only, and a call repeats quotes and braces), so the server runs `memorizing_model`: trained here, in a
few seconds, to answer each conversation below with a fixed reply.
"""
import json

import openai
import pytest

from model.chat import chat_prompt_ids
from tests.helpers import memorizing_model, tokenizer
from tests.test_serve import client, live_server, raw_post

TOOLS = [{"type": "function", "function": {
    "name": name, "description": description,
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    for name, description in (("get_weather", "Current weather of a city"), ("get_time", "Local time of a city"))]
QUESTION = [{"role": "user", "content": "What's the weather in Paris?"}]
THINKER = [{"role": "user", "content": "Think first: weather in Paris?"}]
ROCKET = [{"role": "user", "content": "Launch the rocket."}]
PARIS = {"city": "Paris"}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
RESULT = "sunny, 21 C"
ANSWER = "It is sunny in Paris."
# The call's start the server writes for tool_choice "required" (and, longer, for a named function).
REQUIRED = '<tool_call>\n{"name": "'
NAMED_TIME = '<tool_call>\n{"name": "get_time", "arguments":'
BAD_CALL = '<tool_call>\n{"name": "launch_rocket", "arguments": {}}\n</tool_call>'  # not among the tools
THINKING = "<think>\nThe weather needs a tool.\n</think>\n\nLet me check.\n" + CALL


def ids(text):
    return tokenizer()(text, add_special_tokens=False)["input_ids"]


def prompt(messages):
    return chat_prompt_ids(tokenizer(), messages, TOOLS)


def after_call():
    """The conversation once the client has run the call: the assistant's call and the tool's result."""
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(PARIS)}}
    return QUESTION + [{"role": "assistant", "content": None, "tool_calls": [call]},
                       {"role": "tool", "tool_call_id": "call_1", "content": RESULT}]


@pytest.fixture(scope="module")
def tool_server():
    eos = [tokenizer().eos_token_id]
    model = memorizing_model([
        (prompt(QUESTION), ids(CALL) + eos),
        (prompt(after_call()), ids(ANSWER) + eos),
        # Where it would answer in text, a forced call's start makes it call get_time (the named start is a
        # prefix of this reply).
        (prompt(after_call()) + ids(REQUIRED), ids('get_time", "arguments": {"city": "Paris"}}\n</tool_call>') + eos),
        (prompt(THINKER), ids(THINKING) + eos),
        (prompt(ROCKET), ids(BAD_CALL) + eos)])
    with live_server(model) as url:
        yield url


def ask(url, messages, **kw):
    return client(url).chat.completions.create(model="tiny", messages=messages, tools=TOOLS, temperature=0, **kw)


def calls(message):
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]


def test_the_tool_loop(tool_server):
    first = ask(tool_server, QUESTION)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert calls(choice.message) == [("get_weather", PARIS)]
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert first.usage.prompt_tokens == len(prompt(QUESTION))
    # The client sends the SDK's message back as it came, and the call's result.
    for result in (RESULT, [{"type": "text", "text": RESULT}]):
        second = ask(tool_server, QUESTION + [choice.message, {"role": "tool", "tool_call_id": call.id,
                                                                "content": result}])
        # The server rendered the call and the <tool_response> exactly as the model was trained on them.
        assert second.usage.prompt_tokens == len(prompt(after_call()))
        assert second.choices[0].message.content == ANSWER and second.choices[0].finish_reason == "stop"
        assert second.choices[0].message.tool_calls is None


def test_streamed_calls_are_the_same(tool_server):
    chunks = list(ask(tool_server, QUESTION, stream=True))
    entries = [entry for c in chunks for entry in c.choices[0].delta.tool_calls or []]
    assert [e.index for e in entries] == [0] and entries[0].id.startswith("call_")
    assert [(e.function.name, json.loads(e.function.arguments)) for e in entries] == [("get_weather", PARIS)]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ""
    # The SDK's own stream helper accumulates the chunks into the non-streamed shape.
    with client(tool_server).chat.completions.stream(model="tiny", messages=QUESTION, tools=TOOLS,
                                                     temperature=0) as stream:
        final = stream.get_final_completion()
    assert calls(final.choices[0].message) == [("get_weather", PARIS)]
    assert final.choices[0].finish_reason == "tool_calls"


def test_tool_choice(tool_server):
    none = ask(tool_server, QUESTION, tool_choice="none").choices[0]
    assert none.message.content == CALL and none.message.tool_calls is None and none.finish_reason == "stop"
    # required and named, where the model answers in text: the server wrote the call's start, the model
    # finished it, and the reply is parsed from the start the server wrote
    required = ask(tool_server, after_call(), tool_choice="required")
    named = ask(tool_server, after_call(), tool_choice={"type": "function", "function": {"name": "get_time"}})
    for result, forced in ((required, REQUIRED), (named, NAMED_TIME)):
        assert calls(result.choices[0].message) == [("get_time", PARIS)]
        assert result.choices[0].finish_reason == "tool_calls" and result.choices[0].message.content is None
        assert result.usage.prompt_tokens == len(prompt(after_call()) + ids(forced))
    # parallel_tool_calls=false ends the reply at its first call: before the model's eos
    single = ask(tool_server, QUESTION, parallel_tool_calls=False)
    assert calls(single.choices[0].message) == [("get_weather", PARIS)]
    assert single.usage.completion_tokens == len(ids(CALL)) == ask(tool_server, QUESTION).usage.completion_tokens - 1
    with pytest.raises(openai.BadRequestError) as e:  # the named function must be among the tools
        ask(tool_server, QUESTION, tool_choice={"type": "function", "function": {"name": "get_stock"}})
    assert e.value.body["param"] == "tool_choice.function.name"


def test_a_bad_call_stays_text(tool_server):
    choice = ask(tool_server, ROCKET).choices[0]
    assert choice.message.content == BAD_CALL and choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    chunks = list(ask(tool_server, ROCKET, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == BAD_CALL
    assert not any(c.choices[0].delta.tool_calls for c in chunks) and chunks[-1].choices[0].finish_reason == "stop"
    # A forced call the model does not finish (it never learned this one) is text too, from the forced start.
    cut = ask(tool_server, ROCKET, tool_choice="required", max_tokens=5).choices[0]
    assert cut.message.tool_calls is None and cut.message.content.startswith(REQUIRED)


def test_reasoning_content_and_calls_apart(tool_server):
    choice = ask(tool_server, THINKER).choices[0]
    assert choice.message.model_extra["reasoning_content"] == "The weather needs a tool."
    assert choice.message.content == "Let me check."
    assert calls(choice.message) == [("get_weather", PARIS)] and choice.finish_reason == "tool_calls"
    chunks = list(ask(tool_server, THINKER, stream=True))
    deltas = [c.choices[0].delta for c in chunks]
    assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == "The weather needs a tool."
    assert "".join(d.content or "" for d in deltas) == "Let me check."
    assert [e.function.name for d in deltas for e in d.tool_calls or []] == ["get_weather"]


def body(**kw):
    return {"messages": QUESTION, "tools": TOOLS, **kw}


def function(**kw):
    return [{"type": "function", "function": kw}]


BAD = {  # the request, and the field the 400 names (pydantic may add which form of a union it tried)
    "tools not a list": (body(tools={"name": "f"}), "tools"),
    "tool type": (body(tools=[{"type": "retrieval", "function": {"name": "f"}}]), "tools.0.type"),
    "function without a name": (body(tools=function(description="x")), "tools.0.function.name"),
    "name with a space": (body(tools=function(name="get weather")), "tools.0.function.name"),
    "parameters not an object": (body(tools=function(name="f", parameters="{}")), "tools.0.function.parameters"),
    "unknown tool_choice": (body(tool_choice="sometimes"), "tool_choice"),
    "required without tools": ({"messages": QUESTION, "tool_choice": "required"}, "tool_choice"),
    "parallel_tool_calls not a bool": (body(parallel_tool_calls="yes"), "parallel_tool_calls"),
    "tool message without tool_call_id": (body(messages=QUESTION + [{"role": "tool", "content": "x"}]), "messages.1"),
    "assistant without content or calls": (body(messages=[{"role": "assistant", "content": None}]), "messages.0"),
    "call arguments not text": (body(messages=[{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": {}}}]}]),
        "messages.0.tool_calls.0.function.arguments"),
}


@pytest.mark.parametrize("request_body, param", BAD.values(), ids=BAD.keys())
def test_bad_tool_requests_get_a_400_naming_the_field(tool_server, request_body, param):
    status, answer = raw_post(tool_server, "/v1/chat/completions", request_body)
    assert status == 400 and answer["error"]["param"].startswith(param), answer
