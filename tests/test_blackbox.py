"""Black-box distillation (scripts/distill_blackbox.py) against a real OpenAI-compatible endpoint: the
project's own scripts/serve_openai_api.py in a subprocess on localhost, serving a tiny MiniMind whose greedy
reply is known (tests/test_chat.py's scripted model: real weights, real forward passes, real HTTP)."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import httpx
import openai
import pytest

from model.dataset import IGNORE, SFTDataset
from model.checkpoint import load_tokenizer
from scripts.distill_blackbox import main as distill, to_messages, with_retries
from tests.helpers import THINKING_REPLY, save_checkpoint, scripted_model
from tests.helpers import ROOT, TOKENIZER

# THINKING_REPLY is "<think>I think so</think><answer>Yes 是的</answer>": the server returns it as
# reasoning_content + content, and the script writes it back in minimind's reasoning format.
EXPECTED_REPLY = "<think>\nI think so\n</think>\n<answer>\nYes 是的\n</answer>"
SERVER_CONTEXT = 128  # tokens: a longer prompt is refused with a 400


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """http://127.0.0.1:<port>/v1 of scripts/serve_openai_api.py serving the scripted model."""
    path = save_checkpoint(scripted_model(THINKING_REPLY), tmp_path_factory.mktemp("teacher"))
    port = free_port()
    cmd = [sys.executable, "scripts/serve_openai_api.py", "--load_from", path, "--port", str(port),
           "--device", "cpu", "--dtype", "float32", "--max_seq_len", str(SERVER_CONTEXT)]
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            break
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                pytest.fail(f"the server did not start:\n{process.stdout.read()}")
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}/v1"
    process.terminate()
    process.wait(timeout=10)


def run(prompts, out, base_url, *extra):
    return distill(["--prompts", str(prompts), "--out", str(out), "--base_url", base_url, "--max_tokens", "32",
                    "--workers", "2", "--backoff", "0.01", *extra])


def write_lines(path, lines):
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


PROMPTS = ["What is 2 + 3?",
           json.dumps({"prompt": "Name a colour.", "system": "Answer briefly."}),
           json.dumps({"conversations": [{"role": "user", "content": "你好"},
                                         {"role": "assistant", "content": "an old reply, replaced"}]})]


def test_prompt_formats():
    assert to_messages("What is 2 + 3?\n") == [{"role": "user", "content": "What is 2 + 3?"}]
    assert to_messages(PROMPTS[1]) == [{"role": "system", "content": "Answer briefly."},
                                       {"role": "user", "content": "Name a colour."}]
    assert to_messages(PROMPTS[2]) == [{"role": "user", "content": "你好"}]
    with pytest.raises(ValueError, match="end with a user message"):
        to_messages(json.dumps({"conversations": [{"role": "system", "content": "x"}]}))
    with pytest.raises(ValueError, match="'conversations' or 'prompt'"):
        to_messages(json.dumps({"text": "x"}))


def test_replies_become_sft_data_and_a_rerun_asks_only_new_prompts(server, tmp_path):
    prompts, out = tmp_path / "prompts.txt", tmp_path / "distilled.jsonl"
    write_lines(prompts, PROMPTS)
    assert run(prompts, out, server)["written"] == 3
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(r["conversations"][-2]["content"] for r in rows) == ["Name a colour.", "What is 2 + 3?", "你好"]
    assert all(r["conversations"][-1] == {"role": "assistant", "content": EXPECTED_REPLY} for r in rows)

    first = out.read_bytes()
    write_lines(prompts, ["A new question?", "What is 2 + 3?"])  # a prompt listed twice is answered twice
    assert run(prompts, out, server)["written"] == 2
    assert out.read_bytes().startswith(first)  # appended, nothing rewritten
    assert run(prompts, out, server)["written"] == 0  # all answered: nothing asked

    data = SFTDataset(str(out), load_tokenizer(TOKENIZER), 64)
    assert len(data) == 5
    learned = data[0]["labels"][data[0]["labels"] != IGNORE]
    assert load_tokenizer(TOKENIZER).decode(learned) == EXPECTED_REPLY + "<|im_end|>"  # the reply is learned


def test_a_line_cut_off_by_a_crash_is_dropped_and_its_prompt_asked_again(server, tmp_path):
    prompts, out = tmp_path / "prompts.txt", tmp_path / "distilled.jsonl"
    write_lines(prompts, PROMPTS)
    run(prompts, out, server)
    whole = out.read_bytes()
    out.write_bytes(whole[:-25])  # the last line lost its end
    assert run(prompts, out, server)["written"] == 1
    assert len(out.read_text(encoding="utf-8").splitlines()) == 3
    assert all(json.loads(line) for line in out.read_text(encoding="utf-8").splitlines())


def test_a_refused_prompt_is_skipped_and_the_rest_answered(server, tmp_path):
    prompts, out = tmp_path / "prompts.txt", tmp_path / "distilled.jsonl"
    write_lines(prompts, ["Short question?", "word " * 300])  # 300 tokens > the server's 128: a 400
    stats = run(prompts, out, server)
    assert stats["written"] == 1 and stats["rejected"] == 1


@pytest.mark.parametrize("model", [[], ["--model", "minimind"]])  # GET /models first, or straight to chat
def test_nothing_listening_retries_then_stops_with_a_clear_error(tmp_path, model):
    prompts = tmp_path / "prompts.txt"
    write_lines(prompts, PROMPTS)
    base_url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with pytest.raises(SystemExit) as stop:
        run(prompts, tmp_path / "out.jsonl", base_url, "--retries", "2", *model)
    message = str(stop.value)
    assert "APIConnectionError" in message and "still failing after 3 attempts" in message
    assert base_url in message


def test_retries_transient_errors_with_backoff_but_not_others():
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    attempts = []

    def flaky():
        attempts.append(time.time())
        if len(attempts) < 3:
            raise openai.APIConnectionError(request=request)
        return "ok"

    assert with_retries(flaky, retries=3, backoff=0.05) == "ok"
    assert len(attempts) == 3
    assert attempts[2] - attempts[1] > attempts[1] - attempts[0] > 0.02  # waits grow: ~0.05 s, then ~0.1 s

    bad_request = openai.BadRequestError("too long", response=httpx.Response(400, request=request), body=None)
    attempts.clear()

    def refused():
        attempts.append(time.time())
        raise bad_request

    with pytest.raises(openai.BadRequestError):
        with_retries(refused, retries=3, backoff=0.01)
    assert len(attempts) == 1  # a refusal is final: retrying would not change it
