"""The Streamlit web demo, driven by Streamlit's own test harness on a tiny checkpoint."""
import os
import re
import subprocess
import sys

from streamlit.testing.v1 import AppTest

from tests.helpers import ROOT, save_checkpoint, scripted_model, tiny_model

APP = os.path.join(ROOT, "scripts", "web_demo.py")


def open_demo(folder):
    app = AppTest.from_file(APP, default_timeout=60).run()
    app.sidebar.text_input[0].set_value(str(folder)).run()
    return app


def test_chat_reply_with_thinking_folded_then_clear(tmp_path):
    save_checkpoint(scripted_model(), tmp_path, "reason")
    app = open_demo(tmp_path)
    assert not app.exception and app.sidebar.selectbox[0].value == "reason_64.pth"
    app.sidebar.slider[0].set_value(0.0)  # greedy
    app.chat_input[0].set_value("hi").run()
    assert not app.exception
    user, assistant = app.chat_message
    assert user.markdown[0].value == "hi"
    assert assistant.markdown[-1].value == "Yes 是的"
    assert assistant.expander[0].label == "Thinking" and assistant.expander[0].markdown[0].value == "I think so"
    assert "tokens/s" in assistant.caption[0].value

    app.chat_input[0].set_value("again").run()  # the conversation goes on and is shown again
    assert len(app.chat_message) == 4
    app.sidebar.button[0].click().run()
    assert len(app.chat_message) == 0


def test_lists_checkpoints_and_says_when_there_are_none(tmp_path):
    app = open_demo(tmp_path)
    assert "No checkpoints" in app.sidebar.info[0].value
    save_checkpoint(tiny_model(), tmp_path, "pretrain")
    save_checkpoint(tiny_model(), tmp_path, "full_sft")
    for other in ("full_sft_64_resume.pth", "grpo_64_rollout.pth", "ppo_critic_64.pth"):  # not models to talk to
        (tmp_path / other).write_bytes(b"")
    app = open_demo(tmp_path)
    assert app.sidebar.selectbox[0].options == ["full_sft_64.pth", "pretrain_64.pth"]
    assert app.sidebar.selectbox[0].value == "full_sft_64.pth"  # a chat model before a pretrained one
    assert app.sidebar.multiselect[0].options == ["calculator", "lookup", "convert"]  # tools: tests/test_chat_tools.py
    app.sidebar.slider[2].set_value(16)
    app.chat_input[0].set_value("你好").run()
    assert not app.exception and len(app.chat_message) == 2


def test_offers_the_newest_of_the_largest_chat_models_first(tmp_path):
    save_checkpoint(tiny_model(), tmp_path, "reason")
    save_checkpoint(tiny_model(), tmp_path, "full_sft")
    os.utime(tmp_path / "reason_64.pth", (1e9, 1e9))  # older than full_sft_64, the same size
    # a distillation student: newest, and alphabetically first, but small
    save_checkpoint(tiny_model(hidden_size=32, num_attention_heads=2, num_key_value_heads=1), tmp_path, "full_sft")
    app = open_demo(tmp_path)
    assert app.sidebar.selectbox[0].options == ["full_sft_32.pth", "full_sft_64.pth", "reason_64.pth"]
    assert app.sidebar.selectbox[0].value == "full_sft_64.pth"


def test_listens_on_this_machine_only():
    """`streamlit run` from the repository root reads .streamlit/config.toml: 127.0.0.1, as the API server."""
    shown = subprocess.run([sys.executable, "-m", "streamlit", "config", "show"], cwd=ROOT, capture_output=True,
                           text=True, timeout=60).stdout
    assert re.search(r'^address = "127\.0\.0\.1"$', shown, re.M)
