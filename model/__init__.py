"""MiniMind: the shared package (model, LoRA, datasets, training building blocks, tokenizer files).

`from model import MiniMindConfig, MiniMindForCausalLM` imports the network (and transformers) on first use,
so light modules such as `model.reasoning` load without them.
"""
__all__ = ["MiniMindConfig", "MiniMindForCausalLM"]


def __getattr__(name):
    if name in __all__:
        from . import model_minimind
        return getattr(model_minimind, name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
