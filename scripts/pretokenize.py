"""Pre-tokenize a pretraining jsonl ({"text": ...} per line) into a binary PretrainDataset memmaps.

    python scripts/pretokenize.py --input dataset/pretrain_hq.jsonl --num_workers 8

Writes, beside --output (default: the input without .jsonl):
  <output>.bin   token ids of every document back to back, WITHOUT bos/eos (the dataset adds
                 them), uint16, or uint32 when the vocabulary exceeds 65536 ids
  <output>.idx   int64 offsets into .bin: document k is bin[idx[k]:idx[k+1]]
  <output>.json  meta: tokenizer, its vocabulary fingerprint, dtype, documents, tokens, source

The ids are those of the Hugging Face tokenizer, `tokenizer(text, add_special_tokens=False)`, computed by
tiktoken where model/fast_tokenizer.py proves them equal (MiniMind's tokenizer: ~4x faster; it says which
engine ran). The file is cut into byte-range chunks on line boundaries, tokenized by a process pool. Each
finished chunk is saved under <output>.parts/, so an interrupted run resumes where it stopped;
the final files are written under temporary names and renamed. Memory stays bounded: a
worker holds one chunk (--chunk_mb of text and its tokens), the main process the line index
(16 bytes per line), the document lengths (8 bytes per document) and one chunk while joining.
"""
import argparse
import json
import os
import shutil
import signal
import sys
import time
from multiprocessing import Pool

import numpy as np
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # for `python scripts/<name>.py`: the packages sit beside scripts/
from model.dataset import MAX_WARNINGS, DataError, JsonlIndex, token_dtype, tokenize_documents, tokenizer_fingerprint
from model.fast_tokenizer import BatchEncoder


def plan_chunks(index, chunk_bytes):
    """[(byte start, byte end, first line number)] of chunks of about chunk_bytes, cut at line starts."""
    size = int(index.bounds[-1])
    cuts = np.searchsorted(index.bounds, np.arange(chunk_bytes, size, chunk_bytes))
    lines = np.unique(np.concatenate([[0], cuts, [len(index.bounds) - 1]]))
    return [(int(index.bounds[a]), int(index.bounds[b]), int(a) + 1) for a, b in zip(lines[:-1], lines[1:])]


_encoder = None  # set once per worker process by the pool initializer, not sent with every task


def init_worker(encoder, pool_size):
    global _encoder
    _encoder = encoder
    if pool_size > 1:  # a pool worker
        # one process per core already: the tokenizer's own threads would only compete
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        # it dies on pool.terminate() and leaves Ctrl-C to the main process, whatever handlers it was forked with
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def part_path(parts_dir, chunk_id):
    return os.path.join(parts_dir, f"{chunk_id:06d}.npz")


def tokenize_chunk(task):
    """Tokenize one chunk and save it as a part; returns (chunk id, bytes, bad line messages)."""
    chunk_id, (start, end, first_line), source, parts_dir, skip_bad = task
    with open(source, "rb") as f:
        f.seek(start)
        text = f.read(end - start)
    lines = enumerate(text.split(b"\n"), first_line)
    tokens, lengths, bad = tokenize_documents(_encoder, lines, source, skip_bad)
    tmp = part_path(parts_dir, chunk_id) + ".tmp.npz"
    np.savez(tmp, tokens=tokens, lengths=lengths, bad=np.array(sorted(bad), np.int64))
    os.replace(tmp, part_path(parts_dir, chunk_id))
    return chunk_id, end - start, list(bad.values())


def prepare_parts_dir(parts_dir, plan):
    """Keep finished parts only if they came from the same file, tokenizer and chunking."""
    plan_file = os.path.join(parts_dir, "plan.json")
    plan = json.loads(json.dumps(plan))  # tuples become lists, as in the saved copy
    if os.path.exists(plan_file):
        with open(plan_file) as f:
            if json.load(f) == plan:
                return
        shutil.rmtree(parts_dir)
    os.makedirs(parts_dir, exist_ok=True)
    with open(plan_file, "w") as f:
        json.dump(plan, f)


def join_parts(parts_dir, n_chunks, output, meta):
    """Concatenate the parts in order into .bin/.idx/.json, each written to a temp name and renamed."""
    lengths, bad = [], 0
    with open(output + ".bin.tmp", "wb") as out:
        for chunk_id in range(n_chunks):
            with np.load(part_path(parts_dir, chunk_id)) as part:
                out.write(part["tokens"].astype(meta["dtype"], copy=False).tobytes())
                lengths.append(part["lengths"])
                bad += len(part["bad"])
    offsets = np.concatenate([[0], np.cumsum(np.concatenate([np.zeros(0, np.int64)] + lengths))]).astype(np.int64)
    offsets.tofile(output + ".idx.tmp")
    meta.update(docs=len(offsets) - 1, tokens=int(offsets[-1]), skipped_bad_lines=bad)
    with open(output + ".json.tmp", "w") as f:
        json.dump(meta, f, indent=2, ensure_ascii=False)
    for ext in (".bin", ".idx", ".json"):  # .json last: a complete triple has its meta
        os.replace(output + ext + ".tmp", output + ext)
    return meta


def pretokenize(source, output, tokenizer_dir, num_workers, chunk_mb=8, skip_bad=False, engine="auto"):
    from transformers import AutoTokenizer  # slow import (~5 s): only when actually tokenizing
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    started = time.time()
    encoder = BatchEncoder(tokenizer, use_tiktoken=engine == "auto")
    print(f"encoding with {encoder.engine}" + (f" ({encoder.why})" if encoder.why else ""))
    stat = os.stat(source)
    chunks = plan_chunks(JsonlIndex(source), int(chunk_mb * 2**20))
    meta = {"tokenizer": tokenizer_dir, "vocab_size": len(tokenizer),
            "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
            "dtype": np.dtype(token_dtype(len(tokenizer))).name,
            "source": os.path.abspath(source), "source_bytes": stat.st_size}
    parts_dir = output + ".parts"
    prepare_parts_dir(parts_dir, {**meta, "source_mtime_ns": stat.st_mtime_ns, "chunks": chunks,
                                  "skip_bad": skip_bad})
    todo = [c for c in range(len(chunks)) if not os.path.exists(part_path(parts_dir, c))]
    remaining = sum(chunks[c][1] - chunks[c][0] for c in todo)
    tasks = [(c, chunks[c], source, parts_dir, skip_bad) for c in todo]
    bar = tqdm(total=stat.st_size, initial=stat.st_size - remaining, unit="B", unit_scale=True, desc="tokenize")
    pool = Pool(num_workers, init_worker, (encoder, num_workers)) if num_workers > 1 else None
    if pool is None:
        init_worker(encoder, 1)
    reported = 0
    try:
        for _, nbytes, bad in (pool.imap_unordered(tokenize_chunk, tasks) if pool else map(tokenize_chunk, tasks)):
            for message in bad[:max(0, MAX_WARNINGS - reported)]:
                tqdm.write(f"skipping {message}")
            reported += len(bad)
            bar.update(nbytes)
    finally:
        bar.close()
        if pool:
            pool.terminate()
    meta = join_parts(parts_dir, len(chunks), output, meta)
    shutil.rmtree(parts_dir)
    seconds = time.time() - started
    print(f"{meta['docs']:,} documents, {meta['tokens']:,} tokens ({meta['dtype']}) → {output}.bin; "
          f"{meta['skipped_bad_lines']} bad lines skipped; "
          f"{remaining / 2**20 / seconds:.1f} MB/s of jsonl with {num_workers} workers")
    return meta


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="pretraining jsonl, one {\"text\": ...} per line")
    parser.add_argument("--output", help="output path without extension (default: the input without .jsonl)")
    parser.add_argument("--tokenizer", default="model/tokenizer", help="Hugging Face tokenizer folder")
    parser.add_argument("--num_workers", type=int, default=os.cpu_count())
    parser.add_argument("--chunk_mb", type=float, default=8, help="MB of jsonl per task (and per part file)")
    parser.add_argument("--skip_bad", action="store_true", help="skip and count bad lines instead of stopping")
    parser.add_argument("--engine", default="auto", choices=["auto", "tokenizers"],
                        help="auto: tiktoken where its ids are proven equal, else tokenizers' batch encode")
    args = parser.parse_args()
    output = args.output or (args.input[:-len(".jsonl")] if args.input.endswith(".jsonl") else args.input)
    try:
        pretokenize(args.input, output, args.tokenizer, args.num_workers, args.chunk_mb, args.skip_bad, args.engine)
    except DataError as e:
        sys.exit(f"error: {e} (or pass --skip_bad)")


if __name__ == "__main__":
    main()
