"""eval_vlm.py on a tiny MiniMind-V checkpoint that names colours (tests/test_vlm_serve.py's): one question and a
folder of images as a user runs them (subprocesses), the chat and the errors in process."""
import os
import subprocess
import sys

import pytest
import torch

import eval_vlm
from model.checkpoint import checkpoint_path
from model.model_vlm import save_vlm
from tests.helpers import ROOT, save_checkpoint, tiny_model
from tests.test_vlm_serve import COLOURS, QUESTION, colour_image, colour_vlm


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(out dir holding sft_vlm_64.pth and a text model's full_sft_64.pth, a folder of the three colours)."""
    root = tmp_path_factory.mktemp("eval_vlm")
    out, pictures = root / "out", root / "pictures"
    pictures.mkdir()
    model = colour_vlm(str(root))
    save_vlm(model, checkpoint_path(str(out), "sft_vlm", 64, False), {"stage": "sft_vlm"}, dtype=torch.float32)
    save_checkpoint(tiny_model(), out, "full_sft")
    for name in COLOURS:
        colour_image(name).save(pictures / f"{name}.png")
    (pictures / "notes.txt").write_text("not an image: skipped")
    return out, pictures


def run(*flags):
    return subprocess.run([sys.executable, "eval_vlm.py", "--device", "cpu", *flags], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_one_question_picks_sft_vlm_by_its_flags(setup):
    out, pictures = setup
    done = run("--out_dir", str(out), "--hidden_size", "64", "--image", str(pictures / "red.png"),
               "--question", QUESTION)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "red\n" and "sft_vlm_64.pth" in done.stderr  # the answer alone on stdout


def test_a_folder_gets_one_answer_per_image(setup):
    out, pictures = setup
    done = run("--load_from", str(out / "sft_vlm_64.pth"), "--image_dir", str(pictures), "--question", QUESTION,
               "--stream", "0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["blue.png: blue", "green.png: green", "red.png: red"]


def test_chat_keeps_the_image_and_switches_it(setup, monkeypatch, capsys):
    out, pictures = setup
    lines = iter([QUESTION, "And again?", f"/image {pictures / 'blue.png'}", f"Tell me: {'<image>'} {QUESTION}",
                  "/image missing.png", "exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    eval_vlm.main(["--load_from", str(out / "sft_vlm_64.pth"), "--image", str(pictures / "red.png"), "--device", "cpu"])
    captured = capsys.readouterr()
    answers = [line.removeprefix("minimind> ") for line in captured.out.splitlines() if line.startswith("minimind> ")]
    # the follow-up's answer is the model's own business (it learned single questions); the switch is blue's
    assert len(answers) == 3 and answers[0] == "red" and answers[2] == "blue"
    assert "missing.png: no such image file" in captured.err


@pytest.mark.parametrize("flags, message", [
    (["--image", "{pictures}/nowhere.png", "--question", "q"], "nowhere.png: no such image file"),
    (["--image", "{pictures}/notes.txt", "--question", "q"], "notes.txt: cannot be read as an image"),
    (["--image_dir", "{out}/nowhere"], "no such folder"),
    (["--image", "{pictures}/red.png", "--question", "<image> and <image>"], "2 <image> marks for one image"),
    (["--model_mode", "0", "--hidden_size", "64", "--out_dir", "{out}", "--image", "{pictures}/red.png"],
     "pretrain_vlm_64.pth not found"),
])
def test_input_errors_are_one_line_before_the_model_loads(setup, flags, message):
    out, pictures = setup
    with pytest.raises(SystemExit) as e:
        eval_vlm.main([f.format(out=out, pictures=pictures) for f in flags])
    assert str(e.value.code).startswith("error: ") and message in str(e.value.code)


def test_a_text_checkpoint_is_refused(setup):
    out, pictures = setup
    with pytest.raises(SystemExit) as e:
        eval_vlm.main(["--load_from", str(out / "full_sft_64.pth"), "--image", str(pictures / "red.png"),
                       "--question", QUESTION, "--device", "cpu"])
    assert "is not a vision-language checkpoint" in str(e.value.code)


def test_an_unreadable_image_in_a_folder_is_reported_and_the_rest_answered(setup, tmp_path, capsys):
    out, pictures = setup
    (tmp_path / "a.png").write_bytes(b"not a png")
    colour_image("green").save(tmp_path / "b.png")
    with pytest.raises(SystemExit) as e:
        eval_vlm.main(["--load_from", str(out / "sft_vlm_64.pth"), "--image_dir", str(tmp_path), "--question",
                       QUESTION, "--device", "cpu"])
    captured = capsys.readouterr()
    assert e.value.code == 1 and captured.out.splitlines() == ["b.png: green"]
    assert "a.png: cannot be read as an image" in captured.err
