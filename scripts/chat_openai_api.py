"""Chat in the terminal with any OpenAI-compatible endpoint: this project's server, vLLM, Ollama, llama.cpp...

    python scripts/serve_openai_api.py --model_mode 3 &          # in another terminal
    python scripts/chat_openai_api.py                             # http://127.0.0.1:8998/v1
    python scripts/chat_openai_api.py --base_url http://127.0.0.1:11434/v1 --model minimind

Streams the reply, keeps the conversation (the last --history_cnt exchanges go with each question) and shows
a reasoning model's `reasoning_content` apart from its answer. Type 'exit' or Ctrl-D to leave.
"""
import argparse
import os
import sys
import time

from openai import OpenAI, OpenAIError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # for `python scripts/<name>.py`: the packages sit beside scripts/
from model.chat import Delta, ReplyPrinter, recent_history


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base_url", default="http://127.0.0.1:8998/v1")
    parser.add_argument("--api_key", default="none", help="the server's --api_key, if it has one")
    parser.add_argument("--model", default=None, help="default: the first model the server lists")
    parser.add_argument("--max_tokens", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=0.85)
    parser.add_argument("--top_p", type=float, default=0.85)
    parser.add_argument("--history_cnt", type=int, default=4, help="previous exchanges sent with a question")
    return parser.parse_args()


def stream_reply(client, args, messages) -> str:
    """Print the reply as it streams, thinking apart from the answer; return the answer."""
    stream = client.chat.completions.create(model=args.model, messages=messages, max_tokens=args.max_tokens,
                                            temperature=args.temperature, top_p=args.top_p, stream=True)
    printer, answer, start = ReplyPrinter(), "", time.perf_counter()
    for chunk in stream:
        if chunk.choices:
            delta = chunk.choices[0].delta
            # `reasoning_content` is not in OpenAI's schema: the client keeps it among the extra fields.
            reasoning = (delta.model_extra or {}).get("reasoning_content") or ""
            printer(Delta(reasoning, delta.content or ""))
            answer += delta.content or ""
    printer.end()
    print(f"[{time.perf_counter() - start:.1f} s]")
    return answer


def main():
    args = parse_args()
    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    try:
        args.model = args.model or client.models.list().data[0].id
    except OpenAIError as e:
        sys.exit(f"error: {args.base_url}: {e}")
    print(f"chatting with {args.model} at {args.base_url}; 'exit' to leave")
    history = []
    while True:
        try:
            question = input("\nyou> ").strip()
        except (EOFError, KeyboardInterrupt):
            break
        if question in ("exit", "quit"):
            break
        if not question:
            continue
        messages = recent_history(history, args.history_cnt) + [{"role": "user", "content": question}]
        print("minimind> ", end="", flush=True)
        try:
            answer = stream_reply(client, args, messages)
        except OpenAIError as e:
            print(f"\nerror: {e}")
            continue
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


if __name__ == "__main__":
    main()
