"""Text from token streams (UTF-8, stop strings, <think> split) and eval_model.py on tiny checkpoints.

Shared helpers (tiny models, a scripted model, checkpoints in a temp dir) live in tests/helpers.py.
"""
import argparse
import os
import subprocess
import sys

import pytest
import torch

from model.chat import IncrementalDetokenizer, ReplyStream
from model.checkpoint import CheckpointError
from tests.helpers import ROOT, THINKING_REPLY, save_checkpoint, scripted_model, tiny_model, tokenizer


def stream_text(token_ids, **kw):
    reply = ReplyStream(tokenizer(), **kw)
    deltas = [reply.push(t) for t in token_ids] + [reply.finish()]
    return reply, deltas


# ----------------------------------------------------------------------------------------------------------
# Text from tokens


def test_incremental_decoding_keeps_multibyte_characters_whole():
    tok = tokenizer()
    text = "你好，世界！表情 😀🎉 and ünïcödé, 长江"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert any("\ufffd" in tok.decode([i]) for i in ids), "the test needs a character split over tokens"
    detok = IncrementalDetokenizer(tok)
    pieces = [detok.push(i) for i in ids] + [detok.flush()]
    assert not any("\ufffd" in p for p in pieces)
    assert "".join(pieces) == text


def test_special_tokens_do_not_show_and_broken_bytes_surface_at_the_end():
    tok = tokenizer()
    emoji = tok("😀", add_special_tokens=False)["input_ids"]
    ids = tok("ok", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    reply, _ = stream_text(ids, split_think=False)
    assert reply.content == "ok" and reply.n_tokens == len(ids)
    reply, _ = stream_text(emoji[:2], split_think=False)  # the model stopped mid-character
    assert set(reply.content) == {"\ufffd"}


def test_reply_stream_splits_tokens_of_a_reasoning_reply():
    tok = tokenizer()
    reply, deltas = stream_text(tok(THINKING_REPLY, add_special_tokens=False)["input_ids"])
    assert (reply.reasoning, reply.content) == ("I think so", "Yes 是的")
    assert "".join(d.reasoning for d in deltas) == "I think so"
    assert "".join(d.content for d in deltas) == "Yes 是的"


def test_reply_stream_reads_from_the_prompt_whether_thinking_is_open():
    """A template with a thinking switch ends the prompt with <think>: the reply then starts as thinking."""
    tok = tokenizer()
    reply_ids = tok("a\n</think>\n<answer>\nb\n</answer>", add_special_tokens=False)["input_ids"]
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    for prompt, parts in ((chat + "<think>\n", ("a", "b")), (chat, ("", "a\n</think>b"))):
        reply = ReplyStream(tok, prompt_ids=tok(prompt, add_special_tokens=False)["input_ids"])
        for t in reply_ids:
            reply.push(t)
        reply.finish()
        assert (reply.reasoning, reply.content) == parts


@pytest.mark.parametrize("stops, expected", [
    (["是的"], "Yes "), (["es 是"], "Y"), (["nothing"], "Yes 是的"), (["Yes", "s"], ""),
])
def test_stop_strings_cut_across_tokens(stops, expected):
    tok = tokenizer()
    reply = ReplyStream(tok, stop=stops, split_think=False)
    for token in tok("Yes 是的", add_special_tokens=False)["input_ids"]:
        reply.push(token)
        if reply.stopped:
            break
    reply.finish()
    assert reply.content == expected
    assert reply.stopped == (expected != "Yes 是的")


# ----------------------------------------------------------------------------------------------------------
# eval_model.py


def test_eval_model_runs_its_prompts_and_shows_thinking_apart(tmp_path):
    save_checkpoint(scripted_model(), tmp_path, "reason")
    flags = ["--model_mode", "3", "--out_dir", str(tmp_path), "--hidden_size", "64", "--max_new_tokens", "20",
             "--temperature", "0", "--device", "cpu", "--dtype", "float32"]
    result = subprocess.run([sys.executable, "eval_model.py", *flags], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})  # see one_torch_thread
    assert result.returncode == 0, result.stderr
    out = result.stdout
    from eval_model import CHAT_PROMPTS
    assert all(prompt in out for prompt in CHAT_PROMPTS)
    assert out.count("[thinking]\nI think so") == len(CHAT_PROMPTS)
    assert out.count("[answer]\nYes 是的") == len(CHAT_PROMPTS)
    assert out.count("tokens/s]") == len(CHAT_PROMPTS)
    assert "<think>" not in out and "<answer>" not in out


def test_eval_model_pretrain_mode_continues_text(tmp_path, capsys):
    import eval_model
    save_checkpoint(tiny_model(), tmp_path, "pretrain")
    eval_model.main(["--model_mode", "0", "--out_dir", str(tmp_path), "--hidden_size", "64", "--max_new_tokens",
                     "4", "--device", "cpu", "--dtype", "float32", "--stream", "0"])
    out = capsys.readouterr().out
    assert all(f"minimind> {prompt}" in out for prompt in eval_model.PRETRAIN_PROMPTS)
    assert out.count("tokens/s]") == len(eval_model.PRETRAIN_PROMPTS)


def test_eval_model_missing_or_mismatched_checkpoint_says_what_to_try(tmp_path):
    import eval_model
    save_checkpoint(tiny_model(), tmp_path, "pretrain")
    (tmp_path / "pretrain_64_resume.pth").write_bytes(b"")  # a run's resume state: not offered as a model
    (tmp_path / "student.pth").write_bytes(b"")
    with pytest.raises(SystemExit) as exit_info:
        eval_model.main(["--model_mode", "1", "--out_dir", str(tmp_path), "--device", "cpu"])
    message = str(exit_info.value.code)
    assert "full_sft_512.pth not found" in message
    assert "pretrain_64.pth" in message and "--model_mode 0 --hidden_size 64" in message
    assert "student.pth" in message and "_resume" not in message

    with pytest.raises(SystemExit) as exit_info:  # the right file, forced into the wrong shape
        eval_model.main(["--model_mode", "0", "--out_dir", str(tmp_path), "--hidden_size", "64",
                         "--num_hidden_layers", "3", "--device", "cpu"])
    message = str(exit_info.value.code)
    assert "does not fit the model" in message and "--num_hidden_layers 2" in message

    with pytest.raises(SystemExit) as exit_info:
        eval_model.main(["--model_mode", "2", "--out_dir", str(tmp_path / "nothing")])
    assert "does not exist" in str(exit_info.value.code)


def test_lora_name_merges_the_adapter_and_says_which_adapters_exist(tmp_path):
    from model.chat import add_model_args, load_chat_model
    from model.model_lora import apply_lora, save_lora
    save_checkpoint(tiny_model(), tmp_path)
    adapted = apply_lora(tiny_model(), rank=4)
    with torch.no_grad():  # a fresh adapter is zero; make it change something
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    save_lora(adapted, str(tmp_path / "lora" / "lora_identity_64.pth"))

    def load(name):
        flags = ["--out_dir", str(tmp_path), "--hidden_size", "64", "--lora_name", name, "--device", "cpu",
                 "--dtype", "float32"]
        return load_chat_model(add_model_args(argparse.ArgumentParser()).parse_args(flags), quiet=True)[0]

    ids = torch.tensor([[1, 300, 2000, 45]])
    with torch.no_grad():
        assert (load("identity")(ids).logits - adapted(ids).logits).abs().max() < 1e-5
    with pytest.raises(CheckpointError, match="lora_medical_64.pth not found.*lora_identity_64.pth"):
        load("medical")
