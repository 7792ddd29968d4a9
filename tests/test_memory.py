"""Activation checkpointing (--grad_checkpoint) and the memory estimator (scripts/estimate_memory.py).

Checkpointing must change memory only: the same losses and gradients as a plain run, for dense and MoE models,
in the model and through the training scripts. The estimator's activation count must match what autograd
really saves, counted exactly with saved-tensor hooks."""
import copy
import json
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from model import MiniMindConfig, MiniMindForCausalLM
from scripts.estimate_memory import activation_bytes, count_saved_bytes, estimate, main as estimate_main, measure
from tests.helpers import losses, save_checkpoint, tiny_model, write_corpus
from tests.test_lora import run_script
from tests.test_training import train

IDS = torch.randint(3, 6400, (2, 24), generator=torch.Generator().manual_seed(0))


def count_block_runs(model):
    """A list that grows by one each time the first block runs (forward or recomputation)."""
    runs = []
    model.model.layers[0].register_forward_pre_hook(lambda module, args: runs.append(1))
    return runs


def train_twice(model, steps=3):
    """Loss, gradients and buffers after `steps` SGD steps on IDS (the routing bias moves every step)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(0)  # the same dropout masks for both runs
    for _ in range(steps):
        out = model(IDS, labels=IDS)
        loss = out.loss + out.aux_loss
        optimizer.zero_grad()
        loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        optimizer.step()
    return loss.item(), grads, {name: b.clone() for name, b in model.named_buffers()}


@pytest.mark.parametrize("overrides", [{}, {"use_moe": True}, {"use_moe": True, "bias_update_speed": 0.01},
                                       {"dropout": 0.1}], ids=["dense", "moe", "moe-routing-bias", "dropout"])
def test_checkpointing_gives_the_same_loss_and_gradients(overrides):
    plain = tiny_model(seed=3, **overrides).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.activation_checkpointing_enable()
    runs = count_block_runs(checkpointed)
    loss, grads, buffers = train_twice(plain)
    loss_c, grads_c, buffers_c = train_twice(checkpointed)
    assert len(runs) == 2 * 3  # each step ran the block twice: forward, then recomputation in the backward
    assert loss_c == pytest.approx(loss, abs=1e-6)
    for name, g in grads.items():
        torch.testing.assert_close(grads_c[name], g, rtol=1e-5, atol=1e-7, msg=name)
    # The MoE routing bias moved once per step, as without checkpointing (the recomputation replays it).
    for name, b in buffers.items():
        torch.testing.assert_close(buffers_c[name], b, rtol=0, atol=0, msg=name)
    if "bias_update_speed" in overrides:
        assert any(b.abs().sum() > 0 for name, b in buffers.items() if "e_score_correction_bias" in name)


def test_checkpointing_only_when_a_backward_follows_and_never_with_a_kv_cache():
    model = tiny_model().train()
    model.activation_checkpointing_enable()
    runs = count_block_runs(model)
    with torch.no_grad():
        model(IDS)
    model.eval()
    model(IDS).logits.sum().backward()
    assert len(runs) == 2  # no recomputation in either
    model.train()
    out = model(IDS[:, :-1], use_cache=True)  # training mode, gradients on, but a cache: run the plain blocks
    out.logits.sum().backward()
    assert len(runs) == 3 and out.cache.get_seq_length() == IDS.shape[1] - 1
    step = model(IDS[:, -1:], cache=out.cache).logits
    torch.testing.assert_close(step[:, -1], model.eval()(IDS).logits[:, -1], rtol=1e-4, atol=1e-5)


def test_hugging_face_switches_turn_it_on_and_off():
    model = tiny_model().train()
    assert model.supports_gradient_checkpointing and not model.is_activation_checkpointing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers 5 renamed it activation_checkpointing_*
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    assert model.model.gradient_checkpointing and model.is_activation_checkpointing
    runs = count_block_runs(model)
    model(IDS, labels=IDS).loss.backward()  # the reentrant variant the caller asked for works too
    assert len(runs) == 2
    model.activation_checkpointing_disable()
    assert not model.model.gradient_checkpointing


@pytest.mark.slow  # two subprocess runs; the in-process tests compare losses and gradients
def test_train_pretrain_with_grad_checkpoint_logs_the_same_losses(tmp_path):
    data = write_corpus(tmp_path / "train.jsonl")
    common = ["--data_path", data, "--max_steps", "5", "--save_interval", "100"]
    with ThreadPoolExecutor(2) as pool:  # the two runs side by side (one thread each)
        plain, checkpointed = pool.map(lambda flags: train(tmp_path, *common, *flags),
                                       [["--out_dir", str(tmp_path / "plain")],
                                        ["--out_dir", str(tmp_path / "ckpt"), "--grad_checkpoint"]])
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert checkpointed.returncode == 0, checkpointed.stderr[-3000:]
    assert "activation checkpointing" in checkpointed.stdout
    assert len(losses(tmp_path / "plain")) == 5
    assert losses(tmp_path / "ckpt") == pytest.approx(losses(tmp_path / "plain"), abs=1e-6)


def test_train_lora_on_moe_with_grad_checkpoint_logs_the_same_losses(tmp_path):
    import train_lora
    base = save_checkpoint(tiny_model(hidden_size=32, use_moe=True), tmp_path)
    args = ["--hidden_size", "32", "--max_seq_len", "160", "--batch_size", "4", "--dtype", "float32",
            "--device", "cpu", "--log_interval", "1", "--use_moe", "1", "--lora_rank", "4", "--learning_rate", "1e-2",
            "--max_steps", "4", "--save_interval", "100", "--from_weight", base]
    run_script(train_lora, *args, "--out_dir", str(tmp_path / "plain"))
    run_script(train_lora, *args, "--out_dir", str(tmp_path / "ckpt"), "--grad_checkpoint")
    plain, ckpt = (losses(tmp_path / name / "lora", "lora_identity_32_moe") for name in ("plain", "ckpt"))
    assert len(plain) == 4 and ckpt == pytest.approx(plain, abs=1e-6)


def test_train_dpo_with_grad_checkpoint_logs_the_same_losses(tmp_path):
    """DPO: the policy scores chosen and rejected replies beside a frozen reference, which (no gradients) never
    recomputes."""
    import train_dpo
    base = save_checkpoint(tiny_model(hidden_size=32), tmp_path)
    args = ["--hidden_size", "32", "--max_seq_len", "160", "--batch_size", "4", "--dtype", "float32",
            "--device", "cpu", "--log_interval", "1", "--max_steps", "3", "--eval_batches", "2",
            "--learning_rate", "1e-3", "--from_weight", base]
    run_script(train_dpo, *args, "--out_dir", str(tmp_path / "plain"))
    run_script(train_dpo, *args, "--out_dir", str(tmp_path / "ckpt"), "--grad_checkpoint")
    plain, ckpt = (losses(tmp_path / name, "rlhf_32") for name in ("plain", "ckpt"))
    assert len(plain) == 3 and ckpt == pytest.approx(plain, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("launch", ["ddp", "deepspeed"])
def test_grad_checkpoint_under_ddp_and_deepspeed_logs_the_same_losses(tmp_path, launch):
    """MoE under DDP (2 processes: the idle experts' zero gradients and the routing-bias all-reduce run in the
    recomputation too) and under DeepSpeed ZeRO-2 (1 process: its engine wraps the checkpointed model)."""
    if launch == "deepspeed":
        pytest.importorskip("deepspeed")
    data = write_corpus(tmp_path / "train.jsonl")
    common = ["--data_path", data, "--max_steps", "4", "--save_interval", "100", "--use_moe", "1"]
    extra = ["--deepspeed", "ds_config.json"] if launch == "deepspeed" else []
    nproc = 2 if launch == "ddp" else 1
    runs = [train(tmp_path, *common, *extra, *flags, nproc=nproc, timeout=600)  # one after the other: one port
            for flags in (["--out_dir", str(tmp_path / "plain")],
                          ["--out_dir", str(tmp_path / "ckpt"), "--grad_checkpoint"])]
    for result in runs:
        assert result.returncode == 0, result.stderr[-3000:]
    plain, ckpt = (losses(tmp_path / name, "pretrain_32_moe") for name in ("plain", "ckpt"))
    assert len(plain) == 4 and ckpt == pytest.approx(plain, abs=1e-6)


# ----------------------------------------------------------------------------------------------------------
# The estimator

# A tiny-but-not-trivial shape: 256 x 4, batch 8 x 256 (the logits alone are 52 MB).
SHAPE = dict(hidden_size=256, num_hidden_layers=4)
TOLERANCE = 0.02  # stated in the README: the count follows the model's ops, so it is within 2% (measured: 0.5%)


def saved_bytes(dtype="float32", grad_checkpoint=False, lora_rank=0, **overrides):
    """(predicted, counted) bytes saved for the backward by one forward at batch 8 x 256."""
    config = MiniMindConfig(**SHAPE, **overrides)
    torch.manual_seed(0)
    model = MiniMindForCausalLM(config).train()
    if lora_rank:
        from model.model_lora import apply_lora
        apply_lora(model, lora_rank)
    if grad_checkpoint:
        model.activation_checkpointing_enable()
    ids = torch.randint(config.vocab_size, (8, 256))
    predicted = activation_bytes(config, 8, 256, dtype, grad_checkpoint, lora_rank)["saved"]
    return predicted, count_saved_bytes(model, ids, dtype)


@pytest.mark.parametrize("case", [dict(), dict(grad_checkpoint=True), dict(use_moe=True),
                                  dict(dtype="bfloat16"), dict(dtype="bfloat16", grad_checkpoint=True),
                                  dict(lora_rank=8)],
                         ids=["fp32", "fp32-checkpointed", "moe", "bf16", "bf16-checkpointed", "lora"])
def test_predicted_activations_match_what_autograd_saves(case):
    predicted, counted = saved_bytes(**case)
    assert predicted == pytest.approx(counted, rel=TOLERANCE)


def test_checkpointing_cuts_saved_activations_by_the_expected_factor():
    plain_predicted, plain = saved_bytes()
    ckpt_predicted, ckpt = saved_bytes(grad_checkpoint=True)
    # Each block keeps one float32 hidden state instead of ~20; the head (the float32 log-softmax over the
    # vocabulary) is kept either way, so the whole shrinks by less than the blocks do.
    assert plain / ckpt >= 0.95 * plain_predicted / ckpt_predicted
    config = MiniMindConfig(**SHAPE)
    block = activation_bytes(config, 8, 256)["per_block"]
    assert block / (4 * 8 * 256 * config.hidden_size) > 15
    assert plain - ckpt >= 0.95 * config.num_hidden_layers * (block - 4 * 8 * 256 * config.hidden_size)


def test_estimate_shards_states_with_zero_and_trains_only_adapters_with_lora():
    config = MiniMindConfig()  # MiniMind2: 25.83M parameters
    one = estimate(config, 16, 512)
    p = one["parameters"]
    assert p == pytest.approx(25.83e6, rel=1e-3)
    assert one["bytes"]["weights"] == 4 * p and one["bytes"]["optimizer states"] == 8 * p
    ddp = estimate(config, 16, 512, world_size=8)
    assert ddp["bytes"]["gradients"] == 8 * p  # plus DDP's buckets
    zero = {stage: estimate(config, 16, 512, zero_stage=stage, world_size=8)["bytes"] for stage in (1, 2, 3)}
    assert zero[1]["optimizer states"] == 8 * p / 8 and zero[1]["gradients"] == 4 * p
    assert zero[2]["gradients"] == 4 * p / 8 and zero[2]["weights"] == 4 * p
    assert zero[3]["weights"] == 4 * p / 8
    lora = estimate(config, 16, 512, lora_rank=8)
    trained = lora["trained parameters"]
    assert trained == 8 * 8 * (4 * 512 + 2 * (512 + 128) + 3 * (512 + 1408))  # r (in + out) per projection
    assert lora["bytes"]["gradients"] == 4 * trained and lora["bytes"]["optimizer states"] == 8 * trained
    ckpt = estimate(config, 16, 512, grad_checkpoint=True)
    assert ckpt["total"] < one["total"] and ckpt["bytes"]["activations"] < one["bytes"]["activations"] / 3


def test_command_line_reads_a_checkpoint_meta_and_prints_json(tmp_path, monkeypatch, capsys):
    meta = tmp_path / "pretrain_64_moe.json"
    meta.write_text(json.dumps({"config": tiny_model(use_moe=True).config.to_dict(), "stage": "pretrain"}))
    monkeypatch.setattr(sys, "argv", ["estimate_memory.py", "--from", str(meta), "--batch_size", "2",
                                      "--max_seq_len", "32", "--grad_checkpoint", "--json"])
    estimate_main()
    result = json.loads(capsys.readouterr().out)
    assert set(result["bytes"]) == {"weights", "gradients", "optimizer states", "activations"}
    assert result["total"] == pytest.approx(sum(result["bytes"].values()))
    assert result["parameters"] == sum(p.numel() for p in tiny_model(use_moe=True).parameters())


@pytest.mark.slow
def test_measured_peak_of_a_real_step_is_near_the_prediction():
    """One real step in a fresh process: its peak RSS growth, against the predicted total. RSS also holds
    what the allocator keeps after freeing and the libraries loaded on first use, hence the wide band."""
    config = MiniMindConfig(**SHAPE)
    predicted = estimate(config, 8, 256)["total"]
    measured = measure(config, 8, 256, steps=1)
    assert 0.9 * predicted < measured["peak"] < 1.5 * predicted
    assert measured["tokens_per_s"] > 0


@pytest.mark.parametrize("overrides", [{"attention": "mla"}, {"mtp_depth": 1}])
def test_command_line_refuses_what_it_does_not_model(tmp_path, monkeypatch, overrides):
    """Latent attention and MTP modules save other activations than the GQA blocks it counts: one line, no
    silently wrong figure."""
    meta = tmp_path / "pretrain_64.json"
    meta.write_text(json.dumps({"config": tiny_model(**overrides).config.to_dict(), "stage": "pretrain"}))
    monkeypatch.setattr(sys, "argv", ["estimate_memory.py", "--from", str(meta), "--json"])
    with pytest.raises(SystemExit) as stopped:
        estimate_main()
    message = str(stopped.value.code)
    assert message.startswith(f"error: {meta}: the estimator counts") and "\n" not in message
