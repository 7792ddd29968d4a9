"""Chat with a MiniMind model in the browser. The model runs inside this app: no API server needed.

    streamlit run scripts/web_demo.py                       # then open http://localhost:8501
    streamlit run scripts/web_demo.py -- --out_dir out/demo # another checkpoint folder

It listens on 127.0.0.1 only (.streamlit/config.toml, read when started from the repository root), like the API
server; `--server.address 0.0.0.0` opens it to the network.

The sidebar picks a checkpoint (the model .pth files and Hugging Face folders in a folder, out/ by default; the
newest of the largest chat models first) and the sampling settings. A reasoning model's thinking is folded away in an expander above its answer. A pretrained
(not chat-tuned) checkpoint continues your text instead of answering it.

Images: with a MiniMind-V checkpoint (sft_vlm_*.pth, pretrain_vlm_*.pth) the chat input takes image files
(the paperclip, or drop them on it): they join the message they are sent with, show in the history, and stay in
their turn for the replies after (as far as "History turns sent" reaches). A message with an image and no text
asks "Describe the picture.". A text model's input takes no files.

Tools: pick demo tools in the sidebar, and/or give the command line of a stdio MCP server (e.g.
`python scripts/mcp_demo_tools.py`); the model may then call them (model/chat.py's `chat_with_tools`, the loop
eval_model.py uses), and each call shows folded, with its result, above the answer.
"""
import argparse
import os
import shlex
import sys
import time

import streamlit as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # for `python scripts/<name>.py`: the packages sit beside scripts/
from demo.tools import demo_tools
from model.chat import (DESCRIBE_PROMPT, ReplyStream, add_model_args, call_text, chat_prompt_ids, chat_with_tools,
                        check_tool_names, image_chat_prompt_ids, image_part, is_model_file, is_vision_model,
                        load_chat_model, recent_history, text_prompt_ids)
from model.checkpoint import CheckpointError
from model.generation import generate_reply
from model.tools import mcp_tools
from model.vision import VisionError, load_image_processor, load_images, pixel_values

IMAGE_TYPES = ["png", "jpg", "jpeg", "webp", "gif", "bmp"]  # what the chat input offers to upload


def checkpoints_in(folder: str) -> list[str]:
    """Names of the model .pth files (not resume states) and Hugging Face folders (those with a config.json)."""
    if not os.path.isdir(folder):
        return []
    return sorted(name for name in os.listdir(folder) if is_model_file(name)
                  or os.path.isfile(os.path.join(folder, name, "config.json")))


@st.cache_resource(max_entries=2, show_spinner="Loading the model...")
def load(path: str, modified: float):
    """(model, tokenizer, image processor: None for a text model), kept across reruns; `modified` makes a
    retrained file load again."""
    args = add_model_args(argparse.ArgumentParser()).parse_args(["--load_from", path])
    model, tokenizer, _ = load_chat_model(args, quiet=True)
    processor = load_image_processor(model.config.vision_model_path) if is_vision_model(model) else None
    return model, tokenizer, processor


@st.cache_resource(max_entries=2, show_spinner="Starting the MCP server...", on_release=lambda served: served[1]())
def mcp_server(command: str):
    """(tools, close) of a stdio MCP server: started once, kept across reruns, stopped when evicted."""
    return mcp_tools(shlex.split(command))


def show_tool_call(call: dict):
    with st.expander(f"Tool call: `{call['call']}`"):
        st.code(call["result"], language=None)


def show_message(message: dict):
    with st.chat_message(message["role"]):
        for call in message.get("calls", []):
            show_tool_call(call)
        if message.get("reasoning"):
            with st.expander("Thinking"):
                st.markdown(message["reasoning"])
        for image in message.get("images", []):
            st.image(image, width=256)
        st.markdown(message["content"])
        if message.get("stats"):
            st.caption(message["stats"])


def model_message(message: dict) -> dict:
    """A chat message as the prompt builders take it: a user message's images (file bytes) before its text."""
    if not message.get("images"):
        return {"role": message["role"], "content": message["content"]}
    parts = [image_part(image) for image in message["images"]]
    return {"role": message["role"], "content": parts + [{"type": "text", "text": message["content"]}]}


def prompt_inputs(model, tokenizer, processor, messages: list[dict], schemas: list) -> tuple[list[int], dict]:
    """(prompt ids, the images' pixel values as generation's keyword arguments: none for a text model)."""
    if processor is None:
        return chat_prompt_ids(tokenizer, messages, schemas), {}
    ids, images = image_chat_prompt_ids(tokenizer, messages, model.config.image_token_id, model.config.image_tokens,
                                        schemas)
    if not images:
        return ids, {}
    return ids, {"pixel_values": pixel_values(processor, load_images(images)).to(model.device)}


def answer(model, tokenizer, processor, messages: list[dict], pretrain: bool, history_turns: int, sampling: dict,
           tools: list) -> dict:
    """Stream the reply into the page, through the tool loop when tools are on offer; return it as a message."""
    schemas, names = [tool.schema() for tool in tools], [tool.name for tool in tools] or None
    with st.chat_message("assistant"):
        calls_box = st.container()  # the tool calls, above the thinking and the answer of the last reply
        thinking_slot, answer_slot = st.empty(), st.empty()
        timed, calls = [], []  # (reply, seconds) of each model reply; the calls with their results

        def reply_to(ids, images=None):
            """One model reply, streamed into the thinking and answer slots (a reply after a call replaces
            the text of the one before: usually empty beside its call)."""
            reply = ReplyStream(tokenizer, split_think=not pretrain, prompt_ids=ids, tools=names)
            start = time.perf_counter()
            for delta in generate_reply(model, ids, reply, **sampling, **(images or {})):
                if delta.reasoning:
                    with thinking_slot.container(), st.expander("Thinking", expanded=True):
                        st.markdown(reply.reasoning)
                if delta.content:
                    answer_slot.markdown(reply.content + "▌")
            timed.append((reply, time.perf_counter() - start))
            return reply

        def on_tool(call, result):
            calls.append({"call": call_text(call), "result": result})
            with calls_box:
                show_tool_call(calls[-1])

        if pretrain:
            reply = reply_to(text_prompt_ids(tokenizer, messages[-1]["content"]))
        else:
            history = recent_history(messages[:-1], history_turns)
            chat = [model_message(m) for m in history + [messages[-1]]]
            reply = chat_with_tools(lambda sent: reply_to(*prompt_inputs(model, tokenizer, processor, sent, schemas)),
                                    chat, tools, on_tool=on_tool)
        thinking_slot.empty()
        if reply.reasoning:  # fold the thinking away once the answer is there
            with thinking_slot.container(), st.expander("Thinking"):
                st.markdown(reply.reasoning)
        answer_slot.markdown(reply.content)
        n_tokens, seconds = sum(r.n_tokens for r, _ in timed), sum(s for _, s in timed)
        stats = f"{n_tokens} tokens, {n_tokens / seconds:.1f} tokens/s"
        if reply.tool_calls:
            stats += f" · stopped: the reply limit ({len(timed)}) came first, the last calls were not run"
        st.caption(stats)
    return {"role": "assistant", "content": reply.content, "reasoning": reply.reasoning, "calls": calls,
            "stats": stats}


def default_model(folder: str, names: list[str]) -> int:
    """Index of the model to offer first: the newest of the largest chat models (a pretrained model only
    continues text; the alphabetically first file was often a tiny distillation student)."""
    def rank(name):
        path = os.path.join(folder, name)
        size = os.path.getsize(path) if os.path.isfile(path) else sum(
            os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
        return not name.startswith("pretrain"), size, os.path.getmtime(path)
    return max(range(len(names)), key=lambda i: rank(names[i]))


def main():
    parser = argparse.ArgumentParser(description="MiniMind web chat")
    parser.add_argument("--out_dir", default="out", help="the checkpoint folder shown first")
    flags, _ = parser.parse_known_args()  # `streamlit run scripts/web_demo.py -- --out_dir out/demo`
    st.set_page_config(page_title="MiniMind", layout="centered")
    st.session_state.setdefault("messages", [])
    with st.sidebar:
        st.title("MiniMind")
        folder = st.text_input("Checkpoint folder", flags.out_dir)
        folder = folder if os.path.isabs(folder) else os.path.join(ROOT, folder)
        names = checkpoints_in(folder)
        if not names:
            st.info(f"No checkpoints in {folder}: train a stage first (e.g. train_pretrain.py, "
                    "train_full_sft.py), or point to another folder.")
            st.stop()
        name = st.selectbox("Model", names, index=default_model(folder, names))
        pretrain = name.startswith("pretrain") and not name.startswith("pretrain_vlm")  # captions are chat
        sampling = {
            "temperature": st.slider("Temperature (0 = greedy)", 0.0, 1.5, 0.85, 0.05),
            "top_p": st.slider("Top-p", 0.05, 1.0, 0.85, 0.05),
            "max_new_tokens": st.slider("Max new tokens", 16, 4096, 512, 16),
        }
        history_turns = st.slider("History turns sent", 0, 10, 2)
        available = {tool.name: tool for tool in demo_tools()}
        picked = st.multiselect("Tools", list(available), disabled=pretrain,
                                help="demo tools the model may call (a chat model trained on tool use)")
        command = st.text_input("MCP server", "", disabled=pretrain, placeholder="python scripts/mcp_demo_tools.py",
                                help="the command line of a stdio MCP server: its tools join those picked")
        if st.button("Clear chat"):
            st.session_state.messages = []
    tools = [] if pretrain else [available[name] for name in picked]
    try:
        if command.strip() and not pretrain:
            tools += mcp_server(command.strip())[0]
        check_tool_names(tools)
    except Exception as e:  # a server that does not start (whatever it raised), or a name offered twice
        st.error(f"Tools: {type(e).__name__}: {e}")
        st.stop()
    path = os.path.join(folder, name)
    try:
        model, tokenizer, processor = load(path, os.path.getmtime(path))
    except (CheckpointError, OSError, VisionError) as e:
        st.error(str(e))
        st.stop()
    st.caption(f"{name} · {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters · {model.device}"
               + (" · pretrained only: it continues your text" if pretrain else "")
               + (" · sees images: attach them to a message" if processor else ""))

    for message in st.session_state.messages:
        show_message(message)
    sees = processor is not None
    prompt = st.chat_input("Text to continue" if pretrain else "Ask MiniMind" + (" (images welcome)" if sees else ""),
                           accept_file="multiple" if sees else False, file_type=IMAGE_TYPES if sees else None)
    text, images = (prompt.text, [f.getvalue() for f in prompt.files]) if sees and prompt else (prompt, [])
    if prompt and images:
        try:
            load_images(images)  # an unreadable file is said now, before it joins the conversation
        except VisionError as e:
            st.error(f"Image: {e}")
            st.stop()
    if text or images:
        message = {"role": "user", "content": text or DESCRIBE_PROMPT, "images": images}
        st.session_state.messages.append(message)
        show_message(message)
        reply = answer(model, tokenizer, processor, st.session_state.messages, pretrain, history_turns, sampling,
                       tools)
        st.session_state.messages.append(reply)


main()
