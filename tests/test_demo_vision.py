"""The bundled MiniMind-V demo data: deterministic pictures and rows in minimind-v's formats, a held-out split
that no training row or picture gives away, and a scorer that reads replies strictly. Generated at a small
scale; the validation and held-out parts keep their full size."""
import json
from collections import Counter
from itertools import combinations

import numpy as np
import pytest
from PIL import Image

import demo.vision as vision
from demo.vision import (ANSWER_TERMS, BACKGROUNDS, COLOURS, COUNTS, IMAGE_TAG, LANGS, POSITIONS, QUESTIONS, RGB,
                         SHAPES, VALUES, VLM_KINDS, WITHHELD_COLOUR_SHAPE, WITHHELD_POSITION_SHAPE,
                         build_vlm_data, centre_range, chance_levels, dilated, find_vlm_leaks, generate_vlm, half_extents,
                         is_correct_vlm, named_values, score_vlm, shape_mask, withheld_in)

SEED, SCALE = 42, 0.05
CHAT_FILES = ["pretrain_vlm.jsonl", "pretrain_vlm_val.jsonl", "sft_vlm.jsonl", "sft_vlm_val.jsonl"]


def read_files(out):
    return {p.name: [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]
            for p in sorted(out.glob("*.jsonl"))}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("vlm")
    stats = generate_vlm(out, seed=SEED, scale=SCALE)
    return out, stats, read_files(out), build_vlm_data(SEED, SCALE)


def images_of(row):
    return row["image"].split(",")


def test_deterministic(corpus, tmp_path):
    out, stats, files, _ = corpus
    again = generate_vlm(tmp_path, seed=SEED, scale=SCALE)
    assert again == stats
    for name in files:
        assert (out / name).read_bytes() == (tmp_path / name).read_bytes(), name
    pictures = sorted((out / "images").iterdir())
    assert len(pictures) == sum(stats["images"].values())
    for p in pictures[::25]:
        assert p.read_bytes() == (tmp_path / "images" / p.name).read_bytes(), p.name


def test_heldout_independent_of_scale(corpus):
    _, _, _, data = corpus
    other = build_vlm_data(SEED, 2 * SCALE)
    for name in ("vlm_heldout.jsonl", "sft_vlm_val.jsonl", "pretrain_vlm_val.jsonl"):
        assert other.files[name] == data.files[name], name
    assert {n: s for n, s in other.scenes.items() if not n.startswith("train_")} == \
        {n: s for n, s in data.scenes.items() if not n.startswith("train_")}
    assert len(other.files["sft_vlm.jsonl"]) == 2 * len(data.files["sft_vlm.jsonl"])


def test_sizes_and_stats(corpus):
    _, stats, files, _ = corpus
    n_train = round(vision.TRAIN_IMAGES * SCALE)
    assert stats["images"]["train"] == n_train == len(files["pretrain_vlm.jsonl"])
    assert len(files["sft_vlm.jsonl"]) == round(vision.SFT_ROWS * SCALE)
    assert len(files["pretrain_vlm_val.jsonl"]) == len(files["sft_vlm_val.jsonl"]) == 200
    assert len(files["vlm_heldout.jsonl"]) == len(VLM_KINDS) * len(LANGS) * vision.HELDOUT_PER_KIND_LANG
    assert {name: s["rows"] for name, s in stats["files"].items()} == {name: len(r) for name, r in files.items()}
    rows = stats["sft_kinds"]["sft_vlm.jsonl"]["rows"]
    total = sum(rows.values())
    assert 0.25 <= rows["multi_turn"] / total <= 0.35 and 0.05 <= rows["compare"] / total <= 0.12


def test_images_decode_and_exist(corpus):
    out, _, files, _ = corpus
    named = {n for rows in files.values() for r in rows for n in images_of(r)}
    assert all((out / "images" / n).exists() for n in named)
    for name in sorted(named)[::20]:
        with Image.open(out / "images" / name) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (64, 64)
    # Each split names its own pictures.
    for file, prefix in [("pretrain_vlm.jsonl", "train_"), ("sft_vlm.jsonl", "train_"),
                         ("pretrain_vlm_val.jsonl", "val_"), ("sft_vlm_val.jsonl", "val_"),
                         ("vlm_heldout.jsonl", "heldout_")]:
        assert all(n.startswith(prefix) for r in files[file] for n in images_of(r)), file


def test_image_tags(corpus):
    _, _, files, _ = corpus
    places = Counter()
    for name in CHAT_FILES:
        for row in files[name]:
            turns = row["conversations"]
            assert [m["role"] for m in turns] == ["user", "assistant"] * (len(turns) // 2)
            assert turns[0]["content"].count(IMAGE_TAG) == len(images_of(row))
            assert all(IMAGE_TAG not in m["content"] for m in turns[1:])
            places[turns[0]["content"].startswith(IMAGE_TAG)] += 1
    assert places[True] and places[False]  # the tag comes before and after the question
    for row in files["vlm_heldout.jsonl"]:
        assert IMAGE_TAG not in row["question"] and len(images_of(row)) == (2 if row["kind"] == "compare" else 1)
    assert any(len(r["conversations"]) >= 6 for r in files["sft_vlm.jsonl"])  # up to three turns


def test_pictures_match_their_records(corpus):
    """Pixels carry exactly the recorded colours (no anti-aliasing, grey backgrounds), so the scene records
    that the withheld checks read describe the pictures."""
    out, _, _, data = corpus
    palette = {rgb: c for c, rgb in RGB.items()}
    for name in sorted(data.scenes)[::15]:
        scene = data.scenes[name]
        pixels = np.asarray(Image.open(out / "images" / name)).reshape(-1, 3)
        seen = Counter(palette[tuple(p)] for p in pixels if tuple(p) in palette)
        assert set(seen) == {s.colour for s in scene.shapes}, name
        for colour in seen:
            area = sum(shape_mask(s).sum() for s in scene.shapes if s.colour == colour)
            assert seen[colour] == area, name


def test_shapes_stay_apart_and_in_their_regions(corpus):
    _, _, _, data = corpus
    for name, scene in data.scenes.items():
        assert 1 <= scene.count <= 4 and len({s.region for s in scene.shapes}) == scene.count
        for s in scene.shapes:
            hx, hy = half_extents(s.kind, s.size, s.vertical)
            assert centre_range(s.region, 0, hx)[0] <= s.x <= centre_range(s.region, 0, hx)[1]
            assert centre_range(s.region, 1, hy)[0] <= s.y <= centre_range(s.region, 1, hy)[1]
        for a, b in combinations(scene.shapes, 2):
            assert not (dilated(shape_mask(a)) & shape_mask(b)).any(), name


def test_withheld_combinations_only_in_heldout(corpus):
    _, _, files, data = corpus
    assert len(WITHHELD_COLOUR_SHAPE) == 6
    assert {c for c, _ in WITHHELD_COLOUR_SHAPE} == set(COLOURS)
    assert {s for _, s in WITHHELD_COLOUR_SHAPE} == set(SHAPES)
    assert {p for p, _ in WITHHELD_POSITION_SHAPE} == set(POSITIONS)
    train = [s for n, s in data.scenes.items() if n.startswith("train_")]
    assert all(not withheld_in(s) for s in train)
    # Every part alone occurs in training.
    assert {s.colour for sc in train for s in sc.shapes} == set(COLOURS)
    assert {s.kind for sc in train for s in sc.shapes} == set(SHAPES)
    assert {s.region for sc in train for s in sc.shapes} == set(POSITIONS)
    assert {sc.count for sc in train} == set(COUNTS) and {sc.background for sc in train} == set(BACKGROUNDS)
    # Every withheld combination is tested, and the flag says so.
    shown = set().union(*(withheld_in(s) for n, s in data.scenes.items() if n.startswith("heldout_")))
    assert shown == set(vision.WITHHELD_COMBOS)
    heldout = files["vlm_heldout.jsonl"]
    for kind in VLM_KINDS:
        flags = Counter(r["withheld"] for r in heldout if r["kind"] == kind)
        assert flags[True] == flags[False], kind
    for row in heldout:
        scenes = [data.scenes[n] for n in images_of(row)]
        kinds = {c[0] for s in scenes for c in withheld_in(s)}
        if row["kind"] in ("count", "compare"):
            assert row["withheld"] == ("count-background" in kinds)
        elif row["kind"] == "colour":
            assert row["withheld"] == ("colour-shape" in kinds)
        elif row["kind"] == "position":
            assert row["withheld"] == ("position-shape" in kinds)
        elif not row["withheld"]:  # shape and exists rows on training-like pictures show nothing withheld
            assert not kinds


def test_heldout_questions_never_in_training(corpus):
    _, _, files, data = corpus
    for kind in VLM_KINDS:
        for lang in LANGS:
            assert not set(QUESTIONS[kind][lang]["train"]) & set(QUESTIONS[kind][lang]["heldout"])
    training = "\n".join(m["content"] for name in ("pretrain_vlm.jsonl", "sft_vlm.jsonl")
                         for r in files[name] for m in r["conversations"])
    asked = {r["question"] for r in files["vlm_heldout.jsonl"]}
    asked |= {m["content"].replace(IMAGE_TAG, "").strip() for r in files["sft_vlm_val.jsonl"]
              for m in r["conversations"] if m["role"] == "user"}
    assert len(asked) > 30 and not [q for q in asked if q in training]
    assert find_vlm_leaks(data) == []


def test_leak_check_catches_leaks(corpus):
    _, _, _, data = corpus
    first_turn = data.files["sft_vlm.jsonl"][0]["conversations"][0]
    name = next(n for n in data.scenes if n.startswith("train_"))
    original = first_turn["content"], data.scenes[name]
    first_turn["content"] += "\n" + data.files["vlm_heldout.jsonl"][0]["question"]
    data.scenes[name] = next(s for s in data.scenes.values() if withheld_in(s))
    try:
        problems = find_vlm_leaks(data)
    finally:
        first_turn["content"], data.scenes[name] = original
    assert any("held-out question" in p for p in problems) and any(name in p for p in problems)
    assert any("equals a training picture" in p for p in problems)


def test_every_answer_value_taught(corpus):
    _, _, _, data = corpus
    taught = {(kind, value) for row in data.turns["sft_vlm.jsonl"] for kind, value in row}
    assert taught == {(kind, v) for kind in VLM_KINDS for v in VALUES[kind]}


def test_reference_replies_name_their_answer(corpus):
    """Each assistant turn names exactly its value: the scorer would mark the references right."""
    _, _, _, data = corpus
    for name in ("sft_vlm.jsonl", "sft_vlm_val.jsonl"):
        for row, turns in zip(data.files[name], data.turns[name]):
            replies = [m["content"] for m in row["conversations"] if m["role"] == "assistant"]
            assert len(replies) == len(turns)
            for text, (kind, value) in zip(replies, turns):
                assert named_values(text, kind) == {value}, (text, kind, value)


def test_captions_describe_every_shape(corpus):
    _, _, files, data = corpus
    for row in files["pretrain_vlm.jsonl"][:100]:
        scene, text = data.scenes[row["image"]], row["conversations"][1]["content"]
        lang = "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in text) else "en"
        assert named_values(text, "shape") == {s.kind for s in scene.shapes}
        assert named_values(text, "colour") == {s.colour for s in scene.shapes}
        assert named_values(text, "position") == {s.region for s in scene.shapes}
        words = vision.NAMES[lang]
        assert words["count"][scene.count] in text.lower() or scene.count == 1
        assert words["background"][scene.background] in text


def test_heldout_rows_balanced(corpus):
    _, _, files, data = corpus
    rows = files["vlm_heldout.jsonl"]
    per = Counter((r["kind"], r["lang"]) for r in rows)
    assert set(per.values()) == {vision.HELDOUT_PER_KIND_LANG}
    for row in rows:
        assert row["answer"] == ANSWER_TERMS[row["kind"]][vision.value_of(row["kind"], row["answer"])][row["lang"]][0]
        scenes = [data.scenes[n] for n in images_of(row)]
        value = vision.value_of(row["kind"], row["answer"])
        if row["kind"] == "count":
            assert value == scenes[0].count
        elif row["kind"] == "compare":
            assert value == ("yes" if scenes[0].count == scenes[1].count else "no")
        elif row["kind"] != "exists":
            assert value == vision.answer_of(row["kind"], scenes[0])
    levels = chance_levels(rows)
    for kind in VLM_KINDS:
        assert levels[kind]["majority"] <= 1.5 * levels[kind]["uniform"], kind


def test_scorer():
    def row(kind, answer, lang="en", aliases=()):
        return {"kind": kind, "answer": answer, "lang": lang, "aliases": list(aliases)}

    right = [("It is a square.", row("shape", "square")), ("Two squares.", row("shape", "square")),
             ("是一个正方形。", row("shape", "正方形", "zh")), ("It is RED.", row("colour", "red")),
             ("There are 3 shapes.", row("count", "three")), ("three", row("count", "three")),
             ("三", row("count", "三", "zh")), ("图中有3个图形。", row("count", "三", "zh")),
             ("有两个三角形。", row("count", "两", "zh")), ("At the top-left.", row("position", "top left")),
             ("在左上方。", row("position", "左上", "zh")), ("Yes, there is.", row("exists", "yes")),
             ("No, there isn't.", row("exists", "no")), ("是的，有。", row("exists", "有", "zh")),
             ("没有。", row("exists", "没有", "zh")), ("不一样。", row("compare", "不一样", "zh")),
             ("一样多。", row("compare", "一样", "zh")), ("a plus", row("shape", "cross", aliases=["plus"])),
             ("<think>blue?</think><answer>red</answer>", row("colour", "red"))]
    wrong = [("It is a circle.", row("shape", "square")), ("a squarely drawn circle", row("shape", "square")),
             ("是一个长方形。", row("shape", "正方形", "zh")), ("方形", row("shape", "正方形", "zh")),
             ("red and blue", row("colour", "red")), ("There are 33 shapes.", row("count", "three")),
             ("三个或四个", row("count", "三", "zh")), ("top left or center", row("position", "top left")),
             ("No.", row("exists", "yes")), ("Yes and no.", row("exists", "yes")), ("没有。", row("exists", "有", "zh")),
             ("不一样。", row("compare", "一样", "zh")), ("共有两个图形。", row("compare", "一样", "zh")),
             ("", row("colour", "red")), ("Fred", row("colour", "red"))]
    assert [t for t, r in right if not is_correct_vlm(t, r)] == []
    assert [t for t, r in wrong if is_correct_vlm(t, r)] == []

    rows = [row("colour", "red"), dict(row("colour", "blue"), withheld=True), row("count", "two")]
    scores = score_vlm(["red", "red", "2"], rows)
    assert scores == {"colour": 0.5, "colour (unseen combo)": 0.0, "count": 1.0, "overall": 2 / 3,
                      "overall (unseen combo)": 0.0}
    with pytest.raises(ValueError):
        score_vlm(["red"], rows)


def test_chance_levels():
    rows = [{"kind": "shape", "answer": a, "lang": "en"} for a in ("circle", "circle", "square", "cross")]
    rows += [{"kind": "exists", "answer": a, "lang": lang, "withheld": True}
             for a, lang in (("yes", "en"), ("没有", "zh"))]
    levels = chance_levels(rows)
    assert levels["shape"] == {"uniform": 1 / 6, "majority": 0.5}
    assert levels["exists"] == levels["exists (unseen combo)"] == {"uniform": 0.5, "majority": 0.5}
    assert levels["overall"]["uniform"] == pytest.approx((4 / 6 + 2 / 2) / 6)
    assert levels["overall"]["majority"] == pytest.approx((2 + 1) / 6)  # best constant per kind


def test_demo_vlm_dir_generates_once(tmp_path, monkeypatch):
    calls = []

    def fake_generate(path):
        calls.append(path)
        path.mkdir(parents=True)
        (path / "stats.json").write_text("{}")

    monkeypatch.setattr(vision, "DEMO_DIR", str(tmp_path))
    monkeypatch.setattr(vision, "generate_vlm", fake_generate)
    assert vision.demo_vlm_dir() == str(tmp_path / "vlm")
    assert vision.demo_vlm_dir() == str(tmp_path / "vlm")
    assert calls == [tmp_path / "vlm"]


def test_scale_must_leave_pictures_to_compare():
    with pytest.raises(ValueError):
        build_vlm_data(SEED, 0.001)


def test_cell_labels_name_the_shape_covering_most_of_each_cell():
    # A large red square centred on the 4x4 grid's corner between cells 5, 6, 9, 10 (16 px cells).
    square = vision.Shape("square", "red", "large", "center", 32, 32)
    kind, colour = vision.cell_labels(vision.Scene((square,), "white"), 4)
    mask = shape_mask(square).reshape(4, 16, 4, 16).sum((1, 3)).reshape(-1)
    assert set(np.flatnonzero(mask)) == {5, 6, 9, 10}
    assert list(np.flatnonzero(kind)) == [5, 6, 9, 10]
    assert set(kind[[5, 6, 9, 10]]) == {1 + SHAPES.index("square")} and set(colour[[5, 6, 9, 10]]) == {1 + COLOURS.index("red")}
    assert not colour[[0, 1, 2, 3, 15]].any()
    # On a finer grid a cell that the shape barely touches (< min_pixels) stays empty.
    kind8, _ = vision.cell_labels(vision.Scene((square,), "white"), 8, min_pixels=10**6)
    assert not kind8.any()


def test_encoder_scenes_are_fresh_and_training_safe():
    train, val = vision.encoder_scenes(300, seed=SEED)
    data = build_vlm_data(SEED, SCALE)
    shown = {s.key() for n, s in data.scenes.items() if not n.startswith("train_")}
    assert len(train) == 300 and len(val) == vision.VAL_IMAGES
    assert not [s for s in train if withheld_in(s) or s.key() in shown]
    assert {s.key() for s in val} <= shown  # validation: the demo's own validation pictures
    assert {s.count for s in train} == set(COUNTS)


def test_pretrain_demo_vision_writes_an_encoder_folder_that_learned(tmp_path):
    import re
    import subprocess
    import sys

    from model.vision import load_vision_encoder, patch_grid
    from tests.helpers import ROOT
    folder = tmp_path / "encoder"
    run = subprocess.run([sys.executable, "scripts/pretrain_demo_vision.py", str(folder), "--steps", "160",
                          "--pictures", "400", "--batch_size", "32", "--hidden_size", "64", "--num_hidden_layers", "2",
                          "--learning_rate", "5e-3", "--log_interval", "40"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    colour = [float(c) for c in re.findall(r"colour ([0-9.]+)", run.stdout)]
    assert len(colour) == 4 and colour[-1] > max(colour[0] + 0.2, 0.5), run.stdout  # chance: 1/7
    encoder, processor = load_vision_encoder(str(folder))  # the VLM stages' own loading path
    assert patch_grid(encoder) == 4 and processor.crop_size["height"] == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder"]  # no temp folder left behind


@pytest.mark.parametrize("k", range(8))
def test_encoder_augmentation_moves_pictures_and_patch_labels_together(k):
    """Each cell of a picture is painted with its own label; under every turn and mirror of the batch, the label
    each patch carries is still the paint in that patch."""
    import torch

    from scripts.pretrain_demo_vision import turned
    grid, cell = 4, 16
    labels = torch.arange(2 * grid * grid).view(2, grid * grid)
    painted = labels.view(2, 1, grid, 1, grid, 1).expand(2, 3, grid, cell, grid, cell).reshape(2, 3, 64, 64)
    pixels, (moved,) = turned(painted.float(), [labels], grid, k)
    seen = pixels.view(2, 3, grid, cell, grid, cell).amax((1, 3, 5)).reshape(2, -1)
    assert torch.equal(seen.long(), moved) and (k == 0) == torch.equal(moved, labels)
