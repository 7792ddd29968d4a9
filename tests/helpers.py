"""Shared test helpers: tiny models, a scripted model with a known reply, checkpoints in a temp dir, a tiny
corpus and the losses a training run logged."""
import copy
import csv
import json
import math
import os
import random
import signal
import subprocess
import sys
from functools import lru_cache

import torch
from transformers import AutoTokenizer

from model import MiniMindConfig, MiniMindForCausalLM
from model.chat import DEFAULT_TOKENIZER, chat_prompt_ids
from model.checkpoint import checkpoint_path, save_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = DEFAULT_TOKENIZER
THINKING_REPLY = "<think>I think so</think><answer>Yes 是的</answer>"


@lru_cache
def tokenizer():
    return AutoTokenizer.from_pretrained(DEFAULT_TOKENIZER)


def tiny_model(seed=0, **overrides):
    """A random 64 x 2 model. Untied: a random model with tied embeddings greedily repeats its input token,
    which would make 'same tokens batched and alone' hold trivially."""
    torch.manual_seed(seed)
    kw = dict(vocab_size=len(tokenizer()), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=False)
    return MiniMindForCausalLM(MiniMindConfig(**{**kw, **overrides})).eval()


def scripted_model(reply=THINKING_REPLY, **overrides):
    """A model whose greedy answer to any chat prompt is `reply` followed by eos.

    Every layer's output projections are zero, so the residual stream is the current token's embedding and
    the next token depends on the current one only. Embeddings put each token of the chain on its own axis
    and the (untied) head maps that axis to the token's successor. The reply's tokens must be distinct.
    """
    tok = tokenizer()
    after = chat_prompt_ids(tok, [{"role": "user", "content": "hi"}])[-1]  # the generation prompt's last token
    chain = [after] + tok(reply, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    model = tiny_model(**overrides)
    assert len(set(chain)) == len(chain) <= model.config.hidden_size
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        for axis, (token, successor) in enumerate(zip(chain, chain[1:])):
            model.model.embed_tokens.weight[token] = 0
            model.model.embed_tokens.weight[token, axis] = 1
            model.lm_head.weight[successor, axis] = 10
    return model


def save_checkpoint(model, out_dir, stage="full_sft"):
    path = checkpoint_path(str(out_dir), stage, model.config.hidden_size, model.config.use_moe)
    save_weights(model, path, {"stage": stage}, dtype=torch.float32)
    return path


def write_corpus(path, n=160, seed=0):
    """A pretraining jsonl of random short bilingual sentences."""
    rng = random.Random(seed)
    words = "the cat sat on a mat while seven birds sang 小猫 在 垫子 上 睡觉 鸟 唱歌".split()
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(5, 30)))},
                               ensure_ascii=False) + "\n")
    return str(path)


def interrupt_at(argv, line_start, sig=signal.SIGINT, timeout=120):
    """Run `python *argv` in the repo, send `sig` when it prints a line starting with `line_start` (SIGINT:
    Ctrl-C), wait for it to end; returns the finished process (`.returncode`)."""
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:
        if line.startswith(line_start):
            proc.send_signal(sig)
            break
    proc.communicate(timeout=timeout)
    return proc


def losses(out_dir, name="pretrain_32"):
    """{step: loss} from the run's CSV; a step logged twice (re-run after a resume) keeps its last value."""
    with open(os.path.join(out_dir, f"{name}_log.csv")) as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f) if r.get("loss")}


def perturbed(model, std=0.1, seed=1):
    """A copy with noise on every weight: a policy that has moved away from its reference (or an old policy)."""
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * std)
    return other


def memorizing_model(examples, seed=0, max_steps=400):
    """A tiny model trained until its greedy reply to each prompt is the given one: `examples` are
    (prompt ids, reply ids with eos). For replies `scripted_model` cannot say, whose tokens repeat (a tool
    call's quotes and braces): its next token depends on the current one only, this one reads the context.

    An example that another one's text starts with (a first turn of a longer conversation) shares its row,
    which keeps the training short. Trained until every reply token has probability > 0.6, so greedy
    decoding picks it with a margin that batching's rounding cannot flip.
    """
    rows = []  # [token ids, which of them are learned]
    for prompt, reply in sorted(examples, key=lambda e: -len(e[0]) - len(e[1])):
        text = prompt + reply
        row = next((r for r in rows if r[0][:len(text)] == text), None)
        if row is None:
            rows.append(row := [text, [False] * len(text)])
        row[1][len(prompt):len(text)] = [True] * len(reply)
    width = max(len(text) for text, _ in rows)
    ids = torch.tensor([text + [0] * (width - len(text)) for text, _ in rows])
    mask = torch.tensor([[1] * len(text) + [0] * (width - len(text)) for text, _ in rows])
    # positions 0..width-2 that predict a learned token (position t predicts token t + 1), and those tokens
    predicts = torch.tensor([flags[1:] + [False] * (width - len(flags)) for _, flags in rows])
    targets = ids[:, 1:][predicts]
    model = tiny_model(seed).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(max_steps):
        hidden, _ = model.model(ids, mask)
        # the head and its softmax on the learned positions only: a few hundred of the batch's ~1,500
        logp = model.lm_head(hidden[:, :-1][predicts]).float().log_softmax(-1).gather(-1, targets[:, None])
        if logp.min() > math.log(0.6):
            return model.eval()
        optimizer.zero_grad()
        (-logp.mean()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # at this learning rate: ~5x fewer steps
        optimizer.step()
    raise AssertionError(f"the model did not learn its replies in {max_steps} steps")
