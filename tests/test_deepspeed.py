"""DeepSpeed ZeRO-2 with 2 processes (gloo on the CPU) against plain DDP with 2 processes: the same losses,
the optimizer state really split between the processes, and a resume after kill -9 that continues exactly.
Every run goes through the command line (torchrun train_pretrain.py), as a user would start it."""
import os
import re
import socket
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT, losses, write_corpus

if os.environ.get("CI", "").lower() not in ("1", "true"):  # under CI a missing DeepSpeed fails, not skips
    pytest.importorskip("deepspeed")
import psutil  # noqa: E402  (a DeepSpeed requirement)

TINY = ["--hidden_size", "64", "--num_hidden_layers", "2", "--max_seq_len", "64", "--batch_size", "4",
        "--dtype", "float32", "--device", "cpu", "--log_interval", "1", "--max_steps", "20", "--save_interval", "4"]
# One thread per process (2 processes, 2 cores); DeepSpeed's CPU accelerator even on a machine with a GPU.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "DS_ACCELERATOR": "cpu"}


def torchrun(*args):
    """The command line of a 2-process train_pretrain.py run on a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
            "train_pretrain.py", *TINY, *args]


def train(*args):
    result = subprocess.run(torchrun(*args), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow  # ~2 minutes on 2 cores, most of it building DeepSpeed's CPU communication op on a fresh machine
def test_zero2_on_two_processes_matches_ddp_and_resumes_after_kill_9(tmp_path):
    data = write_corpus(tmp_path / "train.jsonl", n=400)
    ddp = tmp_path / "ddp"
    assert "2 process(es)" in train("--data_path", data, "--out_dir", str(ddp)).stdout
    reference = losses(ddp, "pretrain_64")
    assert len(reference) == 20 and reference[20] < reference[1]

    # ZeRO-2, killed (all processes, no clean-up) once step 5 is logged, i.e. after the step-4 save; the
    # processes run ahead of the reader, so the last save may be a later one, but not the end.
    out = tmp_path / "zero2"
    ds = ["--data_path", data, "--out_dir", str(out), "--deepspeed", os.path.join(ROOT, "ds_config.json")]
    proc = subprocess.Popen(torchrun(*ds), cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
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

    # Each process holds half of the fp32 master weights and Adam moments, as ZeRO-2 promises.
    shards = sorted((out / "pretrain_64_resume.pth.ds" / "last").glob("zero_pp_rank_*_optim_states.pt"))
    assert [s.name[:14] for s in shards] == ["zero_pp_rank_0", "zero_pp_rank_1"]
    sizes = []
    for shard in shards:
        state = torch.load(shard, map_location="cpu", weights_only=False)["optimizer_state_dict"]
        assert int(state["zero_stage"]) == 2 and set(state["partition_count"]) == {2}
        sizes.append(sum(t.numel() for t in state["single_partition_of_fp32_groups"]))
    model = torch.load(ddp / "pretrain_64.pth", weights_only=True)
    params = sum({t.data_ptr(): t.numel() for t in model.values()}.values())  # the head is the embedding, tied
    assert sizes[0] == sizes[1] and 0 <= 2 * sizes[0] - params < 64  # up to DeepSpeed's alignment padding

    resumed = train(*ds, "--resume")
    saved = int(re.search(r"resume: .* at step (\d+)", resumed.stdout)[1])
    assert saved % 4 == 0 and 4 <= saved < 20
    assert losses(out, "pretrain_64") == pytest.approx(reference, abs=1e-5)  # steps before the kill, then after the resume
    final = torch.load(out / "pretrain_64.pth", weights_only=True)
    for name, weight in model.items():
        assert torch.allclose(final[name].float(), weight.float(), atol=1e-3), name  # saved in fp16
