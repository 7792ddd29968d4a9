"""Quantized weights: QLoRA's 4-bit NormalFloat (NF4) for training, torchao's int8 weight-only for inference.

NF4 (Dettmers et al. 2023, "QLoRA") stores a frozen weight in about 4 bits per number:

- the weight, flattened, is cut into blocks of 64 numbers; each block is divided by its absolute maximum
  (absmax), so that its numbers lie in [-1, 1];
- each number becomes the index (0..15) of the nearest of 16 levels, `NF4_LEVELS`: quantiles of the normal
  distribution scaled to [-1, 1], with an exact 0. Trained weights are roughly normal, so each level is used
  about equally often, which is what makes 4 bits go far;
- two indices share one byte (the first in the high 4 bits): 0.5 bytes per number;
- double quantisation: the absmaxes themselves (one float32 per 64 numbers: 0.5 bits per number) are quantised
  too, their mean taken off and the rest stored as int8 with one float32 factor per 256 of them, which brings
  the scales down to 8/64 + 32/(64 * 256) = 0.127 bits per number (the paper's figure).

Dequantising is a table look-up times the block's absmax. `NF4Linear` holds a frozen nn.Linear this way and
dequantises it to the compute dtype in every forward (and again in the backward), and `model_lora.LoRALinear`
puts the trainable adapters on top: QLoRA. The layout and the arithmetic are those of torchao's `NF4Tensor`
(`to_nf4`); tests/test_quant.py checks that both give the same codes and scales.

For inference, `quantize_int8` applies torchao's int8 weight-only quantisation (`Int8WeightOnlyConfig`: one
int8 per weight, a float scale per output row) to the projections of every block, and `half_weights` stores
them in float16 (`HalfLinear`), the fastest batch-1 decoding on a CPU.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

# The 16 NF4 levels, as the QLoRA paper (Appendix E) and bitsandbytes list them: the normal quantiles at 8 evenly
# spaced probabilities in (0.5, 0.9677] and at 7 in [1 - 0.9677, 0.5), divided by the largest, and an exact 0
# (so zeros and padding stay 0). Asymmetric: 8 levels above zero, 7 below.
NF4_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0])
# Every byte's two levels: row b is (level of b's high 4 bits, level of its low 4 bits), so dequantising
# looks up one row per byte instead of splitting the bytes first (2-3x faster on a CPU).
NF4_PAIRS = torch.stack((NF4_LEVELS.repeat_interleave(16), NF4_LEVELS.repeat(16)), dim=-1)
BLOCK_SIZE = 64  # numbers per absmax
SCALE_BLOCK_SIZE = 256  # absmaxes per float32 factor (double quantisation)
TINY = torch.finfo(torch.float32).tiny  # divides an all-zero block by this instead of by 0


def blocks_of(x: torch.Tensor, size: int) -> torch.Tensor:
    """`x` flattened and zero-padded to whole blocks: (n_blocks, size)."""
    flat = x.reshape(-1)
    return F.pad(flat, (0, -flat.numel() % size)).view(-1, size)


def quantize_nf4(weight: torch.Tensor, block_size: int = BLOCK_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, absmax): uint8 codes holding two level indices each, and each block's float32 absmax."""
    blocks = blocks_of(weight.detach().float(), block_size)
    absmax = blocks.abs().amax(dim=1)
    scaled = blocks / absmax.clamp_min(TINY)[:, None]  # in [-1, 1]
    # The nearest level is the number of midpoints between levels below the value (on a tie, the lower level).
    levels = NF4_LEVELS.to(weight.device)
    index = torch.bucketize(scaled, (levels[1:] + levels[:-1]) / 2).to(torch.uint8).view(-1)
    return index[0::2] << 4 | index[1::2], absmax


def dequantize_nf4(codes: torch.Tensor, absmax: torch.Tensor, shape, dtype=torch.float32) -> torch.Tensor:
    """The weight of `shape` back from `quantize_nf4`'s codes and absmax, in `dtype` (computed in float32)."""
    values = NF4_PAIRS.to(codes.device).index_select(0, codes.int())  # (n_bytes, 2)
    weight = values.view(absmax.numel(), -1) * absmax[:, None].float()
    return weight.view(-1)[:math.prod(shape)].view(shape).to(dtype)


def quantize_scales(absmax: torch.Tensor, block_size: int = SCALE_BLOCK_SIZE):
    """Double quantisation: (int8 codes, a float32 factor per `block_size` of them, the float32 mean).
    The absmaxes are all positive and alike, so their mean is taken off first: int8 then spans the spread."""
    mean = absmax.mean()
    blocks = blocks_of(absmax - mean, block_size)
    factor = 128 / blocks.abs().amax(dim=1).clamp_min(TINY)  # the block's largest deviation -> 128
    codes = (blocks * factor[:, None]).round().clamp(-128, 127).to(torch.int8)
    return codes.view(-1)[:absmax.numel()], factor, mean


def dequantize_scales(codes: torch.Tensor, factor: torch.Tensor, mean: torch.Tensor,
                      block_size: int = SCALE_BLOCK_SIZE) -> torch.Tensor:
    return (blocks_of(codes.float(), block_size) / factor[:, None]).view(-1)[:codes.numel()] + mean


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on `x` runs in: autocast's where it is on, else x's own."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


class NF4Matmul(torch.autograd.Function):
    """x W^T for an NF4 layer's weight W. Through plain autograd, every layer would keep its dequantised W
    (a full-precision copy of the model) until the backward; this keeps only the layer, and dequantises W
    again for the backward. W is frozen: only x gets a gradient."""

    @staticmethod
    def forward(ctx, x, layer, dtype):
        ctx.layer, ctx.dtype, ctx.x_dtype = layer, dtype, x.dtype
        return F.linear(x.to(dtype), layer.dequantize(dtype))

    @staticmethod
    def backward(ctx, grad):
        return (grad.to(ctx.dtype) @ ctx.layer.dequantize(ctx.dtype)).to(ctx.x_dtype), None, None


class NF4Linear(nn.Module):
    """A frozen nn.Linear whose weight is stored in NF4 (4-bit codes, 2 to a byte, and block-wise absmax scales,
    themselves in 8 bits with `double_quant`), dequantised to the compute dtype in each forward.

    The quantised weight is held in buffers (nothing here trains), so it travels with `.to(device)` and with
    the state dict, e.g. in a training run's resume state.
    """

    def __init__(self, linear: nn.Linear, double_quant: bool = True, block_size: int = BLOCK_SIZE):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.block_size, self.double_quant = block_size, double_quant
        codes, absmax = quantize_nf4(linear.weight, block_size)
        self.register_buffer("codes", codes)
        if double_quant:
            scale_codes, scale_factors, scale_mean = quantize_scales(absmax)
            self.register_buffer("scale_codes", scale_codes)
            self.register_buffer("scale_factors", scale_factors)
            self.register_buffer("scale_mean", scale_mean)
        else:
            self.register_buffer("absmax", absmax)
        self.bias = linear.bias
        if self.bias is not None:
            self.bias.requires_grad_(False)

    def block_absmax(self) -> torch.Tensor:
        if self.double_quant:
            return dequantize_scales(self.scale_codes, self.scale_factors, self.scale_mean)
        return self.absmax

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        """The weight, (out_features, in_features), as the forward sees it."""
        return dequantize_nf4(self.codes, self.block_absmax(), (self.out_features, self.in_features), dtype)

    def forward(self, x):
        out = NF4Matmul.apply(x, self, compute_dtype(x))
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, nf4 block {self.block_size}, "
                f"double_quant={self.double_quant}")


def quantize_nf4_(model: nn.Module, targets, double_quant: bool = True) -> list[str]:
    """Replace every nn.Linear whose own name is in `targets` by an NF4Linear, in place; returns their names.
    The original weights are dropped (their memory freed), so load the model again for full precision."""
    found = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in set(targets)]
    for name in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, NF4Linear(getattr(parent, child), double_quant))
    return found


# ----------------------------------------------------------------------------------------------------------
# int8 weight-only inference (torchao), and what a model's weights take in memory


def quantize_int8(model: nn.Module, skip=("lm_head",)) -> nn.Module:
    """torchao's int8 weight-only quantisation (a scale per output row) of every nn.Linear, except those whose
    own name is in `skip`: the output head by default, since with tied embeddings (MiniMind's default) an
    int8 head is a second copy of the embedding matrix. In place; returns the model."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_  # quiet: see model/__init__.py
    # set_inductor_config=False: leave torch.compile's global settings alone
    quantize_(model, Int8WeightOnlyConfig(set_inductor_config=False),
              filter_fn=lambda module, name: isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] not in skip)
    return model


class HalfLinear(nn.Module):
    """An inference nn.Linear whose weight (and bias) are stored in float16 and whose input and output keep
    their dtype. For one-row matmuls (batch-1 decoding) a CPU with AVX-512 streams float16 weights from memory
    ~2.6x faster than float32 ones (oneDNN's kernel, README: Speed and memory), while norms, attention and
    everything else still run in the activations' dtype. Same parameter names as nn.Linear: loads its state."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().to(torch.float16), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(torch.float16),
                                                                  requires_grad=False)

    def forward(self, x):
        return F.linear(x.to(torch.float16), self.weight, self.bias).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, float16 weights"


def half_weights(model: nn.Module, skip=()) -> nn.Module:
    """Every nn.Linear but those named in `skip` becomes a HalfLinear, the output head too: a tied head gets a
    float16 copy of the embedding matrix (+6.5 MB at 512 x 6400), since its one-row matmul streams the most
    bytes of any. In place; returns the model."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear and child_name not in skip:
                setattr(module, child_name, HalfLinear(child))
    return model


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds; a torchao tensor subclass (int8, NF4) counts the tensors inside it."""
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, name)) for name in names)
    return t.numel() * t.element_size()


def is_quantized(model: nn.Module) -> bool:
    """True when a weight is a torchao tensor subclass (int8 inference), which float weights cannot overwrite."""
    return any(hasattr(p, "__tensor_flatten__") for p in model.parameters())


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's weights as stored: parameters and saved buffers (quantised codes and scales), tied
    weights once; not the buffers that are recomputed (RoPE tables)."""
    saved = set(model.state_dict())
    tensors = {id(p): p for p in model.parameters()}
    tensors.update({id(b): b for name, b in model.named_buffers() if name in saved})
    return sum(tensor_bytes(t) for t in tensors.values())
