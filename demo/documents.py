"""Pretraining documents: paragraphs about every town, person, country and river (encyclopedia entries,
stories, dialogues), arithmetic pages and worked word problems.
"""
from __future__ import annotations

import random

from .heldout import HeldOut, TrainingItems
from .items import compute, sample_operands, state, surface
from .phrasings import (ARITHMETIC, ARITHMETIC_PAGE_TITLES, DIALOGUE_ASK, DIALOGUE_REPLY, FLAVOUR, LANGS, RELATIONS,
                        RIVER_TOWNS, SENTENCE_JOIN, SPEAKERS, STORY_FRAME, WORD_PROBLEM_PAGE)
from .world import Fact, Name, World, facts_of, kind_of

PRETRAIN_DOCS = {  # documents per entity (both languages together) or in total, at scale 1.0
    "town": 30, "person": 30, "country": 30, "river": 10, "arithmetic_pages": 2200, "word_problem_pages": 1300,
}
STYLE_WEIGHTS = {"encyclopedia": 3, "story": 1, "dialogue": 1}


def _sentences_to_length(rng, facts_part: list[str], flavour: list[str], lang: str, target: int) -> list[str]:
    """Mixes fact sentences with flavour sentences (in random places) until the paragraph reaches about
    `target` characters."""
    sentences, extra = list(facts_part), rng.sample(flavour, len(flavour))
    while extra and len(SENTENCE_JOIN[lang].join(sentences)) < target:
        sentences.insert(rng.randint(1, len(sentences)), extra.pop())
    return sentences


MAX_DOC_CHARS = 500


def _doc_target(rng, lang: str) -> int:
    # Paragraphs of roughly 100-450 characters, like the published pretraining lines (< 512); Chinese packs
    # more per character, and fewer filler sentences keep the facts dense.
    return rng.randint(150, 400) if lang == "en" else rng.randint(100, 200)


def entity_document(rng: random.Random, entity, lang: str, style: str) -> str:
    """A paragraph about one entity: encyclopedia style (all its facts), a short story (some facts), or a
    dialogue. Each document states only the entity's own facts, never a fact of the town or country it
    mentions, so no document spells out a two-hop chain."""
    kind, name = kind_of(entity), surface(entity, lang)
    facts = facts_of(entity)
    rng.shuffle(facts)
    flavour = [f.format(s=name) for f in FLAVOUR[kind][lang]]
    if style == "dialogue":
        ask, answer = SPEAKERS[lang]
        lines, n_facts = [], rng.randint(2, len(facts))
        for k, fact in enumerate(facts):
            if k >= n_facts and len("\n".join(lines)) >= 100:
                break
            clause = RELATIONS[fact.relation][lang]["clause"].format(s=surface(fact.subject, lang))
            lines.append(ask + rng.choice(DIALOGUE_ASK[lang]).format(c=clause))
            lines.append(answer + rng.choice(DIALOGUE_REPLY[lang]) + state(rng, fact, lang))
        return "\n".join(lines)
    if style == "story":
        openers, closers = STORY_FRAME[kind][lang]
        body = _sentences_to_length(rng, [state(rng, f, lang) for f in facts[:rng.randint(2, len(facts))]],
                                    flavour, lang, _doc_target(rng, lang) - 40)
        return SENTENCE_JOIN[lang].join([rng.choice(openers).format(s=name), *body,
                                         rng.choice(closers).format(s=name)])
    body = _sentences_to_length(rng, [state(rng, f, lang) for f in facts], flavour, lang, _doc_target(rng, lang))
    return SENTENCE_JOIN[lang].join(body)


def _list_words(words: list[str], lang: str) -> str:
    if len(words) == 1:
        return words[0]
    return (", " if lang == "en" else "、").join(words[:-1]) + (" and " if lang == "en" else "和") + words[-1]


def river_document(rng: random.Random, world: World, river: Name, lang: str) -> str:
    towns = [t for t in world.towns if t.river is river]
    rng.shuffle(towns)
    sentences = [RIVER_TOWNS[lang].format(r=river[lang], towns=_list_words([t.name[lang] for t in towns], lang))]
    sentences += [state(rng, Fact("town.river", t, river), lang) for t in towns[:rng.randint(0, 2)]]
    flavour = [f.format(s=river[lang]) for f in FLAVOUR["river"][lang]]
    return SENTENCE_JOIN[lang].join(_sentences_to_length(rng, sentences, flavour, lang, _doc_target(rng, lang)))


def arithmetic_page(rng: random.Random, heldout: HeldOut, lang: str) -> str:
    sentences, target = [rng.choice(ARITHMETIC_PAGE_TITLES[lang])], _doc_target(rng, lang)
    while len(SENTENCE_JOIN[lang].join(sentences)) < target:
        op = rng.choices(list(ARITHMETIC), weights=(2, 2, 1))[0]
        a, b = sample_operands(rng, op)
        sentence = rng.choice(ARITHMETIC[op][lang]["state"]).format(a=a, b=b, c=compute(op, a, b))
        if heldout.allows(sentence):  # numbers are never adjacent across a sentence end
            sentences.append(sentence)
    return SENTENCE_JOIN[lang].join(sentences)


def word_problem_page(source: TrainingItems, lang: str) -> str:
    prefixes, solution = WORD_PROBLEM_PAGE[lang]
    problems = []
    while not problems or (len(problems) < 3 and source.rng.random() < 0.5):
        item = source.word_problem(lang)
        problem = source.rng.choice(prefixes) + item.question + solution + item.reply
        if len("\n".join(problems + [problem])) > MAX_DOC_CHARS:
            break
        problems.append(problem)
    return "\n".join(problems)


def pretrain_documents(rng: random.Random, world: World, heldout: HeldOut, scale: float) -> list[str]:
    """Paragraphs about every town, person, country and river (each the same number of times), arithmetic
    pages and worked word problems, shuffled."""
    docs = []
    styles, weights = list(STYLE_WEIGHTS), list(STYLE_WEIGHTS.values())
    for kind, entities in (("town", world.towns), ("person", world.people), ("country", world.countries),
                           ("river", world.rivers)):
        order = rng.sample(entities, len(entities))
        # Cycle through the entities so each gets the same number of documents, alternating languages.
        for k in range(round(len(entities) * PRETRAIN_DOCS[kind] * scale)):
            i, rounds = k % len(order), k // len(order)
            lang = LANGS[(rounds + i) % 2]
            if kind == "river":
                docs.append(river_document(rng, world, order[i], lang))
            else:
                docs.append(entity_document(rng, order[i], lang, rng.choices(styles, weights)[0]))
    for k in range(round(PRETRAIN_DOCS["arithmetic_pages"] * scale)):
        docs.append(arithmetic_page(rng, heldout, LANGS[k % 2]))
    source = TrainingItems(rng, world, heldout)
    for k in range(round(PRETRAIN_DOCS["word_problem_pages"] * scale)):
        docs.append(word_problem_page(source, LANGS[k % 2]))
    rng.shuffle(docs)
    return docs
