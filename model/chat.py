"""Talking to a model: what eval_model.py, the API server and the web demo share.

- choosing and loading a model: `--model_mode` + size flags -> out/<stage>_<hidden>[_moe].pth, or an HF
  folder; a missing or mismatched checkpoint becomes a message that says which file and which flags to try
- prompts: the chat template for chat models, bos + text for a pretrained one
- text from a token stream: a reply arrives one token at a time, and a token is not a character (a Chinese
  character or an emoji can span several byte-level tokens), a stop string can span tokens, and reasoning
  models wrap their thinking in <think>...</think> (split by model/reasoning.py's `ThinkSplitter`).
  `ReplyStream` handles all three, for every caller: `generation.generate_reply` in process (CLI, web chat),
  and the API server's batching engine (model/serving.py).
- tool use: `chat_with_tools`, the one loop (reply, run its calls, reply again) of the CLI, the terminal API
  client and the web chat, and the flags that choose the tools on offer
- images (MiniMind-V): `image_chat_prompt_ids`, the one prompt builder of eval_vlm.py, the API server and the
  web chat for messages whose content holds images
"""
import json
import os
import re
import shlex
import sys
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from .checkpoint import CheckpointError, checkpoint_path, load_model
from .reasoning import ThinkSplitter, held_suffix, opens_thinking
from .toolcall import ToolCall, ToolCallSplitter
from .tools import mcp_tools, run_call

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TOKENIZER = os.path.join(ROOT, "model", "tokenizer")
STAGES = ["pretrain", "full_sft", "rlhf", "reason", "grpo", "ppo_actor", "tool_sft", "agent"]  # --model_mode 0..7
VLM_STAGES = ["pretrain_vlm", "sft_vlm"]  # eval_vlm.py's --model_mode 0..1
LORA_DIR = "lora"  # LoRA weights live in out/lora/lora_<name>_<hidden>[_moe].pth


# ----------------------------------------------------------------------------------------------------------
# Choosing and loading a model


def add_model_args(parser, quantize: bool = False, speculative: bool = False, vision: bool = False):
    """Flags that pick the model, with the same names in every script that talks to one; `quantize` adds
    --quantize, for the scripts that only run the model (not those that export or train it); `speculative`
    adds --draft_weight and --spec_k, for those that decode one reply at a time; `vision` adds --vision_model,
    for those that take images."""
    g = parser.add_argument_group("model")
    g.add_argument("--model_mode", type=int, default=1, choices=range(len(STAGES)),
                   help="0 pretrain, 1 full_sft, 2 rlhf (DPO), 3 reason, 4 grpo, 5 ppo_actor, 6 tool_sft, "
                        "7 agent: picks "
                        "out/<stage>_<hidden>.pth")
    add_checkpoint_args(g)
    if vision:
        add_vision_arg(g)
    if quantize:
        g.add_argument("--quantize", default="none", choices=["none", "int8", "float16"],
                       help="int8: the block projections' weights in int8 (torchao weight-only; activations stay "
                            "in --dtype): about 1/3 of the float32 weight memory, but slower decoding in eager "
                            "PyTorch on a CPU; float16: every projection and the head in float16, activations in "
                            "--dtype: the fastest CPU decoding, with --dtype float32 (README: Speed and memory)")
    if speculative:
        add_speculative_args(g)
    return parser


def add_vlm_model_args(parser):
    """add_model_args for eval_vlm.py: --model_mode picks a MiniMind-V stage (VLM_STAGES)."""
    g = parser.add_argument_group("model")
    g.add_argument("--model_mode", type=int, default=1, choices=range(len(VLM_STAGES)),
                   help="0 pretrain_vlm, 1 sft_vlm: picks out/<stage>_<hidden>.pth")
    add_checkpoint_args(g)
    add_vision_arg(g)
    parser.set_defaults(stages=VLM_STAGES)  # weights_path reads --model_mode against these
    return parser


def add_checkpoint_args(g):
    g.add_argument("--out_dir", default="out", help="where the .pth checkpoints are")
    g.add_argument("--hidden_size", type=int, default=None,
                   help="size flags: default from the checkpoint's meta (the file name needs hidden_size: 512)")
    g.add_argument("--num_hidden_layers", type=int, default=None)
    g.add_argument("--use_moe", type=int, default=None, choices=[0, 1])
    g.add_argument("--load_from", "--weight", default=None,
                   help="a Hugging Face folder (or a .pth file) instead of out/")
    g.add_argument("--lora_name", default=None, help="merge out/lora/lora_<name>_<hidden>.pth into the model")
    g.add_argument("--tokenizer_path", default=None,
                   help="default: the HF folder's own tokenizer, else model/tokenizer")
    g.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])


def add_vision_arg(g):
    g.add_argument("--vision_model", default=None,
                   help="MiniMind-V: the vision encoder's folder (a local CLIP/SigLIP), when not the one recorded "
                        "in the checkpoint (trained elsewhere, moved)")


def add_speculative_args(group):
    group.add_argument("--draft_weight", default=None,
                       help="speculative decoding: a smaller MiniMind checkpoint (.pth or HF folder) with the same "
                            "tokenizer drafts --spec_k tokens that the model checks in one forward, or 'mtp' for the "
                            "model's own multi-token-prediction modules. Greedy replies stay token for token the "
                            "same and sampled ones keep the model's distribution")
    group.add_argument("--spec_k", type=int, default=4,
                       help="tokens drafted per step (with mtp: at most the model's mtp_depth)")


def weights_path(args) -> str:
    """The file or folder the flags point at, or a CheckpointError listing what is there instead."""
    if args.load_from:
        if not os.path.exists(args.load_from):
            raise CheckpointError(f"--load_from {args.load_from}: no such file or folder")
        return args.load_from
    stage = getattr(args, "stages", STAGES)[args.model_mode]
    path = checkpoint_path(args.out_dir, stage, args.hidden_size or 512, bool(args.use_moe))
    if not os.path.exists(path):
        raise CheckpointError(f"{path} not found (--model_mode {args.model_mode} = {stage})."
                              f"\n{describe_out_dir(args.out_dir)}")
    return path


CHECKPOINT_NAME = re.compile(rf"^({'|'.join(STAGES)})_(\d+)(_moe)?\.pth$")


def is_model_file(name: str) -> bool:
    """A .pth that holds a model to talk to: not a training run's resume state, an RL run's weight hand-over
    copy, or a PPO critic."""
    return name.endswith(".pth") and not name.endswith(("_resume.pth", "_rollout.pth")) \
        and not name.startswith("ppo_critic_")


def describe_out_dir(out_dir: str) -> str:
    """What the user could load from `out_dir`, each with the flags that pick it."""
    if not os.path.isdir(out_dir):
        return f"{out_dir}/ does not exist: train a stage first (e.g. train_pretrain.py), or pass --out_dir."
    lines = []
    for name in sorted(os.listdir(out_dir)):
        match = CHECKPOINT_NAME.match(name)
        if match:
            stage, hidden, moe = match.groups()
            flags = f"--model_mode {STAGES.index(stage)} --hidden_size {hidden}{' --use_moe 1' if moe else ''}"
            lines.append(f"  {name:32s} {flags}")
        elif is_model_file(name):
            lines.append(f"  {name:32s} --load_from {os.path.join(out_dir, name)}")
        elif os.path.isfile(os.path.join(out_dir, name, "config.json")):
            lines.append(f"  {name + '/':32s} --load_from {os.path.join(out_dir, name)}")
    if not lines:
        return f"{out_dir}/ holds no checkpoints: train a stage first, or pass --out_dir / --load_from."
    return f"Checkpoints in {out_dir}/:\n" + "\n".join(lines)


def load_chat_model(args, quiet=False):
    """(model, tokenizer, path) ready to generate: eval mode, on the chosen device and dtype, LoRA merged,
    quantised when `args.quantize` (see add_model_args) asks.

    Raises CheckpointError with a message meant for the user; scripts print it and exit.
    """
    from transformers import AutoTokenizer

    from .checkpoint import size_overrides
    from .runtime import pick_device, pick_dtype

    path = weights_path(args)
    # An HF folder carries its own config; size flags only choose and shape a .pth.
    overrides = {} if os.path.isdir(path) else size_overrides(args)
    overrides["vision_model"] = getattr(args, "vision_model", None)  # a VLM's encoder folder (None: its own)
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    try:
        model, _ = load_model(path, overrides, quiet=quiet)  # on the CPU first, so LoRA joins before the move
    except (OSError, ValueError) as e:  # CheckpointError is a ValueError; HF raises OSError for bad folders
        hint = "" if os.path.isdir(path) else (
            "\nCheck --model_mode and the size flags (--hidden_size, --num_hidden_layers, --use_moe).")
        raise CheckpointError(f"{e}{hint}") from e
    if args.lora_name:
        merge_lora_file(model, checkpoint_path(os.path.join(args.out_dir, LORA_DIR), f"lora_{args.lora_name}",
                                               model.config.hidden_size, model.config.use_moe))
    model = model.to(device=device, dtype=dtype)
    quantize = getattr(args, "quantize", "none")  # after the LoRA merge: the merged weights are quantised
    if quantize != "none":
        from .quant import half_weights, quantize_int8
        (quantize_int8 if quantize == "int8" else half_weights)(model)
    tokenizer_path = args.tokenizer_path or (
        path if os.path.isfile(os.path.join(path, "tokenizer_config.json")) else DEFAULT_TOKENIZER)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    if len(tokenizer) > model.config.vocab_size:
        raise CheckpointError(f"tokenizer {tokenizer_path} has {len(tokenizer)} tokens but the model only "
                              f"{model.config.vocab_size}: pass the --tokenizer_path it was trained with")
    return model.eval(), tokenizer, path


def load_drafter(args, model, tokenizer):
    """The drafter --draft_weight asks for (None without it), checked against the loaded model: the same
    vocabulary and tokenizer, spec_k >= 1, a model with MTP modules for 'mtp'. Raises CheckpointError with one
    line for the user."""
    from .generation import DraftModel, MTPDrafter, activation_dtype

    path = getattr(args, "draft_weight", None)
    if not path:
        return None
    if args.spec_k < 1:
        raise CheckpointError(f"--spec_k {args.spec_k}: draft at least one token per step")
    if path == "mtp":
        depth = getattr(model.config, "mtp_depth", 0) or 0
        if not depth or not hasattr(model, "mtp"):
            raise CheckpointError("--draft_weight mtp: this model has no multi-token-prediction modules "
                                  "(mtp_depth 0); pass a draft checkpoint instead")
        if args.spec_k > depth:
            print(f"--draft_weight mtp: {depth} MTP module(s) draft at most {depth} token(s) per step "
                  f"(--spec_k {args.spec_k} -> {depth})")
        return MTPDrafter(min(args.spec_k, depth))
    if not os.path.exists(path):
        raise CheckpointError(f"--draft_weight {path}: no such file or folder")
    draft, meta = load_model(path, quiet=True)
    if draft.config.vocab_size != model.config.vocab_size:
        raise CheckpointError(f"--draft_weight {path}: its vocabulary ({draft.config.vocab_size}) differs from the "
                              f"model's ({model.config.vocab_size}); a drafter needs the same tokenizer")
    check_draft_tokenizer(path, meta, tokenizer)
    device = next(model.parameters()).device
    dtype = activation_dtype(model)  # weight-only int8 or float16 projections keep their activations' dtype
    return DraftModel(draft.to(device=device, dtype=dtype).eval(), args.spec_k)


def check_draft_tokenizer(path: str, meta: dict, tokenizer):
    """The drafter's tokenizer (its HF folder's own, or the one its .pth meta names) must have the same
    vocabulary as the model's: same-size vocabularies can still mean different strings per id."""
    from transformers import AutoTokenizer

    from .dataset import tokenizer_fingerprint

    theirs = meta.get("tokenizer_fingerprint")
    if theirs is None:
        folder = path if os.path.isfile(os.path.join(path, "tokenizer_config.json")) else \
            meta.get("args", {}).get("tokenizer_path")
        if not folder or not os.path.isdir(folder) or os.path.realpath(folder) == \
                os.path.realpath(getattr(tokenizer, "name_or_path", "") or ""):
            return  # nothing recorded, or the very folder the model uses
        theirs = tokenizer_fingerprint(AutoTokenizer.from_pretrained(folder))
    if theirs != tokenizer_fingerprint(tokenizer):
        raise CheckpointError(f"--draft_weight {path}: trained with another tokenizer (vocabulary fingerprint "
                              f"{theirs} != {tokenizer_fingerprint(tokenizer)}); a drafter needs the model's")


def merge_lora_file(model, path: str):
    """Put trained LoRA weights on the model and fold them into its weights: a plain model again, as fast."""
    from .model_lora import load_lora, merge_lora

    if not os.path.exists(path):
        lora_dir = os.path.dirname(path)
        present = sorted(n for n in os.listdir(lora_dir) if n.endswith(".pth")) if os.path.isdir(lora_dir) else []
        raise CheckpointError(f"{path} not found. LoRA weights in {lora_dir}/: {', '.join(present) or 'none'}")
    load_lora(model, path)  # applies the rank/alpha/targets saved in its JSON meta, then loads
    merge_lora(model)


# ----------------------------------------------------------------------------------------------------------
# Prompts


def chat_prompt_ids(tokenizer, messages: list[dict], tools: list[dict] | None = None, **template_args) -> list[int]:
    """Token ids of the conversation in the chat template, ending with the assistant's generation prompt.
    `tools`: JSON schemas of the functions on offer; `template_args` e.g. enable_thinking=True."""
    text = tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False, add_generation_prompt=True,
                                         **template_args)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


DESCRIBE_PROMPT = "Describe the picture."  # the question when an image comes without one


def image_part(image) -> dict:
    """A content part holding an image: whatever its caller decodes later (a path, bytes, a parsed data URL)."""
    return {"type": "image", "image": image}


def content_text(content) -> str:
    """The text of a message's content: a string, or the text parts of a list of parts, joined."""
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part["text"] for part in content if part["type"] == "text")


def image_chat_prompt_ids(tokenizer, messages: list[dict], image_token_id: int, image_tokens: int,
                          tools: list[dict] | None = None, **template_args) -> tuple[list[int], list]:
    """(token ids, the images in order) of a conversation whose user messages may hold images: the prompt of
    a MiniMind-V model, its image slots where the images go (model/model_vlm.py).

    A message's content is a string (text only: an `<image>` typed in it is text) or a list of parts,
    {"type": "text", "text": ...} and `image_part(image)`. Each image becomes a run of `image_tokens` slot ids
    (`image_token_id`), followed by a newline when more of the message follows and does not start with one:
    minimind-v's data write `<image>\\n<question>`, so ["photo", "What is it?"] reads as the model learned.

    The template renders each image as a marker made for this call alone (a random uuid between NUL
    characters), and the text is encoded piece by piece around the markers (`encode_with_images`): no text
    a user sends can become a slot, whatever it holds. Raises ValueError for an image outside a user message.
    """
    from .vision import encode_with_images

    marker = f"\x00image-{uuid.uuid4().hex}\x00"
    images, rendered = [], []
    for n, message in enumerate(messages, 1):
        content = message.get("content")
        if isinstance(content, list):
            text = ""
            for k, part in enumerate(content):
                if part["type"] == "text":
                    text += part["text"]
                    continue
                if message.get("role") != "user":
                    raise ValueError(f"message {n} ({message.get('role')}): images go in user messages only")
                images.append(part["image"])
                after = content[k + 1] if k + 1 < len(content) else None
                newline = after is not None and not (after["type"] == "text" and after["text"].startswith("\n"))
                text += marker + ("\n" if newline else "")
            message = {**message, "content": text}
        rendered.append(message)
    text = tokenizer.apply_chat_template(rendered, tools=tools or None, tokenize=False, add_generation_prompt=True,
                                         **template_args)
    if text.count(marker) != len(images):  # a template that drops or repeats a message would misplace images
        raise ValueError(f"the chat template rendered {text.count(marker)} of {len(images)} image(s)")
    return encode_with_images(tokenizer, text, image_token_id, image_tokens, marker=marker), images


def is_vision_model(model) -> bool:
    """A MiniMind-V model (model/model_vlm.py): it takes images."""
    return callable(getattr(model, "embed_inputs", None))


def text_prompt_ids(tokenizer, text: str) -> list[int]:
    """Plain text to continue, as pretraining saw documents start: bos + text."""
    return [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]


def recent_history(messages: list[dict], turns: int) -> list[dict]:
    """The last `turns` user/assistant exchanges: small models were trained on short contexts."""
    return messages[len(messages) - 2 * turns:] if turns > 0 else []


# ----------------------------------------------------------------------------------------------------------
# From tokens to text


class IncrementalDetokenizer:
    """Token ids in, text out, never half a character.

    Byte-level BPE tokens are byte strings: '你' is 3 UTF-8 bytes and an emoji 4, and either may be split over
    tokens; decoding such a token alone gives U+FFFD. So decode a short window of recent tokens and release
    text only when it ends on a complete character (vLLM's method; it also keeps the spaces that decoding a
    token alone would get wrong for some tokenizers). Special tokens (eos) decode to nothing.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # start of the window that is decoded again for context
        self.read = 0  # tokens up to here are already released as text

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        released = self.decode(self.ids[self.prefix:self.read])
        text = self.decode(self.ids[self.prefix:])
        if text.endswith("\ufffd"):  # an incomplete character: wait for the bytes that finish it
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(released):]

    def flush(self) -> str:
        """What is still held back at the end (U+FFFD if the model really produced broken bytes)."""
        released = self.decode(self.ids[self.prefix:self.read])
        text = self.decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return text[len(released):]


class StopStrings:
    """Cut the reply at the first stop string. A stop string may arrive over several pushes, so text that
    could be the start of one is held back until it is clearly not."""

    def __init__(self, stops):
        self.stops = [s for s in stops or [] if s]
        self.pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self.stops:
            return text
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending, self.stopped = self.pending[:min(hits)], "", True
            return out
        keep = held_suffix(self.pending, self.stops)
        out, self.pending = self.pending[:len(self.pending) - keep], self.pending[len(self.pending) - keep:]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


@dataclass
class Delta:
    """New output of a reply: thinking, answer and finished tool calls apart."""
    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)

    def __bool__(self):
        return bool(self.reasoning or self.content or self.tool_calls)

    def __add__(self, other: "Delta") -> "Delta":
        return Delta(self.reasoning + other.reasoning, self.content + other.content,
                     self.tool_calls + other.tool_calls)


class ReplyStream:
    """Token ids in, `Delta`s out: UTF-8-safe decoding -> stop strings -> optional <think> split -> optional
    tool calls taken out of the content.

    `split_think=False` passes text through untouched (plain completions). `prompt_ids`, when given, say
    whether the reply starts inside a think block: templates with a thinking switch end the prompt with
    `<think>`. `tools`: the names of the functions on offer (any iterable; None = no tool calls, the
    content is text). The whole reply so far is kept in `reasoning` / `content` / `tool_calls`, the tokens
    pushed in `n_tokens`.
    """

    def __init__(self, tokenizer, stop=(), split_think=True, prompt_ids=None, tools=None):
        self.detokenizer = IncrementalDetokenizer(tokenizer)
        self.stop = StopStrings(stop)
        thinking = bool(prompt_ids) and opens_thinking(tokenizer.decode(list(prompt_ids[-8:])))
        self.splitter = ThinkSplitter(thinking) if split_think else None
        self.calls = ToolCallSplitter(tools) if tools is not None else None
        self.reasoning, self.content, self.tool_calls, self.n_tokens = "", "", [], 0

    @property
    def stopped(self) -> bool:
        """A stop string was hit: the caller ends generation (finish_reason 'stop')."""
        return self.stop.stopped

    def push(self, token_id: int) -> Delta:
        self.n_tokens += 1
        return self.route(self.stop.push(self.detokenizer.push(token_id)))

    def finish(self) -> Delta:
        """Release everything held back; call once when generation ends."""
        text = self.stop.push(self.detokenizer.flush())
        delta = self.route(text + self.stop.flush())
        if self.splitter:
            reasoning, content = self.splitter.flush()
            delta = delta + self.record(Delta(reasoning, *self.take_calls(content)))
        if self.calls:
            delta = delta + self.record(Delta(content=self.calls.flush()))
        return delta

    def route(self, text: str) -> Delta:
        reasoning, content = self.splitter.push(text) if self.splitter else ("", text)
        return self.record(Delta(reasoning, *self.take_calls(content)))

    def take_calls(self, content: str) -> tuple[str, list]:
        return self.calls.push(content) if self.calls else (content, [])

    def record(self, delta: Delta) -> Delta:
        self.reasoning += delta.reasoning
        self.content += delta.content
        self.tool_calls += delta.tool_calls
        return delta


# ----------------------------------------------------------------------------------------------------------
# Tool use


def add_tool_args(parser):
    """Flags that put tools on offer, with the same names in every script that chats."""
    g = parser.add_argument_group("tools")
    g.add_argument("--tools", default="",
                   help="demo tools on offer: names, comma-separated (calculator,lookup,convert), or 'all'")
    g.add_argument("--mcp", action="append", default=[], metavar="CMD",
                   help='a stdio MCP server to start (e.g. "python scripts/mcp_demo_tools.py"); its tools join '
                        "those of --tools. Repeatable")
    g.add_argument("--max_tool_turns", type=int, default=4,
                   help="model replies per question at most, those that call tools included")
    return parser


def pick_tools(available, names: str) -> list:
    """'calculator,convert' or 'all' -> those of `available`; a ValueError lists the names there are."""
    if names.strip() == "all":
        return list(available)
    by_name = {tool.name: tool for tool in available}
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in by_name]
    if unknown:
        raise ValueError(f"unknown tool {', '.join(unknown)}: there are {', '.join(by_name)}")
    return [by_name[name] for name in wanted]


@contextmanager
def open_tools(args, available):
    """The tools add_tool_args' flags ask for: those of `available` named by --tools, then each --mcp server's
    (started here, stopped on leaving). A ValueError says what failed: an unknown tool, a server that does
    not start, a name offered twice."""
    with ExitStack() as stack:
        tools = pick_tools(available, args.tools)
        for command in args.mcp:
            try:
                served, close = mcp_tools(shlex.split(command))
            except Exception as e:  # whatever the server or the SDK raised, said with the command that failed
                raise ValueError(f"--mcp {command!r}: {type(e).__name__}: {e}") from e
            stack.callback(close)
            tools += served
        yield check_tool_names(tools)


def check_tool_names(tools: list) -> list:
    """`tools`, or a ValueError if two share a name: a call names its function, so which would run?"""
    names = [tool.name for tool in tools]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"tools offered twice: {', '.join(twice)}")
    return tools


def chat_with_tools(generate_turn, messages: list[dict], tools: list, max_turns: int = 4, on_tool=None):
    """Ask the model until it answers without calling a tool: OpenAI's client loop, on any model.

    `generate_turn(messages)` runs the model once (streaming to the user as it likes) and returns the
    finished reply: anything with `reasoning`, `content` and `tool_calls` (a ReplyStream, a Delta). While the
    reply calls tools, it joins `messages` as an assistant message in OpenAI's form, each call runs
    (model/tools.py's `run_call`: a failure comes back as an error text for the model to read, never raises),
    its result joins as a `tool` message and goes to `on_tool(call, result)`, and the model is asked again.

    Returns the last reply; `messages` holds the exchange before it. At most `max_turns` replies: a returned
    reply that still has `tool_calls` hit that limit, and its calls were not run (the caller says so).
    """
    reply = generate_turn(messages)
    for _ in range(max_turns - 1):
        if not reply.tool_calls:
            break
        # Our own ids, unique in the conversation: a server's ids (if any) need not be.
        ids = [f"call_{uuid.uuid4().hex[:12]}" for _ in reply.tool_calls]
        messages.append({"role": "assistant", "content": reply.content,
                         "tool_calls": [call.openai(call_id) for call, call_id in zip(reply.tool_calls, ids)]})
        if reply.reasoning:  # the reply as the model wrote it: the next one continues its thought
            messages[-1]["reasoning_content"] = reply.reasoning
        for call, call_id in zip(reply.tool_calls, ids):
            result = run_call(tools, call)
            messages.append({"role": "tool", "tool_call_id": call_id, "content": result})
            if on_tool:
                on_tool(call, result)
        reply = generate_turn(messages)
    return reply


def call_text(call: ToolCall) -> str:
    """A call as a reader writes one: `calculator({"expression": "12*13"})`."""
    return f"{call.name}({json.dumps(call.arguments, ensure_ascii=False)})"


# ----------------------------------------------------------------------------------------------------------
# Terminal display (eval_model.py, scripts/chat_openai_api.py)


class ReplyPrinter:
    """Prints a reply in the terminal as it streams: the thinking dimmed under its own header, then the answer.
    Takes anything with `reasoning` and `content` text: a Delta, or a whole ReplyStream."""

    def __init__(self):
        self.section = None
        self.dim, self.reset = ("\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "")

    def __call__(self, delta):
        for section, text in (("thinking", delta.reasoning), ("answer", delta.content)):
            if not text:
                continue
            if section != self.section:
                if section == "thinking":
                    print(f"{self.dim}[thinking]", flush=True)
                elif self.section == "thinking":  # an answer header only when there was thinking
                    print(f"{self.reset}\n[answer]", flush=True)
                self.section = section
            print(text, end="", flush=True)

    def end(self):
        print(self.reset if self.section == "thinking" else "")


def print_tool_call(call: ToolCall, result: str, width: int = 200):
    """One tool call and its result on one dim line: `[tool] calculator({"expression": "12*13"}) → 156`."""
    dim, reset = ("\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "")
    result = " ".join(result.split())  # one line, whatever the tool returned
    result = result if len(result) <= width else result[:width] + "…"
    print(f"{dim}[tool] {call_text(call)} → {result}{reset}", flush=True)
