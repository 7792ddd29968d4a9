"""MiniMind-V's cost beside the text model's: training steps, memory and decoding, on a ViT-B/16-sized encoder.

    python scripts/bench_vlm.py                                  # 512 x 8 + random CLIP ViT-B/16 (224 px, 196 tokens)
    python scripts/bench_vlm.py --vision_model model/vision_model/clip-vit-base-patch16   # a downloaded encoder
    python scripts/bench_vlm.py --device cuda --batch_size 32

Speed does not depend on the weights' values, so a randomly initialised encoder of ViT-B/16's shape stands in
for the download (none can be fetched here). Training steps of the three set-ups below are interleaved in one
process and the median taken (this kind of machine drifts 15-20% between runs); each sequence is one image
(196 slots) plus text up to --seq_len positions, and the text model's step runs the same positions without the
image. Peak memory is measured in a fresh process per set-up (the high-water mark of one process cannot be
reset), so those runs are separate:

  text          the LLM alone, every weight training (full SFT)
  projection    train_pretrain_vlm.py's default: encoder and LLM frozen, the projection trains
  llm           train_sft_vlm.py's default: the LLM and the projection train, the encoder is frozen

Decoding: one image prompt, batch 1, greedy, against the same prompt with its image slots as plain text.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # for `python scripts/<name>.py`: the packages sit beside scripts/
from model import MiniMindConfig, MiniMindForCausalLM  # noqa: E402  (first: it quiets torchao's import noise)
from model.generation import generate  # noqa: E402
from model.model_vlm import vlm_from_llm  # noqa: E402
from model.vision import save_vision_encoder  # noqa: E402
from scripts.bench_model import interleaved  # noqa: E402

SETUPS = ("text", "projection", "llm")


def build(args, folder):
    torch.manual_seed(0)
    llm = MiniMindForCausalLM(MiniMindConfig(hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers))
    return vlm_from_llm(llm, folder).to(args.device)


def without_encoder(model):
    """The text set-up's process holds no encoder, so its memory is the text model's alone."""
    del model.vision_encoder
    return model


def batch(model, args):
    """(input_ids with one image's slots per row, pixel_values): text fills the rest of --seq_len."""
    T, image_id = model.config.image_tokens, model.config.image_token_id
    text = torch.randint(3, model.config.vocab_size, (args.batch_size, args.seq_len - T))
    ids = torch.cat([text[:, :8], torch.full((args.batch_size, T), image_id), text[:, 8:]], dim=1)
    size = model.vision_encoder.config.image_size
    return ids.to(args.device), torch.randn(args.batch_size, 3, size, size, device=args.device)


def train_step(model, setup, ids, pixels, dtype, device):
    """One optimizer step of `setup` (the text set-up feeds the same positions as plain tokens)."""
    model.requires_grad_(False)
    if setup in ("text", "llm"):
        for name, p in model.named_parameters():
            p.requires_grad_(not name.startswith("vision_encoder."))
    model.vision_proj.requires_grad_(setup != "text")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    text_ids = ids.masked_fill(ids == model.config.image_token_id, 5)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step():
        with autocast:
            if setup == "text":
                loss = MiniMindForCausalLM.forward(model, text_ids, labels=text_ids).loss
            else:
                loss = model(ids, pixel_values=pixels, labels=ids.masked_fill(ids >= model.config.vocab_size, -100)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def peak_memory(args, folder, setup) -> float:
    """GB of peak resident memory of a fresh process running a few steps of `setup` (CPU), or CUDA's peak."""
    command = [sys.executable, __file__, "--only", setup, "--vision_model", folder] + [
        f"--{k}={v}" for k, v in vars(args).items() if k not in ("only", "vision_model") and v is not None]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_gb"]


def run_only(args):
    """Child process of `peak_memory`: build, take 3 steps, print the peak."""
    device = torch.device(args.device)
    model = build(args, args.vision_model)
    ids, pixels = batch(model, args)
    if args.only == "text":
        model = without_encoder(model)
    step = train_step(model, args.only, ids, pixels, getattr(torch, args.dtype), device)
    for _ in range(3):
        step()
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 1e9
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KB on Linux
    print(json.dumps({"peak_gb": peak}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden_size", type=int, default=512)
    parser.add_argument("--num_hidden_layers", type=int, default=8)
    parser.add_argument("--vision_model", default=None, help="encoder folder (default: a random ViT-B/16 CLIP)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=512, help="positions per sequence, the image's included")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--only", default=None, choices=SETUPS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        return run_only(args)

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.vision_model or save_vision_encoder(os.path.join(tmp, "vit-b16"), "clip")
        device, dtype = torch.device(args.device), getattr(torch, args.dtype)
        model = build(args, folder)
        ids, pixels = batch(model, args)
        vision = sum(p.numel() for p in model.vision_encoder.parameters()) / 1e6
        llm = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("vision")) / 1e6
        print(f"{args.hidden_size} x {args.num_hidden_layers} LLM ({llm:.1f}M) + {type(model.vision_encoder).__name__} "
              f"({vision:.1f}M, {model.config.image_tokens} tokens per image); batch {args.batch_size} x "
              f"{args.seq_len} positions, {args.dtype}, {args.device}, {torch.get_num_threads()} threads")

        seconds = interleaved({s: train_step(model, s, ids, pixels, dtype, device) for s in SETUPS}, args.reps, device)
        positions = ids.numel()
        print("\n| set-up | step | positions/s | images/s | vs text | peak memory |\n|---|---|---|---|---|---|")
        for setup in SETUPS:
            memory = peak_memory(args, folder, setup)
            images = "" if setup == "text" else f"{args.batch_size / seconds[setup]:.1f}"
            print(f"| {setup} | {seconds[setup]:.2f} s | {positions / seconds[setup]:,.0f} | {images} | "
                  f"{seconds['text'] / seconds[setup]:.2f}x | {memory:.2f} GB |")

        model.eval()
        prompt, image = ids[:1], pixels[:1]
        text_prompt = prompt.masked_fill(prompt == model.config.image_token_id, 5)
        kwargs = dict(max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=[])
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            decode = interleaved({"image": lambda: generate(model, prompt, pixel_values=image, **kwargs),
                                  "text": lambda: generate(model, text_prompt, **kwargs)}, args.reps, device)
            start = time.perf_counter()
            model.image_features(image)
            encode = time.perf_counter() - start
        print(f"\ndecode, batch 1, {prompt.shape[1]}-position prompt + {args.new_tokens} new tokens: with the image "
              f"{args.new_tokens / decode['image']:.1f} tok/s (whole call), as text {args.new_tokens / decode['text']:.1f} "
              f"tok/s; the image costs {decode['image'] - decode['text']:+.2f} s per reply (encoding it alone "
              f"{encode:.2f} s)")


if __name__ == "__main__":
    main()
