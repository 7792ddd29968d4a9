"""The decode step of static shapes (generation.DecodeStep), eager and under torch.compile, against the plain
forward: the same logits to float32 rounding and the same greedy tokens, with and without left padding."""
import torch

from model.generation import DecodeStep, KVCache, generate, stream_generate
from tests.test_model import left_padded_batch, naive_greedy, tiny_model


def prefilled(model, ids, mask, new_tokens):
    """A KVCache holding the prompt, and the logits after it, from the plain forward."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = KVCache(model.config, ids.shape[0], ids.shape[1] + new_tokens, "cpu", torch.float32)
    hidden, _ = model.model(ids, mask, positions, cache)
    return cache, model.lm_head(hidden[:, -1])


@torch.inference_mode()
def test_decode_steps_give_the_plain_forwards_logits_with_left_padding():
    model = tiny_model(seed=5)
    ids, mask = left_padded_batch(seed=5)
    steps = 6
    cache, logits = prefilled(model, ids, mask, steps)
    decode = DecodeStep(model, cache, mask)
    full_ids, full_mask = ids, mask
    for _ in range(steps):
        token = logits.argmax(-1, keepdim=True)
        full_ids = torch.cat([full_ids, token], 1)
        full_mask = torch.cat([full_mask, torch.ones_like(token)], 1)
        logits = decode(token)
        # the plain forward over the whole sequence, no cache
        positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
        hidden, _ = model.model(full_ids, full_mask, positions)
        torch.testing.assert_close(logits, model.lm_head(hidden[:, -1]), atol=1e-5, rtol=1e-5)
    assert cache.length == full_ids.shape[1]


@torch.inference_mode()
def test_compiled_decode_gives_the_same_logits_and_greedy_tokens():
    torch._dynamo.reset()
    model = tiny_model(seed=6)
    ids, mask = left_padded_batch(seed=6)
    # logits of a few steps, compiled against eager, on two copies of the same prefilled cache
    cache, first = prefilled(model, ids, mask, 4)
    twin = KVCache(model.config, ids.shape[0], ids.shape[1] + 4, "cpu", torch.float32)
    twin.k.copy_(cache.k), twin.v.copy_(cache.v)
    twin.length = cache.length
    eager, compiled = DecodeStep(model, cache, mask), DecodeStep(model, twin, mask, compile=True)
    token = first.argmax(-1, keepdim=True)
    for _ in range(4):
        a, b = eager(token), compiled(token)
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
        token = a.argmax(-1, keepdim=True)
    torch.testing.assert_close(twin.k, cache.k, atol=1e-5, rtol=1e-5)  # the graph wrote the cache in place
    # greedy tokens: a left-padded batch and one unpadded prompt, against generation without a cache
    out = generate(model, ids, mask, max_new_tokens=16, do_sample=False, eos_token_id=[], compile=True)
    assert torch.equal(out, naive_greedy(model, ids, mask, 16))
    single = ids[:1]
    out = generate(model, single, max_new_tokens=20, do_sample=False, eos_token_id=[], compile=True)
    assert torch.equal(out, naive_greedy(model, single, torch.ones_like(single), 20))
    # weights changed in place after compiling (an RL step) are what the next generation runs with
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    out = generate(model, single, max_new_tokens=12, do_sample=False, eos_token_id=[], compile=True)
    assert torch.equal(out, naive_greedy(model, single, torch.ones_like(single), 12))


def test_compiled_stream_stops_like_the_eager_one():
    model = tiny_model(seed=7)
    ids, mask = left_padded_batch(seed=7, lengths=(6, 6))
    free = generate(model, ids, mask, max_new_tokens=10, do_sample=False, eos_token_id=[])
    stop = int(free[0, 8])
    kw = dict(max_new_tokens=10, do_sample=False, eos_token_id=[], stop_token_ids=[stop])
    eager = torch.stack(list(stream_generate(model, ids, mask, **kw)), 1)
    assert torch.equal(torch.stack(list(stream_generate(model, ids, mask, compile=True, **kw)), 1), eager)
