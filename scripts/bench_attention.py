"""GQA (MiniMind2) vs multi-head latent attention (MLA, DeepSeek-V2/V3), side by side in one process: the KV cache
each keeps per token, training speed, and decoding speed (MLA's absorbed decode path against its plain one).

    python scripts/bench_attention.py                          # 512 x 8, batch 8 x 256, fp32
    python scripts/bench_attention.py --kv_lora_rank 64 --skip decode
    python scripts/bench_attention.py --device cuda --dtype bfloat16 --batch_size 32 --seq_len 512

Steps of the models are interleaved and the median is taken (this kind of machine drifts 15-20% between runs):
the ratios are the result, the absolute numbers are context.
"""
import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # for `python scripts/<name>.py`: the packages sit beside scripts/
from model import MiniMindConfig, MiniMindForCausalLM  # noqa: E402  (first: it quiets torchao's import noise)
from model.generation import generate  # noqa: E402
from model.model_minimind import kv_cache_dims  # noqa: E402
from scripts.bench_model import interleaved, train_step_fn  # noqa: E402


def cache_values_per_token(config) -> int:
    """Values one token leaves in the KV cache, all layers together."""
    k_heads, k_dim, v_heads, v_dim = kv_cache_dims(config)
    return config.num_hidden_layers * (k_heads * k_dim + v_heads * v_dim)


def set_absorb(model, value):
    for layer in model.model.layers:
        layer.self_attn.absorb = value


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden_size", type=int, default=512)
    parser.add_argument("--num_hidden_layers", type=int, default=8)
    parser.add_argument("--kv_lora_rank", type=int, default=None, help="default: the config's (hidden / 4)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--prompt_len", type=int, default=512, help="decode: tokens already in the cache")
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="training autocast")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: train,decode")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    skip = set(args.skip.split(","))

    print("KV cache per token, all layers (kv_cache_dims: heads, dim of the keys, then of the values):")
    for hidden, layers in dict.fromkeys(((512, 8), (768, 16), (args.hidden_size, args.num_hidden_layers))):
        gqa = MiniMindConfig(hidden_size=hidden, num_hidden_layers=layers)
        mla = MiniMindConfig(hidden_size=hidden, num_hidden_layers=layers, attention="mla",
                             kv_lora_rank=args.kv_lora_rank if hidden == args.hidden_size else None)
        g, m = cache_values_per_token(gqa), cache_values_per_token(mla)
        print(f"  {hidden} x {layers}: GQA {kv_cache_dims(gqa)} {g:,} values = {4 * g:,} B fp32 | "
              f"MLA {kv_cache_dims(mla)} {m:,} = {4 * m:,} B fp32 ({m / g:.3f}x)")

    torch.manual_seed(0)
    configs = {"gqa": MiniMindConfig(hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers),
               "mla": MiniMindConfig(hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers,
                                     attention="mla", kv_lora_rank=args.kv_lora_rank)}
    models = {name: MiniMindForCausalLM(c).to(device) for name, c in configs.items()}
    for name, model in models.items():
        print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    print(f"threads {torch.get_num_threads()}, device {device}, {args.dtype}")

    if "train" not in skip:
        ids = torch.randint(3, 6400, (args.batch_size, args.seq_len), device=device)
        steps = {name: train_step_fn(m.train(), ids, dtype, device) for name, m in models.items()}
        t = interleaved(steps, args.reps, device)
        tokens = args.batch_size * args.seq_len
        for name in steps:
            print(f"train {name}, batch {args.batch_size} x {args.seq_len}: {tokens / t[name]:8,.0f} tokens/s "
                  f"({t['gqa'] / t[name]:.2f}x GQA's)")

    if "decode" not in skip:
        prompt = torch.randint(3, 6400, (1, args.prompt_len), device=device)
        n = args.new_tokens

        def decoder(model, absorb, new_tokens):
            def run():
                if model.config.attention == "mla":
                    set_absorb(model, absorb)
                generate(model.eval(), prompt, max_new_tokens=new_tokens, do_sample=False, eos_token_id=[])
            return run
        variants = {"gqa": (models["gqa"], None), "mla absorbed": (models["mla"], True),
                    "mla plain": (models["mla"], False)}
        # Decode steps alone: a run of n new tokens minus a run of 1 (the prefill and its first token).
        runs = {(name, k): decoder(model, absorb, k) for name, (model, absorb) in variants.items() for k in (1, n)}
        t = interleaved(runs, max(2, args.reps // 2), device)
        per_token = {name: (t[name, n] - t[name, 1]) / (n - 1) for name in variants}
        for name in variants:
            print(f"decode {name:12s}, batch 1, {args.prompt_len} cached + {n} new: {1 / per_token[name]:7,.1f} "
                  f"tokens/s ({per_token['gqa'] / per_token[name]:.2f}x GQA's; prefill excluded)")


if __name__ == "__main__":
    main()
