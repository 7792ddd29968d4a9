"""Scoring a reply against an evaluation row (pure functions; used by tests, the demo runner and RL rewards).
Only the answer part of a reply counts, as the project's one reasoning-format parser reads it.
"""
import re
import unicodedata
from functools import lru_cache

from model.reasoning import extract_answer

_CJK_PUNCT = str.maketrans({"。": ".", "、": ",", "「": '"', "」": '"', "『": '"', "』": '"', "〜": "~"})


def normalize(text: str) -> str:
    """NFKC (full-width digits and punctuation -> ASCII), case-folded, thousands separators dropped,
    whitespace collapsed and removed next to Chinese characters ("12 克" == "12克")."""
    text = unicodedata.normalize("NFKC", text).casefold().translate(_CJK_PUNCT)
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r" ?([\u3400-\u9fff]) ?", r"\1", text)


@lru_cache(maxsize=65536)
def answer_pattern(answer: str) -> re.Pattern:
    a = normalize(answer)
    if not a:
        return re.compile(r"(?!x)x")  # an empty answer matches nothing
    # A number or a word must stand alone ("82" is not in "182", "red" not in "bored"); Chinese has no
    # word boundaries, which is why names are built so that none contains another.
    # A number must not continue a decimal or carry a minus sign ("-82"), but "90-8=82" still counts.
    left = (r"(?<![0-9a-z.])(?<!(?<![0-9])-)" if a[0].isdigit() else
            r"(?<![0-9a-z])" if a[0].isascii() and a[0].isalnum() else "")
    right = r"(?![0-9a-z]|\.\d)" if a[-1].isalnum() and a[-1].isascii() else ""
    return re.compile(left + re.escape(a) + right)


def mentions(text: str, answer: str) -> bool:
    return answer_pattern(answer).search(normalize(text)) is not None


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
