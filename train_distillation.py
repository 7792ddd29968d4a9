"""White-box knowledge distillation: a small student learns from a bigger teacher's whole next-token
distribution, not only from the one token the data says is right (Hinton et al., 2015).

    python train_distillation.py                       # student out/full_sft_512.pth, teacher out/full_sft_768.pth
    python train_distillation.py --teacher_weight out/full_sft_640_moe.pth --hidden_size 512
    python train_distillation.py --from_weight none    # a randomly initialised student (needs far more steps)

"White-box": we run the teacher ourselves and read its logits, so teacher and student must share the
tokenizer (the same vocabulary, id for id). With only a text API to a teacher, use black-box distillation
instead: scripts/distill_blackbox.py writes the teacher's replies as SFT data for train_full_sft.py.

The data is SFT chats; both losses cover the assistant tokens only:

    loss = alpha * CE(student, data) + (1 - alpha) * T^2 * KL(teacher_T || student_T)

where `_T` is the softmax of logits / T. A temperature T > 1 flattens both distributions, so the student
also learns how the teacher ranks the *wrong* tokens (which mistakes are nearly right): the "dark
knowledge" that a one-hot label lacks. Softening shrinks the KL's gradients by 1/T^2, hence the T^2.
Writes out/full_dist_<hidden>[_moe].pth.
"""
import argparse
import os
import sys
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from demo import data_paths
from model.checkpoint import CheckpointError, build_model, load_model, load_tokenizer, resolve_weight
from model.dataloader import load_datasets
from model.dataset import IGNORE, SFTDataset, tokenizer_fingerprint
from model.loss_eval import evaluate, held_out_sums, token_byte_lengths
from model.runtime import add_common_args, setup_run
from model.session import Session


def distillation_loss(student_logits, teacher_logits, labels, alpha: float = 0.5, temperature: float = 1.5):
    """(loss, ce, kl) averaged over the learned tokens (labels != -100).

    logits (B, L, V), labels (B, L) aligned with input_ids: position t predicts token t+1.
    """
    learned = labels[:, 1:] != IGNORE
    student = student_logits[:, :-1][learned].float()  # (N, V): only the positions that are learned
    teacher = teacher_logits[:, :-1][learned].float()
    targets = labels[:, 1:][learned]

    ce = F.cross_entropy(student, targets)
    log_p_student = F.log_softmax(student / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=-1)
    # KL(teacher || student) = sum_v p_t(v) * (log p_t(v) - log p_s(v)): summed over the vocabulary,
    # averaged over tokens. The teacher's side is a constant target (its logits carry no gradient).
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1).mean()
    loss = alpha * ce + (1 - alpha) * temperature ** 2 * kl
    return loss, ce, kl


def load_teacher(args, run):
    """The teacher, with its own config from its meta, frozen: eval mode (no dropout), no gradients."""
    overrides = {"hidden_size": args.teacher_hidden_size, "num_hidden_layers": args.teacher_num_hidden_layers,
                 "use_moe": None if args.teacher_use_moe is None else bool(args.teacher_use_moe)}
    # A stage name is resolved with the teacher's own size flags: full_sft -> out/full_sft_768.pth.
    path = resolve_weight(SimpleNamespace(out_dir=args.out_dir, hidden_size=args.teacher_hidden_size or 768,
                                          use_moe=args.teacher_use_moe), args.teacher_weight)
    if path is None:
        sys.exit("--teacher_weight: distillation needs a teacher (a stage name or a checkpoint path)")
    try:
        teacher, meta = load_model(path, overrides, device=run.device, quiet=not run.is_main)
    except CheckpointError as e:
        sys.exit(f"--teacher_weight: {e} (the teacher's size flags: --teacher_hidden_size, --teacher_use_moe)")
    teacher.eval().requires_grad_(False)
    n = sum(p.numel() for p in teacher.parameters())
    run.print(f"teacher: {path}, {n / 1e6:.2f}M parameters, hidden {teacher.config.hidden_size} x "
              f"{teacher.config.num_hidden_layers} layers{', MoE' if teacher.config.use_moe else ''}")
    return teacher, meta


def check_same_vocab(teacher, teacher_meta: dict, tokenizer, tokenizer_path: str):
    """Token id i must mean the same string for both models, or the KL compares unrelated distributions.
    The size must match; when the teacher's meta names another tokenizer folder, its vocabulary must too."""
    if teacher.config.vocab_size != len(tokenizer):
        sys.exit(f"teacher vocab {teacher.config.vocab_size} != student tokenizer vocab {len(tokenizer)} "
                 f"({tokenizer_path}): white-box distillation needs one shared tokenizer; for a teacher with its "
                 f"own tokenizer use black-box distillation (scripts/distill_blackbox.py)")
    teacher_tokenizer = teacher_meta.get("args", {}).get("tokenizer_path")
    if teacher_tokenizer and os.path.isdir(teacher_tokenizer) \
            and os.path.realpath(teacher_tokenizer) != os.path.realpath(tokenizer_path) \
            and tokenizer_fingerprint(load_tokenizer(teacher_tokenizer)) != tokenizer_fingerprint(tokenizer):
        sys.exit(f"the teacher was trained with the tokenizer {teacher_tokenizer}, whose vocabulary differs from "
                 f"{tokenizer_path}: pass --tokenizer_path {teacher_tokenizer} (the student must share it)")


def teacher_kl(student, teacher, dataset, args, run, max_batches: int | None = None) -> float:
    """Mean KL(teacher || student) at temperature 1 per learned token on held-out data: how far the student's
    predictions are from the teacher's (0 = identical)."""
    def measure(batch):
        ids, labels = batch["input_ids"], batch["labels"]
        _, _, kl = distillation_loss(student(ids).logits, teacher(ids).logits, labels, temperature=1.0)
        tokens = (labels[:, 1:] != IGNORE).sum()
        return {"kl": kl * tokens, "tokens": tokens}  # the batch's mean KL back to a sum

    sums = held_out_sums(student, dataset, args, run, measure, max_batches)
    return sums.get("kl", 0.0) / max(sums.get("tokens", 0.0), 1.0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, learning_rate=5e-6, from_weight="full_sft", save_weight="full_dist")
    parser.add_argument("--teacher_weight", default="full_sft",
                        help="stage name (resolved with the teacher's size flags) or a checkpoint path")
    parser.add_argument("--teacher_hidden_size", type=int, default=None,
                        help="default: from the teacher's meta; a stage name needs it for the file name (else 768)")
    parser.add_argument("--teacher_num_hidden_layers", type=int, default=None, help="default: from the teacher's meta")
    parser.add_argument("--teacher_use_moe", type=int, default=None, choices=[0, 1],
                        help="default: from the teacher's meta")
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the data's CE; 1 - alpha goes to the KL")
    parser.add_argument("--temperature", type=float, default=1.5, help="softens both distributions in the KL")
    args = parser.parse_args()
    run = setup_run(args)

    tokenizer = load_tokenizer(args.tokenizer_path)
    train_data, val_data = load_datasets(SFTDataset, *data_paths(args.data_path, args.val_path, "sft"), tokenizer,
                                         args.max_seq_len, skip_bad=args.skip_bad)
    teacher, teacher_meta = load_teacher(args, run)
    check_same_vocab(teacher, teacher_meta, tokenizer, args.tokenizer_path)
    model = build_model(args, run, tokenizer)

    byte_lengths = token_byte_lengths(tokenizer)
    if val_data:
        teacher_loss, _ = evaluate(teacher, val_data, args, run, byte_lengths, args.eval_batches)
        run.print(f"teacher: val_loss {teacher_loss:.4f} (the student's target to approach)")

    def evaluate_fn(m):
        loss, bpb = evaluate(m, val_data, args, run, byte_lengths, args.eval_batches)
        return {"val_loss": loss, "val_bpb": bpb,
                "val_kl_teacher": teacher_kl(m, teacher, val_data, args, run, args.eval_batches)}

    session = Session(args, run, model, train_data, args.save_weight, tokenizer,
                      evaluate_fn=evaluate_fn if val_data else None)
    for batch in session.batches():
        with run.autocast():
            with torch.no_grad():
                teacher_logits = teacher(batch["input_ids"]).logits
            out = session.model(batch["input_ids"])
            loss, ce, kl = distillation_loss(out.logits, teacher_logits, batch["labels"], args.alpha, args.temperature)
        session.backward(loss + out.aux_loss)
        if session.ready:
            session.step(loss, ce=ce.detach(), kl=kl.detach())
    session.finish()


if __name__ == "__main__":
    main()
