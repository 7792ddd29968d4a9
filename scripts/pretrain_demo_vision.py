"""Pretrain the demo's vision encoder: the bundled demo's stand-in for a downloaded CLIP.

    python scripts/pretrain_demo_vision.py out/demo/vision_encoder              # ~3.7 min on 2 CPU cores

A real MiniMind-V starts from a CLIP or SigLIP that has seen millions of pictures; the demo cannot download one,
and an encoder trained from scratch only through the VLM's caption loss learns colour but not where a shape is
or how many there are. So, as CLIP is pretrained before LLaVA's stages, this writes a small CLIP vision folder
(Hugging Face format, loaded by the VLM stages through the same `from_pretrained` path as a downloaded one)
after teaching it the demo's pictures: every patch token learns the kind and colour of the shape that covers
most of its patch (or none). Each batch is turned or mirrored at random, the labels with it. Its pictures are
fresh draws like the VLM's training pictures: no validation or held-out picture, no withheld colour/shape,
position/shape or count/background combination. The validation pictures (which show withheld combinations)
measure it.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the packages beside scripts/
from demo.vision import COLOURS, SHAPES, cell_labels, encoder_scenes, render  # noqa: E402
from model.optimizer import cosine_lr  # noqa: E402
from model.vision import load_vision_encoder, patch_grid, pixel_values, save_vision_encoder  # noqa: E402


def labelled(scenes, processor, grid: int):
    """(pixel values, kind labels, colour labels) of pictures, labels per patch (row-major)."""
    labels = [cell_labels(s, grid) for s in scenes]
    pixels = torch.cat([pixel_values(processor, [render(s) for s in scenes[i:i + 500]])
                        for i in range(0, len(scenes), 500)])
    return pixels, torch.from_numpy(np.stack([k for k, _ in labels])), torch.from_numpy(np.stack([c for _, c in labels]))


def patch_logits(encoder, head, pixels, grid: int) -> torch.Tensor:
    """(images, patches, 2, 1 + values): kind and colour scores per patch token."""
    states = encoder(pixel_values=pixels).last_hidden_state[:, -grid * grid:]  # CLIP's class token first
    return head(states).unflatten(-1, (2, -1))


def turned(pixels, labels, grid: int, k: int):
    """The batch under symmetry k (0-7) of the square: k % 4 quarter turns, mirrored first when k >= 4. Pictures
    and per-patch labels move together, so every training picture counts eight times."""
    cells = [x.view(-1, grid, grid) for x in labels]
    if k >= 4:
        pixels, cells = pixels.flip(-1), [c.flip(-1) for c in cells]
    pixels, cells = torch.rot90(pixels, k % 4, (-2, -1)), [torch.rot90(c, k % 4, (-2, -1)) for c in cells]
    return pixels, [c.reshape(len(c), -1) for c in cells]


@torch.no_grad()
def accuracy(encoder, head, data, grid: int) -> dict:
    """Per patch with a shape: its kind and colour right; per picture: which patches hold a shape, all right."""
    pixels, kinds, colours = data
    encoder.eval()
    logits = torch.cat([patch_logits(encoder, head, pixels[i:i + 256], grid) for i in range(0, len(pixels), 256)])
    encoder.train()
    kind, colour = logits.argmax(-1).unbind(-1)
    filled = kinds > 0
    return {"shape": (kind == kinds)[filled].float().mean().item(),
            "colour": (colour == colours)[filled].float().mean().item(),
            "where": ((kind > 0) == filled).all(1).float().mean().item()}


def save_atomically(encoder, processor, folder: str):
    """The folder is replaced only once the new one is complete."""
    tmp, old = folder.rstrip("/") + ".tmp", folder.rstrip("/") + ".old"
    shutil.rmtree(tmp, ignore_errors=True)
    encoder.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    if os.path.exists(folder):
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="where the encoder goes (a CLIP vision folder)")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--pictures", type=int, default=20_000, help="fresh training pictures drawn up front")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--patch_size", type=int, default=16, help="16: a 4x4 grid, one token per cell")
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--num_hidden_layers", type=int, default=3)
    parser.add_argument("--num_attention_heads", type=int, default=4)
    parser.add_argument("--augment", type=int, default=1, choices=[0, 1],
                        help="1: each batch turned or mirrored at random (the labels with it)")
    parser.add_argument("--log_interval", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.image_size != 64:
        sys.exit("error: --image_size must be 64, the size of the demo's pictures")
    if args.image_size % args.patch_size:
        sys.exit(f"error: --patch_size {args.patch_size} does not divide --image_size {args.image_size}")

    start = time.time()
    with tempfile.TemporaryDirectory() as random_init:  # a random CLIP, read back as any folder is
        save_vision_encoder(random_init, "clip", args.image_size, args.patch_size, args.hidden_size,
                            args.num_hidden_layers, args.num_attention_heads, seed=args.seed)
        encoder, processor = load_vision_encoder(random_init)
    grid = patch_grid(encoder)
    train_scenes, val_scenes = encoder_scenes(args.pictures)
    train, val = labelled(train_scenes, processor, grid), labelled(val_scenes, processor, grid)
    print(f"{len(train_scenes)} training pictures, {len(val_scenes)} validation pictures, {grid}x{grid} patches "
          f"({time.time() - start:.0f} s)", flush=True)

    torch.manual_seed(args.seed)
    head = torch.nn.Linear(args.hidden_size, 2 * (1 + max(len(SHAPES), len(COLOURS))))  # discarded after training
    params = [*encoder.parameters(), *head.parameters()]
    encoder.train()
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=0.01)
    for step in range(1, args.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step - 1, args.steps, args.learning_rate, warmup=min(50, args.steps // 10),
                                    min_ratio=0.0)
        rows = torch.randint(0, len(train_scenes), (args.batch_size,))
        pixels, labels = train[0][rows], [x[rows] for x in train[1:]]
        if args.augment:
            pixels, labels = turned(pixels, labels, grid, int(torch.randint(0, 8, ())))
        logits = patch_logits(encoder, head, pixels, grid)
        loss = sum(F.cross_entropy(logits[:, :, i].flatten(0, 1), x.flatten()) for i, x in enumerate(labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % args.log_interval == 0 or step == args.steps:
            scores = " | ".join(f"{k} {v:.3f}" for k, v in accuracy(encoder, head, val, grid).items())
            seen = accuracy(encoder, head, [x[:len(val[0])] for x in train], grid)["shape"]
            print(f"step {step}/{args.steps} | loss {loss.item():.3f} | training shape {seen:.3f} | "
                  f"validation {scores} | {time.time() - start:.0f} s", flush=True)
    save_atomically(encoder.eval(), processor, args.folder)
    print(f"wrote {args.folder}: a {args.num_hidden_layers}-layer CLIP vision encoder, {grid}x{grid} patch tokens "
          f"of width {args.hidden_size}", flush=True)


if __name__ == "__main__":
    main()
