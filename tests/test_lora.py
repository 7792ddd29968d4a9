"""LoRA (model/model_lora.py): starts as the base model, trains only its adapters, saves and loads them alone,
merges and unmerges exactly, and computes what peft computes given the same adapter weights."""
import copy
import json
import sys

import pytest
import torch
from torch import nn

from model.checkpoint import CheckpointError
from model.model_lora import (DEFAULT_TARGETS, LoRALinear, apply_lora, count_parameters, from_peft_state_dict,
                              load_lora, lora_config, lora_state_dict, merge_lora, save_lora, to_peft_state_dict,
                              unmerge_lora)
from tests import helpers


def tiny_model(use_moe=False, **overrides):
    return helpers.tiny_model(**{"hidden_size": 32, "use_moe": use_moe, **overrides})


def randomize_adapters(model, std=0.1):
    """Non-zero A and B (freshly applied LoRA has B = 0, which would hide a wrong B or a wrong scaling)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in lora_state_dict(model).values():
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model


IDS = torch.randint(3, 6400, (2, 12), generator=torch.Generator().manual_seed(2))


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("use_moe", [False, True])
def test_fresh_lora_computes_the_base_model_and_only_adapters_train(use_moe):
    base = tiny_model(use_moe)
    model = apply_lora(copy.deepcopy(base), rank=4, alpha=8)
    assert torch.equal(logits(model), logits(base))  # B = 0: the update is exactly zero
    names = set(lora_state_dict(model))
    # Adapters on every attention and MLP projection, in MoE models on every routed and shared expert.
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    per_layer = 4 + 3 * ((4 + 1) if use_moe else 1)
    assert len(wrapped) == 2 * per_layer and len(names) == 2 * len(wrapped)
    if use_moe:
        assert "model.layers.1.mlp.experts.3.down_proj.lora_B.weight" in names
        assert "model.layers.0.mlp.shared_experts.0.gate_proj.lora_A.weight" in names
    assert {n for n, p in model.named_parameters() if p.requires_grad} == names
    # Base weights keep their Llama names, so a wrapped model still loads ordinary checkpoints.
    assert set(base.state_dict()) <= set(model.state_dict())
    trainable, total = count_parameters(model)
    assert trainable == sum(p.numel() for p in lora_state_dict(model).values()) and total > trainable
    assert lora_config(model) == {"rank": 4, "alpha": 8, "dropout": 0.0, "targets": sorted(DEFAULT_TARGETS)}


def test_training_moves_adapters_only_and_lowers_the_loss():
    base = tiny_model()
    model = apply_lora(copy.deepcopy(base), rank=4, alpha=8, dropout=0.1).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        loss = model(IDS, labels=IDS).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05
    lora = set(lora_state_dict(model))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]) != (key in lora), key  # LoRA changed, everything else not


def test_save_then_load_on_a_fresh_base_gives_identical_logits(tmp_path):
    base = tiny_model()
    model = randomize_adapters(apply_lora(copy.deepcopy(base), rank=4, alpha=12, targets=("q_proj", "down_proj")))
    path = str(tmp_path / "lora" / "lora_test_32.pth")
    save_lora(model, path, {"stage": "lora_test"})
    saved = torch.load(path, weights_only=True)
    assert set(saved) == set(lora_state_dict(model))  # the adapters only, no base weight
    fresh = load_lora(copy.deepcopy(base), path)  # applies rank 4, alpha 12, the two targets from the meta
    assert lora_config(fresh) == lora_config(model)
    assert torch.equal(logits(fresh), logits(model))
    assert not torch.allclose(logits(fresh), logits(base))


def test_load_lora_explains_what_does_not_fit(tmp_path):
    model = randomize_adapters(apply_lora(tiny_model(), rank=4))
    path = str(tmp_path / "lora.pth")
    save_lora(model, path)
    with pytest.raises(CheckpointError, match="rank 4 in the file vs 8 in the model"):
        load_lora(apply_lora(tiny_model(), rank=8), path)
    with pytest.raises(CheckpointError, match="shape mismatch.*hidden 32 x 2 layers"):
        load_lora(tiny_model(hidden_size=64), path)
    with pytest.raises(CheckpointError, match="unexpected"):
        load_lora(apply_lora(tiny_model(), rank=4, targets=("q_proj",)), _without_meta(path, tmp_path))
    with pytest.raises(ValueError, match=r"\['query'\] match no nn.Linear"):  # a typo is an error, not a no-op
        apply_lora(tiny_model(), targets=("q_proj", "query"))
    with pytest.raises(ValueError, match="tied"):
        apply_lora(tiny_model(tie_word_embeddings=True), targets=("lm_head",))


def _without_meta(path, tmp_path):
    """A copy of the weights with no JSON meta: load_lora then checks the keys against the applied LoRA."""
    copy_path = str(tmp_path / "bare.pth")
    torch.save(torch.load(path, weights_only=True), copy_path)
    return copy_path


def test_merge_folds_the_update_in_and_unmerge_takes_it_out():
    base = tiny_model()
    model = randomize_adapters(apply_lora(copy.deepcopy(base), rank=4, alpha=8))
    expected = logits(model)
    merge_lora(model, unload=False)
    torch.testing.assert_close(logits(model), expected, atol=1e-5, rtol=1e-5)
    unmerge_lora(model)
    for key, value in base.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, atol=1e-6, rtol=0)
    torch.testing.assert_close(logits(model), expected, atol=1e-5, rtol=1e-5)

    merge_lora(model)  # unload: plain nn.Linear again, the base model's state-dict names and shapes
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert isinstance(model.model.layers[0].self_attn.q_proj, nn.Linear)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in base.state_dict().items()}
    torch.testing.assert_close(logits(model), expected, atol=1e-5, rtol=1e-5)


def test_peft_lora_trains_minimind():
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(tiny_model(), LoraConfig(r=4, lora_alpha=8, target_modules=list(DEFAULT_TARGETS)))
    model.train()
    model(input_ids=IDS, labels=IDS).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(".lora_" in n and g is not None for n, g in grads.items())


@pytest.mark.parametrize("use_moe", [False, True])
def test_same_logits_as_peft_with_the_same_adapter_weights(use_moe):
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    base = tiny_model(use_moe)
    ours = randomize_adapters(apply_lora(copy.deepcopy(base), rank=4, alpha=8))
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=list(DEFAULT_TARGETS)))
    result = set_peft_model_state_dict(theirs, to_peft_state_dict(lora_state_dict(ours)))
    assert not result.unexpected_keys
    assert not [k for k in result.missing_keys if "lora_" in k]  # every adapter weight found its place
    assert not torch.allclose(logits(ours), logits(base))
    torch.testing.assert_close(logits(theirs), logits(ours), atol=1e-5, rtol=0)
    # And back: peft's saved adapter loads into ours under the documented names.
    back = from_peft_state_dict(get_peft_model_state_dict(theirs))
    assert back.keys() == lora_state_dict(ours).keys()


def run_script(module, *argv):
    """Run a train script's main() in this process (no second interpreter and imports to wait for), putting
    back the argv (tests/conftest.py puts back the Ctrl-C / SIGTERM handlers its Session installs)."""
    saved_argv, sys.argv = sys.argv, [module.__file__, *argv]
    try:
        module.main()
    finally:
        sys.argv = saved_argv


TINY_RUN = ["--hidden_size", "32", "--max_seq_len", "160", "--batch_size", "4", "--dtype", "float32",
            "--device", "cpu", "--log_interval", "1"]


def test_train_lora_script_writes_adapters_only_and_resumes(tmp_path):
    import train_lora
    base = tiny_model(use_moe=True)
    helpers.save_checkpoint(base, tmp_path)  # out/full_sft_32_moe.pth, what train_lora.py loads by default
    args = [*TINY_RUN, "--out_dir", str(tmp_path), "--use_moe", "1", "--lora_rank", "4", "--learning_rate", "1e-2"]
    run_script(train_lora, *args, "--max_steps", "3")
    path = tmp_path / "lora" / "lora_identity_32_moe.pth"
    state = torch.load(path, weights_only=True)
    assert state and all(".lora_" in k for k in state)
    meta = json.loads((tmp_path / "lora" / "lora_identity_32_moe.json").read_text())
    assert meta["lora"]["rank"] == 4 and meta["step"] == 3 and meta["base_config"]["use_moe"]
    adapted = load_lora(copy.deepcopy(base), str(path))
    assert not torch.allclose(logits(adapted), logits(base))

    run_script(train_lora, *args, "--max_steps", "5", "--resume")  # picks up the whole state at step 3
    assert json.loads((tmp_path / "lora" / "lora_identity_32_moe.json").read_text())["step"] == 5
    assert not torch.equal(torch.load(path, weights_only=True)["model.layers.0.self_attn.q_proj.lora_B.weight"],
                           state["model.layers.0.self_attn.q_proj.lora_B.weight"])
