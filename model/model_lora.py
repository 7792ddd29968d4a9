"""LoRA (Hu et al. 2021), written out: fine-tune a few low-rank matrices beside frozen weights.

A frozen projection y = W x gains a trainable update of rank r:

    y = W x + (alpha / r) * B A dropout(x)        A: (r, in), B: (out, r)

B starts at zero, so the adapted model starts out computing exactly what the base model computes, and
training moves only A and B: r * (in + out) numbers per projection instead of in * out. After training,
B A can be folded into W (`merge_lora`), leaving a plain model of the original shape at no extra cost.

QLoRA (Dettmers et al. 2023) is the same with W stored in 4 bits: quantise the base first
(`model.quant.quantize_nf4_`, which turns the projections into `NF4Linear`s), then `apply_lora` wraps those.
The adapter is saved and loaded as any other, and is meant to be merged into the full-precision base.

State-dict names: the base weight keeps its name (`...self_attn.q_proj.weight`, Llama's), and the adapter adds
`...self_attn.q_proj.lora_A.weight` (r, in) and `...self_attn.q_proj.lora_B.weight` (out, r). These are peft's
names in a saved adapter minus its `base_model.model.` prefix (`to_peft_state_dict` / `from_peft_state_dict`
convert), with the same shapes and the same maths, so adapters move between the two unchanged.

    apply_lora(model, rank=8)            # wrap the projections, freeze everything else
    ... train ...
    save_lora(model, "out/lora/lora_identity_512.pth", meta)
    load_lora(fresh_model, path)         # applies LoRA with the saved rank/alpha/targets, then loads
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CheckpointError, read_meta, read_state_dict, save_pair, unwrap
from .quant import NF4Linear

# Attention and MLP projections: every matrix of a block (in MoE models, every expert's too).
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# The same for latent attention (MLA), whose projections have DeepSeek's names (model_minimind.LatentAttention).
MLA_TARGETS = ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj",
               "gate_proj", "up_proj", "down_proj")
PEFT_PREFIX = "base_model.model."  # what peft puts before the model's own names in a saved adapter


class LoRALinear(nn.Module):
    """An `nn.Linear` whose weight (and bias) is frozen, plus a trainable low-rank update B A.

    It takes over the wrapped layer's parameters as its own `weight` and `bias`, so the base weights keep
    their state-dict names and a wrapped model still loads ordinary checkpoints. A quantised base (QLoRA's
    `NF4Linear`) stays a module of its own, `base_layer` (peft's name), that dequantises in its forward;
    `weight` and `bias` are then None, and there is nothing to merge into.
    """

    def __init__(self, base: nn.Linear | NF4Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        self.in_features, self.out_features = base.in_features, base.out_features
        if isinstance(base, NF4Linear):
            self.base_layer, self.weight, self.bias = base, None, None
            factory = dict(device=base.codes.device, dtype=torch.float32)
        else:
            self.base_layer, self.weight, self.bias = None, base.weight, base.bias
            self.weight.requires_grad_(False)
            if self.bias is not None:
                self.bias.requires_grad_(False)
            factory = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.rank, self.alpha = rank, alpha
        # alpha / r keeps the update's size roughly independent of r, so changing r needs no new learning rate.
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(self.in_features, rank, bias=False, **factory)
        self.lora_B = nn.Linear(rank, self.out_features, bias=False, **factory)
        # A random, B zero (peft's default): the update B A starts at exactly zero, yet B still gets a
        # gradient (through the random A), so training can move away from zero.
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.merged = False  # True while B A is folded into `weight` (see merge_lora)

    def delta_weight(self) -> torch.Tensor:
        """The update as a full matrix, (alpha / r) B A, computed in float32 and cast to the weight's dtype."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float() * self.scaling).to(self.weight.dtype)

    def forward(self, x):
        out = self.base_layer(x) if self.base_layer is not None else F.linear(x, self.weight, self.bias)
        if self.merged:
            return out
        # Two thin matmuls (x A^T, then B) instead of forming the (out, in) matrix B A.
        return out + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling

    @torch.no_grad()
    def merge(self):
        if self.base_layer is not None:
            raise ValueError("a LoRA on a 4-bit (NF4) base cannot be merged into it: save the adapter (save_lora) "
                             "and load it onto the full-precision base (load_lora), then merge")
        if not self.merged:
            self.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.weight -= self.delta_weight()
            self.merged = False

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"alpha={self.alpha}, merged={self.merged}")


def lora_modules(model) -> dict[str, LoRALinear]:
    """{module name: LoRALinear} of a model (empty when no LoRA is applied)."""
    return {name: m for name, m in unwrap(model).named_modules() if isinstance(m, LoRALinear)}


def lora_config(model) -> dict | None:
    """rank, alpha, dropout and targets of the LoRA applied to `model`, or None."""
    modules = lora_modules(model)
    if not modules:
        return None
    first = next(iter(modules.values()))
    dropout = first.dropout.p if isinstance(first.dropout, nn.Dropout) else 0.0
    targets = sorted({name.rsplit(".", 1)[-1] for name in modules})
    return {"rank": first.rank, "alpha": first.alpha, "dropout": dropout, "targets": targets}


def default_targets(config) -> tuple[str, ...]:
    """Every projection of a block for this model's attention: DEFAULT_TARGETS (GQA), or MLA's linears (q_proj
    or q_a_proj/q_b_proj, whichever the config has, since apply_lora rejects a target that matches nothing)."""
    if getattr(config, "attention", "gqa") != "mla":
        return DEFAULT_TARGETS
    skip = {"q_proj"} if config.q_lora_rank else {"q_a_proj", "q_b_proj"}
    return tuple(t for t in MLA_TARGETS if t not in skip)


def apply_lora(model, rank: int = 8, alpha: float = 16, dropout: float = 0.0, targets=DEFAULT_TARGETS):
    """Wrap every `nn.Linear` (or NF4-quantised one) whose own name is in `targets` with a LoRALinear, and
    freeze everything but the LoRA matrices. Returns the model (changed in place)."""
    model = unwrap(model)
    if lora_modules(model):
        raise ValueError(f"the model already has LoRA applied ({lora_config(model)})")
    targets = set(targets)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, NF4Linear))}
    found = [(name, module) for name, module in layers.items() if name.rsplit(".", 1)[-1] in targets]
    unmatched = targets - {name.rsplit(".", 1)[-1] for name, _ in found}
    if unmatched:
        names = sorted({name.rsplit(".", 1)[-1] for name in layers})
        raise ValueError(f"LoRA targets {sorted(unmatched)} match no nn.Linear of the model; its layers: {names}")
    tied = model.get_output_embeddings() if getattr(model.config, "tie_word_embeddings", False) else None
    if any(module is tied for _, module in found):
        # Folding an update into a tied lm_head would change the input embeddings too.
        raise ValueError("lm_head shares its weight with the embeddings (tied); it cannot take LoRA")
    model.requires_grad_(False)
    for name, module in found:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, LoRALinear(module, rank, alpha, dropout))
    return model


def lora_state_dict(model) -> dict[str, torch.Tensor]:
    """Only the LoRA matrices, under the names `<module>.lora_A.weight` / `<module>.lora_B.weight`."""
    state = {}
    for name, module in lora_modules(model).items():
        state[f"{name}.lora_A.weight"] = module.lora_A.weight
        state[f"{name}.lora_B.weight"] = module.lora_B.weight
    return state


def save_lora(model, path: str, meta: dict | None = None):
    """Write the LoRA weights (in float32: they are a few percent of the model) and a JSON meta beside them with the
    LoRA config and the base model's config, atomically. Fits `Session(save_fn=...)`."""
    model = unwrap(model)
    config = lora_config(model)
    if config is None:
        raise ValueError("save_lora: the model has no LoRA applied")
    if any(m.merged for m in lora_modules(model).values()):
        raise ValueError("save_lora: unmerge_lora(model) first (merged weights would be saved twice over)")
    state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in lora_state_dict(model).items()}
    save_pair(state, path, {"lora": config, "base_config": model.config.to_dict(), **(meta or {})})


def load_lora(model, path: str):
    """Load LoRA weights saved by `save_lora` into `model`. Without LoRA yet, the model gets it with the
    saved rank/alpha/dropout/targets first; with LoRA already applied, its config must match the file's.
    Every key and shape must match, or a CheckpointError says what differs. Returns the model."""
    model = unwrap(model)
    state, meta = read_state_dict(path), read_meta(path) or {}
    saved = meta.get("lora")
    applied = lora_config(model)
    if applied is None:
        if saved is None:
            raise CheckpointError(f"{path}: no JSON meta beside it to say the LoRA rank/alpha/targets; "
                                  "call apply_lora(model, rank=..., alpha=..., targets=...) before load_lora")
        apply_lora(model, saved["rank"], saved["alpha"], saved.get("dropout", 0.0), saved["targets"])
    elif saved is not None:
        differs = {k: (saved[k], applied[k]) for k in ("rank", "alpha", "targets") if saved[k] != applied[k]}
        if differs:
            raise CheckpointError(f"{path}: saved with a different LoRA than the model has: " + ", ".join(
                f"{k} {a} in the file vs {b} in the model" for k, (a, b) in differs.items())
                + " (call load_lora on a model without LoRA and it applies the saved one)")
    expected = lora_state_dict(model)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        problems = [f"{label} ({len(keys)}): {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
                    for label, keys in (("missing", missing), ("unexpected", unexpected),
                                        ("shape mismatch", mismatched)) if keys]
        base = meta.get("base_config") or {}
        hint = (f" The adapter was trained on a base of hidden {base.get('hidden_size')} x "
                f"{base.get('num_hidden_layers')} layers{', MoE' if base.get('use_moe') else ''}." if base else "")
        raise CheckpointError(f"{path} does not fit the model's LoRA layers: {'; '.join(problems)}.{hint}")
    with torch.no_grad():
        for key, param in expected.items():
            param.copy_(state[key])
    return model


def merge_lora(model, unload: bool = True):
    """Fold every (alpha / r) B A into its base weight. unload=True (for export): replace each LoRALinear by
    a plain nn.Linear holding the merged weight, so the state dict is the base model's again. unload=False:
    keep the adapters (the forward skips them while merged), so `unmerge_lora` can take the update out."""
    model = unwrap(model)
    for name, module in lora_modules(model).items():
        module.merge()
        if unload:
            # Built on the meta device (no memory), then handed the merged parameters.
            plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
            plain.weight, plain.bias = module.weight, module.bias
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, plain)
    return model


def unmerge_lora(model):
    """Undo `merge_lora(model, unload=False)`: subtract the updates again (the base weights come back up to
    float rounding) and run the adapters beside them."""
    for module in lora_modules(model).values():
        module.unmerge()
    return model


def to_peft_state_dict(state: dict) -> dict:
    """Our LoRA names -> the names peft saves in adapter_model.safetensors (for `set_peft_model_state_dict`)."""
    return {PEFT_PREFIX + k: v for k, v in state.items()}


def from_peft_state_dict(state: dict) -> dict:
    """A peft adapter's state dict (saved names, or live ones with `.default`) -> our LoRA names."""
    return {k.removeprefix(PEFT_PREFIX).replace(".default.", "."): v for k, v in state.items()}


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters; tied weights counted once, NF4-quantised weights counted as weights."""
    model = unwrap(model)
    params = list(model.parameters())
    quantized = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, NF4Linear))
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params) + quantized
