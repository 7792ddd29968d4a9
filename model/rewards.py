"""Rule rewards for reinforcement learning (GRPO, PPO), an optional learned reward model, and their weighted sum.

Every rule reward is a small pure function of the completion's text or token ids. None of them executes or
evaluates model output: a completion is only ever read as a string (matched with regular expressions, counted).
The reply format is read through `model.reasoning`, its one owner; this module owns the answer normalisation
that the demo's scorer uses too. torch and transformers load only when a `RewardModel` is built.
"""
import argparse
import json
import os
import re
import sys
import unicodedata
from decimal import Decimal
from functools import lru_cache

from .reasoning import TAGS, THINK_OPEN, extract_answer, follows_template

COMPONENTS = ("format", "accuracy", "length", "repetition", "reward_model")

# ----------------------------------------------------------------------------------------------------------
# Answer normalisation (shared with demo/scoring.py).

_CJK_PUNCT = str.maketrans({"。": ".", "、": ",", "「": '"', "」": '"', "『": '"', "』": '"', "〜": "~"})


def normalize(text: str) -> str:
    """NFKC (full-width digits and punctuation -> ASCII), case-folded, thousands separators dropped,
    whitespace collapsed and removed next to Chinese characters ("12 克" == "12克")."""
    text = unicodedata.normalize("NFKC", text).casefold().translate(_CJK_PUNCT)
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r" ?([\u3400-\u9fff]) ?", r"\1", text)


@lru_cache(maxsize=65536)
def answer_pattern(answer: str) -> re.Pattern:
    a = normalize(answer)
    if not a:
        return re.compile(r"(?!x)x")  # an empty answer matches nothing
    # A number or a word must stand alone ("82" is not in "182", "red" not in "bored"); Chinese has no
    # word boundaries, which is why names are built so that none contains another.
    # A number must not continue a decimal or carry a minus sign ("-82"), but "90-8=82" still counts.
    left = (r"(?<![0-9a-z.])(?<!(?<![0-9])-)" if a[0].isdigit() else
            r"(?<![0-9a-z])" if a[0].isascii() and a[0].isalnum() else "")
    right = r"(?![0-9a-z]|\.\d)" if a[-1].isalnum() and a[-1].isascii() else ""
    return re.compile(left + re.escape(a) + right)


def mentions(text: str, answer: str) -> bool:
    return answer_pattern(answer).search(normalize(text)) is not None


# ----------------------------------------------------------------------------------------------------------
# Rule rewards.

# A number in normalized text: a minus is a sign only where no digit precedes it ("90-8" is a subtraction);
# digit groups of three may be split by single spaces ("1 234", a thin space after NFKC); commas are
# already gone (normalize). "42." ends a sentence, "42.0" is a decimal.
_NUMBER = re.compile(r"(?:(?<![\d.])-)?(?<![\d.])(?:\d{1,3}(?: \d{3})+(?!\d)|\d+)(?:\.\d+)?")

# How much longer than a name its answer part may be, in display width (a Chinese character counts 2, so
# both languages get about the same room). The demo's reference replies restate the question in one
# sentence ("serath gomavold's favourite colour is white."): at most 39 (en) and 32 (zh) beyond the name.
# A longer answer part is taken as hedging: listing candidates must not win. (The demo's two-hop replies,
# two sentences and up to 69 beyond the name, do not fit; the RL prompts hold no two-hop rows.)
NAME_SLACK = 50


def _number(text: str) -> Decimal:
    return Decimal(text.replace(" ", ""))


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def format_reward(completion: str, thinking: bool = False) -> float:
    """In [0, 1]: 1.0 for a reply that follows the reasoning template exactly, else 0.25 for each of the four
    tags that appears exactly once, at most 0.75. thinking=True: the prompt opened <think> already."""
    reply = f"{THINK_OPEN}\n{completion}" if thinking else completion
    once = sum(reply.count(tag) == 1 for tag in TAGS)
    return 1.0 if follows_template(reply) else min(0.75, 0.25 * once)


def accuracy_reward(completion: str, target: str, thinking: bool = False, aliases=()) -> float:
    """1.0 or 0.0: does the answer part (never the thinking) give the target or one of its aliases?

    A numeric target must equal the answer part's last number ("1,234 kg." == "1234", "42.0" == "42",
    "-5" != "5"); listing numbers wins nothing, as only the last one counts. Any other target must be
    mentioned, in an answer part at most NAME_SLACK wider than it. An empty target scores 0.0.
    """
    answer = normalize(extract_answer(completion, thinking)).replace("\u2212", "-")  # U+2212 is a minus too
    numbers = _NUMBER.findall(answer)
    for candidate in (normalize(c) for c in (target, *aliases)):
        if not candidate:
            continue
        if _NUMBER.fullmatch(candidate):
            if numbers and _number(numbers[-1]) == _number(candidate):
                return 1.0
        elif mentions(answer, candidate) and _width(answer) <= _width(candidate) + NAME_SLACK:
            return 1.0
    return 0.0


def length_penalty(n_tokens: int, max_tokens: int, cache: int) -> float:
    """In [-1, 0]: DAPO's soft overlong punishment. 0 up to max_tokens - cache tokens, then falling linearly
    to -1 at max_tokens (a completion cut off there), and -1 beyond."""
    if n_tokens <= max_tokens - cache:
        return 0.0
    return -1.0 if n_tokens >= max_tokens else (max_tokens - cache - n_tokens) / cache


def repetition_penalty(token_ids: list[int], ngram: int = 4) -> float:
    """In [-1, 0]: minus the share of the completion's n-grams that repeat an earlier one (0 if it is
    shorter than one n-gram)."""
    grams = [tuple(token_ids[i:i + ngram]) for i in range(len(token_ids) - ngram + 1)]
    return (len(set(grams)) - len(grams)) / len(grams) if grams else 0.0


# ----------------------------------------------------------------------------------------------------------
# A learned reward model.


class RewardModel:
    """A local Hugging Face sequence classifier with one output: the score of a (prompt, completion) pair."""

    def __init__(self, path: str, device="cpu"):
        config_path = os.path.join(path, "config.json")
        if not os.path.isfile(config_path):
            found = "no config.json in it" if os.path.isdir(path) else "no such folder"
            raise ValueError(f"reward model {path}: {found}")
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        architectures = config.get("architectures") or []
        num_labels = len(config["id2label"]) if "id2label" in config else config.get("num_labels", 2)
        if not any(a.endswith("ForSequenceClassification") for a in architectures) or num_labels != 1:
            raise ValueError(f"reward model {path}: needs a *ForSequenceClassification with num_labels=1, "
                             f"found architectures={architectures} num_labels={num_labels}")
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
        self.model.to(device).eval()
        # Batches need padding, and the classifier reads the last non-pad token, so both must know the pad id.
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        limits = [self.tokenizer.model_max_length, getattr(self.model.config, "max_position_embeddings", None)]
        self.max_length = min(n for n in limits if n)

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        import torch
        tok = self.tokenizer
        if tok.chat_template:  # the template adds its own special tokens
            texts = [tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": c}],
                                             tokenize=False) for p, c in zip(prompts, completions)]
        else:
            texts = [f"{p}\n{c}" for p, c in zip(prompts, completions)]
        batch = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length,
                    add_special_tokens=not tok.chat_template).to(self.model.device)
        with torch.inference_mode():
            return self.model(**batch).logits[:, 0].float().tolist()


# ----------------------------------------------------------------------------------------------------------
# The weighted sum used by the RL scripts.


class Rewards:
    """total = sum of weight x component, over the components (COMPONENTS) with a non-zero weight."""

    def __init__(self, weights: dict[str, float], max_tokens: int, cache: int = 64, ngram: int = 4,
                 thinking: bool = False, reward_model: RewardModel | None = None):
        if unknown := set(weights) - set(COMPONENTS):
            raise ValueError(f"unknown reward components {sorted(unknown)}; known: {', '.join(COMPONENTS)}")
        self.weights = {name: weights[name] for name in COMPONENTS if weights.get(name)}
        if "reward_model" in self.weights and reward_model is None:
            raise ValueError("the reward_model weight is non-zero but no reward model was given")
        if not 0 <= cache <= max_tokens:
            raise ValueError(f"the overlong cache ({cache} tokens) must lie between 0 and max_tokens ({max_tokens})")
        self.max_tokens, self.cache, self.ngram, self.thinking = max_tokens, cache, ngram, thinking
        self.reward_model = reward_model

    def __call__(self, prompts: list[str], completions: list[str], completion_ids: list[list[int]],
                 targets: list[str]) -> tuple[list[float], dict[str, list[float]]]:
        """(total per completion, {component: per-completion values}) for the non-zero-weight components."""
        if not len(prompts) == len(completions) == len(completion_ids) == len(targets):
            raise ValueError("prompts, completions, completion_ids and targets differ in length")
        if "accuracy" in self.weights:
            for i, target in enumerate(targets):
                if not (target or "").strip():
                    raise ValueError(f"row {i} has no target answer; the accuracy reward needs one")
        score = {  # lazily, so a zero-weight component costs nothing
            "format": lambda: [format_reward(c, self.thinking) for c in completions],
            "accuracy": lambda: [accuracy_reward(c, t, self.thinking) for c, t in zip(completions, targets)],
            "length": lambda: [length_penalty(len(ids), self.max_tokens, self.cache) for ids in completion_ids],
            "repetition": lambda: [repetition_penalty(ids, self.ngram) for ids in completion_ids],
            "reward_model": lambda: self.reward_model(prompts, completions),
        }
        parts = {name: score[name]() for name in self.weights}
        totals = [sum(self.weights[name] * values[i] for name, values in parts.items())
                  for i in range(len(completions))]
        return totals, parts


def add_reward_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("rewards")
    g.add_argument("--format_weight", type=float, default=0.5, help="reply follows <think>/<answer> (0 = off)")
    g.add_argument("--accuracy_weight", type=float, default=1.0, help="answer part gives the row's answer")
    g.add_argument("--length_weight", type=float, default=0.5, help="DAPO's soft overlong punishment")
    g.add_argument("--repetition_weight", type=float, default=0.5, help="share of repeated 4-grams, negated")
    g.add_argument("--overlong_cache", type=int, default=64,
                   help="the punishment ramps up over this many tokens before the length limit (at most the limit)")
    g.add_argument("--reward_model_path", default=None, help="local HF sequence classifier (num_labels=1)")
    g.add_argument("--reward_model_weight", type=float, default=1.0, help="used only with --reward_model_path")
    return parser


def rewards_from_args(args, max_tokens: int, thinking: bool = False, device="cpu") -> Rewards:
    use_model = bool(args.reward_model_path and args.reward_model_weight)
    weights = {"format": args.format_weight, "accuracy": args.accuracy_weight, "length": args.length_weight,
               "repetition": args.repetition_weight, "reward_model": args.reward_model_weight if use_model else 0}
    try:  # a bad reward-model folder is one line, before anything trains or is written
        reward_model = RewardModel(args.reward_model_path, device) if use_model else None
    except ValueError as e:
        sys.exit(f"error: --reward_model_path: {e}")
    return Rewards(weights, max_tokens, min(args.overlong_cache, max_tokens), thinking=thinking,
                   reward_model=reward_model)
