"""Held-out material, chosen before any training text is written: arithmetic operand pairs and word problems
that only evaluation asks, and every held-out question by category (`heldout_candidates`). `TrainingItems`
is the other side of the split: the question source of every training file, which stays clear of it.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from model.rewards import answer_pattern, normalize

from .items import (Item, WordProblem, answer_sentence, arithmetic_item, fact_item, identity_item, sample_operands,
                    sample_word_problem_numbers, two_hop_item, with_opener, word_problem_item)
from .leaks import adjacent_number_pairs, pair_key
from .phrasings import ARITHMETIC, IDENTITY, IDENTITY_OPENERS, LANGS, RELATIONS, TWO_HOP, WORD_PROBLEMS
from .world import FACT_ATTRS, ITEMS, World, facts_of, kind_of, rng_for

# Held-out sizes: fixed, so that scores compare across --scale.
N_HELDOUT_OPERATIONS = {"+": 160, "-": 160, "×": 80}
N_HELDOUT_WORD_PROBLEMS = 240
EVAL_CATEGORIES = ["fact_new_phrasing", "fact_pretrain_only", "two_hop", "arithmetic", "word_problem",
                   "identity", "domain"]


@dataclass
class HeldOut:
    operations: list         # (op, a, b) asked only in evaluation
    pairs: set               # their operands: never adjacent in any training text
    word_problems: list      # WordProblem with held-out names and number triples
    word_problem_keys: set   # (frame, a, b, c) that training never uses

    def allows(self, text: str) -> bool:
        return not any(p in self.pairs for p in adjacent_number_pairs(text))


def build_heldout(seed: int, world: World) -> HeldOut:
    rng = rng_for(seed, "heldout")
    operations, pairs = [], set()
    for op, n in N_HELDOUT_OPERATIONS.items():
        while sum(o[0] == op for o in operations) < n:
            a, b = sample_operands(rng, op)
            if pair_key(a, b) not in pairs:
                pairs.add(pair_key(a, b))
                operations.append((op, a, b))
    problems, keys = [], set()
    while len(problems) < N_HELDOUT_WORD_PROBLEMS:
        frame = list(WORD_PROBLEMS)[len(problems) % len(WORD_PROBLEMS)]
        numbers = sample_word_problem_numbers(rng, frame)
        if (frame, *numbers) not in keys:
            keys.add((frame, *numbers))
            problems.append(WordProblem(frame, rng.choice(world.heldout_characters), rng.choice(ITEMS), numbers))
    return HeldOut(operations, pairs, problems, keys)


class Cycler:
    """Hands out items in shuffled passes: every item is used once before any is used twice. `next()`
    also returns a counter that grows by one per pass, to rotate an item's phrasing between visits."""

    def __init__(self, rng: random.Random, items):
        self.rng, self.items, self.queue, self.passes = rng, list(items), [], -1
        assert self.items, "nothing to cycle over"

    def next(self):
        if not self.queue:
            self.queue = list(range(len(self.items)))
            self.rng.shuffle(self.queue)
            self.passes += 1
        index = self.queue.pop()
        return self.items[index], self.passes + index  # offset by index so items don't rotate in lockstep


class TrainingItems:
    """Question sources for every training file. Taught facts are cycled so each one appears in both
    languages with rotating phrasings; operands and word problems are fresh draws that avoid every
    held-out pair and triple; every string an item produces passes the held-out number guard."""

    def __init__(self, rng: random.Random, world: World, heldout: HeldOut):
        self.rng, self.world, self.heldout = rng, world, heldout
        self.facts = Cycler(rng, [(f, lang) for f in world.taught_facts() for lang in LANGS])
        self.entities = Cycler(rng, [(e, lang) for e in world.countries + world.towns + world.people
                                     if world.taught(e) for lang in LANGS])
        self.two_hops = Cycler(rng, [(relation, subject, lang) for subject in world.two_hop_subjects(heldout=False)
                                     for relation in TWO_HOP if relation.startswith(kind_of(subject) + ".")
                                     for lang in LANGS])

    def _guarded(self, make) -> Item:
        for _ in range(1000):
            item = make()
            if all(self.heldout.allows(s) for s in item.strings()):
                return item
        raise RuntimeError("could not avoid the held-out operands")

    def fact(self, lang: str | None = None) -> Item:
        while True:  # the next taught fact, in `lang` when given
            (fact, fact_lang), turn = self.facts.next()
            if lang in (None, fact_lang):
                break
        lang = fact_lang
        templates = RELATIONS[fact.relation][lang]["train"]
        return self._guarded(lambda: fact_item(self.rng, self.world, fact, lang, templates[turn % len(templates)]))

    def entity_facts(self, k: int) -> list[Item]:
        """k questions about one entity, in one language: a multi-turn conversation."""
        (entity, lang), _ = self.entities.next()
        facts = self.rng.sample(facts_of(entity), min(k, len(FACT_ATTRS[kind_of(entity)])))
        return [self._guarded(lambda f=f: fact_item(self.rng, self.world, f, lang,
                                                    self.rng.choice(RELATIONS[f.relation][lang]["train"])))
                for f in facts]

    def two_hop(self, lang: str | None = None) -> Item:
        while True:
            (relation, subject, hop_lang), turn = self.two_hops.next()
            if lang in (None, hop_lang):
                break
        lang = hop_lang
        templates = TWO_HOP[relation][1][lang]
        return self._guarded(lambda: two_hop_item(self.rng, self.world, relation, subject, lang,
                                                  templates[turn % len(templates)]))

    def arithmetic(self, lang: str | None = None) -> Item:
        def make():
            op = self.rng.choices(list(ARITHMETIC), weights=(2, 2, 1))[0]
            while True:
                a, b = sample_operands(self.rng, op)
                if pair_key(a, b) not in self.heldout.pairs:
                    break
            item_lang = lang or self.rng.choice(LANGS)
            return arithmetic_item(self.rng, op, a, b, item_lang, self.rng.choice(ARITHMETIC[op][item_lang]["ask"]))
        return self._guarded(make)

    def word_problem(self, lang: str | None = None) -> Item:
        def make():
            frame = self.rng.choice(list(WORD_PROBLEMS))
            while True:
                numbers = sample_word_problem_numbers(self.rng, frame)
                if (frame, *numbers) not in self.heldout.word_problem_keys:
                    break
            problem = WordProblem(frame, self.rng.choice(self.world.characters), self.rng.choice(ITEMS), numbers)
            return word_problem_item(self.rng, problem, lang or self.rng.choice(LANGS))
        return self._guarded(make)

    def another_answer(self, kind: str, item: Item) -> str:
        """The right reply to a different question of the same kind and language: a true answer to the wrong
        question (another town's river, another sum), the mix-up a small SFT model makes most."""
        while True:
            reply = getattr(self, kind)(lang=item.lang).reply
            if reply != item.reply:
                return reply

    def statement(self, lang: str, avoid: str) -> str:
        """A true sentence about some other taught fact: an off-topic reply for DPO."""
        while True:
            fact, _ = self.rng.choice(self.facts.items)
            sentence = answer_sentence(fact, lang)
            if sentence != avoid:
                return sentence


def heldout_candidates(seed: int, world: World, heldout: HeldOut) -> dict:
    """Every held-out question: {category: {lang: {group: [Item]}}}. Groups (relation, operator, frame,
    intent) let the evaluation set take an equal share of each."""
    rng = rng_for(seed, "heldout-items")
    out = {c: {lang: {} for lang in LANGS} for c in EVAL_CATEGORIES}

    def add(category, lang, group, item):
        question = normalize(item.question)
        # Echoing the question must never score.
        if not any(answer_pattern(a).search(question) for a in [item.answer, *item.aliases]):
            out[category][lang].setdefault(group, []).append(item)

    for lang in LANGS:
        for fact in world.taught_facts():
            for template in RELATIONS[fact.relation][lang]["eval"]:
                add("fact_new_phrasing", lang, fact.relation, fact_item(rng, world, fact, lang, template))
        for fact in world.pretrain_only_facts():
            for template in RELATIONS[fact.relation][lang]["train"]:
                add("fact_pretrain_only", lang, fact.relation, fact_item(rng, world, fact, lang, template))
        for subject in world.two_hop_subjects(heldout=True):
            for relation, (_, templates) in TWO_HOP.items():
                if relation.startswith(kind_of(subject) + "."):
                    for template in templates[lang]:
                        add("two_hop", lang, relation, two_hop_item(rng, world, relation, subject, lang, template))
        for op, a, b in heldout.operations:
            for template in ARITHMETIC[op][lang]["ask"]:
                # Held-out questions end in a question mark (see find_leaks) and do not start with a number:
                # "90和35的和是多少？" is a substring of the training question "190和35的和是多少？".
                if template[-1] in "?？" and not template.startswith("{"):
                    add("arithmetic", lang, op, arithmetic_item(rng, op, a, b, lang, template))
        for problem in heldout.word_problems:
            add("word_problem", lang, problem.frame, word_problem_item(rng, problem, lang))
        for intent, by_lang in IDENTITY.items():
            for question in by_lang[lang][1]:
                for opener in IDENTITY_OPENERS[lang]:
                    add("identity", lang, intent, identity_item(intent, lang, with_opener(opener, question)))
        for fact in world.domain_facts():
            for template in RELATIONS[fact.relation][lang]["eval"]:
                add("domain", lang, fact.relation, fact_item(rng, world, fact, lang, template))
    return out


def take_balanced(rng: random.Random, groups: dict, n: int) -> list[Item]:
    """n items with distinct questions, taken round-robin over the groups so each gets an equal share."""
    pools = [rng.sample(items, len(items)) for _, items in sorted(groups.items())]
    chosen, questions = [], set()
    while len(chosen) < n and any(pools):
        for pool in pools:
            while pool and len(chosen) < n:
                item = pool.pop()
                if item.question not in questions:
                    questions.add(item.question)
                    chosen.append(item)
                    break
    return chosen


def eval_row(item: Item, category: str, row_id: str) -> dict:
    return {"id": row_id, "category": category, "lang": item.lang, "question": item.question,
            "answer": item.answer, "aliases": item.aliases}
