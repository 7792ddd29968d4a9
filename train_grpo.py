"""Reinforcement learning from verifiable rewards with GRPO or CISPO: the model samples several replies to
each prompt, rule rewards score them (format, accuracy, length, repetition; optionally a reward model), and
the replies that beat their group's average become more likely.

    python train_grpo.py                                    # out/reason_512.pth + the demo's RL prompts
    python train_grpo.py --data_path dataset/rlaif.jsonl --from_weight full_sft --accuracy_weight 0
    python train_grpo.py --loss_type grpo --beta 0.02 --num_iterations 2 --dynamic_sampling
    python train_grpo.py --rollout_server http://127.0.0.1:8998/v1      # sample on a serving engine
    python train_agent.py                                   # the same with tools: multi-turn episodes

With --tools (train_agent.py turns them on), a rollout is an episode: the model's turns, the tool calls it
makes run in a sandbox and their results are appended, up to --max_tool_turns (model/agent.py). The rewards score
the final answer, plus --tool_format_weight for valid calls and an answer; tool results are context, never
trained on.

Reads minimind's RL jsonl, {"conversations": [..., {"role": "user", ...}, optional empty assistant],
"answer": target} (the target is needed only by the accuracy reward); writes out/grpo_<hidden>[_moe].pth.

One optimizer step, for each of --batch_size prompts per process:
1. Rollout: --num_generations (G) replies, sampled at --temperature / --top_p by model/rollout.py (in-process
   through the serving engine, or on --rollout_server), with each token's log-prob when sampled.
2. Rewards (model/rewards.py), and each reply's advantage against its own group (model/rl.py): no critic.
3. --num_iterations optimizer steps on the rollout, each with the GRPO or CISPO loss (--loss_type) against
   the sampling log-probs (the old policy), plus --beta x KL to a frozen copy of the starting model (k3
   estimator; at --beta 0 no copy is made). With one iteration the ratio is 1 and both losses reduce to the
   policy gradient; the clipping matters from the second pass on, and for a server's slightly different
   numbers.
A group whose replies all score alike has advantage 0 and teaches nothing; the log's zero_var says how many
there are (watch it: a model that solves everything, or nothing, cannot learn from rewards), and
--dynamic_sampling drops them from the loss (DAPO), so they no longer dilute the token average.

Learning rate: minimind's RL runs use ~1e-6...8e-8 on real data (default 1e-6). The demo's tiny model,
which starts far from good, uses a larger one (see run_demo.py).
"""
import argparse
import copy
import time
from contextlib import ExitStack

import torch

from demo import data_paths
from demo.tools import demo_tools
from model.agent import ToolRollout, add_agent_args, evaluate_agent, sample_episodes
from model.chat import add_tool_args, open_tools
from model.checkpoint import build_model
from model.dataset import DataError
from model.losses import token_entropy, token_logprobs
from model.rewards import add_reward_args
from model.rl import group_advantages, policy_loss
from model.rollout import (add_rollout_args, check_rollout_args, evaluate_prompts, make_rollout,
                           prepare_rl, sample_and_score)
from model.runtime import add_common_args, setup_run
from model.session import Session


def main(description=__doc__, data="rl_prompts", **defaults):
    """`data`: the demo file read without --data_path; `defaults`: flag defaults (train_agent.py's)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, learning_rate=1e-6, from_weight="reason", save_weight="grpo", batch_size=4,
                    max_seq_len=512, log_interval=1, save_interval=100)
    add_rollout_args(parser, num_generations=8)
    g = parser.add_argument_group("grpo")
    g.add_argument("--loss_type", default="cispo", choices=["grpo", "cispo"],
                   help="grpo: PPO-clipped ratio; cispo: clipped, detached importance weight times log-prob")
    g.add_argument("--scale_rewards", default="group", choices=["group", "none"],
                   help="divide advantages by the group's std (GRPO) or not (Dr. GRPO)")
    g.add_argument("--loss_agg", default="token", choices=["token", "sequence"],
                   help="average over all reply tokens (DAPO) or per reply first (original GRPO)")
    g.add_argument("--beta", type=float, default=0.0, help="KL penalty to the starting model (0: no reference)")
    g.add_argument("--epsilon", type=float, default=0.2, help="grpo: clip the ratio to [1 - eps, 1 + eps_high]")
    g.add_argument("--epsilon_high", type=float, default=None, help="grpo: upper clip (default: --epsilon)")
    g.add_argument("--cispo_clip", type=float, default=5.0, help="cispo: largest importance weight applied")
    g.add_argument("--num_iterations", type=int, default=1, help="optimizer steps on each rollout")
    g.add_argument("--dynamic_sampling", action="store_true",
                   help="drop groups whose replies all got the same reward from the loss (DAPO)")
    add_reward_args(parser)
    add_tool_args(parser)
    add_agent_args(parser)
    parser.set_defaults(**defaults)
    args = parser.parse_args()
    check_rollout_args(parser, args, min_generations=2)
    if args.num_iterations > 1 and args.accumulation_steps > 1:
        parser.error("--num_iterations > 1 needs --accumulation_steps 1")
    if (args.tools or args.mcp) and args.rollout_server:
        parser.error("--tools runs episodes in-process; --rollout_server serves single completions only")
    with ExitStack() as stack:
        try:  # MCP servers named by --mcp run until training ends
            tools = {t.name: t for t in stack.enter_context(open_tools(args, demo_tools()))}
        except ValueError as e:
            parser.error(str(e))
        train(parser, args, data, tools)


def train(parser, args, data: str, tools: dict):
    run = setup_run(args)

    train_path, val_path = data_paths(args.data_path, args.val_path, data)
    tokenizer, train_data, val_data, rewards = prepare_rl(args, run, train_path, val_path)
    for data in filter(None, (train_data, val_data) if tools else ()):
        try:
            data.check_tools(tools)
        except DataError as e:
            parser.error(str(e))
    model = build_model(args, run, tokenizer)
    reference = copy.deepcopy(model).eval().requires_grad_(False) if args.beta else None  # before any resume
    evaluate_fn = None
    if val_data:
        evaluate_fn = (lambda m: evaluate_agent(m, val_data, tokenizer, tools, rewards, run, args)) if tools else \
            (lambda m: evaluate_prompts(m, val_data, tokenizer, rewards, run, args.max_new_tokens, args.eval_samples))
    session = Session(args, run, model, train_data, args.save_weight, tokenizer, evaluate_fn=evaluate_fn,
                      steps_per_batch=args.num_iterations)
    if tools:
        rollout_engine = ToolRollout(model, tokenizer, tools, args.max_new_tokens, args.max_tool_turns,
                                     args.temperature, args.top_p, seed=args.seed, rank=run.rank,
                                     tool_timeout=args.tool_timeout)
    else:
        rollout_engine = make_rollout(args, model, tokenizer, run.rank,
                                      session.checkpoints.weights_path.replace(".pth", "_rollout.pth"))
    G = args.num_generations

    if val_data and not args.resume:
        session.evaluate()  # the starting point, logged as step 0
    for batch in session.batches():
        with session.gathered():  # ZeRO-3: the whole model on each rank, whose replies end at other steps
            if tools:
                scored = sample_episodes(rollout_engine, batch, G, session.progress.step, rewards, run,
                                         args.tool_format_weight)
            else:
                scored = sample_and_score(rollout_engine, batch, G, session.progress.step, tokenizer, rewards, run)
        advantages, zero_var = group_advantages(scored.rewards, G, args.scale_rewards)
        inputs = scored.rollout.batch(tokenizer.pad_token_id, run.device)
        keep = (~zero_var).repeat_interleave(G).to(run.device) if args.dynamic_sampling else None
        with torch.no_grad(), run.autocast():
            ref_logp = token_logprobs(reference(inputs["input_ids"]).logits / args.temperature,
                                      inputs["labels"])[0] if reference is not None else None
        stats = {**scored.stats(), "zero_var": zero_var.float().mean().item()}
        for iteration in range(args.num_iterations):
            start = time.time()
            with run.autocast():
                out = session.model(inputs["input_ids"])
                logits = out.logits / args.temperature
                logp, mask = token_logprobs(logits, inputs["labels"])
                if keep is not None:
                    mask = mask & keep[:, None]
                loss, metrics = policy_loss(logp, inputs["old_logprobs"], advantages.to(run.device), mask,
                                            args.loss_type, args.epsilon, args.epsilon_high, args.cispo_clip,
                                            ref_logp, args.beta, args.loss_agg)
            session.backward(loss + out.aux_loss, tokens=inputs["input_ids"].numel())
            if session.ready:
                train_seconds = time.time() - start
                entropy = token_entropy(logits.detach(), mask).item()
                last_pass = iteration == args.num_iterations - 1 or session.progress.step + 1 >= session.total_steps
                session.step(loss, batch_done=last_pass, **stats, **metrics, entropy=entropy,
                             train_tok_s=inputs["input_ids"].numel() / train_seconds)
                rollout_engine.sync(model, run)  # a server samples the next rollout from the new weights
                if last_pass:
                    break
    session.finish()


if __name__ == "__main__":
    main()
