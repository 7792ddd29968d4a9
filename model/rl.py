"""The arithmetic of reinforcement learning from rewards, shared by train_grpo.py and train_ppo.py. Every
tensor here is per completion token in the layout `model.losses.token_logprobs` returns, (N, T) with a
mask that is True on the completion's tokens; a rollout's N rows are its prompts' groups of G, contiguous.

- GRPO (DeepSeekMath): no critic. Each prompt is sampled G times and a completion's advantage is its
  reward against its group's: (r - mean) / (std + eps) (`scale="group"`), or r - mean (`scale="none"`,
  Dr. GRPO: dividing by std over-weights the groups that are nearly all right or all wrong).
- The policy loss, given the log-probs now (logp) and when sampled (old_logp), ratio = exp(logp - old_logp):
    grpo   -min(ratio A, clip(ratio, 1 - eps, 1 + eps_high) A)         PPO's clipped surrogate
    cispo  -sg(min(ratio, cispo_clip)) A logp                           MiniMax-M1: the importance weight is
           clipped and detached, so every token keeps a gradient (PPO's clip zeroes the gradient of the
           tokens it clips, often the rare "but wait" tokens reasoning depends on).
  plus beta x KL(policy || reference), estimated per token by k3 = exp(ref - logp) - (ref - logp) - 1
  (unbiased, always >= 0). Averaged over all completion tokens of the batch ("token", DAPO) or per
  completion first and then over completions ("sequence", the original GRPO: short replies weigh more).
- PPO: a critic predicts each token's value; GAE turns per-token rewards and values into advantages;
  the value loss is clipped like the policy's.
"""
import copy

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4):
    """(advantages (N,), zero_variance (N // G,) bool) for rewards (N,) of N // G groups of G samples."""
    groups = rewards.view(-1, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True)  # unbiased, as minimind and trl compute it
    if scale == "group":
        centred = centred / (std + eps)
    elif scale != "none":
        raise ValueError(f"scale must be 'group' or 'none', got {scale!r}")
    return centred.reshape(-1), (groups == groups[:, :1]).all(dim=1)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the sampled token (Schulman's k3)."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


def masked_mean(x: torch.Tensor, mask: torch.Tensor, agg: str = "token") -> torch.Tensor:
    """Mean of x over the masked tokens: of all of them ("token"), or per row first, then over rows
    that have any ("sequence")."""
    mask = mask.to(x.dtype)
    if agg == "token":
        return (x * mask).sum() / mask.sum().clamp(min=1)
    if agg == "sequence":
        per_row = (x * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        rows = (mask.sum(dim=1) > 0).to(x.dtype)
        return (per_row * rows).sum() / rows.sum().clamp(min=1)
    raise ValueError(f"agg must be 'token' or 'sequence', got {agg!r}")


def policy_loss(logp, old_logp, advantages, mask, loss_type: str = "cispo", epsilon: float = 0.2,
                epsilon_high: float | None = None, cispo_clip: float = 5.0, ref_logp=None, beta: float = 0.0,
                agg: str = "token") -> tuple[torch.Tensor, dict]:
    """The GRPO or CISPO loss (see the module docstring) and its diagnostics: clip_frac (share of tokens
    where the clip bites in the direction the advantage pushes: what trl logs), kl (k3 to the reference,
    when given), approx_kl (policy vs sampler).
    advantages: (N,) one per completion, or (N, T) per token (PPO)."""
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    if loss_type == "grpo":
        clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high)
        per_token = -torch.min(ratio * advantages, clipped * advantages)
        was_clipped = ((ratio < 1 - epsilon) & (advantages < 0)) | ((ratio > 1 + epsilon_high) & (advantages > 0))
    elif loss_type == "cispo":
        per_token = -torch.clamp(ratio, max=cispo_clip).detach() * advantages * logp
        was_clipped = (ratio > cispo_clip) & (advantages > 0)
    else:
        raise ValueError(f"loss_type must be 'grpo' or 'cispo', got {loss_type!r}")
    metrics = {}
    if beta and ref_logp is not None:
        kl = kl_k3(logp, ref_logp)
        per_token = per_token + beta * kl
        metrics["kl"] = masked_mean(kl.detach(), mask).item()
    metrics["clip_frac"] = masked_mean(was_clipped.float(), mask).item()
    metrics["approx_kl"] = masked_mean((-log_ratio).detach(), mask).item()  # k1 estimate of KL(old || new)
    return masked_mean(per_token, mask, agg), metrics


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95):
    """Generalised advantage estimation over each row's masked (contiguous) tokens:
    delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1}, with V and A zero after the last
    token. Returns (advantages, returns = advantages + values), both zero outside the mask."""
    mask = mask.to(values.dtype)
    values = values * mask
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * mask[:, t]
        next_value, next_advantage = values[:, t], advantages[:, t]
    return advantages, (advantages + values) * mask


def value_loss(values, old_values, returns, mask, clip: float = 0.2) -> torch.Tensor:
    """PPO's clipped value loss: 0.5 max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2), token mean."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    loss = 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2)
    return masked_mean(loss, mask)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """x normalised to mean 0, std 1 over the masked tokens (PPO's advantage normalisation)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


class ActorCritic(torch.nn.Module):
    """PPO's two models in one module (so DDP and the optimizer see one): the actor, a MiniMind causal LM,
    and the critic, a linear value head on the actor's own trunk (`shared`: one forward, and the value
    loss shapes the trunk too) or on a copy of the starting trunk that trains apart (minimind's PPO: a
    critic initialised from the same SFT weights). The head starts at zero: every value is 0 at first."""

    def __init__(self, actor, shared: bool = False):
        super().__init__()
        self.actor, self.config = actor, actor.config
        self.critic_trunk = None if shared else copy.deepcopy(actor.model)
        self.value_head = torch.nn.Linear(actor.config.hidden_size, 1)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)

    @property
    def device(self):
        return self.actor.device

    def forward(self, input_ids):
        """(logits (B, L, V), values (B, L) in float32, MoE aux loss); values[:, t] estimates the return
        from the state after token t, i.e. before the token that logits[:, t] predicts."""
        out = self.actor(input_ids)
        hidden, aux_loss = out.hidden_states, out.aux_loss
        if self.critic_trunk is not None:
            hidden, critic_aux = self.critic_trunk(input_ids)
            aux_loss = aux_loss + critic_aux
        return out.logits, self.value_head(hidden).squeeze(-1).float(), aux_loss

    def critic_state_dict(self) -> dict:
        """The critic's own weights (the head, and its trunk when separate), for ppo_critic_<hidden>.pth."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("actor.")}
