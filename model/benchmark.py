"""Multiple-choice benchmarks (C-Eval, CMMLU, ARC, OpenBookQA, any jsonl), scored by log-likelihood.

The model does not write an answer; we ask how
likely it finds each option after the question and pick the likeliest. That works for a pretrained model
that cannot yet follow instructions, and matches lm-evaluation-harness: the same prompts, the same
context/continuation split of the tokens, the same length normalisation (acc_norm), the first k dev
questions as few-shot examples. tests/test_benchmark.py checks the accuracy against lm-eval's own.

Bits per byte on held-out text lives with the other held-out losses, in model/loss_eval.py.
"""
import csv
import glob
import json
import os
import sys
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from .loss_eval import start_token

LETTERS = "ABCDEFGHIJ"

# C-Eval's subjects: Chinese name (lm-eval puts it in the prompt) and category, from its subject_mapping.json.
CEVAL_SUBJECTS = {
    "computer_network": ("计算机网络", "STEM"), "operating_system": ("操作系统", "STEM"),
    "computer_architecture": ("计算机组成", "STEM"), "college_programming": ("大学编程", "STEM"),
    "college_physics": ("大学物理", "STEM"), "college_chemistry": ("大学化学", "STEM"),
    "advanced_mathematics": ("高等数学", "STEM"), "probability_and_statistics": ("概率统计", "STEM"),
    "discrete_mathematics": ("离散数学", "STEM"), "electrical_engineer": ("注册电气工程师", "STEM"),
    "metrology_engineer": ("注册计量师", "STEM"), "high_school_mathematics": ("高中数学", "STEM"),
    "high_school_physics": ("高中物理", "STEM"), "high_school_chemistry": ("高中化学", "STEM"),
    "high_school_biology": ("高中生物", "STEM"), "middle_school_mathematics": ("初中数学", "STEM"),
    "middle_school_biology": ("初中生物", "STEM"), "middle_school_physics": ("初中物理", "STEM"),
    "middle_school_chemistry": ("初中化学", "STEM"), "veterinary_medicine": ("兽医学", "STEM"),
    "college_economics": ("大学经济学", "Social Science"), "business_administration": ("工商管理", "Social Science"),
    "marxism": ("马克思主义基本原理", "Social Science"),
    "mao_zedong_thought": ("毛泽东思想和中国特色社会主义理论体系概论", "Social Science"),
    "education_science": ("教育学", "Social Science"), "teacher_qualification": ("教师资格", "Social Science"),
    "high_school_politics": ("高中政治", "Social Science"), "high_school_geography": ("高中地理", "Social Science"),
    "middle_school_politics": ("初中政治", "Social Science"),
    "middle_school_geography": ("初中地理", "Social Science"),
    "modern_chinese_history": ("近代史纲要", "Humanities"),
    "ideological_and_moral_cultivation": ("思想道德修养与法律基础", "Humanities"),
    "logic": ("逻辑学", "Humanities"), "law": ("法学", "Humanities"),
    "chinese_language_and_literature": ("中国语言文学", "Humanities"), "art_studies": ("艺术学", "Humanities"),
    "professional_tour_guide": ("导游资格", "Humanities"), "legal_professional": ("法律职业资格", "Humanities"),
    "high_school_chinese": ("高中语文", "Humanities"), "high_school_history": ("高中历史", "Humanities"),
    "middle_school_history": ("初中历史", "Humanities"),
    "civil_servant": ("公务员", "Other"), "sports_science": ("体育学", "Other"),
    "plant_protection": ("植物保护", "Other"), "basic_medicine": ("基础医学", "Other"),
    "clinical_medicine": ("临床医学", "Other"), "urban_and_rural_planner": ("注册城乡规划师", "Other"),
    "accountant": ("注册会计师", "Other"), "fire_engineer": ("注册消防工程师", "Other"),
    "environmental_impact_assessment_engineer": ("环境影响评价工程师", "Other"),
    "tax_accountant": ("税务师", "Other"), "physician": ("医师资格", "Other"),
}

# CMMLU's subjects and their Chinese names (as lm-eval's cmmlu tasks use them in the prompt).
CMMLU_SUBJECTS = {
    "agronomy": "农学", "anatomy": "解剖学", "ancient_chinese": "古汉语", "arts": "艺术学", "astronomy": "天文学",
    "business_ethics": "商业伦理", "chinese_civil_service_exam": "中国公务员考试",
    "chinese_driving_rule": "中国驾驶规则", "chinese_food_culture": "中国饮食文化",
    "chinese_foreign_policy": "中国外交政策", "chinese_history": "中国历史", "chinese_literature": "中国文学",
    "chinese_teacher_qualification": "中国教师资格", "clinical_knowledge": "临床知识",
    "college_actuarial_science": "大学精算学", "college_education": "大学教育学",
    "college_engineering_hydrology": "大学工程水文学", "college_law": "大学法律", "college_mathematics": "大学数学",
    "college_medical_statistics": "大学医学统计", "college_medicine": "大学医学", "computer_science": "计算机科学",
    "computer_security": "计算机安全", "conceptual_physics": "概念物理学",
    "construction_project_management": "建设工程管理", "economics": "经济学", "education": "教育学",
    "electrical_engineering": "电气工程", "elementary_chinese": "小学语文", "elementary_commonsense": "小学常识",
    "elementary_information_and_technology": "小学信息技术", "elementary_mathematics": "初等数学",
    "ethnology": "民族学", "food_science": "食品科学", "genetics": "遗传学", "global_facts": "全球事实",
    "high_school_biology": "高中生物", "high_school_chemistry": "高中化学", "high_school_geography": "高中地理",
    "high_school_mathematics": "高中数学", "high_school_physics": "高中物理学", "high_school_politics": "高中政治",
    "human_sexuality": "人类性行为", "international_law": "国际法学", "journalism": "新闻学",
    "jurisprudence": "法理学", "legal_and_moral_basis": "法律与道德基础", "logical": "逻辑学",
    "machine_learning": "机器学习", "management": "管理学", "marketing": "市场营销", "marxist_theory": "马克思主义理论",
    "modern_chinese": "现代汉语", "nutrition": "营养学", "philosophy": "哲学", "professional_accounting": "专业会计",
    "professional_law": "专业法学", "professional_medicine": "专业医学", "professional_psychology": "专业心理学",
    "public_relations": "公共关系", "security_study": "安全研究", "sociology": "社会学", "sports_science": "体育学",
    "traditional_chinese_medicine": "中医中药", "virology": "病毒学", "world_history": "世界历史",
    "world_religions": "世界宗教",
}


class BenchmarkDataError(ValueError):
    """A benchmark file that cannot be read as its official layout promises; the message names file and row."""


@dataclass
class Question:
    subject: str
    question: str
    choices: list[str]
    answer: int  # index into choices
    where: str = ""  # "file row n": named in messages


# ----------------------------------------------------------------------------------------------------------
# Reading the official file layouts


class BadRows:
    """What to do with a malformed row: stop with a message naming file and row (default), or skip it and
    remember why (--skip_bad)."""

    def __init__(self, skip: bool = False):
        self.skip, self.skipped = skip, []

    def __call__(self, where: str, problem: str):
        if not self.skip:
            raise BenchmarkDataError(f"{where}: {problem} (pass --skip_bad to skip such rows)")
        self.skipped.append(f"{where}: {problem}")


def answer_index(answer, labels: list[str]) -> int:
    """An answer given as a label ('B', '2') or a 0-based index; ValueError when it names no option."""
    if isinstance(answer, int) and not isinstance(answer, bool):
        if 0 <= answer < len(labels):
            return answer
        raise ValueError(f"answer {answer} is not an option index 0..{len(labels) - 1}")
    label = answer.strip() if isinstance(answer, str) else answer
    if label in labels:
        return labels.index(label)
    raise ValueError(f"answer {answer!r} is not one of {', '.join(labels)}")


def read_csv_questions(path: str, subject: str, question_col: str, answer_col: str, bad: BadRows) -> list[Question]:
    """C-Eval / CMMLU csv: a question column, option columns A-D and an answer letter."""
    columns = [question_col, "A", "B", "C", "D", answer_col]
    with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: files saved by Excel start with a BOM
        reader = csv.reader(f)
        header = next(reader, [])
        missing = [c for c in columns if c not in header]
        if missing:
            raise BenchmarkDataError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(header)})")
        index = [header.index(c) for c in columns]
        questions = []
        for row_number, row in enumerate(reader, 1):
            where = f"{path} row {row_number} (line {reader.line_num})"
            if len(row) != len(header):
                bad(where, f"{len(row)} fields where the header has {len(header)}")
                continue
            question, *choices, answer = (row[i] for i in index)
            if not question.strip():
                bad(where, "empty question")
                continue
            try:
                questions.append(Question(subject, question, choices, answer_index(answer, list("ABCD")), where))
            except ValueError as e:
                bad(where, str(e))
    return questions


def parse_jsonl_row(row: dict) -> tuple[str, list[str], int, str | None]:
    """(question, choices, answer index, subject) of one jsonl row in either accepted shape:
    ARC / OpenBookQA {"question": {"stem", "choices": [{"text", "label"}]}, "answerKey"}, or the generic
    {"question", "choices": [...], "answer": index or label, "subject" (optional)}."""
    if isinstance(row.get("question"), dict):
        stem, options = row["question"].get("stem"), row["question"].get("choices")
        if not isinstance(stem, str) or not isinstance(options, list) or "answerKey" not in row:
            raise ValueError("expected question.stem, question.choices and answerKey")
        labels = [str(o.get("label", "")).strip() for o in options]
        return stem, [o.get("text", "") for o in options], answer_index(str(row["answerKey"]), labels), None
    question, choices = row.get("question"), row.get("choices")
    if not isinstance(question, str) or not isinstance(choices, list) or "answer" not in row:
        raise ValueError("expected fields question (text), choices (list) and answer, "
                         "or ARC/OpenBookQA's question.stem / question.choices / answerKey")
    if len(choices) > len(LETTERS):
        raise ValueError(f"{len(choices)} choices: at most {len(LETTERS)} (A-{LETTERS[-1]}) are supported")
    answer = answer_index(row["answer"], list(LETTERS[:len(choices)]))
    return question, [str(c) for c in choices], answer, row.get("subject")


def read_jsonl_questions(path: str, default_subject: str, bad: BadRows) -> list[Question]:
    questions = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path} line {line_number}"
            try:
                question, choices, answer, subject = parse_jsonl_row(json.loads(line))
            except (ValueError, AttributeError) as e:  # json.JSONDecodeError is a ValueError
                bad(where, str(e))
                continue
            if len(choices) < 2:
                bad(where, f"{len(choices)} choice(s): a multiple-choice question needs at least 2")
                continue
            questions.append(Question(subject or default_subject, question, choices, answer, where))
    return questions


@dataclass(frozen=True)
class Task:
    """A benchmark: where its files are and how its questions are asked (lm-eval's prompt for the same task)."""
    name: str
    split: str  # the split evaluated by default
    shot_split: str  # where few-shot examples come from
    style: str  # "letter": options listed, the letter is scored; "cloze": each option's text is scored
    csv_name: str | None = None  # <split>/<csv_name> files, one per subject; None: jsonl
    csv_columns: tuple[str, str] = ("question", "answer")
    prompt: str = "Question: {question}\nAnswer:"  # cloze context; letter style ends with `cue`
    cue: str = "Answer:"
    description: str = ""  # instruction before everything, with {subject}
    subject_names: dict = field(default_factory=dict)  # file name -> name in the description
    categories: dict = field(default_factory=dict)  # subject -> category

    def read(self, path: str, split: str, bad: BadRows) -> list[Question]:
        """Questions of one split, from a folder in the official layout or a single file: a .jsonl, or one
        subject's .csv named as in the layout (law_val.csv for C-Eval, agronomy.csv for CMMLU)."""
        if self.csv_name is None:
            return read_jsonl_questions(jsonl_split_file(path, split), self.name, bad)
        if os.path.isfile(path):
            files = [path]
        else:
            files = sorted(glob.glob(os.path.join(path, split, self.csv_name.format(subject="*", split=split))))
        if not files:
            expected = os.path.join(path, split, self.csv_name.format(subject="<subject>", split=split))
            raise BenchmarkDataError(f"{path}: no {self.name} files for split '{split}' (expected {expected})")
        return [q for f in files for q in read_csv_questions(f, self.csv_subject(f, split), *self.csv_columns, bad)]

    def csv_subject(self, path: str, split: str) -> str:
        """The subject a csv file's name gives: law_val.csv -> law (C-Eval), agronomy.csv -> agronomy (CMMLU)."""
        name, suffix = os.path.basename(path), self.csv_name.format(subject="", split=split)
        if len(name) <= len(suffix) or not name.endswith(suffix):
            raise BenchmarkDataError(f"{path}: a {self.name} file of split '{split}' is named "
                                     f"{self.csv_name.format(subject='<subject>', split=split)} "
                                     "(pass --split for another split)")
        return name[:-len(suffix)]

    def read_shots(self, path: str, split: str, bad: BadRows) -> list[Question]:
        """The few-shot pool for `read(path, split)`. A folder: its shot split. A single .jsonl file: the file
        itself (`fewshot_examples` never hands a question itself). A single csv file: its subject's shot file
        beside it or where the official layout puts it (val/law_val.csv -> val/law_dev.csv or
        dev/law_dev.csv), and nothing else: C-Eval and CMMLU draw shots from dev, and drawing them from the
        evaluated file would quietly change the benchmark."""
        if not os.path.isfile(path):
            return self.read(path, self.shot_split, bad)
        if self.csv_name is None:
            return self.read(path, split, BadRows(skip=True))  # its bad rows were reported by the first read
        subject = self.csv_subject(path, split)
        name = self.csv_name.format(subject=subject, split=self.shot_split)
        folder = os.path.dirname(os.path.abspath(path))
        candidates = [os.path.join(folder, name), os.path.join(os.path.dirname(folder), self.shot_split, name)]
        # CMMLU's names carry no split, so the file beside it may be the evaluated file itself.
        found = [c for c in candidates if os.path.isfile(c) and not os.path.samefile(c, path)]
        if not found:
            raise BenchmarkDataError(f"{path}: --num_fewshot takes examples from the subject's {self.shot_split} "
                                     f"file, and there is none at {' or '.join(candidates)}")
        return read_csv_questions(found[0], subject, *self.csv_columns, bad)


TASKS = {
    "ceval": Task("ceval", "val", "dev", "letter", "{subject}_{split}.csv", cue="答案：",
                  description="以下是中国关于{subject}的单项选择题，请选出其中的正确答案。\n\n",
                  subject_names={s: name for s, (name, _) in CEVAL_SUBJECTS.items()},
                  categories={s: category for s, (_, category) in CEVAL_SUBJECTS.items()}),
    "cmmlu": Task("cmmlu", "test", "dev", "letter", "{subject}.csv", ("Question", "Answer"), cue="答案：",
                  description="以下是关于{subject}的单项选择题，请直接给出正确答案的选项。\n\n",
                  subject_names=CMMLU_SUBJECTS),
    "arc": Task("arc", "test", "train", "cloze"),
    "openbookqa": Task("openbookqa", "test", "train", "cloze", prompt="{question}"),  # lm-eval: the bare stem
    "jsonl": Task("jsonl", "test", "train", "cloze"),
}


def jsonl_split_file(path: str, split: str) -> str:
    """A .jsonl file as given, or the split's file in a folder: OpenBookQA's Main/test.jsonl, ARC's
    ARC-Easy-Test.jsonl."""
    if os.path.isfile(path):
        return path
    stem = lambda f: os.path.basename(f)[:-len(".jsonl")].lower()
    files = [f for f in glob.glob(os.path.join(path, "*.jsonl")) if stem(f) == split or stem(f).endswith("-" + split)]
    if len(files) != 1:
        raise BenchmarkDataError(f"{path}: expected one <...>{split}.jsonl file for split '{split}', found "
                                 f"{', '.join(map(os.path.basename, files)) or 'none'}")
    return files[0]


# ----------------------------------------------------------------------------------------------------------
# Prompts (lm-eval's conventions: description, shots joined by a blank line, target delimiter " ")


def question_text(task: Task, q: Question) -> str:
    if task.style == "letter":
        options = "".join(f"\n{LETTERS[i]}. {c}" for i, c in enumerate(q.choices))
        return f"{q.question.strip()}{options}\n{task.cue}"
    return task.prompt.format(question=q.question)


def choice_texts(task: Task, q: Question) -> list[str]:
    """What is scored for each option: its letter, or its text."""
    return list(LETTERS[:len(q.choices)]) if task.style == "letter" else q.choices


def fewshot_examples(q: Question, pool: list[Question], k: int) -> list[Question]:
    """The first k questions of the pool (C-Eval's, CMMLU's and lm-eval's `first_n`), never `q` itself.

    A question counts as itself when its text and options match: ids differ or are missing across files,
    and a pool that is the evaluated file (a single jsonl) must not hand a question its own answer.
    """
    return [p for p in pool if (p.question, p.choices) != (q.question, q.choices)][:k]


def build_prompt(task: Task, q: Question, shots: list[Question], tokenizer=None, chat: bool = False) -> str:
    """The context each option is scored after. `chat`: the shots as earlier user/assistant turns and the
    question as the last user turn, in the tokenizer's chat template, ending with the assistant's prompt."""
    description = task.description.format(subject=task.subject_names.get(q.subject, q.subject))
    if not chat:
        shot_text = "".join(f"{question_text(task, s)} {choice_texts(task, s)[s.answer]}\n\n" for s in shots)
        return description + shot_text + question_text(task, q)
    messages = []
    for s in shots + [q]:
        messages.append({"role": "user", "content": question_text(task, s)})
        if s is not q:
            messages.append({"role": "assistant", "content": choice_texts(task, s)[s.answer]})
    # The instruction goes into the first user turn, not the system message: the default system message
    # stays the one SFT trained with.
    messages[0]["content"] = description + messages[0]["content"]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_pair(tokenizer, context: str, continuation: str, chat: bool) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids), split as lm-eval splits them: encode the whole string, then cut
    after the context's own tokens, so a token that merges across the boundary counts for the option.
    Plain text starts with the start token, as pretraining documents did; a chat template brings its own."""
    spaces = len(context) - len(context.rstrip(" "))  # a trailing space belongs to the option (" Paris")
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    prefix = [] if chat else [start_token(tokenizer)]
    whole = prefix + tokenizer.encode(context + continuation, add_special_tokens=False)
    context_ids = prefix + tokenizer.encode(context, add_special_tokens=False)
    return context_ids, whole[len(context_ids):]


# ----------------------------------------------------------------------------------------------------------
# Scoring


@torch.no_grad()
def logprobs_of(model, inputs: list[list[int]], targets: list[torch.Tensor]) -> list[torch.Tensor]:
    """log p(token | the input up to a position), float64 on the CPU, for targets[i]: an (n, k) tensor of
    token ids, k of them read at each of the last n positions of inputs[i].

    One forward for the batch, right-padded and without an attention mask: causal attention never looks
    right, so a real position never sees the padding, and positions count from 0 as they do unpadded
    (lm-eval batches the same way). The padding's own logits are never read.
    """
    device = next(model.parameters()).device
    ids = torch.zeros((len(inputs), max(map(len, inputs))), dtype=torch.long)
    for row, tokens in enumerate(inputs):
        ids[row, :len(tokens)] = torch.tensor(tokens)
    logits = model(ids.to(device)).logits
    out = []
    for row, (tokens, wanted) in enumerate(zip(inputs, targets)):
        logp = logits[row, len(tokens) - len(wanted):len(tokens)].float().log_softmax(-1)
        out.append(logp.gather(-1, wanted.to(device)).double().cpu())
    return out


def batched(model, requests: list[tuple[list[int], torch.Tensor]], batch_size: int, desc: str, progress: bool):
    """`logprobs_of` over (input, targets) requests, longest first: similar lengths share a batch (little
    padding), and a batch too big for memory fails at once. Results come back in the requests' order."""
    order = sorted(range(len(requests)), key=lambda r: -len(requests[r][0]))
    results = [None] * len(requests)
    was_training = model.training
    model.eval()
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress):
        batch = order[start:start + batch_size]
        for r, logp in zip(batch, logprobs_of(model, *zip(*(requests[r] for r in batch)))):
            results[r] = logp
    model.train(was_training)
    return results


@dataclass
class OptionScores:
    """A question's options: summed log-likelihood, and the lengths that length normalisation divides by."""
    loglik: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    chars: list[int] = field(default_factory=list)

    def normalized(self, length_norm: str = "none") -> list[float]:
        """The scores the decision compares. `length_norm`: none (lm-eval acc: the log-likelihood itself),
        chars (acc_norm: per character of the option), tokens (per token)."""
        lengths = {"none": [1] * len(self.loglik), "chars": self.chars, "tokens": self.tokens}[length_norm]
        return [ll / max(n, 1) for ll, n in zip(self.loglik, lengths)]

    def prediction(self, length_norm: str = "none") -> int:
        """The best-scoring option; ties go to the first (numpy's argmax, as lm-eval)."""
        scores = self.normalized(length_norm)
        return scores.index(max(scores))


def score_questions(model, tokenizer, task: Task, questions: list[Question], pool: list[Question] | None = None,
                    num_fewshot: int = 0, chat: bool = False, batch_size: int = 16, max_seq_len: int | None = None,
                    progress: bool = True) -> list[OptionScores]:
    """Log-likelihood of every option of every question, many per forward.

    Shots come from the question's own subject in `pool` (the dev/train split, or the evaluated file itself).
    Prompts longer than `max_seq_len` (default: the model's max_position_embeddings) lose their beginning.
    """
    max_seq_len = max_seq_len or model.config.max_position_embeddings
    by_subject = {}
    for p in pool or []:
        by_subject.setdefault(p.subject, []).append(p)
    owners, requests = [], []  # the question of each request; (model input, (n, k) target tokens)
    for i, q in enumerate(questions):
        shots = fewshot_examples(q, by_subject.get(q.subject, []), num_fewshot) if num_fewshot else []
        if len(shots) < num_fewshot:
            raise BenchmarkDataError(f"{q.where}: only {len(shots)} few-shot example(s) of subject '{q.subject}' "
                                     f"to draw from, --num_fewshot asks for {num_fewshot}")
        context = build_prompt(task, q, shots, tokenizer, chat)
        options = [encode_pair(tokenizer, context, option if chat else " " + option, chat)
                   for option in choice_texts(task, q)]
        for option, (_, continuation) in zip(choice_texts(task, q), options):
            if not 1 <= len(continuation) <= max_seq_len:
                raise BenchmarkDataError(f"{q.where}: option {option[:40]!r} is {len(continuation)} tokens "
                                         f"(must be 1..{max_seq_len})")
        if all(len(continuation) == 1 for _, continuation in options):
            # One-token options (letters): they all follow the same context, so one forward reads them all.
            requests.append((options[0][0][-max_seq_len:], torch.tensor([[c[0] for _, c in options]])))
            owners.append(i)
            continue
        for context_ids, continuation in options:
            tokens = (context_ids + continuation)[-(max_seq_len + 1):]
            requests.append((tokens[:-1], torch.tensor(continuation)[:, None]))
            owners.append(i)
    scores = [OptionScores(chars=[len(o) for o in choice_texts(task, q)]) for q in questions]
    # Requests come back in order, so each question's options arrive in order: (1, k) for k one-token
    # options, (n, 1) for one option of n tokens; summing over positions gives each option's log-likelihood.
    for i, (_, targets), logp in zip(owners, requests, batched(model, requests, batch_size, f"{task.name}", progress)):
        scores[i].loglik += logp.sum(0).tolist()
        scores[i].tokens += [targets.shape[0]] * targets.shape[1]
    return scores


# ----------------------------------------------------------------------------------------------------------
# Aggregation and reporting


def tally(answered: list[tuple[Question, int]]) -> dict:
    """Questions, correct answers, accuracy and chance level of (question, predicted option) pairs."""
    n = len(answered)
    correct = sum(p == q.answer for q, p in answered)
    chance = sum(1 / len(q.choices) for q, _ in answered) / n
    return {"questions": n, "correct": correct, "accuracy": correct / n, "chance": chance}


def aggregate(questions: list[Question], predictions: list[int], categories: dict | None = None) -> dict:
    """Accuracy per subject, per category (when the task has them) and overall, each with its chance level
    (the mean of 1 / number of options).

    `accuracy` pools the questions (micro average: as MMLU's and CMMLU's own scripts and lm-eval's groups,
    which weight by size), so a big subject counts more; `macro_accuracy` is the plain mean over subjects.
    """
    answered = list(zip(questions, predictions))
    by_subject = {}
    for q, p in answered:
        by_subject.setdefault(q.subject, []).append((q, p))
    subjects = {s: tally(pairs) for s, pairs in sorted(by_subject.items())}
    results = {"subjects": subjects}
    if categories:
        members = {}
        for s in subjects:
            members.setdefault(categories.get(s, "Other"), []).append(s)
        results["categories"] = {c: {**tally([qp for s in ss for qp in by_subject[s]]), "subjects": len(ss)}
                                 for c, ss in sorted(members.items())}
    results["overall"] = {**tally(answered),
                          "macro_accuracy": sum(r["accuracy"] for r in subjects.values()) / len(subjects)}
    return results


def question_records(questions: list[Question], scores: list[OptionScores], length_norm: str) -> list[dict]:
    """One JSON-ready record per question, so a reviewer can check a run: where it was read (index among
    the evaluated questions; file and row), its subject, the gold and predicted letters, and each option's
    summed log-likelihood beside the length-normalised score the prediction compared."""
    records = []
    for index, (q, s) in enumerate(zip(questions, scores)):
        normalized, predicted = s.normalized(length_norm), s.prediction(length_norm)
        records.append({"index": index, "subject": q.subject, "where": q.where, "question": q.question,
                        "answer": LETTERS[q.answer], "prediction": LETTERS[predicted],
                        "correct": predicted == q.answer,
                        "options": [{"label": LETTERS[i], "text": text, "loglik": ll, "score": score}
                                    for i, (text, ll, score) in enumerate(zip(q.choices, s.loglik, normalized))]})
    return records


def warn_unknown_subjects(task: Task, questions: list[Question]):
    """One stderr line naming the subjects the task's table lacks: their prompt names them as written (not
    in Chinese) and C-Eval files them under 'Other', which a reader of the results should know."""
    if not task.subject_names:  # tasks whose prompts name no subject
        return
    unknown = sorted({q.subject for q in questions} - set(task.subject_names))
    if unknown:
        print(f"warning: subject(s) not in {task.name}'s table: {', '.join(unknown)} (the prompt names them as "
              f"written{'; category Other' if task.categories else ''})", file=sys.stderr)


def first_per_subject(questions: list[Question], limit: int) -> list[Question]:
    """The first `limit` questions of each subject, in file order."""
    seen = {}
    kept = []
    for q in questions:
        seen[q.subject] = seen.get(q.subject, 0) + 1
        if seen[q.subject] <= limit:
            kept.append(q)
    return kept


def run_benchmark(model, tokenizer, task: str, data_path: str, split: str | None = None, num_fewshot: int = 0,
                  chat: bool = False, length_norm: str = "none", subjects: list[str] | None = None,
                  limit: int | None = None, skip_bad: bool = False, batch_size: int = 16,
                  max_seq_len: int | None = None, progress: bool = True) -> dict:
    """Read a benchmark in its official layout, score it, and return the results (JSON-ready): totals, and
    under "per_question" one record per question (`question_records`).

    `subjects` keeps only those; `limit` keeps the first n questions of each subject (quick looks).
    Few-shot examples come from the task's dev/train split, or from the evaluated file when it is a single
    .jsonl (never the question itself): `Task.read_shots`.
    """
    spec = TASKS[task]
    split = split or spec.split
    if task == "ceval" and split == "test":
        raise BenchmarkDataError("C-Eval's test answers are not public: evaluate --split val (dev holds the "
                                 "few-shot examples), or submit test predictions at cevalbenchmark.com")
    bad = BadRows(skip_bad)
    questions = spec.read(data_path, split, bad)
    if subjects:
        questions = [q for q in questions if q.subject in subjects]
    if limit:
        questions = first_per_subject(questions, limit)
    if not questions:
        raise BenchmarkDataError(f"{data_path}: no questions to evaluate (split '{split}', subjects {subjects})")
    warn_unknown_subjects(spec, questions)
    pool = spec.read_shots(data_path, split, bad) if num_fewshot else None
    scores = score_questions(model, tokenizer, spec, questions, pool, num_fewshot, chat, batch_size, max_seq_len,
                             progress)
    predictions = [s.prediction(length_norm) for s in scores]
    return {"task": task, "data_path": data_path, "split": split, "num_fewshot": num_fewshot, "chat": chat,
            "length_norm": length_norm, "skipped": bad.skipped, **aggregate(questions, predictions, spec.categories),
            "per_question": question_records(questions, scores, length_norm)}


def benchmark_markdown(results: dict, subjects: bool = True) -> str:
    """A markdown table of `run_benchmark`'s results: per subject (optional), per category, overall."""
    pct = lambda x: f"{100 * x:.1f}%"
    title = (f"**{results['task']}** ({results['split']}, {results['num_fewshot']}-shot, "
             f"{'chat template' if results['chat'] else 'plain text'}, length norm: {results['length_norm']}"
             f"{', ' + str(len(results['skipped'])) + ' bad rows skipped' if results['skipped'] else ''})")
    lines = [title, "", "| subject | questions | accuracy | chance |", "|---|---:|---:|---:|"]
    row = lambda name, r: f"| {name} | {r['questions']} | {pct(r['accuracy'])} | {pct(r['chance'])} |"
    if subjects:
        lines += [row(s, r) for s, r in results["subjects"].items()]
    lines += [row(f"*{c}* ({r['subjects']} subjects)", r) for c, r in results.get("categories", {}).items()]
    overall = results["overall"]
    lines.append(f"| **overall** (macro {pct(overall['macro_accuracy'])}) | {overall['questions']} | "
                 f"**{pct(overall['accuracy'])}** | {pct(overall['chance'])} |")
    return "\n".join(lines)
