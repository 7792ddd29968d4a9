"""MiniMind: the shared package (model, LoRA, datasets, training building blocks, tokenizer files).

`from model import MiniMindConfig, MiniMindForCausalLM` imports the network (and transformers) on first use,
so light modules such as `model.reasoning` load without them.
"""
import logging

__all__ = ["MiniMindConfig", "MiniMindForCausalLM"]

# transformers imports torchao (a requirement, for int8 and QLoRA) whenever a model class loads. On a machine
# without its CUDA kernels torchao logs a "Failed to load ..._C_*.so" line per kernel library and trips a
# deprecation notice in torch's pytree: harmless, and noise before every script's output.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)


def __getattr__(name):
    if name in __all__:
        from . import model_minimind
        return getattr(model_minimind, name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
