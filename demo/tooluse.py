"""The tool-use files: chats that call the demo's tools, and prompts for agentic RL.

  sft_tools.jsonl          tool-use SFT. The system turn offers the three tools of demo/tools.py (in minimind's
                           jsonl: "tools" and "tool_calls" as JSON strings), and the user asks one to three
                           questions. Arithmetic and word problems call the calculator, fact questions call lookup
                           (two-hop questions call it twice, the second time with a name the first result gave),
                           unit questions call convert, small talk calls nothing; plain chats without tools keep
                           the chat skills.
  agent_prompts.jsonl      RL prompts with the tools and the answer to check (all need a tool).
  agent_prompts_val.jsonl  held-out: unseen operand pairs and word problems, facts that only pretraining states,
                           two-hop subjects never asked in training, and small talk in new phrasings, which needs
                           no tool. Rows carry "category" and "needs_tool".

Every tool response in the files is what the tool really returns (`run_call`), so training shows the model
exactly what it will read at run time.
"""
from __future__ import annotations

import json
import random

from model.toolcall import ToolCall
from model.tools import run_call

from .phrasings import CHITCHAT, CHITCHAT_HELDOUT, CONVERT_ANSWER, CONVERT_ASK, LANGS, SYSTEM_PROMPTS, UNIT_WORDS
from .tools import demo_tools

SFT_TOOLS_ROWS = 2_000  # conversations; each asks 1-3 questions, so the long tool listing is read once per several
SFT_TOOLS_MIX = {"tools": 0.85, "plain": 0.15}  # plain: no tools on offer, answered as plain SFT does
EXCHANGE_MIX = {"arithmetic": 0.3, "word_problem": 0.25, "fact": 0.15, "two_hop": 0.1, "convert": 0.05,
                "chitchat": 0.15}
AGENT_ROWS = 1_000
AGENT_MIX = {"arithmetic": 0.35, "word_problem": 0.35, "fact": 0.2, "two_hop": 0.1}
AGENT_VAL_MIX = {"arithmetic": 40, "word_problem": 40, "fact_pretrain_only": 30, "two_hop": 20, "chitchat": 20}
CONVERSIONS = [("km", "m"), ("m", "cm"), ("kg", "g"), ("hour", "minute"), ("minute", "second"), ("day", "hour")]


class ToolChats:
    """Builds tool-use conversations with the demo tools of one world."""

    def __init__(self, seed: int):
        self.tools = {t.name: t for t in demo_tools(seed)}
        self.tools_json = json.dumps([t.schema() for t in self.tools.values()], ensure_ascii=False)

    def system(self, rng: random.Random, lang: str) -> dict:
        return {"role": "system", "content": rng.choice(SYSTEM_PROMPTS[lang]), "tools": self.tools_json}

    def call_turns(self, calls, final: str) -> list[dict]:
        """assistant(tool_calls) / tool(result) pairs for each call, then the final reply."""
        messages = []
        for name, arguments in calls:
            result = run_call(self.tools, ToolCall(name, arguments))
            messages += [{"role": "assistant", "content": "",
                          "tool_calls": json.dumps([{"name": name, "arguments": arguments}], ensure_ascii=False)},
                         {"role": "tool", "content": result}]
        return messages + [{"role": "assistant", "content": final}]

    def exchange(self, rng: random.Random, item) -> list[dict]:
        """An item (demo/items.py) asked and answered through its tool calls."""
        return [{"role": "user", "content": item.question}, *self.call_turns(item.calls, item.final or item.reply)]

    def convert_exchange(self, rng: random.Random, lang: str, heldout) -> list[dict]:
        while True:  # until no held-out operand pair stands in it ("2.4 days is 57.6 hour")
            frm, to = rng.choice(CONVERSIONS)
            value = rng.randint(2, 99) if rng.random() < 0.7 else rng.randint(11, 99) / 10
            words = {"v": value, "frm": UNIT_WORDS[frm][lang], "to": UNIT_WORDS[to][lang]}
            arguments = {"value": value, "from_unit": frm, "to_unit": to}
            result = run_call(self.tools, ToolCall("convert", arguments))
            question = rng.choice(CONVERT_ASK[lang]).format(**words)
            answer = CONVERT_ANSWER[lang].format(**words, r=result)
            if all(map(heldout.allows, (question, answer, result))):
                return [{"role": "user", "content": question}, *self.call_turns([("convert", arguments)], answer)]

    @staticmethod
    def chitchat_exchange(rng: random.Random, lang: str) -> list[dict]:
        question, reply = rng.choice(CHITCHAT[lang])
        return [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]

    def prompt(self, rng: random.Random, lang: str, question: str) -> list[dict]:
        return [self.system(rng, lang), {"role": "user", "content": question}]


def usable(item, heldout) -> bool:
    """An item whose call arguments keep clear of the held-out operand pairs (a word problem's expression puts
    its numbers closer together than its question does)."""
    return all(heldout.allows(str(v)) for _, arguments in item.calls for v in arguments.values())


def draw(source, kind: str, heldout, lang: str | None = None):
    while True:
        item = getattr(source, kind)(lang=lang)
        if usable(item, heldout):
            return item


def sft_tool_conversations(rng: random.Random, chats: ToolChats, source, plain_source, heldout, counts: dict) -> list:
    """`counts`: conversations per SFT_TOOLS_MIX kind. A tool conversation asks 1-3 questions in one language,
    each of an EXCHANGE_MIX kind; a plain one asks one question with no tools on offer."""
    kinds, weights = zip(*EXCHANGE_MIX.items())
    convs = []
    for _ in range(counts["plain"]):
        item = getattr(plain_source, rng.choice(["fact", "arithmetic", "word_problem"]))()
        convs.append({"conversations": [{"role": "user", "content": item.question},
                                        {"role": "assistant", "content": item.reply}]})
    for _ in range(counts["tools"]):
        lang = rng.choice(LANGS)
        messages = [chats.system(rng, lang)]
        for kind in rng.choices(kinds, weights, k=rng.choice((1, 2, 3))):
            if kind == "convert":
                messages += chats.convert_exchange(rng, lang, heldout)
            elif kind == "chitchat":
                messages += chats.chitchat_exchange(rng, lang)
            else:
                messages += chats.exchange(rng, draw(source, kind, heldout, lang))
        convs.append({"conversations": messages})
    rng.shuffle(convs)
    return convs


def agent_rows(rng: random.Random, chats: ToolChats, source, heldout, counts: dict) -> list:
    """`counts`: rows per AGENT_MIX kind."""
    rows = []
    for kind, count in counts.items():
        for _ in range(count):
            item = draw(source, kind, heldout)
            rows.append({"conversations": chats.prompt(rng, item.lang, item.question), "answer": item.answer,
                         "category": kind})
    rng.shuffle(rows)
    return rows


def agent_val_rows(rng: random.Random, chats: ToolChats, candidates: dict) -> list:
    """Held-out prompts, alternating languages; small talk has no answer to check, only whether a tool was called."""
    rows, questions = [], set()
    for category, count in AGENT_VAL_MIX.items():
        for k in range(count):
            lang = LANGS[k % 2]
            if category == "chitchat":
                question = CHITCHAT_HELDOUT[lang][k // 2 % len(CHITCHAT_HELDOUT[lang])]
                rows.append({"conversations": chats.prompt(rng, lang, question), "answer": "",
                             "category": category, "needs_tool": False})
                continue
            groups = candidates[category][lang]
            while True:
                item = rng.choice(groups[rng.choice(sorted(groups))])
                if item.question not in questions:
                    break
            questions.add(item.question)
            rows.append({"conversations": chats.prompt(rng, lang, item.question), "answer": item.answer,
                         "aliases": item.aliases, "category": category, "needs_tool": True})
    rng.shuffle(rows)
    return rows
