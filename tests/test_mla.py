"""Multi-head latent attention (MLA, DeepSeek-V2/V3) as an option: against transformers' DeepseekV3 and a float64
formula, cache against no cache, the absorbed decode path against the plain one, the cache's size, training."""
import argparse
import copy
import os
import signal
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM
from transformers.cache_utils import DynamicCache

from model import MiniMindConfig
from model.checkpoint import CheckpointError, load_model, size_overrides
from model.export import save_as_llama, save_as_minimind
from model.generation import KVCache, generate
from model.logger import flops_per_token
from model.model_lora import apply_lora, default_targets, merge_lora
from model.model_minimind import LatentAttention, attention_mask_4d, kv_cache_dims
from model.runtime import add_common_args
from scripts.convert_model import save_gguf
from tests.helpers import ROOT, losses, write_corpus
from tests.test_model import left_padded_batch, naive_greedy, tiny_model
from tests.test_training import TINY, train


def mla_model(seed=0, **overrides):
    """A 64 x 2 model (4 heads of 16) with latent attention: latent 16, RoPE key 8, so a layer caches 24 values
    per token (GQA's would be 2 x 16 x 2 = 64)."""
    return tiny_model(seed, attention="mla", **overrides)


def set_absorb(model, value):
    for layer in model.model.layers:
        layer.self_attn.absorb = value
    return model


def deepseek_twin(model):
    """transformers' DeepseekV3 computing what `model` computes: every layer dense, rotate-half RoPE (not its
    default interleaved layout), same weights under the same names."""
    c = model.config
    rope = {"rope_type": "default", "rope_theta": c.rope_theta}
    if c.yarn_params:
        rope = {"rope_type": "yarn", "rope_theta": c.rope_theta, **c.yarn_params}
    config = DeepseekV3Config(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_attention_heads, kv_lora_rank=c.kv_lora_rank, q_lora_rank=c.q_lora_rank or None,
        qk_rope_head_dim=c.qk_rope_head_dim, qk_nope_head_dim=c.qk_nope_head_dim, v_head_dim=c.v_head_dim,
        first_k_dense_replace=c.num_hidden_layers, max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps, rope_parameters=rope, rope_interleave=False,
        tie_word_embeddings=c.tie_word_embeddings, num_mtp_layers=0, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    twin = DeepseekV3ForCausalLM(config).eval()
    twin.load_state_dict(model.state_dict(), strict=True)
    return twin


@pytest.mark.parametrize("q_lora_rank, yarn", [(0, False), (24, False), (0, True)])
def test_logits_equal_transformers_deepseek_v3(q_lora_rank, yarn):
    # DeepSeek's latent norms use eps 1e-6 whatever rms_norm_eps says; ours follow rms_norm_eps, so set both alike.
    model = mla_model(q_lora_rank=q_lora_rank, rms_norm_eps=1e-6, inference_rope_scaling=yarn,
                      max_position_embeddings=32768 if yarn else 512)
    twin = deepseek_twin(model)
    ids, mask = left_padded_batch()
    with torch.no_grad():
        assert (model(ids).logits - twin(ids).logits).abs().max() <= 1e-5
        ours, theirs = model(ids, attention_mask=mask).logits, twin(ids, attention_mask=mask).logits
        assert (ours - theirs)[mask.bool()].abs().max() <= 1e-5
        if yarn:  # far positions, where YaRN's stretched frequencies (over the RoPE width only) matter
            pos = torch.arange(20000, 20012)[None].expand(3, -1)
            assert (model(ids, position_ids=pos).logits - twin(ids, position_ids=pos).logits).abs().max() <= 1e-5


def reference_mla(attn: LatentAttention, x, positions, config, key_mask=None):
    """MLA written out in float64 from the definition: full per-head K and V materialised, explicit softmax.
    `key_mask` (B, S): which keys are real."""
    x, H = x.double(), attn.n_heads
    W = {name: p.detach().double() for name, p in attn.named_parameters()}
    nope, rope, v_dim, rank = attn.nope, attn.rope, attn.v_dim, attn.kv_lora_rank

    def rms(t, w):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + config.rms_norm_eps) * w

    def rotate(t, pos):  # rotate-half RoPE at the given positions, frequencies over the RoPE width
        inv = 1.0 / config.rope_theta ** (torch.arange(0, rope, 2, dtype=torch.float64) / rope)
        ang = pos.double()[..., None] * inv
        ang = torch.cat([ang, ang], -1)[:, :, None]  # (B, L, 1, rope)
        half = torch.cat([-t[..., rope // 2:], t[..., :rope // 2]], -1)
        return t * ang.cos() + half * ang.sin()

    B, L, _ = x.shape
    if attn.q_lora_rank:
        q = rms(x @ W["q_a_proj.weight"].T, W["q_a_layernorm.weight"]) @ W["q_b_proj.weight"].T
    else:
        q = x @ W["q_proj.weight"].T
    q = q.view(B, L, H, nope + rope)
    q = torch.cat([q[..., :nope], rotate(q[..., nope:], positions)], -1)
    kv_a = x @ W["kv_a_proj_with_mqa.weight"].T
    c = rms(kv_a[..., :rank], W["kv_a_layernorm.weight"])
    k_pe = rotate(kv_a[..., rank:].view(B, L, 1, rope), positions)
    kv = (c @ W["kv_b_proj.weight"].T).view(B, L, H, nope + v_dim)
    k = torch.cat([kv[..., :nope], k_pe.expand(B, L, H, rope)], -1)
    v = kv[..., nope:]
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / (nope + rope) ** 0.5
    allowed = torch.ones(L, L, dtype=torch.bool).tril()[None, None]
    if key_mask is not None:
        allowed = allowed & key_mask.bool()[:, None, None, :]
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v).reshape(B, L, H * v_dim)
    return out @ W["o_proj.weight"].T


@pytest.mark.parametrize("q_lora_rank", [0, 24])
@pytest.mark.parametrize("flash", [True, False])
def test_attention_equals_float64_formula(q_lora_rank, flash):
    model = mla_model(seed=1, q_lora_rank=q_lora_rank, flash_attn=flash)
    attn, config = model.model.layers[0].self_attn, model.config
    torch.manual_seed(1)
    x = torch.randn(3, 12, 64)
    _, key_mask = left_padded_batch()
    positions = (key_mask.cumsum(-1) - 1).clamp(min=0)
    cos, sin = model.model.rotary(positions, 0, 12, torch.float32)
    mask, is_causal = attention_mask_4d(key_mask, 12, 0)
    with torch.no_grad():
        for absorb in (False, True):
            attn.absorb = absorb
            out = attn(x, cos, sin, mask, is_causal)
            ref = reference_mla(attn, x, positions, config, key_mask)
            real = key_mask.bool()
            assert (out.double() - ref)[real].abs().max() < 1e-5
            # no padding: SDPA's causal flag (plain) / the explicit causal mask (absorbed)
            cos0, sin0 = model.model.rotary(None, 0, 12, torch.float32)
            ref0 = reference_mla(attn, x, torch.arange(12)[None].expand(3, -1), config)
            assert (attn(x, cos0, sin0, None, True).double() - ref0).abs().max() < 1e-5


@pytest.mark.parametrize("overrides", [dict(), dict(use_moe=True, q_lora_rank=24)])
def test_kv_cache_generation_equals_no_cache(overrides):
    model = mla_model(seed=1, **overrides)
    ids, mask = left_padded_batch(seed=1)
    expected = naive_greedy(model, ids, mask, 20)
    ours = generate(model, ids, mask, max_new_tokens=20, do_sample=False, eos_token_id=[])
    assert torch.equal(ours, expected)
    hf = model.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, eos_token_id=None,
                        pad_token_id=0)  # transformers' DynamicCache holding the latents
    assert torch.equal(hf, expected)
    single = ids[:1]
    assert torch.equal(generate(model, single, max_new_tokens=20, do_sample=False, eos_token_id=[]),
                       naive_greedy(model, single, torch.ones_like(single), 20))
    alone = generate(model, ids[2:, -5:], max_new_tokens=20, do_sample=False, eos_token_id=[])
    assert torch.equal(alone[0, 5:], ours[2, 12:])  # a left-padded row continues as the same prompt alone


@pytest.mark.parametrize("prompt_len", [1, 6, 23])
def test_absorbed_decode_equals_plain(prompt_len):
    """The same cache, decoded both ways: one token and a chunk of three, with left padding."""
    model = mla_model(seed=2)
    lengths = (prompt_len, max(1, prompt_len - 3), max(1, prompt_len // 2))
    ids, mask = left_padded_batch(seed=2, lengths=lengths)
    B, P = ids.shape
    cache = KVCache(model.config, B, P + 8, "cpu", torch.float32)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        model.model(ids, mask, pos, cache)
        for step in (1, 3):
            new = torch.randint(3, 300, (B, step))
            full_mask = torch.cat([mask, torch.ones(B, step, dtype=mask.dtype)], 1)
            new_pos = pos[:, -1:] + 1 + torch.arange(step)
            logits = {}
            for absorb in (False, True):
                trial = copy.deepcopy(cache)
                set_absorb(model, absorb)
                logits[absorb] = model.lm_head(model.model(new, full_mask, new_pos, trial)[0])
            assert (logits[True] - logits[False]).abs().max() < 1e-5
    # by default: absorbed for one new token with a cache, plain otherwise
    attn = set_absorb(model, None).model.layers[0].self_attn
    calls = []
    attn.absorbed = lambda *a, f=attn.absorbed: calls.append("absorbed") or f(*a)
    attn.plain = lambda *a, f=attn.plain: calls.append("plain") or f(*a)
    generate(model, ids, mask, max_new_tokens=3, do_sample=False, eos_token_id=[])
    assert calls == ["plain" if P > 1 else "absorbed", "absorbed", "absorbed"]


def test_cache_holds_only_latent_and_rope_key():
    model = mla_model(seed=3)
    config = model.config
    assert kv_cache_dims(config) == (1, 16, 1, 8)
    per_token = config.num_hidden_layers * (config.kv_lora_rank + config.qk_rope_head_dim) * 4  # float32
    cache = KVCache(config, 2, 50, "cpu", torch.float32)
    assert (cache.k.nbytes + cache.v.nbytes) / (2 * 50) == per_token == 2 * 24 * 4
    ids = torch.randint(3, 300, (2, 9))
    with torch.no_grad():
        dynamic = model(ids, use_cache=True).cache
    assert isinstance(dynamic, DynamicCache) and dynamic.get_seq_length() == 9
    held = sum(layer.keys.nbytes + layer.values.nbytes for layer in dynamic.layers)
    assert held / (2 * 9) == per_token
    # the MiniMind2 size: 160 values per token and layer against GQA's 256
    mla, gqa = MiniMindConfig(attention="mla"), MiniMindConfig()
    assert kv_cache_dims(mla) == (1, 128, 1, 32) and kv_cache_dims(gqa) == (2, 64, 2, 64)


def test_rope_tables_span_the_rope_width_and_init_scales_o_proj():
    model = mla_model(seed=4, num_hidden_layers=8)
    assert model.model.rotary.cos.shape[-1] == model.config.qk_rope_head_dim == 8
    # _init_weights treats LatentAttention's o_proj as Attention's: N(0, 0.02 / sqrt(2 * layers)). (transformers
    # marks weights initialised once their own module is done, so the parent's re-init needs the mark cleared.)
    attn = model.model.layers[0].self_attn
    attn.o_proj.weight._is_hf_initialized = False
    model._init_weights(attn)
    assert 0.7 < float(attn.o_proj.weight.detach().std()) / (0.02 / 4) < 1.3
    assert flops_per_token(model.config, 64) != flops_per_token(tiny_model().config, 64)


def test_moe_mla_trains_and_grad_checkpointing_gives_the_same_grads():
    model = mla_model(seed=5, use_moe=True, q_lora_rank=24).train()
    ids, mask = left_padded_batch(seed=5, lengths=(16, 12, 9, 16))
    labels = ids.masked_fill(mask == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(8):
        out = model(ids, attention_mask=mask, labels=labels)
        first = first if first is not None else out.loss.item()
        optimizer.zero_grad()
        (out.loss + out.aux_loss).backward()
        optimizer.step()
    assert out.loss.item() < first - 0.5

    grads = []
    for checkpointing in (False, True):
        trial = copy.deepcopy(model)
        if checkpointing:
            trial.activation_checkpointing_enable()
        out = trial(ids, attention_mask=mask, labels=labels)
        (out.loss + out.aux_loss).backward()
        grads.append({n: p.grad for n, p in trial.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("kv_b_proj" in n for n in grads[0])
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], atol=1e-6), name


@pytest.mark.parametrize("kw, message", [
    (dict(attention="mha"), "attention='mha': choose 'gqa'"),
    (dict(attention="mla", kv_lora_rank=65), r"0 < kv_lora_rank \(65\) <= hidden_size \(64\)"),
    (dict(attention="mla", q_lora_rank=-1), r"0 <= q_lora_rank \(-1\)"),
    (dict(attention="mla", qk_rope_head_dim=7), r"qk_rope_head_dim \(7\) must be even"),
])
def test_bad_configs_are_rejected_with_one_line(kw, message):
    with pytest.raises(ValueError, match=message) as err:
        MiniMindConfig(hidden_size=64, num_attention_heads=4, **kw)
    assert "\n" not in str(err.value)


def test_flags_reach_the_config_and_checkpoints_keep_it(tmp_path):
    args = add_common_args(argparse.ArgumentParser()).parse_args(["--attention", "mla", "--kv_lora_rank", "24"])
    overrides = size_overrides(args)
    assert overrides["attention"] == "mla" and overrides["kv_lora_rank"] == 24
    plain = size_overrides(add_common_args(argparse.ArgumentParser()).parse_args([]))
    assert plain["attention"] is None and plain["kv_lora_rank"] is None  # None: the checkpoint's value
    model = mla_model(seed=6, kv_lora_rank=24)
    model.save_pretrained(tmp_path / "hf")
    loaded, _ = load_model(str(tmp_path / "hf"))
    assert loaded.config.attention == "mla" and loaded.config.kv_lora_rank == 24
    ids, mask = left_padded_batch()
    with torch.no_grad():
        assert torch.equal(model(ids, attention_mask=mask).logits, loaded.eval()(ids, attention_mask=mask).logits)


def test_exports_remote_code_folder_not_llama_nor_gguf(tmp_path):
    model = mla_model(seed=7)
    save_as_minimind(model, tmp_path / "hf")
    assert os.path.exists(tmp_path / "hf" / "model_minimind.py")  # the code travels with the folder
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids, _ = left_padded_batch()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    with pytest.raises(ValueError, match="export MLA models as MiniMind folders"):
        save_as_llama(model, tmp_path / "llama")
    with pytest.raises(CheckpointError, match="deepseek2 MLA layout is not attempted"):
        save_gguf(model, None, str(tmp_path / "m.gguf"))


@pytest.mark.parametrize("q_lora_rank", [0, 24])
def test_lora_targets_the_latent_projections(q_lora_rank):
    model = mla_model(seed=8, q_lora_rank=q_lora_rank)
    targets = default_targets(model.config)
    assert ("q_proj" in targets) == (not q_lora_rank) and "kv_b_proj" in targets and "k_proj" not in targets
    apply_lora(model, rank=4, alpha=8, targets=targets)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.kv_b_proj.lora_B.weight.normal_(0, 0.1)  # an adapter that changes the output
    ids, mask = left_padded_batch(seed=8)
    expected = naive_greedy(model, ids, mask, 8)
    # with an adapter on kv_b_proj, decoding takes the plain path (the folded matrix would miss the update)
    assert torch.equal(generate(model, ids, mask, max_new_tokens=8, do_sample=False, eos_token_id=[]), expected)
    merge_lora(model)  # plain nn.Linear again: the absorbed path, same tokens
    assert torch.equal(generate(model, ids, mask, max_new_tokens=8, do_sample=False, eos_token_id=[]), expected)
    assert default_targets(tiny_model().config) == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                    "down_proj")  # GQA unchanged


@pytest.mark.slow
def test_train_pretrain_mla_saves_and_resumes_exactly(tmp_path):
    data = write_corpus(tmp_path / "train.jsonl")
    common = ["--data_path", data, "--save_interval", "3", "--attention", "mla", "--kv_lora_rank", "8",
              "--use_moe", "1", "--grad_checkpoint"]
    full = train(tmp_path, *common, "--max_steps", "8", "--out_dir", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr[-3000:]
    assert "MLA" in full.stdout
    reference = losses(tmp_path / "full", "pretrain_32_moe")
    assert len(reference) == 8 and reference[8] < reference[1]
    # Ctrl-C after step 4: the run saves and stops; --resume goes on to the same losses.
    out = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "train_pretrain.py", *TINY, *common, "--max_steps", "8",
                             "--out_dir", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:
        if line.startswith("step 4/"):
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0 and max(losses(out, "pretrain_32_moe")) < 8, rest[-2000:]
    resumed = train(tmp_path, *common, "--max_steps", "8", "--out_dir", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert losses(out, "pretrain_32_moe") == pytest.approx(reference, abs=1e-6)
    model, meta = load_model(str(out / "pretrain_32_moe.pth"))
    assert model.config.attention == "mla" and model.config.kv_lora_rank == 8
    assert kv_cache_dims(model.config) == (1, 8, 1, 2)  # hidden 32 / 8 heads: RoPE key of half a head


@pytest.mark.slow
def test_train_lora_on_an_mla_model(tmp_path):
    import train_lora
    from tests import helpers
    from tests.test_lora import TINY_RUN, run_script
    base = helpers.tiny_model(attention="mla", hidden_size=32)
    helpers.save_checkpoint(base, tmp_path)
    run_script(train_lora, *TINY_RUN, "--out_dir", str(tmp_path), "--lora_rank", "4", "--max_steps", "2")
    state = torch.load(tmp_path / "lora" / "lora_identity_32.pth", weights_only=True)
    assert "model.layers.0.self_attn.kv_b_proj.lora_A.weight" in state
    assert not any("k_proj" in k for k in state)
