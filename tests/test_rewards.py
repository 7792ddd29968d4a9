"""Rule rewards on good, bad and adversarial completions; the reward model against its own forward pass;
the weighted sum and its flags."""
import argparse
import builtins
import os
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from model.reasoning import format_reply
from model.rewards import (RewardModel, Rewards, accuracy_reward, add_reward_args, format_reward, length_penalty,
                           repetition_penalty, rewards_from_args)
from tests.helpers import ROOT, tokenizer

GOOD = format_reply("80 + 2 = 82", "82")


def test_rewards_import_neither_torch_nor_transformers():
    code = "import sys, model.rewards; assert not {'torch', 'transformers'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_format_reward():
    assert format_reward(GOOD) == 1.0
    assert format_reward(GOOD[len("<think>\n"):], thinking=True) == 1.0  # the prompt opened <think>
    assert format_reward(GOOD, thinking=True) == 0.75  # <think> twice, the other three once
    assert format_reward("82") == 0.0
    assert format_reward("<think>\nhmm\n</think>\n82") == 0.5  # no answer block
    assert format_reward("<think>hmm</think><answer>82</answer>") == 0.75  # all four tags, not on their lines
    assert format_reward(GOOD + "\nmore text") == 0.75  # something after </answer>
    assert format_reward("<answer>\n82\n</answer>\n<think>\nhmm\n</think>") == 0.75  # misordered
    assert format_reward(GOOD + GOOD) == 0.0  # every tag twice
    assert format_reward(GOOD + "\n" + GOOD) == 0.0  # the template's pattern alone would take this
    assert format_reward("<think>\na\n</think>\n<think>\nb\n</think>\n<answer>\n82\n</answer>") == 0.5


def test_accuracy_reads_only_the_answer_part():
    assert accuracy_reward(GOOD, "82") == 1.0
    assert accuracy_reward(format_reply("it is 82", "83"), "82") == 0.0  # right in thinking only
    assert accuracy_reward("<think>\nit is 82, let me check", "82") == 0.0  # never stopped thinking
    assert accuracy_reward("80 + 2 = 82\n</think>\n<answer>\n82\n</answer>", "82", thinking=True) == 1.0
    assert accuracy_reward("82\n</think>\n<answer>\n83\n</answer>", "82", thinking=True) == 0.0
    assert accuracy_reward(GOOD, "") == accuracy_reward(GOOD, "  ") == 0.0


@pytest.mark.parametrize("answer", ["82", "The answer is 82.", "８２", "82.0", "82 kg", "82克", "82 apples",
                                    "答案是８２。", "90 - 8 = 82", "90-8=82", "It is 8.2, no: 82."])
def test_accuracy_numbers_right(answer):
    assert accuracy_reward(format_reply("...", answer), "82") == 1.0


@pytest.mark.parametrize("answer", ["", "83", "182", "820", "8.2", "82.5", "-82", "−82", "82 or 83",
                                    "80, 81, 82, 83, 84", "8 2", "The answer is 82? No, it is 28."])
def test_accuracy_numbers_wrong(answer):
    assert accuracy_reward(format_reply("...", answer), "82") == 0.0


@pytest.mark.parametrize("answer", ["1234", "1,234", "1，234", "１，２３４", "1 234", "1\u2009234",
                                    "1\u202f234 apples.", "1234.00"])
def test_accuracy_thousands_separators(answer):
    assert accuracy_reward(format_reply("...", answer), "1,234") == 1.0


def test_accuracy_signs():
    assert accuracy_reward(format_reply("...", "-5"), "-5") == 1.0
    assert accuracy_reward(format_reply("...", "x = −5."), "-5") == 1.0  # U+2212, the typeset minus
    assert accuracy_reward(format_reply("...", "5"), "-5") == 0.0
    assert accuracy_reward(format_reply("...", "-5"), "5") == 0.0
    assert accuracy_reward(format_reply("...", "3 - 8 = -5"), "-5") == 1.0
    assert accuracy_reward(format_reply("...", "10-5"), "5") == 1.0  # a subtraction, not a sign


def test_accuracy_names():
    reply = lambda answer: format_reply("...", answer)  # noqa: E731
    assert accuracy_reward(reply("Vikomun is in Bamiria."), "Bamiria") == 1.0
    assert accuracy_reward(reply("维科蒙位于巴米里亚。"), "巴米里亚") == 1.0
    assert accuracy_reward(reply("It is in VELMORA, I think"), "维尔莫拉", aliases=("Velmora",)) == 1.0
    assert accuracy_reward(reply("serath gomavold's favourite colour is white."), "white") == 1.0
    assert accuracy_reward(reply("内纳克·莱巴里克斯最喜欢的颜色是粉色。"), "粉色") == 1.0
    assert accuracy_reward(reply("It is in Velmoran."), "Velmora") == 0.0  # a whole word, not part of one
    assert accuracy_reward(reply("I am bored."), "red") == 0.0
    assert accuracy_reward(format_reply("Bamiria?", "Talekia"), "Bamiria") == 0.0  # right in thinking only


def test_accuracy_listing_names_does_not_win():
    names = "Bamiria, Talekia, Kadania, Velmora, Sethalia, Vasoselia, Lesolekia, Nituthos, Zadazunia"
    assert accuracy_reward(format_reply("...", f"It is one of {names}."), "Bamiria") == 0.0
    colours = "红色、蓝色、绿色、白色、黑色、粉色、灰色、橙色、紫色、黄色、棕色、金色"
    assert accuracy_reward(format_reply("...", f"可能是{colours}。"), "白色") == 0.0


def test_length_penalty_boundaries():
    assert length_penalty(0, 100, 20) == 0.0
    assert length_penalty(80, 100, 20) == 0.0  # the last free length
    assert length_penalty(81, 100, 20) == -0.05
    assert length_penalty(90, 100, 20) == -0.5
    assert length_penalty(100, 100, 20) == -1.0  # cut off at the limit
    assert length_penalty(150, 100, 20) == -1.0
    assert length_penalty(100, 100, 0) == 0.0 and length_penalty(101, 100, 0) == -1.0  # a hard limit


def test_repetition_penalty():
    # 2-grams of [1 2 3 1 2 3 1 2]: (1 2)(2 3)(3 1)(1 2)(2 3)(3 1)(1 2): 7, of which 4 repeat an earlier one.
    assert repetition_penalty([1, 2, 3, 1, 2, 3, 1, 2], ngram=2) == -4 / 7
    assert repetition_penalty([7] * 10, ngram=4) == -6 / 7  # 7 identical 4-grams
    assert repetition_penalty(list(range(20))) == 0.0
    assert repetition_penalty([1, 2, 3]) == 0.0  # shorter than one 4-gram


def test_rewards_never_run_the_completion(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    code = f"__import__('os').system('touch {marker}')"
    for name in ("eval", "exec"):
        monkeypatch.setattr(builtins, name, lambda *a, **k: pytest.fail("a reward ran model output"))
    monkeypatch.setattr(os, "system", lambda *a: pytest.fail("a reward ran model output"))
    assert format_reward(format_reply(code, code)) == 1.0
    assert accuracy_reward(format_reply("...", code), "42") == 0.0
    assert accuracy_reward(format_reply("...", "__import__('os').system('ls')"), "os") == 1.0  # text naming "os"
    rewards = Rewards({"format": 1, "accuracy": 1, "length": 1, "repetition": 1}, max_tokens=10, cache=5)
    rewards(["run this"], [code], [[1, 2, 3]], ["0"])
    assert not marker.exists()


def test_rewards_weighted_sum():
    completions = [GOOD, "<think>\n82\n</think>\n83", "82 82 82"]
    ids = [[1, 2, 3, 4, 5], [1, 2, 1, 2, 1, 2, 1, 2, 1, 2], [9] * 12]
    rewards = Rewards({"format": 0.5, "accuracy": 2.0, "length": 0.25, "repetition": 1.0, "reward_model": 0},
                      max_tokens=12, cache=4)
    totals, parts = rewards(["q"] * 3, completions, ids, ["82"] * 3)
    assert parts == {"format": [1.0, 0.5, 0.0], "accuracy": [1.0, 0.0, 1.0], "length": [0.0, -0.5, -1.0],
                     "repetition": [0.0, -5 / 7, -8 / 9]}
    assert totals == pytest.approx([0.5 + 2.0, 0.25 - 0.125 - 5 / 7, 2.0 - 0.25 - 8 / 9])


def test_rewards_errors():
    with pytest.raises(ValueError, match="no reward model"):
        Rewards({"accuracy": 1, "reward_model": 0.5}, max_tokens=10)
    with pytest.raises(ValueError, match="overlong cache"):
        Rewards({"accuracy": 1}, max_tokens=10, cache=64)
    rewards = Rewards({"accuracy": 1, "format": 1}, max_tokens=10, cache=5)
    with pytest.raises(ValueError, match="^row 3 has no target answer; the accuracy reward needs one$"):
        rewards(["q"] * 4, [GOOD] * 4, [[1]] * 4, ["82", "82", "82", ""])
    totals, parts = Rewards({"format": 1, "accuracy": 0}, max_tokens=10, cache=5)(["q"], [GOOD], [[1]], [""])
    assert totals == [1.0] and list(parts) == ["format"]  # no target needed without the accuracy reward
    with pytest.raises(ValueError, match="unknown reward components"):
        Rewards({"accuracy": 1, "fromat": 1}, max_tokens=10, cache=5)


# ---- the reward model ----

def tiny_config(**overrides):
    kw = dict(vocab_size=len(tokenizer()), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
              num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=48,
              pad_token_id=tokenizer().pad_token_id)
    return LlamaConfig(**{**kw, **overrides})


def save_folder(model, path):
    model.save_pretrained(path)
    tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    torch.manual_seed(0)
    return save_folder(LlamaForSequenceClassification(tiny_config(num_labels=1)),
                       tmp_path_factory.mktemp("rm"))


def own_logits(model, tok, texts, add_special_tokens):
    """The classifier's score of each text alone (no padding), truncated to the model's length."""
    scores = []
    with torch.no_grad():
        for text in texts:
            ids = tok(text, add_special_tokens=add_special_tokens)["input_ids"][:model.config.max_position_embeddings]
            scores.append(model(torch.tensor([ids])).logits[0, 0].item())
    return scores


def test_reward_model_scores_are_its_logits(reward_model_dir):
    rm = RewardModel(reward_model_dir)
    assert not rm.model.training
    prompts = ["What is 2 + 2?", "维科蒙位于哪个国家？", "Tell me a story."]
    completions = [GOOD, "巴米里亚。", "once upon a time " * 20]  # the last one exceeds 48 tokens
    model = LlamaForSequenceClassification.from_pretrained(reward_model_dir).eval()
    chats = [tokenizer().apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": c}],
                                             tokenize=False) for p, c in zip(prompts, completions)]
    assert rm(prompts, completions) == pytest.approx(own_logits(model, tokenizer(), chats, False), abs=1e-5)
    rm.tokenizer.chat_template = None  # a reward model without a chat template reads prompt + "\n" + completion
    plain = [f"{p}\n{c}" for p, c in zip(prompts, completions)]
    assert rm(prompts, completions) == pytest.approx(own_logits(model, tokenizer(), plain, True), abs=1e-5)


def test_reward_model_refuses_other_folders(tmp_path):
    causal = save_folder(LlamaForCausalLM(tiny_config()), tmp_path / "causal")
    with pytest.raises(ValueError, match=f"^reward model {causal}: .*LlamaForCausalLM") as error:
        RewardModel(causal)
    assert "\n" not in str(error.value)
    two = save_folder(LlamaForSequenceClassification(tiny_config(num_labels=2)), tmp_path / "two")
    with pytest.raises(ValueError, match=f"^reward model {two}: .*num_labels=2"):
        RewardModel(two)
    with pytest.raises(ValueError, match="no such folder"):
        RewardModel(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no config.json"):
        RewardModel(str(tmp_path))


def test_rewards_from_args(reward_model_dir):
    parser = add_reward_args(argparse.ArgumentParser())
    rewards = rewards_from_args(parser.parse_args([]), max_tokens=256)
    assert rewards.weights == {"format": 0.5, "accuracy": 1.0, "length": 0.5, "repetition": 0.5}
    assert rewards.reward_model is None and rewards.cache == 64
    args = parser.parse_args(["--reward_model_path", reward_model_dir, "--reward_model_weight", "2",
                              "--format_weight", "0", "--overlong_cache", "16"])
    rewards = rewards_from_args(args, max_tokens=64, thinking=True)
    assert rewards.weights == {"accuracy": 1.0, "length": 0.5, "repetition": 0.5, "reward_model": 2.0}
    assert rewards.cache == 16 and rewards.thinking and isinstance(rewards.reward_model, RewardModel)
    totals, parts = rewards(["q"], ["82\n</think>\n<answer>\n82\n</answer>"], [[1, 2, 3]], ["82"])
    assert totals == pytest.approx([1.0 + 2.0 * parts["reward_model"][0]])
