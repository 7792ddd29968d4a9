"""The training engine: LR schedule, data order, exact resume (Ctrl-C and kill -9), DDP = one process,
NaN guard, atomic checkpoints, bits per byte, wandb offline."""
import argparse
import math
import os
import subprocess
import sys

import pytest
import torch

from model import MiniMindConfig, MiniMindForCausalLM
from model.checkpoint import atomic_torch_save, load_model
from model.dataset import PretrainDataset
from model.checkpoint import load_tokenizer
from model.dataloader import batch_order, trim_padding
from model.loss_eval import evaluate, token_byte_lengths
from model.optimizer import NonFiniteLoss, Stepper, cosine_lr
from model.runtime import Run, add_common_args
from model.session import Session

from tests.helpers import ROOT, TOKENIZER, interrupt_at, losses, write_corpus
from tests.test_lora import run_script
TINY = ["--hidden_size", "32", "--num_hidden_layers", "2", "--max_seq_len", "32", "--batch_size", "4",
        "--dtype", "float32", "--device", "cpu", "--log_interval", "1", "--eval_batches", "2"]


def parse(extra):
    return add_common_args(argparse.ArgumentParser()).parse_args(extra)


def train(tmp_path, *extra, timeout=240, nproc=1):
    """Run train_pretrain.py in a subprocess; returns the CompletedProcess."""
    cmd = [sys.executable, "train_pretrain.py"]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(29500 + os.getpid() % 1000), "train_pretrain.py"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd + TINY + list(extra), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_cosine_lr_warms_up_then_decays_to_the_floor():
    lrs = [cosine_lr(s, 100, 1e-3, warmup=10, min_ratio=0.1) for s in range(101)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # never runs backwards
    assert lrs[100] == pytest.approx(1e-4) and lrs[55] == pytest.approx(0.55e-3)


def test_batch_order_splits_one_global_batch_across_ranks():
    single = batch_order(103, 8, seed=3, epoch=1)
    ranks = [batch_order(103, 4, seed=3, epoch=1, rank=r, world=2) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 12
    for step in range(12):
        assert sorted(single[step]) == sorted(ranks[0][step] + ranks[1][step])
    assert batch_order(103, 8, seed=3, epoch=2) != single  # a new order every epoch


def test_resume_after_ctrl_c_and_after_kill_9_continues_exactly(tmp_path):
    data = write_corpus(tmp_path / "train.jsonl")
    common = ["--data_path", data, "--max_steps", "24", "--save_interval", "5"]
    full = train(tmp_path, *common, "--out_dir", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr[-3000:]
    reference = losses(tmp_path / "full")
    assert len(reference) == 24 and reference[24] < reference[1]  # it learns

    # Ctrl-C: the run saves at the next step and exits cleanly; --resume replays the same losses.
    out = tmp_path / "interrupted"
    proc = interrupt_at(["train_pretrain.py", *TINY, *common, "--out_dir", str(out)], "step  8/")
    assert proc.returncode == 0
    stopped_at = max(losses(out))
    assert 8 <= stopped_at < 24
    resumed = train(tmp_path, *common, "--out_dir", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resume: {out}/pretrain_32_resume.pth at step {stopped_at}" in resumed.stdout
    assert losses(out) == pytest.approx(reference, abs=1e-6)

    # kill -9 between saves: the next run resumes from the last save (step 10 or 15), no corrupt files.
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "train_pretrain.py", *TINY, *common, "--out_dir", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:
        if line.startswith("step 12/"):
            proc.kill()
            break
    proc.wait()
    assert not [f for f in os.listdir(out) if ".tmp" in f]
    resumed = train(tmp_path, *common, "--out_dir", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at step 10" in resumed.stdout or "at step 15" in resumed.stdout
    assert losses(out) == pytest.approx(reference, abs=1e-6)

    # Resuming a run that already finished trains nothing more.
    again = train(tmp_path, *common, "--out_dir", str(out), "--resume")
    assert again.returncode == 0 and "at step 24" in again.stdout, again.stderr[-3000:]
    assert "step 25/" not in again.stdout and max(losses(out)) == 24


def test_ddp_two_processes_match_one_process_on_the_same_global_batch(tmp_path):
    data = write_corpus(tmp_path / "train.jsonl")
    common = ["--data_path", data, "--max_steps", "6", "--save_interval", "100"]
    one = train(tmp_path, *common, "--out_dir", str(tmp_path / "one"), "--batch_size", "8")
    two = train(tmp_path, *common, "--out_dir", str(tmp_path / "two"), "--batch_size", "4", nproc=2)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 process(es)" in two.stdout
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    a, _ = load_model(str(tmp_path / "one" / "pretrain_32.pth"))
    b, _ = load_model(str(tmp_path / "two" / "pretrain_32.pth"))
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-3), name  # same weights (saved in fp16)


@pytest.mark.slow  # two training subprocesses (CI runs the slow set too)
def test_gradient_accumulation_equals_the_bigger_batch(tmp_path):
    data = write_corpus(tmp_path / "train.jsonl")
    common = ["--data_path", data, "--max_steps", "4", "--save_interval", "100"]
    big = train(tmp_path, *common, "--out_dir", str(tmp_path / "big"), "--batch_size", "8")
    acc = train(tmp_path, *common, "--out_dir", str(tmp_path / "acc"), "--batch_size", "4",
                "--accumulation_steps", "2")
    assert big.returncode == 0 and acc.returncode == 0, acc.stderr[-3000:]
    a, _ = load_model(str(tmp_path / "big" / "pretrain_32.pth"))
    b, _ = load_model(str(tmp_path / "acc" / "pretrain_32.pth"))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-3)


def tiny_session(tmp_path, *extra):
    args = parse(TINY + ["--out_dir", str(tmp_path), "--data_path", write_corpus(tmp_path / "d.jsonl"), *extra])
    tokenizer = load_tokenizer(TOKENIZER)
    torch.manual_seed(0)
    model = MiniMindForCausalLM(MiniMindConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2))
    data = PretrainDataset(args.data_path, tokenizer, args.max_seq_len, pack=True)
    return Session(args, Run(torch.device("cpu"), torch.float32), model, data, "pretrain", tokenizer), model


def test_repeated_nan_losses_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path, capsys):
    session, model = tiny_session(tmp_path, "--max_steps", "30", "--save_interval", "2")
    with pytest.raises(SystemExit, match=r"5 non-finite losses or gradient norms.*pretrain_32\.pth holds step 4"):
        for batch in session.batches():
            out = model(batch["input_ids"], labels=batch["labels"])
            session.backward(out.loss)
            if session.ready:
                session.step(out.loss)
                if session.progress.step == 4:
                    with torch.no_grad():
                        model.model.norm.weight[0] = float("nan")  # poison: every later loss is NaN
    assert "non-finite loss (nan), micro-batch skipped (1 since the last good step)" in capsys.readouterr().out
    good, meta = load_model(str(tmp_path / "pretrain_32.pth"))
    assert meta["step"] == 4 and all(torch.isfinite(p).all() for p in good.parameters())


def test_stepper_skips_one_bad_micro_batch_and_keeps_going():
    model = torch.nn.Linear(4, 1)
    args = parse(["--accumulation_steps", "1"])
    stepper = Stepper(model, args, Run(torch.device("cpu"), torch.float32))
    assert not stepper.backward(torch.tensor(float("inf"), requires_grad=True))
    assert stepper.backward(model(torch.ones(1, 4)).sum()) and stepper.ready
    assert math.isfinite(stepper.step(1e-3))
    for _ in range(4):
        stepper.backward(torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(NonFiniteLoss):
        stepper.backward(torch.tensor(float("nan"), requires_grad=True))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "x.pth")
    atomic_torch_save({"w": torch.ones(3)}, path)

    def crash(obj, f):
        f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["x.pth"]


def test_bits_per_byte_counts_the_bytes_of_the_text(tmp_path):
    tokenizer = load_tokenizer(TOKENIZER)
    lengths = token_byte_lengths(tokenizer)
    text = "Hello wörld, 你好世界 🙂 <think> 42"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert int(lengths[ids].sum()) == len(text.encode("utf-8"))
    assert lengths[tokenizer.eos_token_id] == 0 and lengths[tokenizer.pad_token_id] == 0

    args = parse(TINY)
    data = PretrainDataset(write_corpus(tmp_path / "v.jsonl", n=20), tokenizer, 32, pack=True)
    torch.manual_seed(0)
    model = MiniMindForCausalLM(MiniMindConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2))
    loss, bpb = evaluate(model, data, args, Run(torch.device("cpu"), torch.float32), lengths, max_batches=2)
    nats, tokens, text_nats, nbytes = 0.0, 0, 0.0, 0
    for i in range(8):  # the same 2 batches of 4, by an independent float64 computation
        sample = data[i]
        logits = model(sample["input_ids"][None]).logits[0, :-1].double()
        target = sample["labels"][1:]
        token_nats = torch.nn.functional.cross_entropy(logits, target, reduction="none")
        nats, tokens = nats + token_nats.sum().item(), tokens + len(target)
        text = target != tokenizer.eos_token_id
        text &= target != tokenizer.bos_token_id
        text_nats += token_nats[text].sum().item()
        nbytes += len(tokenizer.decode(target[text]).encode("utf-8"))
    assert loss == pytest.approx(nats / tokens, rel=1e-5)
    assert bpb == pytest.approx(text_nats / math.log(2) / nbytes, rel=1e-5)


@pytest.mark.slow  # a subprocess run with wandb's offline writer (CI runs the slow set too)
def test_wandb_offline_logs_the_run(tmp_path):
    pytest.importorskip("wandb")
    data = write_corpus(tmp_path / "train.jsonl")
    env_before = os.environ.get("WANDB_MODE")
    os.environ["WANDB_MODE"] = "offline"
    try:
        result = train(tmp_path, "--data_path", data, "--max_steps", "3", "--out_dir", str(tmp_path / "w"),
                       "--use_wandb", "--wandb_project", "minimind-test")
    finally:
        os.environ.pop("WANDB_MODE") if env_before is None else os.environ.update(WANDB_MODE=env_before)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [d for d in os.listdir(tmp_path / "w" / "wandb") if d.startswith("offline-run-")]
    assert len(runs) == 1
    files = os.listdir(tmp_path / "w" / "wandb" / runs[0])
    assert any(f.endswith(".wandb") for f in files)
    assert os.path.exists(tmp_path / "w" / "pretrain_32_loss.png")


@pytest.mark.slow  # two training subprocesses, one under DeepSpeed (CI runs the slow set too)
def test_deepspeed_without_torchrun_matches_plain_pytorch(tmp_path):
    """A plain `python train_pretrain.py --deepspeed ...` sets up its own one-process group. (ZeRO-2 across two
    processes, and its resume, are in tests/test_deepspeed.py.)"""
    if not os.environ.get("CI"):
        pytest.importorskip("deepspeed")
    data = write_corpus(tmp_path / "train.jsonl")
    common = ["--data_path", data, "--max_steps", "4", "--save_interval", "100"]
    plain = train(tmp_path, *common, "--out_dir", str(tmp_path / "plain"))
    assert plain.returncode == 0, plain.stderr[-3000:]
    ds = train(tmp_path, *common, "--out_dir", str(tmp_path / "ds"), "--deepspeed", os.path.join(ROOT, "ds_config.json"),
               timeout=600)
    assert ds.returncode == 0, ds.stderr[-3000:]
    assert losses(tmp_path / "ds") == pytest.approx(losses(tmp_path / "plain"), abs=1e-5)


def test_trim_padding_cuts_only_columns_no_row_learns():
    a = {"chosen_input_ids": torch.tensor([1, 5, 6, 2, 0, 0]), "chosen_labels": torch.tensor([-100, 5, 6, 2, -100, -100]),
         "rejected_input_ids": torch.tensor([1, 7, 2, 0, 0, 0]),
         "rejected_labels": torch.tensor([-100, 7, 2, -100, -100, -100])}
    batch = trim_padding([a, a])
    assert batch["chosen_input_ids"].shape == batch["rejected_labels"].shape == (2, 4)  # one width for both
    assert torch.equal(batch["chosen_labels"][0], torch.tensor([-100, 5, 6, 2]))


def test_compile_flag_compiles_the_model_and_trains_like_eager():
    """--compile puts a torch.compile'd model in the loop; its steps give the same losses as eager ones."""
    torch.manual_seed(0)
    config = MiniMindConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    eager_model = MiniMindForCausalLM(config)
    compiled_model = MiniMindForCausalLM(config)
    compiled_model.load_state_dict(eager_model.state_dict())
    run = Run(torch.device("cpu"), torch.float32)
    ids = torch.randint(3, 64, (4, 16), generator=torch.Generator().manual_seed(1))
    losses = {}
    for name, model, flags in (("eager", eager_model, []), ("compiled", compiled_model, ["--compile"])):
        stepper = Stepper(model, parse(flags), run)
        assert isinstance(stepper.model, torch._dynamo.eval_frame.OptimizedModule) == (name == "compiled")
        losses[name] = []
        for _ in range(3):
            loss = stepper.model(ids, labels=ids).loss
            stepper.backward(loss)
            stepper.step(1e-2)
            losses[name].append(loss.item())
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4)
    assert losses["eager"][2] < losses["eager"][0]  # it learned


@pytest.mark.parametrize("flags, message", [
    (["--max_seq_len", "0"], "--max_seq_len 0: must be at least 2"),
    (["--max_seq_len", "-5"], "--max_seq_len -5: must be at least 2"),
    (["--batch_size", "0"], "--batch_size 0: must be at least 1"),
    (["--learning_rate", "nan"], "--learning_rate nan: must be a finite number >= 0"),
    (["--learning_rate", "0"], "--learning_rate 0.0: must be above 0"),
    (["--device", "foo"], "--device foo: expected auto, cpu, cuda, cuda:N or mps"),
    (["--tokenizer_path", "/missing"], "--tokenizer_path /missing: no such folder"),
    (["--attention", "mla", "--kv_lora_rank", "999"], "MLA ranks must fit the model: 0 < kv_lora_rank (999)"),
    (["--mtp_depth", "-1"], "mtp_depth=-1: the number of multi-token prediction modules"),
])
def test_bad_flags_stop_with_one_line_before_anything_is_written(tmp_path, flags, message):
    import train_pretrain
    log = tmp_path / "pretrain_32_log.csv"
    log.write_text("the previous run's log\n")
    with pytest.raises(SystemExit) as stopped:
        run_script(train_pretrain, "--out_dir", str(tmp_path), "--hidden_size", "32", "--num_hidden_layers", "1",
                   *flags)
    assert str(stopped.value.code).startswith(f"error: {message}") and "\n" not in str(stopped.value.code)
    assert log.read_text() == "the previous run's log\n" and sorted(p.name for p in tmp_path.iterdir()) == [log.name]
