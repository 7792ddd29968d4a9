"""Reinforcement learning from rewards with PPO: an actor (the model) and a critic that learns what each
point of a reply is worth, so every token gets its own advantage rather than its reply's.

    python train_ppo.py                                     # out/reason_512.pth + the demo's RL prompts
    python train_ppo.py --shared_critic --ppo_epochs 4 --target_kl 0.05
    python train_ppo.py --data_path dataset/rlaif.jsonl --from_weight full_sft --accuracy_weight 0 \\
        --format_weight 0 --reward_model_path path/to/hf-reward-model

Reads the same prompt files as train_grpo.py; writes out/ppo_actor_<hidden>[_moe].pth (a plain MiniMind
model: eval_model.py, the server and the web chat load it like any other) and out/ppo_critic_<hidden>.pth.

One rollout, then up to --ppo_epochs optimizer steps on it:
1. Sample --num_generations replies per prompt (model/rollout.py) and score each (model/rewards.py).
2. Per-token rewards: the reply's score on its last token, minus --beta x (log pi_old - log ref) on every
   token (the KL penalty to the starting model, as in InstructGPT; at --beta 0 no reference is kept).
3. The critic's values and GAE (--gamma, --lam) turn them into per-token advantages (whitened) and returns.
4. Each step: PPO's clipped policy loss + --vf_coef x the clipped value loss - --ent_coef x entropy. The
   passes over a rollout stop early once the approximate KL between the policy and the one that sampled
   exceeds --target_kl (the step that measured it is the last).
The critic is a value head on a copy of the starting model (minimind's PPO), or with --shared_critic on
the actor's own trunk (half the memory and compute; the value loss then shapes the actor's features too).
"""
import argparse
import copy
import time

import torch

from demo import data_paths
from model.checkpoint import atomic_torch_save, build_model, checkpoint_path, save_weights
from model.losses import token_entropy, token_logprobs
from model.rewards import add_reward_args
from model.rl import ActorCritic, gae, masked_mean, policy_loss, value_loss, whiten
from model.rollout import (add_rollout_args, check_rollout_args, evaluate_prompts, make_rollout,
                           prepare_rl, sample_and_score)
from model.runtime import add_common_args, setup_run
from model.session import Session


def save_actor_and_critic(critic_path: str):
    """The Session's save_fn: the actor as the stage's product, the critic beside it."""
    def save(model, path, meta):
        save_weights(model.actor, path, meta)
        atomic_torch_save(model.critic_state_dict(), critic_path)
    return save


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, learning_rate=1e-6, from_weight="reason", save_weight="ppo_actor", batch_size=8,
                    max_seq_len=512, log_interval=1, save_interval=100)
    add_rollout_args(parser, num_generations=1)
    g = parser.add_argument_group("ppo")
    g.add_argument("--shared_critic", action="store_true", help="value head on the actor's trunk (no copy)")
    g.add_argument("--ppo_epochs", type=int, default=2, help="optimizer steps on each rollout, at most")
    g.add_argument("--epsilon", type=float, default=0.2, help="policy ratio clip")
    g.add_argument("--value_clip", type=float, default=0.2, help="how far a value may move from the old one")
    g.add_argument("--vf_coef", type=float, default=0.5, help="weight of the value loss")
    g.add_argument("--ent_coef", type=float, default=0.0, help="weight of the entropy bonus")
    g.add_argument("--gamma", type=float, default=1.0, help="discount per token")
    g.add_argument("--lam", type=float, default=0.95, help="GAE lambda")
    g.add_argument("--beta", type=float, default=0.02, help="KL penalty to the starting model, in the reward")
    g.add_argument("--target_kl", type=float, default=0.1, help="stop a rollout's passes beyond this (0 = never)")
    add_reward_args(parser)
    args = parser.parse_args()
    check_rollout_args(parser, args)
    if args.ppo_epochs > 1 and args.accumulation_steps > 1:
        parser.error("--ppo_epochs > 1 needs --accumulation_steps 1")
    run = setup_run(args)

    train_path, val_path = data_paths(args.data_path, args.val_path, "rl_prompts")
    tokenizer, train_data, val_data, rewards = prepare_rl(args, run, train_path, val_path)
    actor = build_model(args, run, tokenizer)
    reference = copy.deepcopy(actor).eval().requires_grad_(False) if args.beta else None
    model = ActorCritic(actor, shared=args.shared_critic).to(run.device)
    evaluate_fn = (lambda m: evaluate_prompts(m.actor, val_data, tokenizer, rewards, run, args.max_new_tokens,
                                              args.eval_samples)) if val_data else None
    critic_path = checkpoint_path(args.out_dir, "ppo_critic", actor.config.hidden_size, actor.config.use_moe)
    session = Session(args, run, model, train_data, args.save_weight, tokenizer, evaluate_fn=evaluate_fn,
                      steps_per_batch=args.ppo_epochs, save_fn=save_actor_and_critic(critic_path))
    rollout_engine = make_rollout(args, actor, tokenizer, run.rank,
                                  session.checkpoints.weights_path.replace(".pth", "_rollout.pth"))
    temperature = args.temperature

    if val_data and not args.resume:
        session.evaluate()  # the starting point, logged as step 0
    for batch in session.batches():
        with session.gathered():  # ZeRO-3: the whole model on each rank, whose replies end at other steps
            scored = sample_and_score(rollout_engine, batch, args.num_generations, session.progress.step,
                                      tokenizer, rewards, run)
        inputs = scored.rollout.batch(tokenizer.pad_token_id, run.device)
        old_logp, mask = inputs["old_logprobs"], inputs["mask"]
        with torch.no_grad(), run.autocast():
            old_values = session.model(inputs["input_ids"])[1][:, :-1] * mask
            token_rewards = torch.zeros_like(old_values)
            last = (mask.long() * torch.arange(mask.shape[1], device=mask.device)).argmax(dim=1)
            token_rewards[torch.arange(len(last)), last] = scored.rewards.to(run.device)
            kl = torch.zeros_like(old_values)
            if reference is not None:
                ref_logp = token_logprobs(reference(inputs["input_ids"]).logits / temperature, inputs["labels"])[0]
                kl = (old_logp - ref_logp) * mask
            advantages, returns = gae(token_rewards - args.beta * kl, old_values, mask, args.gamma, args.lam)
            advantages = whiten(advantages, mask)
        stats = {**scored.stats(), "kl_ref": masked_mean(kl, mask).item()}
        for epoch in range(args.ppo_epochs):
            start = time.time()
            with run.autocast():
                logits, values, aux_loss = session.model(inputs["input_ids"])
                logits = logits / temperature
                logp, mask = token_logprobs(logits, inputs["labels"])
                policy, metrics = policy_loss(logp, old_logp, advantages, mask, "grpo", args.epsilon)
                critic = value_loss(values[:, :-1], old_values, returns, mask, args.value_clip)
                entropy = token_entropy(logits if args.ent_coef else logits.detach(), mask)
                loss = policy + args.vf_coef * critic - args.ent_coef * entropy
            session.backward(loss + aux_loss, tokens=inputs["input_ids"].numel())
            if not session.ready:
                continue
            approx_kl = run.mean(metrics["approx_kl"])  # every rank stops at the same pass
            last_pass = (epoch == args.ppo_epochs - 1 or bool(args.target_kl and approx_kl > args.target_kl)
                         or session.progress.step + 1 >= session.total_steps)
            session.step(policy, batch_done=last_pass, **stats, **metrics, value_loss=critic.item(),
                         entropy=entropy.item(), epochs=epoch + 1,
                         train_tok_s=inputs["input_ids"].numel() / (time.time() - start))
            rollout_engine.sync(model.actor, run)  # a server samples the next rollout from the new weights
            if last_pass:
                break
    session.finish()


if __name__ == "__main__":
    main()
