"""Continuous batching for the API server: one scheduler thread owns the model, and each decode step advances
every running request by one token in a single batched forward. New requests join between steps; finished,
stopped or abandoned ones leave and free their slot.

Design: left-padded rows in one KV cache
-----------------------------------------
The running requests are the rows of one batch. Each row is left-padded so that every row's newest token
sits in the same cache column: the cache is the model's own `KVCache` of shape
(layers, rows, kv_heads, length, head_dim), an attention mask marks each row's real positions, and position
ids count each row's own tokens. That is exactly what the model's forward already handles for a left-padded
batch, so the engine runs the same attention, masking and RoPE code as `generation.stream_generate`.

One scheduler step:
1. retire  rows whose client left (or hit a stop string) go first, so no compute is spent on them;
2. admit   while slots are free, each waiting request is prefilled alone (batch 1, no padding; the n
           samples of one prompt share one prefill), its first token sampled from the prefill logits, and
           the newcomers' K/V merged into the batch: the cache is laid out anew, once, at the common length
           max(batch length, prompt lengths), everyone right-aligned;
3. decode  one forward of the rows' pending tokens, (rows, 1); rows with equal sampling settings sample in
           one call, and a seeded request alone with its own generator, so it gets the same tokens whatever
           shares its batch; rows that produced eos or reached max_tokens leave.
Whenever rows leave, the columns that are padding in every remaining row are cut, so the cache stays as
long as the longest live row, not as long as the server's history.

Images (a MiniMind-V model): a request may carry the pixel values of its prompt's image slots. Only its own
prefill reads them (`model.embed_inputs`, as `generation.stream_generate` does); from then on the row is text
on the KV cache like any other, so requests with and without images decode in one batch.

What this gives up, next to vLLM's paged attention: rows attend over the longest row's length, and a change
of batch membership copies the cache once. Both are cheap at MiniMind's sizes; the steady state is one
batched matmul per weight per step, which is where batching wins (a decode step is mostly fixed overhead).
"""
import collections
import threading
import traceback
from concurrent.futures import Future
from dataclasses import dataclass, replace

import torch

from .generation import KVCache, sample_next_token, stream_generate

SPARE_COLUMNS = 64  # decode steps that fit before the cache must be laid out again


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0  # OpenAI's penalties, on the counts of the tokens generated so far
    presence_penalty: float = 0.0
    seed: int | None = None
    logprobs: bool = False  # keep each sampled token's log-prob (RL rollouts use them as the old policy)
    top_logprobs: int = 0  # with logprobs: also keep this many most likely tokens of each step


class Request:
    """One generation. The engine calls `on_event(token_id, finish_reason)` from its thread: a token with
    finish_reason None while generating; the last token with 'stop' (eos) or 'length'; (None, 'error') if
    the engine failed. `cancel()` (any thread) makes the engine drop it at its next step."""

    def __init__(self, prompt_ids, params: SamplingParams, on_event, device, vocab_size, pixel_values=None):
        self.prompt_ids = list(prompt_ids)
        self.pixel_values = pixel_values  # (images, 3, H, W) for the prompt's image slots, or None
        self.params = params
        self.on_event = on_event
        self.n_generated = 0
        self.cancelled = False
        self.logprobs = [] if params.logprobs else None  # log p(token) under the sampling temperature
        # (token ids, their log-probs) of the most likely tokens, one pair per step
        self.top_logprobs = [] if params.logprobs and params.top_logprobs else None
        p = params
        self.generator = None  # a seeded request samples from its own generator
        if p.temperature > 0 and p.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(p.seed % 2**64)
        # Rows with equal settings sample together; a seeded one alone (its draws must not depend on the batch).
        penalties = (p.repetition_penalty, p.frequency_penalty, p.presence_penalty)
        if p.temperature == 0:
            self.sampling_group = ("greedy", *penalties)
        elif self.generator:
            self.sampling_group = id(self)
        else:
            self.sampling_group = (p.temperature, p.top_p, p.top_k, *penalties)
        self.seen = None  # tokens of the prompt and the reply, for the repetition penalty
        if p.repetition_penalty != 1.0:
            self.seen = torch.zeros(1, vocab_size, dtype=torch.bool, device=device)
            self.seen[0, [t for t in self.prompt_ids if t < vocab_size]] = True  # image slots are not tokens
        self.counts = None  # how often each token occurs in the reply, for the frequency and presence penalties
        if p.frequency_penalty or p.presence_penalty:
            self.counts = torch.zeros(1, vocab_size, device=device)

    def cancel(self):
        self.cancelled = True


class Engine:
    """The scheduler. `start()` runs it on a background thread; tests may call `step()` directly instead."""

    def __init__(self, model, max_batch_size: int = 16, eos_token_ids=None, generator: torch.Generator | None = None,
                 drafter=None):
        """`drafter` (generation.DraftModel or MTPDrafter): speculative decoding, one request at a time
        (max_batch_size becomes 1): each request's tokens come from `stream_generate(..., drafter=...)`, a
        step emitting one of them. Log-probs are not kept on that path (the server refuses to ask)."""
        self.model = model.eval()
        self.config = model.config
        self.device = model.device
        self.dtype = next(model.parameters()).dtype
        self.drafter = drafter
        if drafter is not None:
            drafter.check(model)
            max_batch_size = 1
        self.max_batch_size = max_batch_size
        self.generator = generator  # for requests without a seed; a caller's makes a synchronous run repeatable
        if self.generator is None:
            self.generator = torch.Generator(device=self.device)
            self.generator.seed()
        eos = self.config.eos_token_id if eos_token_ids is None else eos_token_ids
        self.eos = {eos} if isinstance(eos, int) else set(eos)
        self.waiting = collections.deque()
        self.calls: list[tuple] = []  # (fn, Future) for the engine thread to run between steps
        self.last_prefill = None  # (prompt ids, pixel values, cache, logits) of the last prompt prefilled
        self.wakeup = threading.Condition()
        self.thread = None
        self.running = False
        self.stats = collections.Counter()  # finished requests by reason, for /health
        self.reset_batch()

    def reset_batch(self):
        self.rows: list[Request] = []
        self.speculative = None  # with a drafter: the running request's token stream
        self.cache = None  # KVCache of the rows; None while there are none
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=self.device)  # (rows, length): 0 = left padding
        self.tokens = torch.zeros(0, dtype=torch.long, device=self.device)  # each row's next input token
        self.positions = torch.zeros(0, dtype=torch.long, device=self.device)  # the position that token takes

    # -- the outside world (any thread) ----------------------------------------------------------------------

    def submit(self, prompt_ids, params: SamplingParams, on_event, pixel_values=None) -> Request:
        """Queue a request; `pixel_values`: the images of the prompt's image slots (a MiniMind-V model)."""
        room = self.config.max_position_embeddings - len(prompt_ids)
        if not prompt_ids or room <= 0:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens: need 1..{self.config.max_position_embeddings - 1}")
        self.check_images(prompt_ids, pixel_values)
        params = replace(params, max_tokens=min(params.max_tokens, room))
        if pixel_values is not None:
            pixel_values = pixel_values.to(self.device)
        request = Request(prompt_ids, params, on_event, self.device, self.config.vocab_size, pixel_values)
        with self.wakeup:
            self.waiting.append(request)
            self.wakeup.notify()
        return request

    def check_images(self, prompt_ids, pixel_values):
        """A ValueError (one line) unless the images fit the prompt: a model that takes images, no drafter,
        and one run of slots per image. Found here, not in the prefill, where it would fail the request late."""
        n_images = 0 if pixel_values is None else pixel_values.shape[0]
        slot = getattr(self.config, "image_token_id", None)
        if n_images and slot is None:
            raise ValueError("this model has no vision encoder: it takes text only")
        if n_images and self.drafter is not None:
            raise ValueError("speculative decoding takes text prompts only, not images")
        slots = 0 if slot is None else sum(t == slot for t in prompt_ids)
        if slots != n_images * (self.config.image_tokens if n_images else 1):
            raise ValueError(f"the prompt has {slots} image slots for {n_images} image(s) of "
                             f"{getattr(self.config, 'image_tokens', 0)} slots each")

    def start(self):
        self.running = True
        self.thread = threading.Thread(target=self.loop, name="minimind-engine", daemon=True)
        self.thread.start()

    def stop(self):
        with self.wakeup:
            self.running = False
            self.wakeup.notify()
        if self.thread:
            self.thread.join()

    @property
    def load(self) -> dict:
        return {"running": len(self.rows), "waiting": len(self.waiting), "max_batch_size": self.max_batch_size,
                "finished": dict(self.stats)}

    def call(self, fn):
        """Run `fn()` on the engine thread between two decode steps and return its result (or raise its error):
        the engine thread owns the model, so this is how another thread changes it. Requests in flight keep
        going. Without a running engine thread (never started, stopped, or stepped by hand) it runs here."""
        future = Future()
        with self.wakeup:
            queued = self.running and threading.current_thread() is not self.thread
            if queued:
                self.calls.append((fn, future))
                self.wakeup.notify()
        if queued:
            return future.result()
        if self.thread and self.thread is not threading.current_thread():
            self.thread.join()  # stopped: let it finish the step it may be in
        return fn()

    def loop(self):
        while True:
            with self.wakeup:
                while self.running and not self.rows and not self.waiting and not self.calls:
                    self.wakeup.wait()
                calls, self.calls, running = self.calls, [], self.running
            for fn, future in calls:  # including those queued just before stop(): nobody waits forever
                try:
                    future.set_result(fn())
                except Exception as e:
                    future.set_exception(e)
            if not running:
                return
            try:
                self.step()
            except Exception:  # keep serving: fail the requests in flight, not the server
                traceback.print_exc()
                for request in self.rows:
                    request.on_event(None, "error")
                self.stats["error"] += len(self.rows)
                self.reset_batch()

    # -- the scheduler (the engine thread only) -------------------------------------------------------------

    @torch.inference_mode()
    def step(self):
        if self.drafter is not None:
            self.speculative_step()
            return
        self.retire([r.cancelled for r in self.rows], "cancelled")
        admitted = []  # (request, its prefilled cache, its first token)
        while len(self.rows) + len(admitted) < self.max_batch_size:
            request = self.next_waiting()
            if request is None:
                break
            if newcomer := self.prefill(request):
                admitted.append(newcomer)
        self.last_prefill = None  # held only while admitting: the n samples of a prompt arrive together
        if admitted:  # merge them all into the batch with one new layout
            self.layout(keep=range(len(self.rows)), newcomers=[cache for _, cache, _ in admitted])
            self.rows += [request for request, _, _ in admitted]
            self.tokens = torch.cat([self.tokens, self.tokens.new_tensor([token for _, _, token in admitted])])
            self.positions = torch.cat([self.positions, self.positions.new_tensor(
                [len(request.prompt_ids) for request, _, _ in admitted])])
        if self.rows:
            self.decode()

    def next_waiting(self):
        """The oldest waiting request not cancelled while it waited (those are counted and dropped), or None."""
        while True:
            with self.wakeup:
                request = self.waiting.popleft() if self.waiting else None
            if request is None or not request.cancelled:
                return request
            self.stats["cancelled"] += 1

    def speculative_step(self):
        """One token of the one running request (which a waiting request replaces once it is done)."""
        if self.rows and self.rows[0].cancelled:
            self.stats["cancelled"] += 1
            self.reset_batch()
        if not self.rows:
            request = self.next_waiting()
            if request is None:
                return
            p = request.params
            ids = torch.tensor([request.prompt_ids], device=self.device)
            self.rows = [request]
            self.speculative = stream_generate(
                self.model, ids, max_new_tokens=p.max_tokens, temperature=p.temperature, top_p=p.top_p,
                top_k=p.top_k, repetition_penalty=p.repetition_penalty, do_sample=p.temperature > 0,
                eos_token_id=sorted(self.eos), generator=request.generator or self.generator,
                frequency_penalty=p.frequency_penalty, presence_penalty=p.presence_penalty, drafter=self.drafter)
        # The stream ends exactly when emit reports the request finished (eos or max_tokens).
        if self.emit(self.rows[0], int(next(self.speculative)[0]), float("nan"), None):
            self.reset_batch()

    def prefill(self, request: Request):
        """Prefill the prompt alone and emit the first token; (request, cache, token) when the request goes on.
        A prompt equal to the one just prefilled (the n samples of one prompt, an RL group) reuses its cache
        and logits: only the draw differs. With images, "equal" means the very same pixel tensor (the n
        samples of one request share it): equal ids with other images are another prompt."""
        key = tuple(request.prompt_ids)
        last = self.last_prefill
        if last is None or last[0] != key or last[1] is not request.pixel_values:
            cache = KVCache(self.config, 1, len(key), self.device, self.dtype)
            try:
                ids = torch.tensor([request.prompt_ids], device=self.device)
                embeds = None
                if request.pixel_values is not None:  # the images' features in their slots, this once
                    embeds = self.model.embed_inputs(ids, request.pixel_values)
                logits = self.model(ids, cache=cache, logits_to_keep=1, inputs_embeds=embeds).logits[:, -1].float()
            except Exception:  # e.g. out of memory on a long prompt: fail this request, not the running batch
                traceback.print_exc()
                request.on_event(None, "error")
                self.stats["error"] += 1
                return None
            # The pixel tensor is held with the key, so its id cannot pass to another request's while compared.
            self.last_prefill = (key, request.pixel_values, cache, logits)
        _, _, cache, logits = self.last_prefill
        tokens, logprobs, tops = self.sample(logits, [request])
        token = int(tokens[0])
        if self.emit(request, token, float(logprobs[0]), tops[0]):
            return None
        return request, cache, token

    def decode(self):
        """One token for every row in one forward."""
        if self.cache.length == self.cache.k.shape[3]:  # out of spare columns
            self.layout(keep=range(len(self.rows)))
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        out = self.model(self.tokens[:, None], attention_mask=self.mask, position_ids=self.positions[:, None],
                         cache=self.cache, logits_to_keep=1)
        tokens, logprobs, tops = self.sample(out.logits[:, -1].float(), self.rows)
        self.tokens, self.positions = tokens, self.positions + 1
        done = [self.emit(request, token, logprob, top)
                for request, token, logprob, top in zip(self.rows, tokens.tolist(), logprobs.tolist(), tops)]
        self.retire(done)

    def sample(self, logits: torch.Tensor, rows: list[Request]) -> tuple[torch.Tensor, torch.Tensor, list]:
        """The next token of each row (one `sample_next_token` call per group of rows with equal settings) and,
        for rows that keep them, its log-prob under the temperature-scaled distribution, before penalties and
        top-k/top-p: the policy's own log p(token), which training recomputes with a forward pass (NaN for
        other rows); and per row, (ids, log-probs) of that distribution's `top_logprobs` most likely tokens, or
        None."""
        groups = collections.defaultdict(list)
        for i, request in enumerate(rows):
            groups[request.sampling_group].append(i)
        tokens = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        logprobs = torch.full((len(rows),), float("nan"), device=logits.device)
        tops = [None] * len(rows)
        for idx in groups.values():
            first, p = rows[idx[0]], rows[idx[0]].params
            seen = torch.cat([rows[i].seen for i in idx]) if first.seen is not None else None
            counts = torch.cat([rows[i].counts for i in idx]) if first.counts is not None else None
            tokens[idx] = sample_next_token(logits[idx], p.temperature > 0, p.temperature, p.top_p, p.top_k,
                                            p.repetition_penalty, seen, first.generator or self.generator,
                                            counts, p.frequency_penalty, p.presence_penalty)
            if any(rows[i].logprobs is not None for i in idx):
                scaled = logits[idx] / p.temperature if p.temperature > 0 else logits[idx]
                logp = scaled.log_softmax(-1)
                logprobs[idx] = logp.gather(-1, tokens[idx, None]).squeeze(-1)
                wanted = {row: rows[i].params.top_logprobs for row, i in enumerate(idx)
                          if rows[i].top_logprobs is not None}
                if wanted:
                    values, ids = logp.topk(max(wanted.values()), dim=-1)
                    for row, n in wanted.items():
                        tops[idx[row]] = (ids[row, :n].tolist(), values[row, :n].tolist())
        return tokens, logprobs, tops

    def emit(self, request: Request, token: int, logprob: float, top: tuple | None) -> bool:
        """Hand the token to the request's owner; True when the request is finished."""
        request.n_generated += 1
        if request.seen is not None:
            request.seen[0, token] = True
        if request.counts is not None:
            request.counts[0, token] += 1
        if request.logprobs is not None:
            request.logprobs.append(logprob)
        if request.top_logprobs is not None:
            request.top_logprobs.append(top)
        finish = "stop" if token in self.eos else "length" if request.n_generated >= request.params.max_tokens \
            else None
        request.on_event(token, finish)
        if finish:
            self.stats[finish] += 1
        return finish is not None

    def retire(self, leaving: list[bool], reason: str | None = None):
        if not any(leaving):
            return
        if reason:
            self.stats[reason] += sum(leaving)
        keep = [i for i, gone in enumerate(leaving) if not gone]
        if not keep:
            self.reset_batch()
            return
        self.layout(keep)
        self.rows = [self.rows[i] for i in keep]
        self.tokens, self.positions = self.tokens[keep], self.positions[keep]

    def layout(self, keep, newcomers: list[KVCache] = ()):
        """Lay the cache out anew for rows `keep` (+ newcomers' prefilled caches, as the last rows): columns
        that are padding in every kept row are cut, all rows are right-aligned to the common length, and
        SPARE_COLUMNS free columns follow for the next decode steps."""
        keep = list(keep)
        old_len = self.mask.shape[1]
        start = int(self.mask[keep].any(dim=0).long().argmax()) if keep else old_len  # first column in use
        kept_len = old_len - start
        new_len = max([kept_len] + [c.length for c in newcomers])
        n_rows = len(keep) + len(newcomers)
        cache = KVCache(self.config, n_rows, new_len + SPARE_COLUMNS, self.device, self.dtype)
        # Padding must hold finite numbers: a masked-out score gets weight 0, but 0 * NaN garbage is NaN.
        cache.k.zero_()
        cache.v.zero_()
        mask = torch.zeros(n_rows, new_len, dtype=torch.long, device=self.device)
        if keep:
            cache.k[:, :len(keep), :, new_len - kept_len:new_len] = self.cache.k[:, keep, :, start:old_len]
            cache.v[:, :len(keep), :, new_len - kept_len:new_len] = self.cache.v[:, keep, :, start:old_len]
            mask[:len(keep), new_len - kept_len:] = self.mask[keep, start:]
        for row, newcomer in enumerate(newcomers, start=len(keep)):
            n = newcomer.length
            cache.k[:, row:row + 1, :, new_len - n:new_len] = newcomer.k[:, :, :, :n]
            cache.v[:, row:row + 1, :, new_len - n:new_len] = newcomer.v[:, :, :, :n]
            mask[row, new_len - n:] = 1
        cache.length = new_len
        self.cache, self.mask = cache, mask
