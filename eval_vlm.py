"""Talk to a MiniMind-V model about images in the terminal: one question, a caption per image of a folder, or a chat.

    python eval_vlm.py --image cat.jpg --question "What is the cat doing?"   # out/sft_vlm_512.pth answers once
    python eval_vlm.py --image_dir pictures/                                  # one caption per image
    python eval_vlm.py --image cat.jpg                                        # chat about it (/image PATH switches)
    python eval_vlm.py --model_mode 0 --image_dir pictures/                   # the caption stage: pretrain_vlm
    python eval_vlm.py --load_from out/sft_vlm_768.pth --vision_model model/vision_model/clip-vit-base-patch16 \
        --image cat.jpg --question "Look at this: <image> What colour is the cat?"

The image goes where the question says <image>, else before the question ("<image>\n" + question, as minimind-v's
data write it); without --question a folder's images are asked "Describe the picture.". In the chat, the image
stays in the first user turn and each answer joins the conversation; `/image PATH` starts a new one about another
image, `exit` (or Ctrl-D) ends. Greedy by default (--temperature 0); the sampling flags are eval_model.py's.
Answers go to stdout, the model line and errors to stderr: `> answers.txt` keeps only the answers.
"""
import argparse
import os
import sys

import torch

from model.chat import (DESCRIBE_PROMPT, ReplyPrinter, ReplyStream, add_vlm_model_args, image_chat_prompt_ids,
                        image_part, is_vision_model, load_chat_model)
from model.checkpoint import CheckpointError
from model.generation import generate_reply
from model.vision import IMAGE_MARKER, VisionError, load_image_processor, load_images, pixel_values

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_vlm_model_args(parser)
    g = parser.add_argument_group("images")
    g.add_argument("--image", default=None, help="an image file: answer --question once, or chat about it")
    g.add_argument("--image_dir", default=None, help="a folder: one answer per image in it (sorted by name)")
    g.add_argument("--question", default=None,
                   help=f"where <image> stands the image goes (default: before it); --image_dir default "
                        f"{DESCRIBE_PROMPT!r}")
    g = parser.add_argument_group("generation")
    g.add_argument("--max_new_tokens", type=int, default=512)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top_p", type=float, default=0.85)
    g.add_argument("--top_k", type=int, default=0, help="0 = off")
    g.add_argument("--repetition_penalty", type=float, default=1.0)
    g.add_argument("--stream", type=int, default=1, choices=[0, 1], help="print tokens as they come")
    g.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    if (args.image is None) == (args.image_dir is None):
        parser.error("give --image FILE (one question, or a chat) or --image_dir DIR (one answer per image)")
    return args


def question_content(question: str, image) -> list[dict]:
    """A user message's parts: the image where the question says <image>, else before it."""
    if question.count(IMAGE_MARKER) > 1:
        raise ValueError(f"the question holds {question.count(IMAGE_MARKER)} {IMAGE_MARKER} marks for one image")
    before, marked, after = question.partition(IMAGE_MARKER)
    parts = [{"type": "text", "text": before}, image_part(image), {"type": "text", "text": after}] if marked \
        else [image_part(image), {"type": "text", "text": question}]
    return [part for part in parts if part["type"] == "image" or part["text"]]


def readable_image(path: str) -> str:
    """`path`, or a ValueError saying why it is not an image to read (checked before the model loads)."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such image file")
    load_images([path])  # VisionError (a ValueError) naming the file when it does not decode
    return path


def image_files(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise ValueError(f"--image_dir {folder}: no such folder")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise ValueError(f"--image_dir {folder}: no image files there ({', '.join(IMAGE_EXTENSIONS)})")
    return [os.path.join(folder, n) for n in names]


class Talker:
    """The model, its tokenizer and image processor, and the sampling settings: one reply per call."""

    def __init__(self, model, tokenizer, processor, args):
        self.model, self.tokenizer, self.processor = model, tokenizer, processor
        generator = torch.Generator(device=model.device).manual_seed(args.seed)
        self.sampling = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                             top_k=args.top_k, repetition_penalty=args.repetition_penalty, generator=generator)

    def reply(self, messages: list[dict], on_delta=None) -> ReplyStream:
        config = self.model.config
        ids, images = image_chat_prompt_ids(self.tokenizer, messages, config.image_token_id, config.image_tokens)
        pixels = pixel_values(self.processor, load_images(images)).to(self.model.device) if images else None
        reply = ReplyStream(self.tokenizer, prompt_ids=ids)
        for delta in generate_reply(self.model, ids, reply, pixel_values=pixels, **self.sampling):
            if on_delta:
                on_delta(delta)
        return reply


def say(talker: Talker, messages: list[dict], stream: bool) -> ReplyStream:
    """One reply printed (thinking apart from the answer, as eval_model.py prints it)."""
    printer = ReplyPrinter()
    reply = talker.reply(messages, printer if stream else None)
    if not stream:
        printer(reply)
    printer.end()
    return reply


def caption_folder(talker: Talker, paths: list[str], question: str) -> int:
    """`name: answer` per image, on one line each; an image that does not decode is an error line on stderr
    and the rest go on. Returns how many failed."""
    failed = 0
    for path in paths:
        try:
            reply = talker.reply([{"role": "user", "content": question_content(question, readable_image(path))}])
        except VisionError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{os.path.basename(path)}: {' '.join(reply.content.split())}", flush=True)
    return failed


def chat(talker: Talker, image: str, stream: bool):
    """A conversation about `image` from the keyboard; `/image PATH` starts one about another image."""
    print(f"chatting about {image}: /image PATH switches the picture, exit quits", file=sys.stderr)
    messages = []
    while True:
        try:
            line = input("\nyou> ").strip()
        except (EOFError, KeyboardInterrupt):
            return
        if line in ("exit", "quit"):
            return
        if line.startswith("/image"):
            try:
                image, messages = readable_image(os.path.expanduser(line[len("/image"):].strip())), []
                print(f"now about {image} (a new conversation)", file=sys.stderr)
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
            continue
        if not line:
            continue
        try:  # the image joins the first question only: it stays in that turn for the answers after
            content = question_content(line, image) if not messages else line
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            continue
        print("minimind> ", end="", flush=True)
        reply = say(talker, messages + [{"role": "user", "content": content}], stream)
        messages += [{"role": "user", "content": content}, {"role": "assistant", "content": reply.content}]


def main(argv=None):
    args = parse_args(argv)
    try:  # the inputs first: a wrong path should not wait for the model to load
        paths = image_files(args.image_dir) if args.image_dir else [readable_image(args.image)]
        if args.question and not args.image_dir:
            question_content(args.question, None)
        model, tokenizer, path = load_chat_model(args)
    except (CheckpointError, ValueError) as e:  # ValueError: an input (VisionError: an image that does not decode)
        sys.exit(f"error: {e}")
    if not is_vision_model(model):
        sys.exit(f"error: {path} is not a vision-language checkpoint (a text model: talk to it with eval_model.py); "
                 "pass a MiniMind-V one: --model_mode 0 (pretrain_vlm) or 1 (sft_vlm), or --load_from FILE")
    try:
        processor = load_image_processor(model.config.vision_model_path)
    except VisionError as e:
        sys.exit(f"error: {e}")
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model: {path} ({n_params:.2f}M parameters, {model.device}, {model.config.image_tokens} tokens per image)",
          file=sys.stderr)
    talker = Talker(model.eval(), tokenizer, processor, args)
    if args.image_dir:
        failed = caption_folder(talker, paths, args.question or DESCRIBE_PROMPT)
        sys.exit(1 if failed else 0)
    if args.question:
        say(talker, [{"role": "user", "content": question_content(args.question, args.image)}], bool(args.stream))
    else:
        chat(talker, args.image, bool(args.stream))


if __name__ == "__main__":
    main()
