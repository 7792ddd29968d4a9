"""The RL stages end to end (train_grpo.py with GRPO and CISPO, train_ppo.py): a tiny model learns from a
reward, two gloo processes train, a run killed with SIGKILL resumes with the same rewards and losses, bad
input stops with one line before anything is written, and the products load like any other checkpoint.

Every run starts from the same tiny model, rigged so that eos is likely (about one token in seven): a
random model of 6,400 tokens all but never stops, and the reward here pays for stopping early (DAPO's
length penalty ramping over the whole budget: reward = -tokens / 16), so only the direction the algorithm
pushes decides whether replies get shorter. Most runs go in process (no interpreter to start: ~9 s each).
"""
import argparse
import csv
import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch

import train_grpo
import train_ppo
from model.chat import add_model_args, load_chat_model
from model.checkpoint import load_model, read_meta
from tests.helpers import ROOT, save_checkpoint, tiny_model, tokenizer
from tests.test_lora import run_script

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
MAX_NEW = 16
# Only the length reward, over the whole budget: a reply of n tokens scores -n / 16 (-1 when cut off).
REWARD = ["--length_weight", "1", "--overlong_cache", str(MAX_NEW), "--format_weight", "0", "--accuracy_weight", "0",
          "--repetition_weight", "0"]
RUN = ["--device", "cpu", "--dtype", "float32", "--max_seq_len", "64", "--log_interval", "1", "--batch_size", "2",
       "--num_generations", "8", "--max_new_tokens", str(MAX_NEW), "--learning_rate", "1e-2", *REWARD]
# Columns that measure the machine, not the run: they differ between two runs of the same numbers.
TIMING = {"elapsed", "tok_per_s", "mfu", "rollout_tok_s", "train_tok_s"}
SCRIPTS = {"grpo": train_grpo, "ppo": train_ppo}
PRODUCT = {"grpo": "grpo_64", "ppo": "ppo_actor_64"}


def eos_prone_model():
    """tiny_model() with a constant 1 in every embedding's first coordinate, which after the final RMSNorm is
    ~7.9 at every position, and a head row that reads it for eos: p(eos) ~ 0.15 after any token, so replies
    of 16 tokens at most average ~7 and vary (a group's rewards differ), and the eos row's weight is one
    parameter that shortens them all."""
    model = tiny_model()
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.lm_head.weight[tokenizer().eos_token_id, 0] = 0.9
    return model


def write_prompts(path, n=128, without_answer=()):
    """An RL prompt file of n rows; the rows numbered in `without_answer` (from 0) have no "answer"."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            row = {"conversations": [{"role": "user", "content": f"Tell me about item {i}."}], "answer": str(i)}
            if i in without_answer:
                del row["answer"]
            f.write(json.dumps(row) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """--from_weight and --data_path of every run: the rigged model and 128 prompts (64 steps of 2 per epoch)."""
    folder = tmp_path_factory.mktemp("inputs")
    return ["--from_weight", save_checkpoint(eos_prone_model(), folder),
            "--data_path", write_prompts(folder / "rl.jsonl")]


def log_rows(out_dir, name) -> dict[int, dict]:
    """{step: row} of the run's CSV; a step logged twice (before a kill, then after the resume) keeps its last."""
    with open(os.path.join(out_dir, f"{name}_log.csv")) as f:
        return {int(r["step"]): r for r in csv.DictReader(f) if r.get("loss")}


def column(rows: dict, key: str) -> list[float]:
    return [float(rows[step][key]) for step in sorted(rows)]


def mean(xs):
    return sum(xs) / len(xs)


# The runs that several tests read, each run once (in process) when first asked for: name -> (script, flags,
# optimizer steps). A learning run is also the uninterrupted run its kill-and-resume test compares with
# (--save_interval changes no number of a run, so the killed run may save more often), and two runs give the
# products that must load. "ppo" makes up to 4 passes over a rollout and stops early past --target_kl (2 to 4
# steps a rollout here); "ppo_short" makes exactly 2 (--target_kl 0: no early stop).
RUNS = {
    "cispo": ("grpo", ["--loss_type", "cispo", "--max_steps", "20"], 20),
    "grpo_2_iterations": ("grpo", ["--loss_type", "grpo", "--num_iterations", "2", "--max_steps", "28"], 28),
    "ppo": ("ppo", ["--ppo_epochs", "4", "--target_kl", "0.05", "--max_steps", "24"], 24),
    "ppo_short": ("ppo", ["--ppo_epochs", "2", "--target_kl", "0", "--max_steps", "4"], 4),
}


@pytest.fixture(scope="module")
def finished(inputs, tmp_path_factory):
    """name -> (out_dir, argv without --out_dir and --save_interval) of the run RUNS[name]."""
    done = {}

    def get(name):
        if name not in done:
            script, extra, _ = RUNS[name]
            out = tmp_path_factory.mktemp(name)
            argv = [*RUN, *inputs, *extra]
            run_script(SCRIPTS[script], *argv, "--out_dir", str(out), "--save_interval", "1000")
            done[name] = out, argv
        return done[name]
    return get


# ----------------------------------------------------------------------------------------------------------
# 1. Learning happens.


@pytest.mark.parametrize("name", ["cispo", pytest.param("grpo_2_iterations", marks=pytest.mark.slow),
                                  pytest.param("ppo", marks=pytest.mark.slow)])
def test_replies_get_shorter_when_the_reward_pays_for_it(finished, name):
    """The untrained model's replies average ~7 tokens (p(eos) ~ 0.15, cut at 16); with the learning rate at 0
    they stay there, with the advantages' sign flipped they all run to 16 within two steps. Learning must
    bring the last quarter's under 4 and under half the first quarter's, and raise the reward (-len / 16,
    -1 when cut) by a fifth of its range."""
    out, _ = finished(name)
    rows = log_rows(out, PRODUCT[RUNS[name][0]])
    lengths, rewards = column(rows, "len"), column(rows, "reward")
    quarter = RUNS[name][2] // 4
    first, last = mean(lengths[:quarter]), mean(lengths[-quarter:])
    assert last < 4 and last < first / 2, lengths
    assert mean(rewards[-quarter:]) > mean(rewards[:quarter]) + 0.2, rewards
    assert column(rows, "r_length") == rewards  # the only component, weight 1
    assert all(math.isfinite(x) for x in column(rows, "loss"))


# ----------------------------------------------------------------------------------------------------------
# 2. Two processes (gloo on the CPU).


def torchrun(script, *args):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           script, *args]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # two processes (CI runs the slow set too; tests/test_training.py covers DDP by default)
@pytest.mark.parametrize("script, extra", [("grpo", ["--max_steps", "3"])])  # PPO shares the DDP path
def test_two_gloo_processes_train_and_save(tmp_path, inputs, script, extra):
    out = tmp_path / "out"
    result = torchrun(f"train_{script}.py", *RUN, *inputs, "--out_dir", str(out), "--num_generations", "4",
                      "--batch_size", "1", *extra)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    steps = int(extra[1])
    rows = log_rows(out, PRODUCT[script])
    assert sorted(rows) == list(range(1, steps + 1))
    assert all(math.isfinite(x) for key in ("reward", "len", "loss") for x in column(rows, key))
    assert read_meta(str(out / f"{PRODUCT[script]}.pth"))["step"] == steps
    load_model(str(out / f"{PRODUCT[script]}.pth"))


# ----------------------------------------------------------------------------------------------------------
# 3. Kill -9 and resume.


@pytest.mark.parametrize("name", ["cispo", pytest.param("grpo_2_iterations", marks=pytest.mark.slow),
                                  pytest.param("ppo", marks=pytest.mark.slow)])
def test_a_run_killed_after_a_save_resumes_with_the_same_rewards_and_losses(finished, tmp_path, capsys, name):
    """A save comes due every 3 steps, which can fall in the middle of a rollout's optimizer steps (--num_iterations 2;
    PPO's 2 to 4 passes): it must wait for the rollout's last step, or the resume would replay part of a rollout.
    The rollouts are seeded by (seed, step, rank), so the resumed run samples what the uninterrupted one sampled;
    the critic and its optimizer state come back with the actor."""
    reference_dir, argv = finished(name)
    script = RUNS[name][0]
    argv = [*argv, "--out_dir", str(tmp_path), "--save_interval", "3"]
    proc = subprocess.Popen([sys.executable, f"train_{script}.py", *argv], cwd=ROOT, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step  5/"):  # after the first save (step 3, or 4 when held to a rollout's end)
            proc.kill()
            break
    proc.wait(timeout=60)
    assert lines[-1].startswith("step  5/"), "".join(lines[-30:])
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]

    capsys.readouterr()
    run_script(SCRIPTS[script], *argv, "--resume")
    saved = int(capsys.readouterr().out.split(" at step ")[1].split()[0])
    assert 3 <= saved < 8
    reference, resumed = log_rows(reference_dir, PRODUCT[script]), log_rows(tmp_path, PRODUCT[script])
    if name == "grpo_2_iterations":
        assert saved % 2 == 0  # never between a rollout's two steps
    if script == "ppo":
        assert float(reference[saved + 1]["epochs"]) == 1, "saved in the middle of a rollout's passes"
    assert read_meta(str(tmp_path / f"{PRODUCT[script]}.pth"))["step"] == \
        read_meta(str(reference_dir / f"{PRODUCT[script]}.pth"))["step"]
    assert sorted(resumed) == sorted(reference)
    for step, row in reference.items():
        for key, value in row.items():
            if key not in TIMING and value not in ("", "nan"):
                assert float(resumed[step][key]) == pytest.approx(float(value), abs=1e-6), (step, key)
    products = [f"{PRODUCT[script]}.pth"] + (["ppo_critic_64.pth"] if script == "ppo" else [])
    for product in products:  # the final weights too, the critic's included
        a = torch.load(reference_dir / product, weights_only=True)
        b = torch.load(tmp_path / product, weights_only=True)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (product, key)


def test_ppo_stops_at_max_steps_even_in_the_middle_of_a_rollout(tmp_path, inputs):
    run_script(train_ppo, *RUN, *inputs, "--ppo_epochs", "2", "--target_kl", "0", "--max_steps", "1",
               "--out_dir", str(tmp_path))
    assert sorted(log_rows(tmp_path, "ppo_actor_64")) == [1]
    assert read_meta(str(tmp_path / "ppo_actor_64.pth"))["step"] == 1


# ----------------------------------------------------------------------------------------------------------
# 4. Bad input: one line, a non-zero exit, nothing written.


def refusal(capsys, script, *argv) -> str:
    """The one line a run in process stops with (what the interpreter would print last on stderr), checking
    that it stopped with SystemExit, not another exception (which would print a traceback)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        run_script(SCRIPTS[script], *argv)
    code = stopped.value.code
    assert code not in (0, None)
    if isinstance(code, str):  # sys.exit("message"): printed alone on stderr, exit status 1
        message = code
    else:  # argparse's parser.error: usage, then "<prog>: error: message", exit status 2
        message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "\n" not in message and "Traceback" not in message
    return message


def causal_lm_folder(path):
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=len(tokenizer()), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=48)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer().save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("case", ["no_answer", "causal_reward_model", "missing_reward_model", "one_generation",
                                  "zero_temperature", "ppo_zero_temperature"])
def test_bad_input_stops_with_one_line_and_writes_no_checkpoint(tmp_path, capsys, inputs, case):
    script, argv, expected = "grpo", [], ""
    if case == "no_answer":  # the accuracy reward is on and line 3 has no target
        data = write_prompts(tmp_path / "prompts.jsonl", n=8, without_answer={2})
        argv, expected = ["--data_path", data, "--accuracy_weight", "1"], f"{data}:3: no 'answer'"
    elif case == "causal_reward_model":
        folder = causal_lm_folder(tmp_path / "causal_lm")
        argv, expected = ["--reward_model_path", folder], f"--reward_model_path: reward model {folder}: needs a"
    elif case == "missing_reward_model":
        folder = str(tmp_path / "missing")
        argv, expected = ["--reward_model_path", folder], f"reward model {folder}: no such folder"
    elif case == "one_generation":
        argv, expected = ["--num_generations", "1"], "--num_generations 1: a group needs at least 2"
    elif case == "zero_temperature":
        argv, expected = ["--temperature", "0"], "--temperature 0.0: RL learns from sampled replies"
    else:
        script, argv, expected = "ppo", ["--temperature", "0"], "--temperature 0.0: RL learns from sampled replies"
    out = tmp_path / "out"
    message = refusal(capsys, script, *RUN, *inputs, "--max_steps", "2", *argv, "--out_dir", str(out))
    assert expected in message, message
    written = sorted(os.listdir(out)) if out.exists() else []
    assert not [f for f in written if f.endswith(".pth")]
    assert not out.exists(), written


@pytest.mark.slow  # an interpreter's start (~10 s) to see what `refusal` reads in process
def test_the_command_line_prints_one_line_and_exits_non_zero(tmp_path, inputs):
    """The same refusal as a user sees it: the last line of stderr, no traceback, exit status 1, no out_dir."""
    data = write_prompts(tmp_path / "prompts.jsonl", n=8, without_answer={5})
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "train_grpo.py", *RUN, *inputs, "--data_path", data,
                             "--accuracy_weight", "1", "--out_dir", str(out)],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and f"{data}:6: no 'answer'" in last and "--accuracy_weight 0" in last
    assert not out.exists()


# ----------------------------------------------------------------------------------------------------------
# 5. The products load like any other stage's.


def chat_args(out_dir, mode):
    return add_model_args(argparse.ArgumentParser()).parse_args(
        ["--model_mode", str(mode), "--out_dir", str(out_dir), "--hidden_size", "64", "--device", "cpu",
         "--dtype", "float32"])


@pytest.mark.parametrize("name, mode", [("cispo", 4), ("ppo_short", 5)])
def test_products_load_like_any_checkpoint(finished, name, mode, inputs):
    out, _ = finished(name)
    stage = PRODUCT[RUNS[name][0]].removesuffix("_64")
    path = str(out / f"{stage}_64.pth")
    model, meta = load_model(path)
    assert meta["stage"] == stage and meta["step"] == RUNS[name][2]
    start, _ = load_model(inputs[1])
    assert not torch.equal(model.lm_head.weight, start.lm_head.weight)  # it trained
    chat_model, _, chat_path = load_chat_model(chat_args(out, mode), quiet=True)
    assert chat_path == path
    ids = torch.tensor([[1, 200, 300, 400]])
    with torch.no_grad():
        torch.testing.assert_close(chat_model(ids).logits, model.eval()(ids).logits, atol=0, rtol=0)
    if stage == "ppo_actor":
        critic = torch.load(out / "ppo_critic_64.pth", weights_only=True)
        assert {"value_head.weight", "value_head.bias"} <= critic.keys()
        assert any(k.startswith("critic_trunk.") for k in critic) and not any(k.startswith("actor.") for k in critic)
        assert critic["value_head.weight"].abs().sum() > 0  # the head starts at zero: it trained
