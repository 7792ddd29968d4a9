"""Generation: the one KV-cache decoding path that the CLI, the web chat, the API server, held-out evaluation
and RL rollouts share.

- `KVCache`: preallocated key/value buffers, written in place at each step; `crop` rolls it back.
- `apply_penalties`, `token_distribution`, `draw`: repetition, frequency and presence penalties; temperature,
  top-k, top-p; one draw per row. `sample_next_token` chains them; speculative decoding uses the same ones.
- `stream_generate`: yields the next token of every row of a (left-padded) batch, step by step; with a
  `drafter` (batch 1) it decodes speculatively and yields the same way.
- `DraftModel`, `MTPDrafter`: what proposes tokens for speculative decoding: a smaller model with the same
  tokenizer, or the target's own multi-token-prediction modules.
- `generate`: the same, collected into prompt + new ids (what `GenerationMixin.generate` returns).
- `answer_questions`: many chat questions at once, greedy, batched by length (`answer_image_questions`: the same
  for a MiniMind-V model, each question with its images).
- `generate_reply`: one reply as text deltas (through a `model.chat.ReplyStream`).

The model's own `generate` (transformers' `GenerationMixin`) still works; tests check both give the same
greedy tokens. This loop is leaner: no per-step processor objects, a cache without concatenation.
"""
import functools
from dataclasses import dataclass

import torch

from .model_minimind import MiniMindConfig, attention_mask_4d, kv_cache_dims


def activation_dtype(model) -> torch.dtype:
    """The dtype the hidden states (and so the KV cache) run in: the token embeddings', which no weight-only
    format (int8, float16 projections: model/quant.py) changes."""
    return model.model.embed_tokens.weight.dtype


class KVCache:
    """Preallocated key/value buffers: a decode step writes in place instead of concatenating.

    It holds `num_layers` attention layers starting at `first_layer` (default: the model's blocks), so the
    multi-token-prediction modules, whose attention layers come after the blocks, get caches of their own
    whose lengths can differ from the blocks'."""

    def __init__(self, config: MiniMindConfig, batch_size: int, max_len: int, device, dtype, first_layer: int = 0,
                 num_layers: int | None = None):
        num_layers = config.num_hidden_layers if num_layers is None else num_layers
        k_heads, k_dim, v_heads, v_dim = kv_cache_dims(config)
        # Zeros, not garbage: a compiled DecodeStep attends over the columns not written yet too, masked; a
        # masked score weighs 0 in the softmax, but 0 * NaN would still be NaN.
        self.k = torch.zeros((num_layers, batch_size, k_heads, max_len, k_dim), device=device, dtype=dtype)
        self.v = torch.zeros((num_layers, batch_size, v_heads, max_len, v_dim), device=device, dtype=dtype)
        self.length = 0
        self.first_layer = first_layer
        self.last_layer = first_layer + num_layers - 1

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def update(self, k, v, layer_idx: int, *args, **kwargs):
        i, end = layer_idx - self.first_layer, self.length + k.shape[2]
        self.k[i, :, :, self.length:end] = k
        self.v[i, :, :, self.length:end] = v
        if layer_idx == self.last_layer:
            self.length = end
        return self.k[i, :, :, :end], self.v[i, :, :, :end]

    def crop(self, length: int):
        """Forget the positions from `length` on (rejected draft tokens): the next update overwrites them."""
        if not 0 <= length <= self.length:
            raise ValueError(f"crop to {length}: the cache holds {self.length} positions")
        self.length = length


class StaticCacheView:
    """A KVCache's buffers as a decode step of static shapes sees them: `update` writes the new token's keys and
    values at column `index` (a (1,) tensor: left padding puts every row's new token in the same column) and
    returns every column; the step's mask hides those not written yet."""

    def __init__(self, k, v, index):
        self.k, self.v, self.index = k, v, index

    def update(self, k, v, layer_idx: int, *args, **kwargs):
        self.k[layer_idx].index_copy_(2, self.index, k)
        self.v[layer_idx].index_copy_(2, self.index, v)
        return self.k[layer_idx], self.v[layer_idx]


def decode_logits(model, tokens, positions, keep, index, k, v):
    """(batch, vocab) float32 logits of the token after `tokens` (batch, 1), which go in cache column `index`
    at `positions` (batch, 1). `keep` (batch, cache length): the columns that are not left padding. Every
    shape is fixed by the cache and no Python value depends on a tensor's, so torch.compile traces it once."""
    mask = keep & (torch.arange(k.shape[3], device=index.device) <= index)  # written so far, this token included
    hidden = model.model.decode(tokens, positions, mask[:, None, None, :], StaticCacheView(k, v, index))
    return model.lm_head(hidden[:, -1]).float()


COMPILED_CACHE_STEP = 256  # cache lengths a compiled decode rounds up to: few shapes, few compilations


@functools.cache
def compiled_decode_logits():
    """`decode_logits` under torch.compile, made once per process. Parameters are inputs of the graph, not
    constants, so it serves any model of the same configuration and sees weights that training changes (RL).
    Shapes are static: each new (batch, cache length) compiles again (5-40 s at 512 x 8 on 2 cores), which is
    why stream_generate rounds the cache length up to a multiple of COMPILED_CACHE_STEP when compiling."""
    return torch.compile(decode_logits, dynamic=False)


class DecodeStep:
    """The decoding steps after the prefill: one token per row, on the KVCache the prefill wrote (`decode_logits`),
    eager or compiled (`compile=True`: every step then has the same shapes, the whole cache masked; the first
    step of a new shape compiles, 5-40 s for the 512 x 8 model on 2 cores, later generations reuse the graph)."""

    def __init__(self, model, cache: KVCache, attention_mask, compile: bool = False):
        B, S, prompt_len = cache.k.shape[1], cache.k.shape[3], cache.length
        device = cache.k.device
        self.model, self.cache = model, cache
        self.keep = torch.ones(B, S, dtype=torch.bool, device=device)
        if attention_mask is not None:
            self.keep[:, :prompt_len] = attention_mask.bool()
            # each row counts its positions from its first real token
            self.positions = attention_mask.long().sum(-1, keepdim=True)
        else:
            self.positions = torch.full((B, 1), prompt_len, dtype=torch.long, device=device)
        self.index = torch.tensor([prompt_len], device=device)
        self.compiled = compile
        self.fn = compiled_decode_logits() if compile else decode_logits

    def __call__(self, tokens):
        """Logits after `tokens` (batch, 1), the tokens of the last step."""
        cache = self.cache
        if cache.length == cache.k.shape[3]:
            raise ValueError(f"the KV cache is full ({cache.length} positions)")
        # Compiled: every column, one shape for every step. Eager: only the columns written so far and this
        # token's, so a long max_new_tokens costs no attention over empty columns.
        n = cache.k.shape[3] if self.compiled else cache.length + 1
        logits = self.fn(self.model, tokens, self.positions, self.keep[:, :n], self.index,
                         cache.k[:, :, :, :n], cache.v[:, :, :, :n])
        self.index += 1
        self.positions += 1
        self.cache.length += 1
        return logits


# ----------------------------------------------------------------------------------------------------------
# Sampling: one home for the processors, used by plain and speculative decoding alike


def apply_penalties(logits, repetition_penalty=1.0, seen=None, counts=None, frequency_penalty=0.0,
                    presence_penalty=0.0):
    """`seen`: (batch, vocab) bool, the tokens the repetition penalty applies to; `counts`: (batch, vocab), how
    often each token occurs in the reply so far, for OpenAI's frequency and presence penalties."""
    if seen is not None and repetition_penalty != 1.0:
        # CTRL-style: make already-seen tokens less likely whatever the sign of their logit.
        penalised = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if counts is not None:
        # OpenAI's: minus count x frequency_penalty, and presence_penalty once a token has occurred (vLLM's order:
        # after the repetition penalty)
        logits = logits - counts * frequency_penalty - (counts > 0) * presence_penalty
    return logits


def token_distribution(logits, temperature=1.0, top_p=1.0, top_k=0):
    """(batch, vocab) probabilities that sampling draws from: temperature, then top-k, then top-p."""
    logits = logits / max(temperature, 1e-5)
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cum - sorted_logits.softmax(dim=-1) > top_p  # keep the smallest set whose mass reaches top_p
        logits = logits.scatter(1, sorted_idx, sorted_logits.masked_fill(remove, float("-inf")))
    return logits.softmax(dim=-1)


def draw(probs, generator=None):
    """One token per row of (batch, vocab) probabilities.

    Exponential race: argmax(p_i / E_i) with E_i ~ Exp(1) draws i with probability p_i, in one pass (cheaper
    than torch.multinomial, and the same draw for a given generator). E is kept above 0: 0/0 would be NaN,
    which argmax takes for the maximum, drawing a token of probability 0."""
    race = torch.empty_like(probs).exponential_(1, generator=generator).clamp_(min=torch.finfo(probs.dtype).tiny)
    return (probs / race).argmax(dim=-1)


def sample_next_token(logits, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
                      seen=None, generator=None, counts=None, frequency_penalty=0.0, presence_penalty=0.0):
    """Pick one token per row from (batch, vocab) logits, with the usual processors in the usual order."""
    logits = apply_penalties(logits, repetition_penalty, seen, counts, frequency_penalty, presence_penalty)
    if not do_sample:
        return logits.argmax(dim=-1)
    return draw(token_distribution(logits, temperature, top_p, top_k), generator)


# ----------------------------------------------------------------------------------------------------------
# The decoding loop


@torch.inference_mode()
def stream_generate(
    model,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    do_sample: bool | None = None,
    eos_token_id: int | list[int] | None = None,
    stop_token_ids: list[int] | None = None,
    generator: torch.Generator | None = None,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
    drafter=None,
    pixel_values: torch.Tensor | None = None,
    compile: bool = False,
):
    """Yield the next token of every row, one (batch,) tensor per step.

    Prompts of different lengths are left-padded with `attention_mask` marking the real tokens. Greedy when
    `do_sample` is False (default: sample iff temperature > 0). A row is done after it yields an eos or stop
    id; later steps yield `pad_token_id` for it, and the loop ends when every row is done.

    `drafter` (a `DraftModel` or `MTPDrafter`, batch 1 only): speculative decoding, with the same tokens under
    greedy and the same distribution when sampling; its `stats` count the accepted drafts.

    `pixel_values` (a MiniMind-V model): the images of the prompts' image slots, in order; only the prefill
    reads them, every later step is text on the KV cache.

    `compile`: run the steps after the prefill under torch.compile (`DecodeStep`); each new shape compiles
    first (5-40 s). Measured at 512 x 8 on 2-core VMs: 1.13x eager at batch 1 on one, 0.8-1.0x on another, and
    half of eager's speed at batch 8 (every step attends over the whole cache): measure before turning it on
    (scripts/bench_model.py --skip train). Plain decoding only (not `drafter`).
    """
    config = model.config
    B, prompt_len = input_ids.shape
    max_new_tokens = min(max_new_tokens, config.max_position_embeddings - prompt_len)
    if max_new_tokens <= 0:
        return
    do_sample = temperature > 0 if do_sample is None else do_sample
    eos = eos_token_id if eos_token_id is not None else config.eos_token_id
    stop_ids = torch.tensor(sorted({*([eos] if isinstance(eos, int) else eos or []), *(stop_token_ids or [])}),
                            dtype=torch.long, device=input_ids.device)
    sampling = Sampling(do_sample, temperature, top_p, top_k, repetition_penalty, frequency_penalty,
                        presence_penalty)
    if drafter is not None:
        if pixel_values is not None:
            raise ValueError("speculative decoding takes text prompts only, not images")
        if B != 1 or (attention_mask is not None and not bool(attention_mask.all())):
            raise ValueError(f"speculative decoding takes one unpadded prompt, not a batch of {B}")
        yield from speculative_stream(model, input_ids, drafter, max_new_tokens, sampling,
                                      set(stop_ids.tolist()), generator)
        return
    pad_id = config.pad_token_id or 0

    padded = attention_mask is not None and not bool(attention_mask.all())
    if padded:  # each row counts its positions from its first real token
        attention_mask = attention_mask.long()
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    else:
        attention_mask, position_ids = None, None

    cache_len = prompt_len + max_new_tokens
    if compile:  # masked columns cost little; a new shape costs a compilation
        cache_len = -(-cache_len // COMPILED_CACHE_STEP) * COMPILED_CACHE_STEP
    cache = KVCache(config, B, cache_len, model.device, activation_dtype(model))
    seen = counts = None
    if repetition_penalty != 1.0:
        seen = torch.zeros(B, config.vocab_size, dtype=torch.bool, device=input_ids.device)
        # Image slots (ids past the vocabulary) are not tokens: they count as the prompt's last token instead.
        seen.scatter_(1, input_ids.where(input_ids < config.vocab_size, input_ids[:, -1:]), True)
    if frequency_penalty or presence_penalty:  # on the reply's tokens only, as OpenAI's
        counts = torch.zeros(B, config.vocab_size, device=input_ids.device)
    done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)

    # The prefill: the prompt (with its images' embeddings, for a MiniMind-V model) in one forward.
    image_slots = getattr(model.config, "image_token_id", None)
    embeds = model.embed_inputs(input_ids, pixel_values) if image_slots is not None else None
    hidden, _ = model.model(input_ids, attention_mask, position_ids, cache, embeds)
    logits = model.lm_head(hidden[:, -1]).float()
    decode = DecodeStep(model, cache, attention_mask, compile)
    for step in range(max_new_tokens):
        next_token = sample_next_token(logits, do_sample, temperature, top_p, top_k, repetition_penalty, seen,
                                       generator, counts, frequency_penalty, presence_penalty)
        next_token = next_token.masked_fill(done, pad_id)
        yield next_token
        done = done | torch.isin(next_token, stop_ids)
        if step == max_new_tokens - 1 or bool(done.all()):
            return
        if seen is not None:
            seen.scatter_(1, next_token[:, None], True)
        if counts is not None:
            counts.scatter_add_(1, next_token[:, None], (~done[:, None]).float())
        logits = decode(next_token[:, None])


# ----------------------------------------------------------------------------------------------------------
# Speculative decoding (Leviathan et al. 2023; Chen et al. 2023)
#
# A drafter proposes k tokens; the target scores the pending token and the k drafts in one forward, so its
# logits give p for every draft position at once. Draft x_j is kept with probability min(1, p(x_j) / q(x_j));
# at the first rejection a token is drawn from norm(max(0, p - q)) instead and the rest are dropped; when all k
# are kept, a bonus token is drawn from the target's next p. Each emitted token then has exactly the target's
# distribution (the residual adds back the mass where q fell short of p). Greedy is the limit where p and q are
# one-hot: a draft is kept iff it is the target's argmax, so the output is plain greedy decoding's, token for
# token. p and q are the *processed* distributions (penalties, temperature, top-k, top-p), with the penalty
# state of each position including the drafts before it. Both caches are then cropped to the accepted length.


@dataclass
class Sampling:
    do_sample: bool
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0


@dataclass
class SpecStats:
    """Counts over every speculative generation with one drafter (reset with `drafter.stats = SpecStats()`)."""
    rounds: int = 0  # target forwards, the prefill's included (each later one verifies up to k drafts)
    drafted: int = 0
    accepted: int = 0
    tokens: int = 0  # tokens emitted

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_round(self) -> float:
        return self.tokens / self.rounds if self.rounds else 0.0

    def __str__(self):
        return (f"acceptance {100 * self.acceptance_rate:.1f}% ({self.accepted}/{self.drafted} drafts), "
                f"{self.tokens_per_round:.2f} tokens per target forward")


def acceptance_probability(p, q):
    """min(1, p / q), elementwise: the chance of keeping a drafted token (1 where q is 0: never drafted)."""
    return torch.where(q > 0, p / q.clamp(min=torch.finfo(q.dtype).tiny), torch.ones_like(p)).clamp(max=1.0)


def residual_distribution(p, q):
    """norm(max(0, p - q)): what a rejection draws from. Where p <= q everywhere (p == q, up to rounding), a
    rejection cannot happen; p keeps the draw well defined."""
    residual = (p - q).clamp(min=0)
    total = residual.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, residual / total.clamp(min=torch.finfo(p.dtype).tiny), p)


def accept_reject(p, q, drafts, generator=None) -> tuple[int, int]:
    """Verify k drafts: p (k+1, vocab) the target's distributions at the pending token and each draft, q (k,
    vocab) the drafter's, drafts (k,). Returns (drafts kept, the token that follows them)."""
    k = drafts.shape[0]
    if k:
        rows = torch.arange(k, device=drafts.device)
        keep = acceptance_probability(p[rows, drafts], q[rows, drafts])
        u = torch.rand(k, generator=generator, device=p.device)
        rejected = (u >= keep).nonzero()
        if len(rejected):
            j = int(rejected[0])
            return j, int(draw(residual_distribution(p[j:j + 1], q[j:j + 1]), generator))
    return k, int(draw(p[k:k + 1], generator))


class Drafter:
    """What `stream_generate(drafter=...)` needs from a drafter. Per generation: `begin`, then rounds of
    `room` / `propose` / `observe` / `rollback`. `k`: tokens drafted per round."""

    def __init__(self, k: int):
        if k < 1:
            raise ValueError(f"spec_k={k}: draft at least one token per step")
        self.k = k
        self.stats = SpecStats()

    def check(self, target):
        """Raise ValueError (one line) when this drafter cannot draft for `target`."""

    def begin(self, target, max_len: int):
        """A new generation of at most `max_len` positions."""

    def room(self, pending: int) -> int:
        """How many tokens it can draft after the pending token at position `pending`."""
        return self.k

    def propose(self, seq, pending: int, k: int, processed, pick):
        """Draft k tokens after seq[0, pending], writing them to seq[0, pending+1 : pending+1+k]. Returns the
        (k, vocab) rows it drew them from (`processed(logits, position)`; `pick` draws from a row)."""
        raise NotImplementedError

    def observe(self, hidden, start: int):
        """The target's final hidden states at positions start.. (MTP drafts from them)."""

    def rollback(self, length: int):
        """Positions from `length` on are not the sequence's (any more): forget what was computed from them."""


class DraftModel(Drafter):
    """A smaller MiniMind (same tokenizer) drafts k tokens one by one with its own KV cache."""

    def __init__(self, model, k: int = 4):
        super().__init__(k)
        self.model = model.eval()
        self.cache = None

    def check(self, target):
        mine, theirs = self.model.config.vocab_size, target.config.vocab_size
        if mine != theirs:
            raise ValueError(f"the draft model's vocabulary ({mine}) differs from the model's ({theirs}): a "
                             "drafter needs the same tokenizer")

    def begin(self, target, max_len: int):
        self.check(target)
        self.cache = KVCache(self.model.config, 1, max_len, self.model.device, activation_dtype(self.model))

    def room(self, pending: int) -> int:
        # It will hold positions up to pending + k - 1.
        return max(0, min(self.k, self.model.config.max_position_embeddings - pending, self.cache.k.shape[3] - pending))

    def propose(self, seq, pending, k, processed, pick):
        rows = []
        tokens = seq[:, self.cache.length:pending + 1]  # catch up: the prompt at first, then what was accepted
        for i in range(k):
            hidden, _ = self.model.model(tokens, None, None, self.cache)
            row = processed(self.model.lm_head(hidden[:, -1]).float(), pending + i)
            seq[0, pending + 1 + i] = pick(row)[0]
            rows.append(row)
            tokens = seq[:, pending + 1 + i:pending + 2 + i]
        return torch.cat(rows)

    def rollback(self, length):
        self.cache.crop(min(length, self.cache.length))


class MTPDrafter(Drafter):
    """The target's own multi-token-prediction modules (DeepSeek-V3) draft: module d (0-based) at position i
    predicts token i+d+2 from the previous depth's hidden state at i and the embedding of token i+d+1.

    From the target's hidden state at the last accepted position and the pending token, module 0 drafts the
    next token, module 1 (fed that draft) the one after, and so on: k is at most the model's mtp_depth D
    (a longer chain would feed a module hidden states of a depth it was not trained on).

    Each module attends over positions with a cache of its own (attention layer num_hidden_layers + d). Module
    d's cache holds the positions whose input token is known for sure (accepted or the pending one): after a
    round it keeps positions up to pending - d - 1, and the next round catches it up from there, from the target's
    hidden states of the accepted positions (depth 0) and the previous module's outputs (kept per depth)."""

    def __init__(self, k: int = 1):
        super().__init__(k)
        self.target = None

    def check(self, target):
        depth = getattr(target.config, "mtp_depth", 0) or 0
        if not depth or not hasattr(target, "mtp"):
            raise ValueError("--draft_weight mtp: this model has no multi-token-prediction modules (mtp_depth 0); "
                             "train one with MTP or pass a draft checkpoint")

    def begin(self, target, max_len: int):
        self.check(target)
        self.target, config = target, target.config
        dtype = activation_dtype(target)
        self.depth = config.mtp_depth
        self.caches = [KVCache(config, 1, max_len, target.device, dtype, config.num_hidden_layers + d, 1)
                       for d in range(self.depth)]
        # hidden[0]: the target's final (normed) hidden states; hidden[d + 1]: module d's outputs (pre-norm)
        self.hidden = [torch.zeros(1, max_len, config.hidden_size, device=target.device, dtype=dtype)
                       for _ in range(self.depth + 1)]

    def room(self, pending):
        return min(self.k, self.depth)

    def observe(self, hidden, start):
        self.hidden[0][:, start:start + hidden.shape[1]] = hidden

    def propose(self, seq, pending, k, processed, pick):
        target, rows = self.target, []
        for d in range(k):
            cache = self.caches[d]
            start = cache.length
            n = pending - start  # positions start .. pending-1; their tokens run to seq[pending + d]
            embeds = target.model.embed_tokens(seq[:, start + d + 1:pending + d + 1])
            h_prev = self.hidden[d][:, start:pending]
            cos, sin = target.model.rotary(None, start, n, h_prev.dtype)
            mask, is_causal = attention_mask_4d(None, n, start)
            h, _ = target.mtp[d](h_prev, embeds, cos, sin, mask, is_causal, cache)
            self.hidden[d + 1][:, start:pending] = h
            row = processed(target.mtp_logits(d, h[:, -1]).float(), pending + d)
            seq[0, pending + 1 + d] = pick(row)[0]
            rows.append(row)
            # Keep only positions whose input token is certain: i + d + 1 <= pending.
            cache.crop(max(0, pending - d))
        return torch.cat(rows) if rows else None

    def rollback(self, length):
        pass  # the module caches only ever hold positions with certain tokens


def speculative_stream(model, input_ids, drafter: Drafter, max_new_tokens: int, sampling: Sampling, stop_ids: set,
                       generator=None):
    """`stream_generate` with a drafter: yields (1,) tensors, one per token, as the plain loop does."""
    config, s = model.config, sampling
    drafter.check(model)
    prompt_len, device = input_ids.shape[1], input_ids.device
    total = prompt_len + max_new_tokens
    cache = KVCache(config, 1, total, model.device, activation_dtype(model))
    drafter.begin(model, total)
    seq = torch.zeros(1, total, dtype=torch.long, device=device)  # prompt, accepted tokens, then drafts
    seq[:, :prompt_len] = input_ids
    vocab = config.vocab_size
    penalised = s.repetition_penalty != 1.0 or s.frequency_penalty or s.presence_penalty

    def processed(logits, position):
        """(n, vocab) rows to draw from, for the tokens after positions `position`, `position`+1, ...: the penalty
        state of each row counts the tokens of seq up to its position (drafts included)."""
        n = logits.shape[0]
        if penalised:
            before = seq[0, :position + 1]
            seen = torch.zeros(vocab, dtype=torch.bool, device=device)
            seen[before] = True
            counts = torch.bincount(seq[0, prompt_len:position + 1], minlength=vocab).float()
            later = torch.zeros(n, vocab, device=device)  # the row's own earlier tokens within this call
            if n > 1:
                later[1:] = torch.nn.functional.one_hot(seq[0, position + 1:position + n], vocab).float().cumsum(0)
            counts = counts + later
            seen = seen | (later > 0)
            logits = apply_penalties(logits, s.repetition_penalty, seen, counts if s.frequency_penalty or
                                     s.presence_penalty else None, s.frequency_penalty, s.presence_penalty)
        if not s.do_sample:
            return logits  # greedy: the argmax of the penalised logits, as sample_next_token takes it
        return token_distribution(logits, s.temperature, s.top_p, s.top_k)

    def pick(rows):
        return draw(rows, generator) if s.do_sample else rows.argmax(dim=-1)

    stats = drafter.stats
    hidden, _ = model.model(input_ids, None, None, cache)
    stats.rounds += 1
    drafter.observe(hidden, 0)
    pending = prompt_len  # position of the newest token: emitted, not yet run through the target
    token = int(pick(processed(model.lm_head(hidden[:, -1]).float(), prompt_len - 1))[0])
    emitted = 0
    while True:
        seq[0, pending] = token
        yield torch.tensor([token], device=device)
        emitted += 1
        stats.tokens += 1
        if token in stop_ids or emitted == max_new_tokens:
            return
        # Draft no more than can be emitted: k kept drafts and the token after them.
        k = max(0, min(drafter.room(pending), max_new_tokens - emitted - 1))
        q = drafter.propose(seq, pending, k, processed, pick) if k else None
        hidden, _ = model.model(seq[:, pending:pending + k + 1], None, None, cache)
        drafter.observe(hidden, pending)
        p = processed(model.lm_head(hidden[0]).float(), pending)
        drafts = seq[0, pending + 1:pending + 1 + k]
        if s.do_sample:
            kept, after = accept_reject(p, q, drafts, generator)
            accepted = drafts[:kept].tolist()
        else:  # one-hot p and q: keep drafts while they are the target's argmax (plain Python: few tiny ops)
            best, accepted = p.argmax(dim=-1).tolist(), drafts.tolist()
            kept = next((j for j, (d, b) in enumerate(zip(accepted, best)) if d != b), k)
            accepted, after = accepted[:kept], best[kept]
        stats.rounds += 1
        stats.drafted += k
        stats.accepted += kept
        # Positions up to pending + kept hold accepted tokens; the token after them is the new pending one.
        cache.crop(pending + kept + 1)
        drafter.rollback(pending + kept + 1)
        for t in accepted:
            pending += 1
            yield torch.tensor([t], device=device)
            emitted += 1
            stats.tokens += 1
            if t in stop_ids:
                return
        pending += 1
        token = after


@torch.inference_mode()
def generate(model, input_ids, attention_mask=None, **kwargs) -> torch.LongTensor:
    """Prompt + generated ids, (batch, prompt + new), like `GenerationMixin.generate`; rows that stop early
    are padded. Takes `stream_generate`'s arguments."""
    new = list(stream_generate(model, input_ids, attention_mask, **kwargs))
    if not new:
        return input_ids
    return torch.cat([input_ids, torch.stack(new, dim=1)], dim=1)


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) with every sequence right-aligned, so generation continues them together."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq):] = 1
    return ids, mask


def question_prompt(tokenizer, question: str, chat: bool = True) -> list[int]:
    """A question as the model was trained to see one: in the chat template (with its default system line),
    or as bos + text for a pretrained model that only continues text."""
    if not chat:
        return [tokenizer.bos_token_id] + tokenizer.encode(question, add_special_tokens=False)
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


def answer_questions(model, tokenizer, questions: list[str], max_new_tokens: int = 64, batch_size: int = 64,
                     chat: bool = True, device=None) -> list[str]:
    """Greedy replies, decoded without special tokens. `chat=False` continues plain text (pretrained models)."""
    prompts = [question_prompt(tokenizer, q, chat) for q in questions]
    return greedy_replies(model, tokenizer, prompts, max_new_tokens, batch_size, device)


def answer_image_questions(model, tokenizer, processor, questions: list[tuple[str, list]], max_new_tokens: int = 32,
                           batch_size: int = 32, device=None) -> list[str]:
    """Greedy replies of a MiniMind-V model to (question, images) pairs: each question asked in the chat template
    after its images (minimind-v's "<image>\n" + question, one tag per image)."""
    from .vision import IMAGE_MARKER, encode_with_images, load_images, pixel_values
    prompts = []
    for question, images in questions:
        content = IMAGE_MARKER * len(images) + "\n" + question
        text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
        prompts.append(encode_with_images(tokenizer, text, model.config.image_token_id, model.config.image_tokens))
    images_of = lambda rows: pixel_values(processor, load_images([im for i in rows for im in questions[i][1]]))  # noqa: E731
    return greedy_replies(model, tokenizer, prompts, max_new_tokens, batch_size, device, images_of)


@torch.no_grad()
def greedy_replies(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int, device=None,
                   images_of=None) -> list[str]:
    """Greedy replies to token-id prompts, decoded without special tokens, in the prompts' order. Prompts are
    batched sorted by length, so each batch pads little; `images_of(indices)`: the pixel values of those prompts'
    images (a MiniMind-V model), in order."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        ids, mask = left_pad([prompts[i] for i in batch], tokenizer.pad_token_id)
        images = {} if images_of is None else {"pixel_values": images_of(batch).to(device)}
        out = generate(model, ids.to(device), mask.to(device), max_new_tokens=max_new_tokens, do_sample=False,
                       eos_token_id=tokenizer.eos_token_id, **images)
        for row, i in enumerate(batch):
            new = out[row, ids.shape[1]:].tolist()
            if tokenizer.eos_token_id in new:
                new = new[:new.index(tokenizer.eos_token_id)]
            replies[i] = tokenizer.decode(new, skip_special_tokens=True)
    model.train(was_training)
    return replies


def generate_reply(model, prompt_ids: list[int], reply, **sampling):
    """Yield the text deltas of one reply as they complete; `reply` (a `model.chat.ReplyStream`) holds the
    whole text and the token count after. `sampling`: `stream_generate`'s keyword arguments."""
    ids = torch.tensor([prompt_ids], device=model.device)
    for token in stream_generate(model, ids, **sampling):
        delta = reply.push(int(token))
        if delta:
            yield delta
        if reply.stopped:
            break
    delta = reply.finish()
    if delta:
        yield delta
