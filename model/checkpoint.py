"""Loading weights from `.pth` files, strictly: a checkpoint that does not fit the model is an error that
says what is wrong, never a `strict=False` load that silently leaves the model random."""
import os

import torch

# Prefixes that wrappers add to parameter names: DistributedDataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the model as asked."""


def read_state_dict(path: str) -> dict:
    """Tensors of a `.pth` (plain state dict, or a dict holding one under `model`) or `.safetensors` file."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, pickle with code in it, not a torch file at all
        raise CheckpointError(f"{path}: cannot be read as a weights-only torch checkpoint ({e})") from e
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj


def clean_state_dict(state_dict: dict) -> dict:
    out = {}
    for key, value in state_dict.items():
        for prefix in WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def describe_shape_hint(state_dict: dict) -> str:
    """What model the checkpoint was saved from, to tell the user which size flags to pass."""
    emb = state_dict.get("model.embed_tokens.weight")
    layers = {k.split(".")[2] for k in state_dict if k.startswith("model.layers.")}
    moe = any(".mlp.experts." in k for k in state_dict)
    if emb is None:
        return ""
    return (f" The checkpoint looks like --hidden_size {emb.shape[1]} --num_hidden_layers {len(layers)}"
            f"{' --use_moe 1' if moe else ''} (vocab {emb.shape[0]}).")


def load_weights(model: torch.nn.Module, source, name: str | None = None) -> torch.nn.Module:
    """Load a state dict (or a path to one) into `model`, requiring every key and shape to match.

    The tied `lm_head.weight` may be absent (it is the embedding). Weights are cast to the model's dtype.
    """
    name = name or (source if isinstance(source, str) else "state dict")
    state_dict = clean_state_dict(read_state_dict(source) if isinstance(source, str) else source)
    expected = model.state_dict()
    tied = getattr(model.config, "tie_word_embeddings", False)
    if tied and "lm_head.weight" not in state_dict and "model.embed_tokens.weight" in state_dict:
        state_dict["lm_head.weight"] = state_dict["model.embed_tokens.weight"]

    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        problems = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
                problems.append(f"{label}: {shown}")
        raise CheckpointError(f"{name} does not fit the model ({'; '.join(problems)}).{describe_shape_hint(state_dict)}")
    model.load_state_dict(state_dict, strict=True)
    return model
