"""Building blocks every train_*.py composes: flags, run setup, LR schedule, resumable data order,
the optimizer step (mixed precision, accumulation, clipping, DDP / DeepSpeed, NaN guard), checkpoints
with exact resume, and evaluation. The training loop itself, with its loss, stays in each script."""
import argparse
import math
import os
import random
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .checkpoint import (atomic_torch_save, checkpoint_path, clean_state_dict, load_model, save_weights,
                         unwrap)
from .dataset import PackedDataset
from .logger import Logger, flops_per_token
from .model_minimind import MiniMindConfig, MiniMindForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_DIR = os.path.join(ROOT, "dataset", "demo")
IGNORE = -100


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
    g.add_argument("--max_seq_len", type=int, default=512)
    g.add_argument("--data_path", default=None)
    g.add_argument("--val_path", default=None, help="held-out data for validation loss and bits per byte")
    g.add_argument("--tokenizer_path", default=os.path.join(ROOT, "model", "tokenizer"))
    g.add_argument("--from_weight", default="none",
                   help="stage name (e.g. pretrain -> out/pretrain_<hidden>.pth), a .pth path, or none")
    g.add_argument("--save_weight", default=None, help="stage name of the output checkpoint")
    g.add_argument("--num_workers", type=int, default=0)
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--use_wandb", action="store_true")
    g.add_argument("--wandb_project", default="MiniMind")
    g.add_argument("--resume", action="store_true", help="continue exactly from the last saved state")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (30-70 s, then faster)")
    g.add_argument("--deepspeed", default=None, help="DeepSpeed config JSON (ZeRO-1/2), e.g. ds_config.json")
    g.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    parser.set_defaults(**defaults)
    return parser


# ----------------------------------------------------------------------------------------------------------
# Run setup: device, dtype, distributed, seeds.


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


def setup_run(args) -> Run:
    """Start the run: torchrun's environment means DDP (NCCL on CUDA, gloo on CPU)."""
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


# ----------------------------------------------------------------------------------------------------------
# LR schedule: a pure function of the step.


def cosine_lr(step: int, total_steps: int, max_lr: float, warmup: int = 0, min_ratio: float = 0.1) -> float:
    """Linear warmup to max_lr, then a cosine from max_lr down to max_lr * min_ratio at total_steps."""
    if step < warmup:
        return max_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return max_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


# ----------------------------------------------------------------------------------------------------------
# Data order: deterministic per (seed, epoch), split across ranks, resumable at any batch.


def batch_order(n_samples: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
                shuffle: bool = True) -> list[list[int]]:
    """This rank's batches of one epoch. Every rank draws the same permutation and takes every world-th
    sample, so step s of N ranks with batch B sees exactly the samples one process sees with batch N*B.
    The last incomplete global batch is dropped so all ranks take the same number of steps."""
    order = np.random.default_rng([seed, epoch]).permutation(n_samples) if shuffle else np.arange(n_samples)
    global_batch = batch_size * world
    n_batches = n_samples // global_batch
    order = order[:n_batches * global_batch].reshape(n_batches, global_batch)
    return [row[rank::world].tolist() for row in order]


def trim_padding(samples: list[dict]) -> dict:
    """Stack samples into a batch, then cut the right-end columns where no row learns anything.

    Chat samples are padded to max_seq_len but are often much shorter. Columns after the last learned label
    of every row change no loss (causal attention never looks right), so computing them is waste. All
    sequence tensors are cut to one width, so chosen and rejected (DPO) still concatenate.
    """
    batch = torch.utils.data.default_collate(samples)
    labels = [v for k, v in batch.items() if k.endswith("labels")]
    if not labels:
        return batch
    learned = torch.stack([(lab != IGNORE).any(dim=0) for lab in labels]).any(dim=0)  # per column
    width = int(learned.nonzero().max()) + 1 if learned.any() else 1
    seq_len = labels[0].shape[1]
    return {k: v[:, :width] if torch.is_tensor(v) and v.dim() == 2 and v.shape[1] == seq_len else v
            for k, v in batch.items()}


def make_loader(dataset, batch_size: int, seed: int, epoch: int, skip: int, run: Run, num_workers: int = 0,
                shuffle: bool = True):
    """A DataLoader over this rank's batches of `epoch`, starting after the first `skip` of them."""
    batches = batch_order(len(dataset), batch_size, seed, epoch, run.rank, run.world_size, shuffle)[skip:]
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                                       collate_fn=trim_padding, pin_memory=run.device.type == "cuda")


def train_batches(dataset, args, run: Run, progress):
    """Micro-batches from where `progress` says (epoch, batch) to the end of the last epoch, keeping
    `progress.epoch` / `progress.batch_in_epoch` current, so a save at any optimizer step can resume exactly.
    Each epoch's batch count is a multiple of accumulation_steps: no step straddles two epochs."""
    while progress.epoch < args.epochs:
        usable = steps_per_epoch(dataset, args, run) * args.accumulation_steps
        loader = make_loader(dataset, args.batch_size, args.seed, progress.epoch, progress.batch_in_epoch, run,
                             args.num_workers)
        for batch in loader:
            if progress.batch_in_epoch >= usable:
                break
            progress.batch_in_epoch += 1
            yield batch
        progress.epoch, progress.batch_in_epoch = progress.epoch + 1, 0


def steps_per_epoch(dataset, args, run: Run) -> int:
    """Optimizer steps in one epoch."""
    return len(dataset) // (args.batch_size * run.world_size) // args.accumulation_steps


def demo_data(path: str | None, name: str) -> str:
    """The given path, or the bundled demo file `name`, generated on first use (a fresh clone has none)."""
    if path:
        if not os.path.exists(path):
            sys.exit(f"--data_path {path}: no such file")
        return path
    demo = os.path.join(DEMO_DIR, name)
    if not os.path.exists(demo):
        from scripts.make_demo_data import generate
        print(f"data: {demo} not found, generating the demo corpus into {DEMO_DIR}")
        generate(DEMO_DIR)
    return demo


def train_and_val(args, tokenizer, dataset_class, demo_name: str, pack_chats: bool = False, **kwargs):
    """(train, validation) datasets of one class: --data_path or the demo file `<demo_name>.jsonl`; --val_path,
    or on demo data the demo's `<demo_name>_val.jsonl` when there is one (None otherwise). `pack_chats` fills
    the training windows with several chats (PackedDataset); validation stays one chat per row."""
    train = dataset_class(demo_data(args.data_path, f"{demo_name}.jsonl"), tokenizer, args.max_seq_len, **kwargs)
    if pack_chats:
        train = PackedDataset(train, args.max_seq_len, args.seed)
    val_path = args.val_path
    if not val_path and not args.data_path and os.path.exists(os.path.join(DEMO_DIR, f"{demo_name}_val.jsonl")):
        val_path = os.path.join(DEMO_DIR, f"{demo_name}_val.jsonl")
    val = dataset_class(val_path, tokenizer, args.max_seq_len, **kwargs) if val_path else None
    return train, val


# ----------------------------------------------------------------------------------------------------------
# Model: built from size flags, or from the previous stage's checkpoint (its config, flags overriding).


def resolve_weight(args, name: str) -> str | None:
    """A stage name -> out/<stage>_<hidden>[_moe].pth; a path stays a path; 'none' -> None."""
    if name in (None, "", "none"):
        return None
    if name.endswith((".pth", ".safetensors")) or os.path.isdir(name):
        return name
    return checkpoint_path(args.out_dir, name, args.hidden_size or 512, bool(args.use_moe))


def size_overrides(args) -> dict:
    return {"hidden_size": args.hidden_size, "num_hidden_layers": args.num_hidden_layers,
            "use_moe": None if args.use_moe is None else bool(args.use_moe)}


def build_model(args, run: Run, tokenizer, from_weight: str | None = None, **config) -> MiniMindForCausalLM:
    """A MiniMind model on the run's device, in float32 (autocast handles the low precision)."""
    path = resolve_weight(args, args.from_weight if from_weight is None else from_weight)
    if path:
        if not os.path.exists(path):
            sys.exit(f"--from_weight: {path} not found (train the previous stage first, or pass "
                     f"--from_weight <path>; size flags pick the file name: --hidden_size, --use_moe)")
        model, meta = load_model(path, {**size_overrides(args), **config}, quiet=not run.is_main)
        run.print(f"model: loaded {path} ({meta.get('stage', '?')}, step {meta.get('step', '?')})")
    else:
        sizes = {k: v for k, v in size_overrides(args).items() if v is not None}
        model = MiniMindForCausalLM(MiniMindConfig(vocab_size=len(tokenizer), **sizes, **config))
    if model.config.vocab_size != len(tokenizer):
        sys.exit(f"model vocab {model.config.vocab_size} != tokenizer vocab {len(tokenizer)} "
                 f"({args.tokenizer_path}): use the tokenizer the model was trained with")
    n = sum(p.numel() for p in model.parameters())
    run.print(f"model: {n / 1e6:.2f}M parameters, hidden {model.config.hidden_size} x "
              f"{model.config.num_hidden_layers} layers{', MoE' if model.config.use_moe else ''}")
    return model.to(run.device)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path)


# ----------------------------------------------------------------------------------------------------------
# The optimizer step: mixed precision, accumulation, clipping, distributed, NaN guard.


def deepspeed_config(args, run: Run) -> dict:
    """The --deepspeed JSON (ZeRO stage, buckets) completed from the flags, which stay the source of truth."""
    import json
    with open(args.deepspeed) as f:
        config = json.load(f)
    config.update(train_micro_batch_size_per_gpu=args.batch_size, gradient_accumulation_steps=args.accumulation_steps,
                  gradient_clipping=args.grad_clip, bf16={"enabled": run.dtype == torch.bfloat16},
                  fp16={"enabled": run.dtype == torch.float16})
    return config


class NonFiniteLoss(RuntimeError):
    pass


class Stepper:
    """Owns the optimizer. `backward(loss)` per micro-batch; `step(lr)` after `accumulation_steps` of them.

    Plain PyTorch, DDP and DeepSpeed differ only here, so the scripts' loops are the same for all three.
    A non-finite loss skips its micro-batch (reported); `max_bad` in a row stop the run.
    """

    def __init__(self, model, args, run: Run, params=None, max_bad: int = 5):
        self.run, self.accum, self.grad_clip, self.max_bad = run, args.accumulation_steps, args.grad_clip, max_bad
        params = [p for p in (params or model.parameters()) if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]  # matrices decay; norms and biases do not
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        self.deepspeed = None
        if args.deepspeed:
            import deepspeed
            optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, betas=(0.9, 0.95))
            self.deepspeed, self.optimizer, _, _ = deepspeed.initialize(
                model=model, optimizer=optimizer, config=deepspeed_config(args, run))
            self.model = self.deepspeed
        else:
            fused = run.device.type == "cuda"
            self.optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, betas=(0.9, 0.95), fused=fused)
            self.model = model
            if run.ddp:
                device_ids = [run.device.index] if run.device.type == "cuda" else None
                self.model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        # fp16 needs loss scaling; bf16 and fp32 do not (the scaler is then a no-op).
        self.scaler = torch.amp.GradScaler(run.device.type, enabled=run.dtype == torch.float16 and not self.deepspeed)
        self.micro = 0  # micro-batches since the last optimizer step
        self.bad_in_row, self.skipped = 0, 0

    def backward(self, loss: torch.Tensor) -> bool:
        """Backpropagate one micro-batch's loss; False (and nothing done) when the loss is NaN/inf."""
        finite = torch.isfinite(loss.detach()).float()
        if self.run.ddp:  # all ranks skip together, or DDP's gradient all-reduce would hang
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not finite.item():
            self.bad_in_row += 1
            self.skipped += 1
            self.run.print(f"warning: non-finite loss ({loss.item()}), micro-batch skipped "
                           f"({self.bad_in_row} in a row)")
            if self.bad_in_row >= self.max_bad:
                raise NonFiniteLoss(f"{self.bad_in_row} non-finite losses in a row: the run diverged. The last "
                                    "checkpoint is intact; resume with a lower --learning_rate")
            return False
        self.bad_in_row = 0
        if self.deepspeed:
            self.deepspeed.backward(loss)  # DeepSpeed scales for accumulation itself
            if self.micro + 1 < self.accum:
                self.deepspeed.step()  # it expects a step() per micro-batch; only the last one updates
        else:
            # DDP: all-reduce gradients only on the micro-batch that completes the accumulation.
            if isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
                self.model.require_backward_grad_sync = self.micro + 1 == self.accum
            self.scaler.scale(loss / self.accum).backward()
        self.micro += 1
        return True

    @property
    def ready(self) -> bool:
        return self.micro == self.accum

    def step(self, lr: float) -> float:
        """Apply the accumulated gradients; returns the gradient norm before clipping."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.micro = 0
        if self.deepspeed:
            self.deepspeed.step()
            return float(self.deepspeed.get_global_grad_norm() or 0.0)
        self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip > 0 else float("inf"))
        if torch.isfinite(norm):
            self.scaler.step(self.optimizer)
        else:
            self.run.print("warning: non-finite gradient norm, optimizer step skipped")
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict):
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])


# ----------------------------------------------------------------------------------------------------------
# Progress, checkpoints and exact resume.


@dataclass
class Progress:
    """Where the run is; saved with every checkpoint and restored by --resume."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch consumed (at the last optimizer step)
    tokens: int = 0  # sequence positions processed, all ranks
    loss: float = float("nan")  # last logged training loss
    val_loss: float = float("nan")
    val_bpb: float = float("nan")
    evaluated_step: int = -1
    eval: dict = field(default_factory=dict)  # the last evaluation's numbers
    elapsed: float = 0.0  # training seconds before this process started (for resumed runs)
    run_id: str = field(default_factory=lambda: f"{int(time.time())}-{os.getpid()}")


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:])}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Checkpointer:
    """Writes out/<stage>_<hidden>[_moe].pth (+ .json meta) for the next stage, and a resume state
    out/<stage>_<hidden>[_moe]_resume.pth (full-precision weights, optimizer, scaler, progress, RNG)."""

    def __init__(self, args, run: Run, model, stepper: Stepper, stage: str, weights_path: str | None = None,
                 save_fn=save_weights):
        self.args, self.run, self.model, self.stepper, self.stage = args, run, model, stepper, stage
        config = unwrap(model).config
        self.weights_path = weights_path or checkpoint_path(args.out_dir, stage, config.hidden_size, config.use_moe)
        self.resume_path = self.weights_path.replace(".pth", "_resume.pth")
        self.save_fn = save_fn  # (model, path, meta): writes the stage's product (LoRA writes only its weights)

    def save(self, progress: Progress):
        """All ranks call this (DeepSpeed shards optimizer state); only rank 0 writes the plain files."""
        if self.stepper.deepspeed:
            self.stepper.deepspeed.save_checkpoint(self.resume_path + ".ds", tag="last",
                                                   client_state={"progress": asdict(progress), "rng": rng_state()})
        if self.run.is_main:
            meta = {"stage": self.stage, "step": progress.step, "tokens": progress.tokens, "loss": progress.loss,
                    "val_loss": progress.val_loss, "val_bpb": progress.val_bpb, "eval": progress.eval,
                    "args": vars(self.args)}
            self.save_fn(self.model, self.weights_path, meta)
            if not self.stepper.deepspeed:
                state = {"model": unwrap(self.model).state_dict(), **self.stepper.state_dict(),
                         "progress": asdict(progress), "rng": rng_state()}
                atomic_torch_save(state, self.resume_path)
        if self.run.ddp:
            dist.barrier()

    def restore(self) -> Progress:
        """The progress of the last save, with model, optimizer and RNG put back as they were then."""
        if self.stepper.deepspeed:
            _, client = self.stepper.deepspeed.load_checkpoint(self.resume_path + ".ds", tag="last")
            progress, rng = Progress(**client["progress"]), client["rng"]
        else:
            if not os.path.exists(self.resume_path):
                sys.exit(f"--resume: {self.resume_path} not found (nothing saved yet for this stage and size)")
            state = torch.load(self.resume_path, map_location="cpu", weights_only=True)
            unwrap(self.model).load_state_dict(clean_state_dict(state["model"]))
            self.stepper.load_state_dict(state)
            progress, rng = Progress(**state["progress"]), state["rng"]
        set_rng_state(rng)
        self.run.print(f"resume: {self.resume_path} at step {progress.step} "
                       f"(epoch {progress.epoch + 1}, batch {progress.batch_in_epoch})")
        return progress


class StopRequested:
    """Turns Ctrl-C / SIGTERM into a flag the loop checks at the next optimizer step, so the run saves a
    consistent resume state and exits cleanly instead of dying mid-write."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.handler)

    def handler(self, signum, frame):
        if self.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True
        print("\nstop requested: saving at the next step (Ctrl-C again to quit at once)", flush=True)


# ----------------------------------------------------------------------------------------------------------
# Evaluation: validation loss and bits per byte.


def token_byte_lengths(tokenizer) -> torch.Tensor:
    """UTF-8 bytes each token stands for; special tokens count 0 (they are not text).

    Byte-level BPE stores each byte as one printable character (GPT-2's byte-to-unicode table), so a
    vocabulary entry's length in characters is its length in bytes.
    """
    from tokenizers.pre_tokenizers import ByteLevel
    alphabet = set(ByteLevel.alphabet())
    lengths = torch.zeros(len(tokenizer), dtype=torch.long)
    special = set(tokenizer.all_special_ids)
    added = {t.content for t in tokenizer.added_tokens_decoder.values()}
    for token, i in tokenizer.get_vocab().items():
        if i in special:
            continue
        if token in added or not set(token) <= alphabet:
            lengths[i] = len(token.encode("utf-8"))
        else:
            lengths[i] = len(token)
    return lengths


@torch.no_grad()
def evaluate(model, dataset, args, run: Run, byte_lengths: torch.Tensor | None = None,
             max_batches: int | None = None) -> tuple[float, float]:
    """(mean loss per learned token, bits per byte) on held-out data, averaged over all ranks.

    Bits per byte divides the summed loss (in bits) by the UTF-8 bytes of the predicted tokens, so models
    with different tokenizers compare on the same scale.
    """
    was_training = model.training
    model.eval()
    loader = make_loader(dataset, args.batch_size, args.seed, 0, 0, run, shuffle=False)
    totals = torch.zeros(4, dtype=torch.float64, device=run.device)  # nats, tokens, nats of text tokens, bytes
    byte_lengths = byte_lengths.to(run.device) if byte_lengths is not None else None
    for i, batch in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        ids, labels = batch["input_ids"].to(run.device), batch["labels"].to(run.device)
        with run.autocast():
            logits = model(ids).logits
        targets = labels[:, 1:]
        nats = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE,
                               reduction="none")
        learned = targets != IGNORE
        totals[0] += nats[learned].sum()
        totals[1] += learned.sum()
        if byte_lengths is not None:  # special tokens (0 bytes) are not text: left out of bits per byte
            nbytes = byte_lengths[targets.clamp(min=0)] * learned
            totals[2] += nats[nbytes > 0].sum()
            totals[3] += nbytes.sum()
    if run.ddp:
        dist.all_reduce(totals)
    model.train(was_training)
    loss = (totals[0] / totals[1].clamp(min=1)).item()
    bpb = (totals[2] / math.log(2) / totals[3]).item() if totals[3] > 0 else float("nan")
    return loss, bpb


# ----------------------------------------------------------------------------------------------------------
# A session: the machinery around a training loop (optimizer step, LR, logging, evaluation, checkpoints).


class Session:
    """What every stage's loop needs besides its loss. A script's loop reads:

        for batch in session.batches():
            with run.autocast():
                loss = ...                       # the stage's algorithm, written in the script
            session.backward(loss)
            if session.ready:
                session.step(loss)               # LR schedule, clip, optimizer step; log / eval / save

    `evaluate` is called every --eval_interval steps and at the end; it returns named numbers
    (default: validation loss and bits per byte on `val_data`).
    """

    def __init__(self, args, run: Run, model, train_data, stage: str, tokenizer=None, val_data=None,
                 evaluate_fn=None, params=None, seq_len: int | None = None, weights_path: str | None = None,
                 save_fn=save_weights):
        self.args, self.run, self.train_data, self.stage = args, run, train_data, stage
        self.stepper = Stepper(model, args, run, params)
        self.model = self.stepper.model  # wrapped by DDP / DeepSpeed when distributed: call this one
        self.checkpoints = Checkpointer(args, run, model, self.stepper, stage, weights_path, save_fn)
        self.progress = self.checkpoints.restore() if args.resume else Progress()
        self.total_steps = args.max_steps or args.epochs * steps_per_epoch(train_data, args, run)
        if self.total_steps <= 0:
            sys.exit(f"{stage}: {len(train_data)} samples make no full step at batch {args.batch_size} x "
                     f"{args.accumulation_steps} accumulation x {run.world_size} processes")
        if evaluate_fn is None and val_data is not None:
            byte_lengths = token_byte_lengths(tokenizer)
            evaluate_fn = lambda m: dict(zip(("val_loss", "val_bpb"), evaluate(m, val_data, args, run, byte_lengths,
                                                                                 args.eval_batches)))
        self.evaluate_fn = evaluate_fn
        flops = flops_per_token(unwrap(model).config, seq_len or args.max_seq_len)
        stem = os.path.splitext(self.checkpoints.weights_path)[0]
        self.logger = Logger(run, args, stem, self.total_steps, flops, self.progress)
        self.stop = StopRequested()
        self.saved_step = self.progress.step if args.resume else None
        run.print(f"data: {len(train_data):,} samples, {self.total_steps} optimizer steps of "
                  f"{args.batch_size} x {args.accumulation_steps} x {run.world_size} sequences")
        model.train()

    def batches(self):
        """Micro-batches on the run's device, from the resume position, until the last step."""
        for batch in train_batches(self.train_data, self.args, self.run, self.progress):
            self.batch_tokens = sum(v.numel() for k, v in batch.items() if k.endswith("input_ids"))
            yield {k: v.to(self.run.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            if self.progress.step >= self.total_steps or self.stop.requested:
                return

    def backward(self, loss: torch.Tensor):
        """Backpropagate one micro-batch's loss."""
        try:
            self.stepper.backward(loss)
        except NonFiniteLoss as e:
            cleanup(self.run)
            saved = (f"{self.checkpoints.weights_path} holds step {self.saved_step}" if self.saved_step is not None
                     else "nothing was saved yet")
            sys.exit(f"{self.stage}: {e} ({saved})")
        self.progress.tokens += self.batch_tokens * self.run.world_size  # positions computed, all ranks

    @property
    def ready(self) -> bool:
        return self.stepper.ready

    def step(self, loss: torch.Tensor, **metrics):
        """Optimizer step at the scheduled LR, then log (`loss` and `metrics` of the last micro-batch),
        evaluate and save when their intervals come round, or when Ctrl-C asked to stop."""
        args, progress = self.args, self.progress
        lr = cosine_lr(progress.step, self.total_steps, args.learning_rate, args.warmup_iters, args.min_lr_ratio)
        grad_norm = self.stepper.step(lr)
        progress.step += 1
        if progress.step % args.log_interval == 0 or progress.step == self.total_steps:
            progress.loss = self.run.mean(loss.item())
            self.logger.train(progress, lr, grad_norm, {k: self.run.mean(v) for k, v in metrics.items()})
        if args.eval_interval and progress.step % args.eval_interval == 0:
            self.evaluate()
        if progress.step % args.save_interval == 0 or self.stop.requested:
            self.save()

    def evaluate(self):
        if self.evaluate_fn is None:
            return
        results = self.evaluate_fn(unwrap(self.model))
        self.progress.val_loss = results.get("val_loss", self.progress.val_loss)
        self.progress.val_bpb = results.get("val_bpb", self.progress.val_bpb)
        self.progress.evaluated_step = self.progress.step
        self.progress.eval = {k: float(v) for k, v in results.items()}
        self.logger.eval(self.progress, results)

    def save(self):
        self.progress.elapsed = self.logger.elapsed()
        self.checkpoints.save(self.progress)
        self.saved_step = self.progress.step

    def finish(self):
        """Final evaluation and checkpoint (unless Ctrl-C already saved), loss curve, shutdown."""
        if not self.stop.requested:
            if self.progress.evaluated_step != self.progress.step:
                self.evaluate()
            self.save()
            self.run.print(f"saved {self.checkpoints.weights_path}")
        self.logger.finish()
        cleanup(self.run)
