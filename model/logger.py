"""Training progress: one line per log step, a CSV and a loss-curve PNG in the output folder, optional wandb."""
import csv
import io
import math
import os
import time

import torch

from .checkpoint import atomic_write

# Dense bf16 tensor-core peaks (FLOP/s) of common GPUs; others report no MFU rather than a made-up one.
GPU_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 125e12,
                 "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12}


def flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token: 6 per active parameter (forward 2, backward 4) plus attention's
    QK^T and AV matmuls, 12 * layers * hidden * seq_len (as in the PaLM and nanochat estimates)."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * config.head_dim
    attn = 2 * h * h + 2 * h * kv
    qk_v = 2 * h  # per token and key: the widths of QK^T and AV over all heads
    if getattr(config, "attention", "gqa") == "mla":  # latent attention's projections (model_minimind.LatentAttention)
        heads, rank, q_rank = config.num_attention_heads, config.kv_lora_rank, config.q_lora_rank
        qk, v = config.qk_nope_head_dim + config.qk_rope_head_dim, config.v_head_dim
        q = q_rank * (h + heads * qk) if q_rank else h * heads * qk
        attn = q + h * (rank + config.qk_rope_head_dim) + rank * heads * (config.qk_nope_head_dim + v) + heads * v * h
        qk_v = heads * (qk + v)
    experts = config.num_experts_per_tok + config.n_shared_experts if config.use_moe else 1
    mlp = experts * 3 * h * inter + (config.n_routed_experts * h if config.use_moe else 0)
    active = layers * (attn + mlp) + config.vocab_size * h  # the (tied) output head is a real matmul
    mtp = getattr(config, "mtp_depth", 0)  # each MTP depth (training): a block, eh_proj (2h -> h), the head again
    active += mtp * (attn + mlp + 2 * h * h + config.vocab_size * h)
    return 6 * active + 6 * (layers + mtp) * qk_v * seq_len


def measure_matmul_peak(device: torch.device, dtype: torch.dtype, n: int | None = None, seconds: float = 0.1,
                        repeats: int = 3) -> float:
    """FLOP/s of square matmuls on this device and dtype: the ceiling MFU is measured against.

    The best of `repeats` timed runs per size, so a moment of contention (another process, a data worker)
    lowers one run, not the ceiling. Sizes (unless `n` is given) double from 256 while one product takes
    under 20 ms: the fastest size depends on caches, and a dtype without hardware support (bf16 on a CPU
    without AVX-512 BF16 is ~50x slower) stops at a small one instead of taking minutes."""
    synchronize = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    best = 0.0
    for size in [n] if n else [256, 512, 1024, 2048]:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        a @ b  # warm-up: thread pool, kernel choice
        synchronize()
        start = time.perf_counter()
        a @ b
        synchronize()
        one = time.perf_counter() - start
        best = max(best, *(matmul_rate(a, b, seconds) for _ in range(repeats)))
        if one > 0.02:
            break
    return best


def matmul_rate(a: torch.Tensor, b: torch.Tensor, seconds: float) -> float:
    """FLOP/s of `a @ b` repeated for at least `seconds`."""
    synchronize = torch.cuda.synchronize if a.device.type == "cuda" else lambda: None
    reps, start = 0, time.perf_counter()
    while reps == 0 or time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    synchronize()
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] * reps / (time.perf_counter() - start)


_measured_peaks: dict = {}  # (device, dtype) -> FLOP/s: measured once per process, not per stage or test


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Peak FLOP/s of one device: a table for known GPUs, measured on the CPU, None elsewhere."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((peak for key, peak in GPU_PEAK_BF16.items() if key in name), None)
    if device.type == "cpu":
        key = (str(device), dtype)
        if key not in _measured_peaks:
            _measured_peaks[key] = measure_matmul_peak(device, dtype)
        return _measured_peaks[key]
    return None


def fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Logger:
    """Prints `step 120/1000 | loss 3.2145 | lr 4.9e-04 | 6,210 tok/s | MFU 12.3% | 1m02s elapsed, ETA 8m10s`
    on rank 0 and appends the same numbers to <out>/<name>_log.csv (kept across resumes)."""

    FIELDS = ["step", "epoch", "tokens", "elapsed", "loss", "lr", "grad_norm", "tok_per_s", "mfu", "val_loss"]

    def __init__(self, run, args, stem: str, total_steps: int, flops_per_tok: float | None, progress):
        """`stem`: the checkpoint's path without .pth; the CSV and the curve go beside it."""
        self.run, self.args, self.total_steps, self.flops_per_tok = run, args, total_steps, flops_per_tok
        self.csv_path, self.png_path = f"{stem}_log.csv", f"{stem}_loss.png"
        # Tokens are counted over all processes, so the ceiling is every process's device (on a CPU,
        # torchrun gives each process its share of the cores: one process's peak times their number).
        peak = peak_flops(run.device, run.dtype) if run.is_main and flops_per_tok else None
        self.peak = peak * run.world_size if peak else None
        self.peak_raised = False  # True once the achieved rate beat the measured peak
        self.start, self.elapsed_before = time.time(), progress.elapsed
        self.last_time, self.last_tokens, self.last_step = time.time(), progress.tokens, progress.step
        self.wandb = None
        if not run.is_main:
            return
        os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
        if args.resume and os.path.exists(self.csv_path):
            self.truncate(progress.step)
        else:
            with open(self.csv_path, "w", newline="") as f:
                csv.writer(f).writerow(self.FIELDS)
        if args.use_wandb:
            import wandb
            self.wandb = wandb.init(project=args.wandb_project, name=os.path.basename(stem), id=progress.run_id,
                                    resume="allow", config=vars(args), dir=args.out_dir)

    def truncate(self, step: int):
        """Drop the rows after `step`: a resumed run logs again the steps done after its last save."""
        with open(self.csv_path, newline="") as f:
            header, *rows = list(csv.reader(f)) or [self.FIELDS]
        kept = [row for row in rows if row and int(row[0]) <= step]
        if len(kept) < len(rows):
            text = io.StringIO()
            csv.writer(text).writerows([header, *kept])
            atomic_write(self.csv_path, lambda f: f.write(text.getvalue().encode()))

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.start

    def train(self, progress, lr: float, grad_norm: float, metrics: dict | None = None):
        if not self.run.is_main:
            return
        if self.run.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.time()
        tok_per_s = (progress.tokens - self.last_tokens) / max(now - self.last_time, 1e-9)
        steps_per_s = (progress.step - self.last_step) / max(now - self.last_time, 1e-9)
        self.last_time, self.last_tokens, self.last_step = now, progress.tokens, progress.step
        mfu = self.mfu(tok_per_s)
        eta = (self.total_steps - progress.step) / steps_per_s if steps_per_s > 0 else float("inf")
        width = len(str(self.total_steps))
        line = (f"step {progress.step:{width}d}/{self.total_steps} | loss {progress.loss:.4f} | lr {lr:.2e} | "
                f"grad {grad_norm:.2f} | {tok_per_s:,.0f} tok/s")
        metrics = metrics or {}
        line += "".join(f" | {k} {v:.4g}" for k, v in metrics.items())
        if math.isfinite(mfu):
            line += f" | MFU {'~' if self.peak_raised else ''}{100 * mfu:.1f}%"
        print(f"{line} | {fmt_time(self.elapsed())} elapsed, ETA {fmt_time(eta)}", flush=True)
        self.write(progress, {"loss": progress.loss, "lr": lr, "grad_norm": grad_norm, "tok_per_s": tok_per_s,
                              "mfu": mfu, **metrics})

    def mfu(self, tok_per_s: float) -> float:
        """Achieved over peak FLOP/s, never above 1: a measured CPU peak is itself an estimate (turbo,
        contention), so when training beats it the peak rises to the achieved rate, said once, and
        later values carry a "~"."""
        if not self.peak:
            return float("nan")
        achieved = tok_per_s * self.flops_per_tok
        if achieved > self.peak:
            if not self.peak_raised:
                print(f"MFU: achieved {achieved / 1e9:,.1f} GFLOP/s beats the measured peak {self.peak / 1e9:,.1f}: "
                      "MFU is now relative to the best achieved rate (an estimate)", flush=True)
            self.peak, self.peak_raised = achieved, True
        return achieved / self.peak

    def eval(self, progress, results: dict):
        if not self.run.is_main:
            return
        print(f"eval step {progress.step} | " + " | ".join(f"{k} {v:.4f}" for k, v in results.items()), flush=True)
        self.write(progress, results)

    def write(self, progress, values: dict):
        """Append a row to the CSV; a metric not seen before adds a column (the file is rewritten once)."""
        row = {"step": progress.step, "epoch": progress.epoch, "tokens": progress.tokens,
               "elapsed": round(self.elapsed(), 2), **values}
        with open(self.csv_path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            new = [k for k in row if k not in header]
            rows = list(reader) if new else None
        if new:
            header += new
            with open(self.csv_path, "w", newline="") as f:
                csv.writer(f).writerows([header, *rows])
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, header).writerow({k: row.get(k, "") for k in header})
        if self.wandb:
            self.wandb.log({k: v for k, v in row.items() if k != "step"}, step=progress.step)

    def finish(self):
        """Draw the loss curve (training and validation) from the CSV."""
        if not self.run.is_main:
            return
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        with open(self.csv_path) as f:
            rows = list(csv.DictReader(f))
        train = [(int(r["step"]), float(r["loss"])) for r in rows if r.get("loss") not in (None, "", "nan")]
        val = [(int(r["step"]), float(r["val_loss"])) for r in rows if r.get("val_loss") not in (None, "", "nan")]
        fig, ax = plt.subplots(figsize=(7, 4))
        for points, label in ((train, "train"), (val, "validation")):
            if points:
                ax.plot(*zip(*points), marker="." if len(points) < 50 else None, label=label)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(os.path.basename(self.csv_path).removesuffix("_log.csv"))
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(self.png_path, dpi=100)
        plt.close(fig)
        if self.wandb:
            self.wandb.finish()
