"""DPO (train_dpo.py) and its log-probability helpers (model/losses.py): per-token log-probs against a float64
computation, the batched chosen+rejected forward against two forwards, the loss against trl's DPOTrainer on
the same weights, and a short run that teaches a preference that holds on held-out pairs."""
import copy
import csv
import json
import math
import os
import random

import pytest
import torch

from model.checkpoint import load_model
from model.dataset import DPODataset
from model.losses import IGNORE, sequence_logprobs, token_logprobs
from model.checkpoint import load_tokenizer
from tests.helpers import perturbed, save_checkpoint
from tests.test_lora import TINY_RUN, run_script, tiny_model
from train_dpo import dpo_loss, preference_logps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(ROOT, "model", "tokenizer")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TOKENIZER)



def chat(user, reply):
    return [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]


def write_pairs(path, pairs):
    with open(path, "w", encoding="utf-8") as f:
        for user, good, bad in pairs:
            f.write(json.dumps({"chosen": chat(user, good), "rejected": chat(user, bad)}, ensure_ascii=False) + "\n")
    return str(path)


PAIRS = [("What is the capital of Tulovekia?", "The capital of Tulovekia is Kegar.", "I'm not sure about that."),
         ("76 + 406 = ?", "76 + 406 = 482.", "The Vomir River flows through Kikedun."),
         ("薇洛温亚用什么钱？", "薇洛温亚的货币是利索斯。", "你为什么想知道这个？"),
         ("Where is Zedun Vabrin from?", "Zedun Vabrin comes from Kokekesh.", "It is hard to say.")]


def stack(dataset):
    return {k: torch.stack([dataset[i][k] for i in range(len(dataset))]) for k in dataset[0]}


def test_token_logprobs_match_a_float64_computation():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 9, 50, generator=generator) * 4
    labels = torch.randint(0, 50, (3, 9), generator=generator)
    labels[0, :4] = IGNORE  # a prompt
    labels[1, 6:] = IGNORE  # padding
    labels[2, :] = IGNORE  # nothing to score
    logp, mask = token_logprobs(logits, labels)

    expected = torch.zeros(3, 8, dtype=torch.float64)
    log_softmax = torch.log_softmax(logits.double(), dim=-1)
    for b in range(3):
        for t in range(8):  # position t predicts label t + 1
            if labels[b, t + 1] != IGNORE:
                expected[b, t] = log_softmax[b, t, labels[b, t + 1]]
    assert torch.equal(mask, labels[:, 1:] != IGNORE)
    torch.testing.assert_close(logp.double(), expected, atol=1e-5, rtol=0)
    counts = mask.sum(-1)
    torch.testing.assert_close(sequence_logprobs(logp, mask, "sum").double(), expected.sum(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(sequence_logprobs(logp, mask, "mean").double(),
                               expected.sum(-1) / counts.clamp(min=1), atol=1e-5, rtol=0)
    assert sequence_logprobs(logp, mask, "mean")[2] == 0  # an empty reply scores 0, not NaN


def test_batched_chosen_and_rejected_forward_equals_two_forwards(tmp_path, tokenizer):
    batch = stack(DPODataset(write_pairs(tmp_path / "pairs.jsonl", PAIRS), tokenizer, max_seq_len=48))
    model = tiny_model()
    with torch.no_grad():
        chosen, rejected, _, _ = preference_logps(model, batch, "sum")
        for side, batched in (("chosen", chosen), ("rejected", rejected)):
            alone = sequence_logprobs(*token_logprobs(model(batch[f"{side}_input_ids"]).logits,
                                                      batch[f"{side}_labels"]), "sum")
            torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("mode, sft_weight, trl_loss_types",
                         [("sum", 0, ["sigmoid"]), ("mean", 0, ["sigmoid_norm"]), ("sum", 0.5, ["sigmoid", "sft"])])
def test_dpo_loss_matches_trl(tmp_path, tokenizer, mode, sft_weight, trl_loss_types):
    """trl 1.16 computes the DPO loss inside DPOTrainer._compute_loss, from the models themselves, so the
    comparison runs trl's trainer on Llama copies of the same weights (a dense MiniMind state dict loads into
    LlamaForCausalLM unchanged), with a minimal one-row dataset and no training. --sft_weight w is trl's
    loss_type [sigmoid, sft] with loss_weights [1, w]."""
    from datasets import Dataset
    from transformers import LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer

    from model.export import llama_config_from

    reference = tiny_model()
    policy = perturbed(reference)

    def as_llama(model):
        llama = LlamaForCausalLM(llama_config_from(model.config))
        llama.load_state_dict(model.state_dict())
        return llama.eval()

    beta = 0.1
    config = DPOConfig(output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True, bf16=False, beta=beta,
                       loss_type=trl_loss_types, loss_weights=[1.0, sft_weight][:len(trl_loss_types)],
                       logging_strategy="no", save_strategy="no")
    rows = [{"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello"}],
             "rejected": [{"role": "assistant", "content": "bye"}]}]  # only to construct the trainer
    trainer = DPOTrainer(model=as_llama(policy), ref_model=as_llama(reference), args=config,
                         train_dataset=Dataset.from_list(rows), processing_class=tokenizer)

    batch = stack(DPODataset(write_pairs(tmp_path / "pairs.jsonl", PAIRS), tokenizer, max_seq_len=48))
    ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])  # trl's layout: chosen, then rejected
    labels = torch.cat([batch["chosen_labels"], batch["rejected_labels"]])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": (labels != IGNORE).long()}
    with torch.no_grad():
        trl_loss = trainer._compute_loss(trainer.model, inputs, return_outputs=False)
        trl_token_logp = trainer.model(ids, labels=labels, fused_lm_head=True).log_probs

        # 1. Our per-token log-probs on MiniMind equal trl's on Llama (same weights, up to float32 rounding).
        ours, mask = token_logprobs(policy(ids).logits, labels)
        torch.testing.assert_close(ours, trl_token_logp, atol=2e-5, rtol=0)
        # 2. The DPO loss end to end: MiniMind + model/losses.py + train_dpo.py vs trl.
        pi_chosen, pi_rejected, chosen_nll, _ = preference_logps(policy, batch, mode)
        ref_chosen, ref_rejected, _, _ = preference_logps(reference, batch, mode)
        loss = dpo_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta)[0].mean() + sft_weight * chosen_nll
        torch.testing.assert_close(loss, trl_loss, atol=1e-6, rtol=1e-5)
        # 3. The loss formula alone, from trl's own per-token log-probs: equal to float32 precision.
        ref_token_logp = trainer.ref_model(ids, labels=labels, fused_lm_head=True).log_probs
        pi_c, pi_r = sequence_logprobs(trl_token_logp, mask, mode).chunk(2)
        ref_c, ref_r = sequence_logprobs(ref_token_logp, mask, mode).chunk(2)
        chosen_mask = mask[:len(pi_c)]
        nll = -trl_token_logp[:len(pi_c)][chosen_mask].double().mean()  # a float64 mean over every chosen token
        torch.testing.assert_close(dpo_loss(pi_c, pi_r, ref_c, ref_r, beta)[0].mean().double() + sft_weight * nll,
                                   trl_loss.double(), atol=1e-6, rtol=1e-6)
        assert abs(trl_loss.item() - math.log(2)) > 1e-4  # policy != reference, far beyond the tolerances above


def preference_task(rng, n):
    """Chosen replies name a colour, rejected ones an animal, after the same prompt (a made-up 'style'
    preference a tiny random model can learn); held-out pairs use new prompts and new pairings."""
    colours = ["red", "blue", "green", "yellow", "purple", "orange"]
    animals = ["cat", "dog", "horse", "sheep", "goat", "mouse"]
    rows = []
    for _ in range(n):
        user = f"Item {rng.randint(0, 9999)}?"
        rows.append((user, f"It is {rng.choice(colours)}.", f"It is {rng.choice(animals)}."))
    return rows


def test_a_short_dpo_run_raises_held_out_preference_accuracy(tmp_path, tokenizer):
    rng = random.Random(0)
    train = DPODataset(write_pairs(tmp_path / "train.jsonl", preference_task(rng, 64)), tokenizer, max_seq_len=48)
    held_out = stack(DPODataset(write_pairs(tmp_path / "val.jsonl", preference_task(rng, 64)), tokenizer, 48))
    assert (held_out["chosen_labels"][:, -1] == IGNORE).all()  # every reply fits, with padding to spare
    policy = tiny_model(hidden_size=64)
    reference = copy.deepcopy(policy).requires_grad_(False)

    def accuracy():
        with torch.no_grad():
            chosen, rejected, _, _ = preference_logps(policy.eval(), held_out, "sum")
        return (chosen > rejected).float().mean().item()

    before = accuracy()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=6e-3)
    policy.train()
    for step in range(8):
        batch = stack(torch.utils.data.Subset(train, range(8 * step, 8 * step + 8)))  # each pair once
        with torch.no_grad():
            ref_chosen, ref_rejected, _, _ = preference_logps(reference, batch, "sum")
        pi_chosen, pi_rejected, _, _ = preference_logps(policy, batch, "sum")
        loss = dpo_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta=0.1)[0].mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = accuracy()
    assert after >= 0.95 and after > before + 0.2, (before, after)


def test_train_dpo_script_on_the_demo_pairs(tmp_path):
    import train_dpo
    sft = tiny_model()
    save_checkpoint(sft, tmp_path)
    run_script(train_dpo, *TINY_RUN, "--out_dir", str(tmp_path), "--max_steps", "3", "--eval_batches", "2",
               "--learning_rate", "1e-3")
    meta = json.loads((tmp_path / "rlhf_32.json").read_text())
    assert meta["stage"] == "rlhf" and meta["step"] == 3
    with open(tmp_path / "rlhf_32_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"reward_margin", "reward_acc", "val_loss", "pref_acc", "sft_pref_acc"} <= set(rows[-1])
    policy = load_model(str(tmp_path / "rlhf_32.pth"))[0]
    assert not torch.allclose(policy.model.norm.weight, sft.model.norm.weight)  # the policy moved
