"""Chat with a MiniMind model in the browser. The model runs inside this app: no API server needed.

    streamlit run scripts/web_demo.py            # then open http://localhost:8501

The sidebar picks a checkpoint (the .pth files and Hugging Face folders in a folder, out/ by default) and the
sampling settings. A reasoning model's thinking is folded away in an expander above its answer. A pretrained
(not chat-tuned) checkpoint continues your text instead of answering it.
"""
import argparse
import os
import sys
import time

import streamlit as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # for `python scripts/<name>.py`: the packages sit beside scripts/
from model.chat import ReplyStream, add_model_args, chat_prompt_ids, load_chat_model, recent_history, text_prompt_ids
from model.checkpoint import CheckpointError
from model.generation import generate_reply


def checkpoints_in(folder: str) -> list[str]:
    """Names of the .pth files and Hugging Face folders (those with a config.json) in `folder`."""
    if not os.path.isdir(folder):
        return []
    return sorted(name for name in os.listdir(folder) if name.endswith(".pth")
                  or os.path.isfile(os.path.join(folder, name, "config.json")))


@st.cache_resource(max_entries=2, show_spinner="Loading the model...")
def load(path: str, modified: float):
    """(model, tokenizer), kept across reruns; `modified` makes a retrained file load again."""
    args = add_model_args(argparse.ArgumentParser()).parse_args(["--load_from", path])
    model, tokenizer, _ = load_chat_model(args, quiet=True)
    return model, tokenizer


def show_message(message: dict):
    with st.chat_message(message["role"]):
        if message.get("reasoning"):
            with st.expander("Thinking"):
                st.markdown(message["reasoning"])
        st.markdown(message["content"])
        if message.get("stats"):
            st.caption(message["stats"])


def answer(model, tokenizer, messages: list[dict], pretrain: bool, history_turns: int, sampling: dict) -> dict:
    """Stream the reply into the page; return it as a message."""
    if pretrain:
        ids = text_prompt_ids(tokenizer, messages[-1]["content"])
    else:
        history = recent_history(messages[:-1], history_turns)
        ids = chat_prompt_ids(tokenizer, [{"role": m["role"], "content": m["content"]} for m in history]
                              + [messages[-1]])
    reply = ReplyStream(tokenizer, split_think=not pretrain, prompt_ids=ids)
    with st.chat_message("assistant"):
        thinking_slot, answer_slot = st.empty(), st.empty()
        start = time.perf_counter()
        for delta in generate_reply(model, ids, reply, **sampling):
            if delta.reasoning:
                with thinking_slot.container(), st.expander("Thinking", expanded=True):
                    st.markdown(reply.reasoning)
            if delta.content:
                answer_slot.markdown(reply.content + "▌")
        seconds = time.perf_counter() - start
        if reply.reasoning:  # fold the thinking away once the answer is there
            with thinking_slot.container(), st.expander("Thinking"):
                st.markdown(reply.reasoning)
        answer_slot.markdown(reply.content)
        stats = f"{reply.n_tokens} tokens, {reply.n_tokens / seconds:.1f} tokens/s"
        st.caption(stats)
    return {"role": "assistant", "content": reply.content, "reasoning": reply.reasoning, "stats": stats}


def main():
    st.set_page_config(page_title="MiniMind", layout="centered")
    st.session_state.setdefault("messages", [])
    with st.sidebar:
        st.title("MiniMind")
        folder = st.text_input("Checkpoint folder", "out")
        folder = folder if os.path.isabs(folder) else os.path.join(ROOT, folder)
        names = checkpoints_in(folder)
        if not names:
            st.info(f"No checkpoints in {folder}: train a stage first (e.g. train_pretrain.py, "
                    "train_full_sft.py), or point to another folder.")
            st.stop()
        default = next((i for i, name in enumerate(names) if name.startswith("full_sft")), 0)
        name = st.selectbox("Model", names, index=default)
        sampling = {
            "temperature": st.slider("Temperature (0 = greedy)", 0.0, 1.5, 0.85, 0.05),
            "top_p": st.slider("Top-p", 0.05, 1.0, 0.85, 0.05),
            "max_new_tokens": st.slider("Max new tokens", 16, 4096, 512, 16),
        }
        history_turns = st.slider("History turns sent", 0, 10, 2)
        if st.button("Clear chat"):
            st.session_state.messages = []
    path = os.path.join(folder, name)
    try:
        model, tokenizer = load(path, os.path.getmtime(path))
    except (CheckpointError, OSError) as e:
        st.error(str(e))
        st.stop()
    pretrain = name.startswith("pretrain")
    st.caption(f"{name} · {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters · {model.device}"
               + (" · pretrained only: it continues your text" if pretrain else ""))

    for message in st.session_state.messages:
        show_message(message)
    prompt = st.chat_input("Text to continue" if pretrain else "Ask MiniMind")
    if prompt:
        message = {"role": "user", "content": prompt}
        st.session_state.messages.append(message)
        show_message(message)
        reply = answer(model, tokenizer, st.session_state.messages, pretrain, history_turns, sampling)
        st.session_state.messages.append(reply)


main()
