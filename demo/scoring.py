"""Scoring a reply against an evaluation row (pure functions; used by tests and the demo runner).
Only the answer part of a reply counts, as the project's one reasoning-format parser reads it; answers are
compared as `model.rewards` normalises them (the RL accuracy reward reads them the same way).
"""
from model.reasoning import extract_answer
from model.rewards import mentions


def is_correct(reply: str, row: dict) -> bool:
    """True when the reply's answer part (never its thinking) mentions the row's answer or one of its aliases."""
    text = extract_answer(reply)
    return any(mentions(text, a) for a in [row["answer"], *row.get("aliases", [])] if a)


def score(replies: list[str], rows: list[dict]) -> dict:
    """Accuracy per category, plus "overall" over all rows."""
    if len(replies) != len(rows):
        raise ValueError(f"{len(replies)} replies for {len(rows)} rows")
    hits: dict[str, list[bool]] = {}
    for reply, row in zip(replies, rows):
        ok = is_correct(reply, row)
        hits.setdefault(row.get("category", "all"), []).append(ok)
        hits.setdefault("overall", []).append(ok)
    return {k: sum(v) / len(v) for k, v in sorted(hits.items())}
