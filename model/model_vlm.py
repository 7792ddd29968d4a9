"""MiniMind-V: the language model that sees (LLaVA's recipe, as minimind-v uses it).

A vision encoder (CLIP or SigLIP, loaded from a local Hugging Face folder, frozen by default) turns an image
into patch features; a small projection (linear, or a 2-layer MLP) maps them to the LLM's width, optionally
average-pooling the patch grid to fewer tokens first; the projected features replace the embeddings of the
image's placeholder tokens in the prompt, and the decoder runs as usual. Only the prefill sees the image:
after it, generation continues on the KV cache like any text prompt.

The placeholder is `config.image_token_id`, which defaults to `vocab_size`: an id the tokenizer never
produces, so no text a user types can become an image slot. Slots are inserted by `encode_with_images`
where the data marks an image (`<image>` in minimind-v's jsonl, an `image_url` content part in the API),
one run of `config.image_tokens` ids per image; the embedding lookup never sees them (they are replaced).

A VLM checkpoint (`pretrain_vlm_512.pth`, `sft_vlm_512.pth`) holds the LLM and the projection, plus the
encoder only when it was trained (`--train_vision`); a frozen encoder comes from its folder at load time,
checked against a fingerprint of the weights the model was trained with.
"""
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from .model_minimind import MiniMindConfig, MiniMindForCausalLM
from .vision import VisionError, load_vision_encoder, patch_grid, vision_fingerprint

VISION_PREFIX, PROJ_PREFIX = "vision_encoder.", "vision_proj."


# ----------------------------------------------------------------------------------------------------------
# Config and model


class VLMConfig(MiniMindConfig):
    """MiniMind's config plus the vision side. `vision_hidden_size` and `image_tokens` describe the encoder a
    model was built with, so a checkpoint says what it needs before any encoder is loaded."""

    model_type = "minimind_vlm"

    def __init__(self, vision_model_path: str | None = None, projector: str = "mlp", image_pool: int = 1,
                 trained_vision: bool = False, image_token_id: int | None = None, vision_hidden_size: int | None = None,
                 image_tokens: int | None = None, vision_fingerprint: str | None = None,
                 center_features: bool = False, **kwargs):
        super().__init__(**kwargs)
        if projector not in ("linear", "mlp"):
            raise ValueError(f"projector={projector!r}: 'linear' or 'mlp'")
        if image_pool < 1:
            raise ValueError(f"image_pool={image_pool}: a pooling factor >= 1")
        self.vision_model_path, self.projector, self.image_pool = vision_model_path, projector, image_pool
        self.trained_vision = trained_vision  # the encoder's weights are the checkpoint's, not its folder's
        self.center_features = center_features
        self.image_token_id = self.vocab_size if image_token_id is None else image_token_id
        if 0 <= self.image_token_id < self.vocab_size:
            raise ValueError(f"image_token_id={self.image_token_id} is a text token (vocab {self.vocab_size}): the "
                             "placeholder must be an id the tokenizer never produces")
        self.vision_hidden_size, self.image_tokens = vision_hidden_size, image_tokens
        self.vision_fingerprint = vision_fingerprint


class MiniMindVLM(MiniMindForCausalLM):
    """MiniMind with eyes: `vision_encoder` (built frozen: a stage unfreezes it with --train_vision) ->
    `vision_proj` -> spliced into the token embeddings at the image slots. Every text-model path (the loss,
    the KV cache) is the parent's; only the prompt's embeddings differ."""

    config_class = VLMConfig

    def __init__(self, config: VLMConfig, vision_encoder=None):
        super().__init__(config)
        if vision_encoder is None:
            if not config.vision_model_path:
                raise VisionError("MiniMindVLM needs a vision encoder: set vision_model_path (a local folder)")
            vision_encoder, _ = load_vision_encoder(config.vision_model_path)
        self.vision_encoder = vision_encoder
        grid = patch_grid(vision_encoder)
        if grid % config.image_pool:
            raise VisionError(f"--image_pool {config.image_pool} does not divide the encoder's {grid}x{grid} patch grid")
        width, tokens = vision_encoder.config.hidden_size, (grid // config.image_pool) ** 2
        for field, value in (("vision_hidden_size", width), ("image_tokens", tokens)):
            if getattr(config, field) not in (None, value):
                raise VisionError(f"the vision encoder gives {field} {value}, the model was built for "
                                  f"{getattr(config, field)}: it was trained with another encoder")
            setattr(config, field, value)
        if config.projector == "linear":
            self.vision_proj = nn.Sequential(nn.Linear(width, config.hidden_size))
        else:  # LLaVA-1.5's two layers
            self.vision_proj = nn.Sequential(nn.Linear(width, config.hidden_size), nn.GELU(),
                                             nn.Linear(config.hidden_size, config.hidden_size))
        for layer in self.vision_proj:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=config.initializer_range)
                nn.init.zeros_(layer.bias)
        self.vision_encoder.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if not any(p.requires_grad for p in self.vision_encoder.parameters()):
            self.vision_encoder.eval()  # a frozen encoder stays in inference mode
        return self

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(images, image_tokens, hidden): patch features, pooled and projected to the LLM's width."""
        trains = torch.is_grad_enabled() and any(p.requires_grad for p in self.vision_encoder.parameters())
        with torch.set_grad_enabled(trains):  # a frozen encoder keeps no activations for a backward
            states = self.vision_encoder(pixel_values=pixel_values.to(self.vision_proj[0].weight.dtype)).last_hidden_state
        grid = patch_grid(self.vision_encoder)
        patches = states[:, -grid * grid:]  # CLIP puts a class token first; SigLIP has none
        if self.config.image_pool > 1:
            n, _, width = patches.shape
            patches = patches.transpose(1, 2).reshape(n, width, grid, grid)
            patches = F.avg_pool2d(patches, self.config.image_pool).flatten(2).transpose(1, 2)
        if self.config.center_features:
            # What every patch shares (mostly the background) is removed, so what differs stands out. A small
            # encoder trained from scratch needs it: its features are dominated by one common component, a shape
            # filling 1 of 16 tokens barely moves them, and the demo's VLM stayed at chance without it.
            patches = patches - patches.mean(dim=1, keepdim=True)
        return self.vision_proj(patches)

    def embed_inputs(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with each image's features written over its run of slots, images taken in order of
        appearance (row by row, left to right)."""
        if pixel_values is None and input_ids.shape[1] == 1:  # a decode step: a sampled token is never a slot
            return self.model.embed_tokens(input_ids)
        slots = input_ids == self.config.image_token_id
        embeds = self.model.embed_tokens(input_ids.masked_fill(slots, 0))
        n_images = 0 if pixel_values is None else pixel_values.shape[0]
        check_image_slots(slots, n_images, self.config.image_tokens)
        if not n_images:
            return embeds
        features = self.image_features(pixel_values)
        return embeds.masked_scatter(slots.unsqueeze(-1), features.to(embeds.dtype))

    def forward(self, input_ids=None, attention_mask=None, past_key_values=None, use_cache=False, labels=None,
                logits_to_keep=0, position_ids=None, inputs_embeds=None, cache=None, pixel_values=None, **kwargs):
        """The causal LM's forward; `pixel_values` (images, 3, H, W): the images of the batch's slots, in order."""
        if inputs_embeds is None and input_ids is not None:
            inputs_embeds = self.embed_inputs(input_ids, pixel_values)
        return super().forward(input_ids, attention_mask, past_key_values, use_cache, labels, logits_to_keep,
                               position_ids, inputs_embeds, cache, **kwargs)


def check_image_slots(slots: torch.Tensor, n_images: int, image_tokens: int):
    """Every run of slots must hold whole images (adjacent images make one longer run), and the runs together
    exactly `n_images`: a prompt built for another encoder, or an image without its slots, is an error naming
    the row, never features written into the wrong places."""
    edges = F.pad(slots.int(), (1, 1)).diff(dim=1)  # +1 where a run starts, -1 after it ends
    starts, ends = (edges == 1).nonzero().tolist(), (edges == -1).nonzero().tolist()
    found = 0
    for (row, start), (_, end) in zip(starts, ends):
        if (end - start) % image_tokens:
            raise VisionError(f"row {row}: a run of {end - start} image slots at position {start}, but each image "
                              f"fills {image_tokens} (was the prompt built for another vision encoder?)")
        found += (end - start) // image_tokens
    if found != n_images:
        raise VisionError(f"the prompt has slots for {found} image(s) but {n_images} were given")


# ----------------------------------------------------------------------------------------------------------
# Building, saving and loading


def vlm_config(llm_config: dict, vision_model_path: str, **vision) -> VLMConfig:
    """A VLMConfig holding an LLM's config (from its checkpoint meta) plus the vision fields."""
    llm = {k: v for k, v in llm_config.items() if k not in ("model_type", "architectures", "transformers_version")}
    return VLMConfig(**llm, vision_model_path=vision_model_path, **vision)


def vlm_from_llm(llm: MiniMindForCausalLM, vision_model_path: str, projector: str = "mlp",
                 image_pool: int = 1, center_features: bool = False) -> MiniMindVLM:
    """A new VLM around a trained LLM: every LLM weight copied and checked, a fresh projection. Multi-token
    prediction modules are left behind (the VLM stages train next-token prediction only)."""
    from .checkpoint import load_weights
    encoder, _ = load_vision_encoder(vision_model_path)
    config = vlm_config({**llm.config.to_dict(), "mtp_depth": 0}, vision_model_path, projector=projector,
                        image_pool=image_pool, center_features=center_features,
                        vision_fingerprint=vision_fingerprint(encoder))
    model = MiniMindVLM(config, encoder)
    own = {k: v for k, v in model.state_dict().items() if k.startswith((VISION_PREFIX, PROJ_PREFIX))}
    text = {k: v for k, v in llm.state_dict().items() if not k.startswith("mtp.")}
    load_weights(model, {**text, **own}, "the LLM")  # strict: every LLM weight must land
    return model.to(llm.device)


def vlm_state_dict(model: MiniMindVLM) -> dict:
    """What a VLM checkpoint holds: everything but an encoder never trained (it is its folder's, unchanged)."""
    state = model.state_dict()
    if not model.config.trained_vision:
        state = {k: v for k, v in state.items() if not k.startswith(VISION_PREFIX)}
    return state


def save_vlm(model, path: str, meta: dict, dtype=torch.float16):
    """`save_weights` for a VLM: the LLM, the projection, and the encoder only if it was trained."""
    from .checkpoint import save_weights, unwrap
    save_weights(unwrap(model), path, meta, dtype, state=vlm_state_dict(unwrap(model)))


def is_vlm_config(config: dict) -> bool:
    return config.get("model_type") == VLMConfig.model_type


def load_vlm(path: str, meta: dict, vision_model_path: str | None = None, overrides: dict | None = None,
             quiet: bool = False) -> MiniMindVLM:
    """A VLM from its checkpoint. The encoder comes from `vision_model_path` (default: the folder recorded at
    training time); a frozen one must be the same weights (fingerprint), a trained one comes from the checkpoint.
    Every LLM and projection weight must load: a missing key is an error, never a silent random init."""
    from .checkpoint import CheckpointError, load_weights, read_state_dict
    config = dict(meta["config"])
    folder = vision_model_path or config.get("vision_model_path")
    if not folder or not os.path.isdir(folder):
        raise CheckpointError(f"{path}: its vision encoder folder {folder!r} is not here: pass --vision_model <folder> "
                              "(the CLIP/SigLIP folder it was trained with)")
    encoder, _ = load_vision_encoder(folder)
    state = read_state_dict(path)
    trained_vision = config.get("trained_vision", False)
    if not trained_vision and config.get("vision_fingerprint") not in (None, vision_fingerprint(encoder)):
        raise CheckpointError(f"{path}: the vision encoder in {folder} is not the one this model was trained with "
                              "(its weights differ): pass --vision_model <the folder used in training>")
    config = {k: v for k, v in config.items() if k not in ("model_type", "architectures", "transformers_version")}
    model = MiniMindVLM(VLMConfig(**{**config, **(overrides or {}), "vision_model_path": folder}), encoder)
    if not trained_vision:  # the encoder is its folder's: every other weight must be in the file
        state = {**state, **{k: v for k, v in model.state_dict().items() if k.startswith(VISION_PREFIX)}}
    load_weights(model, state, path, quiet=quiet)
    return model


def describe(model: MiniMindVLM) -> str:
    """One line for logs: encoder, tokens per image, projection, what trains."""
    c = model.config
    vision_params = sum(p.numel() for p in model.vision_encoder.parameters())
    grid = int(math.isqrt(c.image_tokens))
    return (f"vision: {type(model.vision_encoder).__name__} ({vision_params / 1e6:.1f}M, "
            f"{'trained' if c.trained_vision else 'as in its folder'}), {grid}x{grid} = {c.image_tokens} tokens per image, "
            f"{c.projector} projection {c.vision_hidden_size} -> {c.hidden_size}")
