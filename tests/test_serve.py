"""The continuous-batching engine, and the API server through the official `openai` client on localhost."""
import copy
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import openai
import pytest
import torch
import uvicorn

from model.chat import chat_prompt_ids
from model.serving import Engine, SamplingParams
from model.generation import generate
from scripts.serve_openai_api import create_app
from tests.helpers import THINKING_REPLY, scripted_model, tiny_model, tokenizer

KEY = "test-key"
USER = [{"role": "user", "content": "hi"}]


# ----------------------------------------------------------------------------------------------------------
# The engine, stepped by hand so batching is certain


def random_prompts(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 6000, (n,), generator=g).tolist() for n in lengths]


def run_engine(engine, submissions):
    """submissions: (step to submit at, prompt, params). Returns each request's tokens and finish reason."""
    results = [([], []) for _ in submissions]
    step = 0
    while step == 0 or engine.rows or engine.waiting or any(s >= step for s, _, _ in submissions):
        for i, (at, prompt, params) in enumerate(submissions):
            if at == step:
                engine.submit(prompt, params, lambda t, f, i=i: (results[i][0].append(t), results[i][1].append(f)))
        engine.step()
        step += 1
    return [(tokens, [f for f in finishes if f]) for tokens, finishes in results]


@pytest.mark.parametrize("use_moe", [False, True])
def test_engine_greedy_equals_the_models_own_generation_whoever_shares_the_batch(use_moe):
    model = tiny_model(use_moe=use_moe)
    prompts = random_prompts((12, 5, 30, 8, 17))
    engine = Engine(model, max_batch_size=3, eos_token_ids=[])  # 5 requests, 3 slots: some must wait
    greedy = SamplingParams(max_tokens=24, temperature=0)
    # One starts alone, the others join mid-flight, and the last ones only when slots free up.
    results = run_engine(engine, [(0, prompts[0], greedy)] + [(3, p, greedy) for p in prompts[1:]])
    for prompt, (tokens, finishes) in zip(prompts, results):
        alone = generate(model, torch.tensor([prompt]), max_new_tokens=24, do_sample=False, eos_token_id=[])
        assert tokens == alone[0, len(prompt):].tolist()
        assert finishes == ["length"]
    assert engine.stats == {"length": 5} and engine.cache is None  # all rows gone, cache released


def test_engine_seeded_sampling_is_the_same_alone_and_batched():
    model = tiny_model()
    prompts = random_prompts((9, 21, 4))
    params = [SamplingParams(max_tokens=16, temperature=0.9, top_p=0.9, top_k=50, repetition_penalty=1.2, seed=s)
              for s in (1, 2, 3)]
    alone = [run_engine(Engine(model), [(0, p, sp)])[0] for p, sp in zip(prompts, params)]
    together = run_engine(Engine(model), [(i, p, sp) for i, (p, sp) in enumerate(zip(prompts, params))])
    assert together == alone


def test_engine_stops_at_eos_and_drops_cancelled_requests():
    model = scripted_model()
    prompt = tokenizer().apply_chat_template(USER, add_generation_prompt=True)["input_ids"]
    engine = Engine(model, eos_token_ids=[tokenizer().eos_token_id])
    (tokens, finishes), = run_engine(engine, [(0, prompt, SamplingParams(max_tokens=100, temperature=0))])
    assert tokenizer().decode(tokens, skip_special_tokens=True) == THINKING_REPLY and finishes == ["stop"]

    request = engine.submit(prompt, SamplingParams(max_tokens=100, temperature=0), lambda t, f: None)
    engine.step()
    assert engine.load["running"] == 1
    request.cancel()
    engine.step()
    assert engine.load["running"] == 0 and engine.stats["cancelled"] == 1


# ----------------------------------------------------------------------------------------------------------
# A live server on a free localhost port, in a thread of this process


@contextmanager
def live_server(model, **kw):
    app = create_app(model, tokenizer(), "tiny", **kw)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def random_server():
    """A random tiny model: for batching, seeds, lengths, bad input. No API key."""
    with live_server(tiny_model(), max_batch_size=4, max_seq_len=2048) as url:
        yield url


@pytest.fixture(scope="module")
def scripted_server():
    """A model that always answers THINKING_REPLY + eos, behind an API key."""
    with live_server(scripted_model(), api_key=KEY) as url:
        yield url


def client(url, key="none"):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30)


def raw_post(url, path, body, key=None):
    """(status, parsed JSON) for any body, without a client that validates it first."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url + path, data, headers), timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def health(url):
    with urllib.request.urlopen(url + "/health", timeout=10) as response:
        return json.loads(response.read())


def chat_prompt_length(messages):
    return len(tokenizer().apply_chat_template(messages, add_generation_prompt=True)["input_ids"])


def test_chat_non_streaming_splits_reasoning_and_counts_usage(scripted_server):
    reply_tokens = len(tokenizer()(THINKING_REPLY, add_special_tokens=False)["input_ids"]) + 1  # + eos
    result = client(scripted_server, KEY).chat.completions.create(model="tiny", messages=USER, temperature=0)
    choice = result.choices[0]
    assert result.object == "chat.completion" and result.model == "tiny"
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    assert choice.message.content == "Yes 是的"
    assert choice.message.model_extra["reasoning_content"] == "I think so"
    assert result.usage.prompt_tokens == chat_prompt_length(USER)
    assert result.usage.completion_tokens == reply_tokens
    assert result.usage.total_tokens == result.usage.prompt_tokens + reply_tokens


def test_chat_streaming_in_openais_shape(scripted_server):
    stream = client(scripted_server, KEY).chat.completions.create(
        model="tiny", messages=USER, temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    *body, last_choice, usage = chunks
    deltas = [c.choices[0].delta for c in body]
    assert "".join(d.content or "" for d in deltas) == "Yes 是的"
    assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == "I think so"
    assert last_choice.choices[0].finish_reason == "stop"
    assert usage.choices == [] and usage.usage.prompt_tokens == chat_prompt_length(USER)

    # The wire format itself: SSE `data:` lines ending with [DONE].
    request = urllib.request.Request(scripted_server + "/v1/chat/completions", json.dumps(
        {"messages": USER, "stream": True}).encode(), {"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.read().decode().split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_finish_reason_length_and_stop_strings(scripted_server):
    api = client(scripted_server, KEY)
    short = api.chat.completions.create(model="tiny", messages=USER, temperature=0, max_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    assert short.choices[0].message.model_extra["reasoning_content"] == "I think"
    cut = api.chat.completions.create(model="tiny", messages=USER, temperature=0, stop=["是", "never"])
    assert cut.choices[0].message.content == "Yes" and cut.choices[0].finish_reason == "stop"
    streamed = api.chat.completions.create(model="tiny", messages=USER, temperature=0, stop="es", stream=True,
                                           max_completion_tokens=50)
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Y"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_api_key_is_required_when_set(scripted_server):
    with pytest.raises(openai.AuthenticationError) as e:
        client(scripted_server, "wrong").chat.completions.create(model="tiny", messages=USER)
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    status, body = raw_post(scripted_server, "/v1/chat/completions", {"messages": USER})  # no key at all
    assert status == 401 and body["error"]["type"] == "invalid_request_error"
    assert client(scripted_server, KEY).models.list().data[0].id == "tiny"
    assert health(scripted_server)["status"] == "ok"  # health checks need no key
    for header in (f"bearer {KEY}", f"BEARER {KEY}"):  # the scheme is case-insensitive; the key is not
        request = urllib.request.Request(scripted_server + "/v1/models", headers={"Authorization": header})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
    for header in (f"Bearer {KEY.upper()}", f"Basic {KEY}", KEY):
        request = urllib.request.Request(scripted_server + "/v1/models", headers={"Authorization": header})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401


def test_limits_are_named_in_the_error(random_server):
    status, body = raw_post(random_server, "/v1/chat/completions",
                            {"messages": USER, "stop": ["a", "b", "c", "d", "e"]})
    assert status == 400 and "at most 4 stop sequences, got 5" in body["error"]["message"]
    assert body["error"]["param"] == "stop"
    status, body = raw_post(random_server, "/v1/chat/completions", {"messages": USER, "repetition_penalty": 1e-300})
    assert status == 400 and body["error"]["param"] == "repetition_penalty"


def test_completions_and_models(random_server):
    api = client(random_server)
    assert [m.id for m in api.models.list().data] == ["tiny"]
    result = api.completions.create(model="tiny", prompt="Once upon a time", max_tokens=20, temperature=0)
    text = result.choices[0].text
    assert result.object == "text_completion" and result.choices[0].finish_reason == "length"
    assert result.usage.prompt_tokens == 1 + len(tokenizer()("Once upon a time", add_special_tokens=False)["input_ids"])
    assert result.usage.completion_tokens == 20
    stop = text[len(text) // 2:len(text) // 2 + 2]
    cut = api.completions.create(model="tiny", prompt="Once upon a time", max_tokens=20, temperature=0, stop=stop)
    assert cut.choices[0].text == text[:text.index(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = api.completions.create(model="tiny", prompt="Once upon a time", max_tokens=20, temperature=0,
                                      stream=True)
    assert "".join(c.choices[0].text for c in streamed) == text


def test_seed_reproducibility_and_n(random_server):
    api = client(random_server)

    def sample(seed, n=1):
        result = api.chat.completions.create(model="tiny", messages=USER, max_tokens=16, temperature=1.0,
                                             seed=seed, n=n)
        return [c.message.content for c in result.choices]

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)
    three = sample(7, n=3)
    assert len(three) == 3 and three[0] == sample(7)[0] and len(set(three)) == 3


def test_concurrent_greedy_requests_equal_their_runs_alone(random_server):
    api = client(random_server)
    questions = ["hi", "What is 17 + 25?", "讲一个很长很长的故事吧，越长越好", "ok", "Why is the sky blue?", "你好"]

    def ask(question):
        result = api.chat.completions.create(model="tiny", messages=[{"role": "user", "content": question}],
                                             max_tokens=40, temperature=0)
        return result.choices[0].message.content

    alone = [ask(q) for q in questions]
    with ThreadPoolExecutor(len(questions)) as pool:
        together = list(pool.map(ask, questions))
    assert together == alone


def settled_health(url, cancelled_at_least=0):
    """/health once no request runs (and at least this many were cancelled): the engine retires a finished
    row just after handing out its last token, so a client can see its reply a moment before that."""
    deadline = time.time() + 10
    while True:
        state = health(url)
        done = state["running"] == 0 and state["finished"].get("cancelled", 0) >= cancelled_at_least
        if done or time.time() > deadline:
            return state
        time.sleep(0.05)


def test_client_disconnect_frees_its_slot(random_server):
    before = health(random_server)["finished"].get("cancelled", 0)
    stream = client(random_server).chat.completions.create(model="tiny", messages=USER, max_tokens=2000,
                                                           temperature=0, stream=True)
    for _, chunk in zip(range(3), stream):
        pass
    stream.close()  # the client goes away mid-stream
    state = settled_health(random_server, cancelled_at_least=before + 1)
    assert state["finished"].get("cancelled", 0) == before + 1 and state["running"] == 0


LONG = "word " * 2100  # more tokens than the server's 2048-token context
BAD_CHAT = {
    "malformed JSON": b'{"messages": [{"role": "user", "content": "hi"}',
    "not an object": b"[1, 2]",
    "missing messages": {"model": "tiny"},
    "empty messages": {"messages": []},
    "messages not a list": {"messages": "hi"},
    "unknown role": {"messages": [{"role": "robot", "content": "hi"}]},
    "content not text": {"messages": [{"role": "user", "content": 5}]},
    "image content": {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
    "negative max_tokens": {"messages": USER, "max_tokens": -5},
    "zero max_tokens": {"messages": USER, "max_completion_tokens": 0},
    "absurd max_tokens": {"messages": USER, "max_tokens": 10 ** 12},
    "max_tokens as text": {"messages": USER, "max_tokens": "10"},
    "prompt over the context": {"messages": [{"role": "user", "content": LONG}]},
    "negative temperature": {"messages": USER, "temperature": -1},
    "hot temperature": {"messages": USER, "temperature": 2.5},
    "temperature as text": {"messages": USER, "temperature": "0.5"},
    "top_p above 1": {"messages": USER, "top_p": 1.5},
    "n zero": {"messages": USER, "n": 0},
    "n above the batch": {"messages": USER, "n": 50},
    "stop not text": {"messages": USER, "stop": 5},
    "too many stops": {"messages": USER, "stop": ["a", "b", "c", "d", "e"]},
    "repetition_penalty near zero": {"messages": USER, "repetition_penalty": 1e-300},
    "repetition_penalty huge": {"messages": USER, "repetition_penalty": 100},
    "seed not a number": {"messages": USER, "seed": "x"},
    "stream not a bool": {"messages": USER, "stream": "yes"},
    "frequency_penalty above 2": {"messages": USER, "frequency_penalty": 2.5},
    "presence_penalty below -2": {"messages": USER, "presence_penalty": -3},
    "top_logprobs above 20": {"messages": USER, "logprobs": True, "top_logprobs": 21},
    "top_logprobs without logprobs": {"messages": USER, "top_logprobs": 2},
}
BAD_COMPLETION = {
    "missing prompt": {"max_tokens": 5},
    "prompt not text": {"prompt": 5},
    "empty prompt list": {"prompt": []},
    "prompt over the context": {"prompt": LONG},
}


@pytest.mark.parametrize("path, body", [("/v1/chat/completions", b) for b in BAD_CHAT.values()]
                         + [("/v1/completions", b) for b in BAD_COMPLETION.values()],
                         ids=[f"chat: {k}" for k in BAD_CHAT] + [f"completions: {k}" for k in BAD_COMPLETION])
def test_bad_input_gets_a_4xx_in_openais_error_shape(random_server, path, body):
    status, answer = raw_post(random_server, path, body)
    assert status == 400
    error = answer["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"] and error["type"] == "invalid_request_error"


def test_server_still_answers_after_bad_input(random_server):
    for body in BAD_CHAT.values():
        raw_post(random_server, "/v1/chat/completions", body)
    result = client(random_server).chat.completions.create(model="tiny", messages=USER, max_tokens=5)
    assert result.choices[0].finish_reason == "length"
    assert settled_health(random_server)["running"] == 0
    context = raw_post(random_server, "/v1/chat/completions", BAD_CHAT["prompt over the context"])[1]["error"]
    assert context["code"] == "context_length_exceeded" and "2048" in context["message"]


# ----------------------------------------------------------------------------------------------------------
# Log-probs and penalties, against decoding written out plainly in float64


def reference_greedy(model, prompt, max_tokens, frequency_penalty=0.0, presence_penalty=0.0):
    """Greedy tokens by a full forward per token in float64, OpenAI's penalties on the counts of the tokens
    generated so far, until eos or max_tokens; and each step's log_softmax of the model's own logits."""
    model = copy.deepcopy(model).double()
    ids, tokens, logps = list(prompt), [], []
    counts = torch.zeros(model.config.vocab_size, dtype=torch.float64)
    with torch.no_grad():
        while len(tokens) < max_tokens and tokenizer().eos_token_id not in tokens:
            logits = model(torch.tensor([ids])).logits[0, -1]
            logps.append(logits.log_softmax(-1))
            token = int((logits - counts * frequency_penalty - (counts > 0) * presence_penalty).argmax())
            tokens.append(token)
            ids.append(token)
            counts[token] += 1
    return tokens, logps


def test_chat_logprobs_equal_a_float64_reference(random_server):
    tokens, logps = reference_greedy(tiny_model(), chat_prompt_ids(tokenizer(), USER), 8)  # random_server's model
    api = client(random_server)
    ask = dict(model="tiny", messages=USER, max_tokens=8, temperature=0, logprobs=True, top_logprobs=5)
    result = api.chat.completions.create(**ask)
    content = result.choices[0].logprobs.content  # parsed by the client into its types
    assert len(content) == len(tokens) == result.usage.completion_tokens
    for entry, token, logp in zip(content, tokens, logps):
        assert entry.token == tokenizer().decode([token])
        assert entry.logprob == pytest.approx(logp[token].item(), abs=1e-4)
        values, ids = logp.topk(5)
        assert [alt.token for alt in entry.top_logprobs] == [tokenizer().decode([i]) for i in ids.tolist()]
        assert [alt.logprob for alt in entry.top_logprobs] == pytest.approx(values.tolist(), abs=1e-4)
    # a character may span tokens: the bytes join into the reply's text
    assert bytes(b for entry in content for b in entry.bytes).decode(errors="replace") == tokenizer().decode(tokens)
    # streamed, each chunk carries the log-probs of its own tokens
    chunks = api.chat.completions.create(**ask, stream=True)
    streamed = [entry for chunk in chunks for c in chunk.choices if c.logprobs for entry in c.logprobs.content]
    assert [e.model_dump() for e in streamed] == [e.model_dump() for e in content]
    plain = api.chat.completions.create(**{**ask, "logprobs": None, "top_logprobs": None})
    assert plain.choices[0].logprobs is None and plain.choices[0].message.content == result.choices[0].message.content


@pytest.fixture(scope="module")
def repetitive_server():
    """A random model with tied embeddings: greedy, it repeats one token, unless penalised."""
    with live_server(tiny_model(tie_word_embeddings=True)) as url:
        yield url


def test_frequency_and_presence_penalties_equal_a_reference_loop(repetitive_server):
    prompt = chat_prompt_ids(tokenizer(), USER)
    settings = [{}, {"frequency_penalty": 0.5}, {"presence_penalty": 1.0},
                {"frequency_penalty": 0.3, "presence_penalty": -0.2}]
    expected = [reference_greedy(tiny_model(tie_word_embeddings=True), prompt, 12, **s)[0] for s in settings]
    assert len(set(map(tuple, expected))) == len(settings)  # each penalty changes the reply
    api = client(repetitive_server)

    def completion(penalties):  # token ids in and out
        result = api.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0, logprobs=0,
                                        extra_body={"return_tokens_as_token_ids": True}, **penalties)
        return [int(t.removeprefix("token_id:")) for t in result.choices[0].logprobs.tokens]

    def chat(penalties):
        result = api.chat.completions.create(model="tiny", messages=USER, max_tokens=12, temperature=0,
                                             logprobs=True, **penalties)
        return [entry.token for entry in result.choices[0].logprobs.content]

    with ThreadPoolExecutor(2 * len(settings)) as pool:  # all at once: rows with other penalties share the batch
        completions, chats = pool.map(completion, settings), pool.map(chat, settings)
        assert list(completions) == expected
        assert list(chats) == [[tokenizer().decode([t]) for t in tokens] for tokens in expected]
