"""The reasoning reply format: `<think>\\n...\\n</think>\\n<answer>\\n...\\n</answer>`, as in minimind's
r1_mix_1024.jsonl. In the shipped tokenizer the four tags are added (not special) tokens, ids 3-6: decoding
with `skip_special_tokens=True` keeps them, so a decoded reply can be checked against the template.

Used by train_distill_reason.py (how often a model keeps the format) and by anything that shows a
reasoning model's reply in two parts (thinking, answer).
"""
import re

# The whole reply, nothing before or after: the tags on their own lines, a non-empty line of thinking and
# of answer. DOTALL lets `.*?` span the many lines of a worked solution.
TEMPLATE = re.compile(r"^<think>\n.*?\n</think>\n<answer>\n.*?\n</answer>$", re.DOTALL)
ANSWER_BLOCK = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL)


def follows_template(reply: str) -> bool:
    return TEMPLATE.match(reply) is not None


def split_reasoning(reply: str) -> tuple[str, str]:
    """(thinking, answer) of a reply, leniently, so a reply that bends the format still shows sensibly:

    - `<think>T</think><answer>A</answer>`  -> (T, A)
    - `<think>T</think> A`                  -> (T, A)   (no answer tags: the rest is the answer)
    - `T</think> A`                         -> (T, A)   (templates that put <think> in the prompt)
    - `<think>T` (never stopped thinking)   -> (T, "")
    - `A` (no tags at all)                  -> ("", A)
    Both parts are stripped of surrounding whitespace.
    """
    if "</think>" in reply:
        thinking, _, rest = reply.partition("</think>")
        thinking = thinking.split("<think>", 1)[-1]
    elif "<think>" in reply:
        return reply.split("<think>", 1)[1].strip(), ""
    else:
        thinking, rest = "", reply
    block = ANSWER_BLOCK.search(rest)
    return thinking.strip(), (block.group(1) if block else rest).strip()
