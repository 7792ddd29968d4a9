"""A training session: the machinery around a stage's loop (optimizer step, LR, logging, evaluation, checkpoints
with exact resume, Ctrl-C), so each train_*.py keeps only its data, its model and its loss."""
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from .checkpoint import (CheckpointError, atomic_torch_save, checkpoint_path, clean_state_dict, load_failure,
                         load_weights, meta_path, nonfinite_weights, read_meta, remove_stale_temp_files, save_weights,
                         unwrap)
from .dataloader import model_inputs, steps_per_epoch, train_batches
from .logger import Logger, flops_per_token
from .loss_eval import evaluate, token_byte_lengths
from .optimizer import NonFiniteLoss, Stepper, cosine_lr, whole_weights
from .runtime import Run, cleanup


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


# Flags that fix the data order: the saved data position counts batches, so a resumed run that changed one
# would skip or repeat samples. Schedule flags may change (a lower --learning_rate after a divergence, more
# --max_steps): the run says so and goes on. Stage flags count where the stage has them.
ORDER_FLAGS = ("data_path", "mix_path", "mix_ratio", "pack", "seed", "global_batch", "accumulation_steps",
               "max_seq_len", "num_iterations", "ppo_epochs")
SCHEDULE_FLAGS = ("learning_rate", "min_lr_ratio", "warmup_iters", "epochs", "max_steps")


def resume_flags(args, run: Run) -> dict:
    """The data-order and schedule flags of this run. The order depends on the global batch, not on how it is
    split: a run saved by 2 processes of batch 4 resumes on 1 process of batch 8."""
    flags = {k: getattr(args, k) for k in ORDER_FLAGS + SCHEDULE_FLAGS if hasattr(args, k)}
    for k in ("data_path", "mix_path"):  # the same file, however it is written
        if flags.get(k):
            flags[k] = os.path.abspath(flags[k])
    return {**flags, "global_batch": args.batch_size * run.world_size}


def check_resume_flags(saved: dict, now: dict, path: str, run: Run):
    """Exit with one line naming every data-order flag that differs from the saved run's; print the
    schedule flags that differ."""
    def changes(names):
        label = {"global_batch": "global batch (--batch_size x processes)"}
        return [f"{label.get(k, '--' + k)} {saved[k]} -> {now[k]}"
                for k in names if k in saved and k in now and saved[k] != now[k]]
    order, schedule = changes(ORDER_FLAGS), changes(SCHEDULE_FLAGS)
    if order:
        sys.exit(f"--resume: {path} was saved with another data order ({', '.join(order)}): its data position "
                 "would skip or repeat samples. Resume with the saved values, or start a new run from its weights "
                 "(--from_weight) without --resume")
    if schedule:
        run.print(f"resume: the schedule changes from here on ({', '.join(schedule)})")


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
        self.flags = resume_flags(args, run)  # as given, before --max_steps sets the epochs
        if run.is_main:
            removed = remove_stale_temp_files(self.weights_path, meta_path(self.weights_path), self.resume_path)
            if removed:
                run.print(f"removed {len(removed)} temp file(s) of saves interrupted earlier: {', '.join(removed)}")

    def save(self, progress: Progress):
        """All ranks call this (DeepSpeed shards optimizer state); only rank 0 writes the plain files.
        Weights that are NaN/inf or beyond float16 are never written: the last good save stays."""
        with whole_weights(self.model):  # ZeRO-3: every rank gathers the weights, for the check and rank 0's write
            bad = nonfinite_weights(self.model)
            if bad:  # every rank holds the same weights, so every rank stops here
                raise NonFiniteLoss(f"the weights hold {bad:,} values that are NaN/inf or beyond float16's range, so "
                                    f"step {progress.step} was not saved: the run diverged. Resume with a lower "
                                    "--learning_rate")
            if self.run.is_main:
                meta = {"stage": self.stage, "step": progress.step, "tokens": progress.tokens, "loss": progress.loss,
                        "val_loss": progress.val_loss, "val_bpb": progress.val_bpb, "eval": progress.eval,
                        "args": vars(self.args)}
                self.save_fn(self.model, self.weights_path, meta)
                if not self.stepper.deepspeed:
                    state = {"model": unwrap(self.model).state_dict(), **self.stepper.state_dict(),
                             "progress": asdict(progress), "rng": rng_state(), "flags": self.flags}
                    atomic_torch_save(state, self.resume_path)
        if self.stepper.deepspeed:  # each rank writes its own shards (ZeRO-3: of the weights too)
            self.stepper.deepspeed.save_checkpoint(self.resume_path + ".ds", tag="last", client_state={
                "progress": asdict(progress), "rng": rng_state(), "flags": self.flags})
        if self.run.ddp:
            dist.barrier()

    def restore(self) -> Progress:
        """The progress of the last save, with model, optimizer and RNG put back as they were then."""
        if self.stepper.deepspeed:
            _, state = self.stepper.deepspeed.load_checkpoint(self.resume_path + ".ds", tag="last")
        else:
            state = self.read_resume_state()
            load_weights(unwrap(self.model), clean_state_dict(state["model"]), self.resume_path)
            self.stepper.load_state_dict(state)
        check_resume_flags(state.get("flags", {}), self.flags, self.resume_path, self.run)  # older files have none
        progress = Progress(**state["progress"])
        set_rng_state(state["rng"])
        self.run.print(f"resume: {self.resume_path} at step {progress.step} "
                       f"(epoch {progress.epoch + 1}, batch {progress.batch_in_epoch})")
        return progress

    def read_resume_state(self) -> dict:
        if not os.path.exists(self.resume_path):
            if os.path.exists(self.weights_path):  # killed before the first resume file was complete
                meta = read_meta(self.weights_path) if os.path.exists(meta_path(self.weights_path)) else None
                step = f"step {meta.get('step', '?')}" if meta else "no meta"
                sys.exit(f"--resume: {self.resume_path} not found, only the stage's weights {self.weights_path} "
                         f"({step}), which hold no optimizer or data position: start again without --resume, "
                         f"or continue from those weights with --from_weight {self.weights_path}")
            sys.exit(f"--resume: {self.resume_path} not found (nothing saved yet for this stage and size)")
        try:
            return torch.load(self.resume_path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{self.resume_path}: cannot be read: {load_failure(e)}") from e


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
# The session.


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
                 evaluate_fn=None, weights_path: str | None = None, save_fn=save_weights, steps_per_batch: int = 1):
        self.args, self.run, self.train_data, self.stage = args, run, train_data, stage
        self.stepper = Stepper(model, args, run)
        self.model = self.stepper.model  # wrapped by torch.compile / DDP / DeepSpeed when asked: call this one
        self.checkpoints = Checkpointer(args, run, model, self.stepper, stage, weights_path, save_fn)
        self.progress = self.checkpoints.restore() if args.resume else Progress()
        # RL may take several optimizer steps on one rollout (at most steps_per_batch), and saves only after
        # the last of them (`step(batch_done=True)`), so a resume never replays part of a batch.
        per_epoch = steps_per_epoch(train_data, args, run) * steps_per_batch
        if args.max_steps and per_epoch and args.max_steps > args.epochs * per_epoch:  # --max_steps wins
            args.epochs = math.ceil(args.max_steps / per_epoch)
            run.print(f"--max_steps {args.max_steps}: {per_epoch} steps per epoch, so {args.epochs} epochs")
        self.total_steps = args.max_steps or args.epochs * per_epoch
        if self.total_steps <= 0:
            sys.exit(f"{stage}: {len(train_data)} samples make no full step at batch {args.batch_size} x "
                     f"{args.accumulation_steps} accumulation x {run.world_size} processes")
        if args.resume and self.progress.step >= self.total_steps:  # before the log or any file is touched
            run.print(f"resume: {stage} already finished ({self.progress.step}/{self.total_steps} steps): nothing "
                      f"to do; {self.checkpoints.weights_path} is its product")
            cleanup(run)
            sys.exit(0)
        if evaluate_fn is None and val_data is not None:
            byte_lengths = token_byte_lengths(tokenizer)
            evaluate_fn = lambda m: dict(zip(("val_loss", "val_bpb"), evaluate(m, val_data, args, run, byte_lengths,
                                                                                 args.eval_batches)))
        self.evaluate_fn = evaluate_fn
        flops = flops_per_token(unwrap(model).config, args.max_seq_len)
        stem = os.path.splitext(self.checkpoints.weights_path)[0]
        self.logger = Logger(run, args, stem, self.total_steps, flops, self.progress)
        self.stop = StopRequested()
        self.stopping = False  # the stop request as all ranks agreed on it at the last optimizer step
        self.saved_step = self.progress.step if args.resume else None
        self.save_due = False  # a save interval came round in the middle of a batch's steps
        run.print(f"data: {len(train_data):,} samples, {self.total_steps} optimizer steps of "
                  f"{args.batch_size} x {args.accumulation_steps} x {run.world_size} sequences")
        model.train()

    def batches(self):
        """Micro-batches on the run's device, from the resume position, until the last step."""
        for batch in train_batches(self.train_data, self.args, self.run, self.progress):
            self.batch_tokens = sum(v.numel() for k, v in batch.items() if k.endswith("input_ids"))
            yield {k: v.to(self.run.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            if self.progress.step >= self.total_steps or self.stopping:
                return

    def backward(self, loss: torch.Tensor, tokens: int | None = None):
        """Backpropagate one micro-batch's loss; `tokens`: the positions it computed (default: the batch's
        input ids; RL passes its prompt + completion rows)."""
        try:
            self.stepper.backward(loss)
        except NonFiniteLoss as e:
            self.diverged(e)
        self.progress.tokens += (tokens or self.batch_tokens) * self.run.world_size  # positions computed, all ranks

    @property
    def ready(self) -> bool:
        return self.stepper.ready

    def step(self, loss: torch.Tensor, batch_done: bool = True, **metrics):
        """Optimizer step at the scheduled LR, then log (`loss` and `metrics` of the last micro-batch),
        evaluate and save when their intervals come round, or when Ctrl-C asked to stop. `batch_done=False`
        (RL, between the optimizer steps it takes on one rollout) holds a due save back to the batch's end."""
        args, progress = self.args, self.progress
        lr = cosine_lr(progress.step, self.total_steps, args.learning_rate, args.warmup_iters, args.min_lr_ratio)
        try:
            grad_norm = self.stepper.step(lr)
        except NonFiniteLoss as e:
            self.diverged(e)
        progress.step += 1
        if progress.step % args.log_interval == 0 or progress.step == self.total_steps:
            progress.loss = self.run.mean(loss.item())
            self.logger.train(progress, lr, grad_norm, {k: self.run.mean(v) for k, v in metrics.items()})
        if args.eval_interval and progress.step % args.eval_interval == 0:
            self.evaluate()
        # Ctrl-C reaches each process on its own: all must stop (and save, a collective) at the same step.
        self.stopping = self.run.mean(float(self.stop.requested)) > 0 if self.run.ddp else self.stop.requested
        self.save_due = self.save_due or progress.step % args.save_interval == 0 or self.stopping
        if self.save_due and batch_done:
            self.save()

    def gathered(self):
        """The context for forward passes outside training (rollouts, evaluation): the whole model on every
        rank under ZeRO-3, so ranks may generate apart; a no-op otherwise (see `Stepper.gathered`)."""
        return self.stepper.gathered()

    def evaluate(self):
        if self.evaluate_fn is None:
            return
        with self.gathered():  # evaluation generates, or runs on rank 0 alone
            results = self.evaluate_fn(unwrap(self.model))
        self.progress.val_loss = results.get("val_loss", self.progress.val_loss)
        self.progress.val_bpb = results.get("val_bpb", self.progress.val_bpb)
        self.progress.evaluated_step = self.progress.step
        self.progress.eval = {k: float(v) for k, v in results.items()}
        self.logger.eval(self.progress, results)

    def save(self):
        self.save_due = False
        self.progress.elapsed = self.logger.elapsed()
        try:
            self.checkpoints.save(self.progress)
        except NonFiniteLoss as e:
            self.diverged(e)
        self.saved_step = self.progress.step

    def diverged(self, error: NonFiniteLoss):
        """Stop the run with one line saying what the last good checkpoint is (it was never overwritten)."""
        cleanup(self.run)
        saved = (f"{self.checkpoints.weights_path} holds step {self.saved_step}" if self.saved_step is not None
                 else "nothing was saved")
        sys.exit(f"{self.stage}: {error} ({saved})")

    def finish(self):
        """Final evaluation and checkpoint (unless Ctrl-C already saved), loss curve, shutdown."""
        if not self.stopping:
            if self.progress.evaluated_step != self.progress.step:
                self.evaluate()
            self.save()
            self.run.print(f"saved {self.checkpoints.weights_path}")
        self.logger.finish()
        cleanup(self.run)


def train_next_token(session: Session):
    """The loop of pretraining, SFT, LoRA and the VLM stages: they differ only in their labels (-100 outside the
    assistant replies for SFT, LoRA and VLM), in which parameters train (LoRA: the adapters only) and in the
    images a VLM batch adds."""
    run = session.run
    for batch in session.batches():
        with run.autocast():
            out = session.model(batch["input_ids"], labels=batch["labels"], **model_inputs(batch))
            loss = out.loss + out.aux_loss  # next-token cross-entropy (+ MoE load balancing)
            metrics = {}
            if out.mtp_loss is not None:  # --mtp_depth > 0: DeepSeek-V3's multi-token prediction, weighted
                loss = loss + session.args.mtp_weight * out.mtp_loss
                metrics["mtp_loss"] = out.mtp_loss.detach()  # read (a device sync) only on log steps
        session.backward(loss)
        if session.ready:  # every --accumulation_steps micro-batches
            session.step(out.loss, **metrics)  # `loss` logged stays the next-token CE, comparable without MTP
    session.finish()
