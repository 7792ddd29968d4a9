"""Write a randomly initialised vision encoder folder (CLIP or SigLIP, Hugging Face format, with its image
processor), for MiniMind-V runs that train their encoder from scratch (--train_vision) or for benchmarks.

    python scripts/make_vision_encoder.py /tmp/vit-b16                       # ViT-B/16's shape (224 px, 196 tokens)
    python scripts/make_vision_encoder.py /tmp/tiny --image_size 64 --patch_size 16 \
        --hidden_size 128 --num_hidden_layers 3 --num_attention_heads 4     # the demo encoder's shape, untrained

A downloaded CLIP or SigLIP folder needs none of this: pass it to --vision_model as it is. The demo's encoder is
pretrained on its pictures by scripts/pretrain_demo_vision.py.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the packages beside scripts/
from model.vision import save_vision_encoder  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--kind", default="clip", choices=["clip", "siglip"])
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--patch_size", type=int, default=16)
    parser.add_argument("--hidden_size", type=int, default=768)
    parser.add_argument("--num_hidden_layers", type=int, default=12)
    parser.add_argument("--num_attention_heads", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.image_size % args.patch_size:
        sys.exit(f"error: --patch_size {args.patch_size} does not divide --image_size {args.image_size}")
    options = vars(args).copy()
    save_vision_encoder(options.pop("folder"), **options)
    grid = args.image_size // args.patch_size
    print(f"wrote {args.folder}: random {args.kind} encoder, {grid}x{grid} = {grid * grid} patches of width "
          f"{args.hidden_size}")


if __name__ == "__main__":
    main()
