"""Talk to a trained MiniMind model in the terminal: a set of test prompts, or an interactive chat.

    python eval_model.py --model_mode 1                       # out/full_sft_512.pth on the test prompts
    python eval_model.py --model_mode 0                       # the pretrained model continues plain text
    python eval_model.py --model_mode 3 --interactive         # chat with the reasoning model
    python eval_model.py --model_mode 1 --hidden_size 768     # out/full_sft_768.pth
    python eval_model.py --load_from out/minimind-hf --temperature 0
    python eval_model.py --model_mode 1 --lora_name identity  # + out/lora/lora_identity_512.pth
    python eval_model.py --model_mode 1 --quantize int8       # int8 weights (torchao weight-only)
    python eval_model.py --model_mode 1 --quantize float16 --dtype float32   # fastest batch-1 decoding on a CPU
    python eval_model.py --model_mode 1 --draft_weight out/full_dist_128.pth   # speculative decoding
    python eval_model.py --interactive --tools calculator,convert --mcp "python scripts/mcp_demo_tools.py"

A reasoning model's thinking is shown apart from its answer. After each answer: tokens and tokens/s.
With tools on offer, the model may call them: each call runs, its result goes back to the model and shows
as one dim line, `[tool] calculator({"expression": "12*13"}) → 156`, until the model answers.
"""
import argparse
import sys
import time
from contextlib import ExitStack

import torch

from demo.tools import demo_tools
from model.chat import (ReplyPrinter, ReplyStream, add_model_args, add_tool_args, chat_prompt_ids, chat_with_tools,
                        load_chat_model, load_drafter, open_tools, print_tool_call, recent_history,
                        text_prompt_ids)
from model.checkpoint import CheckpointError
from model.generation import generate_reply
from model.quant import weight_bytes

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
    add_model_args(parser, quantize=True, speculative=True)
    g = parser.add_argument_group("generation")
    g.add_argument("--max_new_tokens", type=int, default=512)
    g.add_argument("--temperature", type=float, default=0.85, help="0 = greedy")
    g.add_argument("--top_p", type=float, default=0.85)
    g.add_argument("--top_k", type=int, default=0, help="0 = off")
    g.add_argument("--repetition_penalty", type=float, default=1.0)
    g.add_argument("--history_cnt", type=int, default=0, help="previous exchanges (user + assistant) to send")
    g.add_argument("--stream", type=int, default=1, choices=[0, 1], help="print tokens as they come")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--compile_decode", action="store_true",
                   help="decode steps under torch.compile (compiles first; faster on some CPUs, slower on "
                        "others: scripts/bench_model.py --skip train)")
    g.add_argument("--interactive", action="store_true", help="chat from the keyboard instead of test prompts")
    g.add_argument("--think", action="store_true", help="open a <think> block in the prompt (enable_thinking)")
    add_tool_args(parser)
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
    pretrain = args.model_mode == 0
    if pretrain and (args.tools or args.mcp or args.think):
        sys.exit("error: --tools, --mcp and --think need a chat model; --model_mode 0 only continues text")
    with ExitStack() as stack:
        try:  # the tools first: a wrong name should not wait for the model to load
            tools = stack.enter_context(open_tools(args, demo_tools()))
            model, tokenizer, path = load_chat_model(args)
            drafter = load_drafter(args, model, tokenizer)
        except (CheckpointError, ValueError) as e:  # CheckpointError: a file; ValueError: a tool or MCP server
            sys.exit(f"error: {e}")
        n_params = sum(p.numel() for p in model.parameters()) / 1e6
        dtype = str(model.dtype).removeprefix("torch.")
        weights = dtype if args.quantize == "none" else f"{args.quantize} weights, {dtype} activations"
        print(f"model: {path} ({n_params:.2f}M parameters, {model.device}, {weights}, "
              f"{weight_bytes(model) / 1e6:.1f} MB)")
        if drafter:
            print(f"speculative decoding: {args.draft_weight} drafts {drafter.k} token(s) per step")
        if tools:
            print(f"tools: {', '.join(tool.name for tool in tools)}")
        generator = torch.Generator(device=model.device).manual_seed(args.seed)
        sampling = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                        top_k=args.top_k, repetition_penalty=args.repetition_penalty, generator=generator,
                        drafter=drafter, compile=args.compile_decode)
        chat(args, model, tokenizer, sampling, tools, pretrain)


def chat(args, model, tokenizer, sampling, tools, pretrain):
    """Answer each prompt: one reply for a pretrained model, the tool loop for a chat model."""
    schemas = [tool.schema() for tool in tools]
    names = [tool.name for tool in tools] or None  # None: no tools, the reply is text whatever it holds
    template_args = {"enable_thinking": True} if args.think else {}  # unset, each template keeps its default
    timed = []  # (reply, generation seconds) of the current prompt: the tools' time is not the model's

    def reply_to(ids):
        """One model reply, printed as it streams."""
        reply = ReplyStream(tokenizer, split_think=not pretrain, prompt_ids=ids, tools=names)
        printer, start = ReplyPrinter(), time.perf_counter()
        for delta in generate_reply(model, ids, reply, **sampling):
            if args.stream:
                printer(delta)
        timed.append((reply, time.perf_counter() - start))
        if not args.stream:
            printer(reply)  # the whole reply at once: it has the same reasoning/content fields as a delta
        printer.end()
        return reply

    prompts = keyboard_prompts() if args.interactive else PRETRAIN_PROMPTS if pretrain else CHAT_PROMPTS
    history = []
    for prompt in prompts:
        if not args.interactive:
            print(f"\nyou> {prompt}")
        print("minimind> " + (prompt if pretrain else ""), end="", flush=True)
        timed.clear()
        drafter = sampling.get("drafter")
        if drafter:
            drafter.stats = type(drafter.stats)()  # acceptance per prompt
        if pretrain:
            reply = reply_to(text_prompt_ids(tokenizer, prompt))
        else:
            messages = recent_history(history, args.history_cnt) + [{"role": "user", "content": prompt}]
            reply = chat_with_tools(
                lambda sent: reply_to(chat_prompt_ids(tokenizer, sent, schemas, **template_args)),
                messages, tools, args.max_tool_turns, print_tool_call)
            if reply.tool_calls:
                print(f"[tool] stopped: the reply limit (--max_tool_turns {args.max_tool_turns}) came first, "
                      "the last calls were not run")
        n_tokens, seconds = sum(r.n_tokens for r, _ in timed), sum(s for _, s in timed)
        spec = f", drafts {100 * drafter.stats.acceptance_rate:.0f}% accepted" if drafter else ""
        print(f"[{n_tokens} tokens, {n_tokens / seconds:.1f} tokens/s{spec}]")
        # Only the question and the final answer stay in the history: small models have short contexts.
        history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply.content}]


if __name__ == "__main__":
    main()
