"""DeepSeek-V3 multi-token prediction (--mtp_depth): losses against a float64 reference written here, the main
model untouched by the modules, gradients, checkpoints with and without the modules, training end to end."""
import copy
import csv
import math
import os

import pytest
import torch
import torch.nn.functional as F

from model import MiniMindConfig, MiniMindForCausalLM
from model.checkpoint import CheckpointError, load_model, load_weights, save_weights
from tests.test_training import train
from tests.helpers import write_corpus


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    kw = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=256, mtp_depth=2)
    return MiniMindForCausalLM(MiniMindConfig(**{**kw, **overrides}))


def batch(seed=0, B=3, L=16, vocab=128, masked=0.3):
    """input_ids and labels aligned with them, a random share of labels -100 (not learned)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (B, L), generator=g)
    labels = ids.clone()
    labels[torch.rand(B, L, generator=g) < masked] = -100
    return ids, labels


# ----------------------------------------------------------------------------------------------------------
# The reference: plain float64 torch ops on the model's weights, nothing from model_minimind.


def ref_rms(x, w, eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def ref_block(x, w, c):
    """Pre-norm block: causal GQA attention with rotate-half RoPE (positions 0..L-1), then a SwiGLU MLP."""
    B, L, H = x.shape
    nh, nkv, d = c.num_attention_heads, c.num_key_value_heads, H // c.num_attention_heads
    inv = 1.0 / c.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.outer(torch.arange(L, dtype=torch.float64), inv)
    cos, sin = torch.cat([ang, ang], -1).cos()[:, None], torch.cat([ang, ang], -1).sin()[:, None]

    def rope(t):
        t1, t2 = t[..., :d // 2], t[..., d // 2:]
        return t * cos + torch.cat([-t2, t1], -1) * sin

    h = ref_rms(x, w["input_layernorm.weight"], c.rms_norm_eps)
    q = rope((h @ w["self_attn.q_proj.weight"].T).view(B, L, nh, d))
    k = rope((h @ w["self_attn.k_proj.weight"].T).view(B, L, nkv, d)).repeat_interleave(nh // nkv, dim=2)
    v = (h @ w["self_attn.v_proj.weight"].T).view(B, L, nkv, d).repeat_interleave(nh // nkv, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
    scores = scores.masked_fill(~torch.ones(L, L, dtype=torch.bool).tril(), float("-inf"))
    att = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(B, L, H)
    x = x + att @ w["self_attn.o_proj.weight"].T
    h = ref_rms(x, w["post_attention_layernorm.weight"], c.rms_norm_eps)
    up = F.silu(h @ w["mlp.gate_proj.weight"].T) * (h @ w["mlp.up_proj.weight"].T)
    return x + up @ w["mlp.down_proj.weight"].T


def ref_mtp_loss(model, ids, labels):
    c = model.config
    sd = {k: v.detach().double() for k, v in model.state_dict().items()}
    sub = lambda prefix: {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    emb, head = sd["model.embed_tokens.weight"], sd["lm_head.weight"]
    h = emb[ids]
    for i in range(c.num_hidden_layers):
        h = ref_block(h, sub(f"model.layers.{i}."), c)
    h = ref_rms(h, sd["model.norm.weight"], c.rms_norm_eps)  # h^0: the main model's final hidden state
    L, losses = ids.shape[1], []
    for k in range(1, c.mtp_depth + 1):
        w = sub(f"mtp.{k - 1}.")
        n = L - k  # position i pairs h^{k-1}_i with Emb(t_{i+k}) and predicts t_{i+k+1}
        x = torch.cat([ref_rms(h[:, :n], w["hnorm.weight"], c.rms_norm_eps),
                       ref_rms(emb[ids[:, k:]], w["enorm.weight"], c.rms_norm_eps)], -1) @ w["eh_proj.weight"].T
        h = ref_block(x, sub(f"mtp.{k - 1}.block."), c)
        logits = ref_rms(h, w["norm.weight"], c.rms_norm_eps) @ head.T
        target = labels[:, k + 1:]
        keep = target != -100
        logp = logits[:, :-1].log_softmax(-1)
        losses.append(-logp[keep].gather(-1, target[keep][:, None]).mean())
    return sum(losses) / len(losses)


# ----------------------------------------------------------------------------------------------------------


def test_mtp_losses_match_a_float64_reference():
    model = tiny_model(tie_word_embeddings=False).eval()
    ids, labels = batch()
    out = model(ids, labels=labels)
    assert out.mtp_loss.dtype == torch.float32
    assert out.mtp_loss.item() == pytest.approx(ref_mtp_loss(model, ids, labels).item(), abs=2e-5)
    # Tied embeddings (the default): the shared head is the embedding.
    tied = tiny_model(seed=1).eval()
    assert tied.mtp_logits(0, torch.zeros(1, 1, 32)).shape == (1, 1, 128)
    assert tied(ids, labels=labels).mtp_loss.item() == pytest.approx(ref_mtp_loss(tied, ids, labels).item(),
                                                                     abs=2e-5)


def test_main_logits_and_loss_are_unchanged_by_the_modules_and_inference_ignores_them():
    with_mtp = tiny_model(mtp_depth=2).eval()
    plain = tiny_model(mtp_depth=0).eval()
    load_weights(plain, {k: v for k, v in with_mtp.state_dict().items() if not k.startswith("mtp.")})
    assert not hasattr(plain, "mtp") and not any(k.startswith("mtp.") for k in plain.state_dict())
    assert [k for k in with_mtp.state_dict() if k.startswith("mtp.1.")][:3] == [
        "mtp.1.hnorm.weight", "mtp.1.enorm.weight", "mtp.1.eh_proj.weight"]
    ids, labels = batch()
    a, b = plain(ids, labels=labels), with_mtp(ids, labels=labels)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.loss, b.loss)
    assert a.mtp_loss is None and b.mtp_loss is not None
    # Without labels the modules do not run; logits_to_keep is unaffected.
    c = with_mtp(ids, logits_to_keep=1)
    assert c.mtp_loss is None
    torch.testing.assert_close(c.logits, a.logits[:, -1:])  # one row or all: another matmul kernel, same values


def test_gradients_reach_every_weight_with_moe_checkpointing_and_autocast():
    model = tiny_model(use_moe=True, bias_update_speed=0.01).train()
    ids, labels = batch()
    out = model(ids, labels=labels)
    main_aux = model.model(ids)[1]
    assert out.aux_loss.item() > main_aux.item() > 0  # the MTP blocks' balance losses are added in
    (out.loss + out.aux_loss + 0.3 * out.mtp_loss).backward()
    # DDP waits for a gradient of every parameter each step: none may be left without one.
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.startswith("mtp.") and
               ".experts." not in n)  # an expert no token chose has a zero (but present) gradient

    # Activation checkpointing recomputes the MTP blocks too: same loss and gradients.
    dense = tiny_model().train()
    reference = copy.deepcopy(dense)
    dense.activation_checkpointing_enable()
    grads = []
    for m in (reference, dense):
        out = m(ids, labels=labels)
        (out.loss + 0.3 * out.mtp_loss).backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, rtol=1e-5, atol=1e-7)

    # bf16 autocast: the losses come out in float32 and close to the fp32 ones.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = reference(ids, labels=labels)
    assert low.mtp_loss.dtype == torch.float32 and torch.isfinite(low.mtp_loss)
    assert low.mtp_loss.item() == pytest.approx(out.mtp_loss.item(), rel=0.02)


def test_mtp_loss_learns_and_edge_cases():
    model = tiny_model(mtp_depth=1).train()
    ids, labels = batch(masked=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(15):
        out = model(ids, labels=labels)
        (out.loss + 0.3 * out.mtp_loss).backward()
        opt.step()
        opt.zero_grad()
        first = first if first is not None else out.mtp_loss.item()
    assert out.mtp_loss.item() < first - 0.5
    # A batch with no label two positions ahead gives 0 (not NaN), still connected to every MTP weight.
    none = torch.full_like(labels, -100)
    none[:, 1] = labels[:, 1]
    out = model(ids, labels=none)
    assert out.mtp_loss.item() == 0 and out.mtp_loss.requires_grad
    with pytest.raises(ValueError, match="mtp_depth 1 needs sequences"):
        model(ids[:, :1], labels=labels[:, :1])
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="mtp_depth"):
            MiniMindConfig(mtp_depth=bad)


def test_checkpoints_keep_add_or_drop_the_modules_and_say_so(tmp_path, capsys):
    model = tiny_model(mtp_depth=2)
    path = str(tmp_path / "pretrain_32.pth")
    save_weights(model, path, {"stage": "pretrain"}, dtype=torch.float32)
    back, _ = load_model(path)
    assert back.config.mtp_depth == 2
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in model.state_dict().items())

    # A checkpoint without MTP, continued with --mtp_depth 1: new modules from init, the rest strictly loaded.
    plain_path = str(tmp_path / "plain.pth")
    save_weights(tiny_model(mtp_depth=0), plain_path, {"stage": "pretrain"}, dtype=torch.float32)
    capsys.readouterr()
    grown, _ = load_model(plain_path, {"mtp_depth": 1})
    said = capsys.readouterr().out
    assert "module(s) mtp.0 not in the checkpoint: they start from init" in said
    assert grown.config.mtp_depth == 1 and len(grown.mtp) == 1
    assert torch.equal(grown.model.norm.weight, tiny_model(mtp_depth=0).model.norm.weight)

    # The reverse: --mtp_depth 0 (or fewer) drops the checkpoint's extra modules, said too; no flag keeps them.
    shrunk, _ = load_model(path, {"mtp_depth": 1})
    assert "module(s) mtp.1 of the checkpoint dropped" in capsys.readouterr().out
    assert len(shrunk.mtp) == 1 and torch.equal(shrunk.mtp[0].eh_proj.weight, model.mtp[0].eh_proj.weight)
    dropped, _ = load_model(path, {"mtp_depth": 0})
    assert not hasattr(dropped, "mtp")

    # Strict everywhere else: without the flag a checkpoint missing MTP weights is an error, as is any other gap.
    with pytest.raises(CheckpointError, match="missing: mtp.0"):
        load_weights(tiny_model(mtp_depth=1), plain_path)
    broken = {k: v for k, v in tiny_model(mtp_depth=0).state_dict().items() if k != "model.norm.weight"}
    with pytest.raises(CheckpointError, match="missing: model.norm.weight"):
        load_weights(tiny_model(mtp_depth=1), broken, mtp_resized=True)


def test_exports_drop_the_modules_for_llama_and_gguf_and_keep_them_for_minimind(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from scripts.convert_model import main as convert
    from tests.helpers import save_checkpoint
    from tests.helpers import tiny_model as chat_sized_model

    model = chat_sized_model(mtp_depth=1)
    save_checkpoint(model, tmp_path)
    pick = ["--model_mode", "1", "--out_dir", str(tmp_path), "--hidden_size", "64", "--save_dtype", "float32"]
    ids, _ = batch(vocab=6400)
    convert(pick + ["--to", "hf", "--llama", "--out", str(tmp_path / "llama")])
    assert "dropped its 1 multi-token prediction module(s)" in capsys.readouterr().out
    llama = AutoModelForCausalLM.from_pretrained(tmp_path / "llama")
    assert isinstance(llama, LlamaForCausalLM)
    with torch.no_grad():
        torch.testing.assert_close(llama(ids).logits, model(ids).logits, rtol=0, atol=1e-5)

    convert(pick + ["--to", "hf", "--out", str(tmp_path / "hf")])
    assert "dropped" not in capsys.readouterr().out
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=True)
    assert hf.config.mtp_depth == 1
    assert torch.equal(hf.mtp[0].eh_proj.weight, model.mtp[0].eh_proj.weight)

    gguf = pytest.importorskip("gguf")
    convert(pick + ["--to", "gguf", "--out", str(tmp_path / "m.gguf")])
    assert "dropped its 1 multi-token prediction module(s)" in capsys.readouterr().out
    names = [t.name for t in gguf.GGUFReader(str(tmp_path / "m.gguf")).tensors]
    # token_embd, output_norm, output (untied), 9 per block: nothing of the MTP module
    assert len(names) == 3 + 9 * model.config.num_hidden_layers and not model.config.tie_word_embeddings


def mtp_column(out_dir, name="pretrain_32"):
    with open(os.path.join(out_dir, f"{name}_log.csv")) as f:
        return {int(r["step"]): float(r["mtp_loss"]) for r in csv.DictReader(f) if r.get("mtp_loss")}


@pytest.mark.slow
def test_pretraining_with_mtp_logs_saves_and_resumes_exactly(tmp_path):
    from tests.helpers import interrupt_at, losses
    from tests.test_training import TINY

    data = write_corpus(tmp_path / "train.jsonl")
    common = ["--data_path", data, "--max_steps", "12", "--save_interval", "5", "--mtp_depth", "1"]
    full = train(tmp_path, *common, "--out_dir", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr[-3000:]
    assert "| mtp_loss " in full.stdout
    reference, reference_mtp = losses(tmp_path / "full"), mtp_column(tmp_path / "full")
    assert sorted(reference_mtp) == list(range(1, 13)) and reference_mtp[12] < reference_mtp[1]
    model, meta = load_model(str(tmp_path / "full" / "pretrain_32.pth"))
    assert model.config.mtp_depth == 1 and meta["args"]["mtp_weight"] == 0.3

    # Ctrl-C at step 6, then --resume: the same main and MTP losses as the uninterrupted run.
    out = tmp_path / "interrupted"
    proc = interrupt_at(["train_pretrain.py", *TINY, *common, "--out_dir", str(out)], "step  6/")
    assert proc.returncode == 0
    resumed = train(tmp_path, *common, "--out_dir", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume:" in resumed.stdout and "start from init" not in resumed.stdout
    assert losses(out) == pytest.approx(reference, abs=1e-6)
    assert mtp_column(out) == pytest.approx(reference_mtp, abs=1e-6)

    # Continued pretraining that adds MTP to a checkpoint without it: said in one line, the rest loads strictly.
    plain = tiny_model(vocab_size=6400, mtp_depth=0, num_attention_heads=8)
    save_weights(plain, str(tmp_path / "plain.pth"), {"stage": "pretrain"}, dtype=torch.float32)
    grown = train(tmp_path, "--data_path", data, "--max_steps", "2", "--from_weight", str(tmp_path / "plain.pth"),
                  "--mtp_depth", "1", "--out_dir", str(tmp_path / "grown"))
    assert grown.returncode == 0, grown.stderr[-3000:]
    assert "module(s) mtp.0 not in the checkpoint: they start from init" in grown.stdout


@pytest.mark.slow
def test_ddp_with_mtp_matches_one_process(tmp_path):
    """Every MTP weight gets a gradient on every rank each step, or DDP would stop with an error (or hang)."""
    from tests.helpers import losses

    data = write_corpus(tmp_path / "train.jsonl")
    common = ["--data_path", data, "--max_steps", "4", "--save_interval", "100", "--mtp_depth", "2"]
    one = train(tmp_path, *common, "--out_dir", str(tmp_path / "one"), "--batch_size", "8")
    two = train(tmp_path, *common, "--out_dir", str(tmp_path / "two"), "--batch_size", "4", nproc=2)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    assert mtp_column(tmp_path / "two") == pytest.approx(mtp_column(tmp_path / "one"), abs=1e-5)


def test_mfu_counts_the_mtp_modules_flops():
    from model.logger import flops_per_token

    model, plain = tiny_model(mtp_depth=1), tiny_model(mtp_depth=0)
    matrices = sum(p.numel() for p in model.mtp.parameters() if p.dim() == 2)  # block + eh_proj, not the norms
    head = model.config.vocab_size * model.config.hidden_size  # the shared head runs once more
    extra = flops_per_token(model.config, 64) - flops_per_token(plain.config, 64)
    assert extra == 6 * (matrices + head) + 12 * model.config.hidden_size * 64  # + one more block's attention
