"""MiniMind: the shared package (model, LoRA, datasets, training building blocks, tokenizer files)."""
from transformers import AutoConfig, AutoModelForCausalLM

from .model_minimind import MiniMindConfig, MiniMindForCausalLM

# `AutoModelForCausalLM.from_pretrained(folder)` works for MiniMind folders once `model` is imported.
AutoConfig.register("minimind", MiniMindConfig, exist_ok=True)
AutoModelForCausalLM.register(MiniMindConfig, MiniMindForCausalLM, exist_ok=True)

__all__ = ["MiniMindConfig", "MiniMindForCausalLM"]
