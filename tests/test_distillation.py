"""White-box distillation (train_distillation.py): the loss against an independent float64 reference, a
frozen teacher, the shared-vocabulary check, and a student that moves toward its teacher."""
import json
import random
import shutil
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from model import MiniMindConfig, MiniMindForCausalLM
from model.checkpoint import load_model, save_weights
from model.dataset import IGNORE, SFTDataset
from model.checkpoint import load_tokenizer
from model.runtime import Run
from tests.helpers import TOKENIZER
from train_distillation import check_same_vocab, distillation_loss, load_teacher, main, teacher_kl

CPU = Run(torch.device("cpu"), torch.float32)


def tiny(hidden, vocab_size=6400, seed=0):
    torch.manual_seed(seed)
    return MiniMindForCausalLM(MiniMindConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2))


def teacher_args(path):
    return SimpleNamespace(out_dir="unused", teacher_weight=str(path), teacher_hidden_size=None,
                           teacher_num_hidden_layers=None, teacher_use_moe=None)


# ----------------------------------------------------------------------------------------------------------
# The loss


def reference_loss(student, teacher, labels, alpha, temperature):
    """Position by position in float64 numpy, straight from the definitions."""
    def log_softmax(x):
        return x - np.log(np.exp(x - x.max()).sum()) - x.max()

    ces, kls = [], []
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            target = labels[b, t + 1]
            if target == IGNORE:
                continue
            ces.append(-log_softmax(student[b, t])[target])
            log_ps, log_pt = log_softmax(student[b, t] / temperature), log_softmax(teacher[b, t] / temperature)
            kls.append(np.sum(np.exp(log_pt) * (log_pt - log_ps)))
    return alpha * np.mean(ces) + (1 - alpha) * temperature ** 2 * np.mean(kls), np.mean(ces), np.mean(kls)


@pytest.mark.parametrize("alpha,temperature", [(0.5, 1.5), (0.0, 1.0), (1.0, 2.0), (0.3, 4.0), (0.9, 0.7)])
def test_loss_equals_a_float64_reference(alpha, temperature):
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 7, 11, generator=g) * 3, torch.randn(2, 7, 11, generator=g) * 3
    labels = torch.randint(0, 11, (2, 7), generator=g)
    labels[0, :3] = IGNORE  # a prompt: not learned
    labels[1, 5:] = IGNORE  # padding
    loss, ce, kl = distillation_loss(student, teacher, labels, alpha, temperature)
    expected = reference_loss(student.double().numpy(), teacher.double().numpy(), labels.numpy(), alpha, temperature)
    for got, want in zip((loss, ce, kl), expected):
        assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_kl_is_zero_for_an_identical_student_and_the_loss_is_ce_then():
    logits = torch.randn(2, 5, 9)
    labels = torch.randint(0, 9, (2, 5))
    loss, ce, kl = distillation_loss(logits, logits.clone(), labels, alpha=0.5, temperature=2.0)
    assert kl.item() == pytest.approx(0, abs=1e-6)
    assert loss.item() == pytest.approx(0.5 * ce.item(), rel=1e-6)


# ----------------------------------------------------------------------------------------------------------
# The teacher


def test_teacher_is_frozen_in_eval_mode_and_gets_no_gradient(tmp_path):
    save_weights(tiny(64), str(tmp_path / "full_sft_64.pth"), {"stage": "full_sft"}, dtype=torch.float32)
    teacher, _ = load_teacher(teacher_args(tmp_path / "full_sft_64.pth"), CPU)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert teacher.config.hidden_size == 64  # its own config, from its meta

    student = tiny(32)
    ids = torch.randint(3, 6400, (2, 12))
    loss, _, _ = distillation_loss(student(ids).logits, teacher(ids).logits, ids, 0.5, 1.5)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())


def test_a_teacher_with_another_vocabulary_is_refused(tmp_path):
    tokenizer = load_tokenizer(TOKENIZER)
    with pytest.raises(SystemExit, match="teacher vocab 6500 != student tokenizer vocab 6400"):
        check_same_vocab(tiny(32, vocab_size=6500), {}, tokenizer, TOKENIZER)

    # Same size, different vocabulary: the teacher's meta names a tokenizer whose ids mean other strings.
    other = tmp_path / "other_tokenizer"
    shutil.copytree(TOKENIZER, other)
    data = json.loads((other / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    a, b = (token for token, i in vocab.items() if i in (300, 301))
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(SystemExit, match="vocabulary differs"):
        check_same_vocab(tiny(32), {"args": {"tokenizer_path": str(other)}}, tokenizer, TOKENIZER)
    check_same_vocab(tiny(32), {"args": {"tokenizer_path": TOKENIZER}}, tokenizer, TOKENIZER)  # the same: fine


# ----------------------------------------------------------------------------------------------------------
# A short run


def write_chats(path, n, seed):
    """Arithmetic chats: enough structure for a tiny teacher to learn something in a few steps."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            a, b = rng.randint(1, 20), rng.randint(1, 20)
            chat = [{"role": "user", "content": f"What is {a} + {b}?"},
                    {"role": "assistant", "content": f"{a} + {b} = {a + b}."}]
            f.write(json.dumps({"conversations": chat}) + "\n")
    return str(path)


def train_briefly(model, dataset, steps, lr=3e-3, batch_size=8):
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        batch = [dataset[(step * batch_size + i) % len(dataset)] for i in range(batch_size)]
        ids, labels = torch.stack([s["input_ids"] for s in batch]), torch.stack([s["labels"] for s in batch])
        model(ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def test_distilled_student_moves_toward_the_teacher(tmp_path, monkeypatch):
    tokenizer = load_tokenizer(TOKENIZER)
    train_path = write_chats(tmp_path / "train.jsonl", 64, seed=0)
    val_path = write_chats(tmp_path / "val.jsonl", 16, seed=1)
    train_data = SFTDataset(train_path, tokenizer, 48)
    teacher = train_briefly(tiny(64, seed=1), train_data, steps=25)
    save_weights(teacher, str(tmp_path / "teacher.pth"), {"stage": "full_sft"}, dtype=torch.float32)
    save_weights(tiny(32, seed=2), str(tmp_path / "student.pth"), {"stage": "full_sft"}, dtype=torch.float32)

    monkeypatch.setattr(sys, "argv", [
        "train_distillation.py", "--from_weight", str(tmp_path / "student.pth"),
        "--teacher_weight", str(tmp_path / "teacher.pth"), "--data_path", train_path, "--val_path", val_path,
        "--out_dir", str(tmp_path / "out"), "--max_seq_len", "48", "--batch_size", "8", "--epochs", "2",
        "--max_steps", "16", "--learning_rate", "1e-2", "--device", "cpu", "--dtype", "float32", "--log_interval", "4"])
    main()

    val = SFTDataset(val_path, tokenizer, 48)
    args = SimpleNamespace(batch_size=8, seed=0)
    kl_before = teacher_kl(load_model(str(tmp_path / "student.pth"))[0], teacher, val, args, CPU)
    kl_after = teacher_kl(load_model(str(tmp_path / "out" / "full_dist_32.pth"))[0], teacher, val, args, CPU)
    assert kl_after < 0.5 * kl_before, (kl_before, kl_after)
