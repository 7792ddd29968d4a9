"""The files of the demo corpus: their sizes, the chat, DPO, reasoning, LoRA, RL and evaluation records,
`build_files` (every file from its own random stream), and `generate`, which checks for leaks and writes the
jsonl files, stats.json and README.md.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

from .documents import pretrain_documents
from .heldout import (EVAL_CATEGORIES, Cycler, HeldOut, TrainingItems, build_heldout, eval_row, heldout_candidates,
                      take_balanced)
from .items import Item, answer_sentence, fact_item, identity_item, reasoning_reply, with_opener
from .leaks import find_leaks
from .phrasings import (CHITCHAT, DOMAIN_SYSTEM, EVASIVE, GREETINGS, IDENTITY, IDENTITY_OPENERS, LANGS, RELATIONS,
                        SYSTEM_PROMPTS, THANKS)
from .tooluse import (AGENT_MIX, AGENT_ROWS, SFT_TOOLS_MIX, SFT_TOOLS_ROWS, ToolChats, agent_rows, agent_val_rows,
                      sft_tool_conversations)
from .world import World, build_world, facts_of, rng_for

# Sizes: --scale multiplies training rows; held-out files keep a fixed size so that scores compare across scales.
PRETRAIN_VAL_FRACTION = 0.03
SFT_ROWS, SFT_VAL_ROWS = 12_000, 400
SFT_MIX = {"fact": 0.46, "multi_fact": 0.15, "arithmetic": 0.14, "word_problem": 0.09, "two_hop": 0.08,
           "chitchat": 0.08}
SYSTEM_PROMPT_RATE = 0.2
SFT_EVASIVE_RATE = 0.05  # like real SFT sets, a few replies dodge the question: DPO's job is to unlearn them
DPO_ROWS, DPO_VAL_ROWS = 3_000, 300
DPO_MIX = {"fact": 0.45, "multi_fact": 0.05, "arithmetic": 0.25, "word_problem": 0.15, "two_hop": 0.10}
DPO_VAL_MIX = {"fact_new_phrasing": 0.3, "fact_pretrain_only": 0.2, "two_hop": 0.15, "arithmetic": 0.2,
               "word_problem": 0.15}
# What a rejected reply is: a confident wrong fact or number, an evasion, the right answer to a different
# question of the same kind (the mix-up a small SFT model makes most), or a true sentence on another topic.
REJECTIONS = {"wrong": 1, "evasive": 1, "mixed_up": 1, "off_topic": 1}
SOURCE_OF = {"fact_new_phrasing": "fact", "fact_pretrain_only": "fact"}  # held-out category -> TrainingItems method
REASON_ROWS, REASON_EVAL_PER_CATEGORY = 4_000, 100
REASON_MIX = {"arithmetic": 0.4, "word_problem": 0.3, "two_hop": 0.3}
LORA_IDENTITY_ROWS, LORA_DOMAIN_ROWS = 480, 480
RL_ROWS, RL_VAL_ROWS = 1_500, 200
# Mostly facts: the demo chain's models recall taught facts some of the time (pass@8 of the DPO model on fact
# prompts: 68% of the groups mixed) but almost never get multi-digit arithmetic right, and RL learns only
# from mixed groups.
RL_MIX = {"fact": 0.8, "arithmetic": 0.1, "word_problem": 0.1}
RL_VAL_MIX = {"fact_new_phrasing": 0.3, "fact_pretrain_only": 0.3, "arithmetic": 0.2, "word_problem": 0.2}
EVAL_PER_CATEGORY_LANG = 50


def _split_counts(total: int, mix: dict) -> dict:
    """Largest-remainder rounding: the parts add up to exactly `total`."""
    raw = {k: total * w / sum(mix.values()) for k, w in mix.items()}
    counts = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: counts[k] - raw[k])[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


# ---- conversation records ----
def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def qa(item: Item) -> list[dict]:
    return [user(item.question), assistant(item.reply)]


def with_system(rng: random.Random, lang: str, messages: list[dict], rate: float = SYSTEM_PROMPT_RATE) -> list[dict]:
    if rng.random() < rate:
        return [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS[lang])}] + messages
    return messages


def with_evasions(rng: random.Random, convs: list[dict], rate: float) -> list[dict]:
    """The last reply of a `rate` share of the question-answer chats swapped for an evasive one."""
    small_talk = {a for lang in LANGS for _, a in CHITCHAT[lang]}
    for conv in convs:
        last = conv["conversations"][-1]
        if last["content"] not in small_talk and rng.random() < rate:
            lang = "zh" if _CJK.search(last["content"]) else "en"
            conv["conversations"][-1] = assistant(rng.choice(EVASIVE[lang]))
    return convs


def sft_conversations(rng: random.Random, source: TrainingItems, n: int) -> list[dict]:
    convs = []
    for kind, count in _split_counts(n, SFT_MIX).items():
        for _ in range(count):
            if kind == "multi_fact":
                items = source.entity_facts(rng.randint(2, 3))
                messages, lang = [m for item in items for m in qa(item)], items[0].lang
            elif kind == "chitchat":
                lang = rng.choice(LANGS)
                variant = rng.randrange(3)
                if variant == 0:  # small talk on its own
                    messages = [m for q, a in [rng.choice(CHITCHAT[lang])] for m in (user(q), assistant(a))]
                else:  # a greeting before, or thanks after, a fact question
                    item = source.fact()
                    lang = item.lang
                    q, a = rng.choice(GREETINGS[lang] if variant == 1 else THANKS[lang])
                    small_talk = [user(q), assistant(a)]
                    messages = small_talk + qa(item) if variant == 1 else qa(item) + small_talk
            else:
                item = getattr(source, kind)()
                messages, lang = qa(item), item.lang
            convs.append({"conversations": with_system(rng, lang, messages)})
    rng.shuffle(convs)
    return convs


def rejected_reply(rng: random.Random, kind: str, item: Item, source: TrainingItems) -> str:
    """One of REJECTIONS for an item drawn by TrainingItems.<kind>."""
    rejection = rng.choices(list(REJECTIONS), weights=list(REJECTIONS.values()))[0]
    if rejection == "wrong" and item.wrong_reply:
        return item.wrong_reply
    if rejection == "mixed_up":
        return source.another_answer(kind, item)
    if rejection == "off_topic":
        return source.statement(item.lang, avoid=item.reply)
    return rng.choice(EVASIVE[item.lang])


def dpo_pair(rng: random.Random, prompt: list[dict], kind: str, item: Item, source: TrainingItems) -> dict:
    rejected = rejected_reply(rng, kind, item, source)
    return {"chosen": prompt + [assistant(item.reply)], "rejected": prompt + [assistant(rejected)]}


def dpo_pairs(rng: random.Random, source: TrainingItems, n: int) -> list[dict]:
    pairs = []
    for kind, count in _split_counts(n, DPO_MIX).items():
        for _ in range(count):
            if kind == "multi_fact":  # the preference is on the last turn
                first, item = source.entity_facts(2)
                prompt = qa(first) + [user(item.question)]
            else:
                item = getattr(source, kind)()
                prompt = [user(item.question)]
            source_kind = "fact" if kind == "multi_fact" else kind
            pairs.append(dpo_pair(rng, with_system(rng, item.lang, prompt, 0.15), source_kind, item, source))
    rng.shuffle(pairs)
    return pairs


def sample_heldout(rng: random.Random, candidates: dict, mix: dict, n: int) -> list[tuple[str, Item]]:
    """(category, item) pairs with distinct questions, in proportions `mix`, alternating languages."""
    chosen, questions = [], set()
    for category, count in _split_counts(n, mix).items():
        for k in range(count):
            groups = candidates[category][LANGS[k % 2]]
            while True:
                item = rng.choice(groups[rng.choice(sorted(groups))])
                if item.question not in questions:
                    break
            questions.add(item.question)
            chosen.append((category, item))
    rng.shuffle(chosen)
    return chosen


def lora_identity_conversations(rng: random.Random, n: int) -> list[dict]:
    combos = Cycler(rng, [(intent, lang, q, opener) for intent, by_lang in IDENTITY.items() for lang in LANGS
                          for q in by_lang[lang][0] for opener in IDENTITY_OPENERS[lang]])
    convs = []
    for _ in range(n):
        (intent, lang, question, opener), _ = combos.next()
        messages = qa(identity_item(intent, lang, with_opener(opener, question)))
        if rng.random() < 0.2:  # sometimes the question comes after some small talk
            q, a = rng.choice(GREETINGS[lang])
            messages = [user(q), assistant(a)] + messages
        convs.append({"conversations": with_system(rng, lang, messages, 0.1)})
    return convs


def lora_domain_conversations(rng: random.Random, world: World, n: int) -> list[dict]:
    facts = Cycler(rng, [(f, lang) for f in world.domain_facts() for lang in LANGS])
    convs = []
    for _ in range(n):
        (fact, lang), turn = facts.next()
        templates = RELATIONS[fact.relation][lang]["train"]
        messages = qa(fact_item(rng, world, fact, lang, templates[turn % len(templates)]))
        if rng.random() < 0.15:
            messages = [{"role": "system", "content": DOMAIN_SYSTEM[lang]}] + messages
        convs.append({"conversations": messages})
    return convs


# ---- statistics, building and writing the files ----
_CJK = re.compile(r"[\u3000-\u303f\u3400-\u9fff\uff00-\uffef]")  # Chinese characters and punctuation


def content_strings(record):
    """What a model reads from a record: texts, message contents, questions and answers."""
    if isinstance(record, dict):
        for key, value in record.items():
            if key in ("text", "content", "question", "answer") and isinstance(value, str):
                yield value
            elif isinstance(value, (list, dict)):
                yield from content_strings(value)
    elif isinstance(record, list):
        for value in record:
            yield from content_strings(value)


def approx_tokens(chars_cjk: int, chars_other: int) -> int:
    # MiniMind's 6,400-token byte-level BPE: about 1.4 Chinese characters or 3.7 other characters per token.
    return round(chars_cjk / 1.4 + chars_other / 3.7)


def file_stats(records: list) -> dict:
    text = "".join(s for r in records for s in content_strings(r))
    cjk, chars = len(_CJK.findall(text)), len(text)
    return {"rows": len(records), "chars": chars, "approx_tokens": approx_tokens(cjk, chars - cjk)}


def write_jsonl(path: Path, records: list):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


TRAINING_FILES = ["pretrain.jsonl", "sft.jsonl", "dpo.jsonl", "reason.jsonl", "lora_identity.jsonl",
                  "lora_domain.jsonl", "rl_prompts.jsonl", "sft_tools.jsonl", "agent_prompts.jsonl"]
FILE_DESCRIPTIONS = {
    "pretrain.jsonl": "pretraining paragraphs: encyclopedia entries, stories and dialogues about the world, "
                      "arithmetic pages, worked word problems",
    "pretrain_val.jsonl": "held-out pretraining paragraphs (validation loss)",
    "sft.jsonl": "chat SFT: fact questions (single and multi-turn), two-hop questions, arithmetic, word problems, "
                 f"small talk; some with a system message; {SFT_EVASIVE_RATE:.0%} of the answers evasive, as in real "
                 "SFT sets",
    "sft_val.jsonl": "held-out SFT conversations (validation loss)",
    "dpo.jsonl": "preference pairs: chosen is correct; rejected is wrong, evasive, or a true answer to another "
                 "question (mixed up or off-topic)",
    "dpo_val.jsonl": "preference pairs over held-out questions (preference accuracy)",
    "reason.jsonl": "reasoning SFT: `<think>` worked steps `</think>` `<answer>` result `</answer>`",
    "reason_eval.jsonl": "held-out reasoning problems with answers (evaluation rows)",
    "lora_identity.jsonl": "identity LoRA: who the assistant is (taught nowhere else)",
    "lora_domain.jsonl": "domain LoRA: the valley's herbal medicine (taught nowhere else)",
    "rl_prompts.jsonl": "RL prompts with checkable answers",
    "rl_prompts_val.jsonl": "held-out RL prompts",
    "sft_tools.jsonl": "tool-use SFT: the calculator for arithmetic and word problems, lookup for facts (twice for "
                       "two-hop questions), convert for units, no tool for small talk; plain chats without tools",
    "agent_prompts.jsonl": "agentic RL prompts with the tools and a checkable answer",
    "agent_prompts_val.jsonl": "held-out agent prompts (unseen operands, word problems, pretraining-only facts, "
                               "two-hop subjects) and small talk that needs no tool",
    "eval.jsonl": "held-out evaluation questions, balanced over categories and languages",
}


def draw_items(source: TrainingItems, mix: dict, n: int) -> list[Item]:
    """n training items in the proportions of `mix` (keys name TrainingItems methods), shuffled."""
    items = [getattr(source, kind)() for kind, count in _split_counts(n, mix).items() for _ in range(count)]
    source.rng.shuffle(items)
    return items


def eval_rows(rng: random.Random, candidates: dict, categories, per_lang: int, id_prefix: str = "") -> list[dict]:
    return [eval_row(item, category, f"{id_prefix}{category}-{lang}-{k:03d}")
            for category in categories for lang in LANGS
            for k, item in enumerate(take_balanced(rng, candidates[category][lang], per_lang))]


def rl_row(item: Item) -> dict:
    return {"conversations": [user(item.question)], "answer": item.answer}


def build_files(world: World, heldout: HeldOut, seed: int, scale: float) -> dict[str, list]:
    """Every jsonl file, in FILE_DESCRIPTIONS order. Each file draws from its own random stream, and the
    held-out files never depend on `scale`, so their scores compare across scales."""
    rows = lambda n: max(1, round(n * scale))  # noqa: E731
    items = lambda stream: TrainingItems(rng_for(seed, stream + "-items"), world, heldout)  # noqa: E731
    candidates = heldout_candidates(seed, world, heldout)
    files = {}

    docs = pretrain_documents(rng_for(seed, "pretrain"), world, heldout, scale)
    val_docs = pretrain_documents(rng_for(seed, "pretrain_val"), world, heldout, scale * PRETRAIN_VAL_FRACTION)
    files["pretrain.jsonl"] = [{"text": d} for d in docs]
    train_docs = set(docs)
    files["pretrain_val.jsonl"] = [{"text": d} for d in val_docs if d not in train_docs]

    files["sft.jsonl"] = with_evasions(rng_for(seed, "sft_evasions"),
                                       sft_conversations(rng_for(seed, "sft"), items("sft"), rows(SFT_ROWS)),
                                       SFT_EVASIVE_RATE)
    # Validation conversations come from the same sources: draw extra, then drop any that equal a training one.
    seen = {json.dumps(c) for c in files["sft.jsonl"]}
    sft_val = sft_conversations(rng_for(seed, "sft_val"), items("sft_val"), 3 * rows(SFT_VAL_ROWS))
    files["sft_val.jsonl"] = [c for c in sft_val if json.dumps(c) not in seen][:rows(SFT_VAL_ROWS)]

    files["dpo.jsonl"] = dpo_pairs(rng_for(seed, "dpo"), items("dpo"), rows(DPO_ROWS))
    rng, source = rng_for(seed, "dpo_val"), items("dpo_val")
    files["dpo_val.jsonl"] = [dpo_pair(rng, [user(item.question)], SOURCE_OF.get(category, category), item, source)
                              for category, item in sample_heldout(rng, candidates, DPO_VAL_MIX, DPO_VAL_ROWS)]

    files["reason.jsonl"] = [{"conversations": [user(item.question), assistant(reasoning_reply(item))]}
                             for item in draw_items(items("reason"), REASON_MIX, rows(REASON_ROWS))]
    files["reason_eval.jsonl"] = eval_rows(rng_for(seed, "reason_eval"), candidates, REASON_MIX,
                                           REASON_EVAL_PER_CATEGORY // 2, id_prefix="reason-")

    files["lora_identity.jsonl"] = lora_identity_conversations(rng_for(seed, "lora_identity"), rows(LORA_IDENTITY_ROWS))
    files["lora_domain.jsonl"] = lora_domain_conversations(rng_for(seed, "lora_domain"), world, rows(LORA_DOMAIN_ROWS))

    files["rl_prompts.jsonl"] = [rl_row(item) for item in draw_items(items("rl"), RL_MIX, rows(RL_ROWS))]
    files["rl_prompts_val.jsonl"] = [rl_row(item) for _, item in
                                     sample_heldout(rng_for(seed, "rl_val"), candidates, RL_VAL_MIX, RL_VAL_ROWS)]

    chats = ToolChats(seed)
    files["sft_tools.jsonl"] = sft_tool_conversations(rng_for(seed, "sft_tools"), chats, items("sft_tools"),
                                                      items("sft_tools_plain"), heldout,
                                                      _split_counts(rows(SFT_TOOLS_ROWS), SFT_TOOLS_MIX))
    files["agent_prompts.jsonl"] = agent_rows(rng_for(seed, "agent"), chats, items("agent"), heldout,
                                              _split_counts(rows(AGENT_ROWS), AGENT_MIX))
    files["agent_prompts_val.jsonl"] = agent_val_rows(rng_for(seed, "agent_val"), chats, candidates)

    files["eval.jsonl"] = eval_rows(rng_for(seed, "eval"), candidates, EVAL_CATEGORIES, EVAL_PER_CATEGORY_LANG)
    return files


def generate(out_dir, seed: int = 42, scale: float = 1.0) -> dict:
    """Writes the demo corpus into out_dir and returns its statistics (also written as stats.json)."""
    if scale <= 0:
        raise ValueError("scale must be positive")
    world = build_world(seed)
    heldout = build_heldout(seed, world)
    files = build_files(world, heldout, seed, scale)

    # Everything held out: evaluation rows and the prompts of the held-out DPO and RL files.
    heldout_questions = sorted({r["question"] for r in files["eval.jsonl"] + files["reason_eval.jsonl"]}
                               | {r["chosen"][-2]["content"] for r in files["dpo_val.jsonl"]}
                               | {r["conversations"][0]["content"] for r in files["rl_prompts_val.jsonl"]}
                               | {r["conversations"][-1]["content"] for r in files["agent_prompts_val.jsonl"]})
    problems = find_leaks({name: files[name] for name in TRAINING_FILES}, heldout_questions, heldout)
    if problems:
        raise AssertionError("held-out material leaked:\n" + "\n".join(problems[:20]))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, records in files.items():
        write_jsonl(out / name, records)
    stats = {
        "seed": seed, "scale": scale,
        "world": {"countries": len(world.countries), "towns": len(world.towns), "rivers": len(world.rivers),
                  "people": len(world.people), "herbs": len(world.herbs),
                  "facts_taught_in_sft": len(world.taught_facts()),
                  "facts_pretrain_only": len(world.pretrain_only_facts()),
                  "two_hop_subjects_train": len(world.two_hop_subjects(heldout=False)),
                  "two_hop_subjects_heldout": len(world.two_hop_subjects(heldout=True)),
                  "domain_facts": len(world.domain_facts()),
                  "heldout_operand_pairs": len(heldout.pairs), "heldout_word_problems": len(heldout.word_problems)},
        "files": {name: {**file_stats(records), "bytes": (out / name).stat().st_size}
                  for name, records in files.items()},
        "eval_categories": _category_counts(files["eval.jsonl"]),
        "reason_eval_categories": _category_counts(files["reason_eval.jsonl"]),
    }
    (out / "stats.json").write_text(json.dumps(stats, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    (out / "README.md").write_text(render_readme(stats, world), encoding="utf-8")
    return stats


def _category_counts(rows: list[dict]) -> dict:
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        by_lang = counts.setdefault(row["category"], {lang: 0 for lang in LANGS})
        by_lang[row["lang"]] += 1
    return counts


def render_readme(stats: dict, world: World) -> str:
    country = world.countries[0]
    town = next(t for t in world.towns if world.taught(t) and t.country.capital is not t)
    person = next(p for p in world.people if world.taught(p))
    examples = [answer_sentence(f, lang) for lang in LANGS
                for f in facts_of(country)[:1] + facts_of(town)[:2] + facts_of(person)[:2]]
    lines = [
        "# MiniMind demo corpus",
        "",
        f"Generated by `python scripts/make_demo_data.py --seed {stats['seed']} --scale {stats['scale']}` "
        "(deterministic: the same seed gives the same bytes). Everything here is fictional.",
        "",
        "| file | rows | characters | ≈ tokens | bytes | what |",
        "|---|---:|---:|---:|---:|---|",
        *[f"| {name} | {s['rows']:,} | {s['chars']:,} | {s['approx_tokens']:,} | {s['bytes']:,} | "
          f"{FILE_DESCRIPTIONS[name]} |" for name, s in stats["files"].items()],
        "",
        "Characters and tokens count the text a model reads (message contents, not JSON, no chat template). "
        "Tokens are a rough guide at 1.4 Chinese or 3.7 other characters per token; the invented names split "
        "into more pieces, so a tokenizer trained on real text can count up to about 1.6 times as many.",
        "",
        "## The world",
        "",
        ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in stats["world"].items()) + ".",
        "",
        "Examples: " + " ".join(examples),
        "",
        "## Held-out evaluation",
        "",
        "`eval.jsonl` rows: `{id, category, lang, question, answer, aliases}`; score replies with "
        "`from demo import is_correct, score`.",
        "",
        "| category | en | zh | what it measures |",
        "|---|---:|---:|---|",
        *[f"| {c} | {n['en']} | {n['zh']} | {CATEGORY_DESCRIPTIONS[c]} |" for c, n in stats["eval_categories"].items()],
        "",
    ]
    return "\n".join(lines)


CATEGORY_DESCRIPTIONS = {
    "fact_new_phrasing": "facts taught in SFT, asked with question templates no training file uses",
    "fact_pretrain_only": "facts only pretraining states (SFT never asks about these towns and people)",
    "two_hop": "hometown -> country/river/product, town -> country -> capital/language/currency, for subjects "
               "never asked a two-hop question",
    "arithmetic": "operand pairs that never stand next to each other in training text",
    "word_problem": "held-out names and number triples",
    "identity": "new phrasings of who the assistant is (after the identity LoRA)",
    "domain": "new phrasings of the herbal facts (after the domain LoRA)",
}
