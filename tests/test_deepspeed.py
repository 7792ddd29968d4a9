"""DeepSpeed ZeRO-2 and ZeRO-3 with 2 processes (gloo on the CPU) against plain DDP with 2 processes: the same
losses, the optimizer state (ZeRO-3: the weights too) really split between the processes, a resume after kill -9
that continues exactly, and ZeRO-3's product a plain checkpoint. Every run goes through the command line
(torchrun train_*.py), as a user would start it."""
import csv
import json
import os
import re
import socket
import subprocess
import sys

import pytest
import torch

from model.checkpoint import load_model, save_weights
from model.optimizer import whole_weights
from tests.helpers import ROOT, losses, save_checkpoint, tiny_model, write_corpus

if os.environ.get("CI", "").lower() not in ("1", "true"):  # under CI a missing DeepSpeed fails, not skips
    pytest.importorskip("deepspeed")
import psutil  # noqa: E402  (a DeepSpeed requirement)

TINY = ["--hidden_size", "64", "--num_hidden_layers", "2", "--max_seq_len", "64", "--batch_size", "4",
        "--dtype", "float32", "--device", "cpu", "--log_interval", "1", "--max_steps", "20", "--save_interval", "4"]
# One thread per process (2 processes, 2 cores); DeepSpeed's CPU accelerator even on a machine with a GPU.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "DS_ACCELERATOR": "cpu"}


def torchrun(*args, script="train_pretrain.py", tiny=TINY):
    """The command line of a 2-process run on a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
            script, *tiny, *args]


def train(*args, **kwargs):
    result = subprocess.run(torchrun(*args, **kwargs), cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def killed_after_step_5(*args):
    """Start a run and kill it (all processes, no clean-up) once step 5 is logged, i.e. after the step-4 save;
    the processes run ahead of the reader, so the last save may be a later one, but not the end."""
    proc = subprocess.Popen(torchrun(*args), cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step  5/"):
            # torchrun starts each worker in a session of its own: kill them one by one, then torchrun
            for process in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
                process.kill()
            break
    proc.wait(timeout=60)
    assert lines[-1].startswith("step  5/"), "".join(lines[-30:])


def resume_and_check(ds_args, out, reference, weights):
    """Resume the killed run: the losses of the steps before the kill, then after the resume, are the DDP run's,
    and so are its final weights (the product is saved in fp16)."""
    resumed = train(*ds_args, "--resume")
    saved = int(re.search(r"resume: .* at step (\d+)", resumed.stdout)[1])
    assert saved % 4 == 0 and 4 <= saved < 20
    assert losses(out, "pretrain_64") == pytest.approx(reference, abs=1e-5)
    final = torch.load(out / "pretrain_64.pth", weights_only=True)
    for name, weight in weights.items():
        assert torch.allclose(final[name].float(), weight.float(), atol=1e-3), name


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    """(data path, {step: loss}, saved weights) of the plain DDP run every DeepSpeed run must equal."""
    folder = tmp_path_factory.mktemp("ddp")
    data = write_corpus(folder / "train.jsonl", n=400)
    assert "2 process(es)" in train("--data_path", data, "--out_dir", str(folder / "out")).stdout
    reference = losses(folder / "out", "pretrain_64")
    assert len(reference) == 20 and reference[20] < reference[1]
    return data, reference, torch.load(folder / "out" / "pretrain_64.pth", weights_only=True)


def shard_sizes(out, stage: int) -> list[int]:
    """fp32 master weights held by each process (Adam's moments are split alike), from the resume shards."""
    shards = sorted((out / "pretrain_64_resume.pth.ds" / "last").glob("zero_pp_rank_*_optim_states.pt"))
    assert [s.name[:14] for s in shards] == ["zero_pp_rank_0", "zero_pp_rank_1"]
    sizes = []
    for shard in shards:
        state = torch.load(shard, map_location="cpu", weights_only=False)["optimizer_state_dict"]
        assert int(state["zero_stage"]) == stage
        groups = state["single_partition_of_fp32_groups"] if stage < 3 else state["fp32_flat_groups"]
        sizes.append(sum(t.numel() for t in groups))
    return sizes


def parameter_count(weights: dict) -> int:
    return sum({t.data_ptr(): t.numel() for t in weights.values()}.values())  # the head is the embedding, tied


@pytest.mark.slow  # ~2 minutes on 2 cores, most of it building DeepSpeed's CPU communication op on a fresh machine
def test_zero2_on_two_processes_matches_ddp_and_resumes_after_kill_9(tmp_path, ddp):
    data, reference, weights = ddp
    out = tmp_path / "zero2"
    ds = ["--data_path", data, "--out_dir", str(out), "--deepspeed", os.path.join(ROOT, "ds_config.json")]
    killed_after_step_5(*ds)
    # Each process holds half of the fp32 master weights and Adam moments, as ZeRO-2 promises.
    sizes = shard_sizes(out, 2)
    assert sizes[0] == sizes[1] and 0 <= 2 * sizes[0] - parameter_count(weights) < 64  # DeepSpeed's padding
    resume_and_check(ds, out, reference, weights)


def zero3_config(path) -> str:
    """ds_config_zero3.json, with every weight partitioned: by default DeepSpeed keeps weights under 100k
    values whole on every process, which in this tiny model is all but the embedding."""
    with open(os.path.join(ROOT, "ds_config_zero3.json")) as f:
        config = json.load(f)
    assert config["zero_optimization"]["stage"] == 3
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    path.write_text(json.dumps(config))
    return str(path)


@pytest.mark.slow  # ~1.5 minutes on 2 cores
def test_zero3_on_two_processes_matches_ddp_saves_a_plain_checkpoint_and_resumes_after_kill_9(tmp_path, ddp):
    data, reference, weights = ddp
    out = tmp_path / "zero3"
    ds = ["--data_path", data, "--out_dir", str(out), "--deepspeed", zero3_config(tmp_path / "zero3.json")]
    killed_after_step_5(*ds)
    # The weights themselves are split: each process's resume shard holds empty placeholders for every weight
    # and half of the fp32 master weights (and of the Adam moments).
    for rank in (0, 1):
        shard = out / "pretrain_64_resume.pth.ds" / "last" / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt"
        module = torch.load(shard, map_location="cpu", weights_only=False)["module"]
        assert module.keys() == weights.keys() and all(t.numel() == 0 for t in module.values())
    sizes = shard_sizes(out, 3)
    assert sizes[0] == sizes[1] and 0 <= 2 * sizes[0] - parameter_count(weights) < 64  # one value per weight at most
    # The product saved at the kill's last save is whole: a plain model loads it (strictly) and runs.
    model, meta = load_model(str(out / "pretrain_64.pth"))
    assert meta["step"] % 4 == 0 and model(torch.tensor([[1, 2, 3]])).logits.isfinite().all()
    resume_and_check(ds, out, reference, weights)
    model, meta = load_model(str(out / "pretrain_64.pth"))
    assert meta["step"] == 20


@pytest.mark.slow  # ~1.5 minutes on 2 cores
def test_zero3_rl_rollouts_and_rank_0_evaluation_generate_as_ddp(tmp_path):
    """GRPO samples on every rank (replies of different lengths, so each rank decodes a different number of
    steps) and evaluates greedily on rank 0 alone: under ZeRO-3 inside `Session.gathered()`, with the same
    replies, rewards and losses as under DDP."""
    from tests.test_train_rl import RUN, TIMING, eos_prone_model, write_prompts
    inputs = ["--from_weight", save_checkpoint(eos_prone_model(), tmp_path), "--data_path",
              write_prompts(tmp_path / "rl.jsonl"), "--val_path", write_prompts(tmp_path / "val.jsonl", n=4),
              "--num_generations", "4", "--batch_size", "1", "--max_steps", "3", "--eval_interval", "2"]
    rows = {}
    for name, extra in (("ddp", []), ("zero3", ["--deepspeed", zero3_config(tmp_path / "zero3.json")])):
        train(*inputs, "--out_dir", str(tmp_path / name), *extra, script="train_grpo.py", tiny=RUN)
        with open(tmp_path / name / "grpo_64_log.csv") as f:
            rows[name] = list(csv.DictReader(f))
    assert [r["step"] for r in rows["zero3"]] == ["0", "1", "2", "2", "3", "3"]  # evaluations at steps 0, 2, 3
    for ddp_row, zero3_row in zip(rows["ddp"], rows["zero3"]):
        for key in ddp_row.keys() - TIMING:  # rewards, lengths, losses, gradient norms, evaluation
            if ddp_row[key] != zero3_row[key]:  # the gradient norm is summed in another order: 1e-5 apart
                expected = pytest.approx(float(ddp_row[key]), rel=1e-4, abs=1e-5, nan_ok=True)
                assert float(zero3_row[key]) == expected, key
    load_model(str(tmp_path / "zero3" / "grpo_64.pth"))


def test_a_partitioned_model_is_never_saved_empty(tmp_path):
    """ZeRO-3 leaves each process an empty placeholder for each weight outside `whole_weights`: writing those
    would make an empty checkpoint, so save_weights refuses. A model that is not partitioned passes through
    `whole_weights` untouched."""
    model = tiny_model()
    with whole_weights(model):
        save_weights(model, str(tmp_path / "plain.pth"), {})
    assert load_model(str(tmp_path / "plain.pth"))[0].config.hidden_size == 64
    weight = model.model.embed_tokens.weight
    weight.ds_numel, weight.data = weight.numel(), torch.empty(0)  # as DeepSpeed partitions it
    with pytest.raises(RuntimeError, match="partitioned by ZeRO-3"):
        save_weights(model, str(tmp_path / "empty.pth"), {})
    assert not (tmp_path / "empty.pth").exists()
