"""Rollouts for reinforcement learning: G sampled completions of each prompt, with the log-prob each sampled
token had when it was drawn (the "old policy" of PPO and GRPO).

Two backends behind one call, `rollout(prompts, group_size, step) -> Rollout`:

- `TorchRollout` samples in-process from the policy being trained, through `model.serving.Engine`: the
  continuous-batching scheduler the API server runs, driven here step by step on this thread. Completions
  that stop early leave the batch, so a long straggler does not make every row decode to its length. The
  draws come from a generator seeded by (seed, step, rank): a resumed run samples exactly what the
  uninterrupted run sampled, with no sampler state to save.
- `ServerRollout` asks any OpenAI-compatible server (this project's, vLLM, SGLang) on `/v1/completions`
  with token-id prompts, `n` = G, `logprobs` and `return_tokens_as_token_ids` (vLLM's extension, also
  this project's), so the tokens come back as ids and nothing is re-tokenised. Weight hand-over: after each
  optimizer step the trainer writes the policy to a file and calls `load_weights(path)`, which posts
  `{"model_path": path}` to `/update_weights_from_disk` (SGLang's endpoint, also this project's); the next
  rollout samples from the new weights. The file must be readable by the server (same machine or a
  shared disk).
"""
import hashlib
import sys
import time
from dataclasses import dataclass, field

import torch

from .checkpoint import atomic_torch_save, load_tokenizer, unwrap
from .dataloader import load_datasets
from .dataset import IGNORE, DataError, RLPromptDataset
from .optimizer import whole_weights
from .reasoning import follows_template
from .rewards import rewards_from_args
from .serving import Engine, SamplingParams


@dataclass
class Rollout:
    """N = prompts x G completions, grouped: rows g*G ... g*G + G - 1 are the samples of prompt g."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]  # the sampled tokens, eos included when the completion stopped
    logprobs: list[list[float]]  # log p(token) under the sampling temperature, one per completion token
    finished: list[bool]  # ended with eos (False: cut at max_new_tokens)
    # Per completion token: is it trained on? None = all. model/agent.py appends tool results: context only.
    learn: list[list[bool]] | None = None

    def __len__(self):
        return len(self.completion_ids)

    def tokens(self) -> int:
        return sum(map(len, self.completion_ids))

    def batch(self, pad_id: int, device=None) -> dict:
        """Prompt + completion per row, right-padded, ready for one training forward:

        input_ids (N, L); labels (N, L): the completion tokens learned, -100 elsewhere (prompt, padding, tool results), so that
        `model.losses.token_logprobs(logits, labels)` returns (N, L - 1) log-probs of exactly the completion
        tokens; old_logprobs (N, L - 1) the sampling log-probs in that same layout (0 elsewhere).
        Right padding needs no attention mask: causal attention never lets it reach a real token.
        """
        rows = [p + c for p, c in zip(self.prompt_ids, self.completion_ids)]
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        old = torch.zeros((len(rows), width - 1))
        for i, (prompt, completion, logp) in enumerate(zip(self.prompt_ids, self.completion_ids, self.logprobs)):
            start, end = len(prompt), len(prompt) + len(completion)
            input_ids[i, :end] = torch.tensor(prompt + completion)
            labels[i, start:end] = torch.tensor(completion, dtype=torch.long)
            if self.learn is not None:
                labels[i, start:end][~torch.tensor(self.learn[i], dtype=torch.bool)] = IGNORE
            old[i, start - 1:end - 1] = torch.tensor(logp)  # the logits at t score the token at t + 1
        mask = labels[:, 1:] != IGNORE  # the completion tokens, in token_logprobs' layout
        return {k: v.to(device) for k, v in (("input_ids", input_ids), ("labels", labels), ("old_logprobs", old),
                                             ("mask", mask))}


def step_seed(seed: int, step: int, rank: int) -> int:
    """A seed for one rollout, different for every (seed, step, rank) and the same on every run."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{step}/{rank}".encode()).digest()[:8], "little") >> 1


class TorchRollout:
    """In-process sampling from `model` (unwrapped: no DDP or compile wrapper) through the serving Engine."""

    def __init__(self, model, eos_token_ids, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                 top_k: int = 0, seed: int = 0, rank: int = 0, max_batch_size: int = 0):
        self.model, self.eos, self.seed, self.rank = model, eos_token_ids, seed, rank
        self.params = SamplingParams(max_new_tokens, temperature, top_p, top_k, logprobs=True)
        self.max_batch_size = max_batch_size  # rows decoded together (0 = all of a rollout)

    @torch.no_grad()
    def __call__(self, prompts: list[list[int]], group_size: int, step: int) -> Rollout:
        was_training = self.model.training
        device = self.model.device
        generator = torch.Generator(device=device).manual_seed(step_seed(self.seed, step, self.rank))
        jobs = [list(p) for p in prompts for _ in range(group_size)]
        engine = Engine(self.model, self.max_batch_size or len(jobs), self.eos, generator)  # puts it in eval mode
        tokens, finish = [[] for _ in jobs], [None] * len(jobs)

        def collect(i):
            def on_event(token, reason):
                tokens[i].append(token)
                finish[i] = reason
            return on_event

        requests = [engine.submit(p, self.params, collect(i)) for i, p in enumerate(jobs)]
        while None in finish:
            engine.step()
        self.model.train(was_training)
        return Rollout(jobs, tokens, [r.logprobs for r in requests], [f == "stop" for f in finish])

    def sync(self, model, run):
        """Nothing to hand over: the next rollout samples from the live weights."""


class ServerRollout:
    """Sampling on an OpenAI-compatible server. `client`: an `httpx.Client` (tests pass FastAPI's
    TestClient, which is one); by default one for `base_url` (e.g. http://127.0.0.1:8998/v1)."""

    def __init__(self, base_url: str, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                 top_k: int = 0, seed: int = 0, rank: int = 0, api_key: str | None = None,
                 model: str = "minimind", weights_path: str = "rollout_weights.pth", client=None,
                 timeout: float = 600.0):
        import httpx
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = client or httpx.Client(timeout=timeout)
        self.client.headers.update(headers)
        self.max_new_tokens, self.temperature, self.top_p, self.top_k = max_new_tokens, temperature, top_p, top_k
        self.seed, self.rank, self.model, self.weights_path = seed, rank, model, weights_path

    def post(self, url: str, body: dict) -> dict:
        response = self.client.post(url, json=body)
        if response.status_code != 200:
            raise RuntimeError(f"rollout server: POST {url} -> {response.status_code} {response.text[:300]}")
        return response.json()

    def __call__(self, prompts: list[list[int]], group_size: int, step: int) -> Rollout:
        body = {"model": self.model, "prompt": [list(p) for p in prompts], "n": group_size,
                "max_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "logprobs": 1, "return_tokens_as_token_ids": True,
                "seed": step_seed(self.seed, step, self.rank) % 2**31}
        if self.top_k:
            body["top_k"] = self.top_k
        choices = sorted(self.post(f"{self.base_url}/completions", body)["choices"], key=lambda c: c["index"])
        if len(choices) != len(prompts) * group_size:
            raise RuntimeError(f"rollout server: {len(choices)} choices for {len(prompts)} prompts x {group_size}")
        # OpenAI orders the choices of several prompts prompt-major: index = prompt * n + sample.
        jobs = [list(p) for p in prompts for _ in range(group_size)]
        tokens = [[int(t.removeprefix("token_id:")) for t in c["logprobs"]["tokens"]] for c in choices]
        logprobs = [[float(x) for x in c["logprobs"]["token_logprobs"]] for c in choices]
        return Rollout(jobs, tokens, logprobs, [c["finish_reason"] == "stop" for c in choices])

    def load_weights(self, path: str):
        """Tell the server to load the weights in `path` (it does so between two decode steps)."""
        root = self.base_url.removesuffix("/v1")
        self.post(f"{root}/update_weights_from_disk", {"model_path": path})

    def sync(self, model, run):
        """After an optimizer step: rank 0 writes the policy to `weights_path` and hands it to the server;
        every rank waits, so no rollout samples from the old weights."""
        with whole_weights(model):  # ZeRO-3: every rank gathers, so that rank 0 writes whole weights
            if run.is_main:
                atomic_torch_save(unwrap(model).state_dict(), self.weights_path)
        if run.is_main:
            self.load_weights(self.weights_path)
        if run.ddp:
            torch.distributed.barrier()


# ----------------------------------------------------------------------------------------------------------
# What the RL stages (train_grpo.py, train_ppo.py) share around their loops: flags, data, scoring, evaluation.


def add_rollout_args(parser, num_generations: int):
    g = parser.add_argument_group("rollout")
    g.add_argument("--num_generations", type=int, default=num_generations, help="replies sampled per prompt")
    g.add_argument("--max_new_tokens", type=int, default=512, help="reply length limit")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (> 0)")
    g.add_argument("--top_p", type=float, default=1.0)
    g.add_argument("--rollout_server", default=None,
                   help="OpenAI-compatible /v1 URL to sample on (this project's server, vLLM, SGLang); "
                        "default: in-process")
    g.add_argument("--rollout_api_key", default=None)
    g.add_argument("--eval_samples", type=int, default=0, help="held-out prompts per evaluation (0 = all)")


def check_rollout_args(parser, args, min_generations: int = 1):
    """Refuse impossible rollout flags at once, before anything is loaded or written."""
    if args.num_generations < min_generations:
        parser.error(f"--num_generations {args.num_generations}: a group needs at least {min_generations} "
                     "replies to compare")
    if args.temperature <= 0:
        parser.error(f"--temperature {args.temperature}: RL learns from sampled replies, it must be > 0")


def make_rollout(args, model, tokenizer, rank: int, weights_path: str):
    """The rollout backend the flags ask for; `weights_path`: where a server backend's hand-over file goes."""
    settings = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                    seed=args.seed, rank=rank)
    if args.rollout_server:
        return ServerRollout(args.rollout_server, api_key=args.rollout_api_key, weights_path=weights_path,
                             **settings)
    return TorchRollout(model, tokenizer.eos_token_id, **settings)


def prepare_rl(args, run, train_path: str, val_path: str | None):
    """(tokenizer, train prompts, held-out prompts or None, rewards) for an RL stage. With the accuracy reward
    on, every row must have a target: checked on the raw rows before anything trains or is written."""
    tokenizer = load_tokenizer(args.tokenizer_path)
    train, val = load_datasets(RLPromptDataset, train_path, val_path, tokenizer, args.max_seq_len,
                               skip_bad=args.skip_bad)
    if args.accuracy_weight:
        for data in filter(None, (train, val)):
            try:
                data.check_answers()
            except DataError as e:
                sys.exit(f"error: {e}; give targets or set --accuracy_weight 0")
    return tokenizer, train, val, rewards_from_args(args, args.max_new_tokens, device=run.device)


def score_rollout(rollout: Rollout, tokenizer, rewards, prompts: list[str], answers: list[str], group_size: int):
    """(total reward per reply (N,), {component: per-reply values (N,)}, the replies' texts)."""
    texts = tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
    repeat = lambda xs: [x for x in xs for _ in range(group_size)]  # noqa: E731
    totals, components = rewards(repeat(prompts), texts, rollout.completion_ids, repeat(answers))
    return torch.tensor(totals), {k: torch.tensor(v) for k, v in components.items()}, texts


@dataclass
class Scored:
    """One RL step's rollout with its rewards, and the numbers its log line reports about them."""

    rollout: Rollout
    rewards: torch.Tensor  # (N,) the weighted total per reply
    components: dict  # {component: (N,)}
    group_size: int
    seconds: float  # the rollout's wall time
    extra: dict = field(default_factory=dict)  # more numbers for the log line (model/agent.py's episode stats)

    def stats(self) -> dict:
        n, tokens = len(self.rollout), self.rollout.tokens()
        stats = {**self.extra, "reward": self.rewards.mean().item(),
                 **{f"r_{k}": v.mean().item() for k, v in self.components.items()},
                 "len": tokens / n, "trunc": 1 - sum(self.rollout.finished) / n, "rollout_tok_s": tokens / self.seconds}
        if "accuracy" in self.components:  # groups with at least one right reply
            right = self.components["accuracy"].view(-1, self.group_size).max(dim=1).values > 0
            stats["pass_at_g"] = right.float().mean().item()
        return stats


def sample_and_score(engine, batch: dict, group_size: int, step: int, tokenizer, rewards, run) -> Scored:
    """Sample `group_size` replies to each prompt of the batch and score them."""
    start = time.time()
    with run.autocast():
        rollout = engine(batch["prompt_ids"], group_size, step=step)
    seconds = time.time() - start
    totals, components, _ = score_rollout(rollout, tokenizer, rewards, batch["prompts"], batch["answers"], group_size)
    return Scored(rollout, totals, components, group_size, seconds)


def evaluate_prompts(model, dataset, tokenizer, rewards, run, max_new_tokens: int, limit: int = 0) -> dict:
    """Greedy replies to held-out prompts (rank 0): accuracy, template compliance, mean reward and length."""
    if not run.is_main:
        return {}
    model = unwrap(model)
    was_training = model.training
    n = min(limit or len(dataset), len(dataset))
    greedy = TorchRollout(model, tokenizer.eos_token_id, max_new_tokens, temperature=0)
    sums = {"accuracy": 0.0, "template": 0.0, "reward": 0.0, "length": 0.0}
    for start in range(0, n, 64):
        rows = [dataset[i] for i in range(start, min(start + 64, n))]
        with run.autocast():
            rollout = greedy([r["prompt_ids"].tolist() for r in rows], 1, step=0)
        totals, components, texts = score_rollout(rollout, tokenizer, rewards, [r["prompt"] for r in rows],
                                                  [r["answer"] for r in rows], 1)
        sums["accuracy"] += float(components["accuracy"].sum()) if "accuracy" in components else float("nan")
        sums["template"] += sum(map(follows_template, texts))
        sums["reward"] += float(totals.sum())
        sums["length"] += rollout.tokens()
    model.train(was_training)
    return {f"val_{k}": v / n for k, v in sums.items()}
