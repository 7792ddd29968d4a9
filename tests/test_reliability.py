"""What a run guarantees when things go wrong: a diverged run stops without writing inf weights, a checkpoint's
.pth and .json are a matching pair or an error, a resume refuses another data order, a finished run stays
finished, stale temp files go, the log has each step once, and known errors are one line."""
import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

from model.checkpoint import (CheckpointError, atomic_json_save, load_model, nonfinite_weights, read_meta,
                              save_weights)
from model.optimizer import NonFiniteLoss, Stepper
from model.runtime import Run
from model.session import check_resume_flags, resume_flags

from tests.helpers import ROOT, write_corpus
from tests.test_training import TINY, parse, tiny_session, train


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def run_loop(session, model, poison_at=None):
    """A pretraining loop; from step `poison_at` on, the weights are multiplied up past float16's range."""
    for batch in session.batches():
        out = model(batch["input_ids"], labels=batch["labels"])
        session.backward(out.loss)
        if session.ready:
            session.step(out.loss)
            if session.progress.step == poison_at:
                with torch.no_grad():
                    model.model.layers[0].mlp.up_proj.weight.mul_(1e6)  # finite in fp32, inf in fp16
    session.finish()


def test_non_finite_gradient_norms_stop_the_run_like_non_finite_losses():
    model = torch.nn.Linear(4, 1)
    model.weight.register_hook(lambda g: g * float("inf"))  # the loss stays finite, its gradient does not
    stepper = Stepper(model, parse(["--device", "cpu"]), Run(torch.device("cpu"), torch.float32))
    for _ in range(4):
        assert stepper.backward(model(torch.ones(1, 4)).sum())
        stepper.step(1e-3)
    stepper.backward(model(torch.ones(1, 4)).sum())
    with pytest.raises(NonFiniteLoss, match="5 non-finite losses or gradient norms"):
        stepper.step(1e-3)
    assert torch.isfinite(model.weight).all()  # no step was applied


def test_weights_beyond_float16_are_never_saved_and_the_last_good_checkpoint_stays(tmp_path):
    session, model = tiny_session(tmp_path, "--max_steps", "8", "--save_interval", "2")
    good = tmp_path / "pretrain_32.pth"
    with pytest.raises(SystemExit, match=r"weights hold [\d,]+ values that are NaN/inf or beyond float16's range, "
                                         r"so step 4 was not saved.*pretrain_32\.pth holds step 2"):
        run_loop(session, model, poison_at=3)
    assert load_model(str(good))[1]["step"] == 2
    assert nonfinite_weights(model) > 0 and nonfinite_weights(load_model(str(good))[0]) == 0


@pytest.mark.slow  # a subprocess; the in-process tests above check the same refusal
def test_a_diverging_script_exits_1_and_leaves_no_weights(tmp_path):
    out = tmp_path / "out"
    result = train(tmp_path, "--data_path", write_corpus(tmp_path / "d.jsonl"), "--max_steps", "40",
                   "--save_interval", "2", "--learning_rate", "1e6", "--out_dir", str(out))
    assert result.returncode == 1, result.stdout[-2000:]
    assert "the run diverged" in result.stderr and "Traceback" not in result.stderr
    assert not os.path.exists(out / "pretrain_32.pth")  # before the fix: a .pth holding ~900k inf values


def test_a_meta_from_another_save_is_an_error_not_a_silent_pair(tmp_path, monkeypatch):
    from model import MiniMindConfig, MiniMindForCausalLM
    model = MiniMindForCausalLM(MiniMindConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1))
    path = str(tmp_path / "sft_32.pth")
    save_weights(model, path, {"step": 20})
    assert read_meta(path)["step"] == 20 and "weights_sha256" in read_meta(path)

    def killed(obj, path):  # kill -9 after the weights, before their meta
        raise KeyboardInterrupt
    monkeypatch.setattr("model.checkpoint.atomic_json_save", killed)
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        save_weights(model, path, {"step": 30})
    with pytest.raises(CheckpointError, match="describes another save than .*sft_32.pth.*--resume"):
        load_model(path)
    monkeypatch.undo()
    save_weights(model, path, {"step": 30})  # the next save writes a pair again
    assert load_model(path)[1]["step"] == 30
    meta = read_meta(path)
    del meta["weights_sha256"]  # metas from before the check (and downloads) still load
    atomic_json_save(meta, path.replace(".pth", ".json"))
    assert load_model(path)[1]["step"] == 30


def test_resume_refuses_another_data_order_and_accepts_a_new_schedule(tmp_path, capsys):
    session, model = tiny_session(tmp_path, "--max_steps", "4", "--save_interval", "2")
    run_loop(session, model)
    with pytest.raises(SystemExit, match=r"another data order \(--seed 42 -> 7, global batch "
                                         r"\(--batch_size x processes\) 4 -> 8\)"):
        tiny_session(tmp_path, "--max_steps", "4", "--resume", "--batch_size", "8", "--seed", "7")
    session, model = tiny_session(tmp_path, "--max_steps", "6", "--resume", "--learning_rate", "1e-4")
    assert "schedule changes from here on (--learning_rate 0.0005 -> 0.0001, --max_steps 4 -> 6)" in \
        capsys.readouterr().out
    run_loop(session, model)
    assert session.progress.step == 6
    # The order depends on the global batch only: 2 processes of 4 resume as 1 process of 8.
    cpu = torch.device("cpu")
    saved = resume_flags(parse(TINY + ["--batch_size", "4"]), Run(cpu, torch.float32, world_size=2))
    now = resume_flags(parse(TINY + ["--batch_size", "8"]), Run(cpu, torch.float32))
    check_resume_flags(saved, now, "x", Run(cpu, torch.float32))  # no exit


def test_resuming_a_finished_run_exits_0_and_touches_nothing(tmp_path, capsys):
    session, model = tiny_session(tmp_path, "--max_steps", "4", "--save_interval", "2")
    run_loop(session, model)
    files = {f: sha(tmp_path / f) for f in os.listdir(tmp_path) if f.startswith("pretrain_32")}
    with pytest.raises(SystemExit) as stop:
        tiny_session(tmp_path, "--max_steps", "4", "--resume")
    assert stop.value.code == 0
    assert "already finished (4/4 steps): nothing to do" in capsys.readouterr().out
    assert files == {f: sha(tmp_path / f) for f in os.listdir(tmp_path) if f.startswith("pretrain_32")}


def test_a_resume_after_a_kill_keeps_each_step_once_in_the_log(tmp_path):
    session, model = tiny_session(tmp_path, "--max_steps", "10", "--save_interval", "4")
    for batch in session.batches():  # "killed" at step 6: the last save was step 4
        out = model(batch["input_ids"], labels=batch["labels"])
        session.backward(out.loss)
        if session.ready:
            session.step(out.loss)
            if session.progress.step == 6:
                break
    session, model = tiny_session(tmp_path, "--max_steps", "10", "--save_interval", "4", "--resume")
    run_loop(session, model)
    steps = [int(line.split(",")[0]) for line in open(tmp_path / "pretrain_32_log.csv").read().split()[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == 10  # before the fix: steps 5 and 6 twice


def test_stale_temp_files_of_dead_processes_are_removed_at_start(tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a pid that has exited
    stale = [tmp_path / f"pretrain_32.pth.tmp{dead}", tmp_path / f"pretrain_32_resume.pth.tmp{dead}",
             tmp_path / f"pretrain_32.json.tmp{dead}"]
    live = tmp_path / f"pretrain_32.pth.tmp{os.getpid()}"  # a save in progress elsewhere: kept
    for path in stale + [live]:
        path.write_bytes(b"half a checkpoint")
    tiny_session(tmp_path, "--max_steps", "2")
    assert [p.exists() for p in stale] == [False] * 3 and live.exists()
    assert "removed 3 temp file(s) of saves interrupted earlier" in capsys.readouterr().out


def test_resume_with_only_the_weights_says_what_exists(tmp_path):
    session, model = tiny_session(tmp_path, "--max_steps", "2", "--save_interval", "2")
    run_loop(session, model)
    os.remove(tmp_path / "pretrain_32_resume.pth")  # killed during the first resume-file write
    with pytest.raises(SystemExit, match=r"_resume.pth not found, only the stage's weights .*pretrain_32.pth "
                                         r"\(step 2\).*--from_weight"):
        tiny_session(tmp_path, "--max_steps", "2", "--resume")


@pytest.mark.parametrize("content", [pytest.param(os.urandom(3000), marks=pytest.mark.slow),
                                     pytest.param(b"PK\x03\x04 half a zip", marks=pytest.mark.slow), "pickle"])
def test_unreadable_checkpoints_stop_a_script_with_one_line(tmp_path, content):
    path = tmp_path / "bad.pth"
    if content == "pickle":
        import pickle

        class Payload:
            def __reduce__(self):
                return (os.system, (f"touch {tmp_path}/ran",))
        content = pickle.dumps({"w": Payload()})
    path.write_bytes(content)
    result = subprocess.run([sys.executable, "train_full_sft.py", *TINY, "--from_weight", str(path),
                             "--out_dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {path}: cannot be read: ")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "ran")


@pytest.mark.slow  # a subprocess
def test_a_checkpoint_of_another_size_stops_a_script_with_one_line(tmp_path):
    from model import MiniMindConfig, MiniMindForCausalLM
    path = str(tmp_path / "other.pth")
    save_weights(MiniMindForCausalLM(MiniMindConfig(vocab_size=6400, hidden_size=64, num_hidden_layers=1)), path,
                 {"stage": "pretrain"})
    meta = json.load(open(path.replace(".pth", ".json")))
    assert meta["config"]["hidden_size"] == 64
    result = subprocess.run([sys.executable, "train_full_sft.py", *TINY, "--from_weight", path,
                             "--out_dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "does not fit the model" in result.stderr and "--hidden_size 64" in result.stderr
