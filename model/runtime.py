"""Run setup shared by every train_*.py: the common flags, and the device, dtype and process group a run
uses (CUDA > MPS > CPU; torchrun's environment means DDP: NCCL on CUDA, gloo on CPU; DeepSpeed)."""
import argparse
import math
import os
import random
import sys
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TOKENIZER = os.path.join(ROOT, "model", "tokenizer")


# ----------------------------------------------------------------------------------------------------------
# Flags: the same names in every script. Stage scripts pass their own defaults and add their own flags.


def add_common_args(parser: argparse.ArgumentParser, **defaults) -> argparse.ArgumentParser:
    g = parser.add_argument_group("common")
    g.add_argument("--out_dir", default="out", help="where checkpoints, logs and curves go")
    g.add_argument("--epochs", type=int, default=1)
    g.add_argument("--max_steps", type=int, default=0, help="stop after this many optimizer steps (0 = epochs)")
    g.add_argument("--batch_size", type=int, default=32, help="sequences per micro-batch per process")
    g.add_argument("--learning_rate", type=float, default=5e-4)
    g.add_argument("--min_lr_ratio", type=float, default=0.1, help="cosine decays to learning_rate * this")
    g.add_argument("--weight_decay", type=float, default=0.01)
    g.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="autocast dtype; auto = bf16 where the hardware runs it fast, else fp16 (CUDA) / fp32")
    g.add_argument("--accumulation_steps", type=int, default=1)
    g.add_argument("--grad_clip", type=float, default=1.0)
    g.add_argument("--warmup_iters", type=int, default=0, help="linear warmup, in optimizer steps")
    g.add_argument("--log_interval", type=int, default=100, help="optimizer steps between log lines")
    g.add_argument("--save_interval", type=int, default=1000, help="optimizer steps between checkpoints")
    g.add_argument("--eval_interval", type=int, default=0, help="optimizer steps between evaluations (0 = end)")
    g.add_argument("--eval_batches", type=int, default=50, help="validation batches per evaluation")
    g.add_argument("--hidden_size", type=int, default=None, help="default: from --from_weight, else 512")
    g.add_argument("--num_hidden_layers", type=int, default=None, help="default: from --from_weight, else 8")
    g.add_argument("--use_moe", type=int, default=None, choices=[0, 1], help="default: from --from_weight, else 0")
    g.add_argument("--attention", default=None, choices=["gqa", "mla"],
                   help="gqa (grouped-query, MiniMind2) or mla (DeepSeek's multi-head latent attention: a smaller "
                        "KV cache); default: from --from_weight, else gqa")
    g.add_argument("--kv_lora_rank", type=int, default=None,
                   help="--attention mla: width of the cached KV latent (default: from --from_weight, else hidden/4)")
    g.add_argument("--mtp_depth", type=int, default=None,
                   help="DeepSeek-V3 multi-token prediction: D extra modules predicting 2..D+1 tokens ahead, a "
                        "training signal (pretraining, SFT) dropped by Llama/GGUF exports (default: from "
                        "--from_weight, else 0; a checkpoint without them gets new ones from init, 0 drops them)")
    g.add_argument("--mtp_weight", type=float, default=0.3,
                   help="lambda in loss = next-token CE + lambda * mean MTP CE (0.3: DeepSeek-V3's first 10T "
                        "tokens, then 0.1)")
    g.add_argument("--max_seq_len", type=int, default=512)
    g.add_argument("--data_path", default=None)
    g.add_argument("--val_path", default=None, help="held-out data for validation loss and bits per byte")
    g.add_argument("--skip_bad", action="store_true",
                   help="leave out (and count) bad data lines instead of stopping before the first step")
    g.add_argument("--tokenizer_path", default=DEFAULT_TOKENIZER)
    g.add_argument("--from_weight", default="none",
                   help="stage name (e.g. pretrain -> out/pretrain_<hidden>.pth), a .pth path, or none")
    g.add_argument("--save_weight", default=None, help="stage name of the output checkpoint")
    g.add_argument("--num_workers", type=int, default=0)
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--use_wandb", action="store_true")
    g.add_argument("--wandb_project", default="MiniMind")
    g.add_argument("--resume", action="store_true", help="continue exactly from the last saved state")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (30-70 s, then faster)")
    g.add_argument("--grad_checkpoint", action="store_true",
                   help="recompute each block's activations in the backward: far less memory, ~1/3 more compute")
    g.add_argument("--deepspeed", default=None,
                   help="DeepSpeed config JSON: ds_config.json (ZeRO-2, or 1) or ds_config_zero3.json")
    g.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    parser.set_defaults(**defaults)
    return parser


def add_vlm_args(parser: argparse.ArgumentParser, train_llm: str) -> argparse.ArgumentParser:
    """The vision-language stages' flags (train_pretrain_vlm.py, train_sft_vlm.py)."""
    g = parser.add_argument_group("vision")
    g.add_argument("--vision_model", default=None,
                   help="local Hugging Face CLIP or SigLIP folder (e.g. a clone of openai/clip-vit-base-patch16); "
                        "default: the one a VLM --from_weight was trained with")
    g.add_argument("--images_path", default=None,
                   help="folder of the jsonl's image files (default: images/ beside the jsonl, else its folder)")
    g.add_argument("--projector", default="mlp", choices=["linear", "mlp"],
                   help="patch features -> LLM width: one linear layer (minimind-v) or two with a GELU (LLaVA-1.5); "
                        "a new VLM only")
    g.add_argument("--image_pool", type=int, default=1,
                   help="average-pool the patch grid by this factor first (2: 14x14 -> 7x7, 196 -> 49 tokens per "
                        "image); a new VLM only")
    g.add_argument("--center_features", action="store_true",
                   help="subtract each image's mean patch feature before the projection: for a small encoder "
                        "trained from scratch (the demo); a new VLM only")
    g.add_argument("--train_vision", action="store_true",
                   help="train the vision encoder too (default frozen); its weights then travel in the checkpoint")
    g.add_argument("--train_llm", default=train_llm,
                   help="which LLM weights train: none (the projection only), all, or N (the last N blocks and the "
                        "final norm)")
    return parser


# ----------------------------------------------------------------------------------------------------------
# Device, dtype, distributed, seeds.


@dataclass
class Run:
    device: torch.device
    dtype: torch.dtype  # the autocast dtype; float32 means no autocast
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def ddp(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def print(self, *args, **kwargs):
        if self.is_main:
            print(*args, **kwargs, flush=True)

    def autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def mean(self, value: float) -> float:
        """A number averaged over all processes (the loss a single process would have printed)."""
        if not self.ddp:
            return float(value)
        t = torch.tensor([float(value)], device=self.device)
        dist.all_reduce(t)
        return t.item() / self.world_size


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        print("device: no CUDA or MPS available, using the CPU")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device {name}: CUDA is not available on this machine (try --device auto or cpu)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        sys.exit(f"--device {name}: MPS is not available on this machine (try --device auto or cpu)")
    return device


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and torch.cpu._is_avx512_bf16_supported():
        return torch.bfloat16  # ~1.7-2x faster than fp32 on CPUs with native bf16 (see scripts/bench_model.py)
    return torch.float32


def check_common_args(args):
    """One line naming the flag, and exit, for a value no run can use: checked before anything is loaded or
    written (a bad --max_seq_len used to crash mid-setup, after the previous run's log was overwritten)."""
    def bad(flag, why):
        sys.exit(f"error: --{flag} {getattr(args, flag)}: {why}")

    at_least = {"max_seq_len": 2, "batch_size": 1, "epochs": 1, "accumulation_steps": 1, "log_interval": 1,
                "save_interval": 1, "max_steps": 0, "warmup_iters": 0, "eval_interval": 0, "eval_batches": 1,
                "num_workers": 0}
    for flag, low in at_least.items():
        if getattr(args, flag, low) < low:
            bad(flag, f"must be at least {low}")
    for flag in ("learning_rate", "weight_decay", "grad_clip", "min_lr_ratio"):
        value = getattr(args, flag, 0.0)
        if not math.isfinite(value) or value < 0:
            bad(flag, "must be a finite number >= 0")
    if args.learning_rate == 0:
        bad("learning_rate", "must be above 0")
    path = getattr(args, "tokenizer_path", None)
    if path and not os.path.isdir(path):
        bad("tokenizer_path", "no such folder (a tokenizer folder with tokenizer.json)")
    try:
        torch.device(args.device) if args.device != "auto" else None
    except RuntimeError:
        bad("device", "expected auto, cpu, cuda, cuda:N or mps")


def one_line_errors():
    """Errors the project raises on purpose (a checkpoint that does not fit or cannot be read, a bad data line)
    end the script with their message alone and exit status 1: tracebacks are for bugs."""
    from .checkpoint import CheckpointError
    from .dataset import DataError

    def hook(kind, error, traceback):
        if issubclass(kind, (CheckpointError, DataError)):
            print(f"error: {error}", file=sys.stderr, flush=True)
        else:
            sys.__excepthook__(kind, error, traceback)
    sys.excepthook = hook


def setup_run(args) -> Run:
    """Start the run: torchrun's environment means DDP (NCCL on CUDA, gloo on CPU)."""
    check_common_args(args)
    one_line_errors()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(args.device)
    if device.type == "cuda":
        if world_size > 1:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    backend = "nccl" if device.type == "cuda" else "gloo"
    if args.deepspeed and not dist.is_initialized():  # DeepSpeed wants a process group even for one process
        if device.type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # not its CUDA backend on a GPU machine run on the CPU
        import deepspeed
        for key, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500"), ("RANK", "0"),
                           ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
            os.environ.setdefault(key, value)
        deepspeed.init_distributed(dist_backend=backend)
    elif world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend)
    run = Run(device, pick_dtype(args.dtype, device), rank, local_rank, world_size)
    seed_everything(args.seed + rank)  # dropout differs per rank; the data order does not (see batch_order)
    run.print(f"run: {device.type}, {str(run.dtype).removeprefix('torch.')}, {world_size} process(es)")
    return run


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cleanup(run: Run):
    if run.ddp and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
