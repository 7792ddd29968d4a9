"""Reasoning distillation (train_distill_reason.py, model/reasoning.py): the tag-weighted loss by hand, the
template check and the thinking/answer split, the evaluation scores, and a short run end to end."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from model import MiniMindConfig, MiniMindForCausalLM
from model.checkpoint import read_meta, save_weights
from model.dataset import IGNORE, ReasonDataset
from model.reasoning import ThinkSplitter, extract_answer, follows_template, opens_thinking, split_reasoning
from model.checkpoint import load_tokenizer
from tests.helpers import ROOT, TOKENIZER
from train_distill_reason import reasoning_scores, weighted_cross_entropy

TAG_IDS = (3, 4, 5, 6)  # <think> </think> <answer> </answer>: added tokens of the shipped tokenizer
GOOD = "<think>\n12 + 30 = 42.\nSo the answer is 42.\n</think>\n<answer>\nThe answer is 42.\n</answer>"


def reasoning_chat(a, b):
    c = a + b
    reply = f"<think>\n{a} + {b} = {c}.\nSo the answer is {c}.\n</think>\n<answer>\n{a} + {b} = {c}.\n</answer>"
    return {"conversations": [{"role": "user", "content": f"What is {a} + {b}?"},
                              {"role": "assistant", "content": reply}]}


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return str(path)


# ----------------------------------------------------------------------------------------------------------
# The loss


def test_tag_tokens_weigh_ten_times_and_the_sum_is_divided_by_the_learned_tokens(tmp_path):
    tokenizer = load_tokenizer(TOKENIZER)
    assert [tokenizer.convert_tokens_to_ids(t) for t in ("<think>", "</think>", "<answer>", "</answer>")] == \
        list(TAG_IDS)
    data = ReasonDataset(write_jsonl(tmp_path / "r.jsonl", [reasoning_chat(3, 4), reasoning_chat(15, 27)]),
                         tokenizer, 96, tag_weight=10.0)
    batch = [data[0], data[1]]
    labels = torch.stack([s["labels"] for s in batch])
    weights = torch.stack([s["loss_weights"] for s in batch])
    logits = torch.randn(2, 96, len(tokenizer), generator=torch.Generator().manual_seed(0))

    total, learned, tags = 0.0, 0, 0
    for b in range(2):
        for t in range(95):
            target = int(labels[b, t + 1])
            if target == IGNORE:
                continue
            row = logits[b, t].double()
            nll = (torch.logsumexp(row, 0) - row[target]).item()
            weight = 10.0 if target in TAG_IDS else 1.0
            total, learned, tags = total + weight * nll, learned + 1, tags + (target in TAG_IDS)
    assert tags == 8  # four tags in each reply, all learned
    assert weighted_cross_entropy(logits, labels, weights).item() == pytest.approx(total / learned, rel=1e-5)


# ----------------------------------------------------------------------------------------------------------
# The template and the split


@pytest.mark.parametrize("reply,ok", [
    (GOOD, True),
    ("<think>\nstep one\nstep two\n</think>\n<answer>\n42\n</answer>", True),  # thinking spans lines
    ("<think>\n\n</think>\n<answer>\n42\n</answer>", True),  # an empty line of thinking still has its newlines
    ("<think>12 + 30 = 42</think><answer>42</answer>", False),  # tags not on their own lines
    ("The answer is 42.", False),  # no tags
    ("<think>\n12 + 30 = 42\n</think>\nThe answer is 42.", False),  # no answer block
    ("<think>\n12 + 30 = 42\n</think>\n<answer>\n42\n</answer>\nAnything else?", False),  # text after the end
    (" " + GOOD, False),  # text before the start
    ("<think>\n12 + 30 = 42\n", False),  # never stopped thinking
])
def test_template(reply, ok):
    assert follows_template(reply) is ok


SPLITS = [  # (reply, the prompt opened <think>, (thinking, answer))
    (GOOD, False, ("12 + 30 = 42.\nSo the answer is 42.", "The answer is 42.")),
    ("<think>a</think><answer>b</answer>", False, ("a", "b")),
    ("<think>\na\n</think>\nb", False, ("a", "b")),  # no answer tags: the rest is the answer
    ("a\n</think>\n<answer>\nb\n</answer>", True, ("a", "b")),  # <think> was in the prompt
    ("a\n</think>\n<answer>\nb\n</answer>", False, ("", "a\n</think>b")),  # it was not: no thinking to split
    ("<think>\nstill thinking", False, ("still thinking", "")),
    ("still thinking", True, ("still thinking", "")),
    ("<think>\na\n</think>\n<answer>\nb cut off", False, ("a", "b cut off")),
    ("<think>\na\n</think>\n<answer>\nb\n</answer>\nchatter after the end", False, ("a", "b")),
    ("just an answer", False, ("", "just an answer")),
    ("a <think> in the middle", False, ("", "a <think> in the middle")),
    ("<th", False, ("", "<th")),
    ("<think>\n先想一想。\n</think>\n<answer>\n答案是 42。\n</answer>", False, ("先想一想。", "答案是 42。")),
    ("  \n<think> x y </think>  <answer> 4 2 </answer>", False, ("x y", "4 2")),
]


@pytest.mark.parametrize("reply,thinking,parts", SPLITS)
def test_split_reasoning(reply, thinking, parts):
    assert split_reasoning(reply, thinking) == parts
    assert extract_answer(reply, thinking) == parts[1]


@pytest.mark.parametrize("reply,thinking,parts", SPLITS)
def test_a_streamed_reply_splits_the_same_wherever_it_is_cut(reply, thinking, parts):
    """Streaming releases text as soon as it cannot be part of a tag; cut the reply in two at every
    character, and into single characters, and the parts come out the same as for the whole reply."""
    cuts = [[reply[:i], reply[i:]] for i in range(len(reply) + 1)] + [list(reply)]
    for pieces in cuts:
        splitter, reasoning, content = ThinkSplitter(thinking), "", ""
        for piece in pieces:
            r, c = splitter.push(piece)
            reasoning, content = reasoning + r, content + c
        r, c = splitter.flush()
        assert (reasoning + r, content + c) == parts, pieces


def test_the_issue_reply_no_longer_splits_three_ways():
    """The same reply used to give three different answers in three parsers; now one parser decides, and the
    demo's scorer reads the answer through it."""
    from demo import is_correct
    reply = "a\n</think>\n<answer>\nb\n</answer>"
    assert split_reasoning(reply, thinking=True) == ("a", "b")
    assert is_correct("<think>\n4 + 1 = 5?\n</think>\n<answer>\nb\n</answer>", {"answer": "b"})
    assert not is_correct("<think>\nthe answer is b\n</think>\n<answer>\nc\n</answer>", {"answer": "b"})


def test_opens_thinking_reads_the_end_of_the_prompt():
    assert opens_thinking("<|im_start|>assistant\n<think>\n")
    assert not opens_thinking("<|im_start|>assistant\n")
    assert not opens_thinking("<|im_start|>assistant\n<think>\nx\n</think>\n")


def test_scores_count_template_and_accuracy_separately():
    rows = [{"question": "12 + 30?", "answer": "42"}, {"question": "5 + 6?", "answer": "11"},
            {"question": "7 + 1?", "answer": "8"}, {"question": "9 + 9?", "answer": "18"},
            {"question": "1 + 2?", "answer": "3"}]
    replies = [
        GOOD,  # template, right
        "<think>\n5 + 6 = 12\n</think>\n<answer>\n12\n</answer>",  # template, wrong
        "<think>7 + 1 = 8</think> 8",  # no template, right (the text after </think> is the answer)
        "<think>\n9 + 9 = 18, so 18",  # never stopped thinking: no answer, even though 18 appears
        "The answer is 3.",  # no template, right
    ]
    assert reasoning_scores(replies, rows) == {"template": 0.4, "accuracy": 0.6}


def test_decoded_replies_keep_the_tag_tokens():
    """The tags are added tokens but not special ones: decoding with skip_special_tokens=True (as the
    evaluation does) must keep them, or no reply could ever follow the template."""
    from model.generation import answer_questions
    from tests.helpers import THINKING_REPLY, scripted_model
    reply, = answer_questions(scripted_model(THINKING_REPLY), load_tokenizer(TOKENIZER), ["hi"], max_new_tokens=16)
    assert reply == THINKING_REPLY
    assert split_reasoning(reply) == ("I think so", "Yes 是的")


# ----------------------------------------------------------------------------------------------------------
# End to end


@pytest.mark.slow  # a subprocess run with generation-based evaluation (CI runs the slow set too)
def test_a_short_run_trains_evaluates_and_saves(tmp_path):
    torch.manual_seed(0)
    model = MiniMindForCausalLM(MiniMindConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                               num_key_value_heads=2))
    save_weights(model, str(tmp_path / "rlhf_32.pth"), {"stage": "rlhf"}, dtype=torch.float32)
    data = write_jsonl(tmp_path / "reason.jsonl", [reasoning_chat(a, a + 3) for a in range(16)])
    problems = write_jsonl(tmp_path / "eval.jsonl", [{"question": f"What is {a} + 5?", "answer": str(a + 5)}
                                                     for a in range(3)])
    cmd = [sys.executable, "train_distill_reason.py", "--out_dir", str(tmp_path), "--hidden_size", "32",
           "--data_path", data, "--eval_path", problems, "--max_new_tokens", "8", "--max_seq_len", "96",
           "--batch_size", "4", "--max_steps", "3", "--learning_rate", "1e-3", "--log_interval", "1",
           "--device", "cpu", "--dtype", "float32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "loaded " + str(tmp_path / "rlhf_32.pth") in result.stdout  # --from_weight rlhf by default
    assert "step 3/3" in result.stdout
    assert "eval step 3 | template 0.0000 | accuracy" in result.stdout  # a random model keeps no template
    meta = read_meta(str(tmp_path / "reason_32.pth"))
    assert meta["stage"] == "reason" and meta["step"] == 3 and math.isfinite(meta["loss"])
    assert meta["args"]["tag_weight"] == 10.0
