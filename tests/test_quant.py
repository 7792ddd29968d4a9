"""Quantization (model/quant.py): NF4 as QLoRA defines it and torchao computes it, QLoRA training (only the
adapters learn, as well as plain LoRA does; the adapter goes onto the full-precision base; --resume), and int8
weight-only inference (same greedy tokens, KV cache, the shared loader)."""
import argparse
import copy
import json
import shutil

import pytest
import torch

from demo import demo_file
from model.chat import chat_prompt_ids
from model.generation import generate
from model.model_lora import (DEFAULT_TARGETS, LoRALinear, apply_lora, count_parameters, load_lora, lora_state_dict,
                              merge_lora, save_lora)
from model.quant import (NF4_LEVELS, HalfLinear, NF4Linear, blocks_of, dequantize_nf4, dequantize_scales, half_weights,
                         quantize_int8, quantize_nf4, quantize_nf4_, quantize_scales, weight_bytes)
from tests import helpers
from tests.test_lora import TINY_RUN, run_script

from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import NF4Tensor, to_nf4


def weights(*shape, seed=0, std=0.02):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * std


# ----------------------------------------------------------------------------------------------------------
# NF4: the levels, the codes, the scales


def test_nf4_levels_are_qloras_normal_quantiles_and_torchaos_table():
    # QLoRA's construction (bitsandbytes' create_normal_map): normal quantiles at 8 evenly spaced probabilities
    # in (0.5, 0.9677] and 7 in [1 - 0.9677, 0.5), and 0, divided by the largest.
    p = 0.9677083
    upper = torch.special.ndtri(torch.linspace(p, 0.5, 9, dtype=torch.float64)[:-1])
    lower = -torch.special.ndtri(torch.linspace(p, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat([upper, lower, torch.zeros(1, dtype=torch.float64)]).sort().values
    torch.testing.assert_close(NF4_LEVELS.double(), levels / levels.abs().max(), atol=1e-6, rtol=0)
    assert NF4_LEVELS[7] == 0 and len(NF4_LEVELS) == 16
    # torchao keeps the same table rounded to 4 decimals.
    torch.testing.assert_close(to_nf4(weights(64, 256)).nf4, NF4_LEVELS, atol=5e-5, rtol=0)


@pytest.mark.parametrize("shape", [(128, 128), (384, 256)])
def test_codes_and_double_quantised_scales_equal_torchaos(shape):
    w = weights(*shape)
    codes, absmax = quantize_nf4(w)
    assert codes.dtype == torch.uint8 and codes.numel() == w.numel() // 2  # two codes per byte
    # torchao's own routines, given the same levels: the same bytes (same nibble order) and the same scales.
    assert torch.equal(codes, NF4Tensor.convert_to_norm_float_weight(w, w.numel() // 64, 64, NF4_LEVELS))
    scale_codes, factors, mean = quantize_scales(absmax)
    their_codes, their_factors, their_mean = NF4Tensor.double_quantize_scalers(w.flatten(), 64, 256)
    assert torch.equal(scale_codes, their_codes) and torch.equal(factors, their_factors)
    assert torch.equal(mean, their_mean)

    # to_nf4 end to end, with its table rounded to 4 decimals: the same code nearly everywhere; where one differs,
    # the number sat on the midpoint between two neighbouring levels (up to that rounding), so both are nearest.
    theirs = to_nf4(w)
    ours_index, their_index = (torch.stack((c >> 4, c & 15), dim=-1).view(-1).long()
                               for c in (codes, theirs.quantized_data))
    differ = ours_index != their_index
    print(f"\nto_nf4 vs ours: {differ.sum().item()} of {w.numel()} codes differ")
    assert differ.float().mean() < 1e-3 and ((ours_index - their_index)[differ].abs() == 1).all()
    scaled = (blocks_of(w, 64) / absmax[:, None]).view(-1)
    midpoint = (NF4_LEVELS[ours_index] + NF4_LEVELS[their_index]) / 2
    assert ((scaled - midpoint)[differ].abs() < 1e-4).all()
    ours = dequantize_nf4(codes, dequantize_scales(scale_codes, factors, mean), shape)
    same = (ours - theirs.get_original_weight()).view(-1)[~differ]
    assert same.abs().max() < 1e-4 * w.abs().max()


def test_nf4_linear_stores_4_bits_and_computes_with_the_dequantised_weight():
    linear = torch.nn.Linear(200, 96, bias=True)  # 19,200 numbers: the last block and scale block are padded
    for double_quant, bits in ((True, 4.127), (False, 4.5)):
        layer = NF4Linear(linear, double_quant=double_quant)
        stored = weight_bytes(layer) - layer.bias.numel() * 4
        assert abs(8 * stored / linear.weight.numel() - bits) < 0.05  # QLoRA's 4.127 bits/number with DQ
        w = layer.dequantize()
        assert w.shape == linear.weight.shape
        error = (w - linear.weight).abs().mean() / linear.weight.abs().mean()
        assert error < 0.12  # 4 bits: ~10% of a typical weight's size on uniform weights (normal ones: less)

        x = torch.randn(3, 5, 200, requires_grad=True)
        out = layer(x)
        torch.testing.assert_close(out, torch.nn.functional.linear(x, w, linear.bias))
        out.square().sum().backward()
        x_ref = x.detach().requires_grad_()
        torch.nn.functional.linear(x_ref, w, linear.bias).square().sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(2, 200)).dtype == torch.bfloat16  # dequantised to the compute dtype


# ----------------------------------------------------------------------------------------------------------
# QLoRA


def qlora(model, double_quant=True, **lora):
    quantize_nf4_(model, DEFAULT_TARGETS, double_quant)
    return apply_lora(model, **lora)


@pytest.mark.parametrize("use_moe", [False, True])
def test_qlora_quantises_every_projection_and_trains_only_the_adapters(use_moe):
    base = helpers.tiny_model(use_moe=use_moe)
    model = qlora(copy.deepcopy(base), rank=4, alpha=8).train()
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    projections = [m for name, m in base.named_modules() if isinstance(m, torch.nn.Linear) and name != "lm_head"]
    assert len(layers) == len(projections) and all(isinstance(m.base_layer, NF4Linear) for m in layers)
    assert type(model.lm_head) is torch.nn.Linear and type(model.model.embed_tokens) is torch.nn.Embedding
    # The projections in ~4.1 bits a number instead of 32 (embeddings, head and norms as they were).
    quantized = sum(weight_bytes(m.base_layer) for m in layers)
    assert quantized < 0.14 * sum(4 * m.in_features * m.out_features for m in layers)
    assert weight_bytes(model) - 4 * count_parameters(model)[0] == weight_bytes(base) - sum(
        4 * m.in_features * m.out_features for m in layers) + quantized
    assert count_parameters(model)[1] == count_parameters(base)[1] + count_parameters(model)[0]

    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(3, 6400, (2, 12), generator=torch.Generator().manual_seed(0))
    model(ids, labels=ids).loss.backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == set(lora_state_dict(model))
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == set(lora_state_dict(model))
    with pytest.raises(ValueError, match="cannot be merged"):
        merge_lora(model)


def identity_batch(n=4):
    """The first `n` one-turn chats of the demo's identity set, as (ids, labels on the replies, examples)."""
    tok = helpers.tokenizer()
    with open(demo_file("lora_identity.jsonl"), encoding="utf-8") as f:  # generated on first use
        chats = [c for c in (json.loads(line)["conversations"] for line in f) if len(c) == 2][:n]
    examples = [(chat_prompt_ids(tok, c[:1]), tok(c[1]["content"], add_special_tokens=False)["input_ids"]
                 + [tok.eos_token_id]) for c in chats]
    width = max(len(p) + len(r) for p, r in examples)
    ids = torch.tensor([p + r + [0] * (width - len(p) - len(r)) for p, r in examples])
    labels = torch.tensor([[-100] * len(p) + r + [-100] * (width - len(p) - len(r)) for p, r in examples])
    return ids, labels, examples


def test_qlora_learns_the_identity_as_plain_lora_does_and_its_adapter_fits_the_full_base(tmp_path):
    """Same base, same adapter init, same 50 steps: QLoRA tracks LoRA (loss and token accuracy within a few
    percent). The adapter then goes onto the float32 base and is merged, as for inference; what that model
    computes differs from what training saw (the NF4 base) by about the base's own quantisation error."""
    ids, labels, examples = identity_batch()
    base = helpers.tiny_model()
    results = {}
    for name, quantized in (("lora", False), ("qlora", True)):
        model = copy.deepcopy(base)
        if quantized:
            quantize_nf4_(model, DEFAULT_TARGETS)
        torch.manual_seed(1)
        apply_lora(model, rank=8, alpha=16)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(50):
            out = model(ids, labels=labels)
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        with torch.no_grad():
            out = model(ids, labels=labels)
        learned = labels[:, 1:] != -100
        accuracy = (out.logits[:, :-1].argmax(-1) == labels[:, 1:])[learned].float().mean().item()
        results[name] = (out.loss.item(), accuracy, model.eval())
    (lora_loss, lora_acc, _), (qlora_loss, qlora_acc, trained) = results["lora"], results["qlora"]
    print(f"\nafter 50 steps: LoRA loss {lora_loss:.3f}, reply tokens right {lora_acc:.1%}; "
          f"QLoRA {qlora_loss:.3f}, {qlora_acc:.1%}")
    start_loss = base(ids, labels=labels).loss.item()
    assert lora_acc > 0.9 and qlora_acc > lora_acc - 0.05
    assert start_loss - qlora_loss > 0.95 * (start_loss - lora_loss)
    replies = [generate(trained, torch.tensor([p]), max_new_tokens=len(r), do_sample=False)[0, len(p):].tolist()
               for p, r in examples]
    assert sum(reply == r for reply, (_, r) in zip(replies, examples)) >= 3

    path = str(tmp_path / "lora_identity_64.pth")
    save_lora(trained, path)
    assert set(torch.load(path, weights_only=True)) == set(lora_state_dict(trained))  # the adapter alone
    merged = merge_lora(load_lora(copy.deepcopy(base), path))
    base_nf4 = copy.deepcopy(base)
    quantize_nf4_(base_nf4, DEFAULT_TARGETS)
    with torch.no_grad():
        difference = (merged(ids).logits - trained(ids).logits).abs()
        base_difference = (base_nf4(ids).logits - base(ids).logits).abs()
        served = merged(ids, labels=labels)
    accuracy = (served.logits[:, :-1].argmax(-1) == labels[:, 1:])[learned].float().mean().item()
    print(f"merged onto the float32 base vs training's NF4 view: |logit difference| mean {difference.mean():.4f}, "
          f"max {difference.max():.4f} (the base alone, NF4 vs float32: {base_difference.mean():.4f}, "
          f"{base_difference.max():.4f}); reply tokens right {accuracy:.1%}, loss {served.loss:.3f}")
    assert 0 < difference.mean() < 2 * base_difference.mean() and accuracy > qlora_acc - 0.05
    assert [generate(merged, torch.tensor([p]), max_new_tokens=len(r), do_sample=False)[0, len(p):].tolist()
            for p, r in examples] == replies


def test_train_lora_quantize_nf4_saves_the_adapter_and_resumes_exactly(tmp_path, monkeypatch):
    import train_lora
    from model.session import Checkpointer
    helpers.save_checkpoint(helpers.tiny_model(hidden_size=32), tmp_path)
    lora_dir = tmp_path / "lora"
    kept = tmp_path / "step2_resume.pth"
    save = Checkpointer.save

    def save_and_keep_step_2(self, progress):  # keep the resume state of step 2 for the stop-and-go run
        save(self, progress)
        if progress.step == 2:
            shutil.copy(self.resume_path, kept)
    monkeypatch.setattr(Checkpointer, "save", save_and_keep_step_2)
    args = [*TINY_RUN, "--out_dir", str(tmp_path), "--lora_rank", "4", "--learning_rate", "1e-2", "--quantize", "nf4",
            "--max_steps", "4", "--save_interval", "2"]
    run_script(train_lora, *args)
    straight = torch.load(lora_dir / "lora_identity_32.pth", weights_only=True)
    assert straight and all(".lora_" in k for k in straight)  # the adapter only, no base
    meta = json.loads((lora_dir / "lora_identity_32.json").read_text())
    assert meta["args"]["quantize"] == "nf4" and meta["step"] == 4

    # The resume state holds the 4-bit base; quantising the base checkpoint again gives the very same codes.
    saved = torch.load(kept, weights_only=True)["model"]
    requantized = qlora(helpers.tiny_model(hidden_size=32), rank=4).state_dict()
    codes = [k for k in requantized if ".base_layer." in k]
    assert codes and all(torch.equal(saved[k], requantized[k]) for k in codes)
    # Back to step 2 and on to 4 with --resume: the adapters end where the uninterrupted run's did.
    shutil.copy(kept, lora_dir / "lora_identity_32_resume.pth")
    run_script(train_lora, *args, "--resume")
    resumed = torch.load(lora_dir / "lora_identity_32.pth", weights_only=True)
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# int8 weight-only inference


def trained_model():
    """A tiny model that has learned replies to a few chats (a trained model's confident logits), and other
    prompts it has not seen."""
    tok = helpers.tokenizer()
    *_, examples = identity_batch(3)
    model = helpers.memorizing_model(examples)
    unseen = [chat_prompt_ids(tok, [{"role": "user", "content": q}]) for q in (
        "What is 2 + 3?", "你好", "Tell me about rivers.", "写一首诗", "Where is Paris?", "谢谢你",
        "Who are you?", "今天天气怎么样？", "Explain gravity in one sentence.")]
    return model, [p for p, _ in examples] + unseen


def test_int8_gives_the_same_greedy_tokens_and_close_logits_through_the_kv_cache():
    model, prompts = trained_model()
    quantized = quantize_int8(copy.deepcopy(model))
    assert type(quantized.model.layers[0].mlp.up_proj.weight).__name__ == "Int8Tensor"
    assert type(quantized.lm_head.weight) is torch.nn.Parameter  # the head stays float (see quantize_int8)
    assert weight_bytes(quantized.model.layers) < 0.3 * weight_bytes(model.model.layers)  # 1 byte vs 4, + scales

    same, n_new = 0, 16
    for prompt in prompts:
        ids = torch.tensor([prompt])
        full, int8 = (generate(m, ids, max_new_tokens=n_new, do_sample=False, eos_token_id=[])[0, len(prompt):]
                      for m in (model, quantized))
        same += torch.equal(full, int8)
        with torch.no_grad():  # the int8 model's cached decoding = its own full forward on the whole text
            text = torch.cat([ids[0], int8])[None]
            logits_int8, logits = quantized(text).logits[0], model(text).logits[0]
        assert torch.equal(logits_int8[len(prompt) - 1:-1].argmax(-1), int8)
        # measured: max 0.5-1% of the largest logit on an AMD EPYC, up to 2% on an Intel Xeon with AMX (where the
        # float model trains to other weights); mean 0.5% of std on both
        difference = (logits_int8 - logits).abs()
        assert difference.max() < 0.03 * logits.abs().max() and difference.mean() < 0.01 * logits.std()
    print(f"\nint8: the same {n_new} greedy tokens as float32 on {same} of {len(prompts)} prompts")
    assert same >= len(prompts) - 1


def test_float16_weights_give_float32s_greedy_tokens():
    """The fastest CPU decoding (README's speed table): `--quantize float16` (float16 block weights, float32
    activations: half_weights) and `--dtype float16` (everything float16) keep float32's greedy replies."""
    model, prompts = trained_model()
    mixed, half = half_weights(copy.deepcopy(model)), copy.deepcopy(model).half()
    assert type(mixed.model.layers[0].mlp.up_proj) is HalfLinear and type(mixed.lm_head) is HalfLinear
    assert mixed.state_dict().keys() == model.state_dict().keys()
    assert weight_bytes(mixed.model.layers) < 0.51 * weight_bytes(model.model.layers)  # the norms stay float32
    assert mixed.model.embed_tokens.weight.dtype == torch.float32  # the head's float16 copy is its own
    same = {"mixed": 0, "half": 0}
    for prompt in prompts:
        ids = torch.tensor([prompt])
        full = generate(model, ids, max_new_tokens=16, do_sample=False, eos_token_id=[])
        for name, m in (("mixed", mixed), ("half", half)):
            same[name] += torch.equal(generate(m, ids, max_new_tokens=16, do_sample=False, eos_token_id=[]), full)
        with torch.no_grad():
            logits, logits_mixed = model(full).logits[0], mixed(full).logits[0]
        assert logits_mixed.dtype == torch.float32
        assert (logits_mixed - logits).abs().max() < 0.01 * logits.abs().max()
    print(f"\nthe same 16 greedy tokens as float32 on {same} of {len(prompts)} prompts")
    assert min(same.values()) >= len(prompts) - 1
    # float32 weights load into it (the server's /update_weights_from_disk), rounded to float16
    moved = helpers.perturbed(model)
    mixed.load_state_dict(moved.state_dict())
    assert torch.equal(mixed.model.layers[1].self_attn.q_proj.weight, moved.model.layers[1].self_attn.q_proj.weight.half())


def test_load_chat_model_quantize_int8_and_float16(tmp_path):
    from model.chat import add_model_args, load_chat_model
    model = helpers.tiny_model()
    helpers.save_checkpoint(model, tmp_path)
    flags = ["--out_dir", str(tmp_path), "--hidden_size", "64", "--device", "cpu", "--dtype", "float32"]
    parser = add_model_args(argparse.ArgumentParser(), quantize=True)
    loaded = load_chat_model(parser.parse_args(flags + ["--quantize", "int8"]), quiet=True)[0]
    assert type(loaded.model.layers[1].self_attn.q_proj.weight).__name__ == "Int8Tensor"
    ids = torch.tensor([[1, 300, 2000, 45]])
    with torch.no_grad():
        logits = model(ids).logits
        assert (loaded(ids).logits - logits).abs().max() < 0.015 * logits.abs().max()
    half = load_chat_model(parser.parse_args(flags + ["--quantize", "float16"]), quiet=True)[0]
    assert type(half.model.layers[1].self_attn.q_proj) is HalfLinear
    with torch.no_grad():
        assert (half(ids).logits - logits).abs().max() < 0.01 * logits.abs().max()
    plain = load_chat_model(parser.parse_args(flags), quiet=True)[0]
    assert type(plain.model.layers[1].self_attn.q_proj.weight) is torch.nn.Parameter
