"""The bundled demo corpus: deterministic, in the published formats, and with held-out material that no
training file contains. Generated at a small scale: the world and the held-out files keep their full
size at any scale, only training rows shrink."""
import difflib
import json
import random
import re
from collections import Counter

import pytest

import demo
from demo import data_paths, demo_file, generate, is_correct, score
from demo.files import _CJK, SFT_EVASIVE_RATE, TRAINING_FILES
from demo.heldout import EVAL_CATEGORIES, TrainingItems, build_heldout, eval_row, heldout_candidates
from demo.items import compute
from demo.leaks import find_leaks
from demo.phrasings import EVASIVE, IDENTITY, TWO_HOP
from demo.world import build_world

SEED, SCALE = 42, 0.1
CHAT_FILES = ["sft.jsonl", "sft_val.jsonl", "reason.jsonl", "lora_identity.jsonl", "lora_domain.jsonl"]
REASONING = re.compile(r"<think>\n(.+)\n</think>\n<answer>\n(.+)\n</answer>", re.S)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    stats = generate(out, seed=SEED, scale=SCALE)
    files = {p.name: [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]
             for p in sorted(out.glob("*.jsonl"))}
    return out, stats, files


def strings(record):
    """Every string value in a record (what a training script could read)."""
    if isinstance(record, str):
        yield record
    elif isinstance(record, dict):
        for value in record.values():
            yield from strings(value)
    elif isinstance(record, list):
        for value in record:
            yield from strings(value)


def user_messages(records):
    key = lambda r: r.get("conversations") or r.get("chosen")  # noqa: E731
    return [m["content"] for r in records for m in key(r) if m["role"] == "user"]


def heldout_questions(files):
    return ({r["question"] for r in files["eval.jsonl"] + files["reason_eval.jsonl"]}
            | {r["chosen"][-2]["content"] for r in files["dpo_val.jsonl"]}
            | {r["conversations"][0]["content"] for r in files["rl_prompts_val.jsonl"]})


# ---- determinism ----

def test_same_seed_same_bytes_other_seed_differs(corpus, tmp_path):
    out, _, _ = corpus
    generate(tmp_path / "again", seed=SEED, scale=SCALE)
    generate(tmp_path / "other", seed=SEED + 1, scale=SCALE)
    names = sorted(p.name for p in out.iterdir())
    assert "README.md" in names and "stats.json" in names
    for name in names:
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name
    for name in ["pretrain.jsonl", "sft.jsonl", "eval.jsonl"]:
        assert (tmp_path / "other" / name).read_bytes() != (out / name).read_bytes(), name


# ---- formats ----

def test_pretrain_documents_are_paragraphs(corpus):
    _, _, files = corpus
    for name in ["pretrain.jsonl", "pretrain_val.jsonl"]:
        docs = [r["text"] for r in files[name]]
        assert all(set(r) == {"text"} for r in files[name])
        assert all(50 <= len(d) < 512 for d in docs), name  # published pretraining lines are < 512 characters
    lengths = sorted(len(r["text"]) for r in files["pretrain.jsonl"])
    assert 100 <= lengths[len(lengths) // 2] <= 450
    assert not {r["text"] for r in files["pretrain_val.jsonl"]} & {r["text"] for r in files["pretrain.jsonl"]}


def assert_conversation(messages, final_role="assistant"):
    roles = [m["role"] for m in messages]
    assert all(set(m) == {"role", "content"} and isinstance(m["content"], str) and m["content"] for m in messages)
    if roles[0] == "system":
        roles = roles[1:]
    assert "system" not in roles
    assert roles == ["user", "assistant"] * (len(roles) // 2) + (["user"] if len(roles) % 2 else []), roles
    assert roles[-1] == final_role


def test_chat_files(corpus):
    _, _, files = corpus
    for name in CHAT_FILES:
        assert files[name], name
        for r in files[name]:
            assert set(r) == {"conversations"}
            assert_conversation(r["conversations"])
    sft = files["sft.jsonl"]
    assert any(r["conversations"][0]["role"] == "system" for r in sft)
    assert any(len(r["conversations"]) >= 5 for r in sft)  # multi-turn
    zh = sum(bool(re.search(r"[\u4e00-\u9fff]", r["conversations"][-1]["content"])) for r in sft)
    assert 0.4 < zh / len(sft) < 0.6
    assert not {json.dumps(r) for r in files["sft_val.jsonl"]} & {json.dumps(r) for r in sft}


def test_reasoning_format(corpus):
    _, _, files = corpus
    for r in files["reason.jsonl"]:
        reply = r["conversations"][-1]["content"]
        m = REASONING.fullmatch(reply)
        assert m, reply
        for part in m.groups():
            assert not re.search(r"</?(think|answer)>", part), reply


def test_dpo_pairs(corpus):
    _, _, files = corpus
    for name in ["dpo.jsonl", "dpo_val.jsonl"]:
        for r in files[name]:
            assert set(r) == {"chosen", "rejected"}
            assert_conversation(r["chosen"])
            assert_conversation(r["rejected"])
            assert r["chosen"][:-1] == r["rejected"][:-1]  # the same prompt
            assert r["chosen"][-1]["content"] != r["rejected"][-1]["content"]
    prompts = lambda name: {json.dumps(r["chosen"][:-1]) for r in files[name]}  # noqa: E731
    assert not prompts("dpo_val.jsonl") & prompts("dpo.jsonl")


def test_dpo_rejections_come_in_every_kind_in_both_files(corpus):
    """A quarter each: evasive, a wrong value (the chosen reply with one value changed: nearly the same
    text), and two kinds of true answers to other questions (mixed up, off-topic), in train and held-out."""
    _, _, files = corpus
    evasive = set(EVASIVE["en"] + EVASIVE["zh"])
    for name in ["dpo.jsonl", "dpo_val.jsonl"]:
        kinds = Counter()
        for r in files[name]:
            chosen, rejected = r["chosen"][-1]["content"], r["rejected"][-1]["content"]
            similar = difflib.SequenceMatcher(None, chosen, rejected).ratio() > 0.75
            kinds["evasive" if rejected in evasive else "wrong" if similar else "other_question"] += 1
        shares = {k: v / len(files[name]) for k, v in kinds.items()}
        assert 0.15 < shares["evasive"] < 0.35 and 0.15 < shares["wrong"] < 0.4, (name, shares)
        assert 0.35 < shares["other_question"] < 0.65, (name, shares)


@pytest.mark.parametrize("kind", ["fact", "two_hop", "arithmetic", "word_problem"])
def test_a_mixed_up_rejection_is_a_true_answer_to_another_question_of_the_same_kind(kind):
    world = build_world(SEED)
    source = TrainingItems(random.Random(0), world, build_heldout(SEED, world))
    for lang in ["en", "zh", "en", "zh"]:
        item = getattr(source, kind)(lang=lang)
        other = source.another_answer(kind, item)
        assert other != item.reply and bool(_CJK.search(other)) == (lang == "zh"), (item.reply, other)
        if kind == "arithmetic":  # a true equation about other numbers
            a, op, b, c = re.fullmatch(r"(\d+) (\S) (\d+) = (\d+)[.。]", other).groups()
            assert compute(op, int(a), int(b)) == int(c) and (a, b) != tuple(re.findall(r"\d+", item.reply)[:2])


def test_some_sft_replies_are_evasive_and_validation_is_clean(corpus):
    """The SFT data dodges a few questions, as real SFT sets do (what DPO then unlearns); validation does not."""
    _, _, files = corpus
    evasive = set(EVASIVE["en"] + EVASIVE["zh"])
    last = lambda name: [r["conversations"][-1]["content"] for r in files[name]]  # noqa: E731
    share = sum(reply in evasive for reply in last("sft.jsonl")) / len(files["sft.jsonl"])
    assert 0.5 * SFT_EVASIVE_RATE < share < 1.5 * SFT_EVASIVE_RATE
    assert not evasive & set(last("sft_val.jsonl"))


def test_rl_prompts(corpus):
    _, _, files = corpus
    for name in ["rl_prompts.jsonl", "rl_prompts_val.jsonl"]:
        for r in files[name]:
            assert set(r) == {"conversations", "answer"} and r["answer"]
            assert [m["role"] for m in r["conversations"]] == ["user"]
    assert not set(user_messages(files["rl_prompts_val.jsonl"])) & set(user_messages(files["rl_prompts.jsonl"]))


def test_eval_rows_balanced_and_not_answered_by_the_question(corpus):
    _, stats, files = corpus
    for name in ["eval.jsonl", "reason_eval.jsonl"]:
        rows = files[name]
        assert all(set(r) == {"id", "category", "lang", "question", "answer", "aliases"} for r in rows)
        assert len({r["id"] for r in rows}) == len(rows)
        assert len({r["question"] for r in rows}) == len(rows)
        # Echoing the question never scores, so a score measures knowledge.
        assert not [r for r in rows if is_correct(r["question"], r)]
        assert all(is_correct(r["answer"], r) for r in rows)
    counts = Counter((r["category"], r["lang"]) for r in files["eval.jsonl"])
    assert sorted({c for c, _ in counts}) == sorted(EVAL_CATEGORIES)
    assert len(set(counts.values())) == 1 and min(counts.values()) >= 40  # equal per category and language
    assert stats["files"]["eval.jsonl"]["rows"] == len(files["eval.jsonl"])


def test_scale_changes_training_rows_only(corpus):
    _, stats, _ = corpus
    assert stats["files"]["sft.jsonl"]["rows"] == round(12_000 * SCALE)
    assert stats["files"]["eval.jsonl"]["rows"] == 700  # held-out files keep their size


# ---- held-out material stays out of training ----

def test_heldout_questions_never_appear_in_training(corpus):
    _, _, files = corpus
    questions = heldout_questions(files)
    assert len(questions) > 900
    for name in TRAINING_FILES:
        text = "\n".join(s for r in files[name] for s in strings(r))
        leaked = [q for q in questions if q in text]
        assert not leaked, (name, leaked[:3])


def test_heldout_operand_pairs_never_adjacent_in_training(corpus):
    _, _, files = corpus
    pairs = set()
    for r in files["eval.jsonl"] + files["reason_eval.jsonl"]:
        if r["category"] == "arithmetic":
            a, b = map(int, re.findall(r"\d+", r["question"]))
            q = r["question"]
            expected = (a * b if re.search(r"×|times|multiply|乘|积", q) else abs(a - b) if re.search(
                r"-|minus|take|减|差", q) else a + b)
            assert int(r["answer"]) == expected, r
            pairs.add((min(a, b), max(a, b)))
    assert len(pairs) > 100
    for name in TRAINING_FILES:
        for text in (s for r in files[name] for s in strings(r)):
            numbers = list(re.finditer(r"\d+", text))
            for m1, m2 in zip(numbers, numbers[1:]):  # consecutive numbers in one sentence, 20 characters apart
                gap = text[m1.end():m2.start()]
                if len(gap) <= 20 and not re.search(r"[.。!！?？;；\n]", gap):
                    a, b = int(m1.group()), int(m2.group())
                    assert (min(a, b), max(a, b)) not in pairs, (name, text)


def test_pretrain_only_and_two_hop_subjects_stay_held_out(corpus):
    _, _, files = corpus
    world = build_world(SEED)
    pretrain_only = [e.name[lang] for e in world.pretrain_only for lang in ("en", "zh")]
    for name in ["sft.jsonl", "reason.jsonl", "rl_prompts.jsonl"]:
        text = "\n".join(s for r in files[name] for s in strings(r))
        assert not [n for n in pretrain_only if n in text], name
    pretrain = "\n".join(r["text"] for r in files["pretrain.jsonl"])
    assert sum(n in pretrain for n in pretrain_only) > 0.9 * len(pretrain_only)  # full scale: all of them
    two_hop_questions = {t.format(s=e.name[lang]) for e in world.two_hop_heldout for relation, (_, by_lang) in
                         TWO_HOP.items() for lang, templates in by_lang.items() for t in templates}
    for name in TRAINING_FILES[1:]:  # every file but pretrain.jsonl, which asks no questions of this kind
        assert not two_hop_questions & set(user_messages(files[name])), name


def test_identity_taught_only_by_its_lora(corpus):
    _, _, files = corpus
    for name in TRAINING_FILES:
        text = "\n".join(s for r in files[name] for s in strings(r)).lower()
        assert ("minimind" in text) == (name == "lora_identity.jsonl"), name
    identity_questions = {q for by_lang in IDENTITY.values() for train, evaluate, _ in by_lang.values()
                          for q in train + evaluate}
    asked_in_sft = set(user_messages(files["sft.jsonl"]))
    assert not identity_questions & asked_in_sft
    assert not {r["conversations"][-2]["content"] for r in files["lora_identity.jsonl"]} & asked_in_sft
    assert all("MiniMind" in r["conversations"][-1]["content"] for r in files["lora_identity.jsonl"])


def test_leak_finder_catches_planted_leaks():
    world = build_world(SEED)
    heldout = build_heldout(SEED, world)
    op, a, b = heldout.operations[0]
    planted = {"sft.jsonl": [{"conversations": [{"role": "user", "content": "Tell me: Where is Nowhere from?"},
                                                {"role": "assistant", "content": f"Well, {a} {op} {b} is big."}]}],
               "dpo.jsonl": [{"chosen": [{"role": "assistant", "content": "I am MiniMind."}]}]}
    problems = find_leaks(planted, ["Where is Nowhere from?"], heldout)
    assert len(problems) == 3 and "held-out question" in problems[0]


# ---- scoring ----

def test_is_correct():
    number = {"answer": "82", "aliases": []}
    assert is_correct("The answer is 82.", number)
    assert is_correct("答案是８２。", number)  # full-width digits
    assert is_correct("82", {"answer": "82"})  # aliases are optional (RL rows have none)
    assert not is_correct("The answer is 182.", number)
    assert not is_correct("It is 820 or 8.2 or 82.5 or -82", number)
    assert is_correct("90-8=82", number)
    assert not is_correct("", number)
    assert is_correct("1,082 apples", {"answer": "1082", "aliases": []})

    town = {"answer": "维尔莫拉", "aliases": ["Velmora"]}
    assert is_correct("它位于维尔莫拉。", town)
    assert is_correct("It is in VELMORA, I think", town)  # an alias, any case
    assert not is_correct("It is in Velmoran.", town)  # a whole word, not part of one
    assert not is_correct("It is in Kadania.", town)
    assert is_correct("Red.", {"answer": "red"}) and not is_correct("I am bored.", {"answer": "red"})
    assert is_correct("每天用 12 克。", {"answer": "12克", "aliases": []})
    assert not is_correct("每天用112克。", {"answer": "12克", "aliases": []})

    # Reasoning replies: only the answer block counts.
    assert is_correct("<think>\n80 + 3 = 83?\n</think>\n<answer>\n82\n</answer>", number)
    assert not is_correct("<think>\nmaybe 82\n</think>\n<answer>\n83\n</answer>", number)
    assert not is_correct("<think>\nit is 82, let me check", number)  # never finished thinking
    assert is_correct("<think>\nhmm\n</think>\nIt is 82.", number)
    assert is_correct("<think>\nhmm\n</think>\n<answer>\n82", number)  # cut off before </answer>


def test_reference_replies_score_and_wrong_replies_do_not():
    """The replies training teaches (SFT answers, DPO chosen) are scored correct on every held-out question,
    and the confident wrong replies (DPO rejected) are not: scorer and data agree."""
    world = build_world(SEED)
    candidates = heldout_candidates(SEED, world, build_heldout(SEED, world))
    n = 0
    for category, by_lang in candidates.items():
        for groups in by_lang.values():
            for item in (i for items in groups.values() for i in items):
                row = eval_row(item, category, "x")
                assert is_correct(item.reply, row), (item.reply, row)
                assert not item.wrong_reply or not is_correct(item.wrong_reply, row), (item.wrong_reply, row)
                n += 1
    assert n > 5000


def test_score():
    rows = [{"category": "arithmetic", "answer": "4"}, {"category": "arithmetic", "answer": "5"},
            {"category": "identity", "answer": "MiniMind"}]
    assert score(["2 + 2 = 4.", "6", "I am minimind."], rows) == {"arithmetic": 0.5, "identity": 1.0,
                                                                   "overall": 2 / 3}
    with pytest.raises(ValueError):
        score(["4"], rows)


def test_score_reads_replies_with_the_reasoning_parser():
    """Only the answer part counts, as model.reasoning.extract_answer reads it: never the thinking."""
    rows = [{"category": "arithmetic", "answer": "42"}]
    assert score(["<think>\n40 + 1 = 41\n</think>\n<answer>\n42\n</answer>"], rows)["overall"] == 1.0
    assert score(["<think>\nis it 42?\n</think>\n<answer>\n41\n</answer>"], rows)["overall"] == 0.0
    assert score(["<think>\n42"], rows)["overall"] == 0.0  # never stopped thinking


# ---- where training scripts find their data ----

def test_data_paths_given_files(tmp_path):
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text("{}\n")
    val.write_text("{}\n")
    assert data_paths(str(train), None, "sft") == (str(train), None)
    assert data_paths(str(train), str(val), "sft") == (str(train), str(val))
    with pytest.raises(SystemExit, match="--data_path .*missing.jsonl: no such file"):
        data_paths(str(tmp_path / "missing.jsonl"), None, "sft")
    with pytest.raises(SystemExit, match="--val_path .*missing.jsonl: no such file"):
        data_paths(str(train), str(tmp_path / "missing.jsonl"), "sft")


def test_data_paths_demo_files_generated_on_first_use(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_generate(out_dir):  # writes two of the demo files instead of the whole corpus
        calls.append(out_dir)
        for name in ["sft.jsonl", "sft_val.jsonl", "lora_identity.jsonl"]:
            (tmp_path / name).write_text("{}\n")

    monkeypatch.setattr(demo, "DEMO_DIR", str(tmp_path))
    monkeypatch.setattr(demo, "generate", fake_generate)
    assert data_paths(None, None, "sft") == (str(tmp_path / "sft.jsonl"), str(tmp_path / "sft_val.jsonl"))
    assert calls == [str(tmp_path)] and "generating the demo corpus" in capsys.readouterr().out
    assert data_paths(None, None, "lora_identity") == (str(tmp_path / "lora_identity.jsonl"), None)
    assert data_paths(None, str(tmp_path / "sft.jsonl"), "lora_identity")[1] == str(tmp_path / "sft.jsonl")
    assert demo_file("sft_val.jsonl") == str(tmp_path / "sft_val.jsonl")
    assert len(calls) == 1  # generated once, then found
