"""Direct Preference Optimization (Rafailov et al. 2023): the SFT model learns which of two replies is better.

    python train_dpo.py                                     # out/full_sft_512.pth + demo preference pairs
    python train_dpo.py --data_path dataset/dpo.jsonl --learning_rate 1e-7 --max_seq_len 1024

Reads {"chosen": [messages], "rejected": [messages]} jsonl; writes out/rlhf_<hidden>[_moe].pth.

A frozen copy of the SFT model is the reference. The implicit reward of a reply y to a prompt x is how much
more likely the policy finds it than the reference does, r(y) = beta * (log pi(y|x) - log ref(y|x)), and
the loss -log sigmoid(r(chosen) - r(rejected)) pushes the chosen reply up and the rejected one down relative
to the reference: RLHF's objective (reward minus beta x KL to the reference) without a reward model or
sampling. A small beta lets the policy move far from the reference, a large one holds it close.

--logp_mode sum (default) scores a reply by its summed token log-probs, log pi(y|x) itself: the quantity the
DPO derivation is about, and what trl's default "sigmoid" loss uses. --logp_mode mean averages over the
reply's tokens instead (minimind's original script, trl's "sigmoid_norm"): long and short replies weigh
alike, but every reward shrinks by the reply's length, so mean needs a beta larger by about the typical
reply length in tokens to push as hard (on the demo, mean with beta 1.0 behaves like sum with beta 0.1).

--sft_weight w adds w x the ordinary SFT loss on the chosen replies (trl: loss_type ["sigmoid", "sft"],
"RPO"). DPO alone can lower its loss by making both replies less likely, the good ones included; the SFT
term holds the chosen replies up. Default 0 (plain DPO).

Learning rate: the published runs use 1e-8...5e-7 on dpo.jsonl (hundreds of thousands of pairs, a model that
must not drift); use that range for the big datasets. The demo (3,000 pairs, 100 steps of 8) uses 1e-4 with
--sft_weight 1, chosen by measurement: there DPO unlearns the evasive replies the SFT data taught (held-out
preference accuracy 0.54 -> 0.72); without the SFT term the same run costs more answer accuracy, and at
1e-5 the preferences hardly move in 100 steps. The default, 1e-6, sits between the two: safe for a real
model, slow on the demo. Watch pref_acc on --val_path and the answers, not the loss alone.
"""
import argparse
import copy

import torch
import torch.nn.functional as F

from demo import data_paths
from model.checkpoint import build_model, load_tokenizer
from model.dataloader import load_datasets
from model.dataset import DPODataset
from model.loss_eval import held_out_sums
from model.losses import sequence_logprobs, token_logprobs
from model.runtime import add_common_args, setup_run
from model.session import Session


def preference_logps(model, batch, mode: str):
    """Sequence log-probs of the chosen and rejected replies, the chosen replies' mean per-token NLL (the
    SFT loss on them) and the MoE aux loss, from ONE forward: chosen and rejected are padded to the same
    length, so they stack along the batch (one pass, better kernels)."""
    ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])
    labels = torch.cat([batch["chosen_labels"], batch["rejected_labels"]])  # -100 outside assistant replies
    out = model(ids)  # right padding after the reply: causal attention never lets it reach a scored token
    logp, mask = token_logprobs(out.logits, labels)
    chosen, rejected = sequence_logprobs(logp, mask, mode).chunk(2)
    n = len(chosen)
    chosen_nll = -(logp[:n] * mask[:n]).sum() / mask[:n].sum().clamp(min=1)
    return chosen, rejected, chosen_nll, out.aux_loss


def dpo_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta: float):
    """Per-pair DPO loss and the implicit rewards beta * log(pi / ref) of the chosen and rejected replies."""
    loss = -F.logsigmoid(beta * ((pi_chosen - ref_chosen) - (pi_rejected - ref_rejected)))
    return loss, beta * (pi_chosen - ref_chosen).detach(), beta * (pi_rejected - ref_rejected).detach()


def evaluate_preferences(policy, reference, dataset, args, run) -> dict:
    """On held-out pairs: the DPO loss, reward accuracy (chosen reward > rejected reward), and the preference
    accuracy of the policy and of the reference (the SFT model): how often each finds the chosen reply
    more likely than the rejected one, by --logp_mode."""
    def measure(batch):
        pi_chosen, pi_rejected, _, _ = preference_logps(policy, batch, args.logp_mode)
        ref_chosen, ref_rejected, _, _ = preference_logps(reference, batch, args.logp_mode)
        loss, chosen_reward, rejected_reward = dpo_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, args.beta)
        return {"val_loss": loss.sum(), "reward_acc": (chosen_reward > rejected_reward).sum(),
                "pref_acc": (pi_chosen > pi_rejected).sum(), "sft_pref_acc": (ref_chosen > ref_rejected).sum(),
                "pairs": len(loss)}

    sums = held_out_sums(policy, dataset, args, run, measure, args.eval_batches)
    pairs = max(sums.pop("pairs", 0), 1)
    return {name: total / pairs for name, total in sums.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, learning_rate=1e-6, from_weight="full_sft", save_weight="rlhf", batch_size=8)
    g = parser.add_argument_group("dpo")
    g.add_argument("--beta", type=float, default=0.1, help="strength of the pull toward the reference model")
    g.add_argument("--logp_mode", default="sum", choices=["sum", "mean"],
                   help="a reply's log-prob: summed over its tokens (DPO, trl) or their mean (minimind)")
    g.add_argument("--sft_weight", type=float, default=0.0,
                   help="adds this times the SFT loss on the chosen replies (trl: loss_type [sigmoid, sft])")
    args = parser.parse_args()
    run = setup_run(args)

    tokenizer = load_tokenizer(args.tokenizer_path)
    train_data, val_data = load_datasets(DPODataset, *data_paths(args.data_path, args.val_path, "dpo"), tokenizer,
                                         args.max_seq_len, skip_bad=args.skip_bad)
    model = build_model(args, run, tokenizer)
    # The reference is the SFT model as loaded, copied before the Session (which, on --resume, puts the
    # policy's trained weights back): frozen, in eval mode, never handed to the optimizer.
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    evaluate_fn = (lambda policy: evaluate_preferences(policy, reference, val_data, args, run)) if val_data else None
    session = Session(args, run, model, train_data, args.save_weight, tokenizer, evaluate_fn=evaluate_fn)

    for batch in session.batches():
        with run.autocast():
            with torch.no_grad():
                ref_chosen, ref_rejected, _, _ = preference_logps(reference, batch, args.logp_mode)
            pi_chosen, pi_rejected, chosen_nll, aux_loss = preference_logps(session.model, batch, args.logp_mode)
            losses, chosen_reward, rejected_reward = dpo_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected,
                                                              args.beta)
            loss = losses.mean() + args.sft_weight * chosen_nll
        session.backward(loss + aux_loss)
        if session.ready:
            session.step(loss, reward_margin=(chosen_reward - rejected_reward).mean().item(),
                         reward_acc=(chosen_reward > rejected_reward).float().mean().item(),
                         chosen_nll=chosen_nll.item())
    session.finish()


if __name__ == "__main__":
    main()
