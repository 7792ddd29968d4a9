"""The tool-call format (model/toolcall.py) and the chat template's tools: one parser for whole and streamed
replies, minimind's jsonl read as the template renders OpenAI's messages, and every conversation without tools
rendered and tokenized exactly as before tools existed."""
import json
import random
from pathlib import Path

import pytest

from model.chat import ReplyStream
from model.dataset import SFTDataset
from model.toolcall import (MAX_CALL_CHARS, ToolCall, ToolCallError, ToolCallSplitter, normalize_messages, parse_call,
                            parse_tool_calls)
from tests.helpers import tokenizer

ROOT = Path(__file__).resolve().parent.parent
CALC = ToolCall("calculator", {"expression": "12 × 13"})
LOOKUP = ToolCall("lookup", {"name": "Velmora 维尔莫拉"})
SCHEMAS = [{"type": "function", "function": {"name": "calculator", "description": "Exact arithmetic",
                                             "parameters": {"type": "object", "properties": {
                                                 "expression": {"type": "string"}}, "required": ["expression"]}}}]


def streamed(text: str, cuts: list[int], names=None):
    """parse_tool_calls' result, computed by pushing `text` in pieces cut at `cuts`."""
    splitter, content, calls = ToolCallSplitter(names), "", []
    for a, b in zip([0, *cuts], [*cuts, len(text)]):
        more, found = splitter.push(text[a:b])
        content, calls = content + more, calls + found
    return content + splitter.flush(), calls


REPLIES = [
    CALC.text(),  # one call, nothing else
    f"Let me compute.\n{CALC.text()}",  # text, then a call
    f"{CALC.text()}\n{LOOKUP.text()}",  # two calls
    f"Before.\n{CALC.text()}\nAfter.",  # text on both sides
    '<tool_call>\n{"name": "calculator", "arguments": "{\\"expression\\": \\"1+1\\"}"}\n</tool_call>',  # OpenAI's string
    "Plain text with a < sign and <tool_ and </tool_call> alone.",
    f"Hello.\n<tool_call>\n{{not json}}\n</tool_call>\n{CALC.text()}",  # a bad call, then a good one
    '<tool_call><tool_call>\n{"name": "x", "arguments": {}}\n</tool_call>',  # nested: the outer block is bad
    '<tool_call>\n{"name": "calculator", "arguments": {"expression": "1',  # truncated mid-call
    '<tool_call>\n{"name": "',  # truncated at the name
]


@pytest.mark.parametrize("reply", REPLIES)
def test_every_streaming_cut_gives_the_whole_reply_parse(reply):
    whole = parse_tool_calls(reply)
    for cut in range(len(reply) + 1):
        assert streamed(reply, [cut]) == whole, cut
    rng = random.Random(0)
    for _ in range(50):
        assert streamed(reply, sorted(rng.sample(range(len(reply) + 1), 4))) == whole


def test_what_the_parser_returns():
    assert parse_tool_calls(CALC.text()) == ("", [CALC])
    assert parse_tool_calls(f"Before.\n{CALC.text()}\nAfter.") == ("Before.\nAfter.", [CALC])
    assert parse_tool_calls(f"{CALC.text()}\n{LOOKUP.text()}")[1] == [CALC, LOOKUP]
    assert parse_tool_calls(REPLIES[4])[1] == [ToolCall("calculator", {"expression": "1+1"})]
    # A bad block stays in the content as it was written, whitespace included; the good one still parses.
    assert parse_tool_calls(REPLIES[6]) == ("Hello.\n<tool_call>\n{not json}\n</tool_call>", [CALC])
    assert parse_tool_calls(REPLIES[7]) == (REPLIES[7], [])
    for truncated in REPLIES[8:]:
        assert parse_tool_calls(truncated) == (truncated, [])
    # Only the functions on offer are calls.
    assert parse_tool_calls(f"{CALC.text()}{LOOKUP.text()}", names={"lookup"}) == (CALC.text(), [LOOKUP])


@pytest.mark.parametrize("body, error", [
    ('{"name": "calc", "arguments": {}', "not JSON"),
    ('["calculator", {}]', 'expected {"name"'),
    ('{"name": "", "arguments": {}}', 'expected {"name"'),
    ('{"name": 3, "arguments": {}}', 'expected {"name"'),
    ('{"name": "calc", "arguments": [1, 2]}', "arguments must be an object, got list"),
    ('{"name": "calc", "arguments": "rm -rf /"}', "arguments is a string that is not JSON"),
    ('{"name": "__import__", "arguments": {}}', "unknown function '__import__'"),
])
def test_malformed_and_malicious_calls_are_refused(body, error):
    with pytest.raises(ToolCallError, match=error.replace("[", r"\[").replace("{", r"\{")):
        parse_call(body, names={"calc"})


def test_a_call_that_never_closes_is_released_as_text():
    flood = "<tool_call>\n" + "x" * (MAX_CALL_CHARS + 10)
    splitter = ToolCallSplitter()
    text, calls = splitter.push(flood)
    assert text == flood and calls == [] and splitter.flush() == ""


def test_reply_stream_takes_calls_out_of_the_answer():
    tok = tokenizer()
    reply = f"<think>\nneed a tool\n</think>\n{CALC.text()}"
    stream, deltas = ReplyStream(tok, tools={"calculator"}), []
    for token in tok.encode(reply, add_special_tokens=False):
        deltas.append(stream.push(token))
    deltas.append(stream.finish())
    assert (stream.reasoning, stream.content, stream.tool_calls) == ("need a tool", "", [CALC])
    assert sum(len(d.tool_calls) for d in deltas) == 1
    plain = ReplyStream(tok)  # tools=None: a call is just text
    for token in tok.encode(CALC.text(), add_special_tokens=False):
        plain.push(token)
    plain.finish()
    assert plain.content == CALC.text() and plain.tool_calls == []


def test_minimind_jsonl_renders_like_openai_messages():
    """minimind's SFT rows (tools and tool_calls as JSON strings) and OpenAI's messages (tools as an argument,
    arguments as a JSON string, content null) give the same text."""
    minimind = [{"role": "system", "content": "S", "tools": json.dumps(SCHEMAS)},
                {"role": "user", "content": "12 × 13?"},
                {"role": "assistant", "content": "", "tool_calls": json.dumps([{"name": CALC.name,
                                                                                "arguments": CALC.arguments}])},
                {"role": "tool", "content": "156"}, {"role": "assistant", "content": "156."}]
    openai = [{"role": "system", "content": "S"}, {"role": "user", "content": "12 × 13?"},
              {"role": "assistant", "content": None, "tool_calls": [CALC.openai("call_1")]},
              {"role": "tool", "tool_call_id": "call_1", "content": "156"}, {"role": "assistant", "content": "156."}]
    tok = tokenizer()
    messages, tools = normalize_messages(minimind)
    assert tools == SCHEMAS
    ours = tok.apply_chat_template(messages, tokenize=False)
    theirs = tok.apply_chat_template(normalize_messages(openai)[0], tools=SCHEMAS, tokenize=False)
    assert ours == theirs
    assert ("<|im_start|>assistant\n<tool_call>\n" + json.dumps({"name": "calculator", "arguments": CALC.arguments},
                                                                 ensure_ascii=False) + "\n</tool_call><|im_end|>\n"
            "<|im_start|>user\n<tool_response>\n156\n</tool_response><|im_end|>\n") in ours
    assert '<tools>\n{"name": "calculator"' in ours and ours.startswith("<|im_start|>system\nS\n\n# Tools")
    # A JSON-string field that is not JSON is an error naming the message.
    with pytest.raises(ToolCallError, match="message 3: 'tool_calls' is not valid JSON"):
        normalize_messages(minimind[:2] + [{"role": "assistant", "content": "", "tool_calls": "[{"}])
    # The template refuses an unparsed string instead of rendering its characters.
    with pytest.raises(Exception, match="tools is a JSON string: parse it first"):
        tok.apply_chat_template(minimind, tokenize=False)


def test_sft_labels_cover_the_calls_and_answers_not_the_tool_results(tmp_path):
    row = {"conversations": [{"role": "system", "content": "S", "tools": json.dumps(SCHEMAS)},
                             {"role": "user", "content": "12 × 13?"},
                             {"role": "assistant", "content": "", "tool_calls": json.dumps([
                                 {"name": CALC.name, "arguments": CALC.arguments}])},
                             {"role": "tool", "content": "156"}, {"role": "assistant", "content": "It is 156."}]}
    path = tmp_path / "tools.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    sample = SFTDataset(str(path), tokenizer(), 512)[0]
    learned = tokenizer().decode([t for t, label in zip(sample["input_ids"], sample["labels"]) if label != -100])
    assert learned == CALC.text() + "<|im_end|>" + "It is 156.<|im_end|>"


def test_thinking_switch():
    tok, messages = tokenizer(), [{"role": "user", "content": "hi"}]
    plain = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert plain.endswith("<|im_start|>assistant\n")
    for flag in ("enable_thinking", "open_thinking"):
        on = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **{flag: True})
        assert on == plain + "<think>\n"
        assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **{flag: False}) == plain
    # An assistant message with reasoning_content renders it as a think block before the answer.
    history = messages + [{"role": "assistant", "content": "Hello!", "reasoning_content": "greet back"}]
    assert "<|im_start|>assistant\n<think>\ngreet back\n</think>\n\nHello!<|im_end|>" in \
        tok.apply_chat_template(history, tokenize=False)


def test_conversations_without_tools_render_and_tokenize_as_before():
    """The template before tools existed (kept in tests/data) and today's give the same text and ids on every
    kind of demo conversation: SFT, multi-turn, system prompts, DPO pairs, reasoning replies, generation prompts."""
    tok = tokenizer()
    before = (ROOT / "tests" / "data" / "chat_template_before_tools.jinja").read_text(encoding="utf-8")
    from demo import demo_file
    conversations = []
    for name, key in (("sft.jsonl", "conversations"), ("reason.jsonl", "conversations"), ("dpo.jsonl", "chosen")):
        with open(demo_file(name), encoding="utf-8") as f:
            conversations += [json.loads(line)[key] for _, line in zip(range(300), f)]
    assert any(c[0]["role"] == "system" for c in conversations) and any(len(c) > 2 for c in conversations)
    for messages in conversations:
        for prompt in (False, True):
            now = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
            assert now == tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt,
                                                  chat_template=before)
            assert tok.encode(now, add_special_tokens=False) == tok.apply_chat_template(
                messages, tokenize=True, add_generation_prompt=prompt, chat_template=before, return_dict=False)
