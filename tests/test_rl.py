"""The RL arithmetic (model/rl.py), its log-prob and entropy helpers (model/losses.py) and the in-process
rollout (model/rollout.py), each checked against something written apart from it:

- the policy losses (GRPO's clipped surrogate, DAPO's clip-higher, CISPO, the k3 KL penalty, token and
  sequence averaging), group advantages, GAE, the clipped value loss and the diagnostics against float64
  references written from the papers' formulas, one token at a time; gradients against float64 autograd
  of those references and against the gradients the papers derive;
- the same losses against trl's GRPOTrainer._compute_loss on the same weights and tokens, loss and
  gradients with respect to every parameter;
- rollouts against a plain forward over the rows `Rollout.batch` lays out, and a scripted model whose reply
  is known;
- token entropy against a float64 computation; ActorCritic's gradient flow against what its docstring says.
"""
import collections
import contextlib
import math
import types

import pytest
import torch

from model.chat import chat_prompt_ids
from model.losses import IGNORE, token_entropy, token_logprobs
from model.rl import ActorCritic, gae, group_advantages, masked_mean, policy_loss, value_loss, whiten
from model.rollout import Rollout, TorchRollout
from tests.helpers import THINKING_REPLY, perturbed, scripted_model, tiny_model, tokenizer

EOS = tokenizer().eos_token_id
PAD = tokenizer().pad_token_id
T = 0.7  # the sampling temperature of the rollout and parity tests: tokens are scored under logits / T


def close(actual, expected, atol=1e-6, rtol=1e-5):
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol)


# ----------------------------------------------------------------------------------------------------------
# 1. Float64 references from the papers' formulas


def fixed_batch():
    """N = 6 completions (2 prompts x G = 3) over 7 positions in token_logprobs' layout: each row's
    completion starts after its own prompt and is right-padded. Ratios run from e^-1.6 to e^1.6, far
    outside the clip range on both sides; advantages of both signs. Outside the mask every tensor holds
    garbage (finite), which must not reach the loss."""
    g = torch.Generator().manual_seed(0)
    starts, lengths = [0, 2, 1, 3, 0, 5], [7, 3, 5, 1, 4, 2]
    mask = torch.zeros(6, 7, dtype=torch.bool)
    for i, (s, n) in enumerate(zip(starts, lengths)):
        mask[i, s:s + n] = True
    old = -(torch.rand(6, 7, generator=g) * 3 + 0.05)
    logp = old + torch.rand(6, 7, generator=g) * 3.2 - 1.6
    ref = old + torch.randn(6, 7, generator=g) * 0.5
    for x, junk in ((logp, 1.5), (old, -7.0), (ref, 3.0)):
        x[~mask] = junk
    advantages = torch.tensor([-1.3, 0.7, 0.4, -1.1, -0.8, 0.2])
    return logp, old, ref, advantages, mask


EPS, EPS_HIGH, CISPO_CLIP = 0.2, 0.28, 2.0


def test_the_fixed_batch_exercises_every_clip():
    logp, old, _, advantages, mask = fixed_batch()
    ratio, a = torch.exp(logp - old)[mask], advantages[:, None].expand_as(mask)[mask]
    assert ((ratio > 1 + EPS_HIGH) & (a > 0)).sum() >= 3  # GRPO clips these on top ...
    assert ((ratio < 1 - EPS) & (a < 0)).sum() >= 3  # ... and these below
    assert ((ratio > 1 + EPS) & (ratio < 1 + EPS_HIGH) & (a > 0)).any()  # clip-higher lets this one through
    assert ((ratio > CISPO_CLIP) & (a > 0)).sum() >= 2  # CISPO caps these weights
    assert ((ratio > 1 + EPS) & (a < 0)).any() and ((ratio < 1 - EPS) & (a > 0)).any()  # never clipped


def reference_policy_loss(logp, old, ref, advantages, mask, loss_type, epsilon=EPS, epsilon_high=None,
                          cispo_clip=CISPO_CLIP, beta=0.0, agg="token"):
    """The per-token objectives in float64, token by token; `logp` a float64 leaf for autograd.
    grpo:  -min(r A, clip(r, 1 - eps, 1 + eps_high) A)   PPO's surrogate as GRPO (DeepSeekMath) uses it;
                                                          eps_high: DAPO's clip-higher
    cispo: -sg(min(r, clip)) A log pi                     MiniMax-M1 (the weight is a constant)
    + beta (pi_ref / pi - log(pi_ref / pi) - 1)           DeepSeekMath's KL estimator (Schulman's k3)
    token: the mean over every completion token of the batch (DAPO);
    sequence: each completion's mean, then the mean over completions (GRPO)."""
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    rows = []
    for i in range(mask.shape[0]):
        terms = []
        for t in range(mask.shape[1]):
            if not mask[i, t]:
                continue
            a = float(advantages[i])
            ratio = torch.exp(logp[i, t] - float(old[i, t]))
            if loss_type == "grpo":
                term = -torch.minimum(ratio * a, torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high) * a)
            else:
                term = -min(ratio.item(), cispo_clip) * a * logp[i, t]
            if beta:
                d = float(ref[i, t]) - logp[i, t]
                term = term + beta * (torch.exp(d) - d - 1)
            terms.append(term)
        rows.append(terms)
    if agg == "token":
        return sum(sum(r) for r in rows) / sum(map(len, rows))
    means = [sum(r) / len(r) for r in rows if r]
    return sum(means) / len(means)


def loss_and_grad(fn, logp):
    leaf = logp.clone().requires_grad_()
    loss = fn(leaf)
    loss = loss[0] if isinstance(loss, tuple) else loss
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad


@pytest.mark.parametrize("loss_type, agg, beta, epsilon_high", [
    ("grpo", "token", 0.0, None), ("grpo", "token", 0.05, EPS_HIGH), ("grpo", "sequence", 0.0, None),
    ("grpo", "sequence", 0.05, EPS_HIGH), ("cispo", "token", 0.0, None), ("cispo", "token", 0.05, None),
    ("cispo", "sequence", 0.05, None)])
def test_policy_loss_and_gradient_match_the_papers_formulas(loss_type, agg, beta, epsilon_high):
    logp, old, ref, advantages, mask = fixed_batch()
    settings = dict(epsilon=EPS, epsilon_high=epsilon_high, cispo_clip=CISPO_CLIP, beta=beta, agg=agg)
    loss, grad = loss_and_grad(lambda x: policy_loss(x, old, advantages, mask, loss_type, ref_logp=ref, **settings),
                               logp)
    expected, expected_grad = loss_and_grad(
        lambda x: reference_policy_loss(x, old.double(), ref.double(), advantages.double(), mask, loss_type,
                                        **settings), logp.double())
    close(loss, expected)
    close(grad, expected_grad)
    assert (grad[~mask] == 0).all()


def test_cispo_gradient_is_the_clipped_weight_times_the_advantage_on_every_token():
    """d loss / d logp = -min(r, clip) A / N_tokens: the tokens whose ratio passed the clip keep a gradient,
    weighted by the clip. GRPO's clip zeroes exactly the tokens it counts as clipped."""
    logp, old, _, advantages, mask = fixed_batch()
    ratio, a, n = torch.exp(logp - old), advantages[:, None], mask.sum()
    _, cispo = loss_and_grad(lambda x: policy_loss(x, old, advantages, mask, "cispo", cispo_clip=CISPO_CLIP), logp)
    close(cispo, torch.where(mask, -torch.clamp(ratio, max=CISPO_CLIP) * a / n, 0))

    _, grpo = loss_and_grad(lambda x: policy_loss(x, old, advantages, mask, "grpo", EPS, EPS_HIGH), logp)
    clipped = ((ratio > 1 + EPS_HIGH) & (a > 0)) | ((ratio < 1 - EPS) & (a < 0))
    close(grpo, torch.where(mask & ~clipped, -ratio * a / n, 0))
    clip_frac = policy_loss(logp, old, advantages, mask, "grpo", EPS, EPS_HIGH)[1]["clip_frac"]
    assert clip_frac == pytest.approx(((grpo == 0) & mask).sum().item() / n.item())
    capped = mask & (ratio > CISPO_CLIP) & (a > 0)
    assert capped.any() and (grpo[capped] == 0).all() and (cispo[capped] != 0).all()


def test_clip_frac_approx_kl_and_kl_on_a_hand_counted_case():
    ratio = torch.tensor([[0.5, 1.0, 1.5, 2.0], [0.5, 0.9, 3.0, 7.0]])
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    old = torch.full((2, 4), -2.0)
    logp = old + ratio.log()
    advantages = torch.tensor([1.0, -1.0])
    # A > 0 clips r > 1.2 (1.5, 2.0); A < 0 clips r < 0.8 (0.5): 3 of 7 tokens. 7.0 is padding.
    _, m = policy_loss(logp, old, advantages, mask, "grpo", epsilon=0.2)
    assert m["clip_frac"] == pytest.approx(3 / 7)
    assert m["approx_kl"] == pytest.approx(-sum(map(math.log, [0.5, 1.0, 1.5, 2.0, 0.5, 0.9, 3.0])) / 7)
    assert "kl" not in m
    # clip-higher at 0.6: 1.5 now passes, 2.0 does not (nor, below, 0.5 with A < 0).
    assert policy_loss(logp, old, advantages, mask, "grpo", 0.2, 0.6)[1]["clip_frac"] == pytest.approx(2 / 7)
    # CISPO at clip 1.8: only 2.0 with A > 0 (3.0 has A < 0, 7.0 is padding).
    assert policy_loss(logp, old, advantages, mask, "cispo", cispo_clip=1.8)[1]["clip_frac"] == pytest.approx(1 / 7)
    # k3 against a reference 0.5 nats below the policy on every token: e^-0.5 + 0.5 - 1.
    _, m = policy_loss(logp, old, advantages, mask, "grpo", ref_logp=logp - 0.5, beta=0.1)
    assert m["kl"] == pytest.approx(math.exp(-0.5) - 0.5, rel=1e-5)


def test_masked_mean_sequence_skips_rows_without_tokens():
    x = torch.tensor([[1.0, 3.0, 9.0], [4.0, 9.0, 9.0], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])
    assert masked_mean(x, mask, "token").item() == pytest.approx(8 / 3)
    assert masked_mean(x, mask, "sequence").item() == pytest.approx((2 + 4) / 2)  # the empty row is not a 0
    assert masked_mean(x, torch.zeros_like(mask), "sequence").item() == 0  # no NaN from an all-dropped batch


def reference_group_advantages(rewards, group_size, scale):
    advantages = []
    for g in range(0, len(rewards), group_size):
        group = [float(r) for r in rewards[g:g + group_size]]
        mean = sum(group) / group_size
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (group_size - 1))  # unbiased, as GRPO's
        advantages += [(r - mean) / (std + 1e-4) if scale == "group" else r - mean for r in group]
    return torch.tensor(advantages, dtype=torch.float64)


@pytest.mark.parametrize("scale", ["group", "none"])
def test_group_advantages_match_the_formula_and_flag_zero_variance_groups(scale):
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.5, 0.5, 0.5, 2.0, -1.0, 0.25, 3.0, 1.0, 0.0])
    advantages, zero_var = group_advantages(rewards, 3, scale)
    close(advantages, reference_group_advantages(rewards, 3, scale))
    assert zero_var.tolist() == [False, True, False, False]
    assert (advantages[3:6] == 0).all()
    with pytest.raises(ValueError):
        group_advantages(rewards, 3, "batch")


def reference_gae(rewards, values, mask, gamma, lam):
    """The textbook backward recursion (GAE, Schulman et al. 2016), one row at a time over its own tokens:
    the value after the last token is 0."""
    advantages = torch.zeros(mask.shape, dtype=torch.float64)
    for i in range(mask.shape[0]):
        a, next_value = 0.0, 0.0
        for t in reversed([t for t in range(mask.shape[1]) if mask[i, t]]):
            delta = float(rewards[i, t]) + gamma * next_value - float(values[i, t])
            a = delta + gamma * lam * a
            advantages[i, t], next_value = a, float(values[i, t])
    return advantages


def test_gae_matches_the_textbook_recursion_per_row():
    g = torch.Generator().manual_seed(1)
    starts, lengths = [2, 0, 4, 1], [5, 8, 2, 0]  # prompts of different lengths, right padding, an empty row
    mask = torch.zeros(4, 9, dtype=torch.bool)
    for i, (s, n) in enumerate(zip(starts, lengths)):
        mask[i, s:s + n] = True
    values = torch.randn(4, 9, generator=g)
    rewards = torch.where(mask, torch.randn(4, 9, generator=g) * 0.1, 5.0)  # garbage outside the mask
    values[~mask] = -3.0
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    expected = reference_gae(rewards, values, mask, 0.9, 0.8)
    close(advantages, expected)
    close(returns, torch.where(mask, expected + values.double(), 0))
    # gamma = lam = 1: the advantage is the sum of the rewards still to come minus the value.
    advantages, _ = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    to_come = (rewards * mask).flip(1).cumsum(1).flip(1)
    close(advantages, torch.where(mask, to_come - values, 0))


def test_value_loss_matches_the_clipped_formula():
    g = torch.Generator().manual_seed(2)
    mask = torch.rand(3, 6, generator=g) > 0.3
    old_values = torch.randn(3, 6, generator=g)
    values = old_values + torch.randn(3, 6, generator=g) * 0.5  # many moves beyond the clip, both ways
    returns = torch.randn(3, 6, generator=g)
    leaf = values.clone().requires_grad_()
    loss = value_loss(leaf, old_values, returns, mask, clip=0.2)
    loss.backward()

    v, terms = values.double().requires_grad_(), []
    for i, t in mask.nonzero().tolist():
        clipped = old_values[i, t].double() + torch.clamp(v[i, t] - old_values[i, t].double(), -0.2, 0.2)
        terms.append(0.5 * torch.maximum((v[i, t] - returns[i, t]) ** 2, (clipped - returns[i, t]) ** 2))
    expected = sum(terms) / len(terms)
    expected.backward()
    assert ((values - old_values).abs() > 0.2)[mask].sum() >= 4
    close(loss.detach(), expected.detach())
    close(leaf.grad, v.grad)


def test_whiten_gives_mean_0_and_std_1_over_the_masked_tokens():
    g = torch.Generator().manual_seed(3)
    x, mask = torch.randn(3, 5, generator=g) * 4 + 2, torch.rand(3, 5, generator=g) > 0.4
    out = whiten(x, mask).double()
    picked = x[mask].double()
    close(out[mask], (picked - picked.mean()) / picked.std(unbiased=False), atol=1e-5)
    assert (out[~mask] == 0).all()


# ----------------------------------------------------------------------------------------------------------
# 2. Parity with trl's GRPOTrainer



def as_llama(model):
    """A Llama copy of a dense MiniMind (the state dict loads unchanged), with the fused LM head trl's GRPO
    trainer puts on its policy: log-probs and entropies under logits / T."""
    from transformers import LlamaForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from model.export import llama_config_from
    llama = LlamaForCausalLM(llama_config_from(model.config))
    llama.load_state_dict(model.state_dict())
    add_fused_lm_head(llama, temperature=T, outputs=("log_probs", "entropy"))
    return llama.eval()


def trl_trainer(loss_type, beta, epsilon, epsilon_high):
    """What GRPOTrainer._compute_loss and _get_per_token_logps_and_entropies read from `self`, for one
    process, no vLLM, no entropy mask or bonus, no MoE aux loss, one micro-batch per generation and per
    optimizer step; the methods are trl's own, unbound. (A real GRPOTrainer would need reward functions and
    a dataset, and would generate; the loss uses none of them, and nothing here fakes a model output.)"""
    from trl import GRPOTrainer
    accelerator = types.SimpleNamespace(
        autocast=contextlib.nullcontext, gather=lambda x: x, gather_for_metrics=lambda x: x,
        reduce=lambda x, reduction: x, num_processes=1, is_main_process=True, sync_gradients=True)
    trainer = types.SimpleNamespace(
        loss_type=loss_type, beta=beta, epsilon_low=epsilon, epsilon_high=epsilon_high,
        importance_sampling_level="token", top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        use_vllm=False, aux_loss_enabled=False, _entropy_bonus_enabled=False,
        current_gradient_accumulation_steps=1, accelerator=accelerator, model=types.SimpleNamespace(training=True),
        args=types.SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1),
        _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)})
    trainer._get_per_token_logps_and_entropies = types.MethodType(GRPOTrainer._get_per_token_logps_and_entropies,
                                                                  trainer)
    trainer.compute_loss = lambda model, inputs: GRPOTrainer._compute_loss(trainer, model, inputs)
    return trainer


def padded(rows, width, value, left=False):
    return torch.tensor([[value] * (width - len(r)) + r if left else r + [value] * (width - len(r)) for r in rows])


@pytest.fixture(scope="module")
def parity():
    """2 prompts of different lengths x G = 3 completions of ragged lengths; the policy, the old policy that
    'sampled' them and the reference, as MiniMind models and as Llama copies for trl."""
    policy = tiny_model()
    old, reference = perturbed(policy, 0.05, seed=1), perturbed(policy, 0.05, seed=2)
    g = torch.Generator().manual_seed(0)
    prompts = [p for p in ([5, 17, 300, 42], list(range(100, 109))) for _ in range(3)]
    completions = [torch.randint(0, 6000, (n,), generator=g).tolist() for n in (6, 3, 5, 1, 7, 4)]
    advantages, _ = group_advantages(torch.tensor([1.0, 0.0, 0.5, 0.2, 0.9, 0.2]), 3)

    # Ours: the old log-probs as a rollout records them (one list per completion), the reference's as
    # train_grpo.py computes them.
    unscored = Rollout(prompts, completions, [[0.0] * len(c) for c in completions], [True] * 6).batch(PAD)
    with torch.no_grad():
        old_logp, mask = token_logprobs(old(unscored["input_ids"]).logits / T, unscored["labels"])
        ref_logp = token_logprobs(reference(unscored["input_ids"]).logits / T, unscored["labels"])[0]
    rollout = Rollout(prompts, completions, [row[m].tolist() for row, m in zip(old_logp, mask)], [True] * 6)

    # trl's: left-padded prompts, right-padded completions; old and reference log-probs from trl's own
    # scoring of the Llama copies, as its _generate_and_score_completions does.
    P, C = max(map(len, prompts)), max(map(len, completions))
    ones = lambda rows: [[1] * len(r) for r in rows]  # noqa: E731
    ids = dict(prompt_ids=padded(prompts, P, PAD, left=True), prompt_mask=padded(ones(prompts), P, 0, left=True),
               completion_ids=padded(completions, C, PAD), completion_mask=padded(ones(completions), C, 0))
    scorer = trl_trainer("bnpo", 0.0, 0.2, 0.2)

    def trl_logps(model):
        return scorer._get_per_token_logps_and_entropies(
            model, torch.cat([ids["prompt_ids"], ids["completion_ids"]], 1),
            torch.cat([ids["prompt_mask"], ids["completion_mask"]], 1), C)[0]
    with torch.no_grad():
        trl_inputs = dict(ids, advantages=advantages, old_per_token_logps=trl_logps(as_llama(old)),
                          ref_per_token_logps=trl_logps(as_llama(reference)),
                          num_items_in_batch=torch.tensor(float(sum(map(len, completions)))))
    return types.SimpleNamespace(policy=policy, llama=as_llama(policy), rollout=rollout, ref_logp=ref_logp,
                                 advantages=advantages, trl_inputs=trl_inputs)


@pytest.mark.parametrize("trl_loss, loss_type, agg, epsilon_high", [
    ("bnpo", "grpo", "token", 0.28), ("grpo", "grpo", "sequence", 0.28), ("cispo", "cispo", "token", 2.0)])
def test_policy_loss_matches_trl_grpo_trainer(parity, trl_loss, loss_type, agg, epsilon_high):
    """trl "bnpo" is our grpo averaged over tokens, trl "grpo" ours averaged per sequence, trl "cispo" ours
    with cispo_clip = trl's epsilon_high (trl caps the CISPO weight there) and trl's token count
    num_items_in_batch = the batch's completion tokens. Everything end to end from the same weights and
    tokens: MiniMind + Rollout.batch + token_logprobs + policy_loss against Llama + trl's scoring and loss."""
    beta = 0.04
    trainer = trl_trainer(trl_loss, beta, 0.2, epsilon_high)
    parity.llama.zero_grad()
    trl_loss_value = trainer.compute_loss(parity.llama, parity.trl_inputs)
    trl_loss_value.backward()

    policy = parity.policy
    policy.zero_grad()
    batch = parity.rollout.batch(PAD)
    logits = policy(batch["input_ids"]).logits / T
    logp, mask = token_logprobs(logits, batch["labels"])
    loss, metrics = policy_loss(logp, batch["old_logprobs"], parity.advantages, mask, loss_type, epsilon=0.2,
                                epsilon_high=epsilon_high, cispo_clip=epsilon_high, ref_logp=parity.ref_logp,
                                beta=beta, agg=agg)
    loss.backward()

    torch.testing.assert_close(loss, trl_loss_value, atol=1e-6, rtol=1e-5)
    llama_params = dict(parity.llama.named_parameters())
    for name, p in policy.named_parameters():
        torch.testing.assert_close(p.grad, llama_params[name].grad, atol=2e-6, rtol=1e-4, msg=name)
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    clipped = logged["cispo_clip_ratio" if trl_loss == "cispo" else "clip_ratio/region_mean"]
    assert metrics["clip_frac"] == pytest.approx(clipped, abs=1e-6) and metrics["clip_frac"] > 0.05
    assert metrics["kl"] == pytest.approx(logged["kl"], rel=1e-4) and metrics["kl"] > 0.01
    assert token_entropy(logits.detach(), mask).item() == pytest.approx(logged["entropy"], rel=1e-5)


# ----------------------------------------------------------------------------------------------------------
# 3. Rollouts

PROMPTS = [[5, 17, 300, 42], list(range(100, 120))]


def test_rollout_batch_layout_marks_exactly_the_completion_tokens():
    rollout = Rollout([[1, 2, 3], [4]], [[7, 8], [9, 10, 11, 12]], [[-0.1, -0.2], [-0.3, -0.4, -0.5, -0.6]],
                      [False, True])
    b = rollout.batch(pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3, 7, 8], [4, 9, 10, 11, 12]]
    assert b["labels"].tolist() == [[IGNORE, IGNORE, IGNORE, 7, 8], [IGNORE, 9, 10, 11, 12]]
    assert b["mask"].tolist() == [[False, False, True, True], [True, True, True, True]]
    torch.testing.assert_close(b["old_logprobs"], torch.tensor([[0, 0, -0.1, -0.2], [-0.3, -0.4, -0.5, -0.6]]))


def check_rollout_rows(model, rollout, temperature):
    """The rows of `Rollout.batch`, scored by one plain forward: the mask and labels mark exactly each
    completion's tokens, and the sampling log-probs are log_softmax(logits / T) there (0 elsewhere)."""
    batch = rollout.batch(PAD)
    ids, mask = batch["input_ids"], batch["mask"]
    for i, (prompt, completion) in enumerate(zip(rollout.prompt_ids, rollout.completion_ids)):
        start, end = len(prompt), len(prompt) + len(completion)
        assert ids[i, :end].tolist() == prompt + completion and (ids[i, end:] == PAD).all()
        assert batch["labels"][i].tolist() == [IGNORE] * start + completion + [IGNORE] * (ids.shape[1] - end)
        assert mask[i].tolist() == [start - 1 <= t < end - 1 for t in range(ids.shape[1] - 1)]
    with torch.no_grad():
        logp = (model(ids).logits[:, :-1].double() / temperature).log_softmax(-1)
    picked = logp.gather(-1, ids[:, 1:, None])[..., 0]
    torch.testing.assert_close(batch["old_logprobs"].double(), torch.where(mask, picked, 0), atol=1e-4, rtol=0)


def nucleus_mass(model, rollout, temperature, top_p):
    """For each completion token: (mass of the tokens likelier than it, mass of the top-p nucleus)."""
    batch = rollout.batch(PAD)
    with torch.no_grad():
        probs = (model(batch["input_ids"]).logits[:, :-1].double() / temperature).softmax(-1)[batch["mask"]]
    sampled = batch["input_ids"][:, 1:][batch["mask"]]
    p = probs.gather(-1, sampled[:, None])
    above = (probs * (probs > p)).sum(-1)
    ordered = probs.sort(-1, descending=True).values
    kept = ordered.cumsum(-1) - ordered <= top_p  # sample_next_token's rule: the mass before a token <= top_p
    return above, (ordered * kept).sum(-1)


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_torch_rollout_is_seeded_grouped_and_logs_the_temperature_scaled_logprobs(top_p):
    model = tiny_model()
    sampler = lambda seed=0, rank=0: TorchRollout(model, EOS, max_new_tokens=8, temperature=T,  # noqa: E731
                                                  top_p=top_p, seed=seed, rank=rank)
    result = sampler()(PROMPTS, group_size=3, step=5)
    assert sampler()(PROMPTS, group_size=3, step=5).completion_ids == result.completion_ids  # a resumed run
    assert sampler()(PROMPTS, group_size=3, step=6).completion_ids != result.completion_ids
    assert sampler(rank=1)(PROMPTS, group_size=3, step=5).completion_ids != result.completion_ids
    assert result.prompt_ids == [p for p in PROMPTS for _ in range(3)]  # prompt-major groups
    assert all(len({tuple(c) for c in result.completion_ids[g:g + 3]}) == 3 for g in (0, 3))
    assert all(len(c) == len(lp) <= 8 for c, lp in zip(result.completion_ids, result.logprobs))
    check_rollout_rows(model, result, T)
    above, nucleus = nucleus_mass(model, result, T, top_p)
    assert (above <= top_p + 1e-6).all()  # every sampled token lies in the nucleus
    if top_p < 1:
        # So the log-probs checked above are the temperature-scaled policy's, not the renormalised nucleus's,
        # which would be higher by -log(nucleus mass) > 0.03, far beyond the tolerance.
        assert (nucleus < 0.97).all()


def test_torch_rollout_completions_that_stop_end_with_eos_and_the_mode_is_restored():
    model = scripted_model().train()  # answers any chat prompt with THINKING_REPLY + eos
    reply = tokenizer()(THINKING_REPLY, add_special_tokens=False)["input_ids"] + [EOS]
    prompts = [chat_prompt_ids(tokenizer(), [{"role": "user", "content": q}]) for q in ("hi", "你好")]
    result = TorchRollout(model, EOS, max_new_tokens=64, temperature=0.05)(prompts, group_size=2, step=0)
    assert model.training and all(m.training for m in model.modules())
    assert result.completion_ids == [reply] * 4 and result.finished == [True] * 4
    model.eval()
    cut = TorchRollout(model, EOS, max_new_tokens=3, temperature=0.05)(prompts, group_size=2, step=0)
    assert not model.training
    assert cut.completion_ids == [reply[:3]] * 4 and cut.finished == [False] * 4
    check_rollout_rows(model, result, 0.05)


# ----------------------------------------------------------------------------------------------------------
# 4. Entropy


@pytest.mark.parametrize("chunk", [1, 4, 1024])
def test_token_entropy_matches_a_float64_computation(chunk):
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 8, 50, generator=g) * 3
    mask = torch.rand(3, 7, generator=g) > 0.35
    leaf = logits.clone().requires_grad_()
    entropy = token_entropy(leaf, mask, chunk=chunk)
    entropy.backward()

    x = logits.double().requires_grad_()
    terms = []
    for b, t in mask.nonzero().tolist():
        p = torch.softmax(x[b, t], -1)
        terms.append(-(p * p.log()).sum())
    expected = sum(terms) / len(terms)
    expected.backward()
    assert mask.sum() > 4 * 2  # several chunks at chunk 4
    close(entropy.detach(), expected.detach())
    close(leaf.grad, x.grad, atol=1e-7)  # the entropy bonus trains through it
    assert token_entropy(logits, torch.zeros_like(mask)).item() == 0


# ----------------------------------------------------------------------------------------------------------
# 5. ActorCritic


@pytest.mark.parametrize("shared", [False, True])
def test_actor_critic_values_start_at_zero_and_the_value_loss_reaches_only_the_critic(shared):
    actor = tiny_model()
    model = ActorCritic(actor, shared=shared)
    ids = torch.randint(0, 6000, (2, 9), generator=torch.Generator().manual_seed(5))
    logits, values, _ = model(ids)
    assert values.shape == (2, 9) and values.dtype == torch.float32 and (values == 0).all()
    with torch.no_grad():
        torch.testing.assert_close(logits, actor(ids).logits)

    with torch.no_grad():  # a trained head: at zero the trunk's gradient would be zero whatever the wiring
        model.value_head.weight.normal_()
    _, values, _ = model(ids)
    mask = torch.ones(2, 9, dtype=torch.bool)
    value_loss(values, values.detach() * 0, torch.randn(2, 9), mask).backward()

    assert model.value_head.weight.grad.abs().sum() > 0
    trunk = model.actor.model if shared else model.critic_trunk
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trunk.parameters())
    assert actor.lm_head.weight.grad is None
    if not shared:
        assert all(p.grad is None for p in actor.parameters())
    keys = set(model.critic_state_dict())
    assert not any(k.startswith("actor.") for k in keys)
    if shared:
        assert keys == {"value_head.weight", "value_head.bias"}
    else:
        trunk_keys = {f"critic_trunk.{k}" for k in actor.model.state_dict()}
        assert keys == {"value_head.weight", "value_head.bias"} | trunk_keys
