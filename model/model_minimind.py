"""MiniMind: a small Llama-style decoder, dense or Mixture-of-Experts, in one file.

Read top to bottom: config -> RMSNorm -> RoPE (+YaRN) -> attention -> MLP / MoE -> block
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
    dim, base = config.head_dim, config.rope_theta
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
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.hidden_size, bias=False)
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


class FeedForward(nn.Module):
    """SwiGLU MLP: down(act(gate(x)) * up(x))."""

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
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
        self.self_attn = Attention(config, layer_idx)
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
        x = self.dropout(x)
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
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        """One documented init: N(0, 0.02) everywhere; the projections that write into the residual stream
        (o_proj, down_proj) scaled by 1/sqrt(2 * layers), as GPT-2, so the stream's variance does not grow
        with depth; norms start at 1; RoPE tables are recomputed (they are not saved)."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
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
        if isinstance(module, (Attention, FeedForward)):
            proj = module.o_proj if isinstance(module, Attention) else module.down_proj
            # Children are initialised before their parent, so this overrides the plain N(0, 0.02) above.
            hf_init.normal_(proj.weight, mean=0.0, std=std / math.sqrt(2 * self.config.num_hidden_layers))

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
        `logits_to_keep=n` computes logits for the last n positions only (0 = all)."""
        cache = cache if cache is not None else past_key_values  # transformers >= 5.2x calls it `cache`
        if use_cache and cache is None:
            cache = DynamicCache()
        hidden, aux_loss = self.model(input_ids, attention_mask, position_ids, cache, inputs_embeds)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1), ignore_index=-100)
        return MiniMindOutput(loss=loss, aux_loss=aux_loss, logits=logits, cache=cache, hidden_states=hidden)


# `AutoModelForCausalLM.from_pretrained(folder)` works for MiniMind folders once this module is imported.
AutoConfig.register("minimind", MiniMindConfig, exist_ok=True)
AutoModelForCausalLM.register(MiniMindConfig, MiniMindForCausalLM, exist_ok=True)
