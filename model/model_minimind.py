"""MiniMind: a small Llama-style decoder, dense or Mixture-of-Experts, in one file.

Read top to bottom: config -> RMSNorm -> RoPE (+YaRN) -> attention (GQA, or DeepSeek's latent MLA) -> MLP / MoE -> block
-> model -> causal-LM head. Generation lives in model/generation.py.

The state-dict names are those of Hugging Face Llama (`model.layers.0.self_attn.q_proj.weight`, ...), so a
dense checkpoint loads into `transformers.LlamaForCausalLM` unchanged and MiniMind2 checkpoints load here
without renaming. The model is a `PreTrainedModel` + `GenerationMixin`, so `save_pretrained`,
`from_pretrained`, `AutoModelForCausalLM` and `generate` work; model/generation.py holds the project's own
leaner KV-cache loop that the CLI, the API server, evaluation and the web demo share.
"""
import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers import initialization as hf_init
from transformers.activations import ACT2FN
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import ModelOutput


# ----------------------------------------------------------------------------------------------------------
# Config


class MiniMindConfig(PretrainedConfig):
    """Hyper-parameters of a MiniMind model. The defaults are MiniMind2 (512 hidden x 8 layers, 25.83M)."""

    model_type = "minimind"

    def __init__(
        self,
        vocab_size: int = 6400,
        hidden_size: int = 512,
        intermediate_size: int | None = None,
        num_hidden_layers: int = 8,
        num_attention_heads: int = 8,
        num_key_value_heads: int = 2,
        hidden_act: str = "silu",
        max_position_embeddings: int = 32768,
        rms_norm_eps: float = 1e-5,
        rope_theta: float = 1e6,
        inference_rope_scaling: bool = False,
        yarn_params: dict | None = None,
        dropout: float = 0.0,
        flash_attn: bool = True,
        initializer_range: float = 0.02,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        pad_token_id: int = 0,
        tie_word_embeddings: bool = True,
        # Mixture of Experts (DeepSeek-style: fine-grained routed experts plus always-on shared experts)
        use_moe: bool = False,
        n_routed_experts: int = 4,
        num_experts_per_tok: int = 2,
        n_shared_experts: int = 1,
        scoring_func: str = "softmax",
        aux_loss_alpha: float = 0.01,
        seq_aux: bool = True,
        norm_topk_prob: bool = True,
        bias_update_speed: float = 0.0,
        # DeepSeek-V3 options, off by default (MiniMind2 checkpoints are untouched by them)
        attention: str = "gqa",  # "gqa" (grouped-query) or "mla" (multi-head latent attention)
        kv_lora_rank: int | None = None,  # MLA: width of the cached KV latent (None = hidden_size / 4)
        q_lora_rank: int = 0,  # MLA: low-rank query projection; 0 = full-rank q_proj (as DeepSeek-V2-Lite)
        qk_rope_head_dim: int | None = None,  # MLA: decoupled RoPE part of q/k (None = head_dim / 2)
        qk_nope_head_dim: int | None = None,  # MLA: position-free part of q/k (None = head_dim)
        v_head_dim: int | None = None,  # MLA: value head dim (None = head_dim)
        mtp_depth: int = 0,  # multi-token prediction: sequential modules predicting 2..D+1 tokens ahead
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        # SwiGLU keeps the parameter count of a 4x GELU MLP with 8/3 x hidden, rounded up to a multiple of 64
        self.intermediate_size = intermediate_size or 64 * math.ceil(8 * hidden_size / 3 / 64)
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = hidden_size // num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        # YaRN stretches RoPE at inference beyond the 2048 positions seen in training (factor 16 -> 32k)
        self.inference_rope_scaling = inference_rope_scaling
        self.yarn_params = yarn_params or (
            dict(factor=16, original_max_position_embeddings=2048, beta_fast=32.0, beta_slow=1.0, attention_factor=1.0)
            if inference_rope_scaling else None
        )
        self.dropout = dropout
        self.flash_attn = flash_attn
        self.initializer_range = initializer_range
        self.use_moe = use_moe
        self.n_routed_experts = n_routed_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.n_shared_experts = n_shared_experts
        self.scoring_func = scoring_func
        self.aux_loss_alpha = aux_loss_alpha
        self.seq_aux = seq_aux
        self.norm_topk_prob = norm_topk_prob
        # DeepSeek-V3 auxiliary-loss-free balancing: > 0 turns on a per-expert routing bias nudged by load
        self.bias_update_speed = bias_update_speed
        self.attention = attention
        # MLA defaults scale with the model as DeepSeek-V2-Lite's do (latent = hidden / 4, RoPE key = half a head):
        # at 512 x 8 heads a layer caches 128 + 32 = 160 values per token, against GQA's 2 x 64 x 2 = 256.
        self.kv_lora_rank = kv_lora_rank or hidden_size // 4
        self.q_lora_rank = q_lora_rank or 0
        self.qk_rope_head_dim = qk_rope_head_dim or self.head_dim // 2
        self.qk_nope_head_dim = qk_nope_head_dim or self.head_dim
        self.v_head_dim = v_head_dim or self.head_dim
        if attention not in ("gqa", "mla"):
            raise ValueError(f"attention={attention!r}: choose 'gqa' (grouped-query) or 'mla' (multi-head latent)")
        if attention == "mla":
            if not 0 < self.kv_lora_rank <= hidden_size or not 0 <= self.q_lora_rank <= hidden_size:
                raise ValueError(f"MLA ranks must fit the model: 0 < kv_lora_rank ({self.kv_lora_rank}) <= hidden_size "
                                 f"({hidden_size}) and 0 <= q_lora_rank ({self.q_lora_rank}) <= hidden_size")
            dims = (self.qk_rope_head_dim, self.qk_nope_head_dim, self.v_head_dim)
            if min(dims) <= 0 or self.qk_rope_head_dim % 2:
                raise ValueError(f"MLA head dims: qk_rope_head_dim ({self.qk_rope_head_dim}) must be even and positive "
                                 f"(RoPE rotates pairs), qk_nope_head_dim ({self.qk_nope_head_dim}) and v_head_dim "
                                 f"({self.v_head_dim}) positive")
        self.mtp_depth = mtp_depth
        if not isinstance(mtp_depth, int) or mtp_depth < 0:
            raise ValueError(f"mtp_depth={mtp_depth!r}: the number of multi-token prediction modules is an int >= 0")
        kwargs.pop("rope_scaling", None)  # MiniMind2 configs carry it; yarn_params is the source of truth here
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"hidden_size ({hidden_size}) must divide by num_attention_heads ({num_attention_heads}), "
                f"which must divide by num_key_value_heads ({num_key_value_heads})"
            )
        if scoring_func != "softmax":
            raise ValueError(f"scoring_func={scoring_func!r}: only 'softmax' is implemented")


# ----------------------------------------------------------------------------------------------------------
# Building blocks


class RMSNorm(nn.Module):
    """y = x / rms(x) * weight, computed in float32 (as Llama) and returned in the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # One fused kernel instead of pow/mean/rsqrt/mul: fewer passes over the activations.
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


def rope_inv_freq(config: MiniMindConfig) -> torch.Tensor:
    """Inverse frequencies of rotary embeddings, optionally stretched by YaRN."""
    # MLA rotates only its decoupled RoPE part of q/k, so its tables (and YaRN's ramp) span that width.
    dim = config.qk_rope_head_dim if config.attention == "mla" else config.head_dim
    base = config.rope_theta
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    if config.yarn_params:
        p = config.yarn_params
        orig_max, factor = p["original_max_position_embeddings"], p["factor"]

        # The dimension whose wavelength fits `n` rotations in the original context.
        def dim_of(n_rotations):
            return dim * math.log(orig_max / (n_rotations * 2 * math.pi)) / (2 * math.log(base))

        low = max(math.floor(dim_of(p["beta_fast"])), 0)
        high = min(math.ceil(dim_of(p["beta_slow"])), dim - 1)
        # Linear ramp: fast-rotating dims (< low) keep their frequency, slow ones (> high) are divided by factor.
        ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / max(high - low, 1e-3)).clamp(0, 1)
        inv_freq = inv_freq * (1 - ramp) + inv_freq / factor * ramp
    return inv_freq.float()


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables in the rotate-half layout: [f0..f(d/2-1), f0..f(d/2-1)]."""

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.config = config
        cos, sin = self.tables()
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def tables(self):
        config = self.config
        t = torch.arange(config.max_position_embeddings, dtype=torch.float32)
        freqs = torch.outer(t, rope_inv_freq(config))
        emb = torch.cat([freqs, freqs], dim=-1)
        scale = config.yarn_params.get("attention_factor", 1.0) if config.yarn_params else 1.0
        return emb.cos() * scale, emb.sin() * scale

    def forward(self, position_ids: torch.Tensor | None, start: int, length: int, dtype):
        """cos/sin shaped to broadcast over (batch, seq, heads, head_dim)."""
        if position_ids is None:  # the common case: contiguous positions shared by the whole batch
            cos, sin = self.cos[start:start + length], self.sin[start:start + length]
            cos, sin = cos[None, :, None, :], sin[None, :, None, :]
        else:
            cos, sin = self.cos[position_ids][:, :, None, :], self.sin[position_ids][:, :, None, :]
        return cos.to(dtype), sin.to(dtype)


def residual_projection(linear: nn.Linear) -> nn.Linear:
    """Mark a projection that writes into the residual stream (o_proj, down_proj): `_init_weights` scales its
    init down with depth. The mark sits on the layer itself because transformers initialises each module once,
    children first, so a parent cannot re-initialise them afterwards."""
    linear.writes_residual = True
    return linear


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x, cos, sin):
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    """Grouped-query attention: n_heads queries share n_kv_heads keys/values."""

    def __init__(self, config: MiniMindConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = (
            config.num_attention_heads, config.num_key_value_heads, config.head_dim)
        self.q_proj = nn.Linear(config.hidden_size, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = residual_projection(nn.Linear(self.n_heads * self.head_dim, config.hidden_size, bias=False))
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.flash = config.flash_attn

    def forward(self, x, cos, sin, mask=None, is_causal=False, cache=None):
        B, L, _ = x.shape
        q = apply_rotary(self.q_proj(x).view(B, L, self.n_heads, self.head_dim), cos, sin).transpose(1, 2)
        k = apply_rotary(self.k_proj(x).view(B, L, self.n_kv_heads, self.head_dim), cos, sin).transpose(1, 2)
        v = self.v_proj(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if cache is not None:  # append this step's keys/values, get back everything so far
            k, v = cache.update(k, v, self.layer_idx)
        dropout = self.dropout if self.training else 0.0
        if self.flash:
            # SDPA repeats K/V for the query groups itself (enable_gqa), without materialising copies.
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal, enable_gqa=True)
        else:
            out = self.explicit_attention(q, k, v, mask, is_causal, dropout)
        out = out.transpose(1, 2).reshape(B, L, self.n_heads * self.head_dim)
        return self.resid_dropout(self.o_proj(out))

    def explicit_attention(self, q, k, v, mask, is_causal, dropout):
        """softmax(q k^T / sqrt(d) + mask) v, written out: the reference the SDPA path must match.

        The query heads of one group are stacked along the length so that they share their key/value head in
        one matmul, without copies of K and V."""
        B, H, L, D = q.shape
        kv_heads, S = k.shape[1], k.shape[2]
        groups = H // kv_heads
        q = q.reshape(B, kv_heads, groups * L, D)
        scores = (q @ k.transpose(-2, -1)).view(B, kv_heads, groups, L, S) / math.sqrt(D)
        if is_causal:
            mask = torch.ones(L, S, dtype=torch.bool, device=q.device).tril(S - L)
        if mask is not None:
            scores = scores.masked_fill(~(mask.unsqueeze(-3) if mask.dim() == 4 else mask), float("-inf"))
        probs = F.dropout(F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype), p=dropout,
                          training=dropout > 0)
        return (probs.view(B, kv_heads, groups * L, S) @ v).view(B, H, L, D)


class LatentAttention(nn.Module):
    """Multi-head latent attention (DeepSeek-V2/V3): keys and values are up-projected from one small latent per
    token, which is all a KV cache keeps, beside a single RoPE key shared by the heads.

    Each head's query and key are [nope | rope]: the nope part carries content (its key comes from the latent
    through kv_b_proj), the rope part carries position (RoPE cannot pass through the latent, so it has its
    own small key). Parameter names and layouts are DeepSeek-V2's in transformers.

    Two ways to attend, equal up to rounding: `plain` up-projects the cached latents to full K/V for SDPA (training
    and prefill, where many queries share the up-projection); `absorbed` folds kv_b_proj's key half into the query
    and its value half into the output, so attention runs over the latents directly (decoding, where
    up-projecting the whole cache for one query would dominate). `absorb`: None picks by shape, True/False forces.
    """

    def __init__(self, config: MiniMindConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.kv_lora_rank, self.q_lora_rank = (
            config.num_attention_heads, config.kv_lora_rank, config.q_lora_rank)
        self.nope, self.rope, self.v_dim = config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim
        q_out = self.n_heads * (self.nope + self.rope)
        if self.q_lora_rank:
            self.q_a_proj = nn.Linear(config.hidden_size, self.q_lora_rank, bias=False)
            self.q_a_layernorm = RMSNorm(self.q_lora_rank, config.rms_norm_eps)
            self.q_b_proj = nn.Linear(self.q_lora_rank, q_out, bias=False)
        else:
            self.q_proj = nn.Linear(config.hidden_size, q_out, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(config.hidden_size, self.kv_lora_rank + self.rope, bias=False)
        self.kv_a_layernorm = RMSNorm(self.kv_lora_rank, config.rms_norm_eps)  # DeepSeek's: a fixed eps of 1e-6
        self.kv_b_proj = nn.Linear(self.kv_lora_rank, self.n_heads * (self.nope + self.v_dim), bias=False)
        self.o_proj = residual_projection(nn.Linear(self.n_heads * self.v_dim, config.hidden_size, bias=False))
        self.scale = (self.nope + self.rope) ** -0.5  # the full query/key width, as DeepSeek
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.flash = config.flash_attn
        self.absorb = None

    def forward(self, x, cos, sin, mask=None, is_causal=False, cache=None):
        B, L, _ = x.shape
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))) if self.q_lora_rank else self.q_proj(x)
        q_nope, q_pe = q.view(B, L, self.n_heads, self.nope + self.rope).split([self.nope, self.rope], dim=-1)
        q_pe = apply_rotary(q_pe, cos, sin)
        c_kv, k_pe = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, self.rope], dim=-1)
        c_kv = self.kv_a_layernorm(c_kv)
        k_pe = apply_rotary(k_pe[:, :, None], cos, sin)[:, :, 0]  # one RoPE key shared by every head
        if cache is not None:  # the cache holds the latent and the RoPE key only: (B, 1, S, rank), (B, 1, S, rope)
            c_kv, k_pe = cache.update(c_kv[:, None], k_pe[:, None], self.layer_idx)
            c_kv, k_pe = c_kv[:, 0], k_pe[:, 0]
        absorb = self.absorb if self.absorb is not None else cache is not None and L == 1
        # Folding kv_b_proj needs its matrix; a wrapped one (LoRA adapters, NF4) goes the plain way.
        if absorb and type(self.kv_b_proj) is nn.Linear:
            out = self.absorbed(q_nope, q_pe, c_kv, k_pe, mask, is_causal)
        else:
            out = self.plain(q_nope, q_pe, c_kv, k_pe, mask, is_causal)
        return self.resid_dropout(self.o_proj(out.reshape(B, L, self.n_heads * self.v_dim)))

    def plain(self, q_nope, q_pe, c_kv, k_pe, mask, is_causal):
        """Up-project every latent to per-head k_nope and v, then ordinary attention; (B, L, heads, v_dim)."""
        B, S, H = c_kv.shape[0], c_kv.shape[1], self.n_heads
        k_nope, v = self.kv_b_proj(c_kv).view(B, S, H, self.nope + self.v_dim).split([self.nope, self.v_dim], -1)
        q = torch.cat([q_nope, q_pe], dim=-1).transpose(1, 2)
        k = torch.cat([k_nope, k_pe[:, :, None].expand(B, S, H, self.rope)], dim=-1).transpose(1, 2)
        v = v.transpose(1, 2)
        dropout = self.dropout if self.training else 0.0
        if self.flash:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal,
                                                 scale=self.scale)
        else:
            out = self.attention_probs(q @ k.transpose(-2, -1), mask, is_causal, dropout) @ v
        return out.transpose(1, 2)

    def absorbed(self, q_nope, q_pe, c_kv, k_pe, mask, is_causal):
        """The same attention over the latents: q_nope . (W_uk c) = (W_uk^T q_nope) . c and
        sum_s p_s (W_uv c_s) = W_uv (sum_s p_s c_s), so neither K nor V is ever materialised."""
        B, L, H = q_nope.shape[0], q_nope.shape[1], self.n_heads
        w = self.kv_b_proj.weight.to(q_nope.dtype).view(H, self.nope + self.v_dim, self.kv_lora_rank)
        w_uk, w_uv = w[:, :self.nope], w[:, self.nope:]
        # Per-head matmuls batched over heads (plain bmm: einsum would copy the weight slices every step).
        q_lat = (q_nope.permute(2, 0, 1, 3).reshape(H, B * L, self.nope) @ w_uk).view(H, B, L, -1).transpose(0, 1)
        # Every head reads the same latents (one "KV head"): heads x queries as the rows of one matmul, rather
        # than a broadcast that would copy the cache once per head.
        scores = (q_lat.reshape(B, H * L, -1) @ c_kv.transpose(1, 2)
                  + q_pe.transpose(1, 2).reshape(B, H * L, -1) @ k_pe.transpose(1, 2)).view(B, H, L, -1)
        probs = self.attention_probs(scores, mask, is_causal, self.dropout if self.training else 0.0)
        o_lat = (probs.reshape(B, H * L, -1) @ c_kv).view(B, H, L, -1)  # the output in latent space
        out = o_lat.transpose(0, 1).reshape(H, B * L, -1) @ w_uv.transpose(1, 2)  # (H, B * L, v_dim)
        return out.view(H, B, L, self.v_dim).permute(1, 2, 0, 3)

    def attention_probs(self, scores, mask, is_causal, dropout):
        """softmax(scores * scale + mask), written out (float32 softmax); `scores` is (B, H, L, S)."""
        L, S = scores.shape[-2:]
        if is_causal:
            mask = torch.ones(L, S, dtype=torch.bool, device=scores.device).tril(S - L)
        scores = scores * self.scale
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(scores.dtype)
        return F.dropout(probs, p=dropout, training=dropout > 0)


class FeedForward(nn.Module):
    """SwiGLU MLP: down(act(gate(x)) * up(x))."""

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = residual_projection(nn.Linear(config.intermediate_size, config.hidden_size, bias=False))
        self.act_fn = ACT2FN[config.hidden_act]
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        """(output, aux_loss), the pair MoEFeedForward returns too; a dense MLP has no balancing loss."""
        return self.swiglu(x), x.new_zeros((), dtype=torch.float32)

    def swiglu(self, x):
        return self.dropout(self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x)))


class MoEGate(nn.Module):
    """Softmax router: picks top-k experts per token and computes the load-balancing loss."""

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.top_k, self.n_experts = config.num_experts_per_tok, config.n_routed_experts
        self.alpha, self.seq_aux, self.norm_topk_prob = config.aux_loss_alpha, config.seq_aux, config.norm_topk_prob
        self.bias_update_speed = config.bias_update_speed
        self.weight = nn.Parameter(torch.empty(self.n_experts, config.hidden_size))
        if self.bias_update_speed > 0:
            # DeepSeek-V3: a bias added to the scores for *choosing* experts only (the mixing weights stay
            # unbiased). It is nudged toward under-used experts after each training batch, never by gradients.
            self.register_buffer("e_score_correction_bias", torch.zeros(self.n_experts))
        # Set only while activation checkpointing recomputes this gate's block: the bias the block's forward
        # routed with (see replay_routing), which the recomputation must use, and must not nudge again.
        self.replay_bias = None

    def forward(self, x):
        B, L, H = x.shape
        scores = F.linear(x.reshape(-1, H), self.weight).float().softmax(dim=-1)  # (T, E)
        if self.bias_update_speed > 0:
            bias = self.e_score_correction_bias if self.replay_bias is None else self.replay_bias
            topk_idx = torch.topk(scores + bias, self.top_k, dim=-1, sorted=False).indices
            topk_weight = scores.gather(1, topk_idx)
        else:
            topk_weight, topk_idx = torch.topk(scores, self.top_k, dim=-1, sorted=False)
        if self.top_k > 1 and self.norm_topk_prob:
            topk_weight = topk_weight / (topk_weight.sum(dim=-1, keepdim=True) + 1e-20)

        aux_loss = scores.new_zeros(())
        if self.training and self.alpha > 0:
            aux_loss = self.alpha * self.balance_loss(scores, topk_idx, B, L)
        if self.training and self.bias_update_speed > 0 and self.replay_bias is None:
            self.update_bias(topk_idx)
        return topk_idx, topk_weight, aux_loss

    def balance_loss(self, scores, topk_idx, B, L):
        """Switch/DeepSeek balance loss: sum_e (fraction routed to e, scaled by E) * (mean gate prob of e).

        It is 1 at perfect balance. With `seq_aux` it is computed per sequence and averaged (DeepSeek-V2's
        sequence-level loss), else over the whole batch.
        """
        E, k = self.n_experts, self.top_k
        if self.seq_aux:
            load = torch.zeros(B, E, device=scores.device)
            load.scatter_add_(1, topk_idx.view(B, L * k), torch.ones(B, L * k, device=scores.device))
            load = load / (L * k / E)
            return (load * scores.view(B, L, E).mean(dim=1)).sum(dim=1).mean()
        load = F.one_hot(topk_idx.view(-1), E).float().mean(0) * E
        return (load * scores.mean(0)).sum()

    @torch.no_grad()
    def update_bias(self, topk_idx):
        load = torch.bincount(topk_idx.flatten(), minlength=self.n_experts).float()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(load)  # every rank must apply the same update
        self.e_score_correction_bias += self.bias_update_speed * torch.sign(load.mean() - load)


class MoEFeedForward(nn.Module):
    """Routed experts (each token goes to its top-k) plus shared experts (every token)."""

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.gate = MoEGate(config)
        self.experts = nn.ModuleList(FeedForward(config) for _ in range(config.n_routed_experts))
        self.shared_experts = nn.ModuleList(FeedForward(config) for _ in range(config.n_shared_experts))

    def forward(self, x):
        B, L, H = x.shape
        topk_idx, topk_weight, aux_loss = self.gate(x)
        y = self.dispatch(x.reshape(-1, H), topk_idx, topk_weight).view(B, L, H)
        for expert in self.shared_experts:
            y = y + expert.swiglu(x)
        return y, aux_loss

    def dispatch(self, x, topk_idx, topk_weight):
        """Grouped dispatch: sort the (token, expert) pairs by expert, run each expert once on its tokens."""
        k = topk_idx.shape[1]
        flat_expert = topk_idx.flatten()
        order = flat_expert.argsort(stable=True)
        token_of = order // k  # the token each sorted pair came from
        weight_of = topk_weight.flatten()[order]
        counts = torch.bincount(flat_expert, minlength=len(self.experts)).tolist()
        out = torch.zeros_like(x)
        start = 0
        for expert, n in zip(self.experts, counts):
            # In training an idle expert still runs on zero tokens, so its (zero) gradient exists on every
            # rank and DDP never waits for a parameter that one rank did not use.
            if n or self.training:
                idx = token_of[start:start + n]
                y = expert.swiglu(x[idx]) * weight_of[start:start + n, None].to(x.dtype)
                out.index_add_(0, idx, y.to(out.dtype))
            start += n
        return out


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: MiniMindConfig, layer_idx: int):
        super().__init__()
        attention = LatentAttention if config.attention == "mla" else Attention
        self.self_attn = attention(config, layer_idx)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MoEFeedForward(config) if config.use_moe else FeedForward(config)

    def forward(self, x, cos, sin, mask=None, is_causal=False, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, is_causal, cache)
        h, aux_loss = self.mlp(self.post_attention_layernorm(x))
        return x + h, aux_loss


def replay_routing(gates):
    """`context_fn` of torch.utils.checkpoint for a block whose MoE gates carry a routing bias.

    Called as the block's forward starts, it keeps the gates' biases as they are now. The forward then nudges
    them; the recomputation in backward routes with the kept biases instead, so it chooses the same experts
    (the same graph, hence the same gradients) and leaves the biases alone (the nudge is applied once)."""
    kept = [gate.e_score_correction_bias.clone() for gate in gates]

    @contextmanager
    def recompute():
        for gate, bias in zip(gates, kept):
            gate.replay_bias = bias
        try:
            yield
        finally:
            for gate in gates:
                gate.replay_bias = None

    return nullcontext(), recompute()


class MTPModule(nn.Module):
    """One depth of DeepSeek-V3's multi-token prediction (MTP, §2.2): from the previous depth's hidden state h_i
    and the embedding of the token one further ahead, one more block predicts one more token ahead, through the
    shared embedding and output head. Training only: inference drops the modules (or drafts with them).

    h_i = block(eh_proj(concat[hnorm(h_prev_i), enorm(next_embeds_i)])); logits = lm_head(norm(h_i))."""

    def __init__(self, config: MiniMindConfig, depth_idx: int):
        super().__init__()
        self.depth_idx = depth_idx
        self.hnorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.enorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=False)
        # Layer indices after the main model's, so a KV cache holds the MTP blocks' keys apart from theirs.
        self.block = Block(config, layer_idx=config.num_hidden_layers + depth_idx)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)  # applied before the shared head (mtp_logits)

    def forward(self, h_prev, next_embeds, cos, sin, mask=None, is_causal=False, cache=None):
        """(hidden before `norm`, the block's MoE aux loss); h_prev and next_embeds are (B, L, H)."""
        x = self.eh_proj(torch.cat([self.hnorm(h_prev), self.enorm(next_embeds)], dim=-1))
        return self.block(x, cos, sin, mask, is_causal, cache)


def kv_cache_dims(config: MiniMindConfig) -> tuple[int, int, int, int]:
    """(key heads, key dim, value heads, value dim) of what one layer caches per token; a KV cache of any
    kind allocates (batch, heads, length, dim) buffers from these."""
    if config.attention == "mla":  # the latent as the "keys", the shared RoPE key as the "values"
        return 1, config.kv_lora_rank, 1, config.qk_rope_head_dim
    return config.num_key_value_heads, config.head_dim, config.num_key_value_heads, config.head_dim


def attention_mask_4d(attention_mask, q_len: int, past_len: int):
    """Turn a (batch, past+q) padding mask into the arguments SDPA wants: (bool mask or None, is_causal).

    Without padding, the fast kernels need no mask at all. With padding, a query may see a key when the key
    is real and not in its future. A query that would see nothing (a left-pad position) sees itself, so its
    softmax stays finite and no NaN leaks into real positions through masked-out values.
    """
    if attention_mask is None or bool(attention_mask.all()):
        if q_len == 1:
            return None, False  # one new token attends to everything cached
        if past_len == 0:
            return None, True
        attention_mask = None
    kv_len = past_len + q_len
    device = attention_mask.device if attention_mask is not None else None
    q_pos = torch.arange(past_len, kv_len, device=device)[:, None]
    k_pos = torch.arange(kv_len, device=device)[None, :]
    mask = (k_pos <= q_pos)[None, None]  # (1, 1, q, kv)
    if attention_mask is not None:
        mask = mask & attention_mask[:, None, None, :kv_len].bool()
        mask = mask | (k_pos == q_pos)[None, None]
    return mask, False


# ----------------------------------------------------------------------------------------------------------
# Model


@dataclass
class MiniMindOutput(ModelOutput):
    """`loss` is the language-model cross-entropy; `aux_loss` (MoE balancing) is separate so the training
    loop decides how to add it. transformers 5 names the KV cache `cache`; `.past_key_values` still reads it."""

    loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: object | None = None
    hidden_states: torch.Tensor | None = None
    # Mean over the MTP depths of their cross-entropies (training with labels and mtp_depth > 0; else None).
    # Last, so the positions of the fields above are those of models without MTP.
    mtp_loss: torch.Tensor | None = None


class MiniMindModel(nn.Module):
    """Embeddings -> N blocks -> final norm. Returns hidden states and the summed MoE aux loss."""

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config)
        # Activation checkpointing: a block keeps only its input for the backward (instead of ~20 tensors of that
        # size, see scripts/estimate_memory.py) and runs again there: one more forward of the blocks, ~1/3 more
        # compute. `--grad_checkpoint` turns it on through HF's `activation_checkpointing_enable()`, which also
        # sets the checkpoint function (with the caller's kwargs).
        self.gradient_checkpointing = False
        self._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None):
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, L = x.shape[:2]
        past_len = cache.get_seq_length() if cache is not None else 0
        if past_len + L > self.config.max_position_embeddings:
            raise ValueError(f"sequence of {past_len + L} tokens exceeds max_position_embeddings="
                             f"{self.config.max_position_embeddings}")
        mask, is_causal = attention_mask_4d(attention_mask, L, past_len)
        # RoPE in the dtype q and k will have (bf16 under autocast): a float32 table would silently promote
        # every rotated q/k to float32 and double the memory traffic of attention.
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        cos, sin = self.rotary(position_ids, past_len, L, dtype)
        return self.blocks(self.dropout(x), cos, sin, mask, is_causal, cache)

    def decode(self, input_ids, position_ids, mask, cache):
        """The final hidden states of one new token per row, (batch, 1, hidden), with nothing that depends on
        the values of its inputs: `mask` (batch, 1, 1, cache length) says which cache columns each row sees,
        `cache` writes where its own tensor index says. So one compiled graph serves every step (see
        generation.DecodeStep)."""
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary(position_ids, 0, 1, x.dtype)
        return self.blocks(x, cos, sin, mask, False, cache)[0]

    def blocks(self, x, cos, sin, mask, is_causal, cache):
        """(final norm of the blocks' output, their summed MoE aux loss)."""
        aux_loss = x.new_zeros((), dtype=torch.float32)
        # Only when a backward will follow, and never with a KV cache: the recomputation would append to it again.
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled() and cache is None
        for layer in self.layers:
            if recompute:
                x, layer_aux = self.checkpointed(layer, x, cos, sin, mask, is_causal)
            else:
                x, layer_aux = layer(x, cos, sin, mask, is_causal, cache)
            aux_loss = aux_loss + layer_aux
        return self.norm(x), aux_loss

    def checkpointed(self, layer, *args):
        """`layer(*args)` saving only its inputs for the backward, which runs the layer again to get the rest."""
        gates = [m for m in layer.modules() if isinstance(m, MoEGate) and m.bias_update_speed > 0]
        if gates:
            return self._gradient_checkpointing_func(layer, *args, context_fn=partial(replay_routing, gates))
        return self._gradient_checkpointing_func(layer, *args)


class MiniMindForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = MiniMindConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    _supports_sdpa = True
    supports_gradient_checkpointing = True  # HF's activation_checkpointing_enable() sets MiniMindModel's flag
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MiniMindConfig | None = None):
        config = config or MiniMindConfig()
        super().__init__(config)
        self.model = MiniMindModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        if config.mtp_depth:  # absent otherwise, so MiniMind2 state dicts keep exactly their keys
            self.mtp = nn.ModuleList(MTPModule(config, k) for k in range(config.mtp_depth))
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        """One documented init: N(0, 0.02) everywhere; the projections that write into the residual stream
        (o_proj, down_proj) scaled by 1/sqrt(2 * layers), as GPT-2, so the stream's variance does not grow
        with depth; norms start at 1; RoPE tables are recomputed (they are not saved)."""
        std = self.config.initializer_range
        if getattr(module, "writes_residual", False):
            hf_init.normal_(module.weight, mean=0.0, std=std / math.sqrt(2 * self.config.num_hidden_layers))
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            hf_init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            hf_init.ones_(module.weight)
        elif isinstance(module, MoEGate):
            hf_init.normal_(module.weight, mean=0.0, std=std)
            if hasattr(module, "e_score_correction_bias"):
                hf_init.zeros_(module.e_score_correction_bias)
        elif isinstance(module, RotaryEmbedding):
            cos, sin = module.tables()
            hf_init.copy_(module.cos, cos)
            hf_init.copy_(module.sin, sin)

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values=None,
        use_cache: bool = False,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int = 0,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache=None,
        **kwargs,
    ) -> MiniMindOutput:
        """`labels` are aligned with `input_ids` (the shift happens here); -100 marks tokens not learned.
        `logits_to_keep=n` computes logits for the last n positions only (0 = all). With labels and mtp_depth > 0,
        the MTP modules add `mtp_loss` (see mtp_losses) and their MoE aux loss; `loss` and `logits` stay the
        main model's."""
        cache = cache if cache is not None else past_key_values  # transformers >= 5.2x calls it `cache`
        if use_cache and cache is None:
            cache = DynamicCache()
        hidden, aux_loss = self.model(input_ids, attention_mask, position_ids, cache, inputs_embeds)
        mtp_loss = None
        if labels is not None and self.config.mtp_depth:  # a training signal only: inference skips the modules
            embeds = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
            mtp_loss, mtp_aux = self.mtp_losses(hidden, embeds, labels, attention_mask, position_ids)
            aux_loss = aux_loss + mtp_aux
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1), ignore_index=-100)
        return MiniMindOutput(loss=loss, aux_loss=aux_loss, logits=logits, cache=cache, hidden_states=hidden,
                              mtp_loss=mtp_loss)

    def mtp_logits(self, k: int, h: torch.Tensor) -> torch.Tensor:
        """Logits of MTP depth k (0-based) from its hidden state: its own norm, then the shared output head."""
        return self.lm_head(self.mtp[k].norm(h))

    def mtp_losses(self, hidden, embeds, labels, attention_mask=None, position_ids=None):
        """(mean over depths of the MTP cross-entropies, the MTP blocks' summed MoE aux loss).

        Depth k (1-based) at position i combines h^{k-1}_i (h^0 = the main model's final hidden state) with the
        embedding of token i+k and predicts token i+k+1, so its sequence is k positions shorter than the input and
        its labels are the main ones shifted by k more. h^k_i feeds depth k+1 at the same position: the causal
        chain of DeepSeek-V3, where each depth sees one more true token than the one before."""
        L = hidden.shape[1]
        if L <= self.config.mtp_depth:
            raise ValueError(f"mtp_depth {self.config.mtp_depth} needs sequences of more than that many tokens, "
                             f"got {L}")
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        recompute = self.model.gradient_checkpointing and self.training and torch.is_grad_enabled()
        h, losses, aux_loss = hidden, [], hidden.new_zeros((), dtype=torch.float32)
        for k, module in enumerate(self.mtp, start=1):
            n = L - k  # positions i that have a token i+k
            cos, sin = self.model.rotary(None if position_ids is None else position_ids[:, :n], 0, n, dtype)
            # A position is real when both its hidden state's token (i) and its embedded token (i+k) are.
            pad = None if attention_mask is None else attention_mask[:, :n].bool() & attention_mask[:, k:].bool()
            mask, is_causal = attention_mask_4d(pad, n, 0)
            args = (h[:, :n], embeds[:, k:], cos, sin, mask, is_causal)
            h, block_aux = self.model.checkpointed(module, *args) if recompute else module(*args)
            aux_loss = aux_loss + block_aux
            logits = self.mtp_logits(k - 1, h)[:, :-1]  # the last position has no token i+k+1
            target = labels[:, k + 1:]
            # Summed then divided by the count (at least 1): an SFT batch whose replies are all shorter than
            # k + 1 tokens gives 0, not NaN, and still touches every MTP weight (DDP needs each to get a gradient).
            ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), target.reshape(-1),
                                 ignore_index=-100, reduction="sum")
            losses.append(ce / (target != -100).sum().clamp(min=1))
        return torch.stack(losses).mean(), aux_loss


# `AutoModelForCausalLM.from_pretrained(folder)` works for MiniMind folders once this module is imported.
AutoConfig.register("minimind", MiniMindConfig, exist_ok=True)
AutoModelForCausalLM.register(MiniMindConfig, MiniMindForCausalLM, exist_ok=True)
