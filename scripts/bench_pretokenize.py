"""Pre-tokenisation speed: scripts/pretokenize.py with tiktoken (the default where its ids are proven equal)
against the Rust tokenizers' batch encode, runs alternated, each a fresh process; MB/s of jsonl and peak RSS.

    python scripts/bench_pretokenize.py --input dataset/pretrain_hq.jsonl     # a real corpus
    python scripts/bench_pretokenize.py --mb 1024                             # a 1 GB file built from the demo

Without --input, a file of --mb MB is written to --work_dir from the demo's pretraining documents, each copy
with its sentences shuffled so that the tokenizers library's word cache sees text that varies (on a file of
exact repeats it would be flattered). Both engines' .bin files are compared byte for byte.
"""
import argparse
import filecmp
import json
import os
import random
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # for `python scripts/<name>.py`: the packages sit beside scripts/

# Runs pretokenize.py in this process and prints its peak RSS (its own and its pool workers') as the last line.
RUNNER = """
import resource, runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(f"peak_rss_kb {peak}")
"""


def build_corpus(path, mb, seed=0):
    """About `mb` MB of {"text": ...} lines: the demo's pretraining documents, sentences shuffled per copy."""
    from demo import DEMO_DIR
    source = os.path.join(DEMO_DIR, "pretrain.jsonl")
    if not os.path.exists(source):
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_demo_data.py")], check=True)
    with open(source, encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f if line.strip()]
    rng, target, written = random.Random(seed), mb * 2**20, 0
    with open(path + ".tmp", "w", encoding="utf-8") as out:
        while written < target:
            for doc in docs:
                parts = re.split(r"(?<=[.!?。！？])\s*", doc)
                rng.shuffle(parts)
                line = json.dumps({"text": " ".join(p for p in parts if p)}, ensure_ascii=False) + "\n"
                out.write(line)
                written += len(line.encode("utf-8"))
                if written >= target:
                    break
    os.replace(path + ".tmp", path)


def run(engine, source, output, workers):
    cmd = [sys.executable, "-c", RUNNER, os.path.join(ROOT, "scripts", "pretokenize.py"), "--input", source,
           "--output", output, "--num_workers", str(workers), "--engine", engine]
    started = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.time() - started  # the whole command: start-up, tiktoken's proof, the joins
    if done.returncode:
        sys.exit(f"pretokenize.py --engine {engine} failed:\n{done.stderr[-2000:]}")
    peak_kb = int(re.search(r"peak_rss_kb (\d+)", done.stdout).group(1))
    return seconds, peak_kb / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", help="a pretraining jsonl (default: build one of --mb MB)")
    parser.add_argument("--mb", type=float, default=256)
    parser.add_argument("--work_dir", default="/tmp/bench_pretokenize")
    parser.add_argument("--num_workers", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=2, help="alternated runs of each engine")
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    source = args.input or os.path.join(args.work_dir, f"corpus_{args.mb:g}mb.jsonl")
    if not os.path.exists(source):
        print(f"writing {source} ({args.mb:g} MB)", flush=True)
        build_corpus(source, args.mb)
    size_mb = os.path.getsize(source) / 2**20
    # The line index, cached beside the file, before any timed run: its one scan memory-maps the whole file,
    # and those page-cache pages would count in the RSS of whichever engine ran first.
    from model.dataset import JsonlIndex
    JsonlIndex(source)
    results = {"tiktoken": [], "tokenizers": []}
    for r in range(args.rounds):
        order = ["tokenizers", "auto"] if r % 2 else ["auto", "tokenizers"]
        for engine in order:
            name = "tiktoken" if engine == "auto" else engine
            seconds, rss = run(engine, source, os.path.join(args.work_dir, name), args.num_workers)
            results[name].append((seconds, rss))
            print(f"round {r + 1} {name:10s} {seconds:7.1f} s  {size_mb / seconds:6.2f} MB/s  peak RSS {rss:.2f} GB",
                  flush=True)
    same = filecmp.cmp(*(os.path.join(args.work_dir, f"{n}.bin") for n in results), shallow=False)
    print(f"\n{size_mb:,.0f} MB of jsonl, {args.num_workers} workers; the two .bin files are "
          f"{'byte-identical' if same else 'DIFFERENT'}")
    for name, runs in results.items():
        speeds = [size_mb / s for s, _ in runs]
        print(f"{name:10s} {min(speeds):.2f}-{max(speeds):.2f} MB/s, peak RSS {max(r for _, r in runs):.2f} GB")
    ratios = [a[0] / b[0] for a, b in zip(results["tokenizers"], results["tiktoken"])]
    print(f"tiktoken / tokenizers speed, per round: {', '.join(f'{x:.2f}x' for x in ratios)}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
