"""MiniMind-V's bundled demo data: 64x64 pictures of simple shapes, with captions and questions in English
and Chinese, in minimind-v's jsonl formats (an `<image>` tag in the user turn, image names in `"image"`).

Each scene holds 1-4 non-overlapping shapes (6 kinds x 6 colours x 2 sizes) in distinct regions (the four
corners and the centre) on a white, light grey, black or noisy background. Captions describe every shape (the
pretraining stage); questions ask for the shape, colour, position or number of shapes, whether a given
coloured shape is there, and whether two pictures hold the same number of shapes (SFT). It is sized for a
tiny ViT trained from scratch on a CPU (64x64 pictures, 8x8 patches), and the held-out rows measure whether
the model *generalised* rather than memorised pictures and sentences:

  - some (colour, shape), (position, shape) and (count, background) combinations never occur in a training
    picture (every colour, shape, position, count and background alone does); held-out rows on them carry
    `"withheld": true`, so a model that learned the parts separately scores there as well as elsewhere;
  - held-out questions use phrasings that no training row uses, and every held-out picture is a fresh draw.

`generate_vlm` verifies both (and that no training question names a withheld pair) before writing anything. Score replies with `is_correct_vlm` / `score_vlm`, and
compare with `chance_levels`.

    from demo.vision import demo_vlm_dir, generate_vlm, score_vlm
"""
from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from model.reasoning import extract_answer
from model.rewards import normalize

from . import DEMO_DIR
from .files import _split_counts, write_jsonl
from .heldout import Cycler
from .world import rng_for

LANGS = ("en", "zh")
VLM_KINDS = ("shape", "colour", "count", "position", "exists", "compare")
SHAPES = ("circle", "square", "rectangle", "triangle", "diamond", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right", "center")
COUNTS = (1, 2, 3, 4)
YES_NO = ("yes", "no")
VALUES = {"shape": SHAPES, "colour": COLOURS, "count": COUNTS, "position": POSITIONS, "exists": YES_NO,
          "compare": YES_NO}
BACKGROUNDS = ("white", "grey", "black", "noisy")

# Held out of every training picture. Each withheld set is a permutation-like choice, so every colour,
# shape, position, count and background still occurs in training, each in most of its combinations.
WITHHELD_COLOUR_SHAPE = frozenset({("red", "triangle"), ("green", "cross"), ("blue", "circle"),
                                   ("yellow", "diamond"), ("purple", "square"), ("orange", "rectangle")})
WITHHELD_POSITION_SHAPE = frozenset({("top-left", "diamond"), ("top-right", "circle"), ("bottom-left", "cross"),
                                     ("bottom-right", "square"), ("center", "triangle")})
WITHHELD_COUNT_BACKGROUND = frozenset({(2, "noisy"), (3, "black"), (4, "white")})

# Sizes at scale 1 (--scale multiplies the training part; validation and held-out files keep their size, so
# that scores compare across scales).
TRAIN_IMAGES, SFT_ROWS = 4_000, 8_000
VAL_IMAGES, VAL_ROWS = 200, 200
HELDOUT_PER_KIND_LANG = 60
TRAIN_COUNT_MIX = {1: 0.4, 2: 0.2, 3: 0.2, 4: 0.2}  # single shapes answer shape, colour and position questions
SFT_MIX = {"shape": 0.125, "colour": 0.125, "count": 0.125, "position": 0.125, "exists": 0.125,
           "multi_turn": 0.275, "compare": 0.1}

# ---- pictures ----
SIZE = 64
EXTENT = {"small": 12, "large": 22}  # pixels across; a rectangle is half as tall as wide (or the reverse)
MARGIN = 2  # empty pixels kept between two shapes
RGB = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 80, 230), "yellow": (245, 210, 20),
       "purple": (150, 50, 200), "orange": (255, 140, 0)}
# Grey backgrounds (r = g = b), never the hue of a shape, so every shape stays distinguishable.
BACKGROUND_GREY = {"white": 255, "grey": 200, "black": 25, "noisy": 220}
NOISE_SIGMA = 14


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: str
    region: str
    x: int  # centre pixel
    y: int
    vertical: bool = False  # rectangles only: taller than wide


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    background: str
    noise_seed: int = 0

    @property
    def count(self) -> int:
        return len(self.shapes)

    def pairs(self) -> set[tuple[str, str]]:
        return {(s.colour, s.kind) for s in self.shapes}

    def key(self) -> tuple:
        """What makes two pictures the same (the noise aside: a redrawn noise does not make a picture new)."""
        return self.shapes, self.background


def half_extents(kind: str, size: str, vertical: bool = False) -> tuple[int, int]:
    half = EXTENT[size] // 2
    if kind == "rectangle":
        return (half // 2, half) if vertical else (half, half // 2)
    return half, half


def bounds(shape: Shape) -> tuple[int, int, int, int]:
    hx, hy = half_extents(shape.kind, shape.size, shape.vertical)
    return shape.x - hx, shape.y - hy, shape.x + hx - 1, shape.y + hy - 1


def draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, fill) -> None:
    # No anti-aliasing: a shape's pixels carry exactly its colour (tests count them).
    x, y = shape.x, shape.y
    hx, hy = half_extents(shape.kind, shape.size, shape.vertical)
    box = bounds(shape)
    if shape.kind == "circle":
        draw.ellipse(box, fill=fill)
    elif shape.kind in ("square", "rectangle"):
        draw.rectangle(box, fill=fill)
    elif shape.kind == "triangle":
        draw.polygon([(x, y - hy), (x - hx, y + hy - 1), (x + hx - 1, y + hy - 1)], fill=fill)
    elif shape.kind == "diamond":
        draw.polygon([(x, y - hy), (x + hx - 1, y), (x, y + hy - 1), (x - hx, y)], fill=fill)
    elif shape.kind == "cross":
        t = EXTENT[shape.size] // 3  # arm thickness
        draw.rectangle((x - hx, y - t // 2, x + hx - 1, y - t // 2 + t - 1), fill=fill)
        draw.rectangle((x - t // 2, y - hy, x - t // 2 + t - 1, y + hy - 1), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape.kind!r}")


def shape_mask(shape: Shape) -> np.ndarray:
    mask = Image.new("L", (SIZE, SIZE), 0)
    draw_shape(ImageDraw.Draw(mask), shape, 255)
    return np.asarray(mask) > 0


def render(scene: Scene) -> Image.Image:
    grey = BACKGROUND_GREY[scene.background]
    if scene.background == "noisy":  # per-pixel grey noise from the scene's own seed: independent of draw order
        noise = np.random.default_rng(scene.noise_seed).normal(grey, NOISE_SIGMA, (SIZE, SIZE))
        image = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8), "L").convert("RGB")
    else:
        image = Image.new("RGB", (SIZE, SIZE), (grey,) * 3)
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        draw_shape(draw, shape, RGB[shape.colour])
    return image


def centre_range(region: str, axis: int, half: int) -> tuple[int, int]:
    """Where a shape's centre may lie along one axis (0: x, 1: y) to stay inside its region."""
    if region == "center":
        return 29, 34
    low = region.split("-")[axis] in ("left", "top")
    return (half + 2, 22) if low else (SIZE - 23, SIZE - half - 3)


def dilated(mask: np.ndarray, r: int = MARGIN) -> np.ndarray:
    """The mask grown by r pixels in every direction (a square neighbourhood), one axis at a time."""
    rows = mask.copy()
    for d in range(1, r + 1):
        rows[d:] |= mask[:-d]
        rows[:-d] |= mask[d:]
    out = rows.copy()
    for d in range(1, r + 1):
        out[:, d:] |= rows[:, :-d]
        out[:, :-d] |= rows[:, d:]
    return out


def place(rng: random.Random, kind: str, colour: str, region: str, taken: list) -> Shape | None:
    """A shape of random size jittered inside its region, at least MARGIN pixels clear of every shape in
    `taken` ((bounds, grown mask) pairs), or None."""
    for _ in range(20):
        size, vertical = rng.choice(("small", "large")), kind == "rectangle" and rng.random() < 0.5
        hx, hy = half_extents(kind, size, vertical)
        shape = Shape(kind, colour, size, region, rng.randint(*centre_range(region, 0, hx)),
                      rng.randint(*centre_range(region, 1, hy)), vertical)
        x0, y0, x1, y1 = bounds(shape)
        near = [grown for (a0, b0, a1, b1), grown in taken  # only shapes whose boxes come close need pixels
                if x0 <= a1 + MARGIN and a0 <= x1 + MARGIN and y0 <= b1 + MARGIN and b0 <= y1 + MARGIN]
        if near:
            mask = shape_mask(shape)
            if any((mask & grown).any() for grown in near):
                continue
        return shape
    return None


# ---- what training may show ----
def withheld_in(scene: Scene) -> set[tuple]:
    """The withheld combinations a picture shows, as ("colour-shape", c, s), ("position-shape", p, s) and
    ("count-background", n, bg) triples."""
    found = {("colour-shape", s.colour, s.kind) for s in scene.shapes if (s.colour, s.kind) in WITHHELD_COLOUR_SHAPE}
    found |= {("position-shape", s.region, s.kind) for s in scene.shapes
              if (s.region, s.kind) in WITHHELD_POSITION_SHAPE}
    if (scene.count, scene.background) in WITHHELD_COUNT_BACKGROUND:
        found.add(("count-background", scene.count, scene.background))
    return found


ALLOWED_PAIRS = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in WITHHELD_COLOUR_SHAPE]
ALL_PAIRS = [(c, s) for c in COLOURS for s in SHAPES]


def sample_scene(rng: random.Random, count: int, first: tuple[str, str] | None = None, region: str | None = None,
                 background: str | None = None) -> Scene:
    """A picture of `count` shapes in distinct regions. The first shape may be given a (colour, shape) pair
    and a region, the picture a background; everything drawn at random is training-safe (no withheld
    combination), so a forced choice is the only withheld thing a held-out picture can show."""
    if background is None:
        background = rng.choice([b for b in BACKGROUNDS if (count, b) not in WITHHELD_COUNT_BACKGROUND])
    for _ in range(200):
        pairs = [first] if first else []
        pairs += rng.sample([p for p in ALLOWED_PAIRS if p not in pairs], count - len(pairs))
        regions = [region] if region else []
        for colour, kind in pairs[len(regions):]:
            free = [r for r in POSITIONS if r not in regions and (r, kind) not in WITHHELD_POSITION_SHAPE]
            if not free:
                break
            regions.append(rng.choice(free))
        if len(regions) < count:
            continue
        shapes, taken = [], []
        for (colour, kind), r in zip(pairs, regions):
            shape = place(rng, kind, colour, r, taken)
            if shape is None:
                break
            shapes.append(shape)
            taken.append((bounds(shape), dilated(shape_mask(shape))))
        if len(shapes) == count:
            noise_seed = rng.getrandbits(32) if background == "noisy" else 0
            return Scene(tuple(shapes), background, noise_seed)
    raise RuntimeError(f"could not place {count} shapes (first={first}, region={region})")


def training_scenes(rng: random.Random, n: int, avoid: set) -> list[Scene]:
    """n training-safe pictures, none equal to one in `avoid` (the held-out pictures)."""
    # Single shapes cycle over every allowed (colour, shape, region) so that each answer value occurs even at
    # small scales; larger scenes draw at random.
    singles = Cycler(rng, [(c, s, r) for c, s in ALLOWED_PAIRS for r in POSITIONS
                           if (r, s) not in WITHHELD_POSITION_SHAPE])
    scenes = []
    for count, k in _split_counts(n, TRAIN_COUNT_MIX).items():
        for _ in range(k):
            first = region = None
            if count == 1:
                (colour, kind, region), _ = singles.next()
                first = colour, kind
            scene = sample_scene(rng, count, first, region)
            while scene.key() in avoid:
                scene = sample_scene(rng, count, first, region)
            scenes.append(scene)
    rng.shuffle(scenes)
    return scenes


def forced_scene(rng: random.Random, combo: tuple, count: int | None = None) -> Scene:
    """A fresh picture showing one withheld combination (see `withheld_in`)."""
    what, a, b = combo
    if what == "count-background":
        return sample_scene(rng, a, background=b)
    count = count or rng.choice(COUNTS)
    if what == "colour-shape":
        return sample_scene(rng, count, (a, b))
    colour = rng.choice([c for c, s in ALLOWED_PAIRS if s == b])
    return sample_scene(rng, count, (colour, b), region=a)


WITHHELD_COMBOS = ([("colour-shape", *p) for p in sorted(WITHHELD_COLOUR_SHAPE)]
                   + [("position-shape", *p) for p in sorted(WITHHELD_POSITION_SHAPE)]
                   + [("count-background", *p) for p in sorted(WITHHELD_COUNT_BACKGROUND)])


# ---- words ----
NAMES = {
    "en": {"shape": dict(zip(SHAPES, SHAPES)), "colour": dict(zip(COLOURS, COLOURS)),
           "count": {1: "one", 2: "two", 3: "three", 4: "four"},
           "position": {"top-left": "at the top left", "top-right": "at the top right",
                        "bottom-left": "at the bottom left", "bottom-right": "at the bottom right",
                        "center": "in the center"},
           "size": {"small": "small", "large": "large"},
           "background": {"white": "white", "grey": "light grey", "black": "black", "noisy": "noisy"}},
    "zh": {"shape": dict(zip(SHAPES, ("圆形", "正方形", "长方形", "三角形", "菱形", "十字形"))),
           "colour": dict(zip(COLOURS, ("红色", "绿色", "蓝色", "黄色", "紫色", "橙色"))),
           "count": {1: "一", 2: "两", 3: "三", 4: "四"},
           "position": dict(zip(POSITIONS, ("左上方", "右上方", "左下方", "右下方", "中间"))),
           "size": {"small": "小", "large": "大"},
           "background": {"white": "白色", "grey": "浅灰色", "black": "黑色", "noisy": "有噪点的"}},
}

# Words that name each answer value in a reply, both languages (the first of a language is the canonical
# answer of an evaluation row, the others its aliases). Chinese has no word boundaries: a reply is read
# longest word first, so "没有" is never read as "有", nor "不一样" as "一样".
_YES = {"en": ("yes",), "zh": ("是的", "有", "对", "一样", "相同")}
_NO = {"en": ("no", "not", "isn't", "aren't", "don't", "doesn't"),
       "zh": ("没有", "不一样", "不相同", "不同", "不是", "不", "没", "否")}
ANSWER_TERMS = {
    "shape": {
        "circle": {"en": ("circle", "circles"), "zh": ("圆形", "圆")},
        "square": {"en": ("square", "squares"), "zh": ("正方形",)},
        "rectangle": {"en": ("rectangle", "rectangles", "oblong"), "zh": ("长方形", "矩形")},
        "triangle": {"en": ("triangle", "triangles"), "zh": ("三角形", "三角")},
        "diamond": {"en": ("diamond", "diamonds", "rhombus"), "zh": ("菱形",)},
        "cross": {"en": ("cross", "crosses", "plus sign"), "zh": ("十字形", "十字")}},
    "colour": {
        "red": {"en": ("red",), "zh": ("红色", "红")},
        "green": {"en": ("green",), "zh": ("绿色", "绿")},
        "blue": {"en": ("blue",), "zh": ("蓝色", "蓝")},
        "yellow": {"en": ("yellow",), "zh": ("黄色", "黄")},
        "purple": {"en": ("purple", "violet"), "zh": ("紫色", "紫")},
        "orange": {"en": ("orange",), "zh": ("橙色", "橙", "橘色")}},
    "count": {
        1: {"en": ("one", "1", "single"), "zh": ("一个", "一", "1")},
        2: {"en": ("two", "2"), "zh": ("两", "两个", "二", "2")},
        3: {"en": ("three", "3"), "zh": ("三", "三个", "3")},
        4: {"en": ("four", "4"), "zh": ("四", "四个", "4")}},
    "position": {
        "top-left": {"en": ("top left", "upper left"), "zh": ("左上", "左上方", "左上角")},
        "top-right": {"en": ("top right", "upper right"), "zh": ("右上", "右上方", "右上角")},
        "bottom-left": {"en": ("bottom left", "lower left"), "zh": ("左下", "左下方", "左下角")},
        "bottom-right": {"en": ("bottom right", "lower right"), "zh": ("右下", "右下方", "右下角")},
        "center": {"en": ("center", "centre", "middle"), "zh": ("中间", "中央", "中心", "正中")}},
    "exists": {"yes": _YES, "no": {"en": _NO["en"], "zh": ("没有",) + _NO["zh"][1:]}},
    # "有" is no yes to "are there as many": "共有两个图形" only counts.
    "compare": {"yes": {"en": _YES["en"], "zh": ("一样",) + tuple(w for w in _YES["zh"] if w not in ("一样", "有"))},
                "no": {"en": _NO["en"], "zh": ("不一样", "没有") + _NO["zh"][2:]}},
}
# Words that contain a count numeral without naming a count ("三角形", "第一张", "一样").
_NOT_COUNTS = ("三角", "十字", "四边", "四方", "第一", "第二", "一共", "一样", "一张", "一幅", "一下")

CAPTION_PROMPTS = {"en": ("Describe the picture.", "What is in this image?", "Describe this image.",
                          "What do you see in the picture?"),
                   "zh": ("描述这张图片。", "图片里有什么？", "请描述这张图。", "这张图片中有什么？")}
# Question templates per kind and language: "train" for training rows, "heldout" only for validation and
# evaluation. ({c}, {s}: a colour and a shape name.)
QUESTIONS = {
    "shape": {
        "en": {"train": ("What shape is in the picture?", "What shape is this?", "Which shape do you see?",
                         "What is the shape in the image?", "Which shape is drawn?", "Tell me what shape this is.",
                         "What shape can be seen here?", "Say which shape the picture shows.",
                         "Can you name this shape?", "Please say what shape you see.", "What kind of figure is this?",
                         "Identify the shape in the picture."),
               "heldout": ("Can you tell me which shape is drawn here?", "Name the shape shown in this image.",
                           "What kind of shape appears here?")},
        "zh": {"train": ("图中是什么形状？", "这是什么形状？", "图片里的图形是什么形状？", "你看到了什么形状？",
                         "画的是什么形状？", "告诉我这是哪种形状。", "这个图形是什么形状的？", "图上是哪种图形？",
                         "这是什么图形？", "请说出这个图形的形状。", "图中画的是哪一种图形？",
                         "你能认出这是什么形状吗？"),
               "heldout": ("请说出图上画的是哪种形状。", "这张图里画着什么图形？", "图片上的是哪一种形状？")}},
    "colour": {
        "en": {"train": ("What colour is the shape?", "What color is the shape?", "Which colour is it?",
                         "What is the colour of the shape in the picture?", "Which color is the shape?",
                         "Tell me what colour it is.", "What color is it painted?", "Say the colour of the object.",
                         "Can you tell me what colour the shape is?", "Name the colour of the shape.",
                         "What kind of colour does the shape have?", "Please say which colour you see."),
               "heldout": ("Tell me the colour of the shape.", "What color has the object been painted?",
                           "Which color is the shape drawn in?")},
        "zh": {"train": ("这个图形是什么颜色？", "图形是什么颜色的？", "图中的图形是哪种颜色？", "它是什么颜色？",
                         "形状是什么颜色？", "告诉我图形的颜色。", "这个形状涂成了什么颜色？",
                         "图上的图形用的是什么颜色？", "请说出这个图形是什么颜色。", "你能告诉我图形的颜色吗？",
                         "图中画的图形是哪一种颜色？", "这个图形涂的是哪种颜色？"),
               "heldout": ("请说出图形的颜色。", "画中的形状涂的是什么颜色？", "这个形状用了哪种颜色？")}},
    "count": {
        "en": {"train": ("How many shapes are there?", "How many shapes are in the picture?",
                         "Count the shapes in the image.", "How many objects can you see?",
                         "How many figures are there?", "Tell me the number of shapes.",
                         "How many shapes does the image contain?", "What number of shapes is drawn?",
                         "Can you tell me how many shapes there are?", "Name the number of shapes.",
                         "Please count the figures.", "What number of objects do you see?"),
               "heldout": ("What is the number of shapes shown here?", "Tell me how many shapes this image contains.",
                           "How many figures are drawn in total?")},
        "zh": {"train": ("图中有几个图形？", "图片里一共有多少个图形？", "数一数图中有几个图形。",
                         "这张图里有几个形状？", "图上画了几个形状？", "告诉我图形的个数。", "画面里有多少个图形？",
                         "一共画了几个图形？", "请说出图中有几个图形。", "你能数出有多少个形状吗？",
                         "图上一共有几个图形？", "这幅画里画了多少个图形？"),
               "heldout": ("请告诉我图上画了多少个形状。", "画面中总共有几个图形？", "这幅图包含几个图形？")}},
    "position": {
        "en": {"train": ("Where is the shape?", "Where is the shape in the picture?",
                         "In which part of the image is the shape?", "Where is the shape located?",
                         "Where is the shape drawn?", "Tell me the position of the shape.",
                         "Where can you see the shape?", "Which part of the image holds the shape?",
                         "Can you tell me where the shape is?", "Name the part of the image where the shape is.",
                         "Please say where the shape is.", "In what part of the picture is the shape drawn?"),
               "heldout": ("Which part of the picture is the shape in?", "Tell me where the shape is placed.",
                           "Where in the image can the shape be found?")},
        "zh": {"train": ("图形在哪里？", "图形在图片的什么位置？", "这个图形位于哪里？", "图形在图中哪个位置？",
                         "形状画在哪里？", "告诉我图形的位置。", "图形在画面的哪个部分？",
                         "这个形状在图上的什么地方？", "请说出图形在哪里。", "你能告诉我形状在哪个位置吗？",
                         "图中的图形画在什么位置？", "这个图形在图片的哪个区域？"),
               "heldout": ("请说出图形所在的位置。", "这个形状画在图片的哪个部分？", "形状出现在画面的什么地方？")}},
    "exists": {
        "en": {"train": ("Is there a {c} {s} in the picture?", "Can you see a {c} {s}?",
                         "Does the image contain a {c} {s}?", "Is there a {c} {s}?", "Is a {c} {s} drawn here?",
                         "Can you tell me if the picture has a {c} {s}?", "Please check for a {c} {s}.",
                         "Do you see any {c} {s} in the image?", "Tell me if there is a {c} {s}.",
                         "Is any {c} {s} shown?", "Check whether the picture has a {c} {s}.",
                         "Has the image got a {c} {s} in it?"),
               "heldout": ("Do you spot any {c} {s} here?", "Tell me whether a {c} {s} is drawn.",
                           "Does a {c} {s} appear in this image?")},
        "zh": {"train": ("图中有{c}{s}吗？", "图片里有没有{c}{s}？", "你能看到{c}{s}吗？", "这张图里有{c}{s}吗？",
                         "图上画了{c}{s}吗？", "请看看图中是否有{c}{s}。", "图里是不是有{c}{s}？", "图中能不能看到{c}{s}？",
                         "图里画没画{c}{s}？", "告诉我图中有没有{c}{s}。", "这幅画里有{c}{s}吗？", "图上能看见{c}{s}吗？"),
               "heldout": ("画面中是否出现了{c}{s}？", "请判断图上是否画有{c}{s}。", "图片里能找到{c}{s}吗？")}},
    "compare": {
        "en": {"train": ("Do the two pictures have the same number of shapes?",
                         "Are there equally many shapes in both images?",
                         "Do both pictures contain the same number of shapes?",
                         "Is the number of shapes the same in the two images?",
                         "Can you tell me if both images have the same number of shapes?",
                         "Do the two images hold equally many figures?",
                         "Please check whether the two pictures have as many shapes.",
                         "Is the count of shapes equal in these pictures?"),
               "heldout": ("Do these two images show an equal count of shapes?",
                           "Tell me whether both pictures hold as many shapes as each other.",
                           "Is the shape count identical across the two pictures?")},
        "zh": {"train": ("两张图片中的图形数量一样吗？", "这两张图里的图形一样多吗？", "两幅图的图形个数相同吗？",
                         "两张图中图形的数量是否相同？", "两张图的图形个数是否一样？", "请比较两张图里图形的数量。",
                         "这两张图上的形状一样多吗？", "两幅画中图形的数目相等吗？"),
               "heldout": ("请判断两张图上的形状数目是否相等。", "这两幅画里的图形数一样不一样？",
                           "比较两张图，图形的个数相等吗？")}},
}
IMAGE_TAG = "<image>"


def count_phrase(n: int, lang: str) -> str:
    if lang == "zh":
        return f"{NAMES['zh']['count'][n]}个图形"
    return f"{NAMES['en']['count'][n]} shape{'s' if n > 1 else ''}"


def reply(rng: random.Random, kind: str, lang: str, value, pair=None, counts=None, scene=None) -> str:
    """A reference reply naming exactly one value of its kind (tests check that the scorer agrees). The yes/no
    kinds say what they looked at before the verdict, as a small model cannot hold the comparison in one token
    (answered first, its counts were right and its verdict a guess): both counts; for "is there a red circle",
    the shapes drawn in red, so the verdict compares one shape word with the question's."""
    en = lang == "en"
    if kind in ("shape", "colour"):
        name = NAMES[lang][kind][value]
        forms = {("shape", True): ("A {}.", "It is a {}."), ("shape", False): ("是一个{}。", "图中是一个{}。"),
                 ("colour", True): ("It is {}.", "The shape is {}."), ("colour", False): ("它是{}的。", "这个图形是{}的。")}
        return rng.choice(forms[kind, en]).format(name)
    if kind == "count":
        phrase = count_phrase(value, lang)
        if en:
            return rng.choice((f"There {'is' if value == 1 else 'are'} {phrase}.", f"{phrase.capitalize()}."))
        return rng.choice((f"图中有{phrase}。", f"共有{phrase}。"))
    if kind == "position":
        where = NAMES[lang]["position"][value]
        return rng.choice((f"{where.capitalize()}.", f"It is {where}.") if en else (f"在{where}。", f"它位于{where}。"))
    if kind == "exists":  # the shapes drawn in the asked colour, then the verdict
        c = NAMES[lang]["colour"][pair[0]]
        found = [NAMES[lang]["shape"][s.kind] for s in reading_order(scene) if s.colour == pair[0]]
        if en:
            if not found:
                return rng.choice((f"Nothing in the picture is {c}, so no.", f"There is no {c} shape here, so no."))
            kinds = " and ".join(f"a {k}" for k in found)
            are = "shapes here are" if len(found) > 1 else "shape here is"
            return rng.choice((f"The {c} {are} {kinds}, so {value}.", f"Drawn in {c}: {kinds}, so {value}."))
        if not found:
            return rng.choice((f"图中没有{c}的图形，所以没有。", f"图里没有{c}的形状，所以没有。"))
        kinds, verdict = "和".join(found), "有" if value == "yes" else "没有"
        return rng.choice((f"图中{c}的图形是{kinds}，所以{verdict}。", f"{c}的形状是{kinds}，所以{verdict}。"))
    if kind == "compare":
        a, b = (count_phrase(n, lang) for n in counts)
        if en:
            return rng.choice((f"The first picture has {a} and the second has {b}, so yes.",
                               f"First {a}, second {b}: yes, the same number.") if value == "yes" else
                              (f"The first picture has {a} and the second has {b}, so no.",
                               f"First {a}, second {b}: no, the numbers differ."))
        return rng.choice((f"第一张图里是{a}，第二张图里是{b}，所以一样。", f"第一张是{a}，第二张也是{b}，数量相同。")
                          if value == "yes" else
                          (f"第一张图里是{a}，第二张图里是{b}，所以不一样。", f"第一张是{a}，第二张是{b}，数量不同。"))
    raise ValueError(f"unknown kind {kind!r}")


def question(rng: random.Random, kind: str, lang: str, split: str, pair=None) -> str:
    text = rng.choice(QUESTIONS[kind][lang][split])
    return text if pair is None else text.format(c=NAMES[lang]["colour"][pair[0]], s=NAMES[lang]["shape"][pair[1]])


def reading_order(scene: Scene) -> list[Shape]:
    """The shapes row by row, left to right, as captions (and "is there a" replies) name them."""
    return sorted(scene.shapes, key=lambda s: ("top-left", "top-right", "center", "bottom-left",
                                               "bottom-right").index(s.region))


def caption(scene: Scene, lang: str) -> str:
    """Every shape with its size, colour and position, in reading order, and the background."""
    names, shapes = NAMES[lang], reading_order(scene)
    bg = names["background"][scene.background]
    if lang == "en":
        parts = [f"a {names['size'][s.size]} {s.colour} {s.kind} {names['position'][s.region]}" for s in shapes]
        if scene.count == 1:
            return f"{parts[0].capitalize()} on a {bg} background."
        listed = ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"{count_phrase(scene.count, 'en').capitalize()} on a {bg} background: {listed}."
    parts = [f"{names['position'][s.region]}是一个{names['size'][s.size]}的{names['colour'][s.colour]}"
             f"{names['shape'][s.kind]}" for s in shapes]
    if scene.count == 1:
        s = shapes[0]
        return (f"{bg}背景上有一个{names['size'][s.size]}的{names['colour'][s.colour]}{names['shape'][s.kind]}，"
                f"在{names['position'][s.region]}。")
    return f"{bg}背景上有{count_phrase(scene.count, 'zh')}：" + "，".join(parts) + "。"


def with_images(text: str, n_images: int, before: bool) -> str:
    tags = "\n".join([IMAGE_TAG] * n_images)
    return f"{tags}\n{text}" if before else f"{text}\n{tags}"


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


# ---- rows ----
def answer_of(kind: str, scene: Scene):
    """The answer to a single-picture question that needs no argument."""
    if kind == "count":
        return scene.count
    shape = scene.shapes[0]
    return {"shape": shape.kind, "colour": shape.colour, "position": shape.region}[kind]


def caption_rows(rng: random.Random, names: list[str], scenes: dict[str, Scene]) -> list[dict]:
    rows = []
    for k, name in enumerate(names):
        lang = LANGS[k % 2]
        rows.append({"conversations": [user(with_images(rng.choice(CAPTION_PROMPTS[lang]), 1, True)),
                                       assistant(caption(scenes[name], lang))], "image": name})
    return rows


class Pools:
    """Pictures by answer value, handed out so that answers stay balanced and every picture gets used."""

    def __init__(self, rng: random.Random, scenes: dict[str, Scene]):
        self.scenes = scenes
        names = sorted(scenes)
        singles = [n for n in names if scenes[n].count == 1]
        self.by_value = {kind: {} for kind in ("shape", "colour", "position", "count")}
        for kind in ("shape", "colour", "position"):
            for n in singles:
                self.by_value[kind].setdefault(answer_of(kind, scenes[n]), []).append(n)
        for n in names:
            self.by_value["count"].setdefault(scenes[n].count, []).append(n)
        self.cyclers = {kind: {v: Cycler(rng, ns) for v, ns in by.items()} for kind, by in self.by_value.items()}
        self.values = {kind: Cycler(rng, sorted(by)) for kind, by in self.by_value.items()}
        self.yes_no = {kind: Cycler(rng, YES_NO) for kind in ("exists", "compare")}
        self.any = Cycler(rng, names)

    def picture(self, kind: str, value=None) -> str:
        if value is None:
            value, _ = self.values[kind].next()
        return self.cyclers[kind][value].next()[0]


def exists_turn(rng: random.Random, lang: str, split: str, scene: Scene, value: str, pairs: list, asked=()):
    """(question, reply, pair) for "is there a <colour> <shape>?": a pair in the picture for "yes", a pair
    from `pairs` that it lacks for "no"; never a pair in `asked`."""
    options = sorted(scene.pairs()) if value == "yes" else [p for p in pairs if p not in scene.pairs()]
    pair = rng.choice([p for p in options if p not in asked] or options)
    return question(rng, "exists", lang, split, pair), reply(rng, "exists", lang, value, pair, scene=scene), pair


def compare_row(rng: random.Random, pools: Pools, lang: str, split: str, before: bool):
    """Two pictures with the same number of shapes ("yes") or different numbers ("no"), alternately."""
    value, _ = pools.yes_no["compare"].next()
    counts = sorted(c for c, names in pools.by_value["count"].items() if len(names) > 1 or value == "no")
    a = rng.choice(counts)
    b = a if value == "yes" else rng.choice([c for c in counts if c != a])
    first, second = pools.picture("count", a), pools.picture("count", b)
    while second == first:  # a cycler hands a picture out again only after all others
        second = pools.picture("count", b)
    messages = [user(with_images(question(rng, "compare", lang, split), 2, before)),
                assistant(reply(rng, "compare", lang, value, counts=(a, b)))]
    return {"conversations": messages, "image": f"{first},{second}"}, [("compare", value)]


def question_row(rng: random.Random, pools: Pools, kind: str, lang: str, split: str, before: bool, pairs: list):
    """One question of `kind` about one picture, or, for "multi_turn", 2-3 questions about the same one (only
    the first turn carries the picture)."""
    if kind == "multi_turn":
        name, _ = pools.any.next()
        if pools.scenes[name].count == 1:
            kinds = rng.sample(["shape", "colour", "position", "count", "exists"], rng.randint(2, 3))
        else:  # shape, colour and position questions need a single shape
            kinds = ["count"] + ["exists"] * rng.randint(1, 2)
            rng.shuffle(kinds)
    else:
        name, kinds = pools.any.next()[0] if kind == "exists" else pools.picture(kind), [kind]
    scene = pools.scenes[name]
    messages, turns, asked = [], [], []
    for t in kinds:
        if t == "exists":
            value, _ = pools.yes_no["exists"].next()
            q, a, pair = exists_turn(rng, lang, split, scene, value, pairs, asked)
            asked.append(pair)
        else:
            value = answer_of(t, scene)
            q, a = question(rng, t, lang, split), reply(rng, t, lang, value)
        messages += [user(with_images(q, 1, before) if not messages else q), assistant(a)]
        turns.append((t, value))
    return {"conversations": messages, "image": name}, turns


def sft_rows(rng: random.Random, scenes: dict[str, Scene], split: str, n: int, pairs: list):
    """n chat rows about `scenes` with `split` question templates, in SFT_MIX proportions, languages
    alternating; "no" questions name pairs from `pairs`. Returns (rows, turns): turns[i] lists the
    (kind, value) of row i's answers."""
    pools = Pools(rng, scenes)
    made = []
    for kind, k in _split_counts(n, SFT_MIX).items():
        for _ in range(k):
            lang, before = LANGS[len(made) % 2], rng.random() < 0.5  # the <image> tag before or after the text
            made.append(compare_row(rng, pools, lang, split, before) if kind == "compare" else
                        question_row(rng, pools, kind, lang, split, before, pairs))
    rng.shuffle(made)
    return [row for row, _ in made], [turns for _, turns in made]


def withheld_relevant(kind: str, scenes: list[Scene], pair=None) -> bool:
    """Whether a question rests on a combination no training picture shows: the shape's (colour, shape) or
    (position, shape) for shape questions, its (colour, shape) for colour, its (position, shape) for
    position, the (count, background) for count and compare, and the asked pair for exists (a "no" to an
    unseen pair counts: training never names one)."""
    found = {c[0] for c in withheld_in(scenes[0])}
    if kind == "shape":
        return bool(found & {"colour-shape", "position-shape"})
    if kind == "colour":
        return "colour-shape" in found
    if kind == "position":
        return "position-shape" in found
    if kind == "exists":
        return pair in WITHHELD_COLOUR_SHAPE
    return any("count-background" in {c[0] for c in withheld_in(s)} for s in scenes)


class FreshScenes:
    """Pictures named in order, each unlike any in `avoid` and any named before."""

    def __init__(self, rng: random.Random, prefix: str, avoid: set = frozenset()):
        self.rng, self.prefix, self.avoid, self.scenes = rng, prefix, set(avoid), {}

    def add(self, make) -> str:
        while True:
            scene = make()
            if scene.key() not in self.avoid:
                break
        self.avoid.add(scene.key())
        name = f"{self.prefix}_{len(self.scenes):05d}.png"
        self.scenes[name] = scene
        return name


def heldout_item(rng: random.Random, kind: str, k: int, fresh: FreshScenes, combos: dict):
    """Evaluation item k of a kind: odd k rest on a withheld combination, even k on training-like pictures;
    answers cycle through the kind's values (exists and compare: yes, yes, no, no)."""
    withheld = k % 2 == 1
    pair = None
    if kind in ("exists", "compare"):
        value = YES_NO[(k // 2) % 2]
    if kind == "exists":
        if withheld and value == "yes":
            pair, _ = combos["pair"].next()
            names = [fresh.add(lambda: sample_scene(rng, rng.choice(COUNTS), pair))]
        else:
            names = [fresh.add(lambda: sample_scene(rng, rng.choice(COUNTS)))]
            scene = fresh.scenes[names[0]]
            if value == "yes":
                pair = rng.choice(sorted(scene.pairs()))
            else:
                absent = sorted(WITHHELD_COLOUR_SHAPE) if withheld else ALLOWED_PAIRS
                pair = rng.choice([p for p in absent if p not in scene.pairs()])
    elif kind == "compare":
        a = rng.choice(COUNTS[1:] if withheld else COUNTS)
        b = a if value == "yes" else rng.choice([c for c in COUNTS if c != a])
        background = dict(WITHHELD_COUNT_BACKGROUND)[a] if withheld else None  # None: a training background
        names = [fresh.add(lambda: sample_scene(rng, a, background=background)),
                 fresh.add(lambda: sample_scene(rng, b))]
        if rng.random() < 0.5:
            names.reverse()
    elif withheld:
        combo, _ = combos[kind].next()
        names = [fresh.add(lambda: forced_scene(rng, combo, count=None if kind == "count" else 1))]
        value = answer_of(kind, fresh.scenes[names[0]])
    else:
        value = VALUES[kind][(k // 2) % len(VALUES[kind])]
        if kind == "count":
            names = [fresh.add(lambda: sample_scene(rng, value))]
        else:
            def make():
                options = [(c, s, r) for c, s in ALLOWED_PAIRS for r in POSITIONS
                           if (r, s) not in WITHHELD_POSITION_SHAPE and value in (c, s, r)]
                c, s, r = rng.choice(options)
                return sample_scene(rng, 1, (c, s), r)
            names = [fresh.add(make)]
    return names, value, pair


def heldout_rows(rng: random.Random, fresh: FreshScenes, per_lang: int) -> list[dict]:
    """Evaluation rows: per kind and language, half on withheld combinations (see `heldout_item`)."""
    by_type = lambda t: [c for c in WITHHELD_COMBOS if c[0] in t]  # noqa: E731
    combos = {"shape": Cycler(rng, by_type(("colour-shape", "position-shape"))),
              "colour": Cycler(rng, by_type(("colour-shape",))), "position": Cycler(rng, by_type(("position-shape",))),
              "count": Cycler(rng, by_type(("count-background",))), "pair": Cycler(rng, sorted(WITHHELD_COLOUR_SHAPE))}
    rows = []
    for kind in VLM_KINDS:
        for lang in LANGS:
            for k in range(per_lang):
                names, value, pair = heldout_item(rng, kind, k, fresh, combos)
                scenes = [fresh.scenes[n] for n in names]
                words = ANSWER_TERMS[kind][value][lang]
                rows.append({"id": f"{kind}-{lang}-{k:03d}", "image": ",".join(names),
                             "question": question(rng, kind, lang, "heldout", pair), "answer": words[0],
                             "kind": kind, "lang": lang, "aliases": list(words[1:]),
                             "withheld": withheld_relevant(kind, scenes, pair)})
    return rows


def val_scenes(rng: random.Random, fresh: FreshScenes, n: int) -> list[str]:
    """Validation pictures: training-like, half of them showing one withheld combination."""
    combos = Cycler(rng, WITHHELD_COMBOS)
    names = []
    for count, k in _split_counts(n, TRAIN_COUNT_MIX).items():
        for i in range(k):
            combo = combos.next()[0] if i % 2 else None
            if combo and combo[0] == "count-background":  # the withheld background of this count, if any
                combo = next((c for c in WITHHELD_COMBOS if c[0] == "count-background" and c[1] == count), None)
            names.append(fresh.add(lambda: forced_scene(rng, combo, count) if combo else sample_scene(rng, count)))
    return names


@dataclass
class VLMData:
    scenes: dict[str, Scene]  # every picture by file name (train_*, val_*, heldout_*)
    files: dict[str, list[dict]]  # jsonl name -> rows
    turns: dict[str, list[list[tuple]]]  # chat file -> per row, the (kind, value) of each answer


def evaluation_scenes(seed: int):
    """(validation pictures, their names, held-out pictures, held-out rows): made first, since they never
    depend on the scale, and every training picture avoids them (`heldout.avoid` holds both sets' keys)."""
    val = FreshScenes(rng_for(seed, "vlm-val-scenes"), "val")
    val_names = val_scenes(val.rng, val, VAL_IMAGES)
    heldout = FreshScenes(rng_for(seed, "vlm-heldout-scenes"), "heldout", val.avoid)
    return val, val_names, heldout, heldout_rows(heldout.rng, heldout, HELDOUT_PER_KIND_LANG)


def build_vlm_data(seed: int = 42, scale: float = 1.0) -> VLMData:
    """Every picture and row, in memory. Each part draws from its own random stream."""
    if scale <= 0:
        raise ValueError("scale must be positive")
    rows = lambda n: round(n * scale)  # noqa: E731
    if rows(TRAIN_IMAGES) < 40:  # compare rows need two pictures of each count
        raise ValueError(f"scale {scale} is too small: at least {40 / TRAIN_IMAGES} gives 40 training pictures")
    val, val_names, heldout, eval_rows = evaluation_scenes(seed)
    scenes = training_scenes(rng_for(seed, "vlm-train-scenes"), rows(TRAIN_IMAGES), heldout.avoid)
    train = {f"train_{i:06d}.png": s for i, s in enumerate(scenes)}

    sft, sft_turns = sft_rows(rng_for(seed, "vlm-sft"), train, "train", rows(SFT_ROWS), ALLOWED_PAIRS)
    sft_val, val_turns = sft_rows(rng_for(seed, "vlm-sft-val"), val.scenes, "heldout", VAL_ROWS, ALL_PAIRS)
    files = {"pretrain_vlm.jsonl": caption_rows(rng_for(seed, "vlm-pretrain"), list(train), train),
             "pretrain_vlm_val.jsonl": caption_rows(rng_for(seed, "vlm-pretrain-val"), val_names, val.scenes),
             "sft_vlm.jsonl": sft, "sft_vlm_val.jsonl": sft_val, "vlm_heldout.jsonl": eval_rows}
    return VLMData({**train, **val.scenes, **heldout.scenes}, files,
                   {"sft_vlm.jsonl": sft_turns, "sft_vlm_val.jsonl": val_turns})


TRAINING_FILES = ("pretrain_vlm.jsonl", "sft_vlm.jsonl")


# ---- the vision encoder's own pretraining (the demo's stand-in for a downloaded CLIP) ----
def encoder_scenes(n: int, seed: int = 42) -> tuple[list[Scene], list[Scene]]:
    """(n fresh training-safe pictures, the validation pictures) for pretraining the demo's vision encoder:
    like the VLM's training pictures, none equal to a validation or held-out one, no withheld combination."""
    val, _, heldout, _ = evaluation_scenes(seed)
    return training_scenes(rng_for(seed, "vlm-encoder-scenes"), n, heldout.avoid), list(val.scenes.values())


def cell_labels(scene: Scene, grid: int, min_pixels: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(kind, colour) per cell of a grid x grid split of the picture, row-major: 1 + the index in SHAPES /
    COLOURS of the shape with the most pixels in the cell, 0 where no shape has `min_pixels` there."""
    cell = SIZE // grid
    kind, colour, most = (np.zeros(grid * grid, dtype=np.int64) for _ in range(3))
    for shape in scene.shapes:
        pixels = shape_mask(shape).reshape(grid, cell, grid, cell).sum((1, 3)).reshape(-1)
        mine = (pixels > most) & (pixels >= min_pixels)
        kind[mine], colour[mine], most[mine] = 1 + SHAPES.index(shape.kind), 1 + COLOURS.index(shape.colour), pixels[mine]
    return kind, colour


def user_texts(rows: list[dict]):
    for row in rows:
        for m in row["conversations"]:
            if m["role"] == "user":
                yield m["content"].replace(IMAGE_TAG, "").strip()


def find_vlm_leaks(data: VLMData) -> list[str]:
    """Everything that would let a model pass the held-out rows by copying: a training picture with a
    withheld combination, a held-out question that training asks, a held-out picture equal to a training one."""
    problems = []
    train_names = {n for row in (r for f in TRAINING_FILES for r in data.files[f]) for n in row["image"].split(",")}
    for name in sorted(train_names):
        if not name.startswith("train_"):
            problems.append(f"{name}: a training row uses a non-training picture")
        elif withheld_in(data.scenes[name]):
            problems.append(f"{name}: shows withheld {sorted(withheld_in(data.scenes[name]))}")
    training_text = "\n".join(t for f in TRAINING_FILES for t in user_texts(data.files[f]))
    asked = {r["question"] for r in data.files["vlm_heldout.jsonl"]} | set(user_texts(data.files["sft_vlm_val.jsonl"]))
    problems += [f"held-out question in training: {q!r}" for q in sorted(asked) if q in training_text]
    train_keys = {data.scenes[n].key() for n in train_names}
    problems += [f"{n}: equals a training picture" for n, s in data.scenes.items()
                 if not n.startswith("train_") and s.key() in train_keys]
    # Training never names a withheld pair, not even in a "no" question.
    for q in user_texts(data.files["sft_vlm.jsonl"]):
        for c, s in WITHHELD_COLOUR_SHAPE:
            if any(f"{NAMES[lang]['colour'][c]}{' ' if lang == 'en' else ''}{NAMES[lang]['shape'][s]}" in q
                   for lang in LANGS):
                problems.append(f"training question names withheld ({c}, {s}): {q!r}")
    return problems


def kind_counts(turns: list[list[tuple]]) -> dict:
    rows = Counter("multi_turn" if len(t) > 1 else t[0][0] for t in turns)
    questions = Counter(kind for t in turns for kind, _ in t)
    return {"rows": dict(sorted(rows.items())), "questions": dict(sorted(questions.items()))}


def generate_vlm(out_dir, seed: int = 42, scale: float = 1.0) -> dict:
    """Writes images/ and the jsonl files into out_dir (checked for leaks first) and returns the statistics,
    also written as stats.json (last, so its presence means a complete directory)."""
    data = build_vlm_data(seed, scale)
    problems = find_vlm_leaks(data)
    if problems:
        raise AssertionError("held-out material leaked into the VLM training data:\n" + "\n".join(problems[:20]))
    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "val", "heldout"):  # a smaller scale must not leave earlier pictures behind
        for stale in images.glob(f"{prefix}_*.png"):
            if stale.name not in data.scenes:
                stale.unlink()
    image_bytes = 0
    for name, scene in data.scenes.items():
        render(scene).save(images / name, format="PNG")
        image_bytes += (images / name).stat().st_size
    for name, rows in data.files.items():
        write_jsonl(out / name, rows)
    heldout = data.files["vlm_heldout.jsonl"]
    stats = {
        "seed": seed, "scale": scale,
        "images": {p: sum(n.startswith(p + "_") for n in data.scenes) for p in ("train", "val", "heldout")},
        "image_bytes": image_bytes,
        "files": {name: {"rows": len(rows), "bytes": (out / name).stat().st_size} for name, rows in data.files.items()},
        "sft_kinds": {name: kind_counts(t) for name, t in data.turns.items()},
        "heldout_kinds": {kind: {"rows": sum(r["kind"] == kind for r in heldout),
                                 "withheld": sum(r["kind"] == kind and r["withheld"] for r in heldout)}
                          for kind in VLM_KINDS},
        "withheld": {"colour_shape": sorted(map(list, WITHHELD_COLOUR_SHAPE)),
                     "position_shape": sorted(map(list, WITHHELD_POSITION_SHAPE)),
                     "count_background": sorted(map(list, WITHHELD_COUNT_BACKGROUND))},
    }
    (out / "stats.json").write_text(json.dumps(stats, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return stats


def demo_vlm_dir() -> str:
    """DEMO_DIR/vlm, generating the VLM demo data on first use."""
    path = Path(DEMO_DIR) / "vlm"
    if not (path / "stats.json").exists():
        print(f"data: {path} not found, generating the VLM demo data")
        generate_vlm(path)
    return str(path)


# ---- scoring (pure functions) ----
def _norm(text: str) -> str:
    return normalize(text).replace("-", " ").replace("\u2019", "'")


@lru_cache(maxsize=256)
def _reader(kind: str, extra: tuple = ()) -> tuple[re.Pattern, dict]:
    """One regex for every word of a kind (both languages), longest first, and the value each word names
    (None: a word that only looks like one, "三角形" for a count). `extra`: (word, value) pairs to add."""
    words = {_norm(w): v for v, by_lang in ANSWER_TERMS[kind].items() for ws in by_lang.values() for w in ws}
    if kind == "count":
        words.update({w: None for w in _NOT_COUNTS})
    words.update({_norm(w): v for w, v in extra})
    alternatives = []
    for w in sorted(words, key=lambda w: (-len(w), w)):
        left = r"(?<![0-9a-z])" if w[0].isascii() and w[0].isalnum() else ""
        right = r"(?![0-9a-z])" if w[-1].isascii() and w[-1].isalnum() else ""
        alternatives.append(left + re.escape(w) + right)
    return re.compile("|".join(alternatives)), words


def named_values(text: str, kind: str, extra: tuple = ()) -> set:
    """The values of a kind that a text names ({"red", "blue"} for "a red and a blue one")."""
    pattern, words = _reader(kind, extra)
    return {words[m.group(0)] for m in pattern.finditer(_norm(text))} - {None}


def value_of(kind: str, answer: str):
    """The value a canonical answer names ("三" -> 3)."""
    return _reader(kind)[1].get(_norm(answer), answer)


def is_correct_vlm(reply: str, row: dict) -> bool:
    """True when the reply's answer part names the row's answer (or an alias, or a count's digits, in either
    language) and no other value of the same kind: "red and blue" is wrong for a red shape. Strict on
    purpose: "two shapes: one red, one blue" names two counts, and "没有，图中有…" both yes and no."""
    kind, value = row["kind"], value_of(row["kind"], row["answer"])
    extra = tuple((w, value) for w in (row["answer"], *row.get("aliases", [])) if w)
    return named_values(extract_answer(reply), kind, extra) == {value}


def score_vlm(replies: list[str], rows: list[dict]) -> dict:
    """Accuracy per kind and "overall", and the same over withheld rows as "<kind> (unseen combo)"."""
    if len(replies) != len(rows):
        raise ValueError(f"{len(replies)} replies for {len(rows)} rows")
    hits: dict[str, list[bool]] = {}
    for reply_text, row in zip(replies, rows):
        ok = is_correct_vlm(reply_text, row)
        for key in (row["kind"], "overall"):
            hits.setdefault(key, []).append(ok)
            if row.get("withheld"):
                hits.setdefault(f"{key} (unseen combo)", []).append(ok)
    return {k: sum(v) / len(v) for k, v in sorted(hits.items())}


def chance_levels(rows: list[dict]) -> dict:
    """Per kind (and "overall", and "<kind> (unseen combo)" over withheld rows): "uniform", the accuracy of
    guessing among the kind's values, and "majority", the accuracy of the best constant answer per kind."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        for key in (row["kind"], "overall"):
            groups.setdefault(key, []).append(row)
            if row.get("withheld"):
                groups.setdefault(f"{key} (unseen combo)", []).append(row)
    levels = {}
    for key, group in sorted(groups.items()):
        by_kind: dict[str, Counter] = {}
        for row in group:
            by_kind.setdefault(row["kind"], Counter())[value_of(row["kind"], row["answer"])] += 1
        levels[key] = {"uniform": sum(1 / len(VALUES[r["kind"]]) for r in group) / len(group),
                       "majority": sum(max(c.values()) for c in by_kind.values()) / len(group)}
    return levels
