"""The model core against independent references: HF Llama, naive generation, a per-token MoE loop."""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaForCausalLM
from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor, TopKLogitsWarper,
                                                    TopPLogitsWarper)

from model import MiniMindConfig, MiniMindForCausalLM
from model.checkpoint import CheckpointError, load_weights
from model.export import llama_config_from, save_as_llama, save_as_minimind
from model.generation import generate, sample_next_token, stream_generate


def tiny_config(**overrides):
    kw = dict(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=512)
    return MiniMindConfig(**{**kw, **overrides})


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return MiniMindForCausalLM(tiny_config(**overrides)).eval()


def left_padded_batch(seed=0, lengths=(12, 8, 5)):
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, width - n:] = torch.randint(3, 300, (n,), generator=g)
        mask[row, width - n:] = 1
    return ids, mask


@pytest.mark.parametrize("kw, published", [
    (dict(), 25.83),
    (dict(hidden_size=768, num_hidden_layers=16), 104.03),
    (dict(hidden_size=640, num_hidden_layers=8, use_moe=True), 145.03),
])
def test_parameter_counts_match_published(kw, published):
    with torch.device("meta"):
        model = MiniMindForCausalLM(MiniMindConfig(**kw))
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == published


def test_state_dict_names_are_llamas():
    keys = set(tiny_model().state_dict())
    layer = {k.removeprefix("model.layers.0.") for k in keys if k.startswith("model.layers.0.")}
    assert layer == {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                     "self_attn.o_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight",
                     "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"}
    moe_keys = set(tiny_model(use_moe=True).state_dict())
    assert "model.layers.1.mlp.gate.weight" in moe_keys
    assert "model.layers.1.mlp.experts.3.down_proj.weight" in moe_keys
    assert "model.layers.1.mlp.shared_experts.0.up_proj.weight" in moe_keys


@pytest.mark.parametrize("yarn", [False, True])
@pytest.mark.parametrize("flash", [True, False])
def test_logits_equal_hf_llama(yarn, flash):
    model = tiny_model(inference_rope_scaling=yarn, flash_attn=flash,
                       max_position_embeddings=32768 if yarn else 512)
    llama = LlamaForCausalLM(llama_config_from(model.config)).eval()
    llama.load_state_dict(model.state_dict(), strict=True)
    ids, mask = left_padded_batch()
    with torch.no_grad():
        diff = (model(ids).logits - llama(ids).logits).abs().max()
        assert diff <= 1e-5
        # With padding, the padded positions are meaningless; every real position must agree.
        ours, theirs = model(ids, attention_mask=mask).logits, llama(ids, attention_mask=mask).logits
        assert (ours - theirs)[mask.bool()].abs().max() <= 1e-5
        if yarn:  # far positions, where YaRN's stretched frequencies matter
            pos = torch.arange(20000, 20012)[None].expand(3, -1)
            assert (model(ids, position_ids=pos).logits - llama(ids, position_ids=pos).logits).abs().max() <= 1e-5


def test_loss_is_shifted_cross_entropy_ignoring_minus_100():
    model = tiny_model()
    ids, _ = left_padded_batch()
    labels = ids.clone()
    labels[:, :4] = -100
    out = model(ids, labels=labels)
    logits = out.logits.double()
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 300), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(out.loss.double(), ref, atol=1e-5)
    assert model(ids, logits_to_keep=1).logits.shape == (3, 1, 300)


def naive_greedy(model, ids, mask, steps):
    """Recompute the whole sequence every step: no cache at all."""
    with torch.no_grad():
        for _ in range(steps):
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            nxt = model(ids, attention_mask=mask, position_ids=pos).logits[:, -1].argmax(-1)
            ids = torch.cat([ids, nxt[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return ids


@pytest.mark.parametrize("use_moe", [False, True])
def test_kv_cache_generation_equals_no_cache(use_moe):
    model = tiny_model(seed=1, use_moe=use_moe)
    ids, mask = left_padded_batch(seed=1)
    expected = naive_greedy(model, ids, mask, 24)
    ours = generate(model, ids, mask, max_new_tokens=24, do_sample=False, eos_token_id=[])
    assert torch.equal(ours, expected)
    hf = model.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False, eos_token_id=None,
                        pad_token_id=0)
    assert torch.equal(hf, expected)
    single = ids[:1]  # batch 1, no padding
    assert torch.equal(generate(model, single, max_new_tokens=24, do_sample=False, eos_token_id=[]),
                       naive_greedy(model, single, torch.ones_like(single), 24))
    # a left-padded row continues exactly as the same prompt alone
    alone = generate(model, ids[2:, -5:], max_new_tokens=24, do_sample=False, eos_token_id=[])
    assert torch.equal(alone[0, 5:], ours[2, 12:])


def test_stream_stops_on_eos_and_stop_ids_and_respects_max_new_tokens():
    model = tiny_model(seed=2)
    ids, mask = left_padded_batch(seed=2, lengths=(6, 6))
    free = generate(model, ids, mask, max_new_tokens=10, do_sample=False, eos_token_id=[])
    assert free.shape == (2, 16)
    stop = int(free[0, 8])  # the third token row 0 produces
    steps = list(stream_generate(model, ids, mask, max_new_tokens=10, do_sample=False, eos_token_id=[],
                                       stop_token_ids=[stop]))
    out = torch.stack(steps, 1)
    first_stop = (free[0, 6:] == stop).nonzero()[0].item()
    assert out[0, first_stop] == stop and (out[0, first_stop + 1:] == 0).all()  # padded after stopping
    row1_stops = (free[1, 6:] == stop).nonzero()
    assert len(steps) == (10 if len(row1_stops) == 0 else max(first_stop, row1_stops[0].item()) + 1)


def test_sampling_processors_match_hf():
    torch.manual_seed(0)
    logits = torch.randn(4, 300) * 3
    seen_ids = torch.randint(0, 300, (4, 20))
    seen = torch.zeros(4, 300, dtype=torch.bool).scatter_(1, seen_ids, True)
    hf = RepetitionPenaltyLogitsProcessor(1.3)(seen_ids, logits.clone())
    hf = TopPLogitsWarper(0.8)(seen_ids, TopKLogitsWarper(50)(seen_ids, hf / 0.7))
    hf_probs = hf.softmax(-1)
    # our sampler with the same processors: estimate its distribution by drawing many samples
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next_token(logits, True, 0.7, 0.8, 50, 1.3, seen, g) for _ in range(4000)])
    freq = F.one_hot(draws, 300).float().mean(0)
    assert (freq[hf_probs == 0] == 0).all()  # never outside HF's top-k / top-p support
    assert (freq - hf_probs).abs().max() < 0.05
    assert torch.equal(sample_next_token(logits, False), logits.argmax(-1))
    assert torch.equal(sample_next_token(logits, True, 1.0, 1.0, 1), logits.argmax(-1))  # top-1 is greedy


def test_seeded_sampling_is_reproducible():
    model = tiny_model(seed=3)
    ids = torch.randint(3, 300, (1, 8))
    a = generate(model, ids, max_new_tokens=12, temperature=1.0, generator=torch.Generator().manual_seed(7))
    b = generate(model, ids, max_new_tokens=12, temperature=1.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def naive_moe(moe, x):
    """Per-token, per-expert loop: the definition the grouped dispatch must reproduce."""
    B, L, H = x.shape
    idx, weight, _ = moe.gate(x)
    flat = x.reshape(-1, H)
    out = torch.zeros_like(flat)
    for t in range(flat.shape[0]):
        for j in range(idx.shape[1]):
            out[t] += weight[t, j] * moe.experts[int(idx[t, j])].swiglu(flat[t])
    out = out.view(B, L, H)
    for expert in moe.shared_experts:
        out = out + expert.swiglu(x)
    return out


def test_moe_grouped_dispatch_equals_per_token_loop_and_trains_every_used_expert():
    model = tiny_model(seed=4, use_moe=True)
    moe = model.model.layers[0].mlp
    x = torch.randn(2, 9, 64)
    with torch.no_grad():
        grouped, _ = moe(x)
        assert (grouped - naive_moe(moe, x)).abs().max() < 1e-5
    model.train()
    ids, _ = left_padded_batch(seed=4)
    out = model(ids, labels=ids)
    assert out.aux_loss > 0
    (out.loss + out.aux_loss).backward()
    assert moe.gate.weight.grad.abs().sum() > 0
    used = set(moe.gate(model.model.layers[0].post_attention_layernorm(
        model.model.embed_tokens(ids)))[0].flatten().tolist())
    for e in used:
        assert moe.experts[e].gate_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("seq_aux", [True, False])
def test_moe_aux_loss_matches_float64_formula(seq_aux):
    model = tiny_model(seed=5, use_moe=True, seq_aux=seq_aux, aux_loss_alpha=0.1).train()
    gate = model.model.layers[0].mlp.gate
    x = torch.randn(3, 7, 64)
    idx, _, aux = gate(x)
    probs = F.linear(x.double(), gate.weight.double()).softmax(-1)  # (B, L, E)
    E, k = 4, 2
    chosen = F.one_hot(idx.view(3, 7, k), E).double().sum(2)  # (B, L, E) 0/1 per expert
    if seq_aux:
        f = chosen.mean(1) * E / k
        ref = (f * probs.mean(1)).sum(-1).mean()
    else:
        f = chosen.reshape(-1, E).mean(0) * E / k
        ref = (f * probs.reshape(-1, E).mean(0)).sum()
    assert torch.allclose(aux.double(), 0.1 * ref, atol=1e-6)


def test_bias_balancing_moves_load_toward_uniform():
    model = tiny_model(seed=6, use_moe=True, bias_update_speed=0.002, aux_loss_alpha=0.0).train()
    gate = model.model.layers[0].mlp.gate
    torch.manual_seed(6)
    x = torch.randn(4, 64, 64) + 0.3  # varied tokens sharing a common direction ...
    with torch.no_grad():
        gate.weight[0] += 0.05  # ... which expert 0 favours

    def load():
        return torch.bincount(gate(x)[0].flatten(), minlength=4).float()  # a training step: the bias moves

    before = load()
    for _ in range(300):
        load()
    after = torch.stack([load() for _ in range(20)]).mean(0)
    assert before[0] / before.sum() > 0.4  # skewed to start with (uniform is 0.25)
    assert after.std() < 0.3 * before.std()
    assert gate.weight.grad is None  # the bias moves without gradients


@pytest.mark.parametrize("use_moe", [False, True])
def test_save_pretrained_round_trip_through_auto_classes(tmp_path, use_moe):
    model = tiny_model(seed=7, use_moe=use_moe, bias_update_speed=0.001 if use_moe else 0.0)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is MiniMindForCausalLM
    ids, mask = left_padded_batch()
    with torch.no_grad():
        assert torch.equal(model(ids, attention_mask=mask).logits, loaded(ids, attention_mask=mask).logits)


def test_llama_export_reloads_to_identical_logits(tmp_path):
    model = tiny_model(seed=8)
    save_as_llama(model, tmp_path)
    llama = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(llama) is LlamaForCausalLM
    ids, _ = left_padded_batch()
    with torch.no_grad():
        assert (model(ids).logits - llama(ids).logits).abs().max() <= 1e-5


def test_remote_code_folder_loads_without_the_project(tmp_path):
    model = tiny_model(seed=9)
    save_as_minimind(model, tmp_path / "hf")
    ids, _ = left_padded_batch()
    torch.save({"ids": ids, "logits": model(ids).logits.detach()}, tmp_path / "ref.pt")
    code = (f"import torch; from transformers import AutoModelForCausalLM\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'hf')!r}, trust_remote_code=True)\n"
            f"ref = torch.load({str(tmp_path / 'ref.pt')!r})\n"
            f"assert 'minimind' in type(m).__module__ and not type(m).__module__.startswith('model.')\n"
            f"print(float((m(ref['ids']).logits - ref['logits']).abs().max()))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) == 0.0


def test_strict_pth_loading_names_the_problem(tmp_path):
    model = tiny_model()
    state = model.state_dict()
    path = tmp_path / "ok.pth"
    torch.save({k: v.half() for k, v in state.items() if k != "lm_head.weight"}, path)  # tied head omitted
    load_weights(tiny_model(seed=1), str(path))
    del state["model.layers.1.mlp.up_proj.weight"]
    state["model.layers.1.mlp.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"missing: model\.layers\.1\.mlp\.up_proj\.weight.*"
                                              r"unexpected: model\.layers\.1\.mlp\.extra\.weight"):
        load_weights(tiny_model(), str(tmp_path / "bad.pth"))
    torch.save(tiny_model(hidden_size=32).state_dict(), tmp_path / "small.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatch.*--hidden_size 32 --num_hidden_layers 2"):
        load_weights(tiny_model(), str(tmp_path / "small.pth"))
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_weights(tiny_model(), str(tmp_path / "nope.pth"))
