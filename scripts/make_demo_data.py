"""Generate MiniMind's bundled bilingual demo corpus (standard library only, no network).

The generator is the `demo` package (see its docstring for what the files and evaluation categories are):

    python scripts/make_demo_data.py --out_dir dataset/demo --seed 42 [--scale 1.0]
"""
import argparse
import os
import sys
import time

# For `python scripts/make_demo_data.py`: the packages sit beside scripts/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from demo import generate


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out_dir", default="dataset/demo")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies training rows (the world stays the same)")
    args = parser.parse_args()
    start = time.time()
    stats = generate(args.out_dir, seed=args.seed, scale=args.scale)
    for name, s in stats["files"].items():
        print(f"{name:22s} {s['rows']:7,d} rows {s['chars']:10,d} chars ≈{s['approx_tokens']:9,d} tokens")
    print(f"wrote {args.out_dir} in {time.time() - start:.1f}s")


if __name__ == "__main__":
    main()
