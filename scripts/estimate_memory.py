"""How much memory one training step needs, per process: weights, gradients, optimizer states, activations.

    python scripts/estimate_memory.py --hidden_size 512 --num_hidden_layers 8 --batch_size 16 --max_seq_len 512
    python scripts/estimate_memory.py --from out/full_sft_512.pth --dtype bfloat16 --zero_stage 2 --world_size 8
    python scripts/estimate_memory.py --hidden_size 768 --num_hidden_layers 16 --grad_checkpoint --measure

The layout is that of train_*.py: float32 master weights, autocast for the matmuls (--dtype), AdamW with two
float32 states per trained parameter, `--zero_stage` sharding states (>= 1), gradients (>= 2) and weights (3)
over `--world_size` processes, `--lora R` training only rank-R adapters. The activations are counted from
the ops of model/model_minimind.py (see `activation_bytes`), and `count_saved_bytes` checks that count
exactly against what autograd really saves (tests/test_memory.py). `--measure` also runs real training steps
of the same shape in a fresh process and prints its peak memory (CPU: peak RSS growth from just before the
model is built, Linux; CUDA: torch.cuda.max_memory_allocated) and tokens/s beside the prediction. On CPU
the RSS also holds what glibc keeps in its heap after a free (up to 2x the prediction with checkpointing);
with `MALLOC_MMAP_THRESHOLD_=262144` in the environment large blocks go back to the system at once, and the
measured peaks at 512 x 8 and 768 x 16, batch 16 x 512, fall within -4% to +12% of the prediction.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # for `python scripts/<name>.py`: the packages sit beside scripts/
from model import MiniMindConfig, MiniMindForCausalLM  # noqa: E402

LOW_PRECISION = ("bfloat16", "float16")


# ----------------------------------------------------------------------------------------------------------
# Prediction


def parameter_counts(config: MiniMindConfig, lora_rank: int = 0) -> dict:
    """Parameters of the model (built on the meta device: no memory, the real module tree): all, trained,
    and those autocast copies into the low-precision dtype (the matrices of the linear layers)."""
    with torch.device("meta"):
        model = MiniMindForCausalLM(config)
        if lora_rank:
            from model.model_lora import apply_lora
            apply_lora(model, lora_rank)
    params = list(model.parameters())  # tied weights are one parameter, counted once
    matrices = {id(m.weight): m.weight.numel() for m in model.modules()
                if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 2
                and not isinstance(m, torch.nn.Embedding)}  # an embedding lookup runs in float32
    return {"total": sum(p.numel() for p in params), "trained": sum(p.numel() for p in params if p.requires_grad),
            "matrices": sum(matrices.values())}


def activation_bytes(config: MiniMindConfig, batch_size: int, seq_len: int, dtype: str = "float32",
                     grad_checkpoint: bool = False, lora_rank: int = 0) -> dict:
    """Bytes of the tensors autograd keeps for the backward, counted op by op from model/model_minimind.py.

    A tensor counts once however many ops save it. The residual stream and the RMSNorms stay float32 under
    autocast, so each matmul that reads a norm's output keeps its own low-precision copy of it (q, k and v
    three, gate and up two); in float32 they share one tensor. Counted, per block:
      RMSNorm (x2): its input, 1/rms per token and, when its weight trains (not under LoRA), x/rms.
      attention: the inputs of q/k/v_proj; q, k (after RoPE) and v, SDPA's inputs; SDPA's output (also
        o_proj's input) and its log-sum-exp, one float32 per head and token.
      SwiGLU MLP: the inputs of gate/up_proj, gate(x), silu(gate(x)), up(x) and their product (down's input).
      MoE instead: the router's input and probabilities (float32), top-k indices and weights; per routed
        (token, expert) pair its sort position and token (int64), its weight, the expert's input(s), the four
        SwiGLU tensors, the expert's output and its weighted output (float32); the shared experts as MLPs.
      LoRA: each adapted projection also keeps A's output (rank numbers per token).
    Outside the blocks: the token ids (when the embeddings train), the final norm, lm_head's input, the
    loss's log-softmax (float32, vocab x positions) and labels. Under autocast also the low-precision copies
    of the weight matrices (cached for the forward, kept by the matmuls) and of the RoPE tables. Left out:
    dropout masks (dropout is 0 by default), the explicit-attention path (flash_attn=False), a few numbers
    per sequence.

    With activation checkpointing a block keeps only its input (float32) until the backward runs it again,
    which then holds one block's tensors at a time.

    Returns "saved" (held by autograd at the end of the forward; tests/test_memory.py checks it against
    `count_saved_bytes`), "per_block", "logits" and "peak", the most held at once. "logits" is what the loss
    adds to the saved tensors: as the backward starts, the logits (held by the loop) and two float32 vocab-sized
    gradients; as the forward ends, as much (the previous step's logits, which train_next_token still holds
    while the next forward runs, this step's, and the loss's copy of them). With checkpointing the peak is
    either then, with the weight copies the autocast cache holds through the forward, or while a block is
    recomputed (only the logits are left around the loss by then).
    """
    T, T_loss = batch_size * seq_len, batch_size * (seq_len - 1)  # tokens; positions with a label
    f = 4  # float32
    a = 2 if dtype in LOW_PRECISION else f  # matmul inputs and outputs
    H, I, V, L = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_hidden_layers
    n_heads, kv_dim = config.num_attention_heads, config.num_key_value_heads * config.head_dim
    lora = lora_rank > 0
    index = 8  # int64

    def rmsnorm(trained):
        return f * T * H + f * T + (f * T * H if trained else 0)

    def matmul_inputs(tokens, readers):  # of one float32 tensor read by `readers` matmuls
        return f * tokens * H if a == f else readers * a * tokens * H

    def adapters(tokens, projections):
        return a * tokens * lora_rank * projections

    def swiglu(tokens):  # gate(x), silu(gate(x)), up(x), silu * up
        return 4 * a * tokens * I + adapters(tokens, 3)

    attention = matmul_inputs(T, 3) + a * (T * H + 2 * T * kv_dim) + a * T * H + f * T * n_heads + adapters(T, 4)
    if config.use_moe:
        E, k, shared = config.n_routed_experts, config.num_experts_per_tok, config.n_shared_experts
        pairs = T * k
        router = f * T * E + pairs * (index + f) + (f * T if k > 1 and config.norm_topk_prob else 0)
        routed = pairs * (2 * index + f) + matmul_inputs(pairs, 2) + pairs * (a + f) * H + swiglu(pairs)
        mlp = matmul_inputs(T, 1 + 2 * shared) + router + routed + shared * swiglu(T)
    else:
        mlp = matmul_inputs(T, 2) + swiglu(T)
    per_block = 2 * rmsnorm(not lora) + attention + mlp
    blocks = L * per_block - (rmsnorm(False) if lora else 0)  # LoRA: the first norm's input needs no gradient

    head = (0 if lora else index * T) + rmsnorm(not lora) + (0 if lora else a * T * H) + (f + index) * T_loss * V
    head -= index * T_loss * (V - 1)  # the labels are one int64 per position, not per vocab entry
    copies = a * parameter_counts(config, lora_rank)["matrices"] if a < f else 0
    head_copy = a * V * H if a < f else 0
    rope = 2 * a * seq_len * config.head_dim if a < f else 0  # float32: views of the model's own tables
    block_copies = copies - head_copy
    logits = a * T * V + 2 * f * T_loss * V
    if grad_checkpoint:
        inputs = L * f * T * H  # each block's input, the float32 residual stream
        saved = inputs + rope + head + head_copy
        peak = max(saved + block_copies + logits, inputs + rope + per_block + block_copies / L + a * T * V)
    else:
        saved = blocks + rope + head + copies
        peak = saved + logits
    return {"saved": saved, "per_block": per_block, "logits": logits, "peak": peak}


def estimate(config: MiniMindConfig, batch_size: int, seq_len: int, dtype: str = "float32", zero_stage: int = 0,
             world_size: int = 1, grad_checkpoint: bool = False, lora_rank: int = 0) -> dict:
    """Predicted bytes per process. Weights float32 (ZeRO-3: 1/N each), gradients float32 for trained
    parameters (ZeRO-2/3: 1/N; plain DDP: plus its all-reduce buckets, a second copy), AdamW's two float32
    states (ZeRO >= 1: 1/N), activations at their peak (`activation_bytes`). The total adds them all, a
    slight overestimate: the gradients fill in as the backward frees the activations. DeepSpeed's own
    bf16/fp16 mode keeps 2-byte weights and gradients and a float32 master copy with the optimizer: the same
    16 bytes per parameter, sharded a little differently."""
    counts = parameter_counts(config, lora_rank)
    n = world_size
    weights = 4 * counts["total"] / (n if zero_stage >= 3 else 1)
    gradients = 4 * counts["trained"] / (n if zero_stage >= 2 else 1)
    if zero_stage == 0 and world_size > 1:
        gradients *= 2
    optimizer = 8 * counts["trained"] / (n if zero_stage >= 1 else 1)
    act = activation_bytes(config, batch_size, seq_len, dtype, grad_checkpoint, lora_rank)
    rows = {"weights": weights, "gradients": gradients, "optimizer states": optimizer, "activations": act["peak"]}
    return {"parameters": counts["total"], "trained parameters": counts["trained"], "bytes": rows,
            "total": sum(rows.values()), "activations": act}


# ----------------------------------------------------------------------------------------------------------
# Measurement


def count_saved_bytes(model, input_ids, dtype: str = "float32") -> int:
    """Bytes autograd holds for the backward at the end of one forward with labels: every tensor an op saves, by
    storage (a tensor saved by several ops, or a view of one, counts once), leaving out the model's own
    parameters and buffers. Exact and deterministic, on any device."""
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    autocast = torch.autocast(input_ids.device.type, dtype=getattr(torch, dtype), enabled=dtype in LOW_PRECISION)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        model(input_ids, labels=input_ids)
    return sum(saved.values())


def rss(field: str = "VmRSS") -> int:
    """This process's resident memory now (VmRSS) or at its highest (VmHWM), from /proc (Linux). Not
    getrusage's ru_maxrss: that survives exec, so a child started by a big process reports the parent's."""
    with open("/proc/self/status") as f:
        kib = next(line.split()[1] for line in f if line.startswith(field + ":"))
    return int(kib) * 1024


def train_steps(spec: dict) -> dict:
    """Real training steps as train_next_token runs them (the engine's Stepper: AdamW, clipping), on random
    tokens; the peak memory they add and the tokens/s of the steps after the first (which also allocates
    the optimizer states). Run it in a fresh process (`measure`): a process's peak RSS never comes down."""
    from model.optimizer import Stepper
    from model.runtime import Run, add_common_args
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    ids = torch.randint(spec["config"]["vocab_size"], (spec["batch_size"], spec["seq_len"]), device=device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) if cuda else rss()
    model = MiniMindForCausalLM(MiniMindConfig(**spec["config"])).to(device).train()
    if spec["lora_rank"]:
        from model.model_lora import apply_lora
        apply_lora(model, spec["lora_rank"])
    if spec["grad_checkpoint"]:
        model.activation_checkpointing_enable()  # as build_model does for --grad_checkpoint
    args = add_common_args(argparse.ArgumentParser()).parse_args([])
    run = Run(device=device, dtype=getattr(torch, spec["dtype"]))
    stepper = Stepper(model, args, run)
    held = None  # the last step's output: train_next_token's `out` lives on through the next forward

    def step():
        nonlocal held
        start = time.perf_counter()
        with run.autocast():
            out = model(ids, labels=ids)
            loss = out.loss + out.aux_loss
        stepper.backward(loss)
        stepper.step(args.learning_rate)
        held = out
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    times = [step() for _ in range(spec["steps"])]
    peak = (torch.cuda.max_memory_allocated(device) if cuda else rss("VmHWM")) - base
    timed = times[1:] or times
    result = {"peak": peak, "step_seconds": times, "tokens_per_s": ids.numel() * len(timed) / sum(timed)}
    if spec["compare_speed"]:  # after the peak is read: steps alternating checkpointing off and on
        paired = {False: [], True: []}
        for i in range(2 * spec["compare_speed"]):
            model.model.gradient_checkpointing = bool(i % 2)
            paired[bool(i % 2)].append(step())
        result["speed_with_checkpointing"] = statistics.median(paired[False]) / statistics.median(paired[True])
    return result


def measure(config: MiniMindConfig, batch_size: int, seq_len: int, dtype: str = "float32",
            grad_checkpoint: bool = False, lora_rank: int = 0, steps: int = 2, device: str = "cpu",
            compare_speed: int = 0) -> dict:
    """`train_steps` in a fresh Python process; returns its result."""
    spec = dict(config=config.to_diff_dict() | {"vocab_size": config.vocab_size}, batch_size=batch_size,
                seq_len=seq_len, dtype=dtype, grad_checkpoint=grad_checkpoint, lora_rank=lora_rank, steps=steps,
                device=device, compare_speed=compare_speed)
    result = subprocess.run([sys.executable, os.path.abspath(__file__), "--train_steps", json.dumps(spec)],
                            capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        raise RuntimeError(f"measurement failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------------
# Command line


def model_config(args) -> MiniMindConfig:
    """The config of `--from` (a checkpoint's JSON meta, or a .pth beside one), size flags overriding."""
    config = {}
    if args.from_meta:
        path = os.path.splitext(args.from_meta)[0] + ".json"
        with open(path, encoding="utf-8") as f:
            config = json.load(f)["config"]
    sizes = {"hidden_size": args.hidden_size, "num_hidden_layers": args.num_hidden_layers,
             "use_moe": None if args.use_moe is None else bool(args.use_moe)}
    return MiniMindConfig(**{**config, **{k: v for k, v in sizes.items() if v is not None}})


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="from_meta", default=None, help="a checkpoint (.pth or its .json meta)")
    parser.add_argument("--hidden_size", type=int, default=None, help="default: from --from, else 512")
    parser.add_argument("--num_hidden_layers", type=int, default=None, help="default: from --from, else 8")
    parser.add_argument("--use_moe", type=int, default=None, choices=[0, 1])
    parser.add_argument("--batch_size", type=int, default=16, help="sequences per micro-batch per process")
    parser.add_argument("--max_seq_len", type=int, default=512)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="the autocast dtype (weights stay float32)")
    parser.add_argument("--zero_stage", type=int, default=0, choices=[0, 1, 2, 3])
    parser.add_argument("--world_size", type=int, default=1, help="processes the ZeRO stage shards over")
    parser.add_argument("--grad_checkpoint", action="store_true")
    parser.add_argument("--lora", type=int, default=0, metavar="RANK", help="train only LoRA adapters of this rank")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    parser.add_argument("--measure", action="store_true", help="also run real steps in a subprocess (1 process)")
    parser.add_argument("--steps", type=int, default=2, help="steps of --measure (the first allocates AdamW)")
    parser.add_argument("--device", default="cpu", help="where --measure runs: cpu or cuda")
    parser.add_argument("--compare_speed", type=int, default=0, metavar="N",
                        help="with --measure, then N pairs of steps with checkpointing off and on, interleaved in "
                             "one process (machine drift cancels): tokens/s with checkpointing / without")
    parser.add_argument("--train_steps", default=None, help=argparse.SUPPRESS)  # the measuring subprocess
    args = parser.parse_args()
    if args.train_steps:
        print(json.dumps(train_steps(json.loads(args.train_steps))))
        return

    config = model_config(args)
    if config.attention != "gqa" or config.mtp_depth:  # its activations are counted op by op for GQA blocks only
        sys.exit(f"error: {args.from_meta}: the estimator counts the activations of grouped-query attention "
                 f"without MTP modules; this checkpoint has attention={config.attention}, "
                 f"mtp_depth={config.mtp_depth}: measure a real step instead (/usr/bin/time -v python train_pretrain.py "
                 f"--from_weight {args.from_meta} --max_steps 2 ...)")
    shape = (args.batch_size, args.max_seq_len, args.dtype)
    result = estimate(config, *shape, args.zero_stage, args.world_size, args.grad_checkpoint, args.lora)
    if args.measure:
        if args.zero_stage or args.world_size > 1:
            sys.exit("--measure runs one process: leave out --zero_stage and --world_size")
        result["measured"] = measure(config, *shape, args.grad_checkpoint, args.lora, args.steps, args.device,
                                     args.compare_speed)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"MiniMind {config.hidden_size} x {config.num_hidden_layers}{' MoE' if config.use_moe else ''}: "
          f"{result['parameters'] / 1e6:.2f}M parameters ({result['trained parameters'] / 1e6:.2f}M trained), "
          f"batch {args.batch_size} x {args.max_seq_len}, {args.dtype}, ZeRO-{args.zero_stage} on "
          f"{args.world_size} process(es), checkpointing {'on' if args.grad_checkpoint else 'off'}")
    for name, value in result["bytes"].items():
        print(f"  {name:<28}{human(value):>12}")
    act = result["activations"]
    print(f"    {'saved by the forward':<26}{human(act['saved']):>12}   (per block without checkpointing "
          f"{human(act['per_block'])})")
    print(f"    {'logits and loss buffers':<26}{human(act['logits']):>12}")
    print(f"  {'total (per process)':<28}{human(result['total']):>12}")
    if args.measure:
        m = result["measured"]
        where = "peak GPU memory allocated" if args.device.startswith("cuda") else "peak RSS growth"
        print(f"  {'measured: ' + where:<28}{human(m['peak']):>12}   ({m['peak'] / result['total']:.2f}x the "
              f"prediction; {m['tokens_per_s']:.0f} tokens/s, steps of "
              + ", ".join(f"{s:.1f}" for s in m["step_seconds"]) + " s)")
        if "speed_with_checkpointing" in m:
            print(f"  tokens/s with checkpointing / without, interleaved: {m['speed_with_checkpointing']:.2f}")


if __name__ == "__main__":
    main()
