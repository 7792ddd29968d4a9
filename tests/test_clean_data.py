"""scripts/clean_data.py: markup/control stripping, length filters, exact and near dedup, split."""
import json
import random

import pytest
from datasketch.lsh import _optimal_param

from scripts.clean_data import HashSet, clean_file, clean_text, lsh_bands, val_path

random.seed(0)
WORDS = ["".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(random.randint(2, 9))) for _ in range(400)]
HANZI = [chr(c) for c in range(0x4E00, 0x4E00 + 600)]


def english(rng, n=200):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def chinese(rng, n=300):
    return "".join(rng.choice(HANZI) for _ in range(n))


def change_units(text, k, rng, sep):
    units = text.split(" ") if sep else list(text)
    for i in rng.sample(range(len(units)), k):
        units[i] = rng.choice(WORDS if sep else HANZI)
    return (" " if sep else "").join(units)


def run(tmp_path, rows, **options):
    src = tmp_path / "in.jsonl"
    src.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                   encoding="utf-8")
    out = tmp_path / "out.jsonl"
    stats = clean_file(str(src), str(out), **options)
    kept = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    return stats, kept


def test_exact_and_near_duplicates_removed_distinct_kept(tmp_path):
    rng = random.Random(1)
    distinct = [english(rng) for _ in range(30)] + [chinese(rng) for _ in range(30)]
    planted = [
        "<p>" + distinct[0].replace(" ", "  ", 5) + "</p>",  # exact duplicate once cleaned
        distinct[1],                                          # exact duplicate
        change_units(distinct[2], 2, rng, sep=True),          # 2 of 200 words changed: Jaccard 0.94
        change_units(distinct[40], 3, rng, sep=False),        # 3 of 300 characters changed: 0.94
    ]  # at 0.94 the bands for threshold 0.8 (9 x 13) catch a near duplicate with probability > 0.99
    stats, kept = run(tmp_path, [{"text": t} for t in distinct + planted])
    assert [row["text"] for row in kept] == distinct
    assert stats["removed_exact_dup"] == 2 and stats["removed_near_dup"] == 2 and stats["kept_train"] == 60


def test_conversations_are_cleaned_and_deduplicated(tmp_path):
    reply = {"role": "assistant", "content": "<think>\n5\n</think>"}
    chat = [{"role": "user", "content": "What is <b>2+3</b>?"}, reply]
    same = [{"role": "user", "content": "What is 2+3?"}, reply]
    stats, kept = run(tmp_path, [{"conversations": chat, "id": 7}, {"conversations": same}, '{"broken": ', {"x": 1}])
    assert kept == [{"conversations": same, "id": 7}]
    assert stats["removed_exact_dup"] == 1 and stats["removed_bad_json"] == 1 and stats["removed_bad_format"] == 1


def test_length_filters(tmp_path):
    rows = [{"text": "x" * n} for n in (3, 10, 50, 100, 101)]
    stats, kept = run(tmp_path, rows, min_chars=10, max_chars=100, near_dup_threshold=0)
    assert [len(r["text"]) for r in kept] == [10, 50, 100]
    assert stats["removed_too_short"] == 1 and stats["removed_too_long"] == 1


def test_markup_control_and_whitespace():
    assert clean_text("<div><p>Hello&nbsp;<b>world</b>&amp; co</p></div>") == "Hello world& co"
    assert clean_text("a\x00b\x07c\u200bd\ufeff") == "abcd"
    assert clean_text("line one   end  \r\n\r\n\r\n\r\nline\ttwo\n    indented  code") == \
        "line one end\n\nline\ttwo\n    indented code"
    assert clean_text("<script>var x = 1;</script><!-- note -->text") == "text"
    # Not HTML: reasoning tags, comparisons, escaped markup meant as text.
    assert clean_text("<think>\na < b > c\n</think>") == "<think>\na < b > c\n</think>"
    assert clean_text("use &lt;br&gt; here") == "use <br> here"
    assert clean_text("# Title\n**bold** [link](http://x.org) ![img](a.png)\n---\n> quote",
                      strip_markdown=True) == "Title\nbold link\n\nquote"
    assert clean_text("ＡＢＣ１２３，", nfkc=True) == "ABC123,"
    assert clean_text("ＡＢＣ１２３，") == "ＡＢＣ１２３，"


def test_split_is_deterministic_and_order_independent(tmp_path):
    rng = random.Random(2)
    rows = [{"text": english(rng, 30)} for _ in range(400)]
    val = {}
    for order in ("forward", "reverse"):
        folder = tmp_path / order
        folder.mkdir()
        stats, _ = run(folder, rows if order == "forward" else rows[::-1], val_ratio=0.1, near_dup_threshold=0)
        val[order] = sorted(open(val_path(str(folder / "out.jsonl")), encoding="utf-8").read().splitlines())
        assert stats["kept_train"] + stats["kept_val"] == 400
    assert val["forward"] == val["reverse"] and 20 <= len(val["forward"]) <= 60


def test_plain_text_input(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("first line\n\nsecond <i>line</i>\nfirst line\n", encoding="utf-8")
    stats = clean_file(str(src), str(tmp_path / "out.txt"))
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == "first line\nsecond line\n"
    assert stats["docs_in"] == 3 and stats["removed_exact_dup"] == 1


def test_hash_set():
    s = HashSet(capacity=4)
    values = [random.getrandbits(64) or 1 for _ in range(1000)]
    for v in values:
        s.add(v)
    assert all(v in s for v in values) and s.count == 1000 and 12345 not in s


@pytest.mark.parametrize("num_perm", [32, 128, 256])
def test_lsh_bands_are_datasketch_optimum(num_perm):
    """The same (bands, rows) that datasketch's MinHashLSH picks: the least weighted sum of the
    false-positive and false-negative areas (its default weights 0.5, 0.5, and a skewed pair)."""
    for threshold in (0.5, 0.7, 0.8, 0.9):
        assert lsh_bands(threshold, num_perm) == _optimal_param(threshold, num_perm, 0.5, 0.5)
    assert lsh_bands(0.8, num_perm, 0.2, 0.8) == _optimal_param(0.8, num_perm, 0.2, 0.8)
