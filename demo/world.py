"""The fictional world: a bilingual vocabulary, names built from syllables, the countries, towns, rivers,
people and herbs, the facts that link them, and which of them SFT teaches. `build_world(seed)` always builds
the same world for the same seed.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from model.rewards import mentions


# Vocabulary: every word exists in English and Chinese.
@dataclass(frozen=True)
class Name:
    en: str
    zh: str
    aliases: tuple = ()  # other accepted spellings when scoring (singular forms, "gray" for "grey")

    def __getitem__(self, lang: str) -> str:
        return self.en if lang == "en" else self.zh


def _vocab(*rows) -> list[Name]:
    return [Name(en, zh, tuple(aliases)) for en, zh, *aliases in rows]


PRODUCTS = _vocab(
    ("honey cakes", "蜂蜜饼"), ("woollen blankets", "羊毛毯"), ("copper kettles", "铜水壶"),
    ("goat cheese", "山羊奶酪"), ("apple cider", "苹果酒"), ("glass beads", "玻璃珠"), ("silk scarves", "丝巾"),
    ("clay pots", "陶罐"), ("smoked fish", "熏鱼"), ("walnut bread", "核桃面包"), ("paper lanterns", "纸灯笼"),
    ("leather boots", "皮靴"), ("pear jam", "梨子酱"), ("wooden toys", "木头玩具"), ("sea salt", "海盐"),
    ("plum wine", "梅子酒"), ("straw hats", "草帽"), ("rose soap", "玫瑰香皂"), ("almond biscuits", "杏仁饼干"),
    ("dried figs", "无花果干"), ("felt slippers", "毡拖鞋"), ("carved spoons", "木雕勺"),
    ("chestnut flour", "栗子粉"), ("pickled onions", "腌洋葱"),
)
PROFESSIONS = _vocab(  # all start with a consonant, so English templates can say "a {o}"
    ("baker", "面包师"), ("fisher", "渔夫"), ("potter", "陶工"), ("weaver", "织布工"), ("blacksmith", "铁匠"),
    ("teacher", "教师"), ("doctor", "医生"), ("carpenter", "木匠"), ("farmer", "农夫"), ("sailor", "水手"),
    ("painter", "画家"), ("tailor", "裁缝"), ("miller", "磨坊主"), ("musician", "乐师"),
    ("librarian", "图书管理员"), ("beekeeper", "养蜂人"), ("shepherd", "牧羊人"), ("gardener", "园丁"),
)
COLOURS = _vocab(
    ("red", "红色"), ("blue", "蓝色"), ("green", "绿色"), ("yellow", "黄色"), ("purple", "紫色"),
    ("orange", "橙色"), ("white", "白色"), ("grey", "灰色", "gray"), ("pink", "粉色"), ("brown", "棕色"),
)
PETS = _vocab(
    ("cat", "猫"), ("dog", "狗"), ("parrot", "鹦鹉"), ("rabbit", "兔子"), ("tortoise", "乌龟"),
    ("goldfish", "金鱼"), ("hamster", "仓鼠"), ("hedgehog", "刺猬"), ("canary", "金丝雀"), ("pony", "小马"),
)
# The closed domain for the second LoRA: the herbal medicine of the demo world. One herb per ailment,
# so "which herb helps with X?" has a single answer.
AILMENTS = _vocab(
    ("headaches", "头痛", "headache"), ("coughs", "咳嗽", "cough"), ("fevers", "发烧", "fever"),
    ("insomnia", "失眠"), ("stomach aches", "胃痛", "stomach ache"), ("sore throats", "喉咙痛", "sore throat"),
    ("toothaches", "牙痛", "toothache"), ("dizziness", "头晕"), ("back pain", "背痛"), ("tiredness", "疲劳"),
    ("rashes", "皮疹", "rash"), ("earaches", "耳朵痛", "earache"), ("nausea", "恶心"), ("chills", "发冷"),
    ("sneezing", "打喷嚏"), ("swollen feet", "脚肿"), ("nosebleeds", "流鼻血", "nosebleed"),
    ("hiccups", "打嗝"), ("cold hands", "手脚冰凉"), ("sunburn", "晒伤"),
)
PREPARATIONS = _vocab(
    ("as a tea", "泡茶喝"), ("as a powder stirred into water", "磨成粉用水冲服"),
    ("as an ointment on the skin", "做成药膏涂在皮肤上"), ("cooked in soup", "放进汤里煮着吃"),
    ("chewed fresh", "新鲜时直接嚼服"),
)
HABITATS = _vocab(
    ("on mountain slopes", "山坡上"), ("along riverbanks", "河岸边"), ("in marshes", "沼泽里"),
    ("in pine forests", "松树林里"), ("in open meadows", "草地上"), ("between rocks", "岩石缝里"),
)
DOSES = [Name(f"{g} grams", f"{g}克", (f"{g} g", f"{g}g")) for g in (3, 5, 6, 8, 10, 12, 15, 20)]
HERB_KINDS = _vocab(("root", "根"), ("leaf", "叶"), ("moss", "苔"), ("flower", "花"), ("bark", "皮"), ("seed", "籽"))
# Word-problem items: English plural, Chinese noun, Chinese measure word.
ITEMS = [
    ("apples", "苹果", "个"), ("pears", "梨", "个"), ("eggs", "鸡蛋", "个"), ("books", "书", "本"),
    ("pencils", "铅笔", "支"), ("marbles", "弹珠", "颗"), ("stickers", "贴纸", "张"), ("postcards", "明信片", "张"),
    ("shells", "贝壳", "个"), ("cookies", "饼干", "块"), ("stamps", "邮票", "枚"), ("candles", "蜡烛", "根"),
    ("flowers", "花", "朵"), ("balloons", "气球", "个"),
]

# Fictional names are built from syllables with a fixed syllable -> Chinese mapping, so every name has
# one consistent Chinese form (Tavek <-> 塔维克). Closed syllables end names with a fantasy sound that
# rarely spells a real place or English word.
OPEN_SYLLABLES = [
    ("ba", "巴"), ("bo", "波"), ("da", "达"), ("de", "德"), ("do", "多"), ("fe", "菲"), ("ga", "加"), ("go", "戈"),
    ("ka", "卡"), ("ke", "克"), ("ki", "基"), ("ko", "科"), ("la", "拉"), ("le", "莱"), ("li", "利"), ("lo", "洛"),
    ("ma", "玛"), ("me", "梅"), ("mi", "米"), ("mo", "莫"), ("na", "纳"), ("ne", "内"), ("ni", "尼"), ("no", "诺"),
    ("pa", "帕"), ("pe", "佩"), ("ri", "里"), ("ro", "罗"), ("sa", "萨"), ("se", "塞"), ("so", "索"), ("ta", "塔"),
    ("te", "泰"), ("ti", "蒂"), ("to", "托"), ("tu", "图"), ("va", "瓦"), ("ve", "维"), ("vi", "薇"), ("vo", "沃"),
    ("za", "扎"), ("ze", "泽"), ("zo", "佐"),
]
CLOSED_SYLLABLES = [
    ("vek", "维克"), ("zun", "尊"), ("mir", "米尔"), ("thos", "索斯"), ("kesh", "凯什"), ("brin", "布林"),
    ("vold", "沃尔德"), ("rix", "里克斯"), ("thal", "塔尔"), ("dun", "敦"), ("gar", "加尔"), ("kor", "科尔"),
    ("len", "伦"), ("nak", "纳克"), ("rath", "拉斯"), ("sel", "塞尔"), ("vin", "文"), ("dris", "德里斯"),
    ("mun", "蒙"), ("wen", "温"), ("lek", "莱克"), ("zar", "扎尔"),
]


# World sizes: fixed for a seed (--scale multiplies training rows, never the world).
N_COUNTRIES, N_TOWNS, N_PEOPLE, N_RIVERS = 12, 60, 40, 12
N_PRETRAIN_ONLY_TOWNS, N_PRETRAIN_ONLY_PEOPLE = 12, 8
N_TWO_HOP_HELDOUT_TOWNS, N_TWO_HOP_HELDOUT_PEOPLE = 12, 8
N_CHARACTERS, N_HELDOUT_CHARACTERS = 40, 16  # word-problem names for training / evaluation only


def rng_for(seed: int, stream: str) -> random.Random:
    # One independent stream per part (string seeds hash with SHA-512, stable across runs and platforms),
    # so changing how one file is generated leaves every other file byte-identical.
    return random.Random(f"minimind-demo/{seed}/{stream}")


@dataclass(eq=False)  # identity equality: entities are compared and hashed as objects
class Country:
    name: Name
    language: Name
    currency: Name
    capital: "Town | None" = None


@dataclass(eq=False)
class Town:
    name: Name
    country: Country
    river: Name
    product: Name
    founded: int


@dataclass(eq=False)
class Person:
    name: Name
    hometown: Town
    profession: Name
    colour: Name
    pet: Name


@dataclass(eq=False)
class Herb:
    name: Name
    ailment: Name
    dose: Name
    preparation: Name
    habitat: Name


FACT_ATTRS = {"town": ("country", "river", "product", "founded"), "person": ("hometown", "profession", "colour", "pet"),
              "country": ("capital", "language", "currency"), "herb": ("ailment", "dose", "preparation", "habitat")}


@dataclass(frozen=True)
class Fact:
    relation: str  # a RELATIONS key
    subject: object
    obj: object


def kind_of(entity) -> str:
    return type(entity).__name__.lower()


def facts_of(entity) -> list[Fact]:
    kind = kind_of(entity)
    return [Fact(f"{kind}.{attr}", entity, getattr(entity, attr)) for attr in FACT_ATTRS[kind]]


@dataclass
class World:
    countries: list
    towns: list
    rivers: list
    people: list
    herbs: list
    characters: list            # word-problem names used in training
    heldout_characters: list    # word-problem names used only in evaluation
    pretrain_only: set = field(default_factory=set)    # towns and people that SFT never asks about
    two_hop_heldout: set = field(default_factory=set)  # subjects never asked a two-hop question in training

    def taught(self, entity) -> bool:
        return entity not in self.pretrain_only

    def taught_facts(self) -> list[Fact]:
        return [f for e in self.countries + self.towns + self.people if self.taught(e) for f in facts_of(e)]

    def pretrain_only_facts(self) -> list[Fact]:
        return [f for e in self.towns + self.people if not self.taught(e) for f in facts_of(e)]

    def two_hop_subjects(self, heldout: bool) -> list:
        """Two-hop subjects: SFT-taught towns and people (so both hops are taught), never capitals (their
        capital question answers itself); training uses one part, evaluation the other."""
        candidates = [t for t in self.towns if self.taught(t) and t.country.capital is not t]
        candidates += [p for p in self.people if self.taught(p)]
        return [e for e in candidates if (e in self.two_hop_heldout) == heldout]

    def domain_facts(self) -> list[Fact]:
        facts = [f for h in self.herbs for f in facts_of(h)]
        return facts + [Fact("ailment.herb", h.ailment, h) for h in self.herbs]


REAL_WORDS = {"pamir", "bowen", "larix", "mimir", "baden", "golan", "milan", "bonn"}  # real names syllables can spell


class NameBook:
    """Hands out fresh names and refuses any that would make scoring ambiguous: an English word may belong
    to one name only, and no Chinese name may contain another (answers are matched as substrings)."""

    def __init__(self, vocab: list[Name]):
        for a in vocab:  # the fixed vocabulary must already be unambiguous under the scorer's own matching
            for b in vocab:
                assert a is b or not (mentions(b.en, a.en) or mentions(b.zh, a.zh)), f"ambiguous: {a} / {b}"
        self.en_words = {w for name in vocab for w in name.en.lower().split()}
        self.zh = [name.zh for name in vocab]

    def _free(self, en_words, zh_names) -> bool:
        if len(set(en_words)) < len(en_words) or any(w in self.en_words or w in REAL_WORDS for w in en_words):
            return False
        return not any(new in old or old in new for new in zh_names for old in self.zh)

    def draw(self, rng: random.Random, make):
        """make(rng) -> (value, en_words, zh_names); retried until the names are free."""
        for _ in range(10_000):
            value, en_words, zh_names = make(rng)
            if self._free(en_words, zh_names):
                self.en_words.update(en_words)
                self.zh.extend(zh_names)
                return value
        raise RuntimeError("ran out of fresh names: add syllables")


def _syllables(rng: random.Random, n_open: int, closed: bool) -> tuple[str, str]:
    parts = [rng.choice(OPEN_SYLLABLES) for _ in range(n_open)] + ([rng.choice(CLOSED_SYLLABLES)] if closed else [])
    return "".join(p[0] for p in parts).capitalize(), "".join(p[1] for p in parts)


def _simple_name(n_open_choices, closed: bool, en_suffix="", zh_suffix=""):
    def make(rng):
        en, zh = _syllables(rng, rng.choice(n_open_choices), closed)
        return Name(en + en_suffix, zh + zh_suffix), [en.lower()], [zh + zh_suffix]
    return make


def _make_country(rng):
    # Country, language and currency share a stem the way real ones do: Tavekia / Tavekish / 塔维克亚 / 塔维克语.
    en, zh = _syllables(rng, rng.choice((1, 2)), True)
    cur_en, cur_zh = _syllables(rng, 1, True)
    country = Country(Name(en + "ia", zh + "亚"), Name(en + "ish", zh + "语"), Name(cur_en.lower(), cur_zh))
    # The bare stem is reserved too, so no town or herb is called "Tavek" next to the country Tavekia.
    words = [en.lower(), (en + "ia").lower(), (en + "ish").lower(), cur_en.lower()]
    return country, words, [zh + "亚", zh + "语", cur_zh]


def _make_person_name(rng):
    # Every name ends in a closed syllable: open-only names too often spell real words ("Name", "Lima").
    given, given_zh = _syllables(rng, 1, True)
    family, family_zh = _syllables(rng, rng.choice((1, 2)), True)
    zh = f"{given_zh}·{family_zh}"
    return Name(f"{given} {family}", zh), [given.lower(), family.lower()], [zh]


def _make_herb_name(rng):
    en, zh = _syllables(rng, 1, True)
    kind = rng.choice(HERB_KINDS)
    return Name(f"{en} {kind.en}", zh + kind.zh), [en.lower()], [zh + kind.zh]


def build_world(seed: int) -> World:
    rng = rng_for(seed, "world")
    answers_vocab = PRODUCTS + PROFESSIONS + COLOURS + PETS + AILMENTS + PREPARATIONS + HABITATS
    book = NameBook(answers_vocab)
    countries = [book.draw(rng, _make_country) for _ in range(N_COUNTRIES)]
    rivers = [book.draw(rng, _simple_name((1, 2), True, zh_suffix="河")) for _ in range(N_RIVERS)]
    town_names = [book.draw(rng, _simple_name((1, 2, 2), True)) for _ in range(N_TOWNS)]
    towns = [Town(name, countries[i % N_COUNTRIES], rng.choice(rivers), rng.choice(PRODUCTS), rng.randint(1000, 1899))
             for i, name in enumerate(town_names)]
    for country in countries:
        country.capital = next(t for t in towns if t.country is country)

    # Splits. Capitals stay SFT-taught: "The capital of X is Y" would otherwise reveal Y's country.
    non_capitals = [t for t in towns if t.country.capital is not t]
    rng.shuffle(non_capitals)
    pretrain_only_towns = non_capitals[:N_PRETRAIN_ONLY_TOWNS]
    two_hop_towns = non_capitals[N_PRETRAIN_ONLY_TOWNS:N_PRETRAIN_ONLY_TOWNS + N_TWO_HOP_HELDOUT_TOWNS]
    taught_towns = [t for t in towns if t not in pretrain_only_towns]

    people = []
    for i in range(N_PEOPLE):
        pretrain_only = i < N_PRETRAIN_ONLY_PEOPLE
        # SFT-taught people come from SFT-taught towns, so every two-hop chain is made of taught facts.
        hometown = rng.choice(towns if pretrain_only else taught_towns)
        name = book.draw(rng, _make_person_name)
        people.append(Person(name, hometown, rng.choice(PROFESSIONS), rng.choice(COLOURS), rng.choice(PETS)))
    pretrain_only_people = people[:N_PRETRAIN_ONLY_PEOPLE]
    two_hop_people = people[N_PRETRAIN_ONLY_PEOPLE:N_PRETRAIN_ONLY_PEOPLE + N_TWO_HOP_HELDOUT_PEOPLE]

    ailments = AILMENTS[:]
    rng.shuffle(ailments)
    herbs = [Herb(book.draw(rng, _make_herb_name), ailment, rng.choice(DOSES), rng.choice(PREPARATIONS),
                  rng.choice(HABITATS)) for ailment in ailments]
    characters = [book.draw(rng, _simple_name((1,), True)) for _ in range(N_CHARACTERS + N_HELDOUT_CHARACTERS)]
    rng.shuffle(people)  # so the splits are not contiguous in file order
    return World(countries, towns, rivers, people, herbs, characters[:N_CHARACTERS], characters[N_CHARACTERS:],
                 pretrain_only=set(pretrain_only_towns) | set(pretrain_only_people),
                 two_hop_heldout=set(two_hop_towns) | set(two_hop_people))
