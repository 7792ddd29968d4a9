"""MiniMind-V behind the API server and in the web chat: images as OpenAI `image_url` content parts, the one
prompt builder (model/chat.py's `image_chat_prompt_ids`), and the batching engine's per-request prefill.

The model is tiny and trained here for a second or two to name the colour of a solid 32x32 image, so that
answers are meaningful (red, blue, green), and every reply is also compared with a direct `generate` call."""
import base64
import io
import os
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from model.chat import chat_prompt_ids, image_chat_prompt_ids, image_part
from model.checkpoint import checkpoint_path
from model.generation import DraftModel, generate
from model.model_vlm import save_vlm, vlm_from_llm
from model.serving import Engine, SamplingParams
from model.vision import IMAGE_MARKER, encode_with_images, load_image_processor, pixel_values, save_vision_encoder
from tests.helpers import ROOT, save_checkpoint, tiny_model, tokenizer
from tests.test_serve import client, live_server, raw_post

COLOURS = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 200, 0)}
QUESTION = "What colour?"


# ----------------------------------------------------------------------------------------------------------
# A tiny VLM that names colours


def colour_image(name: str, size: int = 32):
    return Image.new("RGB", (size, size), COLOURS[name])


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(image_bytes: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(image_bytes).decode()}"


def colour_vlm(folder) -> torch.nn.Module:
    """A 64 x 2 VLM around a random 32x32 CLIP encoder (saved in `folder`/enc), trained until it answers
    "<image>\\nWhat colour?" with the image's colour."""
    encoder = save_vision_encoder(os.path.join(folder, "enc"), "clip", image_size=32, patch_size=8, hidden_size=32,
                                  num_hidden_layers=2, num_attention_heads=2)
    model = vlm_from_llm(tiny_model(), encoder)
    tok, config = tokenizer(), model.config
    rows = []
    for name in COLOURS:
        prompt, _ = image_chat_prompt_ids(tok, [{"role": "user", "content": [image_part(name), text(QUESTION)]}],
                                          config.image_token_id, config.image_tokens)
        rows.append((prompt, tok(name, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]))
    width = max(len(p) + len(r) for p, r in rows)
    ids = torch.tensor([p + r + [0] * (width - len(p) - len(r)) for p, r in rows])
    labels = torch.tensor([[-100] * len(p) + r + [-100] * (width - len(p) - len(r)) for p, r in rows])
    images = pixel_values(load_image_processor(encoder), [colour_image(name) for name in COLOURS])
    model.train().requires_grad_(True).vision_encoder.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(200):
        loss = model(ids, labels=labels, pixel_values=images).loss
        if loss.item() < 0.02:
            return model.eval()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    raise AssertionError("the VLM did not learn its colours")


def text(value: str) -> dict:
    return {"type": "text", "text": value}


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    return colour_vlm(str(tmp_path_factory.mktemp("vlm")))


def direct(model, content: str, images, max_new_tokens=12) -> tuple[str, list[int]]:
    """(reply text, prompt ids) by `generate` on a prompt written as minimind-v's data write it: `<image>` in
    the user text, expanded by `encode_with_images`."""
    tok, config = tokenizer(), model.config
    rendered = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                       add_generation_prompt=True)
    ids = encode_with_images(tok, rendered, config.image_token_id, config.image_tokens)
    return greedy(model, ids, images, max_new_tokens), ids


def greedy(model, ids, images, max_new_tokens=12) -> str:
    pixels = pixel_values(load_image_processor(model.config.vision_model_path), images) if images else None
    out = generate(model, torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                   eos_token_id=tokenizer().eos_token_id, pixel_values=pixels)
    return tokenizer().decode(out[0, len(ids):], skip_special_tokens=True)


def image_message(*parts) -> list[dict]:
    """One user message: str parts are text, PIL images become base64 PNG image_url parts."""
    content = [text(p) if isinstance(p, str) else {"type": "image_url", "image_url": {"url": data_url(png(p))}}
               for p in parts]
    return [{"role": "user", "content": content}]


# ----------------------------------------------------------------------------------------------------------
# The prompt builder


def runs(ids, slot):
    """Lengths of the runs of `slot` in ids."""
    out, n = [], 0
    for t in ids + [None]:
        if t == slot:
            n += 1
        elif n:
            out, n = out + [n], 0
    return out


def test_typed_image_markers_never_become_slots(vlm):
    tok, config = tokenizer(), vlm.config
    slot, size = config.image_token_id, config.image_tokens
    typed = [{"role": "user", "content": f"{IMAGE_MARKER}\n{QUESTION} {IMAGE_MARKER}"}]
    ids, images = image_chat_prompt_ids(tok, typed, slot, size)
    assert images == [] and slot not in ids and ids == chat_prompt_ids(tok, typed)  # text, as a text model reads it

    parts = [{"role": "user", "content": [text(IMAGE_MARKER), image_part("the photo"), text(QUESTION)]}]
    ids, images = image_chat_prompt_ids(tok, parts, slot, size)
    assert images == ["the photo"] and runs(ids, slot) == [size]  # one image, one run; the typed marker is text
    assert tok.decode([t for t in ids if t != slot]).count(IMAGE_MARKER) == 1

    # An image part then a question reads as minimind-v's data write it: "<image>\n<question>".
    ids, _ = image_chat_prompt_ids(tok, [{"role": "user", "content": [image_part(0), text(QUESTION)]}], slot, size)
    assert ids == direct(vlm, f"{IMAGE_MARKER}\n{QUESTION}", [colour_image("red")], max_new_tokens=1)[1]
    two, _ = image_chat_prompt_ids(tok, [{"role": "user", "content": [image_part(0), image_part(1), text("\nQ")]}],
                                   slot, size)
    assert runs(two, slot) == [size, size]  # "<image>\n<image>\nQ": the newline between them keeps two runs
    with pytest.raises(ValueError, match="user messages only"):
        image_chat_prompt_ids(tok, [{"role": "assistant", "content": [image_part(0)]}], slot, size)


# ----------------------------------------------------------------------------------------------------------
# The engine: each request's images in its own prefill, decoding batched


def test_engine_batches_requests_with_different_images(vlm):
    """Four requests decoded in one batch past eos (none leaves early): red, blue, green and a text-only one,
    each token for token as `generate` alone with its own image."""
    tok, config = tokenizer(), vlm.config
    processor = load_image_processor(config.vision_model_path)
    engine = Engine(vlm, max_batch_size=4, eos_token_ids=[])
    jobs = []  # (prompt, pixels, tokens alone)
    for name in ("red", "blue", "green", None):
        ids, _ = image_chat_prompt_ids(tok, [{"role": "user", "content": [image_part(0), text(QUESTION)] if name
                                              else "hi"}], config.image_token_id, config.image_tokens)
        pixels = pixel_values(processor, [colour_image(name)]) if name else None
        alone = generate(vlm, torch.tensor([ids]), max_new_tokens=10, do_sample=False, eos_token_id=[],
                         pixel_values=pixels)[0, len(ids):].tolist()
        assert not name or tok.decode(alone).startswith(f"{name}<|im_end|>")
        jobs.append((ids, pixels, alone))
    got = [[] for _ in jobs]
    for i, (ids, pixels, _) in enumerate(jobs):
        engine.submit(ids, SamplingParams(max_tokens=10, temperature=0), lambda t, f, i=i: got[i].append(t), pixels)
    engine.step()
    assert engine.load["running"] == 4  # all four prefilled, each with its images, then decoded together
    while engine.rows:
        engine.step()
    assert got == [alone for _, _, alone in jobs]
    with pytest.raises(ValueError, match="2 image"):  # one run of slots, two images
        engine.submit(jobs[0][0], SamplingParams(max_tokens=1), lambda t, f: None, torch.cat([jobs[0][1]] * 2))
    with pytest.raises(ValueError, match="no vision encoder"):
        Engine(tiny_model()).submit([1, 2], SamplingParams(max_tokens=1), lambda t, f: None, jobs[0][1])


# ----------------------------------------------------------------------------------------------------------
# The API server through the official openai client


@pytest.fixture(scope="module")
def vlm_server(vlm):
    with live_server(vlm, max_batch_size=4) as url:
        yield url


def ask(url, messages, **kw):
    return client(url).chat.completions.create(model="tiny", messages=messages, **{"temperature": 0, "max_tokens": 12,
                                                                                   **kw})


def test_image_reply_equals_direct_generation_streamed_or_not(vlm, vlm_server):
    for name in COLOURS:
        expected, ids = direct(vlm, f"{IMAGE_MARKER}\n{QUESTION}", [colour_image(name)])
        assert expected == name
        result = ask(vlm_server, image_message(colour_image(name), QUESTION))
        assert result.choices[0].message.content == name and result.usage.prompt_tokens == len(ids)
    stream = ask(vlm_server, image_message(colour_image("blue"), QUESTION), stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == "blue"
    assert client(vlm_server).models.list().data[0].model_extra["input_modalities"] == ["text", "image"]


def test_typed_marker_is_text_and_one_image_is_one_run(vlm, vlm_server):
    tok, config = tokenizer(), vlm.config
    typed = f"{IMAGE_MARKER}\n{QUESTION}"  # typed, no image: text (slots without an image would fail the engine)
    result = ask(vlm_server, [{"role": "user", "content": [text(typed)]}])
    assert result.usage.prompt_tokens == len(chat_prompt_ids(tok, [{"role": "user", "content": typed}]))
    # typed before a real image: exactly one run of slots, and the reply is direct generation's on that prompt
    ids, _ = image_chat_prompt_ids(tok, [{"role": "user", "content": [text(IMAGE_MARKER), image_part(0),
                                                                       text(QUESTION)]}],
                                   config.image_token_id, config.image_tokens)
    assert runs(ids, config.image_token_id) == [config.image_tokens]
    result = ask(vlm_server, image_message(IMAGE_MARKER, colour_image("green"), QUESTION))
    assert result.usage.prompt_tokens == len(ids)
    assert result.choices[0].message.content == greedy(vlm, ids, [colour_image("green")])


def test_two_images_in_one_message(vlm, vlm_server):
    images = [colour_image("red"), colour_image("blue")]
    expected, ids = direct(vlm, f"{IMAGE_MARKER}\n{IMAGE_MARKER}\n{QUESTION}", images)
    result = ask(vlm_server, image_message(*images, QUESTION))
    assert result.choices[0].message.content == expected and result.usage.prompt_tokens == len(ids)
    assert runs(ids, vlm.config.image_token_id) == [vlm.config.image_tokens] * 2


def test_concurrent_requests_get_their_own_images(vlm_server):
    names = ["red", "blue", "green", "blue", "red", "green"]
    with ThreadPoolExecutor(len(names)) as pool:
        replies = list(pool.map(lambda n: ask(vlm_server, image_message(colour_image(n), QUESTION))
                                .choices[0].message.content, names))
    assert replies == names


def test_bad_images_get_a_400_naming_the_part(vlm_server):
    with pytest.raises(openai.BadRequestError) as remote:
        ask(vlm_server, [{"role": "user", "content": [
            text(QUESTION), {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    error = remote.value.body
    assert "does not fetch image URLs" in error["message"] and "base64 data: URL" in error["message"]
    assert error["param"] == "messages.0.content.1.image_url.url"

    good = data_url(png(colour_image("red")))
    bad = {
        "not base64": ("data:image/png;base64,%%%not-base64%%%", "not valid base64"),
        "not an image": (data_url(b"hello, world"), "not an image"),
        "truncated png": (data_url(png(colour_image("red"))[:60]), "cannot be read"),
        "a text data: URL": ("data:text/plain;base64,aGk=", "holds text/plain"),
        "not base64-encoded": ("data:image/png,rawbytes", "not a base64 data: URL"),
        "a file URL": ("file:///etc/passwd", "must be a base64 data: URL"),
    }
    system = {"role": "system", "content": "You see."}
    for label, (url, words) in bad.items():
        status, body = raw_post(vlm_server, "/v1/chat/completions", {"messages": [system, {"role": "user", "content": [
            text(QUESTION), {"type": "image_url", "image_url": {"url": url}}]}]})
        assert status == 400 and words in body["error"]["message"], label
        assert body["error"]["message"].startswith("messages.1.content.1: "), label
    status, body = raw_post(vlm_server, "/v1/chat/completions", {"messages": [
        {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": good}}]}]})
    assert status == 400 and "user messages only" in body["error"]["message"]
    assert ask(vlm_server, image_message(colour_image("red"), QUESTION)).choices[0].message.content == "red"


def test_a_224_png_fits_the_default_body_limit(vlm_server):
    """A 224x224 photo-sized PNG of noise (PNG's worst case) as a base64 data URL: ~200 KB of the 4 MB."""
    pixels = torch.randint(0, 256, (224 * 224 * 3,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    url = data_url(png(Image.frombytes("RGB", (224, 224), pixels.numpy().tobytes())))
    assert len(url) < 256_000
    image = {"type": "image_url", "image_url": {"url": url, "detail": "low"}}
    result = ask(vlm_server, [{"role": "user", "content": [image, text(QUESTION)]}], max_tokens=2)
    assert result.usage.completion_tokens <= 2


def test_images_to_a_text_model_or_with_speculative_decoding_get_a_400(vlm):
    message = image_message(colour_image("red"), QUESTION)
    with live_server(tiny_model()) as url:
        with pytest.raises(openai.BadRequestError, match="this model has no vision encoder"):
            ask(url, message)
        assert client(url).models.list().data[0].model_extra["input_modalities"] == ["text"]
    with live_server(vlm, drafter=DraftModel(tiny_model(), 2)) as url:
        with pytest.raises(openai.BadRequestError, match="speculative decoding"):
            ask(url, message)
        assert ask(url, [{"role": "user", "content": "hi"}]).usage.completion_tokens > 0  # text still works


# ----------------------------------------------------------------------------------------------------------
# The web chat (Streamlit's own test harness)


def test_web_chat_attaches_an_image_to_a_vlm_only(vlm, tmp_path):
    save_checkpoint(tiny_model(), tmp_path, "full_sft")
    save_vlm(vlm, checkpoint_path(str(tmp_path), "sft_vlm", 64, False), {"stage": "sft_vlm"}, dtype=torch.float32)
    app = AppTest.from_file(os.path.join(ROOT, "scripts", "web_demo.py"), default_timeout=60).run()
    app.sidebar.text_input[0].set_value(str(tmp_path)).run()
    assert app.sidebar.selectbox[0].options == ["full_sft_64.pth", "sft_vlm_64.pth"]
    app.sidebar.selectbox[0].set_value("full_sft_64.pth").run()
    assert not app.exception and not app.chat_input[0].proto.accept_file  # a text model: no uploader

    app.sidebar.selectbox[0].set_value("sft_vlm_64.pth").run()
    app.sidebar.slider[0].set_value(0.0)  # greedy
    assert app.chat_input[0].proto.accept_file
    app.chat_input[0].upload("red.png", png(colour_image("red")), "image/png").set_value(QUESTION).run()
    assert not app.exception
    user, assistant = app.chat_message
    assert user.markdown[0].value == QUESTION and len(user.image) == 1  # the image shows in the history
    assert assistant.markdown[-1].value == "red"
    # The next turn: the history keeps the first image in its turn; the reply is generate's on both turns.
    app.chat_input[0].upload("blue.png", png(colour_image("blue")), "image/png").set_value(QUESTION).run()
    assert len(app.chat_message) == 4 and [len(m.image) for m in app.chat_message] == [1, 0, 1, 0]
    turn = [image_part(0), text(QUESTION)]
    conversation = [{"role": "user", "content": turn}, {"role": "assistant", "content": "red"},
                    {"role": "user", "content": turn}]
    ids, _ = image_chat_prompt_ids(tokenizer(), conversation, vlm.config.image_token_id, vlm.config.image_tokens)
    assert app.chat_message[-1].markdown[-1].value == greedy(vlm, ids, [colour_image("red"), colour_image("blue")],
                                                             512)
    app.sidebar.slider[3].set_value(0)  # no history: the blue image alone
    app.chat_input[0].upload("blue.png", png(colour_image("blue")), "image/png").set_value(QUESTION).run()
    assert app.chat_message[-1].markdown[-1].value == "blue"
