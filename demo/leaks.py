"""What counts as held-out material leaking into training, and the check `generate` runs before writing:
verbatim held-out questions, held-out operand pairs standing next to each other, the identity outside its LoRA.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .heldout import HeldOut

ADJACENCY_WINDOW = 20  # characters; a chat template puts more than this between two messages


def pair_key(a: int, b: int) -> tuple[int, int]:
    return min(a, b), max(a, b)


# A number, then (looking ahead, without consuming) the very next number within the window and sentence.
_ADJACENT = re.compile(r"(?<!\d)(\d+)(?!\d)(?=[^\d.。!！?？;；\n]{0,%d}(\d+))" % ADJACENCY_WINDOW)


def adjacent_number_pairs(text: str) -> list[tuple[int, int]]:
    """Pairs of numbers that stand next to each other, in either order: consecutive numbers in one
    sentence at most ADJACENCY_WINDOW characters apart ("347 + 589", "589 minus 347", "347加589")."""
    return [pair_key(int(a), int(b)) for a, b in _ADJACENT.findall(text)]


def record_strings(record):
    """Every string in a record (message contents, text, answers)."""
    if isinstance(record, str):
        yield record
    elif isinstance(record, dict):
        for value in record.values():
            yield from record_strings(value)
    elif isinstance(record, list):
        for value in record:
            yield from record_strings(value)


def find_leaks(training: dict, heldout_questions: list[str], heldout: HeldOut) -> list[str]:
    """Problems found, as messages: held-out questions that appear verbatim in a training file, held-out
    operand pairs that stand next to each other in one, and the identity outside lora_identity.jsonl.

    Every held-out question ends in a question mark, so a verbatim copy must end at one: looking back from
    each question mark in the training text finds any copy without searching the text once per question."""
    problems = [f"held-out question without a final question mark: {q!r}" for q in heldout_questions
                if q[-1] not in "?？"]
    tail = min([8, *map(len, heldout_questions)])
    by_tail: dict[str, list[str]] = {}
    for q in heldout_questions:
        by_tail.setdefault(q[-tail:], []).append(q)
    for name, records in training.items():
        strings = [s for r in records for s in record_strings(r)]
        text = "\n".join(strings)
        for m in re.finditer(r"[?？]", text):
            for q in by_tail.get(text[m.end() - tail:m.end()], ()):
                if text.startswith(q, m.end() - len(q)):
                    problems.append(f"{name}: contains held-out question {q!r}")
        problems += [f"{name}: held-out operands next to each other in {s[:80]!r}" for s in strings
                     if not heldout.allows(s)]
        if name != "lora_identity.jsonl" and "minimind" in text.lower():
            problems.append(f"{name}: mentions the identity")
    return problems
