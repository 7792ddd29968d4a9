"""MiniMind's bundled bilingual demo corpus (standard library only, no network).

A fresh clone has no data and cannot download any, so the project writes its own: a small fictional
world (countries, towns, rivers, people), arithmetic and word problems, stated in Chinese and English,
in exactly the published MiniMind jsonl formats. Every stage of the chain (pretrain -> SFT -> DPO ->
reasoning -> LoRA -> RL) trains on it in minutes on a laptop CPU, and the held-out files measure whether
a model *learned* rather than copied. The evaluation categories:

  fact_new_phrasing   facts taught in SFT, asked with question templates that no training file uses
  fact_pretrain_only  facts of towns and people SFT never asks about: only pretraining text states them
  two_hop             "Which country is X's hometown in?" for subjects never asked a two-hop question
                      (both single hops are taught; pretraining never puts the two hops in one document)
  arithmetic          operand pairs that never stand next to each other in any training text
  word_problem        held-out names and number triples
  identity            (after the identity LoRA) new phrasings of "who are you?"; SFT never teaches it
  domain              (after the domain LoRA) new phrasings of the herbal facts in lora_domain.jsonl

Held-out questions cannot leak by construction (separate template pools, entities, operands and names),
and `generate` verifies it anyway before writing anything.

    python scripts/make_demo_data.py --out_dir dataset/demo --seed 42 [--scale 1.0]
    from demo import generate, is_correct, score

The modules, in the order they build on each other: `phrasings` (what is said, in both languages),
`world` (the entities and facts), `items` (one question with its replies and answer), `heldout` (what only
evaluation asks, and the training question sources that avoid it), `leaks` (the check that they do),
`documents` (pretraining text), `files` (every jsonl file, written by `generate`), `scoring`.
"""
import os
import sys

from .files import generate
from .scoring import is_correct, score

# The bundled corpus lives in the repository (ignored by git), generated on first use.
DEMO_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dataset", "demo")

__all__ = ["DEMO_DIR", "data_paths", "demo_file", "generate", "is_correct", "score"]


def demo_file(name: str) -> str:
    """DEMO_DIR/<name> (name with its extension), generating the demo corpus on first use (`vlm/...`: the
    vision-language demo's images and conversations, demo/vision.py)."""
    path = os.path.join(DEMO_DIR, name)
    if not os.path.exists(path) and name.startswith("vlm/"):  # the vision-language demo: images of shapes
        from .vision import demo_vlm_dir
        demo_vlm_dir()
    if not os.path.exists(path):
        print(f"data: {path} not found, generating the demo corpus into {DEMO_DIR}")
        generate(DEMO_DIR)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: the demo corpus has no such file")
    return path


def data_paths(data_path: str | None, val_path: str | None, name: str) -> tuple[str, str | None]:
    """(train, validation) files for a training script: --data_path and --val_path when given (they must
    exist), else the demo's `<name>.jsonl` with its `<name>_val.jsonl` when the demo has one (None otherwise)."""
    for flag, path in (("--data_path", data_path), ("--val_path", val_path)):
        if path and not os.path.exists(path):
            sys.exit(f"{flag} {path}: no such file")
    if data_path:
        return data_path, val_path or None
    train = demo_file(f"{name}.jsonl")
    demo_val = os.path.join(DEMO_DIR, f"{name}_val.jsonl")
    return train, val_path or (demo_val if os.path.exists(demo_val) else None)
