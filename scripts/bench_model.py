"""MiniMind vs Hugging Face Llama, side by side in one process: training and decoding speed.

    python scripts/bench_model.py                    # 512 x 8, vocab 6400, CPU threads as set by torch
    python scripts/bench_model.py --skip train       # decoding only: eager, compiled, HF, llama.cpp (if installed)
    python scripts/bench_model.py --device cuda --batch_size 32 --seq_len 512
    python scripts/bench_model.py --compile 1        # also both models under torch.compile (train_*.py --compile)
    python scripts/bench_model.py --quantize int8 --skip train,decode   # MiniMind decoding: fp32, bf16, int8, f16 weights
    python scripts/bench_model.py --quantize nf4 --skip train,decode    # LoRA vs QLoRA training steps
    python scripts/bench_model.py --skip train,decode --spec_model out/demo/full_sft_256.pth \
        --draft_weight out/demo/full_dist_128.pth --spec_k 4     # speculative decoding vs plain, batch 1

Both models hold the same weights (MiniMind's state dict loads into LlamaForCausalLM unchanged). Steps of A
and B are interleaved and the median is taken, because this kind of machine drifts 15-20% between runs;
the ratios are the result, the absolute numbers are for context. Also prints the measured matmul peak, the
ceiling that MFU figures in the training log are taken against.
"""
import argparse
import copy
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # for `python scripts/<name>.py`: the packages sit beside scripts/
from model import MiniMindConfig, MiniMindForCausalLM  # noqa: E402  (first: it quiets torchao's import noise)
from model.export import llama_config_from  # noqa: E402
from model.chat import add_speculative_args  # noqa: E402
from model.generation import SpecStats, generate, stream_generate  # noqa: E402
from model.logger import flops_per_token, measure_matmul_peak  # noqa: E402
from model.model_lora import DEFAULT_TARGETS, apply_lora  # noqa: E402
from model.quant import half_weights, quantize_int8, quantize_nf4_, weight_bytes  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict, reps: int, device) -> dict:
    """Median seconds per call of each function, calling them in turn `reps` times (after one warm-up)."""
    times = {name: [] for name in fns}
    for rep in range(reps + 1):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            if rep:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def train_step_fn(model, ids, dtype, device, compiled=False):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    forward = torch.compile(model) if compiled else model

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = forward(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden_size", type=int, default=512)
    parser.add_argument("--num_hidden_layers", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--prompt_len", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: train,decode")
    parser.add_argument("--compile", type=int, default=0, choices=[0, 1],
                        help="1: also train both models under torch.compile (about a minute of compiling each)")
    parser.add_argument("--quantize", default="none", choices=["none", "int8", "nf4"],
                        help="int8: also decode at batch 1 with MiniMind's weights in float32, bfloat16 and int8 "
                             "(eval_model.py --quantize int8); nf4: also train LoRA and QLoRA (train_lora.py "
                             "--quantize nf4) at --batch_size x --seq_len; interleaved: tokens/s and weight memory")
    g = parser.add_argument_group("speculative decoding (needs trained models: acceptance depends on them)")
    g.add_argument("--spec_model", default=None, help="the model's checkpoint (.pth or HF folder)")
    add_speculative_args(g)
    g.add_argument("--spec_prompts", default=os.path.join(ROOT, "dataset", "demo", "eval.jsonl"),
                   help="jsonl with a 'question' per line, asked through the chat template")
    g.add_argument("--spec_n_prompts", type=int, default=8)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.draft_weight and not args.spec_model:
        parser.error("--draft_weight needs --spec_model (the model it drafts for)")
    torch.manual_seed(0)
    config = MiniMindConfig(hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers)
    ours = MiniMindForCausalLM(config).to(device)
    hf = LlamaForCausalLM(llama_config_from(config)).to(device)
    hf.load_state_dict(ours.state_dict())
    print(f"{args.hidden_size} x {args.num_hidden_layers} ({sum(p.numel() for p in ours.parameters()) / 1e6:.2f}M), "
          f"{device}, {torch.get_num_threads()} threads, torch {torch.__version__}")

    dtypes = [torch.float32, torch.bfloat16]
    if device.type == "cpu" and not torch.cpu._is_avx512_bf16_supported():
        dtypes = [torch.float32]
    for dtype in dtypes:
        peak = measure_matmul_peak(device, dtype, n=2048, seconds=1.0)
        print(f"matmul peak {str(dtype)[6:]}: {peak / 1e12:.2f} TFLOP/s")

    if "train" not in args.skip:
        ids = torch.randint(3, config.vocab_size, (args.batch_size, args.seq_len), device=device)
        tokens = ids.numel()
        for dtype, compiled in [(d, c) for c in range(args.compile + 1) for d in dtypes]:
            t = interleaved({"minimind": train_step_fn(ours, ids, dtype, device, compiled),
                             "hf_llama": train_step_fn(hf, ids, dtype, device, compiled)}, args.reps, device)
            peak = measure_matmul_peak(device, dtype, n=2048, seconds=0.5)
            mfu = tokens / t["minimind"] * flops_per_token(config, args.seq_len) / peak
            mode = f"{str(dtype)[6:]}{' compiled' if compiled else ''}"
            print(f"train {mode:17s} batch {args.batch_size}x{args.seq_len}: "
                  f"minimind {tokens / t['minimind']:8,.0f} tok/s  hf {tokens / t['hf_llama']:8,.0f} tok/s  "
                  f"ratio {t['hf_llama'] / t['minimind']:.2f}x  (minimind MFU {100 * mfu:.0f}%)")

    if "decode" not in args.skip:
        ours.eval(), hf.eval()
        # float16 for inference only: on a CPU with AVX-512, one-row float16 matmuls stream weights 2-3x faster
        decode_dtypes = dtypes + [torch.float16] * (device.type == "cpu")
        for dtype, batch in [(d, b) for d in decode_dtypes for b in (1, 8)]:
            ours.to(dtype), hf.to(dtype)  # weights in that dtype, as eval_model.py --dtype would load them
            prompt = torch.randint(3, config.vocab_size, (batch, args.prompt_len), device=device)
            n = args.new_tokens

            def run_ours():
                generate(ours, prompt, max_new_tokens=n, do_sample=False, eos_token_id=[])

            def run_hf():
                with torch.inference_mode():
                    hf.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
            runs = {"minimind": run_ours, "hf_llama": run_hf,
                    "minimind compiled": lambda: generate(ours, prompt, max_new_tokens=n, do_sample=False,
                                                          eos_token_id=[], compile=True)}
            start = time.perf_counter()
            runs["minimind compiled"]()  # compiles this shape
            compile_s = time.perf_counter() - start
            with tempfile.TemporaryDirectory() as tmp:
                if batch == 1 and device.type == "cpu":  # the same weights in llama.cpp, same thread count
                    for gguf_type in ("f16", "f32"):
                        decoder = llama_cpp_decoder(ours.float(), gguf_type, prompt[0].tolist(), n, tmp)
                        if decoder:
                            runs[f"llama.cpp {gguf_type}"] = decoder[0]
                    ours.to(dtype)
                t = interleaved(runs, max(2, args.reps // 2), device)
            print(f"decode {str(dtype)[6:]:8s} batch {batch}, {n} new tokens: "
                  f"minimind {batch * n / t['minimind']:7,.0f} tok/s  hf generate {batch * n / t['hf_llama']:7,.0f} "
                  f"tok/s  ratio {t['hf_llama'] / t['minimind']:.2f}x; "
                  f"compiled {batch * n / t['minimind compiled']:,.0f} tok/s ({compile_s:.0f} s to compile and run once)")
            for name in [r for r in runs if r.startswith("llama.cpp")]:
                print(f"    {name}: {n / t[name]:7,.0f} tok/s; minimind / it: eager {t[name] / t['minimind']:.2f}x, "
                      f"compiled {t[name] / t['minimind compiled']:.2f}x")

    if args.draft_weight:
        bench_speculative(args, device)
    if args.quantize == "int8":
        bench_int8_decode(ours.eval().to(torch.float32), args, device)
    elif args.quantize == "nf4":
        bench_qlora(ours.to(torch.float32), args, device, dtypes)


def bench_speculative(args, device):
    """Batch-1 replies of a trained model decoded plainly and with the drafter, alternated prompt by prompt
    (and which goes first), greedy and sampled: tokens/s of each, their ratio, and the drafts' acceptance."""
    import json

    from transformers import AutoTokenizer

    from model.chat import DEFAULT_TOKENIZER, chat_prompt_ids, load_drafter
    from model.checkpoint import load_model
    model, meta = load_model(args.spec_model, quiet=True)
    model = model.to(device).eval()
    folder = args.spec_model if os.path.isfile(os.path.join(args.spec_model, "tokenizer_config.json")) else \
        meta.get("args", {}).get("tokenizer_path") or DEFAULT_TOKENIZER
    tokenizer = AutoTokenizer.from_pretrained(folder if os.path.isdir(folder) else DEFAULT_TOKENIZER)
    drafter = load_drafter(args, model, tokenizer)
    with open(args.spec_prompts, encoding="utf-8") as f:
        questions = [json.loads(line)["question"] for line in f if line.strip()]
    step = max(1, len(questions) // args.spec_n_prompts)  # spread over the file's categories
    prompts = [torch.tensor([chat_prompt_ids(tokenizer, [{"role": "user", "content": q}])], device=device)
               for q in questions[::step][:args.spec_n_prompts]]
    print(f"speculative: {args.spec_model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M) with "
          f"{args.draft_weight}, k={drafter.k}, {len(prompts)} prompts, up to {args.new_tokens} new tokens each")

    def reply(ids, spec, sampling, seed):
        generator = torch.Generator(device=device).manual_seed(seed)
        return [int(t) for t in stream_generate(model, ids, max_new_tokens=args.new_tokens, generator=generator,
                                                eos_token_id=tokenizer.eos_token_id,
                                                drafter=drafter if spec else None, **sampling)]

    for mode, sampling in (("greedy", dict(do_sample=False)), ("sampled", dict(temperature=0.85, top_p=0.85))):
        reply(prompts[0], True, sampling, 0)  # warm-up
        seconds, tokens, same = {False: 0.0, True: 0.0}, {False: 0, True: 0}, True
        drafter.stats = SpecStats()
        for rep in range(max(1, args.reps // 2)):
            for i, ids in enumerate(prompts):
                out = {}
                for spec in ((False, True) if (i + rep) % 2 else (True, False)):
                    start = time.perf_counter()
                    out[spec] = reply(ids, spec, sampling, seed=1000 * rep + i)
                    seconds[spec] += time.perf_counter() - start
                    tokens[spec] += len(out[spec])
                same = same and out[False] == out[True]
        plain, spec = tokens[False] / seconds[False], tokens[True] / seconds[True]
        check = f", replies identical: {'yes' if same else 'NO'}" if mode == "greedy" else ""
        print(f"decode {mode:7s} batch 1: plain {plain:6.1f} tok/s  speculative {spec:6.1f} tok/s  "
              f"ratio {spec / plain:.2f}x  ({drafter.stats}{check})")


def bench_int8_decode(model, args, device):
    """Batch-1 greedy decoding with the same weights stored four ways; activations in float32, except for
    bfloat16 (in the weights' dtype). torchao dequantises int8 inside each matmul; `half_weights` (float16)
    casts each matmul's input. bfloat16 is measured even where the CPU has no native bf16, to show what it
    costs there."""
    weights = {"float32": model, "bfloat16": copy.deepcopy(model).to(torch.bfloat16),
               "int8": quantize_int8(copy.deepcopy(model)), "float16": half_weights(copy.deepcopy(model))}
    prompt = torch.randint(3, model.config.vocab_size, (1, args.prompt_len), device=device)
    n = args.new_tokens
    runs = {name: lambda m=m: generate(m, prompt, max_new_tokens=n, do_sample=False, eos_token_id=[])
            for name, m in weights.items()}
    sizes = {name: weight_bytes(m) for name, m in weights.items()}
    if device.type == "cpu":
        with tempfile.TemporaryDirectory() as tmp:
            for gguf_type in ("q8_0", "f32"):
                decoder = llama_cpp_decoder(model, gguf_type, prompt[0].tolist(), n, tmp)
                if decoder:
                    runs[f"llama.cpp {gguf_type}"], sizes[f"llama.cpp {gguf_type}"] = decoder
        t = interleaved(runs, max(2, args.reps // 2), device)
    else:
        t = interleaved(runs, max(2, args.reps // 2), device)
    for name in runs:
        print(f"decode {name:14s} weights, batch 1, {n} new tokens: {n / t[name]:7,.1f} tok/s "
              f"({t['float32'] / t[name]:.2f}x float32's), {sizes[name] / 1e6:6.1f} MB of weights")


def llama_cpp_decoder(model, gguf_type: str, prompt: list[int], n: int, folder: str):
    """(a function that decodes `n` greedy tokens after `prompt` with llama.cpp, the GGUF file's bytes) for the
    same weights exported by scripts/convert_model.py, on torch's thread count; None without llama-cpp-python."""
    try:
        import llama_cpp
    except ImportError:
        print("llama.cpp column skipped: pip install -r requirements-llama-cpp.txt")
        return None
    from model.checkpoint import load_tokenizer
    from scripts.convert_model import save_gguf  # the export users run
    path = save_gguf(model, load_tokenizer(os.path.join(ROOT, "model", "tokenizer")),
                     os.path.join(folder, f"bench-{gguf_type}.gguf"), gguf_type=gguf_type)
    llm = llama_cpp.Llama(model_path=path, n_ctx=len(prompt) + n + 8, n_threads=torch.get_num_threads(),
                          n_threads_batch=torch.get_num_threads(), verbose=False)

    def run():
        llm.reset()  # no prefix reuse between repetitions: every run evaluates the prompt, as ours does
        for i, _ in enumerate(llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True)):
            if i == n - 1:
                break
    return run, os.path.getsize(path)


def bench_qlora(model, args, device, dtypes):
    """Training steps of LoRA (rank 8 on every projection) on the float32 base and on its NF4 copy (QLoRA, double
    quantisation), on the same batch, interleaved. QLoRA dequantises every projection in the forward and again in
    the backward: that is its price for a base in ~4 bits."""
    lora = apply_lora(copy.deepcopy(model), rank=8).train()
    qlora = copy.deepcopy(model)
    quantize_nf4_(qlora, DEFAULT_TARGETS)
    qlora = apply_lora(qlora, rank=8).train()
    ids = torch.randint(3, model.config.vocab_size, (args.batch_size, args.seq_len), device=device)
    for dtype in dtypes:
        t = interleaved({"lora": train_step_fn(lora, ids, dtype, device),
                         "qlora": train_step_fn(qlora, ids, dtype, device)}, args.reps, device)
        tokens = ids.numel()
        print(f"train {str(dtype)[6:]:8s} batch {args.batch_size}x{args.seq_len}: LoRA {tokens / t['lora']:7,.0f} "
              f"tok/s, QLoRA {tokens / t['qlora']:7,.0f} tok/s ({t['lora'] / t['qlora']:.2f}x LoRA's); weights with "
              f"adapters {weight_bytes(lora) / 1e6:.1f} MB vs {weight_bytes(qlora) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
