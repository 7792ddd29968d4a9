"""Talk to a trained MiniMind model in the terminal: a set of test prompts, or an interactive chat.

    python eval_model.py --model_mode 1                       # out/full_sft_512.pth on the test prompts
    python eval_model.py --model_mode 0                       # the pretrained model continues plain text
    python eval_model.py --model_mode 3 --interactive         # chat with the reasoning model
    python eval_model.py --model_mode 1 --hidden_size 768     # out/full_sft_768.pth
    python eval_model.py --load_from out/minimind-hf --temperature 0
    python eval_model.py --model_mode 1 --lora_name identity  # + out/lora/lora_identity_512.pth

A reasoning model's thinking is shown apart from its answer. After each answer: tokens and tokens/s.
"""
import argparse
import sys
import time

import torch

from model.chat import (ReplyPrinter, ReplyStream, add_model_args, chat_prompt_ids, load_chat_model, recent_history,
                        text_prompt_ids)
from model.checkpoint import CheckpointError
from model.generation import generate_reply

# A pretrained model only continues text: give it beginnings of sentences.
PRETRAIN_PROMPTS = [
    "马克思主义基本原理",
    "人类大脑的主要功能",
    "万有引力原理是",
    "世界上最高的山峰是",
    "The capital of France is",
    "Once upon a time, there was a",
]
CHAT_PROMPTS = [
    "你有什么特长？",
    "Who are you?",
    "为什么天空是蓝色的？",
    "What is 17 + 25?",
    "请用一句话介绍一下长江。",
    "Write a short poem about the sea.",
    "解释一下光合作用的基本过程。",
    "推荐一些杭州的特色美食吧。",
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(parser)
    g = parser.add_argument_group("generation")
    g.add_argument("--max_new_tokens", type=int, default=512)
    g.add_argument("--temperature", type=float, default=0.85, help="0 = greedy")
    g.add_argument("--top_p", type=float, default=0.85)
    g.add_argument("--top_k", type=int, default=0, help="0 = off")
    g.add_argument("--repetition_penalty", type=float, default=1.0)
    g.add_argument("--history_cnt", type=int, default=0, help="previous exchanges (user + assistant) to send")
    g.add_argument("--stream", type=int, default=1, choices=[0, 1], help="print tokens as they come")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--interactive", action="store_true", help="chat from the keyboard instead of test prompts")
    return parser.parse_args(argv)


def keyboard_prompts():
    while True:
        try:
            text = input("\nyou> ").strip()
        except (EOFError, KeyboardInterrupt):
            return
        if text in ("exit", "quit"):
            return
        if text:
            yield text


def main(argv=None):
    args = parse_args(argv)
    try:
        model, tokenizer, path = load_chat_model(args)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model: {path} ({n_params:.2f}M parameters, {model.device}, {str(model.dtype).removeprefix('torch.')})")
    pretrain = args.model_mode == 0
    generator = torch.Generator(device=model.device).manual_seed(args.seed)
    sampling = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                    top_k=args.top_k, repetition_penalty=args.repetition_penalty, generator=generator)
    prompts = keyboard_prompts() if args.interactive else PRETRAIN_PROMPTS if pretrain else CHAT_PROMPTS
    history = []
    for prompt in prompts:
        if pretrain:
            ids = text_prompt_ids(tokenizer, prompt)
        else:
            messages = recent_history(history, args.history_cnt) + [{"role": "user", "content": prompt}]
            ids = chat_prompt_ids(tokenizer, messages)
        if not args.interactive:
            print(f"\nyou> {prompt}")
        print("minimind> " + (prompt if pretrain else ""), end="", flush=True)
        reply = ReplyStream(tokenizer, split_think=not pretrain, prompt_ids=ids)
        printer = ReplyPrinter()
        start = time.perf_counter()
        for delta in generate_reply(model, ids, reply, **sampling):
            if args.stream:
                printer(delta)
        seconds = time.perf_counter() - start
        if not args.stream:
            printer(reply)  # the whole reply at once: it has the same reasoning/content fields as a delta
        printer.end()
        print(f"[{reply.n_tokens} tokens, {reply.n_tokens / seconds:.1f} tokens/s]")
        history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply.content}]


if __name__ == "__main__":
    main()
