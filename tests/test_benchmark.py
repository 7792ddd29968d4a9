"""Multiple-choice benchmarks and bits per byte (model/benchmark.py, model/loss_eval.py, scripts/eval_benchmark.py,
eval_bpb.py).

A tiny model trained for a few steps on the taught answers must pick them; accuracy, aggregation and
few-shot prompts are checked against hand counts and hand-written strings; each reader against a fixture
in its benchmark's official layout; bits per byte against an independent float64 computation; and the
whole scorer against lm-evaluation-harness on the same exported model (when lm-eval is installed).
"""
import copy
import csv
import importlib.util
import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from model.benchmark import (LETTERS, TASKS, BadRows, BenchmarkDataError, Question, aggregate, benchmark_markdown,
                             build_prompt, encode_pair, fewshot_examples, run_benchmark, score_questions)
from model.loss_eval import bits_per_byte
from model.chat import DEFAULT_TOKENIZER
from model.export import save_as_llama, save_as_minimind
from scripts.eval_benchmark import main as eval_benchmark
from scripts.eval_bpb import main as eval_bpb
from tests.helpers import save_checkpoint, tiny_model, tokenizer

# Each question's taught answer is another question's wrong option, so the model must read the question.
TAUGHT = [("What colour is the sky?", "blue"), ("What do cows drink?", "water"), ("Which animal barks?", "dog"),
          ("What is frozen water?", "ice"), ("Where do fish live?", "sea"), ("What do bees make?", "honey"),
          ("天空是什么颜色？", "蓝色"), ("一年有几个季节？", "四个")]


def taught_questions() -> list[Question]:
    """The taught answer at a different position each time; the last question has 3 options, not 4."""
    answers = [a for _, a in TAUGHT]
    questions = []
    for i, (text, answer) in enumerate(TAUGHT):
        wrong = [answers[(i + k) % len(answers)] for k in ((1, 3, 5) if i < len(TAUGHT) - 1 else (1, 3))]
        position = i % (len(wrong) + 1)
        questions.append(Question("a", text, wrong[:position] + [answer] + wrong[position:], position))
    return questions


@pytest.fixture(scope="module")
def trained():
    """A 64 x 2 model taught the answers: AdamW on 'Question: ...\\nAnswer: <taught>', loss on the answer only."""
    tok, task = tokenizer(), TASKS["jsonl"]
    model = tiny_model(seed=0)
    pairs = [encode_pair(tok, build_prompt(task, q, []), " " + q.choices[q.answer], chat=False)
             for q in taught_questions()]
    width = max(len(c) + len(a) for c, a in pairs)
    ids = torch.zeros((len(pairs), width), dtype=torch.long)
    labels = torch.full((len(pairs), width), -100)
    for row, (context, answer) in enumerate(pairs):
        ids[row, :len(context) + len(answer)] = torch.tensor(context + answer)
        labels[row, len(context):len(context) + len(answer)] = torch.tensor(answer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        loss = F.cross_entropy(model(ids).logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def accuracy(model, questions, **kw) -> float:
    scores = score_questions(model, tokenizer(), TASKS["jsonl"], questions, progress=False, **kw)
    return sum(s.prediction() == q.answer for s, q in zip(scores, questions)) / len(questions)


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def mixed_rows() -> list[dict]:
    """The taught questions with gold answers moved off the taught one for questions 5, 6 and 7: a model that
    answers as taught scores 5 of 8, 5 of 6 in subject a (questions 0-5) and 0 of 2 in subject b."""
    rows = []
    for i, q in enumerate(taught_questions()):
        gold = q.answer if i < 5 else (q.answer + 1) % len(q.choices)
        rows.append({"question": q.question, "choices": q.choices, "subject": "a" if i < 6 else "b", "answer": gold})
    return rows


# ----------------------------------------------------------------------------------------------------------
# Scoring and aggregation


def test_a_short_training_makes_the_scorer_pick_the_taught_answers(trained):
    questions = taught_questions()
    assert accuracy(tiny_model(seed=0), questions) < 1  # the untrained model does not know them
    assert accuracy(trained, questions) == 1
    assert accuracy(trained, questions, batch_size=1) == 1  # padding in a batch changes nothing
    scores = score_questions(trained, tokenizer(), TASKS["jsonl"], questions, batch_size=5, progress=False)
    alone = score_questions(trained, tokenizer(), TASKS["jsonl"], questions, batch_size=1, progress=False)
    flat = lambda scores: [ll for s in scores for ll in s.loglik]
    assert flat(scores) == pytest.approx(flat(alone), abs=1e-4)


def test_accuracy_and_averages_equal_a_hand_count(trained, tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", mixed_rows())
    results = run_benchmark(trained, tokenizer(), "jsonl", str(path), progress=False)
    overall = results["overall"]
    assert (overall["questions"], overall["correct"], overall["accuracy"]) == (8, 5, 5 / 8)  # micro: per question
    assert overall["macro_accuracy"] == pytest.approx((5 / 6 + 0 / 2) / 2)  # the mean of subject accuracies
    assert overall["chance"] == pytest.approx((7 / 4 + 1 / 3) / 8)
    assert {s: (r["questions"], r["correct"]) for s, r in results["subjects"].items()} == {"a": (6, 5), "b": (2, 0)}
    assert results["subjects"]["b"]["chance"] == pytest.approx((1 / 4 + 1 / 3) / 2)
    table = benchmark_markdown(results)
    assert "| a | 6 | 83.3% | 25.0% |" in table and "**62.5%**" in table and "macro 41.7%" in table


def test_categories_pool_their_subjects():
    q = lambda subject, answer=0: Question(subject, "?", ["x", "y"], answer)
    questions = [q("law"), q("law", 1), q("logic"), q("physician", 1)]
    results = aggregate(questions, [0, 0, 0, 0], {"law": "Humanities", "logic": "Humanities", "physician": "Other"})
    assert results["categories"]["Humanities"] == {"questions": 3, "correct": 2, "accuracy": 2 / 3, "chance": 0.5,
                                                   "subjects": 2}
    assert results["categories"]["Other"]["accuracy"] == 0
    assert results["overall"]["accuracy"] == 2 / 4
    assert results["overall"]["macro_accuracy"] == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_length_normalisation_divides_by_characters_or_tokens():
    from model.benchmark import OptionScores
    scores = OptionScores(loglik=[-6.0, -9.0], tokens=[1, 3], chars=[2, 12])
    assert scores.prediction("none") == 0  # -6 > -9
    assert scores.prediction("tokens") == 1  # -6/1 < -9/3
    assert scores.prediction("chars") == 1  # -3 < -0.75


# ----------------------------------------------------------------------------------------------------------
# Prompts


def test_fewshot_takes_the_first_k_of_the_pool_never_the_question_itself():
    pool = [Question("law", f"q{i}", ["a", "b", "c", "d"], i % 4) for i in range(6)]
    asked = Question("law", "q2", ["a", "b", "c", "d"], 2)  # the same question, read from another file
    assert fewshot_examples(asked, pool, 3) == [pool[0], pool[1], pool[3]]
    assert fewshot_examples(asked, pool, 3) == fewshot_examples(asked, list(pool), 3)
    prompt = build_prompt(TASKS["ceval"], asked, fewshot_examples(asked, pool, 1))
    assert prompt == ("以下是中国关于法学的单项选择题，请选出其中的正确答案。\n\n"
                      "q0\nA. a\nB. b\nC. c\nD. d\n答案： A\n\n"
                      "q2\nA. a\nB. b\nC. c\nD. d\n答案：")
    assert build_prompt(TASKS["arc"], pool[1], [pool[0]]) == "Question: q0\nAnswer: a\n\nQuestion: q1\nAnswer:"


def test_chat_prompt_puts_shots_in_earlier_turns():
    tok = tokenizer()
    pool = [Question("x", "1+1?", ["2", "3"], 0), Question("x", "2+2?", ["5", "4"], 1)]
    prompt = build_prompt(TASKS["jsonl"], pool[1], [pool[0]], tok, chat=True)
    assert prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                      "<|im_start|>user\nQuestion: 1+1?\nAnswer:<|im_end|>\n<|im_start|>assistant\n2<|im_end|>\n"
                      "<|im_start|>user\nQuestion: 2+2?\nAnswer:<|im_end|>\n<|im_start|>assistant\n")
    context, option = encode_pair(tok, prompt, "4", chat=True)
    assert context[0] == tok.bos_token_id and tok.decode(option) == "4"
    # One-token options share one forward; each must equal its own plain computation.
    model = tiny_model()
    [scores] = score_questions(model, tok, TASKS["jsonl"], [pool[1]], pool, num_fewshot=1, chat=True, progress=False)
    assert scores.tokens == [1, 1]
    model64 = copy.deepcopy(model).double()
    expected = [float(float64_logprobs(model64, context + encode_pair(tok, prompt, o, chat=True)[1])[-1])
                for o in pool[1].choices]
    assert scores.loglik == pytest.approx(expected, abs=1e-5)


# ----------------------------------------------------------------------------------------------------------
# The official layouts


def write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([header] + rows)
    return path


def ceval_fixture(root):
    """C-Eval's zip: dev (with explanations), val, test (no answers), <subject>_<split>.csv."""
    header = ["id", "question", "A", "B", "C", "D", "answer"]
    write_csv(root / "dev" / "law_dev.csv", header + ["explanation"], [["0", "宪法是？", "根本法", "b", "c", "d", "A", "因为"]])
    write_csv(root / "val" / "law_val.csv", header, [["0", "法学问题一", "a", "b", "c", "d", "B"],
                                                     ["1", "法学问题二", "a", "b", "c", "d", "D"]])
    write_csv(root / "dev" / "physician_dev.csv", header + ["explanation"],
              [["0", "医师问题", "a", "b", "c", "d", "B", ""]])
    write_csv(root / "val" / "physician_val.csv", header, [["0", "医学问题", "a", "b", "c", "d", "C"]])
    write_csv(root / "test" / "law_test.csv", header[:-1], [["0", "法学问题三", "a", "b", "c", "d"]])
    return root


def test_readers_follow_the_official_layouts(tmp_path):
    bad = BadRows()
    ceval = TASKS["ceval"].read(str(ceval_fixture(tmp_path / "ceval")), "val", bad)
    assert [(q.subject, q.question, q.answer) for q in ceval] == [("law", "法学问题一", 1), ("law", "法学问题二", 3),
                                                                  ("physician", "医学问题", 2)]
    assert TASKS["ceval"].read(str(tmp_path / "ceval"), "dev", bad)[0].choices == ["根本法", "b", "c", "d"]

    # CMMLU: <split>/<subject>.csv, an unnamed index column, capitalised Question / Answer
    write_csv(tmp_path / "cmmlu" / "test" / "agronomy.csv", ["", "Question", "A", "B", "C", "D", "Answer"],
              [["0", "农学问题", "a", "b", "c", "d", "D"]])
    [q] = TASKS["cmmlu"].read(str(tmp_path / "cmmlu"), "test", bad)
    assert (q.subject, q.question, q.answer) == ("agronomy", "农学问题", 3)
    assert build_prompt(TASKS["cmmlu"], q, []).startswith("以下是关于农学的单项选择题")

    # ARC: ARC-Easy-{Train,Dev,Test}.jsonl; labels may be digits and there may be 3 or 5 options
    arc = [{"id": "Mercury_1", "answerKey": "2", "question": {"stem": "Which is hot?", "choices": [
        {"text": "ice", "label": "1"}, {"text": "fire", "label": "2"}, {"text": "snow", "label": "3"}]}},
        {"id": "Mercury_2", "question": {"stem": "Pick E", "choices": [
            {"text": t, "label": l} for t, l in zip("vwxyz", "ABCDE")]}, "answerKey": "E"}]
    write_jsonl(tmp_path / "ARC-Easy" / "ARC-Easy-Test.jsonl", arc)
    write_jsonl(tmp_path / "ARC-Easy" / "ARC-Easy-Train.jsonl", arc[:1])
    questions = TASKS["arc"].read(str(tmp_path / "ARC-Easy"), "test", bad)
    assert [(q.question, q.choices, q.answer, q.subject) for q in questions] == [
        ("Which is hot?", ["ice", "fire", "snow"], 1, "arc"), ("Pick E", list("vwxyz"), 4, "arc")]

    # OpenBookQA: Data/Main/{train,dev,test}.jsonl, the same shape; lm-eval asks the bare stem
    write_jsonl(tmp_path / "Main" / "test.jsonl", [{**arc[0], "answerKey": " 2"}])
    [q] = TASKS["openbookqa"].read(str(tmp_path / "Main"), "test", bad)
    assert q.answer == 1 and build_prompt(TASKS["openbookqa"], q, []) == "Which is hot?"

    # generic jsonl: answer as an index or a letter
    path = write_jsonl(tmp_path / "mc.jsonl", [{"question": "q", "choices": ["x", "y"], "answer": 1},
                                               {"question": "r", "choices": ["x", "y", "z"], "answer": "C"}])
    assert [q.answer for q in TASKS["jsonl"].read(str(path), "test", bad)] == [1, 2]


@pytest.mark.parametrize("row, problem", [
    (["1", "问题", "a", "b", "c", "d"], "row 2 (line 3): 6 fields where the header has 7"),
    (["1", "问题", "a", "b", "c", "d", "E"], "row 2 (line 3): answer 'E' is not one of A, B, C, D"),
    (["1", "", "a", "b", "c", "d", "A"], "row 2 (line 3): empty question"),
])
def test_a_malformed_row_is_named_by_file_and_row(tmp_path, row, problem):
    header = ["id", "question", "A", "B", "C", "D", "answer"]
    path = write_csv(tmp_path / "val" / "law_val.csv", header, [["0", "好问题", "a", "b", "c", "d", "A"], row])
    with pytest.raises(BenchmarkDataError) as error:
        TASKS["ceval"].read(str(tmp_path), "val", BadRows())
    assert str(error.value).startswith(f"{path} {problem}") and "--skip_bad" in str(error.value)
    skipping = BadRows(skip=True)
    assert [q.question for q in TASKS["ceval"].read(str(tmp_path), "val", skipping)] == ["好问题"]
    assert skipping.skipped == [f"{path} {problem}"]


def test_missing_columns_and_bad_jsonl_lines_are_named(tmp_path):
    path = write_csv(tmp_path / "val" / "law_val.csv", ["id", "question", "A", "B", "C", "D"], [])
    with pytest.raises(BenchmarkDataError, match=f"{path}: missing column\\(s\\) answer"):
        TASKS["ceval"].read(str(tmp_path), "val", BadRows())
    path = write_jsonl(tmp_path / "mc.jsonl", [{"question": "q", "choices": ["x", "y"], "answer": 2}])
    with pytest.raises(BenchmarkDataError, match=f"{path} line 1: answer 2 is not an option index 0..1"):
        TASKS["jsonl"].read(str(path), "test", BadRows())


def test_eval_benchmark_script_on_ceval(trained, tmp_path, capsys):
    save_checkpoint(trained, tmp_path)
    out = tmp_path / "results.json"
    flags = ["--model_mode", "1", "--out_dir", str(tmp_path), "--hidden_size", "64", "--device", "cpu",
             "--dtype", "float32", "--task", "ceval", "--data_path", str(ceval_fixture(tmp_path / "ceval"))]
    eval_benchmark(flags + ["--num_fewshot", "1", "--output", str(out)])
    results = json.loads(out.read_text())
    assert results["overall"]["questions"] == 3 and set(results["categories"]) == {"Humanities", "Other"}
    assert "| law | 2 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="only 1 few-shot example\\(s\\) of subject 'law' to draw from"):
        eval_benchmark(flags + ["--num_fewshot", "2"])
    with pytest.raises(SystemExit, match="C-Eval's test answers are not public"):
        eval_benchmark(flags + ["--split", "test"])
    write_csv(tmp_path / "ceval" / "val" / "logic_val.csv", ["id", "question", "A", "B", "C", "D", "answer"],
              [["0", "逻辑", "a", "b", "c", "d", "X"]])
    with pytest.raises(SystemExit, match="logic_val.csv row 1 \\(line 2\\): answer 'X' is not one of A, B, C, D"):
        eval_benchmark(flags)
    assert eval_benchmark(flags + ["--skip_bad"])["overall"]["questions"] == 3



def test_a_single_csv_file_is_one_subject_with_shots_from_its_dev_file(trained, tmp_path):
    root = ceval_fixture(tmp_path / "ceval")
    run = lambda task, path, **kw: run_benchmark(trained, tokenizer(), task, str(path), progress=False, **kw)
    logliks = lambda results: [o["loglik"] for r in results["per_question"] for o in r["options"]]
    folder = run("ceval", root, num_fewshot=1, subjects=["law"])
    official = run("ceval", root / "val" / "law_val.csv", num_fewshot=1)  # shots from ../dev/law_dev.csv
    assert official["subjects"] == folder["subjects"] and logliks(official) == pytest.approx(logliks(folder))
    flat = tmp_path / "flat"  # the dev file beside the evaluated one
    flat.mkdir()
    for name in ("val/law_val.csv", "dev/law_dev.csv"):
        shutil.copy(root / name, flat)
    assert logliks(run("ceval", flat / "law_val.csv", num_fewshot=1)) == pytest.approx(logliks(folder))
    alone = tmp_path / "alone" / "law_val.csv"
    alone.parent.mkdir()
    shutil.copy(root / "val" / "law_val.csv", alone)
    assert run("ceval", alone)["subjects"] == run("ceval", root, subjects=["law"])["subjects"]  # zero-shot
    with pytest.raises(BenchmarkDataError, match="--num_fewshot takes examples from the subject's dev file"):
        run("ceval", alone, num_fewshot=1)
    with pytest.raises(BenchmarkDataError, match="law_val.csv: a ceval file of split 'dev' is named <subject>_dev.csv"):
        run("ceval", root / "val" / "law_val.csv", split="dev")
    # CMMLU's names carry no split: test/agronomy.csv takes its shots from dev/agronomy.csv, not from itself
    header = ["", "Question", "A", "B", "C", "D", "Answer"]
    write_csv(tmp_path / "cmmlu" / "test" / "agronomy.csv", header, [["0", "农学问题", "a", "b", "c", "d", "D"]])
    write_csv(tmp_path / "cmmlu" / "dev" / "agronomy.csv", header, [["0", "农学例题", "a", "b", "c", "d", "A"]])
    single = run("cmmlu", tmp_path / "cmmlu" / "test" / "agronomy.csv", num_fewshot=1)
    assert list(single["subjects"]) == ["agronomy"]
    assert logliks(single) == pytest.approx(logliks(run("cmmlu", tmp_path / "cmmlu", num_fewshot=1)))


def test_an_unknown_subject_is_named_once_and_still_scored(trained, tmp_path, capsys):
    root = ceval_fixture(tmp_path / "ceval")
    header = ["id", "question", "A", "B", "C", "D", "answer"]
    for subject in ("made_up", "zz_made_up"):
        write_csv(root / "val" / f"{subject}_val.csv", header, [[str(i), f"问题{i}", "a", "b", "c", "d", "A"]
                                                                for i in range(3)])
    results = run_benchmark(trained, tokenizer(), "ceval", str(root), progress=False)
    assert capsys.readouterr().err.splitlines() == [
        "warning: subject(s) not in ceval's table: made_up, zz_made_up (the prompt names them as written; "
        "category Other)"]
    assert results["subjects"]["made_up"]["questions"] == 3 and results["categories"]["Other"]["subjects"] == 3
    run_benchmark(trained, tokenizer(), "ceval", str(root), subjects=["law"], progress=False)
    assert capsys.readouterr().err == ""  # known subjects only


def test_output_lists_every_question_with_its_option_scores(trained, tmp_path):
    save_checkpoint(trained, tmp_path)
    data = write_jsonl(tmp_path / "mixed.jsonl", mixed_rows())
    out = tmp_path / "results.json"
    eval_benchmark(["--model_mode", "1", "--out_dir", str(tmp_path), "--hidden_size", "64", "--device", "cpu",
                    "--dtype", "float32", "--task", "jsonl", "--data_path", str(data), "--length_norm", "chars",
                    "--output", str(out)])
    results = json.loads(out.read_text())
    assert results["per_question_file"] == "results.questions.jsonl" and results["overall"]["questions"] == 8
    records = [json.loads(line) for line in (tmp_path / "results.questions.jsonl").read_text().splitlines()]
    rows = mixed_rows()
    assert [(r["index"], r["subject"], r["question"], r["answer"]) for r in records] == [
        (i, row["subject"], row["question"], LETTERS[row["answer"]]) for i, row in enumerate(rows)]
    assert records[5]["where"] == f"{data} line 6"
    assert sum(r["correct"] for r in records) == results["overall"]["correct"]
    for r in records:  # the decision follows the normalised score: log-likelihood per character
        scores = [o["score"] for o in r["options"]]
        assert scores == pytest.approx([o["loglik"] / len(o["text"]) for o in r["options"]])
        assert r["prediction"] == LETTERS[scores.index(max(scores))]
        assert r["correct"] == (r["prediction"] == r["answer"])
    # One question's option log-likelihoods from a hand-written prompt and a float64 copy of the model
    tok, model64 = tokenizer(), copy.deepcopy(trained).double()
    prompt = f"Question: {rows[5]['question']}\nAnswer:"
    context = [tok.bos_token_id] + tok.encode(prompt, add_special_tokens=False)
    expected = []
    for text in rows[5]["choices"]:
        ids = [tok.bos_token_id] + tok.encode(f"{prompt} {text}", add_special_tokens=False)
        assert ids[:len(context)] == context
        expected.append(float(float64_logprobs(model64, ids)[len(context) - 1:].sum()))
    assert [o["text"] for o in records[5]["options"]] == rows[5]["choices"]
    assert [o["loglik"] for o in records[5]["options"]] == pytest.approx(expected, abs=1e-4)


# ----------------------------------------------------------------------------------------------------------
# Bits per byte


TEXT = "The river runs past the old mill. 河水流过老磨坊。 It is 42 km long!"


def float64_logprobs(model64, ids: list[int]) -> torch.Tensor:
    """log p(ids[i] | ids[:i]) for i >= 1, from a float64 copy of the model, in one plain forward."""
    with torch.no_grad():
        logp = model64(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
    return logp.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


def test_bits_per_byte_equals_an_independent_float64_computation(trained):
    tok = tokenizer()
    ids = [tok.bos_token_id] + tok.encode(TEXT, add_special_tokens=False)
    nats = -float(float64_logprobs(copy.deepcopy(trained).double(), ids).sum())
    expected = nats / math.log(2) / len(TEXT.encode("utf-8"))
    for stride in (1, 7, 64):  # the text fits in one window: the stride makes no difference
        result = bits_per_byte(trained, tok, [TEXT], max_seq_len=64, stride=stride)
        assert result["bits_per_byte"] == pytest.approx(expected, rel=1e-5)
        assert (result["tokens"], result["bytes"]) == (len(ids) - 1, len(TEXT.encode("utf-8")))
    assert result["perplexity"] == pytest.approx(math.exp(result["nats"] / result["tokens"]))


def test_sliding_windows_give_each_token_the_context_they_promise(trained):
    """Stride 1: every token is predicted from exactly the max_seq_len tokens before it (fewer at the start)."""
    tok = tokenizer()
    ids = [tok.bos_token_id] + tok.encode(TEXT, add_special_tokens=False)
    window, model64 = 8, copy.deepcopy(trained).double()
    assert len(ids) > 3 * window
    naive = -sum(float(float64_logprobs(model64, ids[max(0, i - window):i + 1])[-1]) for i in range(1, len(ids)))
    result = bits_per_byte(trained, tok, [TEXT], max_seq_len=window, stride=1, batch_size=5)
    assert result["nats"] == pytest.approx(naive, rel=1e-5)
    assert result["tokens"] == len(ids) - 1
    for stride in (3, window):  # any stride scores every token once
        assert bits_per_byte(trained, tok, [TEXT], max_seq_len=window, stride=stride)["tokens"] == len(ids) - 1


def test_conversations_leave_chat_markers_out_of_tokens_and_bytes(trained, tmp_path):
    tok = tokenizer()
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    path = write_jsonl(tmp_path / "val.jsonl", [{"text": TEXT}, {"conversations": messages}])
    result = bits_per_byte(trained, tok, str(path), max_seq_len=64)
    chat_ids = tok.encode(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)
    chat_text = "system\nYou are a helpful assistant.\nuser\nhi\nassistant\nyo\n"  # the template minus markers
    assert result["documents"] == 2
    assert result["bytes"] == len(TEXT.encode("utf-8")) + len(chat_text.encode("utf-8"))
    assert result["tokens"] == (len(tok.encode(TEXT, add_special_tokens=False))
                                + sum(t not in tok.all_special_ids for t in chat_ids))


def test_eval_bpb_script_agrees_across_pth_minimind_and_llama_folders(trained, tmp_path):
    save_checkpoint(trained, tmp_path)
    save_as_minimind(trained, str(tmp_path / "hf"), DEFAULT_TOKENIZER)
    save_as_llama(trained, str(tmp_path / "llama"), DEFAULT_TOKENIZER)
    data = tmp_path / "notes.txt"
    data.write_text(TEXT * 4, encoding="utf-8")
    common = ["--data_path", str(data), "--max_seq_len", "32", "--device", "cpu", "--dtype", "float32"]
    results = [eval_bpb(common + pick) for pick in (
        ["--model_mode", "1", "--out_dir", str(tmp_path), "--hidden_size", "64"],
        ["--load_from", str(tmp_path / "hf")], ["--load_from", str(tmp_path / "llama")])]
    assert results[0]["bytes"] == len((TEXT * 4).encode("utf-8"))
    assert [r["bits_per_byte"] for r in results] == pytest.approx([results[0]["bits_per_byte"]] * 3, rel=1e-5)


# ----------------------------------------------------------------------------------------------------------
# lm-evaluation-harness on the same exported model


# scripts/README_eval.md's recipe for local C-Eval files, plus a datasets cache in the test's temp dir.
LM_EVAL_CEVAL_YAML = """task: ceval-local_law
dataset_path: csv
dataset_kwargs:
  data_files:
    val: {root}/val/law_val.csv
    dev: {root}/dev/law_dev.csv
  cache_dir: {cache}
  usecols: [id, question, A, B, C, D, answer]  # dev files add an explanation column
validation_split: val
fewshot_split: dev
fewshot_config:
  sampler: first_n
num_fewshot: 1
description: "以下是中国关于法学的单项选择题，请选出其中的正确答案。\\n\\n"
output_type: multiple_choice
doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{A}}}}\\nB. {{{{B}}}}\\nC. {{{{C}}}}\\nD. {{{{D}}}}\\n答案："
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: "{{{{['A', 'B', 'C', 'D'].index(answer)}}}}"
metric_list:
  - metric: acc
"""

LM_EVAL_MC_YAML = """task: minimind_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
  cache_dir: {cache}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
"""


@pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="lm-eval not installed (requirements-eval.txt)")
def test_lm_eval_agrees_with_our_scorer(trained, tmp_path, monkeypatch):
    """The exported folder under lm-eval's `hf` model, on a local jsonl task and on C-Eval csv files with one
    shot (scripts/README_eval.md's recipe): the same accuracy, acc_norm and option log-likelihoods.
    add_bos_token=True gives lm-eval the start token our scorer (and pretraining) puts first."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = save_as_minimind(trained, str(tmp_path / "hf"), DEFAULT_TOKENIZER)
    data = write_jsonl(tmp_path / "mixed.jsonl", mixed_rows())
    ceval = ceval_fixture(tmp_path / "ceval")
    tasks, cache = tmp_path / "tasks", tmp_path / "cache"
    tasks.mkdir()
    (tasks / "minimind_mc.yaml").write_text(LM_EVAL_MC_YAML.format(path=data, cache=cache), encoding="utf-8")
    (tasks / "ceval_law.yaml").write_text(LM_EVAL_CEVAL_YAML.format(root=ceval, cache=cache), encoding="utf-8")
    out = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={folder},trust_remote_code=True,add_bos_token=True,dtype=float32",
        tasks=["minimind_mc", "ceval-local_law"], batch_size=4, device="cpu", log_samples=True,
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False))

    def their_logliks(task):
        samples = sorted(out["samples"][task], key=lambda sample: sample["doc_id"])
        return [float(resp[0][0]) for sample in samples for resp in sample["resps"]]

    for task, ours_task, path, fewshot, subjects in (("minimind_mc", "jsonl", str(data), 0, None),
                                                     ("ceval-local_law", "ceval", str(ceval), 1, ["law"])):
        questions = [q for q in TASKS[ours_task].read(path, TASKS[ours_task].split, BadRows())
                     if not subjects or q.subject in subjects]
        pool = TASKS[ours_task].read(path, "dev", BadRows()) if fewshot else None
        scores = score_questions(trained, tokenizer(), TASKS[ours_task], questions, pool, fewshot, progress=False)
        assert their_logliks(task) == pytest.approx([ll for s in scores for ll in s.loglik], abs=1e-4)
        ours = run_benchmark(trained, tokenizer(), ours_task, path, num_fewshot=fewshot, subjects=subjects,
                             progress=False)
        assert out["results"][task]["acc,none"] == ours["overall"]["accuracy"]
    ours_norm = run_benchmark(trained, tokenizer(), "jsonl", str(data), length_norm="chars", progress=False)
    assert out["results"]["minimind_mc"]["acc,none"] == 5 / 8
    assert out["results"]["minimind_mc"]["acc_norm,none"] == ours_norm["overall"]["accuracy"]
