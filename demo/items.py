"""Items: one question with everything each file needs: the reply (SFT, DPO chosen), a confident wrong reply
(DPO rejected), worked steps (reasoning), and the short answer that is_correct looks for. Builders for fact,
two-hop, arithmetic, word-problem and identity questions.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from model.reasoning import format_reply

from .phrasings import (COLUMN, EQUATION, IDENTITY, IDENTITY_SENTENCE, OTHER_LANG, PLACES, RELATIONS,
                        SENTENCE_JOIN, SO_THE_ANSWER_IS, TWO_HOP, WORD_PROBLEMS)
from .world import COLOURS, PETS, PRODUCTS, PROFESSIONS, Fact, Name, World, kind_of


@dataclass
class Item:
    lang: str
    question: str
    reply: str
    answer: str
    aliases: list
    wrong_reply: str = ""
    think: list = field(default_factory=list)
    final: str = ""  # the <answer> block of a reasoning reply; the reply itself when empty
    calls: list = field(default_factory=list)  # [(tool, arguments)]: the tool calls that answer it, in order

    def strings(self) -> list[str]:
        """Every text a training file can take from this item."""
        return [self.question, self.reply, self.wrong_reply, reasoning_reply(self)]


def reasoning_reply(item: Item) -> str:
    return format_reply("\n".join(item.think), item.final or item.reply)


def surface(x, lang: str) -> str:
    if isinstance(x, int):
        return str(x)
    return x[lang] if isinstance(x, Name) else x.name[lang]


def answer_forms(obj, lang: str) -> tuple[str, list]:
    """The answer in the question's language; the other language and spelling variants as aliases."""
    if isinstance(obj, int):
        return str(obj), []
    name = obj if isinstance(obj, Name) else obj.name
    return name[lang], [name[OTHER_LANG[lang]], *name.aliases]


def value_pool(world: World, relation: str):
    """Values a relation can take: where DPO draws its confident wrong answers."""
    return {"town.country": world.countries, "town.river": world.rivers, "town.product": PRODUCTS,
            "person.hometown": world.towns, "person.profession": PROFESSIONS, "person.colour": COLOURS,
            "person.pet": PETS, "country.capital": [c.capital for c in world.countries],
            "country.language": [c.language for c in world.countries],
            "country.currency": [c.currency for c in world.countries]}.get(relation)


def wrong_value(rng: random.Random, world: World, relation: str, value):
    if isinstance(value, int):
        return value + rng.choice((-1, 1)) * rng.randint(3, 150)
    pool = value_pool(world, relation)
    return rng.choice([v for v in pool if v is not value]) if pool else None


def state(rng: random.Random, fact: Fact, lang: str) -> str:
    template = rng.choice(RELATIONS[fact.relation][lang]["state"])
    return template.format(s=surface(fact.subject, lang), o=surface(fact.obj, lang))


def answer_sentence(fact: Fact, lang: str, obj=None) -> str:
    obj = fact.obj if obj is None else obj
    return RELATIONS[fact.relation][lang]["answer"].format(s=surface(fact.subject, lang), o=surface(obj, lang))


def fact_item(rng: random.Random, world: World, fact: Fact, lang: str, template: str) -> Item:
    answer, aliases = answer_forms(fact.obj, lang)
    wrong = wrong_value(rng, world, fact.relation, fact.obj)
    return Item(lang, template.format(s=surface(fact.subject, lang)), answer_sentence(fact, lang), answer, aliases,
                wrong_reply=answer_sentence(fact, lang, wrong) if wrong is not None else "",
                calls=[("lookup", {"name": surface(fact.subject, lang)})])


def two_hop_item(rng: random.Random, world: World, relation: str, subject, lang: str, template: str) -> Item:
    (attr1, attr2), _ = TWO_HOP[relation]
    middle = getattr(subject, attr1)
    hop1 = Fact(f"{kind_of(subject)}.{attr1}", subject, middle)
    hop2 = Fact(f"{kind_of(middle)}.{attr2}", middle, getattr(middle, attr2))
    answer, aliases = answer_forms(hop2.obj, lang)
    join = SENTENCE_JOIN[lang]
    wrong = wrong_value(rng, world, hop2.relation, hop2.obj)
    return Item(lang, template.format(s=surface(subject, lang)),
                join.join([answer_sentence(hop1, lang), answer_sentence(hop2, lang)]), answer, aliases,
                wrong_reply=join.join([answer_sentence(hop1, lang), answer_sentence(hop2, lang, wrong)]),
                think=[state(rng, hop1, lang), state(rng, hop2, lang),
                       SO_THE_ANSWER_IS[lang].format(o=surface(hop2.obj, lang))],
                calls=[("lookup", {"name": surface(subject, lang)}), ("lookup", {"name": surface(middle, lang)})])


# ---- arithmetic ----
def compute(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def sample_operands(rng: random.Random, op: str) -> tuple[int, int]:
    """Two- and three-digit addition and subtraction, two-digit by one-digit multiplication. The result
    never equals an operand, so echoing the question never scores."""
    while True:
        if op == "×":
            # From 21: the worked steps of column arithmetic are full of "16, write 6"; a held-out 16 × 6
            # would collide with them. Not a multiple of 10: "split into tens and ones" needs both.
            a, b = rng.randint(21, 99), rng.randint(2, 9)
            if a % 10:
                return a, b
            continue
        a, b = (rng.randint(10, 99) if rng.random() < 0.5 else rng.randint(100, 999) for _ in range(2))
        if op == "-":
            a, b = max(a, b), min(a, b)
        if a != b and compute(op, a, b) not in (a, b):
            return a, b


def column_steps(op: str, a: int, b: int, lang: str) -> list[str]:
    """Written-out steps: column addition with carries, column subtraction with borrows, or splitting
    the two-digit factor into tens and ones."""
    t, c = COLUMN[lang], compute(op, a, b)
    if op == "×":
        tens, ones = a // 10 * 10, a % 10
        steps = ((tens, "×", b, tens * b), (ones, "×", b, ones * b), (tens * b, "+", ones * b, c))
        lines = [t["mul_split"].format(a=a, t=tens, u=ones)]
        lines += [EQUATION[lang].format(a=x, op=o, b=y, c=z) for x, o, y, z in steps]
    elif op == "+":
        lines, carry = [t["add_intro"].format(a=a, b=b)], 0
        for i in range(len(str(max(a, b)))):
            da, db = a // 10 ** i % 10, b // 10 ** i % 10
            total = da + db + carry
            terms = f"{da} + {db}" + (" + 1" if carry else "")
            carry = total // 10
            lines.append(t["add_step"][carry].format(pos=PLACES[lang][i], terms=terms, total=total, digit=total % 10))
        if carry:
            lines.append(t["final_carry"])
    else:
        lines, borrow = [t["sub_intro"].format(a=a, b=b)], 0
        for i in range(len(str(a))):
            da, db = a // 10 ** i % 10, b // 10 ** i % 10
            top = da - borrow
            parts = [t["lent"].format(d=da, top=top)] if borrow else []
            borrow = int(top < db)
            if borrow:
                parts.append(t["borrow"].format(top=top, e=db, big=top + 10, r=top + 10 - db))
            else:
                parts.append(t["plain"].format(top=top, e=db, r=top - db))
            lines.append(t["sub_line"].format(pos=PLACES[lang][i], parts=t["part_join"].join(parts)))
    return lines + [t["conclude"].format(a=a, op=op, b=b, c=c)]


def arithmetic_item(rng: random.Random, op: str, a: int, b: int, lang: str, template: str) -> Item:
    c = compute(op, a, b)
    wrong = c + rng.choice((-1, 1)) * rng.choice((1, 2, 10, 11, 100))
    if wrong < 0:
        wrong = c + 10
    return Item(lang, template.format(a=a, b=b), EQUATION[lang].format(a=a, op=op, b=b, c=c), str(c), [],
                wrong_reply=EQUATION[lang].format(a=a, op=op, b=b, c=wrong), think=column_steps(op, a, b, lang),
                calls=[("calculator", {"expression": f"{a} {op} {b}"})])


# ---- word problems ----
WORD_PROBLEM_MATH = {  # frame -> (ranges of a, b, c; solve -> (first step, result); one calculator expression)
    "buy_give": (((5, 60), (2, 40), (2, 30)), lambda a, b, c: (a + b, a + b - c), "{a} + {b} - {c}"),
    "sell_twice": (((30, 99), (2, 25), (2, 25)), lambda a, b, c: (a - b, a - b - c), "{a} - {b} - {c}"),
    "three_days": (((2, 40), (2, 40), (2, 40)), lambda a, b, c: (a + b, a + b + c), "{a} + {b} + {c}"),
    "boxes": (((2, 9), (3, 12), (1, 20)), lambda a, b, c: (a * b, a * b + c), "{a} × {b} + {c}"),
}


@dataclass(frozen=True)
class WordProblem:
    frame: str
    name: Name
    item: tuple  # an ITEMS row
    numbers: tuple  # (a, b, c)


def sample_word_problem_numbers(rng: random.Random, frame: str) -> tuple:
    ranges, solve, _ = WORD_PROBLEM_MATH[frame]
    while True:
        numbers = tuple(rng.randint(lo, hi) for lo, hi in ranges)
        result = solve(*numbers)[1]
        if result > 0 and result not in numbers:  # the answer never appears in the question
            return numbers


def word_problem_item(rng: random.Random, problem: WordProblem, lang: str) -> Item:
    a, b, c = problem.numbers
    x1, x2 = WORD_PROBLEM_MATH[problem.frame][1](a, b, c)
    items_en, item_zh, measure = problem.item
    fields = dict(n=problem.name[lang], a=a, b=b, c=c, x1=x1, items=items_en, item=item_zh, m=measure)
    t = WORD_PROBLEMS[problem.frame][lang]
    steps = [s.format(**fields, x2=x2) for s in t["steps"]]
    final = t["answer"].format(**fields, x2=x2)
    wrong = x2 + rng.choice((-1, 1) if x2 > 5 else (1,)) * rng.randint(1, 5)
    wrong_steps = [s.format(**fields, x2=wrong) for s in t["steps"]]
    join = SENTENCE_JOIN[lang]
    return Item(lang, t["q"].format(**fields), join.join(steps + [final]), str(x2), [],
                wrong_reply=join.join(wrong_steps + [t["answer"].format(**fields, x2=wrong)]),
                think=steps + [SO_THE_ANSWER_IS[lang].format(o=x2)], final=final,
                calls=[("calculator", {"expression": WORD_PROBLEM_MATH[problem.frame][2].format(a=a, b=b, c=c)})])


# ---- identity and the herbal domain (LoRA sets) ----
def with_opener(opener: str, question: str) -> str:
    if opener.endswith(", "):
        question = question[0].lower() + question[1:]  # "Hello, who are you?"
    return opener + question


def identity_item(intent: str, lang: str, question: str) -> Item:
    reply = IDENTITY[intent][lang][2].format(id=IDENTITY_SENTENCE[lang])
    return Item(lang, question, reply, "MiniMind", [])
