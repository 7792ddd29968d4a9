"""Fast pre-tokenization (tiktoken, or the Rust tokenizer called directly) gives the transformers call's ids.

The reference is `tokenizer(texts, add_special_tokens=False)["input_ids"]`, what scripts/pretokenize.py and
PretrainDataset(pack=True) used before, checked on the demo corpus, on text made to hit every branch of the
pre-tokenizer (digits of many scripts, whitespace runs, \\r\\n, CJK, emoji, contractions, code points the
regex engines' Unicode tables disagree on), on random strings of such characters, and on special-token
strings inside pretraining text (the tokenizer matches them: "<|im_start|>" in a document becomes id 1).
"""
import json
import random
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from demo import demo_file
from model.dataset import DataError, tokenize_documents
from model.fast_tokenizer import BatchEncoder
from scripts import pretokenize as pretok

TOKENIZER_DIR = str(Path(__file__).resolve().parents[1] / "model" / "tokenizer")

HARD = [
    "中文句子没有空格也没有标点符号一直写下去直到很长很长的一段话结束为止还没完",
    "混合mixed文本text与digits 12345和emoji 😀👍🏽👨‍👩‍👧 🇨🇳 ok",
    "digits 0 00 007 1234567890 ３２１ ٣٤٥ ²³ ½ Ⅻ 〇 一二三 1.5e-3 -42 +7 3,000,000",
    "spaces:  a   b    c     d\ttab\t\tx \t \t y\u00a0nbsp\u3000ideo\u2028ls\x0bvt\x0cff\x85nel   ",
    "line\r\nwindows\r\n\r\nblank\n\n\nthree\r\rcr  \n  \r\n trailing \n",
    "   leading and trailing spaces   ",
    "1  2\n3 \n4\t5 6  7",  # whitespace before digits: the Digits pre-tokenizer ends a piece there
    "It's they'll we've I'm you're she'd IT'S DON'T o'clock '' 's",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|><think>x</think><answer>y</answer>",
    "half <|im_start and <|im_end |> and <think > and <|endoftext|><|endoftext|>",
    "spaces before a special  <|im_end|>  <think>\n\n<answer> 1 </answer>",
    "punctuation!!! ... ?!?, (brackets) [x] {y} \"quoted\" — dash – «guillemets» 「括号」，。、；：？！",
    "combining e\u0301 a\u0308 ZWJ a\u200db zero\u200bwidth RTL עברית العربية हिन्दी 한국어 日本語のテキスト",
    "control \x00 \x01 \x1f \x7f chars and a replacement char \ufffd",
    "a" * 3000 + "的" * 3000 + " " * 3000 + "9" * 300,
    "",
    "x",
    # Letters and digits of recent Unicode versions, where Oniguruma's and fancy-regex's own tables differ.
    "Armenian \u0558\u058b x, Latin \ua7ce\ua7cf\uab6c, CJK Ext. I \U0002ebf0\U0002ebf1 中\U0002ebf2文, "
    "Garay \U00010d40\U00010d41 digits \U00011de5 \U000125bc 1\U000125bd2, math 𝟎𝟏 ﹖ſ 'ſ 'K 'ﬅ",
]
# Characters for random strings: each branch of the regex, numerics of several kinds, the disputed code points.
ALPHABET = list("aAsStTlLvVrReEdDmMſ\u212a'’ 　\t\n\r\x0b\x0c\x85\u00a0\u2028中文的。，！？0123456789٣４²½Ⅻ〇一"
                "😀👍🏽\u200d.,-_/()[]<>|e\u0301\u0558\ua7ce\U0002ebf0\U000125bc\U00011de5𝟎") + [
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</answer>", "<|", "|>", "'s", "'ll", "'VE", "\r\n"]


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture(scope="module")
def fast(tok):
    pytest.importorskip("tiktoken")
    encoder = BatchEncoder(tok)  # the checks of model/fast_tokenizer.py, ~3 s
    assert encoder.engine == "tiktoken", encoder.why
    return encoder


def lines_of(rows):
    """(line number, raw bytes) pairs as tokenize_chunk makes them, half with \\u escapes, half raw UTF-8."""
    return [(n, json.dumps({"text": t}, ensure_ascii=n % 2 == 0).encode()) for n, t in enumerate(rows, 1)]


def reference(tok, texts):
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    return np.array([t for doc in ids for t in doc], np.uint16), np.array([len(doc) for doc in ids], np.int64)


@pytest.fixture(scope="module")
def demo_and_hard(tok):
    """(texts, reference ids, reference lengths): the demo corpus's documents and HARD."""
    with open(demo_file("pretrain.jsonl"), "rb") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()] + HARD
    return (texts, *reference(tok, texts))


@pytest.mark.parametrize("engine", ["tiktoken", "tokenizers"])
def test_ids_equal_transformers_call_on_demo_and_hard_cases(tok, fast, engine, demo_and_hard):
    texts, want_tokens, want_lengths = demo_and_hard
    tokens, lengths, bad = tokenize_documents(fast if engine == "tiktoken" else tok, lines_of(texts), "x.jsonl")
    assert not bad and tokens.dtype == np.uint16
    np.testing.assert_array_equal(lengths, want_lengths)
    np.testing.assert_array_equal(tokens, want_tokens)
    # The special-token strings are matched inside pretraining text, by both.
    assert tok("<|im_start|>x<|endoftext|>", add_special_tokens=False)["input_ids"][::2] == [1, 0]


def test_ids_equal_on_random_strings(tok, fast):
    rng = random.Random(0)
    texts = ["".join(rng.choices(ALPHABET, k=rng.randrange(1, 40))) for _ in range(5000)]
    tokens, lengths = fast(texts, np.uint16)
    want_tokens, want_lengths = reference(tok, texts)
    np.testing.assert_array_equal(lengths, want_lengths)
    np.testing.assert_array_equal(tokens, want_tokens)


def test_other_pipelines_fall_back_and_say_why(tok):
    pytest.importorskip("tiktoken")
    from tokenizers import Tokenizer, pre_tokenizers
    other = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    other.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    encoder = BatchEncoder(other)
    assert encoder.engine == "tokenizers" and "pipeline" in encoder.why
    split = AutoTokenizer.from_pretrained(TOKENIZER_DIR, split_special_tokens=True)  # "<|im_start|>" as text
    assert BatchEncoder(split).engine == "tokenizers"
    np.testing.assert_array_equal(BatchEncoder(split)(HARD, np.uint16)[0], reference(split, HARD)[0])
    np.testing.assert_array_equal(encoder(HARD, np.uint16)[0],
                                  [t for e in other.encode_batch(HARD, add_special_tokens=False) for t in e.ids])


def test_lone_surrogate_fails_as_before(tok, fast):
    """JSON allows "\\ud800"; the transformers call cannot encode it, and neither can the fast paths."""
    line = [(1, b'{"text": "x\\ud800y"}')]
    with pytest.raises(TypeError):
        tok(["x\ud800y"], add_special_tokens=False)
    with pytest.raises(TypeError):
        tokenize_documents(tok, line, "x.jsonl")
    with pytest.raises(UnicodeEncodeError):
        tokenize_documents(fast, line, "x.jsonl")


def test_bad_lines_and_blank_lines(tok):
    lines = [(1, b'{"text": "ok"}'), (2, b"   "), (3, b'{"text": 1}'), (4, b"{oops"), (5, b'{"text": "fine"}')]
    with pytest.raises(DataError, match="x.jsonl:3: field 'text' must be a str"):
        tokenize_documents(tok, lines, "x.jsonl")
    tokens, lengths, bad = tokenize_documents(tok, lines, "x.jsonl", skip_bad=True, batch_size=2)
    assert sorted(bad) == [3, 4] and bad[4].startswith("x.jsonl:4: malformed JSON")
    want_tokens, want_lengths = reference(tok, ["ok", "fine"])
    np.testing.assert_array_equal(tokens, want_tokens)
    np.testing.assert_array_equal(lengths, want_lengths)


@pytest.mark.parametrize("engine,name", [("auto", "tiktoken"), ("tokenizers", "tokenizers")])
def test_script_output_is_the_transformers_ids(tok, tmp_path, capsys, engine, name):
    """The .bin/.idx of scripts/pretokenize.py (2 workers, several parts) hold exactly the reference ids,
    with either engine."""
    texts = HARD * 3
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_bytes(b"".join(raw + b"\n" for _, raw in lines_of(texts)))
    meta = pretok.pretokenize(str(jsonl), str(tmp_path / "p"), TOKENIZER_DIR, num_workers=2, chunk_mb=4000 / 2**20,
                              engine=engine)
    assert capsys.readouterr().out.startswith(f"encoding with {name}")
    want_tokens, want_lengths = reference(tok, texts)
    assert Path(tmp_path / "p.bin").read_bytes() == want_tokens.tobytes()
    offsets = np.fromfile(tmp_path / "p.idx", np.int64)
    np.testing.assert_array_equal(np.diff(offsets), want_lengths)
    assert meta["docs"] == len(texts) and meta["tokens"] == len(want_tokens) and meta["dtype"] == "uint16"
