"""The reasoning reply format, owned here and nowhere else: `<think>\\n...\\n</think>\\n<answer>\\n...\\n</answer>`,
as in minimind's r1_mix_1024.jsonl.

One parser serves everyone: training (tag weights, template rate), scoring (the answer part), the server's
`reasoning_content`, the CLI and the web chat. `ThinkSplitter` reads a reply as it streams; `split_reasoning`
runs the same splitter over a whole reply, so a streamed reply and a finished one can never split differently.

In the shipped tokenizer the four tags are added (not special) tokens, ids 3-6: decoding with
`skip_special_tokens=True` keeps them, so a decoded reply can be checked against the template.
"""
import re

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

# The whole reply, nothing before or after: the tags on their own lines, each exactly once, around a
# thinking and an answer that hold no tag. DOTALL lets the text span the many lines of a worked solution.
_NO_TAG = "(?:(?!" + "|".join(map(re.escape, TAGS)) + ").)*?"
TEMPLATE = re.compile(f"^<think>\n{_NO_TAG}\n</think>\n<answer>\n{_NO_TAG}\n</answer>$", re.DOTALL)


def format_reply(thinking: str, answer: str) -> str:
    """A reply in the format, as reasoning data is written (the demo's reason.jsonl, black-box distillation)."""
    return f"{THINK_OPEN}\n{thinking}\n{THINK_CLOSE}\n{ANSWER_OPEN}\n{answer}\n{ANSWER_CLOSE}"


def follows_template(reply: str) -> bool:
    """True when the reply is exactly one think block followed by one answer block."""
    return TEMPLATE.match(reply) is not None


def opens_thinking(prompt: str) -> bool:
    """True when a rendered prompt ends inside an open think block (templates with a thinking switch put
    `<think>` in the generation prompt): the reply then starts with thinking, not with `<think>`."""
    return prompt.rstrip().endswith(THINK_OPEN)


def held_suffix(text: str, patterns) -> int:
    """Length of the longest end of `text` that is the beginning of one of `patterns` (so may become one)."""
    for start in range(max(0, len(text) - max(map(len, patterns)) + 1), len(text)):
        if any(p.startswith(text[start:]) for p in patterns):
            return len(text) - start
    return 0


class ThinkSplitter:
    """Route a reply's text, pushed in pieces of any size, to (reasoning, content).

    - A reply that opens with `<think>` (or any reply, when `thinking=True`: the prompt opened the block) is
      reasoning up to `</think>`; a reply that never closes it is all reasoning.
    - After that (or from the start, for a reply without `<think>`) everything is content, with the
      `<answer>` tag dropped; `</answer>` ends the content and whatever follows it is dropped.
    - Tags and the whitespace around them are dropped. A `<think>` or `</think>` inside content is text.

    Text that may still become a tag, or whitespace that may precede one, is held back for a push or two.
    """

    def __init__(self, thinking: bool = False):
        self.state = "think" if thinking else "start"  # start -> think -> answer -> done, or start -> answer
        self.pending = ""
        self.section_start = True  # drop whitespace right after a tag (or at the very start)

    def push(self, text: str) -> tuple[str, str]:
        """(reasoning, content) released by this text."""
        self.pending += text
        reasoning, content = "", ""
        while self.state != "done":
            if self.section_start:
                self.pending = self.pending.lstrip()
                self.section_start = not self.pending
            if self.state == "start":
                if self.pending.startswith(THINK_OPEN):
                    self.pending, self.state, self.section_start = self.pending[len(THINK_OPEN):], "think", True
                    continue
                if self.pending and not THINK_OPEN.startswith(self.pending):
                    self.state = "answer"
                    continue
                break  # nothing yet, or what may still become <think>
            tags = (THINK_CLOSE,) if self.state == "think" else (ANSWER_OPEN, ANSWER_CLOSE)
            hits = [(i, tag) for tag in tags if (i := self.pending.find(tag)) >= 0]
            if hits:  # release what precedes the first tag, drop the tag, go on after it
                i, tag = min(hits)
                released, self.pending = self.pending[:i].rstrip(), self.pending[i + len(tag):]
                self.section_start = True
            else:  # release all but trailing whitespace and a possible partial tag
                held = held_suffix(self.pending, tags)
                released = self.pending[:len(self.pending) - held].rstrip()
                self.pending = self.pending[len(released):]
            if self.state == "think":
                reasoning += released
            else:
                content += released
            if not hits:
                break
            self.state = "done" if tag == ANSWER_CLOSE else "answer"
        if self.state == "done":
            self.pending = ""
        return reasoning, content

    def flush(self) -> tuple[str, str]:
        """What is still held back, once the reply has ended."""
        text, self.pending = self.pending.rstrip(), ""
        return (text, "") if self.state == "think" else ("", text)


def split_reasoning(reply: str, thinking: bool = False) -> tuple[str, str]:
    """(thinking, answer) of a finished reply, exactly as `ThinkSplitter` streams it:

    - `<think>T</think><answer>A</answer>`  -> (T, A)
    - `<think>T</think> A`                  -> (T, A)   (no answer tags: the rest is the answer)
    - `T</think><answer>A</answer>`, thinking=True -> (T, A)   (the prompt ended with <think>)
    - `<think>T` (never stopped thinking)   -> (T, "")
    - `A` (no tags at all)                  -> ("", A)
    """
    splitter = ThinkSplitter(thinking)
    reasoning, content = splitter.push(reply)
    more_reasoning, more_content = splitter.flush()
    return reasoning + more_reasoning, content + more_content


def extract_answer(reply: str, thinking: bool = False) -> str:
    """The part of a reply that is scored: the answer, never the thinking ("" if it never stopped thinking)."""
    return split_reasoning(reply, thinking)[1]
