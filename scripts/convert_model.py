"""Convert MiniMind checkpoints for the wider ecosystem, and back.

    # .pth -> Hugging Face folder with MiniMind's own classes (AutoModelForCausalLM + trust_remote_code);
    # the form for every model: dense, MoE, and latent attention (MLA)
    python scripts/convert_model.py --model_mode 1 --to hf --out out/minimind-hf
    # .pth -> plain Llama folder (dense GQA models): transformers, vLLM, SGLang load it with no remote code
    python scripts/convert_model.py --model_mode 1 --to hf --llama --out out/minimind-llama
    # Hugging Face folder (MiniMind or Llama) -> .pth + JSON meta, as the training stages write them
    python scripts/convert_model.py --load_from out/minimind-hf --to pth --out out/full_sft_512.pth
    # GGUF for llama.cpp / Ollama (dense GQA models): f16 (default), f32, or quantized q8_0 / q4_0 / q4_k_m
    python scripts/convert_model.py --model_mode 1 --to gguf --out out/minimind.gguf
    python scripts/convert_model.py --model_mode 1 --to gguf --gguf_type q8_0 --out out/minimind-q8_0.gguf
    # any of the above with LoRA weights folded in first
    python scripts/convert_model.py --model_mode 1 --lora_path out/lora/lora_identity_512.pth --to pth \\
        --out out/full_sft_identity_512.pth

    ollama: write a Modelfile with `FROM ./minimind.gguf`, then `ollama create minimind -f Modelfile`
    (the chat template travels inside the GGUF); llama.cpp: `llama-cli -m out/minimind.gguf -cnv`.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # for `python scripts/<name>.py`: the packages sit beside scripts/
from model import MiniMindConfig, MiniMindForCausalLM
from model.chat import DEFAULT_TOKENIZER, add_model_args, load_chat_model, merge_lora_file
from model.checkpoint import CheckpointError, load_weights, save_weights
from model.export import save_as_llama, save_as_minimind

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


# ----------------------------------------------------------------------------------------------------------
# Hugging Face Llama -> MiniMind


def minimind_config_from_llama(llama) -> MiniMindConfig:
    """The MiniMind config computing what a Llama config computes (the inverse of export.llama_config_from)."""
    rope = getattr(llama, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default" or getattr(llama, "attention_bias", False) \
            or getattr(llama, "mlp_bias", False) or llama.head_dim != llama.hidden_size // llama.num_attention_heads:
        raise CheckpointError("this Llama folder uses RoPE scaling, biases or a custom head_dim, which MiniMind "
                              "does not have: load it with transformers instead")
    return MiniMindConfig(
        vocab_size=llama.vocab_size, hidden_size=llama.hidden_size, intermediate_size=llama.intermediate_size,
        num_hidden_layers=llama.num_hidden_layers, num_attention_heads=llama.num_attention_heads,
        num_key_value_heads=llama.num_key_value_heads, hidden_act=llama.hidden_act,
        max_position_embeddings=llama.max_position_embeddings, rms_norm_eps=llama.rms_norm_eps,
        rope_theta=rope.get("rope_theta", 10000.0), tie_word_embeddings=llama.tie_word_embeddings,
        bos_token_id=llama.bos_token_id, eos_token_id=llama.eos_token_id, pad_token_id=llama.pad_token_id or 0)


def as_minimind(model) -> MiniMindForCausalLM:
    if isinstance(model, MiniMindForCausalLM):
        return model
    minimind = MiniMindForCausalLM(minimind_config_from_llama(model.config))
    return load_weights(minimind, model.state_dict(), name=type(model).__name__)


# ----------------------------------------------------------------------------------------------------------
# GGUF: llama.cpp's Llama architecture, written tensor by tensor


def unrotate_half(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """q/k rows from rotate-half RoPE order (HF: pairs (i, i + d/2)) to interleaved order (llama.cpp's 'normal'
    RoPE: pairs (2i, 2i + 1)), per head: the permutation llama.cpp's convert_hf_to_gguf.py applies."""
    out_features = weight.shape[0]
    return (weight.reshape(n_heads, 2, out_features // n_heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


# The split regex of Qwen2 (GPT-4's with single digits): MiniMind's tokenizer uses it, so does llama.cpp's "qwen2".
QWEN2_SPLIT = (r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")


def gguf_pre_tokenizer(tokenizer_json: dict) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer: the regexes that split text before BPE."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre])
    kinds = [(s.get("type"), s.get("individual_digits"), s.get("use_regex"), (s.get("pattern") or {}).get("Regex"))
             for s in steps]
    if kinds == [("ByteLevel", None, True, None)]:
        return "gpt2"
    if kinds == [("Digits", True, None, None), ("ByteLevel", None, True, None)]:
        return "refact"  # digits one by one, then GPT-2's regex
    if kinds == [("Digits", True, None, None), ("Split", None, None, QWEN2_SPLIT), ("ByteLevel", None, False, None)]:
        return "qwen2"  # the split already isolates single digits, so the Digits step changes nothing
    raise CheckpointError(f"no llama.cpp pre-tokenizer matches {kinds}: text would split differently there")


def add_tokenizer(writer, tokenizer, vocab_size: int):
    """The byte-level BPE vocabulary as llama.cpp's 'gpt2' tokenizer: tokens, types, merges, special ids, and
    the chat template (Ollama and llama.cpp read it from the file)."""
    import gguf

    tokenizer_json = json.loads(tokenizer.backend_tokenizer.to_str())
    added = {t.content: t.special for t in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for token_id in range(vocab_size):
        token = tokenizer.convert_ids_to_tokens(token_id) if token_id < len(tokenizer) else None
        if token is None:  # embedding rows beyond the tokenizer: never produced
            tokens.append(f"[PAD{token_id}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(token)
        types.append(gguf.TokenType.CONTROL if added.get(token) else
                     gguf.TokenType.USER_DEFINED if token in added else gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(gguf_pre_tokenizer(tokenizer_json))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_unk_token_id(tokenizer.unk_token_id)
    writer.add_add_bos_token(False)  # the chat template writes <|im_start|> itself
    writer.add_chat_template(tokenizer.chat_template)


# Weight types of a GGUF file. q8_0 and q4_0 (blocks of 32 values sharing one scale: 8.5 and 4.5 bits per
# weight) are written here with gguf-py's quantizers. q4_k_m (llama.cpp's k-quants: super-blocks of 256
# with 6-bit sub-block scales, attention-v and ffn-down in q6_k) only exists in llama.cpp's C code, so it
# is an f16 file requantized by llama.cpp's own `llama_model_quantize` (llama-cpp-python).
GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0", "q4_k_m")


def save_gguf(model: MiniMindForCausalLM, tokenizer, path: str, dtype: torch.dtype = torch.float16,
              gguf_type: str | None = None) -> str:
    """`gguf_type` (one of GGUF_TYPES) overrides `dtype` (f16 or f32)."""
    import gguf

    gguf_type = gguf_type or ("f16" if dtype == torch.float16 else "f32" if dtype == torch.float32 else None)
    if gguf_type == "q4_k_m":
        return requantize_gguf(save_gguf(model, tokenizer, path + ".f16.tmp", gguf_type="f16"), path, "q4_k_m")

    config = model.config
    if config.use_moe:
        raise CheckpointError("GGUF export covers dense models (llama.cpp's Llama architecture); MoE models "
                              "export as Hugging Face folders (--to hf)")
    if config.attention == "mla":
        raise CheckpointError("GGUF export covers GQA models (llama.cpp's Llama architecture; its deepseek2 MLA "
                              "layout is not attempted): export MLA models as Hugging Face folders (--to hf)")
    if config.yarn_params:
        raise CheckpointError("GGUF export without YaRN: convert the checkpoint as trained (no "
                              "inference_rope_scaling); llama.cpp has its own --rope-scaling yarn flags")
    if gguf_type not in GGUF_TYPES:
        raise CheckpointError(f"GGUF export writes {', '.join(GGUF_TYPES)} (--gguf_type), not {gguf_type or dtype}")
    arch = gguf.MODEL_ARCH.LLAMA
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name("MiniMind")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                  "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}
    writer.add_file_type(file_types[gguf_type])
    add_tokenizer(writer, tokenizer, config.vocab_size)

    names = gguf.TensorNameMap(arch, config.num_hidden_layers)  # HF Llama names -> GGUF names
    heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # without an output tensor llama.cpp uses token_embd, as tied weights do
        if name.startswith("mtp."):
            continue  # multi-token prediction modules: a training signal, dropped for inference (see main)
        tensor = tensor.detach().float()
        projection = name.split(".")[-2]
        if projection in heads:
            tensor = unrotate_half(tensor, heads[projection])
        gguf_name = names.get_name(name, try_suffixes=(".weight",))
        data, raw_dtype = gguf_tensor(tensor.numpy(), gguf_name, gguf_type)
        writer.add_tensor(gguf_name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def gguf_tensor(array: np.ndarray, name: str, gguf_type: str) -> tuple:
    """(data, raw_dtype) of one tensor as llama.cpp expects it. The norms (1-D) stay float32. A q4_0 file
    keeps the embedding and output matrices in q8_0, the tensors 4 bits hurt most (llama.cpp's own q4_0
    files give the output more bits too); rows that are not whole 32-value blocks stay f16."""
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    if array.ndim < 2 or gguf_type == "f32":
        return array.astype(np.float32), None
    kind = {"q8_0": Q.Q8_0, "q4_0": Q.Q4_0}.get(gguf_type)
    if kind == Q.Q4_0 and name in ("token_embd.weight", "output.weight"):
        kind = Q.Q8_0
    if kind is None or array.shape[-1] % 32:
        return array.astype(np.float16), None
    return quants.quantize(array.astype(np.float32), kind), kind


def requantize_gguf(source: str, path: str, gguf_type: str) -> str:
    """llama.cpp's quantizer (through llama-cpp-python) from an f16 GGUF `source` (removed after)."""
    try:
        import llama_cpp
    except ImportError:
        os.remove(source)
        raise CheckpointError(f"--gguf_type {gguf_type} is llama.cpp's own quantizer: pip install -r "
                              "requirements-llama-cpp.txt, or quantize an f16 GGUF with llama.cpp's llama-quantize")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}[gguf_type]
    try:
        status = llama_cpp.llama_model_quantize(source.encode(), (path + ".tmp").encode(), params)
        if status != 0:
            raise CheckpointError(f"llama.cpp could not quantize {source} to {gguf_type} (status {status})")
        os.replace(path + ".tmp", path)
    finally:
        for leftover in (source, path + ".tmp"):
            if os.path.exists(leftover):
                os.remove(leftover)
    return path


# ----------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    add_model_args(parser)
    parser.set_defaults(device="cpu", dtype="float32")  # convert at full precision; --save_dtype decides
    parser.add_argument("--to", required=True, choices=["hf", "pth", "gguf"])
    parser.add_argument("--out", required=True, help="a folder (hf) or a file (.pth, .gguf)")
    parser.add_argument("--llama", action="store_true",
                        help="--to hf: a plain LlamaForCausalLM folder (dense GQA models; MoE and MLA models "
                             "export as MiniMind folders, without --llama)")
    parser.add_argument("--lora_path", default=None, help="fold these LoRA weights into the model first")
    parser.add_argument("--save_dtype", default="float16", choices=list(DTYPES),
                        help="weights as written (training saves float16, so float16 loses nothing)")
    parser.add_argument("--gguf_type", default=None, choices=GGUF_TYPES,
                        help="--to gguf: the weight type (default: f16, or f32 with --save_dtype float32)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        model, tokenizer, source = load_chat_model(args)
        if args.lora_path:
            merge_lora_file(model, args.lora_path)
        model = as_minimind(model)
        dtype = DTYPES[args.save_dtype]
        tokenizer_dir = args.tokenizer_path or (source if os.path.isdir(source) else DEFAULT_TOKENIZER)
        if args.to == "hf":
            save = save_as_llama if args.llama else save_as_minimind
            save(model, args.out, tokenizer_dir, dtype=dtype)
        elif args.to == "pth":
            save_weights(model, args.out, {"stage": "converted", "source": source, "lora": args.lora_path},
                         dtype=dtype)
        else:
            save_gguf(model, tokenizer, args.out, dtype, args.gguf_type)
    except (CheckpointError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"{source}{' + ' + args.lora_path if args.lora_path else ''} -> {args.out}")
    if getattr(model.config, "mtp_depth", 0) and (args.to == "gguf" or args.llama):
        print(f"dropped its {model.config.mtp_depth} multi-token prediction module(s) (mtp.*): Llama and GGUF run "
              "the main model only; --to hf without --llama, or --to pth, keeps them")


if __name__ == "__main__":
    main()
