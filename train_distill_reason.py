"""Reasoning distillation: the chat model learns to think before it answers, by SFT on replies written by a
reasoning model (DeepSeek-R1 style) in the format

    <think>\\n worked steps \\n</think>\\n<answer>\\n result \\n</answer>

    python train_distill_reason.py                          # loads out/rlhf_512.pth, bundled demo problems
    python train_distill_reason.py --from_weight full_sft   # when DPO was skipped
    python train_distill_reason.py --data_path dataset/r1_mix_1024.jsonl --max_seq_len 1024

A small model easily learns the words of the steps but drops or misplaces the tags, and a reply without
them cannot be split into thinking and answer. So the four tag tokens weigh --tag_weight (10) times an
ordinary token in the loss. Every --eval_interval steps (and at the end) the model answers held-out
problems greedily; the log reports how many replies follow the template exactly and how many answers are
right. Writes out/reason_<hidden>[_moe].pth.
"""
import argparse
import json

import torch.nn.functional as F

from demo import data_paths, demo_file, is_correct
from model.checkpoint import build_model, load_tokenizer
from model.dataloader import load_datasets
from model.dataset import IGNORE, ReasonDataset
from model.generation import answer_questions
from model.loss_eval import evaluate, token_byte_lengths
from model.reasoning import follows_template
from model.runtime import add_common_args, setup_run
from model.session import Session


def weighted_cross_entropy(logits, labels, loss_weights):
    """Per-token cross-entropy times its weight (1, or tag_weight on the tag tokens), summed and divided by
    the number of learned tokens, as minimind does. Dividing by the count rather than by the sum of the
    weights lets the tags *add* emphasis: ordinary tokens keep the gradient plain SFT would give them, and
    the loss reads larger than plain cross-entropy.

    logits (B, L, V); labels and loss_weights (B, L) aligned with input_ids (position t predicts t+1).
    """
    logits, labels, weights = logits[:, :-1], labels[:, 1:], loss_weights[:, 1:]
    per_token = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
    learned = (labels != IGNORE).sum().clamp(min=1)
    return (per_token * weights).sum() / learned


def reasoning_scores(replies: list[str], rows: list[dict]) -> dict:
    """The share of replies that follow the template exactly, and the share whose answer is right
    (`is_correct` reads the <answer> block, or what follows </think> when the block is missing)."""
    n = max(len(rows), 1)
    return {"template": sum(map(follows_template, replies)) / n,
            "accuracy": sum(is_correct(reply, row) for reply, row in zip(replies, rows)) / n}


def read_rows(path: str, limit: int) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows[:limit] if limit else rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, learning_rate=1e-6, from_weight="rlhf", save_weight="reason", max_seq_len=1024)
    parser.add_argument("--tag_weight", type=float, default=10.0,
                        help="loss weight of the <think>, </think>, <answer>, </answer> tokens")
    parser.add_argument("--eval_path", default=None,
                        help="held-out problems, rows {question, answer}; default: the demo's reason_eval.jsonl")
    parser.add_argument("--eval_samples", type=int, default=0, help="problems answered per evaluation (0 = all)")
    parser.add_argument("--max_new_tokens", type=int, default=256, help="reply length limit when evaluating")
    args = parser.parse_args()
    run = setup_run(args)

    tokenizer = load_tokenizer(args.tokenizer_path)
    train_data, val_data = load_datasets(ReasonDataset, *data_paths(args.data_path, args.val_path, "reason"),
                                         tokenizer, args.max_seq_len, tag_weight=args.tag_weight,
                                         skip_bad=args.skip_bad)
    eval_rows = read_rows(args.eval_path or demo_file("reason_eval.jsonl"), args.eval_samples)
    model = build_model(args, run, tokenizer)

    byte_lengths = token_byte_lengths(tokenizer) if val_data else None

    def evaluate_fn(m):
        results = {}
        if val_data:  # plain (unweighted) loss, comparable with SFT's
            results["val_loss"], results["val_bpb"] = evaluate(m, val_data, args, run, byte_lengths,
                                                               args.eval_batches)
        if run.is_main:
            replies = answer_questions(m, tokenizer, [r["question"] for r in eval_rows], args.max_new_tokens)
            results.update(reasoning_scores(replies, eval_rows))
        return results

    session = Session(args, run, model, train_data, args.save_weight, tokenizer, evaluate_fn=evaluate_fn)
    for batch in session.batches():
        with run.autocast():
            out = session.model(batch["input_ids"])
            loss = weighted_cross_entropy(out.logits, batch["labels"], batch["loss_weights"])
        session.backward(loss + out.aux_loss)
        if session.ready:
            session.step(loss)
    session.finish()


if __name__ == "__main__":
    main()
