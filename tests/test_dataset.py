"""Dataset classes: loss masks, rendering, truncation, pre-tokenized parity, bad input, line index."""
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from model.dataset import (IGNORE, REASON_TAGS, DataError, DPODataset, JsonlIndex, PackedDataset, PretrainDataset,
                           ReasonDataset, RLPromptDataset, SFTDataset)
from scripts import pretokenize as pretok

TOKENIZER_DIR = str(Path(__file__).resolve().parents[1] / "model" / "tokenizer")

CHAT = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Hi, who are you?"},
    {"role": "assistant", "content": "I am MiniMind, 一个小模型."},
    {"role": "user", "content": "What is 2+3?"},
    {"role": "assistant", "content": "2+3=5"},
]


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture(scope="module")
def tag_tok():
    """The same tokenizer plus one added token it lacks, so its vocabulary (and fingerprint) differs.
    (The shipped tokenizer already has the reasoning tags as single tokens at ids 3..6.)"""
    t = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    t.add_tokens(["<other>"], special_tokens=True)
    return t


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return str(path)


def learned_spans(tok, ids, labels):
    """Decoded runs of learned tokens; labels must equal input_ids wherever they are learned."""
    ids, labels = ids.tolist(), labels.tolist()
    spans, run = [], []
    for i, label in zip(ids + [None], labels + [IGNORE]):
        if label != IGNORE:
            assert label == i
            run.append(i)
        elif run:
            spans.append(tok.decode(run))
            run = []
    return spans


# --- line index ---------------------------------------------------------------------------

def test_line_index_blank_lines_crlf_non_ascii_no_trailing_newline(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes('{"a": 1}\r\n\r\n   \n{"b": "é中文"}\n\n{"c": 3}'.encode())
    index = JsonlIndex(path)
    lines = [index.line(i) for i in range(len(index))]
    assert [n for n, _ in lines] == [1, 4, 6]
    assert [json.loads(raw) for _, raw in lines] == [{"a": 1}, {"b": "é中文"}, {"c": 3}]
    assert Path(str(path) + ".lines.npz").exists()
    with open(path, "ab") as f:  # a changed file must not reuse the cached index
        f.write(b'\n{"d": 4}\n')
    assert [JsonlIndex(path).line(i)[0] for i in range(4)] == [1, 4, 6, 7]
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert len(JsonlIndex(tmp_path / "empty.jsonl")) == 0


# --- SFT ----------------------------------------------------------------------------------

def test_sft_masks_only_assistant_replies(tok, tmp_path):
    ds = SFTDataset(write_jsonl(tmp_path / "sft.jsonl", [{"conversations": CHAT}]), tok, max_seq_len=128)
    sample = ds[0]
    assert learned_spans(tok, sample["input_ids"], sample["labels"]) == [
        "I am MiniMind, 一个小模型.<|im_end|>", "2+3=5<|im_end|>"]
    # The input is exactly the chat template's rendering, then padding (not learned).
    rendered = tok.apply_chat_template(CHAT, tokenize=False)
    expected = tok.encode(rendered, add_special_tokens=False)
    assert sample["input_ids"][:len(expected)].tolist() == expected
    assert (sample["input_ids"][len(expected):] == tok.pad_token_id).all()
    assert (sample["labels"][len(expected):] == IGNORE).all()
    assert sample["input_ids"].shape == sample["labels"].shape == (128,)
    assert sample["input_ids"].dtype == sample["labels"].dtype == torch.long


def test_sft_default_system_and_reply_starting_with_newlines(tok, tmp_path):
    chat = [{"role": "user", "content": "List:"}, {"role": "assistant", "content": "\n\n- one"}]
    sample = SFTDataset(write_jsonl(tmp_path / "sft.jsonl", [{"conversations": chat}]), tok, 64)[0]
    n = int((sample["input_ids"] != tok.pad_token_id).sum())
    assert tok.decode(sample["input_ids"][:n]) == tok.apply_chat_template(chat, tokenize=False)
    assert "You are a helpful assistant." in tok.decode(sample["input_ids"][:n])
    assert learned_spans(tok, sample["input_ids"], sample["labels"]) == ["\n\n- one<|im_end|>"]


def test_sft_truncation(tok, tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"conversations": CHAT}])
    full = len(tok.encode(tok.apply_chat_template(CHAT, tokenize=False), add_special_tokens=False))
    sample = SFTDataset(path, tok, max_seq_len=full - 3)[0]
    assert sample["input_ids"].shape == (full - 3,) and (sample["input_ids"] != tok.pad_token_id).all()
    spans = learned_spans(tok, sample["input_ids"], sample["labels"])
    assert spans[0] == "I am MiniMind, 一个小模型.<|im_end|>" and "2+3=5<|im_end|>".startswith(spans[1])
    with pytest.raises(DataError, match=re.escape(f"{path}:1: over-long")):
        SFTDataset(path, tok, max_seq_len=10)[0]


def test_max_samples_and_pickling(tok, tmp_path):
    ds = SFTDataset(write_jsonl(tmp_path / "sft.jsonl", [{"conversations": CHAT}] * 5), tok, 64, max_samples=3)
    assert len(ds) == 3
    first = ds[0]["input_ids"]
    assert torch.equal(pickle.loads(pickle.dumps(ds))[0]["input_ids"], first)  # as DataLoader workers get it


def test_packing_keeps_every_sample_and_its_labels(tok, tmp_path):
    chats = [[{"role": "user", "content": f"Q{i}" * (1 + i % 4)}, {"role": "assistant", "content": f"A{i}"}]
             for i in range(9)]
    sft = SFTDataset(write_jsonl(tmp_path / "sft.jsonl", [{"conversations": c} for c in chats]), tok, 96)
    packed = PackedDataset(sft, 96, seed=1)
    assert len(packed) < len(sft)  # several chats share a window
    assert sorted(i for w in packed.windows for i in w) == list(range(len(sft)))  # each sample exactly once
    for w in range(len(packed)):
        row = packed[w]
        assert row["input_ids"].shape == row["labels"].shape == (96,)
        # The window is its chats back to back, each with its own labels, then padding that is not learned.
        expected_ids, expected_labels = [], []
        for i in packed.windows[w]:
            n = int((sft[i]["input_ids"] != tok.pad_token_id).sum())
            expected_ids += sft[i]["input_ids"][:n].tolist()
            expected_labels += sft[i]["labels"][:n].tolist()
        n = len(expected_ids)
        assert row["input_ids"][:n].tolist() == expected_ids and row["labels"][:n].tolist() == expected_labels
        assert (row["input_ids"][n:] == tok.pad_token_id).all() and (row["labels"][n:] == IGNORE).all()


# --- DPO, reasoning, RL prompts ---------------------------------------------------------------

def test_dpo_shapes_and_masks(tok, tmp_path):
    prompt = [{"role": "user", "content": "Capital of France?"}]
    row = {"chosen": prompt + [{"role": "assistant", "content": "Paris."}],
           "rejected": prompt + [{"role": "assistant", "content": "I do not know, maybe Lyon or Marseille."}]}
    sample = DPODataset(write_jsonl(tmp_path / "dpo.jsonl", [row]), tok, 48)[0]
    assert {k: tuple(v.shape) for k, v in sample.items()} == {
        "chosen_input_ids": (48,), "chosen_labels": (48,), "rejected_input_ids": (48,), "rejected_labels": (48,)}
    assert learned_spans(tok, sample["chosen_input_ids"], sample["chosen_labels"]) == ["Paris.<|im_end|>"]
    assert learned_spans(tok, sample["rejected_input_ids"], sample["rejected_labels"]) == [
        "I do not know, maybe Lyon or Marseille.<|im_end|>"]


@pytest.mark.parametrize("tokenizer", ["tok", "tag_tok"])  # tags as BPE pieces, then as single added tokens
def test_reason_weights_on_tags(tokenizer, request, tmp_path):
    t = request.getfixturevalue(tokenizer)
    reply = "<think>\n2 and 3 make 5\n</think>\n<answer>\n5\n</answer>"
    chat = [{"role": "user", "content": "Use <think> tags: 2+3?"}, {"role": "assistant", "content": reply}]
    sample = ReasonDataset(write_jsonl(tmp_path / "r1.jsonl", [{"conversations": chat}]), t, 96, tag_weight=10.0)[0]
    ids, labels, weights = sample["input_ids"], sample["labels"], sample["loss_weights"]
    assert weights.dtype == torch.float32 and weights.shape == ids.shape
    assert ((weights > 0) == (labels != IGNORE)).all()  # the <think> in the user message gets nothing
    assert set(weights.unique().tolist()) == {0.0, 1.0, 10.0}
    tag_tokens = [t.decode([i]) for i in ids[weights == 10.0].tolist()]
    assert "".join(tag_tokens) == "".join(REASON_TAGS)


def test_rl_prompts(tok, tmp_path):
    rows = [{"conversations": [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": ""}], "answer": 5},
            {"conversations": [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "A colour?"}]}]
    ds = RLPromptDataset(write_jsonl(tmp_path / "rl.jsonl", rows), tok, max_prompt_len=64)
    first = ds[0]
    user_only = [{"role": "user", "content": "2+3?"}]
    assert first["prompt"] == tok.apply_chat_template(user_only, tokenize=False, add_generation_prompt=True)
    assert first["prompt"].endswith("<|im_start|>assistant\n") and first["answer"] == "5"
    assert first["prompt_ids"].tolist() == tok.encode(first["prompt"], add_special_tokens=False)
    published = {"conversations": [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "None"}]}
    assert RLPromptDataset(write_jsonl(tmp_path / "rlaif.jsonl", [published]), tok, 64)[0]["prompt"] == first["prompt"]
    batch = ds.collate([ds[0], ds[1]])
    assert batch["prompt_ids"] == [ds[0]["prompt_ids"].tolist(), ds[1]["prompt_ids"].tolist()]
    assert batch["answers"] == ["5", ""]


# --- bad input --------------------------------------------------------------------------------

GOOD = {"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
BAD = [  # (line, expected message)
    ('{"conversations": [', "malformed JSON"),
    ({"text": "no conversation"}, "missing field 'conversations'"),
    ({"conversations": []}, "empty conversation"),
    ({"conversations": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]},
     "message 1 has role 'bot', expected one of system, user, assistant"),
    ({"conversations": [{"role": "user", "content": "only a question"}]}, "conversation has no assistant message"),
    ({"conversations": [{"role": "user", "content": "long " * 80}, {"role": "assistant", "content": "ok"}]},
     "over-long: nothing left to learn after truncation to 32 tokens"),
    ('["a list"]', "expected a JSON object, got list"),
    ({"conversations": [{"role": "user"}, {"role": "assistant", "content": "y"}]}, "message 1 has no string 'content'"),
]


def test_each_bad_line_names_file_and_line(tok, tmp_path):
    """All lines are checked when the dataset is made; an over-long chat shows only when it is tokenized."""
    path = write_jsonl(tmp_path / "sft.jsonl", [GOOD] + [line for line, _ in BAD])
    with pytest.raises(DataError) as error:
        SFTDataset(path, tok, max_seq_len=32)
    report = str(error.value).splitlines()
    expected = [f"  {path}:{n}: {message}" for n, (_, message) in enumerate(BAD, 2) if "over-long" not in message]
    assert report[0].startswith(f"bad lines in {path}") and "--skip_bad" in report[0]
    assert [line[:len(e)] for line, e in zip(report[1:-1], expected)] == expected
    assert report[-1] == f"  {len(expected)} bad lines of {len(BAD) + 1}"
    over_long = next(n for n, (_, message) in enumerate(BAD, 2) if "over-long" in message)
    path = write_jsonl(tmp_path / "long.jsonl", [GOOD, BAD[over_long - 2][0]])
    ds = SFTDataset(path, tok, max_seq_len=32)
    assert ds[0]["labels"].ne(IGNORE).any()
    with pytest.raises(DataError, match=f"^{re.escape(f'{path}:2: over-long')}"):
        ds[1]


def test_skip_bad_leaves_out_and_substitutes(tok, tmp_path):
    """Lines the check rejects are left out of len(); an over-long one is replaced by the next sample."""
    path = write_jsonl(tmp_path / "sft.jsonl", [GOOD] + [line for line, _ in BAD] + [GOOD])
    ds = SFTDataset(path, tok, max_seq_len=32, skip_bad=True)
    assert ds.skipped == len(BAD) - 1 and len(ds) == 3  # GOOD, the over-long chat, GOOD
    good = ds[0]["input_ids"]
    assert all(torch.equal(ds[i]["input_ids"], good) for i in range(len(ds)))
    assert sorted(ds.bad_lines) == list(range(2, 2 + len(BAD)))


def test_bad_lines_of_other_formats(tok, tmp_path):
    chat = GOOD["conversations"]
    cases = [
        (PretrainDataset, {"txt": "x"}, "missing field 'text'"),
        (PretrainDataset, {"text": 3}, "field 'text' must be a str, got int"),
        (DPODataset, {"chosen": chat}, "missing field 'rejected'"),
        (DPODataset, {"chosen": chat, "rejected": chat[:1]}, "rejected: conversation has no assistant message"),
        (RLPromptDataset, {"conversations": chat}, "prompt must end with a user or tool message, not assistant"),
        (RLPromptDataset, {"conversations": [{"role": "user", "content": "x " * 100}]}, "over-long: prompt has"),
    ]
    for n, (cls, row, message) in enumerate(cases):
        path = write_jsonl(tmp_path / f"{n}.jsonl", [row])
        with pytest.raises(DataError, match=re.escape(f"{path}:1: {message}")):
            cls(path, tok, 32)[0]


# --- pretraining: jsonl on the fly == pre-tokenized binary --------------------------------------

DOCS = ["Hello world, this is document one.", "第二个文档：小模型也能学习。", "",
        "Third document with\nnew lines and digits 12345.", "A much longer document " * 12, "短"]


@pytest.fixture(scope="module")
def pretrain_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pretrain")
    jsonl = write_jsonl(folder / "pre.jsonl", [{"text": d} for d in DOCS] + ["   "])
    pretok.pretokenize(jsonl, str(folder / "pre"), TOKENIZER_DIR, num_workers=2, chunk_mb=100 / 2**20)
    return jsonl, str(folder / "pre.bin")


@pytest.mark.parametrize("pack", [False, True])
def test_pretokenized_equals_on_the_fly(tok, pretrain_files, pack):
    jsonl, binary = pretrain_files
    a, b = PretrainDataset(jsonl, tok, 24, pack=pack), PretrainDataset(binary, tok, 24, pack=pack)
    assert len(a) == len(b) > 1
    for i in range(len(a)):
        assert torch.equal(a[i]["input_ids"], b[i]["input_ids"]) and torch.equal(a[i]["labels"], b[i]["labels"])


def test_pretrain_doc_and_pack_layout(tok, pretrain_files):
    jsonl, binary = pretrain_files
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    docs = [tok.encode(d, add_special_tokens=False) for d in DOCS]
    doc = PretrainDataset(jsonl, tok, 24)
    assert len(doc) == len(DOCS)
    first = doc[0]
    n = len(docs[0]) + 2
    assert first["input_ids"][:n].tolist() == [bos] + docs[0] + [eos] and (first["input_ids"][n:] == pad).all()
    assert first["labels"][:n].tolist() == first["input_ids"][:n].tolist() and (first["labels"][n:] == IGNORE).all()
    assert doc[4]["input_ids"].tolist() == ([bos] + docs[4])[:24]  # cut: no eos, no padding
    stream = [t for d in docs for t in [bos] + d + [eos]]
    pack = PretrainDataset(binary, tok, 24, pack=True)
    assert len(pack) == len(stream) // 24
    assert torch.cat([pack[i]["input_ids"] for i in range(len(pack))]).tolist() == stream[:len(pack) * 24]
    assert all(torch.equal(pack[i]["labels"], pack[i]["input_ids"]) for i in range(len(pack)))


def test_pretokenize_meta_and_tokenizer_check(tok, tag_tok, pretrain_files):
    _, binary = pretrain_files
    meta = json.loads(Path(binary[:-4] + ".json").read_text())
    offsets = np.fromfile(binary[:-4] + ".idx", np.int64)
    assert meta["docs"] == len(DOCS) == len(offsets) - 1 and meta["tokens"] == offsets[-1]
    assert meta["dtype"] == "uint16" and Path(binary).stat().st_size == 2 * meta["tokens"]
    with pytest.raises(DataError, match="pre-tokenized with another tokenizer"):
        PretrainDataset(binary, tag_tok, 24)


def test_pretokenize_resumes_and_reports_bad_lines(tok, tmp_path, monkeypatch):
    rows = [{"text": f"document number {i} " * (i % 5 + 1)} for i in range(40)]
    jsonl = write_jsonl(tmp_path / "p.jsonl", rows[:7] + ['{"text": 1}'] + rows[7:])
    with pytest.raises(DataError, match=re.escape(f"{jsonl}:8: field 'text' must be a str")):
        pretok.pretokenize(jsonl, str(tmp_path / "p"), TOKENIZER_DIR, 1, chunk_mb=300 / 2**20)
    # Interrupt a run after three chunks, then resume: only the remaining chunks are tokenized.
    calls, original = [], pretok.tokenize_chunk

    def interrupted(task):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(task[0])
        return original(task)

    monkeypatch.setattr(pretok, "tokenize_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretok.pretokenize(jsonl, str(tmp_path / "p"), TOKENIZER_DIR, 1, chunk_mb=300 / 2**20, skip_bad=True)
    monkeypatch.setattr(pretok, "tokenize_chunk", lambda task: calls.append(task[0]) or original(task))
    meta = pretok.pretokenize(jsonl, str(tmp_path / "p"), TOKENIZER_DIR, 1, chunk_mb=300 / 2**20, skip_bad=True)
    assert calls[:3] == [0, 1, 2] and 0 not in calls[3:] and len(set(calls)) == len(calls)
    assert meta["skipped_bad_lines"] == 1 and meta["docs"] == 40 and not Path(str(tmp_path / "p.parts")).exists()
    fresh = PretrainDataset(write_jsonl(tmp_path / "q.jsonl", rows), tok, 32)
    resumed = PretrainDataset(str(tmp_path / "p.bin"), tok, 32)
    assert all(torch.equal(fresh[i]["input_ids"], resumed[i]["input_ids"]) for i in range(40))


def test_replay_adds_a_seeded_share_of_the_old_data_and_keeps_the_collate(capsys):
    from model.dataloader import with_replay
    from model.runtime import Run

    class Rows(list):  # a dataset with its own collate, as VLMDataset has
        def collate(self, samples):
            return {"rows": samples}

    new, old = Rows(f"new{i}" for i in range(40)), [f"old{i}" for i in range(30)]
    cpu = Run(torch.device("cpu"), torch.float32)
    mixed = with_replay(new, old, 0.25, seed=3, run=cpu, path="old.jsonl")
    replayed = [mixed[i] for i in range(40, len(mixed))]
    assert len(mixed) == 50 and [mixed[i] for i in range(40)] == list(new)
    assert len(set(replayed)) == 10 and set(replayed) <= set(old)  # drawn without repetition
    assert replayed == [with_replay(new, old, 0.25, 3, cpu, "old.jsonl")[i] for i in range(40, 50)]  # seeded
    assert replayed != [with_replay(new, old, 0.25, 4, cpu, "old.jsonl")[i] for i in range(40, 50)]
    assert mixed.collate(["a"]) == {"rows": ["a"]}
    assert len(with_replay(new, old, 2.0, 3, cpu, "old.jsonl")) == 70  # at most all of the old data
    assert "data: 40 samples + 10 replayed from old.jsonl" in capsys.readouterr().out
