"""Exports to the Hugging Face ecosystem: a MiniMind folder (`trust_remote_code`) or a plain Llama folder."""
import copy
import os
import shutil

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from .model_minimind import MiniMindConfig, MiniMindForCausalLM


def llama_config_from(config: MiniMindConfig) -> LlamaConfig:
    """The Llama config that computes exactly what a dense MiniMind config computes."""
    if config.use_moe:
        raise ValueError("only dense MiniMind models map to Llama; export MoE models as MiniMind folders")
    if config.attention == "mla":
        raise ValueError("latent attention (MLA) has no Llama equivalent: export MLA models as MiniMind folders "
                         "(--to hf without --llama, loaded with trust_remote_code)")
    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.yarn_params:
        # MiniMind's YaRN does not rescale attention (attention_factor 1.0); Llama's default would.
        rope = {"rope_type": "yarn", "rope_theta": config.rope_theta, **config.yarn_params}
    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        hidden_act=config.hidden_act,
        max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=config.rms_norm_eps,
        rope_parameters=rope,
        tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        attention_bias=False,
        mlp_bias=False,
    )


def copy_tokenizer(tokenizer_dir: str | None, out_dir: str):
    if not tokenizer_dir:
        return
    for name in os.listdir(tokenizer_dir):
        if name.startswith("tokenizer") or name in ("chat_template.jinja", "special_tokens_map.json"):
            shutil.copy2(os.path.join(tokenizer_dir, name), out_dir)


def save_as_llama(model: MiniMindForCausalLM, out_dir: str, tokenizer_dir: str | None = None,
                  dtype: torch.dtype | None = None) -> str:
    """Write a `LlamaForCausalLM` folder with the same weights (the state-dict names are already Llama's)."""
    llama = LlamaForCausalLM(llama_config_from(model.config))
    # Multi-token prediction modules (mtp.*) train the model; inference runs without them, as DeepSeek-V3's does.
    llama.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("mtp.")}, strict=True)
    if dtype is not None:
        llama.to(dtype)
    llama.save_pretrained(out_dir)
    copy_tokenizer(tokenizer_dir, out_dir)
    return out_dir


def save_as_minimind(model: MiniMindForCausalLM, out_dir: str, tokenizer_dir: str | None = None,
                     dtype: torch.dtype | None = None) -> str:
    """Write a MiniMind folder that loads with `AutoModelForCausalLM.from_pretrained(out_dir,
    trust_remote_code=True)` for a user who has only the folder: the model's source file travels with it."""
    MiniMindConfig.register_for_auto_class()
    MiniMindForCausalLM.register_for_auto_class("AutoModelForCausalLM")
    if dtype is not None:
        model = copy.deepcopy(model).to(dtype)
    model.save_pretrained(out_dir)
    copy_tokenizer(tokenizer_dir, out_dir)
    return out_dir
