"""MiniMind-V: image features land exactly at their slots, the real encoder path (tiny CLIP and SigLIP folders saved
here, loaded as a download would be), frozen parts stay frozen, checkpoints round-trip strictly, KV-cache
generation after an image equals recomputing everything, bad data is named, and a tiny VLM learns to see."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from model.checkpoint import CheckpointError, load_model, read_state_dict, save_weights
from model.dataset import DataError, VLMDataset
from model.generation import generate, stream_generate
from model.model_vlm import MiniMindVLM, VLMConfig, check_image_slots, vlm_from_llm, vlm_state_dict
from model.vision import (VisionError, encode_with_images, load_image_processor, load_images, load_vision_encoder,
                          pixel_values, save_vision_encoder)
from tests.helpers import ROOT, tiny_model, tokenizer

ENCODER = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220)}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_vision_encoder(str(tmp_path_factory.mktemp("clip")), "clip", **ENCODER)


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    return save_vision_encoder(str(tmp_path_factory.mktemp("siglip")), "siglip", **ENCODER)


def tiny_vlm(folder, seed=0, **vision):
    return vlm_from_llm(tiny_model(seed), folder, **vision).eval()


def random_pixels(n, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def slots(model, n=1):
    return [model.config.image_token_id] * model.config.image_tokens * n


# ----------------------------------------------------------------------------------------------------------
# The splice


def test_features_land_exactly_at_each_images_slots(clip_dir):
    """Right- and left-padded rows, two images apart, two adjacent images: every image's projected features sit
    at its own run of slots (in order of appearance), every other position keeps its token embedding."""
    model = tiny_vlm(clip_dir, image_pool=2)
    pad = 0
    rows = [[5, 6, *slots(model), 7, 8, pad, pad, pad, pad, pad, pad],  # right padding, one image
            [pad, pad, 9, *slots(model), 10, *slots(model), 11],  # left padding, two images apart
            [12, *slots(model, 2), 13, 14, 15]]  # two adjacent images make one longer run
    width = max(map(len, rows))
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    pixels = random_pixels(5)
    with torch.no_grad():
        embeds = model.embed_inputs(ids, pixels)
        features = [model.image_features(pixels[k:k + 1])[0] for k in range(5)]  # one image at a time
        expected = model.model.embed_tokens(ids.masked_fill(ids == model.config.image_token_id, 0)).clone()
    image, T = 0, model.config.image_tokens
    for r in range(len(rows)):
        positions = (ids[r] == model.config.image_token_id).nonzero().flatten().tolist()
        for start in positions[::T]:
            expected[r, start:start + T] = features[image]
            image += 1
    assert image == 5
    torch.testing.assert_close(embeds, expected, rtol=0, atol=1e-6)
    text = ids != model.config.image_token_id
    assert torch.equal(embeds[text], model.model.embed_tokens(ids[text]).detach())


def test_slot_mismatches_are_errors_naming_the_row(clip_dir):
    model = tiny_vlm(clip_dir)
    T = model.config.image_tokens
    ids = torch.tensor([[1, *slots(model), 2], [3, *slots(model)[:T - 1], 4, 5]])
    with pytest.raises(VisionError, match=rf"row 1: a run of {T - 1} image slots .* each image fills {T}"):
        model.embed_inputs(ids, random_pixels(2))
    with pytest.raises(VisionError, match="slots for 1 image"):
        model.embed_inputs(ids[:1], random_pixels(2))
    with pytest.raises(VisionError, match="slots for 0 image"):
        check_image_slots(torch.zeros(1, 4, dtype=torch.bool), 1, T)


def test_text_never_becomes_an_image_slot():
    """The placeholder is past the vocabulary: no text encodes to it; only `encode_with_images` inserts it."""
    tok = tokenizer()
    image_id = len(tok)
    text = "<image> @@@@ <|im_start|> <|endoftext|> " + "".join(chr(c) for c in range(32, 600))
    assert max(tok.encode(text, add_special_tokens=False)) < image_id
    assert image_id not in encode_with_images(tok, text.replace("<image>", ""), image_id, 4)
    assert encode_with_images(tok, "a <image> b", image_id, 4).count(image_id) == 4
    with pytest.raises(ValueError, match="placeholder must be an id the tokenizer never produces"):
        VLMConfig(vocab_size=100, image_token_id=42)


# ----------------------------------------------------------------------------------------------------------
# The real encoder path: folders saved here, loaded as downloaded ones are


@pytest.mark.parametrize("kind,center", [("clip", False), ("siglip", False), ("clip", True)])
def test_image_features_match_an_independent_float64_computation(kind, center, clip_dir, siglip_dir):
    """Our pipeline (encoder folder -> patch tokens -> 2x2 average pool [-> minus their mean] -> MLP projection)
    against the same steps written out in float64 from the encoder's own forward: CLIP drops its class token,
    SigLIP has none."""
    folder = clip_dir if kind == "clip" else siglip_dir
    model = tiny_vlm(folder, image_pool=2, center_features=center)
    assert model.config.image_tokens == 4  # a 4x4 patch grid pooled 2x2
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    pixels = pixel_values(load_image_processor(folder), [image])
    assert pixels.shape == (1, 3, 32, 32)
    with torch.no_grad():
        ours = model.image_features(pixels).double()
        encoder, _ = load_vision_encoder(folder)  # a fresh load of the same folder
        states = encoder.double()(pixel_values=pixels.double()).last_hidden_state[0]
    patches = states[1:] if kind == "clip" else states
    assert patches.shape[0] == 16
    grid = patches.reshape(4, 4, -1)
    pooled = torch.stack([grid[i:i + 2, j:j + 2].mean((0, 1)) for i in (0, 2) for j in (0, 2)])
    if center:
        pooled = pooled - pooled.mean(0)
    w1, b1, w2, b2 = (p.detach().double() for p in model.vision_proj.parameters())
    hidden = pooled @ w1.T + b1
    expected = (0.5 * hidden * (1 + torch.erf(hidden / 2 ** 0.5))) @ w2.T + b2  # exact GELU
    torch.testing.assert_close(ours[0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_a_full_model_folder_loads_its_vision_tower_and_an_incomplete_one_is_refused(kind, tmp_path):
    """Users download the whole CLIP or SigLIP (text tower too): the vision tower loads from it, and a folder
    missing vision weights is an error, not a random init."""
    from safetensors.torch import load_file, save_file
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, SiglipConfig, SiglipImageProcessor, SiglipModel
    vision = {**ENCODER, "intermediate_size": 64}
    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99,
                bos_token_id=0, eos_token_id=1, pad_token_id=1)
    if kind == "clip":
        full = CLIPModel(CLIPConfig(vision_config=vision, text_config=text))
        processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        full = SiglipModel(SiglipConfig(vision_config=vision, text_config=text))
        processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    full.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    encoder, _ = load_vision_encoder(str(tmp_path))
    for name, value in encoder.state_dict().items():
        assert torch.equal(value, full.vision_model.state_dict()[name]), name
    weights = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "vision_model.encoder.layers.1." not in k},
              tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(VisionError, match="missing from its files"):
        load_vision_encoder(str(tmp_path))


# ----------------------------------------------------------------------------------------------------------
# Generation


def test_kv_cache_generation_after_an_image_equals_recomputing_everything(clip_dir):
    model = tiny_vlm(clip_dir, seed=3)
    tok = tokenizer()
    text = tok.apply_chat_template([{"role": "user", "content": "<image>\nWhat is it?"}], tokenize=False,
                                   add_generation_prompt=True)
    ids = torch.tensor([encode_with_images(tok, text, model.config.image_token_id, model.config.image_tokens)])
    pixels = random_pixels(1, seed=7)
    cached = generate(model, ids, pixel_values=pixels, max_new_tokens=12, do_sample=False, eos_token_id=[])
    naive = ids
    with torch.no_grad():
        for _ in range(12):  # the whole sequence again each step, images included
            logits = model(naive, pixel_values=pixels).logits[:, -1]
            naive = torch.cat([naive, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, naive)
    other = generate(model, ids, pixel_values=random_pixels(1, seed=8), max_new_tokens=12, do_sample=False,
                     eos_token_id=[])
    assert not torch.equal(other, cached)  # the image matters to the reply


def test_batched_generation_with_images_equals_each_prompt_alone(clip_dir):
    """Left-padded prompts of different lengths and image counts, their images concatenated in row order."""
    model = tiny_vlm(clip_dir, seed=4)
    prompts = [[5, 6, *slots(model), 7], [8, *slots(model), 9, *slots(model), 10, 11, 12, 13]]
    pixels = random_pixels(3, seed=2)
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    batched = generate(model, ids, mask, pixel_values=pixels, max_new_tokens=8, do_sample=False, eos_token_id=[])
    for row, (prompt, images) in enumerate(zip(prompts, (pixels[:1], pixels[1:]))):
        alone = generate(model, torch.tensor([prompt]), pixel_values=images, max_new_tokens=8, do_sample=False,
                         eos_token_id=[])
        assert batched[row, width:].tolist() == alone[0, len(prompt):].tolist()


# ----------------------------------------------------------------------------------------------------------
# Checkpoints


def test_checkpoint_leaves_out_a_frozen_encoder_and_loads_back_strictly(clip_dir, tmp_path):
    model = tiny_vlm(clip_dir)
    path = str(tmp_path / "pretrain_vlm_64.pth")
    save_weights(model, path, {"stage": "pretrain_vlm"}, dtype=torch.float32, state=vlm_state_dict(model))
    saved = read_state_dict(path)
    assert not any(k.startswith("vision_encoder.") for k in saved)
    assert {k for k in saved if k.startswith("vision_proj.")} == {f"vision_proj.{i}.{p}" for i in (0, 2)
                                                                 for p in ("weight", "bias")}
    loaded, _ = load_model(path)
    assert isinstance(loaded, MiniMindVLM)
    ids = torch.tensor([[3, *slots(model), 4]])
    pixels = random_pixels(1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, pixel_values=pixels).logits, model(ids, pixel_values=pixels).logits,
                                   rtol=0, atol=0)

    meta = json.loads((tmp_path / "pretrain_vlm_64.json").read_text())
    del saved["vision_proj.2.bias"]  # a projection weight missing: an error, never a random init
    torch.save(saved, tmp_path / "broken.pth")
    (tmp_path / "broken.json").write_text(json.dumps({**meta, "weights_sha256": None}))
    with pytest.raises(CheckpointError, match=r"missing: vision_proj\.2\.bias"):
        load_model(str(tmp_path / "broken.pth"))


def test_a_frozen_encoder_must_be_the_one_trained_with(clip_dir, tmp_path):
    model = tiny_vlm(clip_dir)
    path = str(tmp_path / "sft_vlm_64.pth")
    save_weights(model, path, {"stage": "sft_vlm"}, state=vlm_state_dict(model))
    other = save_vision_encoder(str(tmp_path / "other"), "clip", **ENCODER, seed=1)  # same shape, other weights
    with pytest.raises(CheckpointError, match="not the one this model was trained with"):
        load_model(path, {"vision_model": other})
    with pytest.raises(CheckpointError, match="pass --vision_model"):
        load_model(path, {"vision_model": str(tmp_path / "nowhere")})


# ----------------------------------------------------------------------------------------------------------
# Data


def write_images(folder, n=6):
    os.makedirs(folder, exist_ok=True)
    names = []
    for i in range(n):
        colour = list(COLOURS.values())[i % 3]
        Image.new("RGB", (32, 32), colour).save(os.path.join(folder, f"{i}.png"))
        names.append(f"{i}.png")
    return names


def chat(question, answer, image, second=None):
    turns = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"conversations": turns + (second or []), "image": image}


def vlm_dataset(path, model, **kwargs):
    return VLMDataset(str(path), tokenizer(), 128, image_processor=load_image_processor(model.config.vision_model_path),
                      image_tokens=model.config.image_tokens, image_token_id=model.config.image_token_id,
                      cache_index=False, **kwargs)


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return str(path)


def test_dataset_expands_tags_in_order_and_learns_only_replies(clip_dir, tmp_path):
    model = tiny_vlm(clip_dir)
    write_images(tmp_path / "images")
    rows = [chat("<image>\nWhat colour?", "red", "0.png"),
            chat("Compare <image> and <image>.", "green, blue", "1.png, 2.png",
                 [{"role": "user", "content": "And now?"}, {"role": "assistant", "content": "the same"}])]
    data = vlm_dataset(write_jsonl(tmp_path / "d.jsonl", rows), model)
    sample = data[1]
    assert sample["pixel_values"].shape == (2, 3, 32, 32)
    slot = sample["input_ids"] == model.config.image_token_id
    assert int(slot.sum()) == 2 * model.config.image_tokens
    assert (sample["labels"][slot] == -100).all()
    learned = tokenizer().decode(sample["labels"][sample["labels"] != -100])
    assert learned == "green, blue<|im_end|>the same<|im_end|>"
    expected = pixel_values(load_image_processor(clip_dir), load_images([str(tmp_path / "images" / "1.png"),
                                                                          str(tmp_path / "images" / "2.png")]))
    assert torch.equal(sample["pixel_values"], expected)
    batch = data.collate([data[0], data[1]])
    assert batch["pixel_values"].shape[0] == 3  # row 0's image, then row 1's two
    model(batch["input_ids"], pixel_values=batch["pixel_values"])  # the slots and images agree


def test_bad_vlm_data_is_named_by_file_and_line_or_skipped_and_counted(clip_dir, tmp_path):
    model = tiny_vlm(clip_dir)
    write_images(tmp_path / "images")
    (tmp_path / "images" / "broken.png").write_bytes(b"not an image at all")
    good = chat("<image>\nWhat colour?", "red", "0.png")
    rows = [good,
            chat("<image>\nWhat colour?", "red", "missing.png"),  # line 2: no such file
            chat("<image> and <image>?", "red", "0.png"),  # line 3: two tags, one image
            {"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<image>"}],
             "image": "0.png"},  # line 4: an image in a reply
            good]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as error:
        vlm_dataset(path, model)
    message = str(error.value)
    assert f"{path}:2: image missing.png not found" in message
    assert f"{path}:3: 2 <image> tag(s) in the conversation for 1 image(s)" in message
    assert f"{path}:4: message 2 (assistant) holds <image>" in message
    assert "3 bad lines of 5" in message
    assert len(vlm_dataset(path, model, skip_bad=True)) == 2

    unreadable = write_jsonl(tmp_path / "unreadable.jsonl", [good, chat("<image>\nWhat?", "x", "broken.png")])
    data = vlm_dataset(unreadable, model)  # decoding is what finds it: when the sample is read
    with pytest.raises(DataError, match=r"unreadable.jsonl:2: .*broken.png: cannot be read as an image"):
        data[1]
    skipping = vlm_dataset(unreadable, model, skip_bad=True)
    assert torch.equal(skipping[1]["input_ids"], skipping[0]["input_ids"])  # the next good sample instead
    assert list(skipping.bad_lines) == [2]


def test_over_long_sample_cutting_an_image_is_an_error(clip_dir, tmp_path):
    model = tiny_vlm(clip_dir)
    write_images(tmp_path / "images")
    path = write_jsonl(tmp_path / "long.jsonl", [chat("word " * 100 + "<image>", "red", "0.png")])
    with pytest.raises(DataError, match="over-long"):
        vlm_dataset(path, model)[0]


def test_parquet_with_image_bytes_reads_as_the_jsonl_does(clip_dir, tmp_path):
    """minimind-v's parquet layout (conversations as JSON text, image_bytes: one image or a list) gives the same
    samples as jsonl + image files."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    model = tiny_vlm(clip_dir)
    names = write_images(tmp_path / "images")
    rows = [chat("<image>\nWhat colour?", "red", names[0]), chat("<image> vs <image>", "both", f"{names[1]},{names[2]}")]
    jsonl = vlm_dataset(write_jsonl(tmp_path / "d.jsonl", rows), model)
    blob = lambda n: (tmp_path / "images" / n).read_bytes()  # noqa: E731
    table = pa.table({"conversations": [json.dumps(r["conversations"]) for r in rows],
                      "image_bytes": [[blob(names[0])], [blob(names[1]), blob(names[2])]]})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=1)
    parquet = vlm_dataset(tmp_path / "d.parquet", model)
    assert len(parquet) == 2
    for a, b in zip(jsonl, parquet):
        assert all(torch.equal(a[k], b[k]) for k in a)

    pq.write_table(pa.table({"conversations": [json.dumps(rows[0]["conversations"])]}), tmp_path / "no_images.parquet")
    with pytest.raises(DataError, match="no column 'image_bytes'"):
        vlm_dataset(tmp_path / "no_images.parquet", model)
    pq.write_table(pa.table({"conversations": [json.dumps(rows[1]["conversations"])], "image_bytes": [blob(names[0])]}),
                   tmp_path / "one.parquet")
    with pytest.raises(DataError, match=r"one.parquet:1: 2 <image> tag\(s\) in the conversation for 1 image"):
        vlm_dataset(tmp_path / "one.parquet", model)


# ----------------------------------------------------------------------------------------------------------
# The two training stages


def run_script(*argv):
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def colour_rows(names, phrasing="What colour is it?"):
    colour_of = {0: "red", 1: "green", 2: "blue"}
    return [chat(f"<image>\n{phrasing}", colour_of[int(n.split('.')[0]) % 3], n) for n in names]


def test_two_stages_freeze_what_they_should_and_the_vlm_learns_to_see(clip_dir, tmp_path):
    """Stage 1 (--train_llm 1): only the last block and the projection change, the frozen encoder stays out of
    the checkpoint. Stage 2 (--train_vision, whole LLM, a quarter as many rows replayed from another file): the
    encoder trains and travels in the checkpoint, and the model names the colour of images it never saw (other
    shades, noise)."""
    from tests.helpers import save_checkpoint
    llm = tiny_model(seed=0)
    llm_path = save_checkpoint(llm, tmp_path, "full_sft")
    names = write_images(tmp_path / "images", n=48)
    data = write_jsonl(tmp_path / "train.jsonl", colour_rows(names))
    common = ["--data_path", data, "--out_dir", str(tmp_path), "--batch_size", "8", "--max_seq_len", "96",
              "--device", "cpu", "--log_interval", "10", "--dtype", "float32"]
    run_script("train_pretrain_vlm.py", "--from_weight", llm_path, "--vision_model", clip_dir, "--train_llm", "1",
               "--max_steps", "6", "--learning_rate", "3e-3", *common)
    stage1 = read_state_dict(str(tmp_path / "pretrain_vlm_64.pth"))
    assert not any(k.startswith("vision_encoder.") for k in stage1)
    before = llm.state_dict()
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "lm_head.weight"):
        assert torch.equal(stage1[name].float(), before[name].half().float()), name  # frozen
    assert not torch.equal(stage1["model.layers.1.mlp.up_proj.weight"].float(),
                           before["model.layers.1.mlp.up_proj.weight"].half().float())  # the last block trains

    replay = write_jsonl(tmp_path / "replay.jsonl", colour_rows(names[:16], "Which colour is this?"))
    log = run_script("train_sft_vlm.py", "--from_weight", str(tmp_path / "pretrain_vlm_64.pth"), "--train_vision",
                     "--epochs", "12", "--learning_rate", "3e-3", "--mix_path", replay, "--mix_ratio", "0.25", *common)
    assert "vision encoder" in log and "data: 48 samples + 12 replayed from" in log
    stage2 = read_state_dict(str(tmp_path / "sft_vlm_64.pth"))
    encoder, _ = load_vision_encoder(clip_dir)
    assert not torch.equal(stage2["vision_encoder.encoder.layers.0.mlp.fc1.weight"].float(),
                           encoder.state_dict()["encoder.layers.0.mlp.fc1.weight"].half().float())

    model, _ = load_model(str(tmp_path / "sft_vlm_64.pth"))
    processor = load_image_processor(clip_dir)
    rng = np.random.default_rng(1)
    tok = tokenizer()
    right = 0
    for name, colour in COLOURS.items():  # unseen images: shifted shades plus noise
        for _ in range(3):
            array = np.clip(np.array(colour) + rng.normal(0, 25, (32, 32, 3)) + rng.integers(-30, 30, 3), 0, 255)
            image = Image.fromarray(array.astype(np.uint8))
            text = tok.apply_chat_template([{"role": "user", "content": "<image>\nWhat colour is it?"}],
                                           tokenize=False, add_generation_prompt=True)
            ids = torch.tensor([encode_with_images(tok, text, model.config.image_token_id, model.config.image_tokens)])
            out = generate(model.eval(), ids, pixel_values=pixel_values(processor, [image]), max_new_tokens=4,
                           do_sample=False)
            right += tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip() == name
    assert right >= 8, f"{right}/9 unseen images named right"


def test_stream_generate_refuses_images_with_a_drafter(clip_dir):
    model = tiny_vlm(clip_dir)
    with pytest.raises(ValueError, match="text prompts only"):
        next(stream_generate(model, torch.tensor([[1, *slots(model)]]), pixel_values=random_pixels(1),
                             drafter=object()))


def test_answer_image_questions_batches_like_asking_each_alone(clip_dir, tmp_path):
    """The demo's held-out evaluation: questions with one or two images each, batched by length, replies in order."""
    from model.generation import answer_image_questions
    model = tiny_vlm(clip_dir, seed=5)
    names = write_images(tmp_path / "images")
    paths = [str(tmp_path / "images" / n) for n in names]
    questions = [("What colour?", paths[:1]), ("Same number of shapes in both?", paths[1:3]), ("Where?", paths[3:4])]
    processor = load_image_processor(clip_dir)
    replies = answer_image_questions(model, tokenizer(), processor, questions, max_new_tokens=6, batch_size=2)
    tok = tokenizer()
    for (question, images), reply in zip(questions, replies):
        text = tok.apply_chat_template([{"role": "user", "content": "<image>" * len(images) + "\n" + question}],
                                       tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([encode_with_images(tok, text, model.config.image_token_id, model.config.image_tokens)])
        out = generate(model, ids, pixel_values=pixel_values(processor, load_images(images)), max_new_tokens=6,
                       do_sample=False, eos_token_id=tok.eos_token_id)
        new = out[0, ids.shape[1]:].tolist()
        new = new[:new.index(tok.eos_token_id)] if tok.eos_token_id in new else new
        assert reply == tok.decode(new, skip_special_tokens=True)


@pytest.mark.slow
def test_vlm_resume_after_ctrl_c_continues_exactly(clip_dir, tmp_path):
    """The engine's exact resume holds for MiniMind-V too: the trained encoder, the projection and the image data
    order come back, so the resumed run logs the same losses as an uninterrupted one."""
    from tests.helpers import interrupt_at, losses, save_checkpoint
    llm_path = save_checkpoint(tiny_model(seed=0), tmp_path, "full_sft")
    names = write_images(tmp_path / "images", n=48)
    data = write_jsonl(tmp_path / "train.jsonl", colour_rows(names))
    runs = {}
    for name in ("straight", "interrupted"):
        out = tmp_path / name
        argv = ["train_sft_vlm.py", "--from_weight", llm_path, "--vision_model", clip_dir, "--train_vision",
                "--data_path", data, "--out_dir", str(out), "--batch_size", "4", "--max_seq_len", "96",
                "--device", "cpu", "--dtype", "float32", "--log_interval", "1", "--max_steps", "10",
                "--learning_rate", "3e-3"]
        if name == "interrupted":
            assert interrupt_at(argv, "step  4/").returncode == 0
            run_script(*argv, "--resume")
        else:
            run_script(*argv)
        runs[name] = losses(out, "sft_vlm_64")
    assert runs["straight"] == runs["interrupted"] and len(runs["straight"]) == 10
