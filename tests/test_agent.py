"""Multi-turn tool rollouts (model/agent.py) and train_agent.py: episodes append exactly what the chat template
renders, tool results are never trained on, the sampled log-probs line up with the training forward, and agentic
RL runs end to end on a tiny model that learned one tool call."""
import json

import pytest
import torch

import train_agent
from demo.tools import demo_tools
from model.agent import ToolRollout, greedy_episodes, results_turn, tool_format_reward
from model.chat import chat_prompt_ids
from model.checkpoint import load_model
from model.dataset import IGNORE, SFTDataset
from model.losses import token_logprobs
from model.toolcall import ToolCall, normalize_messages
from tests.helpers import save_checkpoint, tiny_model, tokenizer
from tests.test_lora import run_script

TOOLS = {t.name: t for t in demo_tools()}
SCHEMAS = [TOOLS["calculator"].schema()]  # one on offer: a short prompt keeps the tiny model's training quick
CALL = ToolCall("calculator", {"expression": "12 × 13"})
QUESTION = [{"role": "system", "content": "You are a helpful assistant.", "tools": json.dumps(SCHEMAS)},
            {"role": "user", "content": "What is 12 × 13?"}]
EPISODE = QUESTION + [{"role": "assistant", "content": "", "tool_calls": json.dumps([{"name": CALL.name,
                                                                                       "arguments": CALL.arguments}])},
                      {"role": "tool", "content": "156"}, {"role": "assistant", "content": "12 × 13 = 156."}]


def render(messages, **kw):
    return tokenizer().apply_chat_template(messages, tools=SCHEMAS, tokenize=False, **kw)


def test_results_turn_is_what_the_template_renders():
    """prompt + a reply that calls tools + <|im_end|> + results_turn == the template's rendering of the same
    conversation with the tool messages and the next generation prompt, in text and in token ids."""
    prompt = render(QUESTION[1:], add_generation_prompt=True)
    calls = [{"name": CALL.name, "arguments": CALL.arguments}, {"name": "lookup", "arguments": {"name": "X"}}]
    history = QUESTION[1:] + [{"role": "assistant", "content": "", "tool_calls": calls},
                              {"role": "tool", "content": "156"}, {"role": "tool", "content": '{"kind": "town"}'}]
    full = render(history, add_generation_prompt=True)
    reply = "\n".join(ToolCall(c["name"], c["arguments"]).text() for c in calls)
    appended = results_turn(["156", '{"kind": "town"}'])
    assert full == prompt + reply + "<|im_end|>" + appended
    ids = tokenizer().encode(full, add_special_tokens=False)
    tail = tokenizer().encode(appended, add_special_tokens=False)
    assert ids[-len(tail):] == tail  # special tokens split the text, so the appended ids are the template's


@pytest.fixture(scope="module")
def caller(tmp_path_factory):
    """A tiny model trained (in a few seconds) on one tool episode: asked 12 × 13 with the tools on offer, it
    calls the calculator, then answers from the result."""
    path = tmp_path_factory.mktemp("agent") / "episode.jsonl"
    path.write_text(json.dumps({"conversations": EPISODE}, ensure_ascii=False) + "\n", encoding="utf-8")
    sample = SFTDataset(str(path), tokenizer(), 320)[0]
    n = int((sample["input_ids"] != tokenizer().pad_token_id).sum())
    ids, labels = sample["input_ids"][None, :n], sample["labels"][None, :n]
    model = tiny_model().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(100):
        optimizer.zero_grad()
        loss = model(ids, labels=labels).loss
        loss.backward()
        optimizer.step()
    assert labels[0, -1] == IGNORE and loss.item() < 0.01  # the whole episode fits, and is learned
    return model.eval()


def prompt_ids():
    return chat_prompt_ids(tokenizer(), QUESTION[1:], SCHEMAS)


def test_greedy_episode_calls_the_tool_and_answers(caller):
    [episode] = greedy_episodes(caller, tokenizer(), TOOLS, [prompt_ids()], [list(TOOLS)], 48, 3)
    assert [(c.name, c.arguments, r) for c, r in episode.calls] == [("calculator", CALL.arguments, "156")]
    assert episode.answer == "12 × 13 = 156." and episode.answered and episode.turns == 2
    assert episode.bad_calls == 0 and tool_format_reward(episode) == 1.0
    # The whole episode is the conversation the model was trained on, turn for turn.
    text = tokenizer().decode(prompt_ids() + episode.tokens)
    assert text == render(normalize_messages(EPISODE[1:])[0]).rstrip("\n")
    # One turn only: the call is made but never run, and the episode has no answer.
    [cut] = greedy_episodes(caller, tokenizer(), TOOLS, [prompt_ids()], [list(TOOLS)], 48, 1)
    assert cut.calls == [] and not cut.answered and tool_format_reward(cut) == 0.0
    # A function the prompt does not offer is not called: the block stays text and counts as a bad call.
    [unoffered] = greedy_episodes(caller, tokenizer(), TOOLS, [prompt_ids()], [["lookup"]], 48, 3)
    assert unoffered.calls == [] and unoffered.bad_calls == 1 and unoffered.answered
    assert tool_format_reward(unoffered) == 0.25


def test_tool_tokens_are_context_and_logprobs_line_up(caller):
    """Sampled episodes: labels cover exactly the model's own tokens (never the prompt or a tool result), and
    the log-probs recorded while sampling equal those of the training forward at those positions."""
    rollout = ToolRollout(caller, tokenizer(), TOOLS, 48, 3, temperature=1.0, seed=3)(
        [prompt_ids()], 4, step=0)
    batch = rollout.batch(tokenizer().pad_token_id)
    assert any(e.calls for e in rollout.episodes)
    for i, episode in enumerate(rollout.episodes):
        start = len(rollout.prompt_ids[i])
        learned = batch["labels"][i, start:start + len(episode.tokens)] != IGNORE
        assert learned.tolist() == episode.learn
        assert (batch["labels"][i, :start] == IGNORE).all()
        if episode.calls:  # the appended results are there, not learned
            assert not all(episode.learn)
            appended = [t for t, keep in zip(episode.tokens, episode.learn) if not keep]
            assert "<tool_response>\n156\n</tool_response>" in tokenizer().decode(appended)
    with torch.no_grad():
        logp, mask = token_logprobs(caller(batch["input_ids"]).logits, batch["labels"])
    assert torch.equal(mask, batch["mask"])
    torch.testing.assert_close(logp[mask], batch["old_logprobs"][mask], atol=1e-4, rtol=0)


def test_train_agent_runs_and_saves(caller, tmp_path):
    """train_agent.py end to end on the tiny caller: episodes with the real tools, the tool-format reward in
    the log, a checkpoint that loads."""
    save_checkpoint(caller, tmp_path, stage="tool_sft")
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"conversations": QUESTION, "answer": "156"}) + "\n" for _ in range(8)),
                    encoding="utf-8")
    run_script(train_agent, "--out_dir", str(tmp_path), "--hidden_size", "64", "--data_path", str(data),
               "--val_path", str(data),
               "--eval_samples", "2", "--device", "cpu", "--dtype", "float32", "--max_seq_len", "512",
               "--batch_size", "2", "--num_generations", "4", "--max_new_tokens", "48", "--max_steps", "2",
               "--learning_rate", "1e-4", "--log_interval", "1")
    with open(tmp_path / "agent_64_log.csv") as f:
        header = f.readline()
    assert "r_tool_format" in header and "calls" in header and "val_accuracy" in header
    model, meta = load_model(str(tmp_path / "agent_64.pth"))
    assert meta["stage"] == "agent"


def test_prompts_offering_unknown_tools_stop_before_training(tmp_path, capsys):
    data = tmp_path / "prompts.jsonl"
    other = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    row = {"conversations": [{"role": "system", "content": "s", "tools": json.dumps(other)},
                             {"role": "user", "content": "Rain?"}], "answer": "no"}
    data.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(SystemExit):
        run_script(train_agent, "--out_dir", str(tmp_path), "--data_path", str(data), "--device", "cpu",
                   "--from_weight", "none", "--hidden_size", "32", "--num_hidden_layers", "1")
    assert f"{data}:1: offers weather" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.csv"))
