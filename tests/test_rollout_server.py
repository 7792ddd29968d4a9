"""The API server as an RL rollout backend: token-id prompts, the sampled tokens' log-probs, and the weight
hand-over, driven by `model.rollout.ServerRollout` in process (FastAPI's TestClient is an httpx.Client)."""
import threading

import pytest
import torch
from fastapi.testclient import TestClient

from model.chat import chat_prompt_ids
from model.generation import generate
from model.rollout import ServerRollout
from model.serving import Engine
from scripts.serve_openai_api import create_app
from tests.helpers import THINKING_REPLY, scripted_model, tiny_model, tokenizer

KEY = "test-key"
EOS = tokenizer().eos_token_id  # the tiny models' config says the same
PROMPTS = [[5, 17, 300, 42], list(range(100, 120))]


def serve(model, api_key=None) -> TestClient:
    """The app around `model`; entering the client runs its lifespan, so the engine thread runs."""
    return TestClient(create_app(model, tokenizer(), "tiny", api_key=api_key))


def rollout_on(client, api_key=None, **sampling) -> ServerRollout:
    return ServerRollout("http://testserver/v1", client=client, model="tiny", api_key=api_key, **sampling)


def check_logprobs_and_eos(model, rollout, temperature):
    """Each completion's log-probs are log_softmax(logits / T) of a plain forward over prompt + completion at
    the sampled tokens (so each completion also came from the prompt it is grouped with), and a completion
    ends with eos exactly when it finished."""
    for prompt, completion, logprobs, finished in zip(rollout.prompt_ids, rollout.completion_ids, rollout.logprobs,
                                                      rollout.finished):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1:-1].float()
        expected = (logits / temperature).log_softmax(-1).gather(-1, torch.tensor(completion)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(logprobs), expected, atol=1e-4, rtol=0)
        assert finished == (completion[-1] == EOS) and EOS not in completion[:-1]


def test_server_rollout_gets_the_policys_logprobs_grouped_by_prompt():
    model = tiny_model()
    with serve(model) as client:
        rollout = rollout_on(client, max_new_tokens=12, temperature=0.7)
        result = rollout(PROMPTS, group_size=3, step=0)
        assert rollout(PROMPTS, group_size=3, step=0).completion_ids == result.completion_ids  # seeded by step
        assert rollout(PROMPTS, group_size=3, step=1).completion_ids != result.completion_ids
    assert result.prompt_ids == [p for p in PROMPTS for _ in range(3)]
    assert all(len({tuple(c) for c in result.completion_ids[g:g + 3]}) == 3 for g in (0, 3))  # samples differ
    check_logprobs_and_eos(model, result, temperature=0.7)


def test_server_rollout_completions_that_stop_end_with_eos():
    model = scripted_model()  # answers any chat prompt with THINKING_REPLY + eos, all but surely when sampling
    prompts = [chat_prompt_ids(tokenizer(), [{"role": "user", "content": q}]) for q in ("hi", "你好")]
    with serve(model) as client:
        result = rollout_on(client, max_new_tokens=64)(prompts, group_size=2, step=0)
    assert all(result.finished)
    assert all(tokenizer().decode(c, skip_special_tokens=True) == THINKING_REPLY for c in result.completion_ids)
    check_logprobs_and_eos(model, result, temperature=1.0)


def test_completion_logprobs_tokens_are_text_pieces_or_ids():
    body = {"prompt": PROMPTS, "max_tokens": 10, "temperature": 0.8, "seed": 3, "logprobs": 1}
    with serve(tiny_model()) as client:
        as_text = client.post("/v1/completions", json=body).json()["choices"]
        as_ids = client.post("/v1/completions", json={**body, "return_tokens_as_token_ids": True}).json()["choices"]
    assert len(as_text) == len(as_ids) == 2
    for text_choice, ids_choice in zip(as_text, as_ids):
        pieces, ids = text_choice["logprobs"]["tokens"], ids_choice["logprobs"]["tokens"]
        assert "".join(pieces) == text_choice["text"] == ids_choice["text"]
        assert text_choice["logprobs"]["text_offset"] == [len("".join(pieces[:k])) for k in range(len(pieces))]
        assert len(ids) == 10 and all(t.startswith("token_id:") for t in ids)
        assert tokenizer().decode([int(t.removeprefix("token_id:")) for t in ids]) == text_choice["text"]
        assert text_choice["logprobs"]["token_logprobs"] == ids_choice["logprobs"]["token_logprobs"]
        assert text_choice["logprobs"]["top_logprobs"] is None


def test_completion_logprobs_with_a_stop_string_cover_the_tokens_generated():
    prompt = chat_prompt_ids(tokenizer(), [{"role": "user", "content": "hi"}])
    body = {"prompt": prompt, "max_tokens": 64, "temperature": 0, "stop": "是", "logprobs": 0}
    with serve(scripted_model()) as client:
        choice, = client.post("/v1/completions", json=body).json()["choices"]
    tokens, logprobs = choice["logprobs"]["tokens"], choice["logprobs"]["token_logprobs"]
    assert choice["finish_reason"] == "stop" and choice["text"] == THINKING_REPLY[:THINKING_REPLY.index("是")]
    assert "".join(tokens).startswith(choice["text"] + "是") and len(logprobs) == len(tokens)


@pytest.mark.parametrize("body", [
    {"prompt": [5, 6400]},  # the tiny vocabulary is 6400
    {"prompt": [[5, 6], [-1]]},
    {"prompt": [[5, 6], []]},
    {"prompt": [5, "a"]},
    {"prompt": [5, True]},
    {"prompt": [5], "logprobs": 2},  # top_logprobs alternatives: not offered
    {"prompt": [5], "logprobs": 1, "stream": True},
], ids=["id past the vocabulary", "negative id", "empty id list", "ids and text", "bool id", "logprobs 2",
        "logprobs streamed"])
def test_bad_prompts_and_logprobs_get_a_400(body):
    with serve(tiny_model()) as client:
        response = client.post("/v1/completions", json={"max_tokens": 2, **body})
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"].split(".")[0] in ("prompt", "logprobs")


def greedy(rollout) -> list[list[int]]:
    return rollout(PROMPTS, group_size=1, step=0).completion_ids


def test_update_weights_from_disk_serves_the_new_weights_and_refuses_bad_files(tmp_path):
    new = tiny_model(seed=1)
    torch.save(new.state_dict(), tmp_path / "policy.pth")
    torch.save(tiny_model(hidden_size=32).state_dict(), tmp_path / "other_size.pth")
    torch.save([1, 2, 3], tmp_path / "a_list.pth")
    with serve(tiny_model()) as client:
        rollout = rollout_on(client, max_new_tokens=8, temperature=0.0)
        before = greedy(rollout)
        for name, problem in (("missing.pth", "no such"), ("a_list.pth", "state dict"), ("other_size.pth", "shape")):
            response = client.post("/update_weights_from_disk", json={"model_path": str(tmp_path / name)})
            message = response.json()["error"]["message"]
            assert response.status_code == 400 and name in message and problem in message and "\n" not in message
        assert greedy(rollout) == before  # a refused file leaves the served weights alone
        rollout.load_weights(str(tmp_path / "policy.pth"))
        after = greedy(rollout)
    expected = [generate(new, torch.tensor([p]), max_new_tokens=8, do_sample=False, eos_token_id=EOS)[0, len(p):]
                .tolist() for p in PROMPTS]
    assert after == expected != before


def test_update_weights_of_an_int8_server_is_a_400_not_a_500(tmp_path):
    from model.quant import quantize_int8
    torch.save(tiny_model(seed=1).state_dict(), tmp_path / "policy.pth")
    with serve(quantize_int8(tiny_model())) as client:
        response = client.post("/update_weights_from_disk", json={"model_path": str(tmp_path / "policy.pth")})
    assert response.status_code == 400 and "--quantize int8" in response.json()["error"]["message"]


def test_update_weights_needs_the_api_key(tmp_path):
    path = str(tmp_path / "policy.pth")
    torch.save(tiny_model(seed=1).state_dict(), path)
    with serve(tiny_model(), api_key=KEY) as client:
        assert client.post("/update_weights_from_disk", json={"model_path": path}).status_code == 401
        rollout_on(client, api_key=KEY, max_new_tokens=4).load_weights(path)  # raises unless 200


def test_engine_call_runs_on_the_engine_thread_or_here():
    engine = Engine(tiny_model())
    assert engine.call(threading.current_thread) is threading.current_thread()  # not started: runs here
    engine.start()
    try:
        assert engine.call(lambda: threading.current_thread().name) == "minimind-engine"
        with pytest.raises(ZeroDivisionError):
            engine.call(lambda: 1 / 0)
    finally:
        engine.stop()
    assert engine.call(lambda: 7) == 7
