"""Generation: the one KV-cache decoding path that the CLI, the web chat, the API server, held-out evaluation
and RL rollouts share.

- `KVCache`: preallocated key/value buffers, written in place at each step.
- `sample_next_token`: repetition, frequency and presence penalties, temperature, top-k, top-p, then one
  draw per row.
- `stream_generate`: yields the next token of every row of a (left-padded) batch, step by step.
- `generate`: the same, collected into prompt + new ids (what `GenerationMixin.generate` returns).
- `answer_questions`: many chat questions at once, greedy, batched by length.
- `generate_reply`: one reply as text deltas (through a `model.chat.ReplyStream`).

The model's own `generate` (transformers' `GenerationMixin`) still works; tests check both give the same
greedy tokens. This loop is leaner: no per-step processor objects, a cache without concatenation.
"""
import torch

from .model_minimind import MiniMindConfig


class KVCache:
    """Preallocated key/value buffers: a decode step writes in place instead of concatenating."""

    def __init__(self, config: MiniMindConfig, batch_size: int, max_len: int, device, dtype):
        shape = (config.num_hidden_layers, batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0
        self.last_layer = config.num_hidden_layers - 1

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def update(self, k, v, layer_idx: int, *args, **kwargs):
        end = self.length + k.shape[2]
        self.k[layer_idx, :, :, self.length:end] = k
        self.v[layer_idx, :, :, self.length:end] = v
        if layer_idx == self.last_layer:
            self.length = end
        return self.k[layer_idx, :, :, :end], self.v[layer_idx, :, :, :end]


def sample_next_token(logits, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
                      seen=None, generator=None, counts=None, frequency_penalty=0.0, presence_penalty=0.0):
    """Pick one token per row from (batch, vocab) logits, with the usual processors in the usual order.
    `seen`: (batch, vocab) bool, the tokens the repetition penalty applies to; `counts`: (batch, vocab), how
    often each token occurs in the reply so far, for OpenAI's frequency and presence penalties."""
    if seen is not None and repetition_penalty != 1.0:
        # CTRL-style: make already-seen tokens less likely whatever the sign of their logit.
        penalised = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if counts is not None:
        # OpenAI's: minus count x frequency_penalty, and presence_penalty once a token has occurred (vLLM's order:
        # after the repetition penalty)
        logits = logits - counts * frequency_penalty - (counts > 0) * presence_penalty
    if not do_sample:
        return logits.argmax(dim=-1)
    logits = logits / max(temperature, 1e-5)
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cum - sorted_logits.softmax(dim=-1) > top_p  # keep the smallest set whose mass reaches top_p
        logits = logits.scatter(1, sorted_idx, sorted_logits.masked_fill(remove, float("-inf")))
    # Exponential race: argmax(p_i / E_i) with E_i ~ Exp(1) draws i with probability p_i, in one pass
    # (cheaper than torch.multinomial, and the same draw for a given generator).
    probs = logits.softmax(dim=-1)
    race = torch.empty_like(probs).exponential_(1, generator=generator)
    return (probs / race).argmax(dim=-1)


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
):
    """Yield the next token of every row, one (batch,) tensor per step.

    Prompts of different lengths are left-padded with `attention_mask` marking the real tokens. Greedy when
    `do_sample` is False (default: sample iff temperature > 0). A row is done after it yields an eos or stop
    id; later steps yield `pad_token_id` for it, and the loop ends when every row is done.
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
    pad_id = config.pad_token_id or 0

    padded = attention_mask is not None and not bool(attention_mask.all())
    if padded:  # each row counts its positions from its first real token
        attention_mask = attention_mask.long()
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        next_pos = position_ids[:, -1:] + 1
    else:
        attention_mask, position_ids = None, None

    cache = KVCache(config, B, prompt_len + max_new_tokens, model.device, model.lm_head.weight.dtype)
    seen = None
    if repetition_penalty != 1.0:
        seen = torch.zeros(B, config.vocab_size, dtype=torch.bool, device=input_ids.device)
        seen.scatter_(1, input_ids, True)
    done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)

    tokens = input_ids
    for step in range(max_new_tokens):
        hidden, _ = model.model(tokens, attention_mask, position_ids, cache)
        logits = model.lm_head(hidden[:, -1]).float()
        next_token = sample_next_token(logits, do_sample, temperature, top_p, top_k, repetition_penalty, seen,
                                       generator)
        next_token = next_token.masked_fill(done, pad_id)
        yield next_token
        done = done | torch.isin(next_token, stop_ids)
        if step == max_new_tokens - 1 or bool(done.all()):
            return
        if seen is not None:
            seen.scatter_(1, next_token[:, None], True)
        tokens = next_token[:, None]
        if padded:
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, 1)], dim=1)
            position_ids, next_pos = next_pos, next_pos + 1


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


@torch.no_grad()
def answer_questions(model, tokenizer, questions: list[str], max_new_tokens: int = 64, batch_size: int = 64,
                     chat: bool = True, device=None) -> list[str]:
    """Greedy replies, decoded without special tokens. `chat=False` continues plain text (pretrained models).

    Questions are sorted by length so each batch pads little; replies come back in the input order.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    prompts = [question_prompt(tokenizer, q, chat) for q in questions]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        ids, mask = left_pad([prompts[i] for i in batch], tokenizer.pad_token_id)
        out = generate(model, ids.to(device), mask.to(device), max_new_tokens=max_new_tokens, do_sample=False,
                       eos_token_id=tokenizer.eos_token_id)
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
