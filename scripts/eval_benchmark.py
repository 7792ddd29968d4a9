"""Multiple-choice benchmarks scored by log-likelihood: C-Eval, CMMLU, ARC, OpenBookQA, or any jsonl.

    python scripts/eval_benchmark.py --task ceval --data_path dataset/ceval --model_mode 0          # val split
    python scripts/eval_benchmark.py --task cmmlu --data_path dataset/cmmlu --num_fewshot 5 --model_mode 0
    python scripts/eval_benchmark.py --task arc --data_path dataset/ARC-V1-Feb2018-2/ARC-Easy --length_norm chars
    python scripts/eval_benchmark.py --task jsonl --data_path my_mc.jsonl --load_from out/minimind-hf --chat

Each option is scored by the summed log-probability of its tokens after the question (its letter for
C-Eval/CMMLU, its text for ARC/OpenBookQA/jsonl); the likeliest is the answer. Prints accuracy per subject
(and per C-Eval category) beside the chance level. `--data_path` is the task's folder in its official
layout, a .jsonl file, or one subject's C-Eval/CMMLU .csv (law_val.csv, agronomy.csv; its few-shot examples
come from the subject's dev file beside it or in ../dev/).

--output results.json writes the totals there and, beside it, results.questions.jsonl (named in the JSON
as per_question_file): one line per question with its index, subject, file and row, gold and predicted
letters, and each option's summed log-likelihood ("loglik") and the length-normalised "score" the
prediction compared (as lm-eval's --log_samples writes its samples beside the results).
Where to put the official files: scripts/README_eval.md.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # for `python scripts/<name>.py`: the packages sit beside scripts/
from model.benchmark import TASKS, BenchmarkDataError, benchmark_markdown, run_benchmark
from model.chat import add_model_args, load_chat_model
from model.checkpoint import CheckpointError, atomic_json_save, atomic_write


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    g = parser.add_argument_group("benchmark")
    g.add_argument("--task", required=True, choices=sorted(TASKS))
    g.add_argument("--data_path", required=True,
                   help="the task's folder in its official layout, a .jsonl file, or one subject's .csv")
    g.add_argument("--split", default=None, help="default: val (C-Eval), test (the others)")
    g.add_argument("--subjects", default=None, help="comma-separated subset, e.g. law,logic")
    g.add_argument("--limit", type=int, default=None, help="first n questions of each subject (a quick look)")
    g.add_argument("--num_fewshot", type=int, default=0,
                   help="solved examples before each question: the first k of the subject's dev/train split")
    g.add_argument("--length_norm", default="none", choices=["none", "chars", "tokens"],
                   help="divide each option's log-likelihood by its characters (lm-eval's acc_norm) or tokens")
    g.add_argument("--chat", action="store_true", help="ask in the chat template (SFT models)")
    g.add_argument("--batch_size", type=int, default=16, help="options scored per forward")
    g.add_argument("--max_seq_len", type=int, default=None,
                   help="longer prompts lose their beginning (default: the model's max_position_embeddings)")
    g.add_argument("--skip_bad", action="store_true",
                   help="skip malformed rows (listed in the output) instead of stopping at the first")
    g.add_argument("--output", default=None,
                   help="write the totals as JSON here, and one line per question to <name>.questions.jsonl")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        model, tokenizer, path = load_chat_model(args)
        results = run_benchmark(model, tokenizer, args.task, args.data_path, args.split, args.num_fewshot,
                                args.chat, args.length_norm, args.subjects and args.subjects.split(","),
                                args.limit, args.skip_bad, args.batch_size, args.max_seq_len)
    except (CheckpointError, BenchmarkDataError) as e:
        sys.exit(str(e))
    results["model"] = path
    for problem in results["skipped"]:
        print(f"skipped {problem}", file=sys.stderr)
    print(f"\n{path}\n{benchmark_markdown(results)}")
    if args.output:
        write_results(results, args.output)
    return results


def write_results(results: dict, output: str):
    """The totals at `output`, the per-question records in a .questions.jsonl beside it; each file is written
    atomically, the records first, so a results file always comes with its complete records."""
    records_path = os.path.splitext(output)[0] + ".questions.jsonl"
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results["per_question"])
    atomic_write(records_path, lambda f: f.write(lines.encode()))
    totals = {k: v for k, v in results.items() if k != "per_question"}
    atomic_json_save({**totals, "per_question_file": os.path.basename(records_path)}, output)
    print(f"results: {output}, per question: {records_path}")


if __name__ == "__main__":
    main()
