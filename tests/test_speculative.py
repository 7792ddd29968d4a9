"""Speculative decoding (model/generation.py): greedy output equal to plain greedy for every drafter, sampled
output with exactly the target's distribution, cache rollback, and the CLI / server wiring."""
import argparse
import re

import pytest
import torch

from model import MiniMindConfig, MiniMindForCausalLM
from model.chat import DEFAULT_TOKENIZER, add_model_args, load_drafter
from model.checkpoint import CheckpointError, save_weights
from model.generation import (DraftModel, KVCache, MTPDrafter, acceptance_probability, apply_penalties, generate,
                              residual_distribution, token_distribution)
from tests.helpers import save_checkpoint, scripted_model, tiny_model, tokenizer


def small(seed, vocab=64, hidden=32, layers=2, max_pos=256, scale=1.0, **kw):
    """A random model with a small vocabulary; `scale` sharpens its next-token distributions (a random init
    gives nearly uniform ones, under which every draft would be accepted)."""
    torch.manual_seed(seed)
    config = MiniMindConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                            num_key_value_heads=2, max_position_embeddings=max_pos, tie_word_embeddings=False, **kw)
    model = MiniMindForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    return model


def prompt(n, vocab=64, seed=0):
    return torch.randint(3, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------------
# The cache


def test_kv_cache_crop_then_continue_equals_no_rollback():
    model = small(0)
    ids = prompt(12)
    plain = KVCache(model.config, 1, 32, "cpu", torch.float32)
    rolled = KVCache(model.config, 1, 32, "cpu", torch.float32)
    with torch.inference_mode():
        model.model(ids[:, :8], cache=plain)
        model.model(ids[:, :8], cache=rolled)
        model.model(prompt(5, seed=9), cache=rolled)  # five drafts that get rejected
        rolled.crop(8)
        expected, _ = model.model(ids[:, 8:], cache=plain)
        got, _ = model.model(ids[:, 8:], cache=rolled)
    assert rolled.length == plain.length == 12
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError):
        rolled.crop(13)


# ----------------------------------------------------------------------------------------------------------
# Greedy: token for token the plain loop's output


def greedy(model, ids, n, **kw):
    return generate(model, ids, max_new_tokens=n, do_sample=False, eos_token_id=[], **kw)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_greedy_with_a_weak_drafter_equals_plain_greedy(k):
    target, weak = small(0, scale=20), small(1, hidden=16, layers=1, scale=20)
    ids = prompt(10)
    drafter = DraftModel(weak, k)
    assert torch.equal(greedy(target, ids, 40, drafter=drafter), greedy(target, ids, 40))
    assert drafter.stats.drafted > 0 and drafter.stats.acceptance_rate < 0.5  # many rejections
    assert drafter.stats.tokens == 40


@pytest.mark.parametrize("k", [1, 4])
def test_greedy_with_the_target_as_drafter_accepts_everything(k):
    target = small(0, scale=20)
    ids = prompt(10)
    drafter = DraftModel(target, k)
    assert torch.equal(greedy(target, ids, 41, drafter=drafter), greedy(target, ids, 41))
    assert drafter.stats.acceptance_rate == 1.0
    assert drafter.stats.tokens_per_round == pytest.approx(k + 1, abs=1)  # the last rounds draft fewer


def test_greedy_near_max_length_and_at_eos():
    target, weak = small(0, max_pos=48, scale=20), small(1, hidden=16, layers=1, max_pos=40, scale=20)
    for drafter in (DraftModel(weak, 4), DraftModel(target, 4)):
        # 45 + 10 > 48: both loops stop at the model's last position (the drafter's, 40, is shorter still)
        ids = prompt(45)
        out = greedy(target, ids, 10, drafter=drafter)
        assert out.shape[1] == 48 and torch.equal(out, greedy(target, ids, 10))
        # an eos in the middle of accepted drafts ends the reply there
        ids = prompt(10)
        plain = greedy(target, ids, 30)
        eos = int(plain[0, 10 + 13])
        expected = generate(target, ids, max_new_tokens=30, do_sample=False, eos_token_id=eos)
        got = generate(target, ids, max_new_tokens=30, do_sample=False, eos_token_id=eos, drafter=drafter)
        assert torch.equal(got, expected) and int(got[0, -1]) == eos


def test_greedy_with_penalties_equals_plain_greedy():
    """The penalty state of each verified position counts the drafts before it."""
    target, weak = small(0, scale=20), small(1, hidden=16, layers=1, scale=20)
    ids = prompt(10)
    penalties = dict(repetition_penalty=1.3, frequency_penalty=0.4, presence_penalty=0.3)
    plain = greedy(target, ids, 40, **penalties)
    assert not torch.equal(plain, greedy(target, ids, 40))  # the penalties change the reply
    for drafter in (DraftModel(weak, 3), DraftModel(target, 3)):
        assert torch.equal(greedy(target, ids, 40, drafter=drafter, **penalties), plain)


def test_bad_drafters_and_batches_are_refused():
    target = small(0)
    with pytest.raises(ValueError, match="vocabulary"):
        greedy(target, prompt(5), 4, drafter=DraftModel(small(1, vocab=80), 2))
    with pytest.raises(ValueError, match="spec_k=0"):
        DraftModel(target, 0)
    with pytest.raises(ValueError, match="mtp_depth 0"):
        greedy(target, prompt(5), 4, drafter=MTPDrafter(1))
    with pytest.raises(ValueError, match="batch of 2"):
        greedy(target, torch.cat([prompt(5), prompt(5, seed=1)]), 4, drafter=DraftModel(target, 2))


# ----------------------------------------------------------------------------------------------------------
# Self-drafting with the model's own MTP modules


class CheckedMTP(MTPDrafter):
    """An MTPDrafter whose every round is checked against the MTP chain computed from scratch (no caches):
    the module caches must be caught up with every accepted position, whatever was rejected before."""

    def propose(self, seq, pending, k, processed, pick):
        rows = super().propose(seq, pending, k, processed, pick)
        model = self.target
        h, _ = model.model(seq[:, :pending])
        cos, sin = model.model.rotary(None, 0, pending, h.dtype)
        expected = []
        for d in range(k):
            h, _ = model.mtp[d](h, model.model.embed_tokens(seq[:, d + 1:pending + d + 1]), cos, sin, None, True)
            expected.append(processed(model.mtp_logits(d, h[:, -1]).float(), pending + d))
        torch.testing.assert_close(rows, torch.cat(expected), rtol=1e-4, atol=1e-4)
        self.checked += 1
        return rows


def checked_mtp(k):
    drafter = CheckedMTP(k)
    drafter.checked = 0
    return drafter


@pytest.mark.parametrize("k", [1, 2, 3])
def test_greedy_with_mtp_drafts_equals_plain_greedy_and_caches_keep_up(k):
    target = small(0, scale=20, mtp_depth=2)
    ids = prompt(10)
    drafter = checked_mtp(k)
    assert torch.equal(greedy(target, ids, 30, drafter=drafter), greedy(target, ids, 30))
    assert drafter.checked > 5 and drafter.stats.drafted >= drafter.checked  # k > mtp_depth drafts mtp_depth
    assert drafter.stats.drafted <= min(k, 2) * drafter.stats.rounds
    penalties = dict(repetition_penalty=1.3, presence_penalty=0.5)
    assert torch.equal(greedy(target, ids, 30, drafter=checked_mtp(k), **penalties),
                       greedy(target, ids, 30, **penalties))


def test_speculative_decoding_with_latent_attention_caches():
    """MLA caches the latent instead of keys and values (kv_cache_dims): crop and the MTP caches still hold."""
    target = small(0, hidden=64, scale=20, mtp_depth=2, attention="mla")
    ids = prompt(10)
    plain = greedy(target, ids, 24)
    mtp, itself = checked_mtp(2), DraftModel(target, 3)
    assert torch.equal(greedy(target, ids, 24, drafter=mtp), plain) and mtp.checked > 5
    assert torch.equal(greedy(target, ids, 24, drafter=itself), plain) and itself.stats.acceptance_rate == 1.0


def perfect_mtp(model):
    """MTP modules for `scripted_model`, whose next token depends on the current one only: each module passes
    the embedding of its newest token through (eh_proj = [0 | I], blocks that add nothing), so the shared
    head predicts that token's successor: every draft is right."""
    H = model.config.hidden_size
    with torch.no_grad():
        for module in model.mtp:
            module.eh_proj.weight.zero_()
            module.eh_proj.weight[:, H:] = torch.eye(H)
            module.block.self_attn.o_proj.weight.zero_()
            module.block.mlp.down_proj.weight.zero_()
    return model


def test_perfect_mtp_drafts_are_all_accepted_and_eos_ends_the_reply():
    model = perfect_mtp(scripted_model(mtp_depth=2))
    ids = torch.tensor([tokenizer().apply_chat_template([{"role": "user", "content": "hi"}],
                                                        add_generation_prompt=True)["input_ids"]])
    plain = generate(model, ids, max_new_tokens=60, do_sample=False)
    drafter = checked_mtp(2)
    out = generate(model, ids, max_new_tokens=60, do_sample=False, drafter=drafter)
    assert torch.equal(out, plain) and int(out[0, -1]) == tokenizer().eos_token_id
    assert drafter.stats.acceptance_rate == 1.0 and drafter.stats.tokens_per_round > 2.2  # plain: 1
    # near the end of the context: the reply is cut where plain decoding cuts it
    short = perfect_mtp(scripted_model(mtp_depth=2, max_position_embeddings=ids.shape[1] + 7))
    assert torch.equal(generate(short, ids, max_new_tokens=60, do_sample=False, drafter=checked_mtp(2)),
                       generate(short, ids, max_new_tokens=60, do_sample=False))


# ----------------------------------------------------------------------------------------------------------
# Sampling: exactly the target's distribution


def test_one_accept_reject_step_outputs_p_exactly():
    """P(out = y) = q(y) min(1, p(y)/q(y)) + (sum_x q(x) (1 - min(1, p(x)/q(x)))) residual(y) = p(y)."""
    g = torch.Generator().manual_seed(0)
    cases = [(torch.rand(12, generator=g) ** 3, torch.rand(12, generator=g) ** 3) for _ in range(20)]
    cases += [(torch.tensor([1.0, 0, 0, 0]), torch.tensor([0.25, 0.25, 0.25, 0.25])),  # one-hot p
              (torch.tensor([0.25, 0.25, 0.25, 0.25]), torch.tensor([0, 1.0, 0, 0])),  # one-hot q
              (torch.tensor([0.5, 0.5, 0, 0]), torch.tensor([0, 0, 0.5, 0.5])),  # disjoint supports
              (torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0.1, 0.2, 0.3, 0.4]))]  # q == p
    for p, q in cases:
        p, q = p.double() / p.double().sum(), q.double() / q.double().sum()
        keep = acceptance_probability(p, q)
        out = q * keep + (q * (1 - keep)).sum() * residual_distribution(p[None], q[None])[0]
        torch.testing.assert_close(out, p, rtol=0, atol=1e-12)


def exact_first_tokens(model, ids, n, sampling):
    """{(t1, .., tn): probability} under the target, by enumerating every prefix."""
    vocab = model.config.vocab_size
    probs = {(): 1.0}
    for _ in range(n):
        prefixes = list(probs)
        seqs = torch.cat([ids.expand(len(prefixes), -1), torch.tensor([list(t) for t in prefixes],
                                                                      dtype=torch.long).view(len(prefixes), -1)], 1)
        with torch.inference_mode():
            logits = model(seqs).logits[:, -1].float()
        seen = torch.zeros(len(prefixes), vocab, dtype=torch.bool).scatter_(1, seqs, True)
        counts = torch.zeros(len(prefixes), vocab).scatter_add_(1, seqs[:, ids.shape[1]:],
                                                                torch.ones_like(seqs[:, ids.shape[1]:]).float())
        logits = apply_penalties(logits, sampling.get("repetition_penalty", 1.0), seen, counts,
                                 sampling.get("frequency_penalty", 0.0))
        dist = token_distribution(logits, sampling["temperature"], sampling["top_p"], sampling["top_k"]).double()
        probs = {prefix + (t,): probs[prefix] * float(dist[row, t])
                 for row, prefix in enumerate(prefixes) for t in range(vocab) if dist[row, t] > 0}
    return probs


def chi_square_p_value(observed: dict, expected: dict, runs: int) -> float:
    """Pearson's test, cells with fewer than 5 expected draws pooled into one."""
    big = [c for c, p in expected.items() if p * runs >= 5]
    obs = [observed.get(c, 0) for c in big] + [runs - sum(observed.get(c, 0) for c in big)]
    exp = [expected[c] * runs for c in big] + [runs * (1 - sum(expected[c] for c in big))]
    if exp[-1] < 5:  # nothing worth a cell left over
        obs, exp = obs[:-1], exp[:-1]
        obs[-1] += runs - sum(obs)
        exp[-1] += runs - sum(exp)
    stat = sum((o - e) ** 2 / e for o, e in zip(obs, exp))
    df = len(obs) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def sampled_first_tokens(target, ids, drafter, runs, n, sampling):
    counts = {}
    for seed in range(runs):
        g = torch.Generator().manual_seed(seed)
        out = generate(target, ids, max_new_tokens=n + 1, eos_token_id=[], generator=g, drafter=drafter,
                       do_sample=True, **sampling)
        key = tuple(out[0, ids.shape[1]:ids.shape[1] + n].tolist())
        counts[key] = counts.get(key, 0) + 1
    return counts


SAMPLING = dict(temperature=0.9, top_p=0.95, top_k=7)
PENALTIES = dict(repetition_penalty=1.2, frequency_penalty=0.3)


@pytest.mark.parametrize("kind, runs, penalties", [
    pytest.param("model", 300, {}, id="draft model, 300 runs"),
    pytest.param("mtp", 200, {}, id="mtp, 200 runs"),
    pytest.param("model", 3000, PENALTIES, id="draft model, 3000 runs, penalties", marks=pytest.mark.slow),
    pytest.param("mtp", 3000, PENALTIES, id="mtp, 3000 runs, penalties", marks=pytest.mark.slow)])
def test_speculative_sampling_has_the_targets_distribution(kind, runs, penalties, monkeypatch):
    """The first 3 tokens, where tokens 2 and 3 come from kept drafts, residual draws and bonus tokens: their
    joint law must be the target's, computed exactly by enumeration. Vocabulary 8 (top-k 7 cuts one), target and
    drafter both sharp and different, so most drafts are rejected and some kept.

    Tolerance: a chi-square test of the counts against the exact law must not reject at p = 1e-3, and the total
    variation distance stays under 1.5x its expected size for the right law (a bound from sqrt(p(1-p)/runs)).
    The same test does reject the drafter's own law (draft model) and, in the slow runs, a rule whose
    rejections draw from p instead of the residual (a subtle bias)."""
    from model import generation
    sampling = {**SAMPLING, **penalties}
    target = small(0, vocab=8, hidden=16, layers=1, scale=25, mtp_depth=2 if kind == "mtp" else 0)
    weak = small(3, vocab=8, hidden=16, layers=1, scale=25)
    ids = prompt(4, vocab=8)
    make = (lambda: DraftModel(weak, 2)) if kind == "model" else (lambda: MTPDrafter(2))
    drafter = make()
    exact = exact_first_tokens(target, ids, 3, sampling)
    observed = sampled_first_tokens(target, ids, drafter, runs, 3, sampling)
    assert 0.05 < drafter.stats.acceptance_rate < 0.9  # both branches of the rule are taken often
    assert chi_square_p_value(observed, exact, runs) > 1e-3
    tv = 0.5 * sum(abs(observed.get(c, 0) / runs - exact.get(c, 0.0)) for c in set(exact) | set(observed))
    assert tv < 1.5 * 0.5 * sum((p * (1 - p) / runs) ** 0.5 for p in exact.values())
    if kind == "model":
        assert chi_square_p_value(observed, exact_first_tokens(weak, ids, 3, sampling), runs) < 1e-6
    if runs > 1000:
        monkeypatch.setattr(generation, "residual_distribution", lambda p, q: p)
        biased = sampled_first_tokens(target, ids, make(), runs, 3, sampling)
        assert chi_square_p_value(biased, exact, runs) < 1e-6


# ----------------------------------------------------------------------------------------------------------
# The command line and the server


def test_load_drafter_rejects_bad_combinations(tmp_path):
    model = tiny_model()
    parser = add_model_args(argparse.ArgumentParser(), quantize=True, speculative=True)
    ok = str(tmp_path / "draft.pth")  # its meta names the model's own tokenizer folder
    save_weights(tiny_model(seed=1, hidden_size=32), ok, {"args": {"tokenizer_path": DEFAULT_TOKENIZER}},
                 dtype=torch.float32)
    assert load_drafter(parser.parse_args(["--draft_weight", ok]), model, tokenizer()).k == 4
    other_vocab = str(tmp_path / "vocab.pth")
    save_weights(tiny_model(vocab_size=7000), other_vocab, {}, dtype=torch.float32)
    other_tok = str(tmp_path / "tok.pth")
    save_weights(tiny_model(seed=2), other_tok, {"tokenizer_fingerprint": "0123456789abcdef"}, dtype=torch.float32)
    assert load_drafter(parser.parse_args(["--draft_weight", "mtp"]), tiny_model(mtp_depth=2), tokenizer()).k == 2
    for flags, message in [(["--draft_weight", other_vocab], "vocabulary \\(7000\\)"),
                           (["--draft_weight", other_tok], "another tokenizer"),
                           (["--draft_weight", "mtp"], "no multi-token-prediction"),
                           (["--draft_weight", ok, "--spec_k", "0"], "--spec_k 0"),
                           (["--draft_weight", str(tmp_path / "none.pth")], "no such file")]:
        with pytest.raises(CheckpointError, match=message):
            load_drafter(parser.parse_args(flags), model, tokenizer())


def test_eval_model_with_a_drafter_gives_the_same_greedy_replies(tmp_path, capsys):
    import eval_model
    save_checkpoint(scripted_model(), tmp_path, "reason")
    draft = save_checkpoint(tiny_model(seed=5, hidden_size=32), tmp_path / "draft", "full_dist")
    flags = ["--model_mode", "3", "--out_dir", str(tmp_path), "--hidden_size", "64", "--max_new_tokens", "20",
             "--temperature", "0", "--device", "cpu", "--dtype", "float32", "--stream", "0"]
    eval_model.main(flags)
    plain = capsys.readouterr().out
    eval_model.main(flags + ["--draft_weight", draft, "--spec_k", "3"])
    spec = capsys.readouterr().out
    assert "speculative decoding" in spec and "accepted]" in spec
    strip = lambda out: [re.sub(r"[\d.]+ tokens/s.*", "", line) for line in out.splitlines()  # noqa: E731
                         if not line.startswith(("model:", "speculative"))]
    assert strip(spec) == strip(plain)
    assert plain.count("[answer]\nYes 是的") == len(eval_model.CHAT_PROMPTS)


def test_server_with_a_drafter_streams_the_same_greedy_reply():
    import openai

    from tests.test_serve import KEY, USER, live_server

    def streamed(url):
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY)
        stream = client.chat.completions.create(model="tiny", messages=USER, max_tokens=24, temperature=0,
                                                stream=True)
        return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices), client

    model = tiny_model()
    with live_server(model, api_key=KEY) as url:
        expected, _ = streamed(url)
    drafter = DraftModel(tiny_model(seed=5, hidden_size=32), 3)
    with live_server(model, api_key=KEY, drafter=drafter) as url:
        text, client = streamed(url)
        assert text == expected and text
        reply = client.chat.completions.create(model="tiny", messages=USER, max_tokens=24, temperature=0.8,
                                               seed=3)
        assert reply.choices[0].finish_reason in ("stop", "length")
        with pytest.raises(openai.BadRequestError, match="speculative"):
            client.chat.completions.create(model="tiny", messages=USER, max_tokens=4, logprobs=True)
    assert drafter.stats.drafted > 0
