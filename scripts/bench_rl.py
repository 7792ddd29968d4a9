"""RL speed and memory: rollout tokens/s and training tokens/s of one GRPO step, each beside a reference.

    python scripts/bench_rl.py                              # 512 x 8, 4 prompts x G=8, 512 new tokens, CPU
    python scripts/bench_rl.py --device cuda --prompts 16

- Rollout: `TorchRollout` (the serving engine: finished replies leave the batch) against `generate`, the
  static-batch loop that decodes every row until the longest is done, on the same prompts and weights.
  Every reply runs to the limit here (eos is never sampled), so this measures the per-step cost, not the
  engine's advantage on replies of mixed lengths.
- Training: one GRPO/CISPO optimizer step on the rollout (forward, log-probs, loss, backward, AdamW) against
  one plain SFT step (cross-entropy) on the same token rows: the cost of the RL loss over next-token training.
Peak RSS (CPU) or peak allocated memory (CUDA) is printed at the end. A and B run in turn, --reps times
(after a warm-up), and the median is taken, as in scripts/bench_model.py.
"""
import argparse
import os
import resource
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # for `python scripts/<name>.py`: the packages sit beside scripts/
from model import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from model.generation import generate, left_pad  # noqa: E402
from model.losses import token_logprobs  # noqa: E402
from model.rl import group_advantages, policy_loss  # noqa: E402
from model.rollout import TorchRollout  # noqa: E402
from scripts.bench_model import interleaved  # noqa: E402  (A and B in turn, median: this machine drifts)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden_size", type=int, default=512)
    parser.add_argument("--num_hidden_layers", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=4, help="prompts per rollout")
    parser.add_argument("--group", type=int, default=8, help="replies per prompt (G)")
    parser.add_argument("--prompt_len", type=int, default=64)
    parser.add_argument("--max_new_tokens", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    config = MiniMindConfig(hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers)
    model = MiniMindForCausalLM(config).to(device)
    prompts = torch.randint(10, config.vocab_size, (args.prompts, args.prompt_len)).tolist()
    never = -1  # no eos: every reply runs to max_new_tokens, the same work for both loops
    autocast = lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)  # noqa: E731
    rows = args.prompts * args.group
    print(f"model {args.hidden_size} x {args.num_hidden_layers}, {args.prompts} prompts x G={args.group}, "
          f"{args.prompt_len} prompt + {args.max_new_tokens} new tokens, {device} {args.dtype}, "
          f"{torch.get_num_threads()} threads")

    engine = TorchRollout(model, never, args.max_new_tokens, temperature=1.0, seed=0)
    ids, mask = left_pad([p for p in prompts for _ in range(args.group)], 0)
    last = {}

    def rollout_engine():
        last["rollout"] = engine(prompts, args.group, step=0)

    def static_generate():
        generate(model, ids.to(device), mask.to(device), eos_token_id=never, max_new_tokens=args.max_new_tokens,
                 do_sample=True)

    with autocast():
        t = interleaved({"engine": rollout_engine, "static": static_generate}, args.reps, device)
    engine_s, static_s, rollout = t["engine"], t["static"], last["rollout"]
    new_tokens = rows * args.max_new_tokens
    print(f"rollout  engine {new_tokens / engine_s:8,.0f} new tok/s | static generate {new_tokens / static_s:8,.0f} "
          f"| ratio {static_s / engine_s:.2f}x")

    inputs = rollout.batch(0, device)
    advantages = group_advantages(torch.randn(rows), args.group)[0].to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    model.train()

    def rl_step():
        with autocast():
            logp, mask = token_logprobs(model(inputs["input_ids"]).logits, inputs["labels"])
            loss = policy_loss(logp, inputs["old_logprobs"], advantages, mask, "cispo")[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sft_step():
        with autocast():
            loss = model(inputs["input_ids"], labels=inputs["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    t = interleaved({"rl": rl_step, "sft": sft_step}, args.reps, device)
    rl_s, sft_s = t["rl"], t["sft"]
    tokens = inputs["input_ids"].numel()
    print(f"training GRPO step {tokens / rl_s:8,.0f} tok/s | SFT step {tokens / sft_s:8,.0f} tok/s | "
          f"ratio {sft_s / rl_s:.2f}x ({tokens:,} tokens per step)")
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    else:
        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
