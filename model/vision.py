"""Images for MiniMind-V: the vision encoder's folder (a local Hugging Face CLIP or SigLIP), its image
processor, decoding image files and bytes, and the text side of an image: where its slots go in the token ids.
The model itself is model/model_vlm.py; nothing here needs it (transformers is imported only when used).
"""
import hashlib
import os
from contextlib import contextmanager

import torch

IMAGE_MARKER = "<image>"  # where an image goes in minimind-v's conversation text


class VisionError(ValueError):
    """An image or vision encoder that does not fit the model: one line naming what and where."""


# ----------------------------------------------------------------------------------------------------------
# The vision encoder: a Hugging Face folder on disk (no downloads here: tests and the demo save their own).


def vision_classes(model_type: str):
    """(encoder class, its vision-config class) for a folder's `model_type`: a full CLIP/SigLIP model's folder
    (`openai/clip-vit-base-patch16`) or a vision-only one; the vision tower is what loads."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel
    kinds = {"clip": (CLIPVisionModel, CLIPVisionConfig), "clip_vision_model": (CLIPVisionModel, CLIPVisionConfig),
             "siglip": (SiglipVisionModel, SiglipVisionConfig),
             "siglip_vision_model": (SiglipVisionModel, SiglipVisionConfig)}
    if model_type not in kinds:
        raise VisionError(f"vision encoder model_type {model_type!r} is not supported (CLIP or SigLIP folders: "
                          f"{', '.join(kinds)})")
    return kinds[model_type]


def load_vision_encoder(path: str):
    """(encoder, image processor) from a local Hugging Face folder, e.g. a downloaded clip-vit-base-patch16."""
    import json
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise VisionError(f"vision encoder {path}: no config.json there (pass --vision_model <a local CLIP or "
                          "SigLIP folder, e.g. a clone of openai/clip-vit-base-patch16>)")
    with open(config_file, encoding="utf-8") as f:
        model_type = json.load(f).get("model_type", "")
    encoder_class, _ = vision_classes(model_type)
    with quiet_transformers():  # a full CLIP folder's text tower is "unexpected": expected, not news
        encoder, info = encoder_class.from_pretrained(path, output_loading_info=True)
    if info["missing_keys"]:  # from_pretrained would start them from random init and only say so in a log
        missing = sorted(info["missing_keys"])
        raise VisionError(f"vision encoder {path}: {len(missing)} weight(s) missing from its files ({', '.join(missing[:3])}"
                          f"{', ...' if len(missing) > 3 else ''}): the folder is incomplete")
    return encoder.float().eval(), load_image_processor(path)


@contextmanager
def quiet_transformers():
    """transformers' load reports and progress bars off for the duration."""
    from transformers.utils import logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def load_image_processor(path: str):
    from transformers import AutoImageProcessor
    if not os.path.isfile(os.path.join(path, "preprocessor_config.json")):
        raise VisionError(f"vision encoder {path}: no preprocessor_config.json (the image processor's settings)")
    return AutoImageProcessor.from_pretrained(path, backend="pil")  # PIL: no torchvision needed


def save_vision_encoder(path: str, kind: str = "clip", image_size: int = 224, patch_size: int = 16,
                        hidden_size: int = 768, num_hidden_layers: int = 12, num_attention_heads: int = 12,
                        intermediate_size: int | None = None, seed: int = 0) -> str:
    """Write a randomly initialised vision-only encoder folder (weights + config + image processor) that
    `load_vision_encoder` reads as it reads a downloaded one. Tests and benchmarks use it for its shape (ViT-B/16:
    the defaults); the demo trains one from scratch (`--train_vision`)."""
    from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil
    encoder_class, config_class = vision_classes(f"{kind}_vision_model")
    config = config_class(image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                          num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                          intermediate_size=intermediate_size or 4 * hidden_size)
    torch.manual_seed(seed)
    with quiet_transformers():
        encoder_class(config).save_pretrained(path)
    if kind == "clip":  # CLIP resizes the short side, then centre-crops; SigLIP resizes to the square
        processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                       crop_size={"height": image_size, "width": image_size})
    else:
        processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    processor.save_pretrained(path)
    return path


def patch_grid(encoder) -> int:
    """Patches per side of the encoder's input (14 for ViT-B/16 at 224)."""
    return encoder.config.image_size // encoder.config.patch_size


def vision_fingerprint(encoder) -> str:
    """A short hash of the encoder's weights (sums and sums of squares, in float64): a frozen encoder is not in
    the checkpoint, so loading checks that the folder holds the weights the model was trained with."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, p in sorted(encoder.state_dict().items()):
            x = p.detach().double()
            digest.update(f"{name}:{tuple(p.shape)}:{x.sum().item():.6e}:{x.square().sum().item():.6e}".encode())
    return digest.hexdigest()[:16]


def encode_with_images(tokenizer, text: str, image_token_id: int, image_tokens: int,
                       marker: str = IMAGE_MARKER) -> list[int]:
    """Token ids of `text` with each `marker` replaced by a run of `image_tokens` slot ids. The text between
    markers is encoded piece by piece, so no text can turn into a slot."""
    pieces = text.split(marker)
    ids = tokenizer.encode(pieces[0], add_special_tokens=False)
    for piece in pieces[1:]:
        ids += [image_token_id] * image_tokens + tokenizer.encode(piece, add_special_tokens=False)
    return ids


def load_images(sources) -> list:
    """PIL RGB images from paths or raw bytes (PNG, JPEG, ...); a file that cannot be decoded raises VisionError
    naming it."""
    import io

    from PIL import Image, UnidentifiedImageError
    images = []
    for k, source in enumerate(sources):
        name = source if isinstance(source, str) else f"image {k + 1} ({len(source)} bytes)"
        try:
            with Image.open(source if isinstance(source, str) else io.BytesIO(source)) as image:
                images.append(image.convert("RGB"))
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
            raise VisionError(f"{name}: cannot be read as an image ({type(e).__name__}: {e})") from None
    return images


def pixel_values(processor, images: list) -> torch.Tensor:
    """(images, 3, H, W) as the encoder's own image processor prepares them (resize, crop, normalise)."""
    return processor(images=images, return_tensors="pt")["pixel_values"]
