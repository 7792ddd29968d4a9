"""What keeps one request from stalling the API server (the body cap, the prompts cap, tokenizing off the
event loop, refusing an over-long prompt before tokenizing it), the model names it answers to, and the
parameters of OpenAI's it does not implement: each refusal in OpenAI's error shape, naming the limit or the
parameter. A live server on a random tiny model, driven over HTTP."""
import json
import threading
import time

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from scripts.serve_openai_api import create_app
from tests.helpers import tiny_model, tokenizer
from tests.test_serve import USER, client, health, live_server, raw_post

MB = 2**20


@pytest.fixture(scope="module")
def server():
    """Bodies up to 3 MB, 64 prompts per completion request, a 2048-token context."""
    with live_server(tiny_model(), max_body_mb=3, max_prompts=64, max_seq_len=2048) as url:
        yield url


def check_error(response, status: int, code: str) -> dict:
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    return error


def test_a_body_over_the_cap_gets_a_413_before_it_is_read(server):
    url = server + "/v1/chat/completions"
    body = json.dumps({"messages": [{"role": "user", "content": "word " * 2_000_000}]}).encode()  # 10 MB
    start = time.perf_counter()
    response = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=60)
    assert "3 MB" in check_error(response, 413, "request_too_large")["message"]
    # refused by its Content-Length (a server that reads, parses and tokenizes it took 12 s for its 400 here)
    assert time.perf_counter() - start < 5

    sent = []

    def chunks():  # chunked, no Content-Length: the server counts while it reads
        for _ in range(1024):  # up to 64 MB
            sent.append(1)
            yield b" " * (64 * 1024)

    response = httpx.post(url, content=chunks(), headers={"Content-Type": "application/json"}, timeout=60)
    check_error(response, 413, "request_too_large")
    assert len(sent) < 512  # it stopped reading: 3 MB, plus what the sockets' buffers held
    assert health(server)["status"] == "ok"


def test_too_many_prompts_get_a_400_naming_the_limit(server):
    for prompt in (["hi"] * 65, [[5, 6]] * 65):
        status, answer = raw_post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 1})
        error = answer["error"]
        assert status == 400 and error["param"] == "prompt"
        assert "65 prompts, at most 64" in error["message"] and "--max_prompts" in error["message"]
    result = client(server).completions.create(model="tiny", prompt=["hi"] * 64, max_tokens=1, temperature=0)
    assert len(result.choices) == 64


def test_a_prompt_over_the_context_is_refused_before_it_is_tokenized(server):
    # 2 MB of text is over 2048 tokens whatever its tokens: no token is longer than the vocabulary's longest
    for path, body in (("/v1/chat/completions", {"messages": [{"role": "user", "content": "word " * 400_000}]}),
                       ("/v1/completions", {"prompt": "word " * 400_000})):
        status, answer = raw_post(server, path, body)
        assert status == 400 and answer["error"]["code"] == "context_length_exceeded"
        assert "you asked for at least" in answer["error"]["message"]


def test_health_answers_while_a_heavy_request_is_tokenized(server):
    # 64 prompts of 6,000 tokens (30 KB each: short enough that only tokenizing tells they are over the
    # context), so the server tokenizes 2 MB of text before it refuses them.
    body = {"prompt": ["word " * 6000] * 64, "max_tokens": 1}
    answers, latencies = [], []
    heavy = threading.Thread(target=lambda: answers.append(raw_post(server, "/v1/completions", body)))
    start = time.perf_counter()
    heavy.start()
    while heavy.is_alive():
        asked = time.perf_counter()
        health(server)
        latencies.append(time.perf_counter() - asked)
        time.sleep(0.02)
    took = time.perf_counter() - start
    status, answer = answers[0]
    assert status == 400 and answer["error"]["code"] == "context_length_exceeded"
    # Tokenizing on the event loop held /health for nearly the whole request (1.4 of 1.7 s on a 2-core machine);
    # in a worker thread, /health answers within a fraction of it.
    assert len(latencies) >= 3 and max(latencies) < took / 3, (took, latencies)


# ----------------------------------------------------------------------------------------------------------
# Model names


def test_an_unknown_model_gets_openais_404_and_the_alias_still_works(server):
    api = client(server)
    asks = (lambda name: api.chat.completions.create(model=name, messages=USER, max_tokens=2),
            lambda name: api.completions.create(model=name, prompt="hi", max_tokens=2))
    for ask in asks:
        with pytest.raises(openai.NotFoundError) as refused:
            ask("gpt-4")
        error = refused.value.body
        assert error["code"] == "model_not_found" and error["param"] == "model"
        assert "`gpt-4`" in error["message"] and "'tiny' or 'minimind'" in error["message"]
        for name in ("tiny", "minimind"):  # the served id, and the alias clients of this project send
            assert ask(name).choices[0].finish_reason == "length"
    assert [m.id for m in api.models.list().data] == ["tiny"]


def test_aliases_are_the_servers_choice():
    app = create_app(tiny_model(), tokenizer(), "tiny", model_aliases=("mini", "other"))
    with TestClient(app) as http:
        ask = {"messages": USER, "max_tokens": 1}
        assert http.post("/v1/chat/completions", json={**ask, "model": "other"}).status_code == 200
        error = check_error(http.post("/v1/chat/completions", json={**ask, "model": "minimind"}), 404,
                            "model_not_found")
        assert "'tiny' or 'mini' or 'other'" in error["message"]


# ----------------------------------------------------------------------------------------------------------
# OpenAI parameters the server does not implement


UNSUPPORTED = [  # (endpoint, parameter, a value that asks for what the server does not do)
    ("chat", "logit_bias", {"50": 10}),
    ("chat", "response_format", {"type": "json_object"}),
    ("chat", "functions", [{"name": "f", "parameters": {}}]),
    ("chat", "function_call", {"name": "f"}),
    ("chat", "audio", {"voice": "alloy", "format": "wav"}),
    ("chat", "modalities", ["text", "audio"]),
    ("chat", "prediction", {"type": "content", "content": "x"}),
    ("chat", "reasoning_effort", "low"),
    ("chat", "web_search_options", {}),
    ("completions", "echo", True),
    ("completions", "best_of", 3),
    ("completions", "suffix", "the end"),
    ("completions", "logit_bias", {"50": -100}),
]


@pytest.mark.parametrize("endpoint, name, value", UNSUPPORTED, ids=[f"{e}: {n}" for e, n, _ in UNSUPPORTED])
def test_an_unimplemented_parameter_gets_a_400_naming_it(server, endpoint, name, value):
    body = {"messages": USER} if endpoint == "chat" else {"prompt": "hi"}
    status, answer = raw_post(server, f"/v1/{endpoint.replace('chat', 'chat/completions')}",
                              {**body, "max_tokens": 2, name: value})
    error = answer["error"]
    assert status == 400 and error["param"] == name and error["code"] == "unsupported_parameter"
    assert error["message"].startswith(f"{name}: not supported by this server")


def test_values_that_ask_for_nothing_pass_through_the_official_client(server):
    api = client(server)
    chat = api.chat.completions.create(model="tiny", messages=USER, max_tokens=2, response_format={"type": "text"},
                                       logit_bias={}, user="someone", store=False, metadata={"run": "test"},
                                       modalities=["text"], extra_body={"an_extension": 1})
    assert chat.choices[0].finish_reason == "length"
    completion = api.completions.create(model="tiny", prompt="hi", max_tokens=2, n=2, best_of=2, echo=False,
                                        logit_bias={}, suffix=None, user="someone")
    assert [c.finish_reason for c in completion.choices] == ["length", "length"]
