"""An OpenAI-compatible API server for MiniMind, with continuous batching (model/serving.py).

    python scripts/serve_openai_api.py --model_mode 1                 # out/full_sft_512.pth
    python scripts/serve_openai_api.py --load_from out/minimind-hf --api_key secret --port 8998

Endpoints: POST /v1/chat/completions, POST /v1/completions (streaming SSE or not), GET /v1/models, GET /health,
POST /update_weights_from_disk.
Any OpenAI client works against it:

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8998/v1", api_key="secret")
    client.chat.completions.create(model="minimind", messages=[{"role": "user", "content": "你好"}])

`model` must be the served id (--model_name, default the checkpoint's file name, as /v1/models reports it)
or an alias (--model_alias, default "minimind"); any other name gets OpenAI's 404 `model_not_found`.
Replies of reasoning models come as `content` (the answer) and `reasoning_content` (the <think> part), the
field DeepSeek's API and vLLM use. Bad requests get a 4xx with OpenAI's error object, never a 500; so does a
parameter of OpenAI's that the server does not implement (`logit_bias`, `response_format` other than text,
`echo`, `best_of` other than n, `suffix`...), unless its value asks for nothing. `frequency_penalty` and
`presence_penalty` are OpenAI's (on the counts of the tokens generated so far); `top_k` and
`repetition_penalty` are accepted as extensions (vLLM's names).

Chat `logprobs: true` (+ `top_logprobs`: 0..20) returns OpenAI's `logprobs.content`, each token with its
bytes, streamed too (each chunk carries its own tokens'). /v1/completions has the legacy form, the sampled
token's log-prob only (`logprobs` 0 or 1, not with `stream`). Both cover every generated token (eos included
when the reply stopped on it), log-probs of the model's distribution under the temperature (greedy: the raw
one), before penalties and top-k/top-p.

One request cannot stall the others: a body over --max_body_mb gets a 413 before it is read, a completion
request takes at most --max_prompts prompts, a prompt longer than the context is refused before it is
tokenized when its size alone shows it, and parsing and tokenizing run off the event loop.

Tool use is OpenAI's function calling: `tools` are listed in the prompt by the chat template, and the model's
<tool_call> blocks (model/toolcall.py, the one parser) come back as `message.tool_calls` with finish_reason
"tool_calls"; `tool` messages and assistant messages with `tool_calls` render back into the prompt. A block
that is not a valid call of an offered function stays in `content` as text. `tool_choice`: "auto" (the
default with tools), "none" (tools shown, replies not parsed), "required" or a named function: the server
writes the start of the call itself (see `read_tool_choice`), since a small model may not choose to.
`parallel_tool_calls: false` ends the reply at its first call.

Images (a MiniMind-V checkpoint, e.g. `--load_from out/sft_vlm_512.pth`): user messages take OpenAI's content
parts, `{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}` beside `{"type": "text", ...}`
parts, any number per message. Each image takes the model's image slots in the prompt (196 tokens for a
ViT-B/16 encoder; they count in `usage.prompt_tokens`), followed by a newline when more of the message follows
(model/chat.py's `image_chat_prompt_ids`): no text a client sends, `<image>` included, can become a slot. The
server reads images only from base64 `data:` URLs (png, jpeg, webp, gif...: whatever Pillow decodes, up to
MAX_IMAGE_PIXELS): it never fetches an http(s) URL for a client, which would let anyone make it reach any
address, and says so with a 400. A bad data URL or an image that does not decode is a 400 naming the message and
part (`messages.1.content.0`); an image sent to a text-only model, or with speculative decoding, is a 400. Base64
grows an image by 4/3: a 224x224 PNG takes at most ~200 KB of the 4 MB default --max_body_mb, a 1024x1024 photo
as JPEG ~0.5 MB. Each request's images go to its own prefill in the batching engine; decoding stays batched.

RL hand-over (model/rollout.py's ServerRollout, or any trainer written for vLLM/SGLang): /v1/completions takes
token-id prompts and returns each sampled token's log-prob (`logprobs: 1`, `return_tokens_as_token_ids`). After
each optimizer step the trainer saves the policy and POSTs {"model_path": ...} to /update_weights_from_disk
(SGLang's endpoint, at the root, behind the API key): the weights change between two decode steps, and
requests in flight go on with the new ones.
"""
import argparse
import asyncio
import base64
import binascii
import hmac
import io
import itertools
import json
import os
import re
import sys
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # for `python scripts/<name>.py`: the packages sit beside scripts/
from model.chat import (Delta, IncrementalDetokenizer, ReplyStream, add_model_args, chat_prompt_ids, content_text,
                        image_chat_prompt_ids, image_part, is_vision_model, load_drafter, text_prompt_ids)
from model.checkpoint import CheckpointError, load_weights, read_state_dict
from model.quant import is_quantized
from model.serving import Engine, SamplingParams
from model.vision import VisionError, load_image_processor, load_images, pixel_values
from model.toolcall import CALL_OPEN, normalize_messages

DISCONNECT_POLL_S = 0.5  # how often a non-streaming request checks that its client is still there
# Pixels per image at most: the encoder sees 224x224 whatever comes, and a few KB of PNG can declare a canvas of
# gigabytes (a decompression bomb). 4096x4096 takes a 12-megapixel phone photo.
MAX_IMAGE_PIXELS = 4096 * 4096


# ----------------------------------------------------------------------------------------------------------
# Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                       "code": self.code}}, status_code=self.status, headers=self.headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, or a 413 as soon as it is known to be over `limit` bytes: by its Content-Length before a byte
    is read, or while a chunked one arrives. A huge body then costs neither time nor memory."""
    declared = request.headers.get("content-length", "")
    size, chunks = int(declared) if declared.isdigit() else 0, []
    if size <= limit:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                break
            chunks.append(chunk)
    if size > limit:
        # Connection: close, or the server would read the rest of the body to keep the connection alive
        raise ApiError(413, f"The request body is larger than this server's limit of {limit / 2**20:g} MB "
                            "(--max_body_mb; base64 images count 4/3 of their file size).", code="request_too_large",
                       headers={"Connection": "close"})
    return b"".join(chunks)


async def parse_body(request: Request, schema: type["Strict"]):
    """The JSON body checked against `schema`, whatever Content-Type the client sent (curl -d sends a form's).
    Parsed in a worker thread, so a large body does not hold up the event loop."""
    body = await read_body(request, state_of(request).max_body_bytes)
    return await asyncio.to_thread(validate, schema, body)


def validate(schema: type["Strict"], body: bytes):
    """Pydantic's list of problems becomes OpenAI's 400 about the first one."""
    try:
        return schema.model_validate_json(body)
    except ValidationError as e:
        first = e.errors()[0]
        if first["type"] == "json_invalid":
            raise ApiError(400, f"We could not parse the JSON body of your request: {first['msg']}") from None
        param = ".".join(str(part) for part in first["loc"]) or None
        raise ApiError(400, f"{param or 'body'}: {first['msg']}", param=param, code=first["type"]) from None


def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return ApiError(exc.status_code, str(exc.detail), kind="not_found_error" if exc.status_code == 404
                    else "invalid_request_error").response()


# ----------------------------------------------------------------------------------------------------------
# Request bodies. Strict: "0.5" is not a number and 1 is not a string, as in OpenAI's API.


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


def harmless_only(accepts: str = "null", harmless=lambda value: False) -> AfterValidator:
    """For an OpenAI parameter this server does not implement: taken with null or a value that asks for
    nothing (clients send some by default), a 400 naming it for any other. Names OpenAI does not have are
    ignored, as vLLM does."""
    def check(value):
        if value is not None and not harmless(value):
            raise PydanticCustomError("unsupported_parameter", "not supported by this server, which accepts {accepts}",
                                      {"accepts": accepts})
        return value
    return AfterValidator(check)


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ImageURL(Strict):
    url: str  # a base64 data: URL; checked when the request is prepared (chat_images), where the model is known
    detail: Literal["auto", "low", "high"] | None = None  # accepted; the encoder sees one size whatever it says


class ImagePart(Strict):
    type: Literal["image_url"]
    image_url: ImageURL


PART_TYPES = {"text": TextPart, "image_url": ImagePart}


def content_part(k: int, part: dict):
    """Part k of a message's content as its type's model. Checked here rather than by a pydantic union, whose
    errors would name its branches (`content.str`, `list[tagged-union[...]]`) instead of what was sent."""
    kind = PART_TYPES.get(part.get("type"))
    if kind is None:
        raise PydanticCustomError("content_part", "part {k}: type {type} is not one this server takes ('text' "
                                  "or 'image_url')", {"k": k, "type": repr(part.get("type"))})
    try:
        return kind.model_validate(part)
    except ValidationError as e:
        first = e.errors()[0]
        raise PydanticCustomError("content_part", "part {k}: {where}: {msg}", {
            "k": k, "where": ".".join(map(str, first["loc"])) or "part", "msg": first["msg"]}) from None


class FunctionCall(Strict):
    name: str
    arguments: str  # a JSON object as text, as OpenAI sends it; the template writes it into the call as is


class ToolCallIn(Strict):
    """A call of an earlier assistant turn, as the client sends it back."""
    id: str
    type: Literal["function"]
    function: FunctionCall


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict] | None = None  # a list: TextPart and ImagePart objects once validated
    tool_calls: list[ToolCallIn] | None = None  # assistant
    tool_call_id: str | None = None  # tool: which call this result answers (the template does not show it)

    @field_validator("content")
    @classmethod
    def content_parts(cls, content):
        return [content_part(k, part) for k, part in enumerate(content)] if isinstance(content, list) else content

    @model_validator(mode="after")
    def fields_of_the_role(self):
        # OpenAI's rules: only an assistant turn may go without content, and then it must hold calls.
        if self.content is None and self.role == "assistant" and not self.tool_calls:
            raise ValueError("an assistant message needs content or tool_calls")
        if self.content is None and self.role != "assistant":
            raise ValueError(f"content is required in {self.role} messages")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages have tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        if self.role != "user" and self.images():
            raise ValueError("image_url parts go in user messages only")
        return self

    def images(self) -> list[tuple[int, str]]:
        """(part index, url) of each image part."""
        parts = self.content if isinstance(self.content, list) else []
        return [(j, part.image_url.url) for j, part in enumerate(parts) if part.type == "image_url"]

    def as_template_dict(self, index: int) -> dict:
        """For `normalize_messages`, which turns content None into "" and leaves the calls to the template.
        Text parts join into one text; with images the content stays a list of parts for
        `image_chat_prompt_ids`, each image as (where it is: `messages.<index>.content.<part>`, its url)."""
        content = self.content
        if isinstance(content, list) and self.images():
            content = [{"type": "text", "text": p.text} if p.type == "text"
                       else image_part((f"messages.{index}.content.{j}", p.image_url.url))
                       for j, p in enumerate(content)]
        elif isinstance(content, list):
            content = "".join(p.text for p in content)
        message = {"role": "system" if self.role == "developer" else self.role, "content": content}
        if self.tool_calls:
            message["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        return message


class FunctionDef(Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]  # OpenAI's rule for function names
    description: str | None = None
    parameters: dict | None = None  # a JSON Schema, shown to the model as given


class Tool(Strict):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(Strict):
    name: str


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: FunctionName


class StreamOptions(Strict):
    include_usage: bool = False


class GenerationFields(Strict):
    """What both endpoints accept. None means the default (clients may send null)."""
    model: str | None = None
    max_tokens: Annotated[int | None, Field(ge=1)] = None
    temperature: Annotated[float | None, Field(ge=0, le=2)] = None
    top_p: Annotated[float | None, Field(ge=0, le=1)] = None
    top_k: Annotated[int | None, Field(ge=0)] = None
    # Seen tokens' logits are divided (or multiplied) by it: 1e-300 turned them into inf and emptied the reply.
    repetition_penalty: Annotated[float | None, Field(ge=0.5, le=2)] = None
    frequency_penalty: Annotated[float | None, Field(ge=-2, le=2)] = None
    presence_penalty: Annotated[float | None, Field(ge=-2, le=2)] = None
    logit_bias: Annotated[Any, harmless_only("null or {}", lambda v: v == {})] = None
    stop: str | list[str] | None = None

    @field_validator("stop")
    @classmethod
    def at_most_four_stops(cls, stop):
        if isinstance(stop, list) and len(stop) > 4:  # said here: as a union, pydantic would blame the str form
            raise ValueError(f"at most 4 stop sequences, got {len(stop)}")
        return stop
    seed: Annotated[int | None, Field(ge=-2**63, lt=2**64)] = None
    n: Annotated[int | None, Field(ge=1, le=128)] = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None


class ChatRequest(GenerationFields):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int | None, Field(ge=1)] = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int | None, Field(ge=0, le=20)] = None
    response_format: Annotated[Any, harmless_only('null or {"type": "text"}',
                                                  lambda v: v == {"type": "text"})] = None
    modalities: Annotated[Any, harmless_only('null or ["text"]', lambda v: v == ["text"])] = None
    functions: Annotated[Any, harmless_only("null or [] (use tools)", lambda v: v == [])] = None
    function_call: Annotated[Any, harmless_only('null, "none" or "auto" (use tool_choice)',
                                                lambda v: v in ("none", "auto"))] = None
    audio: Annotated[Any, harmless_only()] = None
    prediction: Annotated[Any, harmless_only()] = None
    reasoning_effort: Annotated[Any, harmless_only()] = None
    web_search_options: Annotated[Any, harmless_only()] = None

    @field_validator("top_logprobs")
    @classmethod
    def top_logprobs_need_logprobs(cls, top, info: ValidationInfo):
        if top and not info.data.get("logprobs"):
            raise ValueError("needs logprobs: true")
        return top


class CompletionRequest(GenerationFields):
    # OpenAI's four forms: a text, texts, token ids, lists of token ids (emptiness and ids checked later)
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: Annotated[int | None, Field(ge=0, le=5)] = None
    return_tokens_as_token_ids: bool | None = None  # vLLM's extension: logprobs tokens as "token_id:<id>"
    echo: Annotated[Any, harmless_only("null or false", lambda v: v is False)] = None
    suffix: Annotated[Any, harmless_only('null or ""', lambda v: v == "")] = None
    best_of: int | None = None

    @field_validator("best_of")
    @classmethod
    def best_of_is_n(cls, best_of, info: ValidationInfo):
        n = info.data.get("n") or 1
        if best_of is not None and best_of != n:
            # best_of > n would rank candidates by log-prob, which this server does not do
            raise PydanticCustomError("unsupported_parameter", "not supported by this server, which accepts null "
                                      "or best_of = n ({n})", {"n": n})
        return best_of


class WeightsRequest(Strict):
    model_path: str


# ----------------------------------------------------------------------------------------------------------
# One API call on the engine


@dataclass
class ServerState:
    engine: Engine
    tokenizer: object
    model_name: str  # the id /v1/models reports
    model_aliases: tuple[str, ...]  # other names a request may use
    max_seq_len: int
    token_bytes: list[bytes]  # each token id's bytes
    max_body_bytes: int
    max_prompts: int
    api_key: str | None = None
    image_processor: object = None  # a MiniMind-V model's (model/vision.py); None: the model takes text only

    def __post_init__(self):
        self.max_token_bytes = max(map(len, self.token_bytes))


def token_bytes(tokenizer, vocab_size: int) -> list[bytes]:
    """Each token id's bytes, for logprobs (a character may span tokens) and for the longest token's size.
    Byte-level BPE spells a token's bytes as printable characters (GPT-2's table); an added token is its own
    text; any other tokenizer's token, its decoded text."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    added = {i: token.content for i, token in tokenizer.added_tokens_decoder.items()}
    out = []
    for i, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(min(vocab_size, len(tokenizer)))))):
        if i in added:
            out.append(added[i].encode())
        elif piece and all(char in byte_of for char in piece):
            out.append(bytes(byte_of[char] for char in piece))
        else:
            out.append(tokenizer.decode([i]).encode())
    return out + [b""] * (vocab_size - len(out))  # ids the model has and the tokenizer does not


class Generation:
    """The choices of one API call (n samples of a prompt, or one per prompt): checked when created, run on
    the engine while `events()` is consumed, with their text streams and the token counts for `usage`."""

    def __init__(self, state: ServerState, prompts: list[list[int]], body: GenerationFields, max_tokens: int | None,
                 split_think: bool, logprobs: int | None = None, tools: list[str] | None = None, forced: str = "",
                 one_call: bool = False, pixel_values=None):
        """`logprobs`: None, or keep each token's log-prob and this many most likely tokens beside it;
        `tools`: names of the functions whose calls are taken out of the replies (None: the replies are
        text); `forced`: text the prompts end with that is the start of the reply (a forced call);
        `one_call`: end each reply at its first call; `pixel_values`: the images of the (one) prompt's slots,
        shared by its n samples (the engine then prefills them once)."""
        n = body.n or 1
        if logprobs is not None and state.engine.drafter is not None:
            raise ApiError(400, "logprobs are not available with speculative decoding (--draft_weight)",
                           param="logprobs")
        if n > state.engine.max_batch_size:
            raise ApiError(400, f"n={n}: at most --max_batch_size={state.engine.max_batch_size}", param="n")
        stop = [body.stop] if isinstance(body.stop, str) else body.stop
        prompts = [p for p in prompts for _ in range(n)]
        self.engine = state.engine
        self.pixel_values = pixel_values
        self.jobs = [(prompt, SamplingParams(
            max_tokens=check_length(state, prompt, max_tokens),
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=body.top_k or 0,
            repetition_penalty=body.repetition_penalty or 1.0,
            frequency_penalty=body.frequency_penalty or 0.0,
            presence_penalty=body.presence_penalty or 0.0,
            seed=None if body.seed is None else body.seed + index,  # the n samples of a seed differ
            logprobs=logprobs is not None, top_logprobs=logprobs or 0))
            for index, prompt in enumerate(prompts)]
        self.prompt_tokens = sum(map(len, prompts)) // n
        self.tokenizer, self.token_bytes = state.tokenizer, state.token_bytes
        self.replies = [ReplyStream(state.tokenizer, stop, split_think, prompt, tools) for prompt in prompts]
        for reply in self.replies if forced else ():
            # past the stop strings (it is our text, not the model's); the call splitter holds the open call
            # until the model closes it, or releases it as text if it never does
            reply.route(forced)
        self.one_call = one_call
        self.tokens = [[] for _ in prompts]  # each choice's tokens, up to the one that finished it
        self.reported = [0] * len(prompts)  # how many of them `chat_logprobs` has returned
        self.finish_reasons = [None] * len(prompts)
        self.requests = []

    async def events(self, client: Request | None = None):
        """(choice index, Delta, finish_reason or None) as tokens arrive. The requests start here, so a
        response that never starts streaming never runs; leaving early (a stop string, a disconnect, the
        client's stream closed) cancels them, which frees their engine slots."""
        queue, loop = asyncio.Queue(), asyncio.get_running_loop()
        next_poll = time.monotonic() + DISCONNECT_POLL_S
        try:
            for index, (prompt, params) in enumerate(self.jobs):
                # The engine calls back from its thread: hand each event over to this event loop.
                self.requests.append(self.engine.submit(
                    prompt, params, lambda token, finish, i=index:
                    loop.call_soon_threadsafe(queue.put_nowait, (i, token, finish)), self.pixel_values))
            while None in self.finish_reasons:
                if client is not None and time.monotonic() > next_poll:
                    next_poll += DISCONNECT_POLL_S
                    if await client.is_disconnected():
                        return
                i, token, finish = await queue.get()
                if self.finish_reasons[i]:  # tokens the engine made before it saw our cancel
                    continue
                if finish == "error":
                    raise ApiError(500, "generation failed on the server", kind="server_error")
                reply = self.replies[i]
                self.tokens[i].append(token)
                delta = reply.push(token)
                if reply.stopped or (self.one_call and reply.tool_calls):
                    finish = "stop"
                    self.requests[i].cancel()
                if finish:
                    delta = delta + reply.finish()
                    # OpenAI's reason for a reply that called: the client runs the calls. A reply cut by
                    # max_tokens stays "length": its last call may be lost.
                    finish = "tool_calls" if finish == "stop" and reply.tool_calls else finish
                    self.finish_reasons[i] = finish
                if delta or finish:
                    yield i, delta, finish
        finally:
            for request in self.requests:
                request.cancel()

    def scored(self, i: int, start: int = 0) -> list[tuple]:
        """(token id, log-prob, [(id, log-prob) of the most likely tokens]) for choice i's tokens from `start`.
        The engine may have sampled past a stop string before it saw our cancel: only our tokens count."""
        request, end = self.requests[i], len(self.tokens[i])
        tops = request.top_logprobs[start:end] if request.top_logprobs is not None else [((), ())] * (end - start)
        return [(token, logprob, list(zip(*top)))
                for token, logprob, top in zip(self.tokens[i][start:end], request.logprobs[start:end], tops)]

    def token_text(self, token: int) -> str:
        return self.token_bytes[token].decode("utf-8", errors="replace")

    def chat_logprobs(self, i: int) -> dict | None:
        """OpenAI's chat `logprobs` of choice i's tokens not returned yet (None if none): all of them once the
        reply is done, or, called for each stream chunk, those of the chunk's tokens."""
        start, self.reported[i] = self.reported[i], len(self.tokens[i])

        def entry(token, logprob):
            return {"token": self.token_text(token), "logprob": logprob, "bytes": list(self.token_bytes[token])}

        scored = self.scored(i, start)
        return {"content": [{**entry(token, logprob), "top_logprobs": [entry(*alt) for alt in top]}
                            for token, logprob, top in scored]} if scored else None

    def logprobs(self, i: int, as_ids: bool) -> dict:
        """OpenAI's legacy `logprobs` of choice i, over the tokens it generated (eos included when it stopped).
        A stop string ends generation at the token that completed it, so the tokens run that far: past the
        returned text, whose cut drops the stop string. Token strings are each token's share of the text (an
        incomplete UTF-8 character goes to the token that completes it), so they join to the uncut text;
        `text_offset` is where each starts in it."""
        tokens = self.tokens[i]
        detokenizer = IncrementalDetokenizer(self.tokenizer)
        texts = [detokenizer.push(token) for token in tokens]
        if texts:
            texts[-1] += detokenizer.flush()
        return {"tokens": [f"token_id:{t}" for t in tokens] if as_ids else texts,
                "token_logprobs": [logprob for _, logprob, _ in self.scored(i)],
                "top_logprobs": None,
                "text_offset": list(itertools.accumulate(map(len, texts), initial=0))[:-1]}

    @property
    def usage(self) -> dict:
        completion = sum(r.n_tokens for r in self.replies)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}


def context_exceeded(state: ServerState, prompt_tokens, param: str, max_tokens: int | None = None) -> ApiError:
    asked = f" + {max_tokens} for the completion" if max_tokens else ""
    return ApiError(400, f"This model's maximum context length is {state.max_seq_len} tokens; you asked for "
                         f"{prompt_tokens} in the prompt{asked}.", param=param, code="context_length_exceeded")


def check_length(state: ServerState, prompt: list[int], max_tokens: int | None) -> int:
    """The completion budget, or OpenAI's context_length_exceeded error."""
    room = state.max_seq_len - len(prompt)
    if room <= 0 or (max_tokens is not None and max_tokens > room):
        raise context_exceeded(state, len(prompt), "messages", max_tokens)
    return max_tokens or room


def check_text_size(state: ServerState, texts: list[str], param: str):
    """Refuse a prompt over the context before tokenizing it (seconds for megabytes of text): no token is
    longer than the longest in the vocabulary, so `texts` make at least bytes / its length tokens."""
    at_least = -(-sum(len(text.encode()) for text in texts) // state.max_token_bytes)
    if at_least >= state.max_seq_len:
        raise context_exceeded(state, f"at least {at_least}", param)


def check_model(state: ServerState, name: str | None):
    names = (state.model_name, *state.model_aliases)
    if name is not None and name not in names:
        raise ApiError(404, f"The model `{name}` does not exist: this server serves "
                            f"{' or '.join(repr(n) for n in names)}.", param="model", code="model_not_found")


def completion_prompts(state: ServerState, prompt) -> list[list[int]]:
    """The prompts of /v1/completions as token ids: a text as bos + text (as pretraining saw documents start),
    token ids as they are, once checked against the vocabulary."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        prompt = [prompt]
    if not prompt:
        raise ApiError(400, "prompt: must not be empty", param="prompt")
    if len(prompt) > state.max_prompts:
        raise ApiError(400, f"prompt: {len(prompt)} prompts, at most {state.max_prompts} in one request "
                            "(--max_prompts)", param="prompt")
    vocab, prompts = state.engine.config.vocab_size, []
    for p in prompt:
        if isinstance(p, str):
            check_text_size(state, [p], "prompt")
            prompts.append(text_prompt_ids(state.tokenizer, p))
            continue
        if not p:
            raise ApiError(400, "prompt: a list of token ids must not be empty", param="prompt")
        bad = next((t for t in p if not 0 <= t < vocab), None)
        if bad is not None:
            raise ApiError(400, f"prompt: token id {bad} is outside the vocabulary (0..{vocab - 1})", param="prompt")
        prompts.append(p)
    return prompts


# ----------------------------------------------------------------------------------------------------------
# Responses


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def chat_delta(delta: Delta, first_call: int = 0) -> dict:
    """A stream chunk's delta. A call is sent whole, once it is parsed: OpenAI may send its arguments in
    pieces, one piece is as valid, and clients (the SDK's stream helpers) accumulate either.
    `first_call`: the index of this delta's first call among the reply's calls."""
    out = {}
    if delta.reasoning:
        out["reasoning_content"] = delta.reasoning
    if delta.content:
        out["content"] = delta.content
    if delta.tool_calls:
        out["tool_calls"] = [{"index": first_call + k, **call.openai(call_id())}
                             for k, call in enumerate(delta.tool_calls)]
    return out


def chat_message(reply: ReplyStream) -> dict:
    # content is null, not "", when the reply is only calls, as OpenAI sends it
    message = {"role": "assistant", "content": reply.content or (None if reply.tool_calls else "")}
    if reply.reasoning:
        message["reasoning_content"] = reply.reasoning
    if reply.tool_calls:
        message["tool_calls"] = [call.openai(call_id()) for call in reply.tool_calls]
    return message


def read_tool_choice(body: ChatRequest) -> tuple[list[str] | None, str]:
    """(names of the functions whose calls are parsed, None when the replies are text; the text the reply
    must start with).

    "required" and a named function are what constrained decoding would enforce; its minimal form is to
    write the call's start ourselves: the prompt ends with `<tool_call>\\n{"name": "` (plus the name and
    `", "arguments":` when named), and the same text opens the reply before it is parsed. The named prefix
    stops before the space that follows it in a rendered call: in the tokenizer that space starts the
    next token (` {`), so a prompt ending in it would be text the model never saw. The rest of the call is
    the model's: one that does not finish it properly gets its text back as content, like any bad call.
    """
    names = [tool.function.name for tool in body.tools or []]
    choice = body.tool_choice or "auto"
    if choice == "none" or (choice == "auto" and not names):
        return None, ""  # the replies are text
    if choice == "auto":
        return names, ""
    if not names:
        raise ApiError(400, "tool_choice: only allowed when tools are given", param="tool_choice")
    if choice == "required":
        return names, f'{CALL_OPEN}\n{{"name": "'
    if choice.function.name not in names:
        raise ApiError(400, f"tool_choice: function {choice.function.name!r} is not among the tools",
                       param="tool_choice.function.name")
    # a function name is [A-Za-z0-9_-] (FunctionDef): nothing in it to escape for JSON
    return names, f'{CALL_OPEN}\n{{"name": "{choice.function.name}", "arguments":'


async def stream_chunks(gen: Generation, head: dict, choice, first_choices: list, include_usage: bool):
    """SSE as OpenAI sends it: chunks, a final one per choice with its finish_reason, an optional usage
    chunk (with empty choices), then `data: [DONE]`. `choice(index, delta, finish)` shapes one choice."""
    usage = {"usage": None} if include_usage else {}
    try:
        for first in first_choices:
            yield sse({**head, "choices": [first], **usage})
        async for i, delta, finish in gen.events():
            if delta:
                yield sse({**head, "choices": [choice(i, delta, None)], **usage})
            if finish:
                yield sse({**head, "choices": [choice(i, Delta(), finish)], **usage})
        if include_usage:
            yield sse({**head, "choices": [], "usage": gen.usage})
    except ApiError as e:
        yield sse({"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code}})
    yield "data: [DONE]\n\n"


def state_of(request: Request) -> ServerState:
    return request.app.state.minimind


def require_key(request: Request):
    key = state_of(request).api_key
    if key is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # The scheme is case-insensitive (RFC 9110): "bearer <key>" is as good as "Bearer <key>".
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise ApiError(401, "Incorrect API key provided. Send it as 'Authorization: Bearer <key>'.",
                       code="invalid_api_key")


api = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])


def chat_generation(state: ServerState, body: ChatRequest) -> Generation:
    """The request as a Generation: the conversation rendered and tokenized, its images decoded (in a worker
    thread). The cheap checks come first: an image no model here can take, or a prompt over the context,
    costs no decoding."""
    names, forced = read_tool_choice(body)
    sent = [(f"messages.{i}.content.{j}", url) for i, m in enumerate(body.messages) for j, url in m.images()]
    if sent:
        check_images_wanted(state, sent)
    messages, _ = normalize_messages([m.as_template_dict(i) for i, m in enumerate(body.messages)])
    # Templates show user, system and tool texts whole (an assistant's may lose its <think> part).
    check_text_size(state, [content_text(m["content"]) for m in messages if m["role"] != "assistant"], "messages")
    tools = [tool.model_dump(exclude_none=True) for tool in body.tools or []]
    max_tokens = body.max_completion_tokens or body.max_tokens
    pixels = None
    if state.image_processor is not None:  # a MiniMind-V model: its prompts may hold image slots
        config = state.engine.config
        prompt, images = image_chat_prompt_ids(state.tokenizer, messages, config.image_token_id, config.image_tokens,
                                               tools)
    else:
        prompt, images = chat_prompt_ids(state.tokenizer, messages, tools), []
    # The forced text is part of the prompt the model reads (and counts in usage.prompt_tokens).
    prompt += state.tokenizer(forced, add_special_tokens=False)["input_ids"]
    if images:
        check_length(state, prompt, max_tokens)  # before decoding the images
        pixels = pixel_values(state.image_processor, [decode_image(data_url_bytes(url, where), where)
                                                      for where, url in images])
    return Generation(state, [prompt], body, max_tokens, split_think=True,
                      logprobs=(body.top_logprobs or 0) if body.logprobs else None, tools=names, forced=forced,
                      one_call=body.parallel_tool_calls is False, pixel_values=pixels)


def check_images_wanted(state: ServerState, sent: list[tuple[str, str]]):
    """A 400 for images this server cannot take: a text-only model, speculative decoding, or an image that is
    not a base64 data: URL (the server fetches nothing for a client), naming the first such part."""
    where, url = sent[0]
    if state.image_processor is None:
        raise ApiError(400, f"{where}: this model has no vision encoder: it takes text only (serve a MiniMind-V "
                            "checkpoint, e.g. out/sft_vlm_512.pth, for image_url parts)", param=where,
                       code="images_not_supported")
    if state.engine.drafter is not None:
        raise ApiError(400, f"{where}: images are not available with speculative decoding (--draft_weight): "
                            "it decodes text prompts only", param=where, code="images_not_supported")
    for where, url in sent:
        scheme = url.partition(":")[0].strip().lower() if ":" in url else ""
        if scheme in ("http", "https"):
            raise ApiError(400, f"{where}: this server does not fetch image URLs; send the image itself as a "
                                "base64 data: URL (data:image/png;base64,...)", param=f"{where}.image_url.url",
                           code="image_url_not_supported")
        if scheme != "data":
            raise ApiError(400, f"{where}: image_url.url must be a base64 data: URL (data:image/png;base64,...), "
                                f"not {url[:32]!r}", param=f"{where}.image_url.url", code="invalid_image_url")


def data_url_bytes(url: str, where: str) -> bytes:
    """The bytes of a `data:image/<type>;base64,<data>` URL (whitespace in the data ignored: `base64` wraps its
    lines), or a 400 naming the part."""
    def bad(why):
        return ApiError(400, f"{where}: {why}", param=f"{where}.image_url.url", code="invalid_image_url")
    header, comma, data = url.partition(":")[2].partition(",")
    params = [p.strip().lower() for p in header.split(";")]
    if not comma or params[-1] != "base64":
        raise bad("not a base64 data: URL (expected data:image/<type>;base64,<data>)")
    if params[0] and not params[0].startswith("image/"):
        raise bad(f"the data: URL holds {params[0]}, not an image")
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise bad(f"the data: URL is not valid base64 ({e})") from None


def decode_image(data: bytes, where: str):
    """An RGB image from its file's bytes, or a 400 naming the part: not an image, over MAX_IMAGE_PIXELS, or
    broken. The size is read from the header, before any pixel is decoded."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except UnidentifiedImageError:
        raise ApiError(400, f"{where}: not an image this server can read (png, jpeg, webp, gif, bmp...)",
                       param=where, code="invalid_image") from None
    except Exception as e:  # Pillow's own, e.g. DecompressionBombError
        raise ApiError(400, f"{where}: the image cannot be read ({type(e).__name__}: {e})", param=where,
                       code="invalid_image") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise ApiError(400, f"{where}: a {width}x{height} image is over this server's {MAX_IMAGE_PIXELS:,} pixels; "
                            "send it smaller (the model sees it at its encoder's size anyway)", param=where,
                       code="invalid_image")
    try:
        return load_images([data])[0]
    except VisionError as e:  # "image 1 (N bytes): cannot be read as an image (...)": named by its part here
        raise ApiError(400, f"{where}: {str(e).partition(': ')[2]}", param=where, code="invalid_image") from None


@api.post("/chat/completions")
async def chat_completions(request: Request):
    body = await parse_body(request, ChatRequest)
    state = state_of(request)
    check_model(state, body.model)
    gen = await asyncio.to_thread(chat_generation, state, body)  # tokenizing a long prompt takes a while
    head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": state.model_name,
            "system_fingerprint": None}
    if body.stream:
        calls_sent = [0] * len(gen.replies)

        def choice(i, delta, finish):
            out = {"index": i, "delta": chat_delta(delta, calls_sent[i]),
                   "logprobs": gen.chat_logprobs(i) if body.logprobs else None, "finish_reason": finish}
            calls_sent[i] += len(delta.tool_calls)
            return out

        first = [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                  "finish_reason": None} for i in range(len(gen.replies))]
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(stream_chunks(gen, {**head, "object": "chat.completion.chunk"}, choice, first,
                                               include_usage), media_type="text/event-stream")
    async for _ in gen.events(client=request):
        pass
    choices = [{"index": i, "message": chat_message(reply), "logprobs": gen.chat_logprobs(i) if body.logprobs
                else None, "finish_reason": gen.finish_reasons[i]} for i, reply in enumerate(gen.replies)]
    return {**head, "object": "chat.completion", "choices": choices, "usage": gen.usage}


@api.post("/completions")
async def completions(request: Request):
    body = await parse_body(request, CompletionRequest)
    state = state_of(request)
    check_model(state, body.model)
    want_logprobs = body.logprobs is not None
    if want_logprobs and body.logprobs > 1:
        raise ApiError(400, f"logprobs={body.logprobs}: /v1/completions returns the sampled token's log-prob only "
                            "(logprobs 0 or 1); chat completions offer top_logprobs", param="logprobs")
    if want_logprobs and body.stream:
        raise ApiError(400, "logprobs: not available with stream: true", param="logprobs")
    gen = await asyncio.to_thread(lambda: Generation(  # tokenizing many long prompts takes a while
        state, completion_prompts(state, body.prompt), body, body.max_tokens or 16,  # OpenAI's default: 16
        split_think=False, logprobs=0 if want_logprobs else None))
    head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
            "model": state.model_name, "system_fingerprint": None}

    def choice(i, text, finish, logprobs=None):
        return {"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish}

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            stream_chunks(gen, head, lambda i, delta, finish: choice(i, delta.content, finish), [], include_usage),
            media_type="text/event-stream")
    async for _ in gen.events(client=request):
        pass
    as_ids = bool(body.return_tokens_as_token_ids)
    choices = [choice(i, reply.content, gen.finish_reasons[i], gen.logprobs(i, as_ids) if want_logprobs else None)
               for i, reply in enumerate(gen.replies)]
    return {**head, "choices": choices, "usage": gen.usage}


@api.get("/models")
async def models(request: Request):
    state = state_of(request)
    # input_modalities: an extension (OpenAI's model objects have none) that tells a client the model sees images
    modalities = ["text", "image"] if state.image_processor is not None else ["text"]
    return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": 0,
                                        "owned_by": "minimind", "input_modalities": modalities}]}


# The server root, as SGLang has it: not under /v1, but behind the same key.
admin = APIRouter(dependencies=[Depends(require_key)])


@admin.post("/update_weights_from_disk")
async def update_weights_from_disk(request: Request):
    """Load a weights file of this project (a state dict: .pth or .safetensors) into the served model, checked
    first: a file that does not fit leaves the model unchanged."""
    body = await parse_body(request, WeightsRequest)
    engine = state_of(request).engine
    if is_quantized(engine.model):
        raise ApiError(400, "the served model was quantized at start-up (--quantize int8): its weights cannot be "
                            "replaced in place; serve new weights by restarting the server", param="model_path")

    def load():
        state_dict = read_state_dict(body.model_path)  # here, so decoding does not wait on the disk
        engine.call(lambda: load_weights(engine.model, state_dict, name=body.model_path))

    try:
        await asyncio.to_thread(load)
    except CheckpointError as e:  # one line, without the terminal colours of torch.load's messages
        raise ApiError(400, " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(e)).split()), param="model_path") from None
    return {"success": True, "message": f"loaded {body.model_path}"}


async def health(request: Request):
    state = state_of(request)
    return {"status": "ok", "model": state.model_name, **state.engine.load}


def create_app(model, tokenizer, model_name: str = "minimind", api_key: str | None = None,
               max_batch_size: int = 16, max_seq_len: int | None = None, model_aliases=("minimind",),
               max_body_mb: float = 4, max_prompts: int = 128, drafter=None) -> FastAPI:
    """The server around a loaded model: the engine thread runs while the app does. `drafter`: speculative
    decoding, one request at a time (see model/serving.py's Engine). A MiniMind-V model takes images, prepared
    by its encoder's image processor (from the folder it was loaded with)."""
    limit = min(max_seq_len or model.config.max_position_embeddings, model.config.max_position_embeddings)
    processor = load_image_processor(model.config.vision_model_path) if is_vision_model(model) else None
    engine = Engine(model, max_batch_size, eos_token_ids={tokenizer.eos_token_id, model.config.eos_token_id},
                    drafter=drafter)

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="MiniMind OpenAI-compatible API", lifespan=lifespan)
    app.state.minimind = ServerState(engine, tokenizer, model_name, tuple(model_aliases), limit,
                                     token_bytes(tokenizer, model.config.vocab_size), int(max_body_mb * 2**20),
                                     max_prompts, api_key, processor)
    app.add_exception_handler(ApiError, lambda request, exc: exc.response())
    app.add_exception_handler(HTTPException, http_error)
    app.include_router(api)
    app.include_router(admin)
    app.add_api_route("/health", health, methods=["GET"])
    return app


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # --quantize int8: load_chat_model quantises the served model; --draft_weight: speculative, one request at a time
    add_model_args(parser, quantize=True, speculative=True, vision=True)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 exposes the server to the network")
    parser.add_argument("--port", type=int, default=8998)
    parser.add_argument("--api_key", default=None, help="require 'Authorization: Bearer <key>' on /v1/*")
    parser.add_argument("--max_batch_size", type=int, default=16, help="requests decoded together")
    parser.add_argument("--max_seq_len", type=int, default=2048, help="prompt + completion limit, in tokens")
    parser.add_argument("--model_name", default=None, help="the id /v1/models reports (default: the file name)")
    parser.add_argument("--model_alias", action="append", default=None,
                        help="another name requests may use (repeatable or comma-separated; default: minimind)")
    parser.add_argument("--max_body_mb", type=float, default=4, help="larger request bodies get a 413")
    parser.add_argument("--max_prompts", type=int, default=128, help="prompts per /v1/completions request")
    args = parser.parse_args()
    if args.max_body_mb <= 0 or args.max_prompts < 1:
        parser.error("--max_body_mb must be > 0 and --max_prompts >= 1")
    aliases = [a for flag in args.model_alias or ["minimind"] for a in flag.split(",") if a]

    import uvicorn

    from model.chat import load_chat_model
    try:
        model, tokenizer, path = load_chat_model(args)
        drafter = load_drafter(args, model, tokenizer)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    name = args.model_name or os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
    app = create_app(model, tokenizer, name, args.api_key, args.max_batch_size, args.max_seq_len, aliases,
                     args.max_body_mb, args.max_prompts, drafter)
    if drafter:
        print(f"speculative decoding: {args.draft_weight} drafts {drafter.k} token(s) per step, one request "
              "at a time")
    print(f"serving {path} as '{name}'{''.join(f' or {a!r}' for a in aliases)} on http://{args.host}:{args.port}/v1 "
          f"(batch {app.state.minimind.engine.max_batch_size}, context {app.state.minimind.max_seq_len}"
          f"{', images: ' + str(model.config.image_tokens) + ' tokens each' if is_vision_model(model) else ''}"
          f"{', API key required' if args.api_key else ''})")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
