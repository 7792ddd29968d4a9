"""Multi-turn rollouts with tools, for agentic RL (train_agent.py) and its evaluation.

An episode alternates the model and the tools, all in token ids:

    prompt (tools listed in the system turn) ─▶ model turn ─▶ tool results ─▶ model turn ─▶ ... ─▶ answer

A model turn is sampled until eos (<|im_end|>). If its text holds tool calls (model/toolcall.py's parser) and
turns are left, each call runs in the sandbox (model/tools.py `run_call`: pure functions, a time limit, a size
limit), and the results are appended exactly as the chat template renders them: the rest of the assistant
turn's line, a user turn of <tool_response> blocks, and the next assistant header. Then the model goes on.
The episode ends at a turn without calls (the answer), a turn cut at --max_new_tokens, or after
--max_tool_turns turns.

For training, the episode is one completion: the model's own tokens are learned (`learn` True, with the
log-probs they were sampled with), the appended tool tokens are context only (`learn` False): a policy is
not credited or blamed for what a tool said. Sampling goes through the serving engine, as model/rollout.py's
TorchRollout does, seeded by (seed, step, rank); tools are deterministic, so a resumed run replays exactly.
"""
import time
from dataclasses import dataclass, field

import torch

from .checkpoint import unwrap
from .rewards import accuracy_reward
from .rollout import Rollout, Scored, step_seed
from .serving import Engine, SamplingParams
from .toolcall import CALL_OPEN, parse_tool_calls, tool_response
from .tools import run_call


@dataclass
class Episode:
    """One prompt's multi-turn exchange, as it is built."""
    prompt: list[int]
    names: frozenset  # the functions on offer
    tokens: list[int] = field(default_factory=list)  # everything after the prompt
    learn: list[bool] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    turns: int = 0
    calls: list = field(default_factory=list)  # (ToolCall, result text) in order
    bad_calls: int = 0  # <tool_call> blocks that did not parse as a call of an offered function
    answer: str = ""  # the last turn's content (what is scored)
    answered: bool = False  # ended with a turn without calls, stopped by eos


@dataclass
class AgentRollout(Rollout):
    episodes: list[Episode] = field(default_factory=list)

    def tokens(self) -> int:
        return sum(sum(learn) for learn in self.learn)


def results_turn(results: list[str]) -> str:
    """The text between a tool-calling turn's <|im_end|> and the next reply, as the chat template renders
    the tool messages and the generation prompt (tests/test_agent.py checks the two agree)."""
    return "\n<|im_start|>user" + "".join(f"\n{tool_response(r)}" for r in results) + \
        "<|im_end|>\n<|im_start|>assistant\n"


class ToolRollout:
    """Samples episodes from `model` (unwrapped) with `tools` (name -> model.tools.Tool) at hand."""

    def __init__(self, model, tokenizer, tools: dict, max_new_tokens: int, max_turns: int = 3,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0, rank: int = 0,
                 tool_timeout: float = 5.0, max_result_chars: int = 500):
        self.model, self.tokenizer, self.tools = model, tokenizer, tools
        self.params = SamplingParams(max_new_tokens, temperature, top_p, top_k, logprobs=True)
        self.max_turns, self.seed, self.rank = max_turns, seed, rank
        self.tool_timeout, self.max_result_chars = tool_timeout, max_result_chars

    @torch.no_grad()
    def __call__(self, prompts: list[list[int]], group_size: int, step: int, offered=None) -> AgentRollout:
        """`offered`: per prompt, the names of the tools its system turn lists (default: all tools)."""
        was_training = self.model.training
        generator = torch.Generator(device=self.model.device).manual_seed(step_seed(self.seed, step, self.rank))
        offered = offered or [list(self.tools)] * len(prompts)
        episodes = [Episode(list(p), frozenset(names)) for p, names in zip(prompts, offered) for _ in range(group_size)]
        engine = Engine(self.model, len(episodes), self.tokenizer.eos_token_id, generator)
        turns = {}  # episode index -> (request, tokens, finish reason) of its running turn

        def start_turn(i):
            tokens, finish = [], [None]

            def on_event(token, reason):
                tokens.append(token)
                finish[0] = reason
            request = engine.submit(episodes[i].prompt + episodes[i].tokens, self.params, on_event)
            turns[i] = (request, tokens, finish)

        for i in range(len(episodes)):
            start_turn(i)
        while turns:
            engine.step()
            for i in [i for i, (_, _, finish) in turns.items() if finish[0]]:  # turns that ended this step
                request, tokens, finish = turns.pop(i)
                if self.end_turn(episodes[i], tokens, request.logprobs, finish[0]):
                    start_turn(i)
        self.model.train(was_training)
        return AgentRollout([e.prompt for e in episodes], [e.tokens for e in episodes],
                            [e.logprobs for e in episodes], [e.answered for e in episodes],
                            learn=[e.learn for e in episodes], episodes=episodes)

    def end_turn(self, episode: Episode, tokens: list[int], logprobs: list[float], finish: str) -> bool:
        """Record a finished model turn; run its calls and append their results. True: the model goes on."""
        episode.tokens += tokens
        episode.learn += [True] * len(tokens)
        episode.logprobs += logprobs
        episode.turns += 1
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        content, calls = parse_tool_calls(text, episode.names)
        episode.bad_calls += content.count(CALL_OPEN)  # blocks left in the content did not parse
        if finish != "stop" or not calls or episode.turns >= self.max_turns:
            episode.answer, episode.answered = content, finish == "stop" and not calls
            return False
        results = [run_call(self.tools, call, self.tool_timeout, self.max_result_chars) for call in calls]
        episode.calls += list(zip(calls, results))
        appended = self.tokenizer.encode(results_turn(results), add_special_tokens=False)
        episode.tokens += appended
        episode.learn += [False] * len(appended)
        episode.logprobs += [0.0] * len(appended)
        return True

    def sync(self, model, run):
        """Nothing to hand over: the next rollout samples from the live weights."""


def tool_format_reward(episode: Episode) -> float:
    """In [0, 1]: 1.0 for an episode that called offered functions validly and then answered; 0.5 for one that
    answered without calling (a prompt RL trains on is meant to need a tool, and an episode that skips it must
    not score as well: otherwise, while no answer is right yet, not calling is the easiest way to a perfect
    format); 0.25 for an answer after a malformed call; 0.0 for no answer (cut off, or out of turns)."""
    if not episode.answered:
        return 0.0
    if episode.bad_calls:
        return 0.25
    return 1.0 if episode.calls else 0.5


# ----------------------------------------------------------------------------------------------------------
# What train_grpo.py --tools (train_agent.py) and the demo share: flags, scoring, greedy evaluation.


def add_agent_args(parser):
    """Agentic RL's own flags; the tools themselves come from model/chat.py's add_tool_args (--tools, --mcp,
    --max_tool_turns), as in every script that chats."""
    g = parser.add_argument_group("agentic RL")
    g.add_argument("--tool_format_weight", type=float, default=0.5,
                   help="reward for valid calls of offered tools and a final answer (half for an answer without "
                        "a call)")
    g.add_argument("--tool_timeout", type=float, default=5.0, help="seconds a tool may run")


def score_episodes(rollout: AgentRollout, rewards, prompts, answers, group_size: int, tool_format_weight: float):
    """(total reward per episode (N,), {component: (N,)}): the rule rewards on each episode's final answer and
    the model's own tokens, plus the tool-format reward."""
    repeat = lambda xs: [x for x in xs for _ in range(group_size)]  # noqa: E731
    learned = [[t for t, keep in zip(e.tokens, e.learn) if keep] for e in rollout.episodes]
    totals, components = rewards(repeat(prompts), [e.answer for e in rollout.episodes], learned, repeat(answers))
    components["tool_format"] = [tool_format_reward(e) for e in rollout.episodes]
    totals = [t + tool_format_weight * f for t, f in zip(totals, components["tool_format"])]
    return torch.tensor(totals), {k: torch.tensor(v, dtype=torch.float) for k, v in components.items()}


def episode_stats(episodes: list[Episode]) -> dict:
    n = len(episodes)
    return {"calls": sum(len(e.calls) for e in episodes) / n, "bad_calls": sum(e.bad_calls for e in episodes) / n,
            "answered": sum(e.answered for e in episodes) / n}


def sample_episodes(engine: "ToolRollout", batch: dict, group_size: int, step: int, rewards, run,
                    tool_format_weight: float) -> Scored:
    """`group_size` episodes for each prompt of the batch, scored."""
    start = time.time()
    with run.autocast():
        rollout = engine(batch["prompt_ids"], group_size, step=step, offered=batch["tools"])
    seconds = time.time() - start
    totals, components = score_episodes(rollout, rewards, batch["prompts"], batch["answers"], group_size,
                                        tool_format_weight)
    return Scored(rollout, totals, components, group_size, seconds, extra=episode_stats(rollout.episodes))


def evaluate_agent(model, dataset, tokenizer, tools: dict, rewards, run, args) -> dict:
    """Greedy episodes on held-out prompts (rank 0): accuracy of the final answers, calls per episode, and the
    share of episodes that ended with an answer."""
    if not run.is_main:
        return {}
    rows = [dataset[i] for i in range(min(args.eval_samples or len(dataset), len(dataset)))]
    with run.autocast():
        episodes = greedy_episodes(unwrap(model), tokenizer, tools, [r["prompt_ids"].tolist() for r in rows],
                                   [r["tools"] for r in rows], args.max_new_tokens, args.max_tool_turns)
    scored = [accuracy_reward(e.answer, r["answer"]) for e, r in zip(episodes, rows) if r["answer"]]
    return {"val_accuracy": sum(scored) / max(1, len(scored)),
            **{f"val_{k}": v for k, v in episode_stats(episodes).items()}}


def greedy_episodes(model, tokenizer, tools: dict, prompts: list[list[int]], offered: list[list[str]],
                    max_new_tokens: int, max_turns: int, batch_size: int = 64) -> list[Episode]:
    """One greedy episode per prompt (evaluation)."""
    rollout = ToolRollout(model, tokenizer, tools, max_new_tokens, max_turns, temperature=0)
    episodes = []
    for start in range(0, len(prompts), batch_size):
        end = start + batch_size
        episodes += rollout(prompts[start:end], 1, step=0, offered=offered[start:end]).episodes
    return episodes
