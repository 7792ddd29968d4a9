"""The tool-call format, owned here and nowhere else (Qwen3's convention, as minimind's current release):

    <tool_call>
    {"name": "calculator", "arguments": {"expression": "12*13"}}
    </tool_call>

An assistant turn is its content followed by zero or more such blocks; tool results come back in a user turn
as `<tool_response>\\n...\\n</tool_response>` blocks. The chat template (model/tokenizer/chat_template.jinja)
renders both; this module reads them back. One parser serves everyone: training data (`normalize_messages`),
the agentic rollout, the server's `tool_calls`, the CLI and the web chat. `ToolCallSplitter` reads a reply as
it streams; `parse_tool_calls` runs the same splitter over a whole reply, so the two can never disagree.

A block that is not a valid call (bad JSON, no name, arguments that are not an object, a function the caller
did not offer) stays in the content as text: a model's mistake is shown, never raised.
"""
import json
from dataclasses import dataclass, field

from .reasoning import held_suffix

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
MAX_CALL_CHARS = 8192  # a call still open after this much text is not a call: release it as text


class ToolCallError(ValueError):
    pass


@dataclass
class ToolCall:
    name: str
    arguments: dict = field(default_factory=dict)

    def text(self) -> str:
        """The block as the chat template renders a call whose arguments are an object."""
        body = json.dumps({"name": self.name, "arguments": self.arguments}, ensure_ascii=False)
        return f"{CALL_OPEN}\n{body}\n{CALL_CLOSE}"

    def openai(self, call_id: str) -> dict:
        """OpenAI's `tool_calls` entry: the arguments as a JSON string."""
        return {"id": call_id, "type": "function",
                "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)}}


def parse_call(body: str, names=None) -> ToolCall:
    """The JSON between the tags → ToolCall, or ToolCallError saying what is wrong. `names`: the functions
    on offer (None accepts any name)."""
    try:
        obj = json.loads(body)
    except ValueError as e:
        raise ToolCallError(f"not JSON ({e})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        raise ToolCallError('expected {"name": <string>, "arguments": {...}}')
    arguments = obj.get("arguments", {})
    if isinstance(arguments, str):  # OpenAI's form: the object as a JSON string
        try:
            arguments = json.loads(arguments)
        except ValueError:
            raise ToolCallError("arguments is a string that is not JSON") from None
    if not isinstance(arguments, dict):
        raise ToolCallError(f"arguments must be an object, got {type(arguments).__name__}")
    if names is not None and obj["name"] not in names:
        raise ToolCallError(f"unknown function {obj['name']!r}")
    return ToolCall(obj["name"], arguments)


class ToolCallSplitter:
    """Content text, pushed in pieces of any size, in; (text, calls) out.

    Text that may still become `<tool_call>` is held back, and a call is held whole until its `</tool_call>`;
    whitespace around calls is dropped (it is layout, not content). A call that fails `parse_call`, or is
    still open at the end of the reply, is released as text.
    """

    def __init__(self, names=None):
        self.names = None if names is None else set(names)
        self.pending = ""
        self.inside = False
        self.gap = ""  # the whitespace before the open call: dropped if it parses, kept if it is text
        self.after_call = False  # drop whitespace that follows a call
        self.said = False  # some content released: text after a call starts on a new line

    def push(self, text: str) -> tuple[str, list[ToolCall]]:
        self.pending += text
        out, calls = "", []
        while True:
            if self.after_call:
                self.pending = self.pending.lstrip()
                self.after_call = not self.pending
                if self.pending and self.said:
                    self.pending = "\n" + self.pending
            if not self.inside:
                i = self.pending.find(CALL_OPEN)
                if i < 0:  # release all but trailing whitespace and what may become a tag
                    held = held_suffix(self.pending, (CALL_OPEN,))
                    released = self.pending[:len(self.pending) - held].rstrip()
                    out, self.pending = out + released, self.pending[len(released):]
                    self.said = self.said or bool(out)
                    return out, calls
                before = self.pending[:i].rstrip()
                out, self.gap = out + before, self.pending[len(before):i]
                self.pending, self.inside = self.pending[i:], True
                self.said = self.said or bool(out)
            j = self.pending.find(CALL_CLOSE)
            if j < 0:
                if len(self.pending) > MAX_CALL_CHARS:
                    out, self.pending, self.inside = out + self.gap + self.pending, "", False
                return out, calls
            raw, self.pending = self.pending[:j + len(CALL_CLOSE)], self.pending[j + len(CALL_CLOSE):]
            self.inside = False
            try:
                calls.append(parse_call(raw[len(CALL_OPEN):-len(CALL_CLOSE)], self.names))
                self.after_call = True
            except ToolCallError:
                out += self.gap + raw

    def flush(self) -> str:
        """What is still held back once the reply has ended (an unfinished call is text)."""
        text = (self.gap if self.inside else "") + self.pending.rstrip()
        self.pending, self.inside = "", False
        return text


def parse_tool_calls(text: str, names=None) -> tuple[str, list[ToolCall]]:
    """(content, calls) of a finished reply, exactly as `ToolCallSplitter` streams it."""
    splitter = ToolCallSplitter(names)
    content, calls = splitter.push(text)
    return content + splitter.flush(), calls


def tool_response(content: str) -> str:
    """One tool result as the template renders it inside the user turn."""
    return f"{RESPONSE_OPEN}\n{content}\n{RESPONSE_CLOSE}"


def tool_names(tools) -> list[str]:
    """The function names of OpenAI `tools` entries ({"type": "function", "function": {...}}) or bare
    function schemas."""
    return [(t.get("function") or t).get("name") for t in tools or [] if isinstance(t, dict)]


def normalize_messages(messages: list) -> tuple[list, list | None]:
    """minimind's jsonl (and OpenAI's requests) → messages the chat template renders, and the tools on offer.

    minimind writes `tools` on the system message and `tool_calls` on assistant messages as JSON strings;
    OpenAI sends `content: null` beside tool calls and may send a tool result as an object. Returns new
    message dicts (the input is not changed) and the parsed tools of the system message (None when absent).
    Raises ToolCallError naming the message for a field that does not parse.
    """
    out, tools = [], None
    for n, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            out.append(message)  # the dataset's own checks name this
            continue
        message = dict(message)
        for key in ("tools", "tool_calls"):
            value = message.get(key)
            if isinstance(value, str):
                try:
                    value = json.loads(value) if value.strip() not in ("", "None", "null") else None
                except ValueError as e:
                    raise ToolCallError(f"message {n}: '{key}' is not valid JSON ({e})") from None
            if value is not None and not isinstance(value, list):
                raise ToolCallError(f"message {n}: '{key}' must be a list, got {type(value).__name__}")
            if value:
                message[key] = value
            else:
                message.pop(key, None)
        if message.get("role") == "system" and message.get("tools"):
            tools = message["tools"]
        if message.get("content") is None and (message.get("tool_calls") or message.get("role") == "assistant"):
            message["content"] = ""
        if message.get("role") == "tool" and not isinstance(message.get("content"), str) \
                and message.get("content") is not None:
            message["content"] = json.dumps(message["content"], ensure_ascii=False)
        out.append(message)
    return out, tools
