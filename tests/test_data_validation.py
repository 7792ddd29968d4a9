"""Bad data lines stop a run before its first step (issue 15): every line is checked when a dataset is made,
all bad lines are reported (the first by file:line and reason, then a count) and nothing on disk changes;
--skip_bad leaves them out of the dataset instead, and the run trains on the good lines only."""
import json
import os
import subprocess
import sys

import pytest
import torch

import model.dataset as dataset_module
from model.dataset import MAX_WARNINGS, DataError, DPODataset, JsonlIndex, PretrainDataset, RLPromptDataset, SFTDataset
from demo import demo_file
from tests.helpers import ROOT, tokenizer

TINY = ["--device", "cpu", "--dtype", "float32", "--hidden_size", "64", "--num_hidden_layers", "2",
        "--max_seq_len", "128", "--batch_size", "4", "--log_interval", "1", "--from_weight", "none"]
OLD_LOG = "step,loss\n1,9.9\n"  # the previous run's log, which a refused run must leave as it is

# Bad lines of several kinds for each format: (line as written, the reason the check gives).
CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
BAD = {
    "pretrain": [('{"text": "cut off', "malformed JSON"),
                 ({"txt": "typo"}, "missing field 'text'"),
                 ({"text": 7}, "field 'text' must be a str, got int"),
                 ('["text"]', "expected a JSON object, got list")],
    "sft": [({"conversations": [{"role": "bot", "content": "x"}, CHAT[1]]}, "message 1 has role 'bot'"),
            ({"conversations": CHAT[:1]}, "conversation has no assistant message"),
            ({"conversations": [{"role": "user", "content": ["x"]}, CHAT[1]]}, "message 1 has no string 'content'"),
            ('{"conversations": [', "malformed JSON"),
            ({"messages": CHAT}, "missing field 'conversations'")],
    "dpo": [({"chosen": CHAT}, "missing field 'rejected'"),
            ({"chosen": CHAT, "rejected": CHAT[:1]}, "rejected: conversation has no assistant message"),
            ({"chosen": "text", "rejected": CHAT}, "field 'chosen' must be a list, got str")],
    "rl_prompts": [({"conversations": CHAT}, "prompt must end with a user or tool message, not assistant"),
                   ({"conversations": [{"role": "robot", "content": "x"}]}, "message 1 has role 'robot'"),
                   ({"conversations": CHAT[:1], "answer": [1]}, "field 'answer' must be a string or number")],
}
CLASSES = {"pretrain": PretrainDataset, "sft": SFTDataset, "dpo": DPODataset, "rl_prompts": RLPromptDataset}


def line(row):
    return row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)


def bad_file(path, kind, n_good=40, bad=None):
    """The first n_good lines of the demo's <kind>.jsonl with the bad lines near the end, on every third line.
    Returns (path, {line number: reason} of the bad lines, the good lines)."""
    with open(demo_file(f"{kind}.jsonl"), encoding="utf-8") as f:  # generated on first use (a clean clone)
        good = [next(f).rstrip("\n") for _ in range(n_good)]
    bad = BAD[kind] if bad is None else bad
    total = n_good + len(bad)
    at = {total - 3 * (len(bad) - k): row for k, row in enumerate(bad)}  # 0-based position -> (row, reason)
    rest = iter(good)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines((line(at[i][0]) if i in at else next(rest)) + "\n" for i in range(total))
    return str(path), {i + 1: reason for i, (_, reason) in at.items()}, good


def assert_report(message, path, reasons, total):
    """The message names every bad line (up to MAX_WARNINGS) as path:line: reason, in order, then counts them."""
    lines = message.splitlines()
    assert lines[0].endswith(f"bad lines in {path} (fix them, or pass --skip_bad to train without them):")
    named = [(n, r) for n, r in sorted(reasons.items())][:MAX_WARNINGS]
    assert len(lines) == len(named) + 2
    for text, (n, reason) in zip(lines[1:], named):
        assert text.startswith(f"  {path}:{n}: {reason}"), (text, n, reason)
    assert lines[-1] == f"  {len(reasons)} bad line{'s' if len(reasons) > 1 else ''} of {total}"


# --- the dataset classes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(BAD))
def test_every_bad_line_is_reported_when_the_dataset_is_made(kind, tmp_path):
    path, reasons, good = bad_file(tmp_path / f"{kind}.jsonl", kind)
    cls = CLASSES[kind]
    with pytest.raises(DataError) as error:
        cls(path, tokenizer(), 128)
    assert_report(str(error.value), path, reasons, len(good) + len(reasons))
    data = cls(path, tokenizer(), 128, skip_bad=True)
    assert len(data) == len(good) and data.skipped == len(reasons)
    assert sorted(data.bad_lines) == sorted(reasons)
    data[len(data) - 1]  # the last good line reads


def test_more_bad_lines_than_are_listed(tmp_path):
    many = [({"conversations": CHAT[:1]}, "conversation has no assistant message")] * (MAX_WARNINGS + 5)
    path, reasons, good = bad_file(tmp_path / "sft.jsonl", "sft", n_good=60, bad=many)
    with pytest.raises(DataError) as error:
        SFTDataset(path, tokenizer(), 128)
    assert_report(str(error.value), path, reasons, len(good) + len(reasons))
    assert f"  {MAX_WARNINGS + 5} bad lines of {len(good) + len(reasons)}" in str(error.value)


@pytest.mark.parametrize("kind, pack", [("sft", False), ("pretrain", False), ("pretrain", True)])
def test_skipped_lines_leave_the_same_samples_as_a_clean_file(kind, pack, tmp_path):
    """With --skip_bad the dataset is exactly the clean file's: same length, same samples in the same order, so
    batches never meet a bad line and the data order (and a resume) depend on the good lines only."""
    path, _, good = bad_file(tmp_path / "bad.jsonl", kind)
    clean = tmp_path / "clean.jsonl"
    clean.write_text("\n".join(good) + "\n", encoding="utf-8")
    kw = {"pack": pack} if kind == "pretrain" else {}
    max_seq_len = 64 if kind == "pretrain" else 256  # the demo's chats fit in 256 tokens
    a = CLASSES[kind](path, tokenizer(), max_seq_len, skip_bad=True, **kw)
    b = CLASSES[kind](str(clean), tokenizer(), max_seq_len, **kw)
    assert len(a) == len(b) > 0
    assert all(torch.equal(a[i]["input_ids"], b[i]["input_ids"]) and torch.equal(a[i]["labels"], b[i]["labels"])
               for i in range(len(a)))


def test_the_check_is_cached_with_the_line_index(tmp_path, monkeypatch):
    """A file is checked once: the result lives in <file>.lines.npz until the file changes."""
    path, reasons, good = bad_file(tmp_path / "sft.jsonl", "sft")
    first = SFTDataset(path, tokenizer(), 128, skip_bad=True)
    assert [len(bad) for bad, _ in JsonlIndex(path).checks.values()] == [len(reasons)]

    def no_parsing(raw):
        raise AssertionError("a cached check parsed the file again")

    monkeypatch.setattr(dataset_module, "parse_row", no_parsing)
    again = SFTDataset(path, tokenizer(), 128, skip_bad=True)
    assert len(again) == len(first) and again.bad_lines == first.bad_lines
    with pytest.raises(DataError, match="bad lines in"):  # the cached result still refuses without --skip_bad
        SFTDataset(path, tokenizer(), 128)
    with open(path, "a", encoding="utf-8") as f:  # a changed file is checked again
        f.write(good[0] + "\n")
    with pytest.raises(AssertionError, match="parsed the file again"):
        SFTDataset(path, tokenizer(), 128)


# --- the training scripts: refused before anything is written, or trained on the good lines ---------------

def refused(monkeypatch, script, argv):
    """A script's main() in this process, which must stop with sys.exit(message) while loading its data."""
    monkeypatch.setattr(sys, "argv", [script.__file__, *argv])
    with pytest.raises(SystemExit) as stopped:
        script.main()
    assert isinstance(stopped.value.code, str) and stopped.value.code.startswith("error: ")
    return stopped.value.code.removeprefix("error: ")


@pytest.mark.parametrize("kind", ["pretrain", "sft", "dpo", "rl_prompts", "val"])
def test_a_script_stops_before_writing(kind, tmp_path, monkeypatch):
    """main() ends with sys.exit(report): the interpreter prints the report alone (no traceback) and exits with
    status 1, and the previous run's log is untouched (the datasets are made before the Session and Logger)."""
    import train_dpo
    import train_full_sft
    import train_grpo
    import train_pretrain
    script, log, flags = {"pretrain": (train_pretrain, "pretrain_64", ["--pack", "0"]),
                          "sft": (train_full_sft, "full_sft_64", []),
                          "dpo": (train_dpo, "rlhf_64", []),
                          "rl_prompts": (train_grpo, "grpo_64", []),
                          "val": (train_full_sft, "full_sft_64", [])}[kind]
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{log}_log.csv").write_text(OLD_LOG)
    if kind == "val":  # good training data, bad held-out data
        train, _, _ = bad_file(tmp_path / "train.jsonl", "sft", bad=[])
        path, reasons, good = bad_file(tmp_path / "val.jsonl", "sft")
        flags = ["--data_path", train, "--val_path", path]
    else:
        path, reasons, good = bad_file(tmp_path / f"{kind}.jsonl", kind)
        flags += ["--data_path", path]
    message = refused(monkeypatch, script, [*TINY, *flags, "--out_dir", str(out), "--max_steps", "2"])
    assert_report(message, path, reasons, len(good) + len(reasons))
    assert sorted(os.listdir(out)) == [f"{log}_log.csv"] and (out / f"{log}_log.csv").read_text() == OLD_LOG


def test_skip_bad_trains_end_to_end(tmp_path):
    """The command line as a user runs it: with --skip_bad, train_full_sft.py says how many bad lines it left
    out, trains on the good ones (its data count excludes the bad) and replaces the previous log."""
    path, reasons, good = bad_file(tmp_path / "sft.jsonl", "sft")
    out = tmp_path / "out"
    out.mkdir()
    log = out / "full_sft_64_log.csv"
    log.write_text(OLD_LOG)
    result = subprocess.run([sys.executable, "train_full_sft.py", *TINY, "--data_path", path, "--out_dir", str(out),
                             "--max_steps", "2", "--skip_bad"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stderr
    assert f"skipping bad lines of {path} (--skip_bad):\n  {path}:{min(reasons)}: " in result.stderr
    assert f"\n  {len(reasons)} bad lines of {len(good) + len(reasons)}\n" in result.stderr
    assert f"data: {len(good)} samples" in result.stdout
    assert [row.split(",")[0] for row in log.read_text().splitlines()[1:]] == ["1", "2"]
