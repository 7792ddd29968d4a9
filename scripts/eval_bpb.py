"""Perplexity and bits per byte on held-out text, comparable across models with different tokenizers.

    python scripts/eval_bpb.py --data_path dataset/demo/pretrain_val.jsonl --model_mode 0 --hidden_size 256
    python scripts/eval_bpb.py --data_path dataset/demo/sft_val.jsonl --model_mode 1      # conversations
    python scripts/eval_bpb.py --data_path notes.txt --load_from out/minimind-llama --max_seq_len 1024

--data_path: jsonl with a `text` field (pretraining format) or `conversations` (rendered with the chat
template), or a plain text file (one document). --load_from takes any Hugging Face causal LM folder, which
is then measured with its own tokenizer. Documents longer than --max_seq_len are read in sliding windows
moving by --stride, so each token after the first window keeps at least max_seq_len - stride of context.
"""
import argparse
import itertools
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # for `python scripts/<name>.py`: the packages sit beside scripts/
from model.loss_eval import DocumentError, bits_per_byte, read_documents
from model.chat import add_model_args, load_chat_model
from model.checkpoint import CheckpointError, atomic_json_save


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    g = parser.add_argument_group("bits per byte")
    g.add_argument("--data_path", required=True, help="held-out .jsonl (text or conversations) or a text file")
    g.add_argument("--max_seq_len", type=int, default=512, help="window length in tokens")
    g.add_argument("--stride", type=int, default=None, help="window step in tokens (default max_seq_len // 2)")
    g.add_argument("--max_documents", type=int, default=None, help="only the first n documents")
    g.add_argument("--batch_size", type=int, default=8, help="windows per forward")
    g.add_argument("--output", default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isfile(args.data_path):
        sys.exit(f"--data_path {args.data_path}: no such file")
    if args.stride is not None and not 1 <= args.stride <= args.max_seq_len:
        sys.exit(f"--stride {args.stride}: must be 1..--max_seq_len ({args.max_seq_len}), or tokens go unscored")
    try:
        model, tokenizer, path = load_chat_model(args)
        documents = itertools.islice(read_documents(args.data_path), args.max_documents)
        results = bits_per_byte(model, tokenizer, documents, args.max_seq_len, args.stride, args.batch_size,
                                progress=True)
    except (CheckpointError, DocumentError) as e:
        sys.exit(str(e))
    results.update(model=path, data_path=args.data_path)
    print(f"{path} on {args.data_path}: {results['documents']:,} documents, {results['tokens']:,} tokens, "
          f"{results['bytes']:,} bytes | {results['nats_per_token']:.4f} nats/token, "
          f"perplexity {results['perplexity']:.2f}, {results['bits_per_byte']:.4f} bits per byte")
    if args.output:
        atomic_json_save(results, args.output)
    return results


if __name__ == "__main__":
    main()
