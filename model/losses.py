"""Log-probabilities of given tokens under a model: what DPO and RL (GRPO, PPO) build their losses from.

The losses themselves stay in the train scripts; these helpers only turn logits into "how likely did the
model find the reply it was shown", token by token and per sequence.
"""
import torch

from .dataset import IGNORE  # label of a token that does not count (prompt, padding)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(token), mask), both (batch, seq - 1): the log-probability the model gave each labelled token.

    `labels` are aligned with the input ids (as the datasets return them), so the logits at position t
    score the label at t + 1. Positions labelled -100 get log-prob 0 and mask False.

    log p(y) = logit_y - logsumexp(logits): the same as gathering from log_softmax, without materialising
    a second (batch, seq, vocab) tensor. Computed in float32, since a bf16 log-prob summed over a reply
    loses the small differences DPO and RL act on.
    """
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != IGNORE
    picked = logits.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # -100 -> any valid id, masked below
    logp = picked - logits.logsumexp(dim=-1)
    return logp * mask, mask


def sequence_logprobs(logp: torch.Tensor, mask: torch.Tensor, mode: str = "sum") -> torch.Tensor:
    """One number per sequence from per-token log-probs: "sum" is log p(whole reply); "mean" divides by the
    reply's token count (a length-normalised score: long and short replies on one scale)."""
    total = (logp * mask).sum(dim=-1)
    if mode == "sum":
        return total
    if mode == "mean":
        return total / mask.sum(dim=-1).clamp(min=1)
    raise ValueError(f"mode must be 'sum' or 'mean', got {mode!r}")


def token_entropy(logits: torch.Tensor, mask: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Mean entropy (nats) of the next-token distributions at the masked positions, `mask` aligned like
    `token_logprobs`' (batch, seq - 1). A diagnostic (a policy whose entropy collapses has stopped exploring)
    on detached logits, PPO's entropy bonus on live ones. A chunk of positions at a time: no second
    (positions, vocab) tensor of the whole batch at once when there is no graph to keep."""
    picked = logits[:, :-1][mask]
    total = picked.new_zeros((), dtype=torch.float32)
    for part in picked.split(chunk):
        logp = part.float().log_softmax(dim=-1)
        total += -(logp.exp() * logp).sum()
    return total / max(len(picked), 1)
