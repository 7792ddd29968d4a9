"""The optimizer step: LR schedule, mixed precision, gradient accumulation, clipping, DDP / DeepSpeed /
torch.compile wrapping, and the guard against non-finite losses."""
import json
import math
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist

from .checkpoint import unwrap


def cosine_lr(step: int, total_steps: int, max_lr: float, warmup: int = 0, min_ratio: float = 0.1) -> float:
    """Linear warmup to max_lr, then a cosine from max_lr down to max_lr * min_ratio at total_steps."""
    if step < warmup:
        return max_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return max_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def deepspeed_config(args, run) -> dict:
    """The --deepspeed JSON (ZeRO stage, buckets) completed from the flags, which stay the source of truth."""
    with open(args.deepspeed) as f:
        config = json.load(f)
    config.update(train_micro_batch_size_per_gpu=args.batch_size, gradient_accumulation_steps=args.accumulation_steps,
                  gradient_clipping=args.grad_clip, bf16={"enabled": run.dtype == torch.bfloat16},
                  fp16={"enabled": run.dtype == torch.float16})
    return config


def whole_weights(model):
    """A context in which every weight of `model` is whole on every process, to be read (`state_dict()`, the
    non-finite check, a save). ZeRO-3 keeps only 1/N of each weight on each of N processes; entering gathers
    them (a collective: every process must enter), leaving drops the gathered copies again. A no-op for a
    model that is not partitioned. Not for forward passes: use `Stepper.gathered()`."""
    params = list(unwrap(model).parameters())
    if not any(hasattr(p, "ds_id") for p in params):  # DeepSpeed marks the parameters it partitions
        return nullcontext()
    import deepspeed
    return deepspeed.zero.GatheredParameters(params)


class NonFiniteLoss(RuntimeError):
    """The run diverged: `max_bad` non-finite losses or gradient norms without a good step between."""


class Stepper:
    """Owns the optimizer. `backward(loss)` per micro-batch; `step(lr)` after `accumulation_steps` of them.

    Plain PyTorch, DDP and DeepSpeed differ only here, so the scripts' loops are the same for all three.
    A non-finite loss skips its micro-batch, a non-finite gradient norm its step (both reported); `max_bad`
    of them without a good optimizer step between stop the run.
    """

    def __init__(self, model, args, run, max_bad: int = 5):
        self.run, self.accum, self.grad_clip, self.max_bad = run, args.accumulation_steps, args.grad_clip, max_bad
        params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]  # matrices decay; norms and biases do not
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        self.deepspeed, self.zero3 = None, False
        if args.deepspeed:
            import deepspeed
            optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, betas=(0.9, 0.95))
            self.deepspeed, self.optimizer, _, _ = deepspeed.initialize(
                model=model, optimizer=optimizer, config=deepspeed_config(args, run))
            self.model = self.deepspeed
            # ZeRO-3 partitions the weights themselves. The model was built whole on every process before
            # this call (fine at this project's sizes; deepspeed.zero.Init is for models one device cannot
            # hold), and DeepSpeed now keeps 1/N of each weight per process.
            self.zero3 = self.deepspeed.zero_optimization_stage() == 3
            if args.compile:
                self.deepspeed.compile()  # DeepSpeed compiles the module it wraps (its hooks stay outside)
        else:
            fused = run.device.type == "cuda"
            self.optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, betas=(0.9, 0.95), fused=fused)
            # Compile first, then wrap in DDP (as nanoGPT): the compiled graph is the per-rank computation and
            # DDP's gradient all-reduce stays outside it. Weights are shared, so saving `model` is unchanged.
            self.model = torch.compile(model) if args.compile else model
            if run.ddp:
                device_ids = [run.device.index] if run.device.type == "cuda" else None
                self.model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        # fp16 needs loss scaling; bf16 and fp32 do not (the scaler is then a no-op).
        self.scaler = torch.amp.GradScaler(run.device.type, enabled=run.dtype == torch.float16 and not self.deepspeed)
        self.micro = 0  # micro-batches since the last optimizer step
        self.bad_in_row, self.skipped = 0, 0

    @contextmanager
    def gathered(self):
        """A context for forward passes outside training: generation (RL rollouts, evaluation by answering)
        and evaluation, possibly on rank 0 alone. Under ZeRO-3 each layer's forward gathers its weights with
        hooks, a collective every process must join in step, which generation (replies of different lengths,
        rank-0-only evaluation) cannot promise; here the whole model is gathered once on every process and
        the hooks are off until the context ends. Every process must enter it. A no-op below ZeRO-3."""
        if not self.zero3:
            yield
            return
        from deepspeed.runtime.zero import unwrap_model_for_generation
        # DeepSpeed's own context gathers the weights and removes the per-layer hooks, but keeps the hook at the
        # start of the model's forward, whose trace check is a collective too: it is detached here as well.
        root, handle = self.deepspeed.module, self.deepspeed.optimizer.parameter_offload.fwd_pre_hook
        with unwrap_model_for_generation(self.deepspeed):
            start_of_forward = root._forward_pre_hooks.pop(handle.id)
            try:
                yield
            finally:
                root._forward_pre_hooks[handle.id] = start_of_forward

    def backward(self, loss: torch.Tensor) -> bool:
        """Backpropagate one micro-batch's loss; False (and nothing done) when the loss is NaN/inf."""
        finite = torch.isfinite(loss.detach()).float()
        if self.run.ddp:  # all ranks skip together, or DDP's gradient all-reduce would hang
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not finite.item():
            self.skipped += 1
            self.count_bad(f"non-finite loss ({loss.item()}), micro-batch skipped")
            return False
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
        finite = bool(torch.isfinite(norm))
        if finite:
            self.scaler.step(self.optimizer)
            self.bad_in_row = 0
        # fp16's scaler skips a few steps by design while it finds its scale; only a scale below 1
        # (gradients overflowing on their own) is divergence.
        calibrating = self.scaler.is_enabled() and self.scaler.get_scale() >= 1
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if not finite and calibrating:
            self.run.print(f"warning: fp16 gradients overflowed, step skipped, loss scale now "
                           f"{self.scaler.get_scale():g}")
        elif not finite:
            self.count_bad("non-finite gradient norm, optimizer step skipped")
        return float(norm)

    def count_bad(self, what: str):
        """Report a skipped micro-batch or step; `max_bad` without a good step between raise NonFiniteLoss."""
        self.bad_in_row += 1
        self.run.print(f"warning: {what} ({self.bad_in_row} since the last good step)")
        if self.bad_in_row >= self.max_bad:
            raise NonFiniteLoss(f"{self.bad_in_row} non-finite losses or gradient norms without a good step: "
                                "the run diverged. Resume with a lower --learning_rate")

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict):
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
