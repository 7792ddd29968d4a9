"""scripts/convert_model.py: .pth <-> Hugging Face folders, LoRA merge, GGUF (read back, and run by llama.cpp)."""
import importlib
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from model.chat import chat_prompt_ids
from model.checkpoint import load_model
from model.model_lora import apply_lora, save_lora
from model.generation import generate
from scripts.convert_model import main as convert
from tests.helpers import memorizing_model, save_checkpoint, tiny_model, tokenizer

IDS = torch.tensor([[1, 300, 2000, 45, 6000, 17, 205, 3]])


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits.float()


def test_pth_to_hf_folders_and_back_give_identical_logits(tmp_path):
    model = tiny_model()
    save_checkpoint(model, tmp_path)
    pick = ["--model_mode", "1", "--out_dir", str(tmp_path), "--hidden_size", "64", "--save_dtype", "float32"]

    convert(pick + ["--to", "hf", "--out", str(tmp_path / "hf")])
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=True)
    assert torch.equal(logits(hf), logits(model))
    assert (tmp_path / "hf" / "tokenizer.json").exists()

    convert(pick + ["--to", "hf", "--llama", "--out", str(tmp_path / "llama")])
    llama = AutoModelForCausalLM.from_pretrained(tmp_path / "llama")
    assert isinstance(llama, LlamaForCausalLM)
    assert (logits(llama) - logits(model)).abs().max() < 1e-5

    for folder in ("hf", "llama"):  # both kinds of folder come back as a MiniMind .pth with its meta
        out = tmp_path / f"back_{folder}.pth"
        convert(["--load_from", str(tmp_path / folder), "--to", "pth", "--out", str(out), "--save_dtype", "float32"])
        back, meta = load_model(str(out))
        assert (logits(back) - logits(model)).abs().max() < 1e-5
        assert meta["config"]["hidden_size"] == 64 and meta["source"] == str(tmp_path / folder)


def test_lora_is_merged_into_the_exported_weights(tmp_path):
    base = tiny_model()
    save_checkpoint(base, tmp_path)
    adapted = apply_lora(tiny_model(), rank=4)
    with torch.no_grad():  # a trained-looking adapter: B is zero when fresh
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    lora_file = tmp_path / "lora" / "lora_test_64.pth"
    save_lora(adapted, str(lora_file))
    out = tmp_path / "merged.pth"
    convert(["--model_mode", "1", "--out_dir", str(tmp_path), "--hidden_size", "64", "--lora_path", str(lora_file),
             "--to", "pth", "--out", str(out), "--save_dtype", "float32"])
    merged, _ = load_model(str(out))
    assert (logits(merged) - logits(adapted)).abs().max() < 1e-5
    assert (logits(merged) - logits(base)).abs().max() > 1e-3  # the adapter did change something


def test_conversion_errors_are_messages(tmp_path, capsys):
    save_checkpoint(tiny_model(use_moe=True), tmp_path)
    pick = ["--model_mode", "1", "--out_dir", str(tmp_path), "--hidden_size", "64", "--use_moe", "1"]
    for target in (["--to", "gguf", "--out", str(tmp_path / "m.gguf")],
                   ["--to", "hf", "--llama", "--out", str(tmp_path / "llama")]):
        with pytest.raises(SystemExit) as exit_info:
            convert(pick + target)
        assert "dense" in str(exit_info.value.code)
    convert(pick + ["--to", "hf", "--out", str(tmp_path / "moe-hf")])  # MoE goes to a MiniMind folder
    with pytest.raises(SystemExit) as exit_info:
        convert(pick + ["--lora_path", str(tmp_path / "nope.pth"), "--to", "pth", "--out", str(tmp_path / "x.pth")])
    assert "nope.pth not found" in str(exit_info.value.code)


def export_gguf(tmp_path, model, dtype="float32", gguf_type=None):
    save_checkpoint(model, tmp_path)
    path = tmp_path / f"tiny-{gguf_type or dtype}.gguf"
    convert(["--model_mode", "1", "--out_dir", str(tmp_path), "--hidden_size", "64", "--to", "gguf", "--out",
             str(path), "--save_dtype", dtype] + (["--gguf_type", gguf_type] if gguf_type else []))
    return path


@pytest.mark.parametrize("tied", [True, False])
def test_gguf_reads_back_with_the_right_tensors_and_metadata(tmp_path, tied):
    gguf = pytest.importorskip("gguf")
    from scripts.convert_model import unrotate_half
    model = tiny_model(tie_word_embeddings=tied)
    reader = gguf.GGUFReader(export_gguf(tmp_path, model, "float16"))

    def field(name):
        return reader.fields[name].contents()

    config, tok = model.config, tokenizer()
    assert field("general.architecture") == "llama"
    assert field("llama.block_count") == 2 and field("llama.embedding_length") == 64
    assert field("llama.attention.head_count") == 4 and field("llama.attention.head_count_kv") == 2
    assert field("llama.context_length") == config.max_position_embeddings
    assert field("llama.feed_forward_length") == config.intermediate_size
    assert field("llama.rope.freq_base") == config.rope_theta
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "qwen2"
    tokens = field("tokenizer.ggml.tokens")
    assert len(tokens) == config.vocab_size and tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert field("tokenizer.ggml.eos_token_id") == tok.eos_token_id
    assert field("tokenizer.ggml.bos_token_id") == tok.bos_token_id
    assert field("tokenizer.chat_template") == tok.chat_template
    assert len(field("tokenizer.ggml.merges")) > 1000

    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 2 + 9 * 2 + (0 if tied else 1)
    assert ("output.weight" in tensors) == (not tied)
    state = model.state_dict()
    q = tensors["blk.1.attn_q.weight"]
    assert list(q.shape) == [64, 64]  # GGUF lists dimensions innermost first
    expected_q = unrotate_half(state["model.layers.1.self_attn.q_proj.weight"], 4).half().numpy()
    assert (q.data.reshape(64, 64) == expected_q).all()
    down = tensors["blk.0.ffn_down.weight"]
    assert list(down.shape) == [config.intermediate_size, 64]
    assert (down.data.reshape(64, -1) == state["model.layers.0.mlp.down_proj.weight"].half().numpy()).all()
    norm = tensors["output_norm.weight"]
    assert norm.data.dtype.name == "float32" and (norm.data == state["model.norm.weight"].numpy()).all()


@pytest.mark.parametrize("gguf_type, bits", [("q8_0", 8), ("q4_0", 4)])
def test_quantized_gguf_holds_the_weights_to_within_half_a_quantization_step(tmp_path, gguf_type, bits):
    gguf = pytest.importorskip("gguf")
    from gguf import GGMLQuantizationType as Q
    from scripts.convert_model import unrotate_half
    model = tiny_model()
    path = export_gguf(tmp_path, model, gguf_type=gguf_type)
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    kind = Q.Q8_0 if bits == 8 else Q.Q4_0
    assert tensors["blk.0.ffn_down.weight"].tensor_type == kind
    assert tensors["token_embd.weight"].tensor_type == Q.Q8_0  # q4_0 keeps the embedding at 8 bits
    assert tensors["output_norm.weight"].tensor_type == Q.F32
    down = tensors["blk.0.ffn_down.weight"]  # 32 values in 34 bytes (q8_0) or 18 (q4_0): scale + codes
    assert down.n_bytes == down.n_elements // 32 * (34 if bits == 8 else 18)
    state = model.state_dict()
    for gguf_name, name, heads in (("blk.1.attn_q.weight", "model.layers.1.self_attn.q_proj.weight", 4),
                                   ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight", None)):
        weight = state[name].half().float()  # the checkpoint holds float16
        weight = unrotate_half(weight, heads) if heads else weight
        t = tensors[gguf_name]
        restored = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type)).reshape(weight.shape)
        # each block of 32 shares one scale (a step), its largest value over 127 (q8_0) or 8 (q4_0): the error
        # is at most half a step (a whole one for q4_0, whose codes -8..7 clip the side opposite the largest
        # value), plus the float16 roundings (2^-11 relative) of the step and of the restored value (gguf-py
        # multiplies in float16), each at most the largest code times 2^-11 steps
        levels = 127 if bits == 8 else 8
        blocks, error = weight.reshape(-1, 32), (restored - weight).reshape(-1, 32)
        step = blocks.abs().amax(dim=1, keepdim=True) / levels
        rounding = 0.5 if bits == 8 else 1.0
        assert (error.abs() <= step * (rounding + 2 * levels / 2048) + 1e-7).all(), gguf_name
        assert error.abs().max() > 0  # really quantized


def import_or_skip_outside_ci(name, install):
    """pytest.importorskip, except under CI (CI=true), where .ci/run installs the module and its absence fails."""
    if os.environ.get("CI", "").lower() in ("1", "true"):
        try:
            return importlib.import_module(name)
        except ImportError as e:
            pytest.fail(f"{name} is missing under CI ({e}): `{install}` (.ci/run does)")
    return pytest.importorskip(name, reason=f"{name} not installed: `{install}` (it compiles llama.cpp: 8 minutes on 2 cores)")


@pytest.mark.parametrize("gguf_type", ["q8_0", "q4_0", "q4_k_m"])
def test_llama_cpp_runs_quantized_ggufs_with_our_greedy_reply(tmp_path, gguf_type):
    """A model that says its reply with a margin (every token p > 0.6) says it through llama.cpp at 8 and
    4 bits too (q4_k_m: quantized by llama.cpp itself)."""
    llama_cpp = import_or_skip_outside_ci("llama_cpp", "pip install -r requirements-llama-cpp.txt")
    tok = tokenizer()
    prompt = chat_prompt_ids(tok, [{"role": "user", "content": "1 + 23 = ?"}])
    reply = tok("1 + 23 = 24。", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    model = memorizing_model([(prompt, reply)])
    llm = llama_cpp.Llama(model_path=str(export_gguf(tmp_path, model, gguf_type=gguf_type)), n_ctx=256,
                          n_threads=1, verbose=False)
    theirs = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0):
        theirs.append(token)
        if token == tok.eos_token_id or len(theirs) == len(reply):
            break
    llm.close()
    assert theirs == reply


def test_llama_cpp_runs_the_gguf_with_the_same_greedy_tokens(tmp_path):
    llama_cpp = import_or_skip_outside_ci("llama_cpp", "pip install -r requirements-llama-cpp.txt")
    model = tiny_model()
    llm = llama_cpp.Llama(model_path=str(export_gguf(tmp_path, model)), n_ctx=256, n_threads=1, verbose=False)
    text = "<|im_start|>user\n你好，1 + 23 = ?<|im_end|>\n<|im_start|>assistant\n"
    prompt = tokenizer()(text, add_special_tokens=False)["input_ids"]
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == prompt  # same tokenizer
    assert prompt == chat_prompt_ids(tokenizer(), [{"role": "user", "content": "你好，1 + 23 = ?"}])[-len(prompt):]
    ours = generate(model, torch.tensor([prompt]), max_new_tokens=16, do_sample=False, eos_token_id=[])
    theirs = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0):
        theirs.append(token)
        if len(theirs) == 16:
            break
    llm.close()
    assert theirs == ours[0, len(prompt):].tolist()
