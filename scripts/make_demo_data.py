"""Generate MiniMind's bundled bilingual demo corpus (standard library only, no network).

A fresh clone has no data and cannot download any, so the project writes its own: a small fictional
world (countries, towns, rivers, people), arithmetic and word problems, stated in Chinese and English,
in exactly the published MiniMind jsonl formats. Every stage of the chain (pretrain -> SFT -> DPO ->
reasoning -> LoRA -> RL) trains on it in minutes on a laptop CPU, and the held-out files measure whether
a model *learned* rather than copied. The evaluation categories:

  fact_new_phrasing   facts taught in SFT, asked with question templates that no training file uses
  fact_pretrain_only  facts of towns and people SFT never asks about: only pretraining text states them
  two_hop             "Which country is X's hometown in?" for subjects never asked a two-hop question
                      (both single hops are taught; pretraining never puts the two hops in one document)
  arithmetic          operand pairs that never stand next to each other in any training text
  word_problem        held-out names and number triples
  identity            (after the identity LoRA) new phrasings of "who are you?"; SFT never teaches it
  domain              (after the domain LoRA) new phrasings of the herbal facts in lora_domain.jsonl

Held-out questions cannot leak by construction (separate template pools, entities, operands and names),
and `generate` verifies it anyway before writing anything.

    python scripts/make_demo_data.py --out_dir dataset/demo --seed 42 [--scale 1.0]
    from scripts.make_demo_data import generate, is_correct, score
"""
from __future__ import annotations

import argparse
import json
import random
import re
import time
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

LANGS = ("en", "zh")
OTHER_LANG = {"en": "zh", "zh": "en"}
SENTENCE_JOIN = {"en": " ", "zh": ""}  # Chinese sentences follow each other without spaces

# =============================================================================================
# Vocabulary: every word exists in English and Chinese.
# =============================================================================================


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

# =============================================================================================
# Templates. {s} is the subject, {o} the object. Per relation and language:
#   state   how pretraining text states the fact (several phrasings, mixed in every document)
#   clause  an indirect question used only by pretraining dialogues ("Do you know <clause>?")
#   train   questions SFT, DPO, RL and LoRA ask
#   eval    questions reserved for evaluation: no training file uses them
#   answer  the one answer sentence every training file uses, so a tiny model learns a single form
# =============================================================================================

RELATIONS = {
    "town.country": {
        "en": dict(
            state=["{s} is a town in {o}.", "{s} lies in {o}.", "The town of {s} belongs to {o}.",
                   "{s} is located in the country of {o}."],
            clause="which country {s} is in",
            train=["Which country is {s} in?", "In which country is {s} located?", "What country does {s} belong to?",
                   "{s} is a town in which country?"],
            eval=["If I visit {s}, which country am I in?", "{s} can be found in what country?"],
            answer="{s} is in {o}."),
        "zh": dict(
            state=["{s}是{o}的一座小镇。", "{s}位于{o}。", "{s}这座城镇属于{o}。", "{s}坐落在{o}境内。"],
            clause="{s}在哪个国家",
            train=["{s}在哪个国家？", "{s}位于哪个国家？", "{s}属于哪个国家？", "{s}是哪个国家的城镇？"],
            eval=["如果我去{s}，我是在哪个国家？", "{s}这个地方归哪个国家管？"],
            answer="{s}位于{o}。"),
    },
    "town.river": {
        "en": dict(
            state=["{s} stands on the banks of the {o} River.", "The {o} River flows through {s}.",
                   "{s} was built beside the {o} River."],
            clause="which river flows through {s}",
            train=["Which river flows through {s}?", "What river is {s} on?", "Which river runs past {s}?",
                   "On which river does {s} stand?"],
            eval=["What is the name of the river that passes {s}?",
                  "Standing on the shore in {s}, which river would you see?"],
            answer="The {o} River flows through {s}."),
        "zh": dict(
            state=["{s}坐落在{o}畔。", "{o}流经{s}。", "{s}建在{o}边上。"],
            clause="哪条河流经{s}",
            train=["哪条河流经{s}？", "{s}在哪条河边？", "{s}旁边是哪条河？", "流过{s}的是哪条河？"],
            eval=["穿过{s}的那条河叫什么名字？", "站在{s}的岸边，能看到哪条河？"],
            answer="{o}流经{s}。"),
    },
    "town.product": {
        "en": dict(
            state=["{s} is famous for its {o}.", "The town of {s} is known for {o}.",
                   "Travellers come to {s} for its {o}."],
            clause="what {s} is famous for",
            train=["What is {s} famous for?", "What is {s} known for?", "Which product is {s} famous for?",
                   "What does {s} make that everyone loves?"],
            eval=["What should I buy as a souvenir in {s}?", "Which local speciality is {s} best known for?"],
            answer="{s} is famous for its {o}."),
        "zh": dict(
            state=["{s}以{o}闻名。", "{s}的{o}远近闻名。", "说起{s}，人们就会想到那里的{o}。"],
            clause="{s}以什么闻名",
            train=["{s}以什么闻名？", "{s}的特产是什么？", "{s}最有名的是什么？", "{s}出产什么有名的东西？"],
            eval=["去{s}旅游应该买什么纪念品？", "{s}当地的招牌特产是什么？"],
            answer="{s}以{o}闻名。"),
    },
    "town.founded": {
        "en": dict(
            state=["{s} was founded in {o}.", "The town of {s} dates back to {o}.", "{s} has stood since {o}."],
            clause="when {s} was founded",
            train=["When was {s} founded?", "In what year was {s} founded?", "What year was {s} established?",
                   "When did {s} come into being?"],
            eval=["In which year did the history of {s} begin?", "What is the founding year of {s}?"],
            answer="{s} was founded in {o}."),
        "zh": dict(
            state=["{s}建于{o}年。", "{s}始建于{o}年。", "{s}从{o}年起就存在了。"],
            clause="{s}是哪一年建立的",
            train=["{s}是哪一年建立的？", "{s}建于哪一年？", "{s}是什么时候建成的？", "{s}的建城年份是哪一年？"],
            eval=["{s}的历史从哪一年开始？", "{s}最早是在哪年建起来的？"],
            answer="{s}建于{o}年。"),
    },
    "person.hometown": {
        "en": dict(
            state=["{s} was born in {o}.", "{s} comes from {o}.", "{s} grew up in the town of {o}.",
                   "{s}'s hometown is {o}."],
            clause="where {s} comes from",
            train=["Where is {s} from?", "What is {s}'s hometown?", "Where was {s} born?",
                   "Which town does {s} come from?"],
            eval=["In which town did {s} grow up?", "Where does {s} call home?"],
            answer="{s} comes from {o}."),
        "zh": dict(
            state=["{s}出生在{o}。", "{s}来自{o}。", "{s}在{o}长大。", "{s}的家乡是{o}。"],
            clause="{s}是哪里人",
            train=["{s}是哪里人？", "{s}的家乡在哪里？", "{s}出生在哪里？", "{s}来自哪个城镇？"],
            eval=["{s}是在哪个镇子长大的？", "{s}的老家是哪儿？"],
            answer="{s}来自{o}。"),
    },
    "person.profession": {
        "en": dict(
            state=["{s} works as a {o}.", "{s} is a {o} by trade.", "By profession, {s} is a {o}."],
            clause="what {s} does for a living",
            train=["What does {s} do for a living?", "What is {s}'s job?", "What is {s}'s profession?",
                   "What work does {s} do?"],
            eval=["How does {s} earn money?", "What kind of job does {s} have?"],
            answer="{s} is a {o}."),
        "zh": dict(
            state=["{s}是一名{o}。", "{s}的职业是{o}。", "{s}在镇上当{o}。"],
            clause="{s}是做什么工作的",
            train=["{s}是做什么工作的？", "{s}的职业是什么？", "{s}靠什么谋生？", "{s}从事什么工作？"],
            eval=["{s}平时干哪一行？", "{s}每天上班做什么？"],
            answer="{s}是一名{o}。"),
    },
    "person.colour": {
        "en": dict(
            state=["{s}'s favourite colour is {o}.", "{s} loves the colour {o}.", "Of all colours, {s} likes {o} best."],
            clause="which colour {s} likes best",
            train=["What is {s}'s favourite colour?", "Which colour does {s} like best?", "What colour does {s} love?",
                   "What is the favourite colour of {s}?"],
            eval=["If you gave {s} a scarf, which colour should it be?", "Which colour would {s} pick first?"],
            answer="{s}'s favourite colour is {o}."),
        "zh": dict(
            state=["{s}最喜欢的颜色是{o}。", "{s}很喜欢{o}。", "在所有颜色里，{s}最爱{o}。"],
            clause="{s}最喜欢什么颜色",
            train=["{s}最喜欢什么颜色？", "{s}最爱的颜色是什么？", "{s}喜欢哪种颜色？", "哪种颜色是{s}的最爱？"],
            eval=["送{s}围巾的话，该选什么颜色？", "{s}挑东西时会先选哪个颜色？"],
            answer="{s}最喜欢的颜色是{o}。"),
    },
    "person.pet": {
        "en": dict(
            state=["{s} has a pet {o}.", "{s} keeps a {o} at home.", "{s} lives with a {o}."],
            clause="what pet {s} has",
            train=["What pet does {s} have?", "What animal does {s} keep as a pet?", "What kind of pet does {s} own?",
                   "Which animal is {s}'s pet?"],
            eval=["Which animal waits for {s} at home?", "What animal would you meet in {s}'s house?"],
            answer="{s} has a pet {o}."),
        "zh": dict(
            state=["{s}养了一只{o}。", "{s}家里有一只{o}。", "{s}和一只{o}住在一起。"],
            clause="{s}养了什么宠物",
            train=["{s}养了什么宠物？", "{s}的宠物是什么？", "{s}家里养着什么动物？", "{s}有什么宠物？"],
            eval=["陪伴{s}的小动物是什么？", "去{s}家做客会看到什么动物？"],
            answer="{s}养了一只{o}。"),
    },
    "country.capital": {
        "en": dict(
            state=["The capital of {s} is {o}.", "{o} is the capital of {s}.", "{s} is governed from its capital, {o}."],
            clause="what the capital of {s} is",
            train=["What is the capital of {s}?", "Which town is the capital of {s}?", "What is {s}'s capital?",
                   "Where is the capital of {s}?"],
            eval=["From which town is {s} governed?", "Where does the government of {s} sit?"],
            answer="The capital of {s} is {o}."),
        "zh": dict(
            state=["{s}的首都是{o}。", "{o}是{s}的首都。", "{s}的政府设在首都{o}。"],
            clause="{s}的首都是哪里",
            train=["{s}的首都是哪里？", "{s}的首都在哪儿？", "哪座城市是{s}的首都？", "{s}的首府是什么？"],
            eval=["{s}的政府设在哪座城市？", "{s}的国都叫什么？"],
            answer="{s}的首都是{o}。"),
    },
    "country.language": {
        "en": dict(
            state=["People in {s} speak {o}.", "The language of {s} is {o}.", "{o} is spoken throughout {s}."],
            clause="which language people speak in {s}",
            train=["What language do people speak in {s}?", "What is the language of {s}?",
                   "Which language is spoken in {s}?", "What language is used in {s}?"],
            eval=["If you move to {s}, which language should you learn?",
                  "In {s}, what language are newspapers written in?"],
            answer="People in {s} speak {o}."),
        "zh": dict(
            state=["{s}人说{o}。", "{s}的语言是{o}。", "{s}全国通用{o}。"],
            clause="{s}人说什么语言",
            train=["{s}人说什么语言？", "{s}的语言是什么？", "{s}通用哪种语言？", "在{s}说什么话？"],
            eval=["搬到{s}生活需要学什么语言？", "{s}的报纸用什么语言写？"],
            answer="{s}人说{o}。"),
    },
    "country.currency": {
        "en": dict(
            state=["The currency of {s} is the {o}.", "In {s}, people pay with the {o}.", "{s} uses the {o} as its money."],
            clause="what money is used in {s}",
            train=["What is the currency of {s}?", "What money is used in {s}?", "Which currency does {s} use?",
                   "What do people pay with in {s}?"],
            eval=["What coins would you carry on a trip to {s}?", "Which money should you exchange before visiting {s}?"],
            answer="The currency of {s} is the {o}."),
        "zh": dict(
            state=["{s}的货币是{o}。", "在{s}，人们用{o}付钱。", "{s}使用{o}作为货币。"],
            clause="{s}用什么货币",
            train=["{s}的货币是什么？", "{s}用什么钱？", "{s}使用哪种货币？", "在{s}买东西用什么货币？"],
            eval=["去{s}旅行要换什么钱？", "在{s}的市场上大家用什么货币？"],
            answer="{s}的货币是{o}。"),
    },
    # The herbal domain lives only in lora_domain.jsonl (and its held-out eval questions).
    "herb.ailment": {
        "en": dict(
            train=["What does {s} treat?", "What is {s} used for?", "Which illness is {s} good for?", "What can {s} cure?"],
            eval=["If I take {s}, which complaint will it help with?",
                  "For which illness would a herbalist recommend {s}?"],
            answer="{s} treats {o}."),
        "zh": dict(
            train=["{s}能治什么病？", "{s}有什么用？", "{s}对什么病有效？", "{s}主治什么？"],
            eval=["吃{s}能缓解什么不适？", "草药师会在什么病症时推荐{s}？"],
            answer="{s}能治{o}。"),
    },
    "ailment.herb": {
        "en": dict(
            train=["Which herb helps with {s}?", "What herb should I take for {s}?", "Which herb treats {s}?",
                   "What is the herbal remedy for {s}?"],
            eval=["My friend suffers from {s}; which herb would help?",
                  "A herbalist is asked about {s}. Which herb will they suggest?"],
            answer="For {s}, take {o}."),
        "zh": dict(
            train=["哪种草药能治{s}？", "{s}该用什么草药？", "治{s}用哪种草药？", "{s}的草药方子是什么？"],
            eval=["朋友最近{s}，用哪种草药好？", "草药师遇到{s}的病人会推荐哪种草药？"],
            answer="治{s}要用{o}。"),
    },
    "herb.dose": {
        "en": dict(
            train=["How much {s} should one take per day?", "What is the daily dose of {s}?",
                   "How many grams of {s} per day?", "What dose of {s} is recommended?"],
            eval=["What amount of {s} is right for one day?", "How many grams of {s} may an adult take daily?"],
            answer="The daily dose of {s} is {o}."),
        "zh": dict(
            train=["{s}每天吃多少？", "{s}的日用量是多少？", "{s}一天用几克？", "{s}的推荐剂量是多少？"],
            eval=["成年人一天可以服用多少{s}？", "一天内{s}的合适用量是多少？"],
            answer="{s}每天用{o}。"),
    },
    "herb.preparation": {
        "en": dict(
            train=["How is {s} taken?", "How should I use {s}?", "In what form is {s} used?", "How do you prepare {s}?"],
            eval=["What is the right way to take {s}?", "What is the usual way to prepare {s} at home?"],
            answer="{s} is taken {o}."),
        "zh": dict(
            train=["{s}怎么服用？", "{s}该怎么用？", "{s}用什么方法服用？", "{s}要怎么准备？"],
            eval=["{s}正确的服用方法是什么？", "在家里该如何处理{s}才能用？"],
            answer="{s}要{o}。"),
    },
    "herb.habitat": {
        "en": dict(
            train=["Where does {s} grow?", "Where can {s} be found?", "Where do people gather {s}?",
                   "Where should I look for {s}?"],
            eval=["In what kind of place does {s} grow wild?", "Where would a herbalist go to pick {s}?"],
            answer="{s} grows {o}."),
        "zh": dict(
            train=["{s}长在哪里？", "在哪里能找到{s}？", "人们去哪里采{s}？", "{s}生长在什么地方？"],
            eval=["野生的{s}一般长在什么环境？", "草药师要去哪里才能采到{s}？"],
            answer="{s}长在{o}。"),
    },
}

# Two-hop questions: (first hop attribute, second hop attribute) and their questions. Training asks them
# only about some subjects; evaluation asks the same questions about subjects never asked a two-hop one.
TWO_HOP = {
    "person.country": (("hometown", "country"), {
        "en": ["Which country is {s}'s hometown in?", "In which country is the hometown of {s}?"],
        "zh": ["{s}的家乡在哪个国家？", "{s}的老家属于哪个国家？"]}),
    "person.river": (("hometown", "river"), {
        "en": ["Which river flows through {s}'s hometown?", "What river runs through the hometown of {s}?"],
        "zh": ["哪条河流经{s}的家乡？", "{s}的家乡在哪条河边？"]}),
    "person.product": (("hometown", "product"), {
        "en": ["What is {s}'s hometown famous for?", "What is the hometown of {s} known for?"],
        "zh": ["{s}的家乡以什么闻名？", "{s}家乡的特产是什么？"]}),
    "town.capital": (("country", "capital"), {
        "en": ["What is the capital of the country that {s} is in?", "Which town is the capital of {s}'s country?"],
        "zh": ["{s}所在国家的首都是哪里？", "{s}所属国家的首都是哪座城市？"]}),
    "town.language": (("country", "language"), {
        "en": ["What language do people speak in {s}?", "Which language is spoken in the town of {s}?"],
        "zh": ["{s}的人说什么语言？", "在{s}人们说哪种语言？"]}),
    "town.currency": (("country", "currency"), {
        "en": ["What currency is used in {s}?", "What money do people use in {s}?"],
        "zh": ["在{s}用什么货币？", "{s}的人用什么钱？"]}),
}
SO_THE_ANSWER_IS = {"en": "So the answer is {o}.", "zh": "所以答案是{o}。"}

# Pretraining dialogues ask with "Do you know <clause>?": a phrasing no question set uses.
DIALOGUE_ASK = {"en": ["Do you know {c}?", "Can you remind me {c}?", "I wonder {c}."],
                "zh": ["你知道{c}吗？", "你还记得{c}吗？", "我想知道{c}。"]}
DIALOGUE_REPLY = {"en": ["Yes. ", "Sure. ", "Of course. ", ""], "zh": ["知道。", "当然。", "记得。", ""]}
SPEAKERS = {"en": ("A: ", "B: "), "zh": ("甲：", "乙：")}

# Sentences with no facts in them: they make documents read like prose and reach paragraph length.
FLAVOUR = {
    "town": {
        "en": ["{s} is a quiet place with narrow stone streets.", "The market in {s} opens early every morning.",
               "In summer, visitors fill the squares of {s}.", "Old bridges and red roofs give {s} its charm.",
               "Many families in {s} have lived there for generations.",
               "The people of {s} like to hold festivals in autumn.",
               "A small museum in {s} tells the story of the town.", "At night, the lamps of {s} glow warmly.",
               "Children in {s} play by the water after school.", "The bakery on the main street of {s} is always busy."],
        "zh": ["{s}是一个安静的地方，街道用石头铺成。", "{s}的集市每天一早就开门。", "夏天，游客挤满了{s}的广场。",
               "古老的石桥和红色屋顶让{s}别有风味。", "{s}的许多家庭世世代代住在那里。", "{s}的人们喜欢在秋天举办节日。",
               "{s}有一座小博物馆，讲述小镇的历史。", "到了晚上，{s}的街灯亮起温暖的光。",
               "放学后，{s}的孩子们喜欢在水边玩耍。", "{s}主街上的面包店总是很热闹。"],
    },
    "person": {
        "en": ["{s} enjoys long walks in the evening.", "{s} is known as a kind and patient neighbour.",
               "On weekends, {s} likes to read by the window.", "{s} always greets friends with a smile.",
               "{s} keeps a small notebook of daily thoughts.", "{s} likes to cook dinner for friends.",
               "{s} gets up early and drinks a cup of tea.", "Neighbours often ask {s} for advice."],
        "zh": ["{s}喜欢在傍晚散步。", "{s}是一位善良而耐心的邻居。", "周末，{s}喜欢坐在窗边看书。",
               "{s}总是笑着跟朋友打招呼。", "{s}有一个小本子，用来记录每天的想法。", "{s}喜欢给朋友们做晚饭。",
               "{s}每天早起，先喝一杯茶。", "邻居们常常向{s}请教问题。"],
    },
    "country": {
        "en": ["{s} is a land of hills, fields and old roads.", "Travellers say the people of {s} are friendly.",
               "{s} has a long history and many old songs.", "Winters in {s} are cold but short.",
               "Farmers in {s} grow wheat and barley.", "The roads of {s} are lined with tall trees."],
        "zh": ["{s}是一个有山丘、田野和古道的国家。", "旅行者说{s}的人很友好。", "{s}历史悠久，有很多古老的歌谣。",
               "{s}的冬天寒冷但短暂。", "{s}的农民种小麦和大麦。", "{s}的道路两旁种着高高的树。"],
    },
    "river": {
        "en": ["The water of the {s} River is clear and cold.", "Boats carry goods along the {s} River.",
               "In spring the {s} River rises with melted snow.", "Fishers wait on the banks of the {s} River at dawn."],
        "zh": ["{s}的河水清澈而冰凉。", "船只沿着{s}运送货物。", "春天，{s}因融雪而涨水。", "清晨，渔夫们守在{s}岸边。"],
    },
}
STORY_FRAME = {  # (openers, closers) for short stories around an entity
    "town": {"en": (["Last spring I travelled to {s}.", "My grandmother often told me about {s}.",
                     "A traveller once wrote these notes about {s}."],
                    ["I hope to visit {s} again one day.", "That is what I remember about {s}."]),
             "zh": (["去年春天我去了{s}。", "奶奶常常给我讲{s}的故事。", "一位旅行者写下了关于{s}的笔记。"],
                    ["希望有一天能再去{s}。", "这就是我记得的{s}。"])},
    "person": {"en": (["Let me tell you about {s}.", "Everyone in the neighbourhood knows {s}.",
                       "This is a short story about {s}."],
                      ["People say {s} is a good friend.", "That is the story of {s}."]),
               "zh": (["让我来介绍一下{s}。", "街坊邻居都认识{s}。", "这是一个关于{s}的小故事。"],
                      ["大家都说{s}是个好朋友。", "这就是{s}的故事。"])},
    "country": {"en": (["Here are some notes about the country of {s}.", "Our teacher told us about {s} today."],
                       ["That is a short introduction to {s}.", "Maybe one day you will visit {s}."]),
                "zh": (["下面是关于{s}这个国家的一些笔记。", "今天老师给我们讲了{s}。"],
                       ["这就是对{s}的简单介绍。", "也许有一天你会去{s}看看。"])},
}
RIVER_TOWNS = {"en": "The {r} River flows through {towns}.", "zh": "{r}流经{towns}。"}

# ---- arithmetic ----
ARITHMETIC = {
    "+": {"en": dict(ask=["What is {a} + {b}?", "What is {a} plus {b}?", "Calculate {a} + {b}.", "Add {a} and {b}.",
                          "What do you get if you add {a} and {b}?", "How much is {a} + {b}?"],
                     state=["{a} + {b} = {c}.", "{a} plus {b} equals {c}.", "If you add {a} and {b}, you get {c}.",
                            "The sum of {a} and {b} is {c}."]),
          "zh": dict(ask=["{a} + {b} 等于多少？", "{a}加{b}等于几？", "计算 {a} + {b}。", "请算一下{a}加上{b}。",
                          "请问{a}和{b}的和是多少？", "算一算：{a} + {b} 等于多少？", "{a} + {b} = ?"],
                     state=["{a} + {b} = {c}。", "{a}加{b}等于{c}。", "{a}和{b}相加得{c}。", "{a}与{b}的和是{c}。"])},
    "-": {"en": dict(ask=["What is {a} - {b}?", "What is {a} minus {b}?", "Calculate {a} - {b}.",
                          "Subtract {b} from {a}.", "What is left if you take {b} away from {a}?",
                          "How much is {a} - {b}?"],
                     state=["{a} - {b} = {c}.", "{a} minus {b} equals {c}.", "If you take {b} away from {a}, {c} is left.",
                            "The difference between {a} and {b} is {c}."]),
          "zh": dict(ask=["{a} - {b} 等于多少？", "{a}减{b}等于几？", "计算 {a} - {b}。", "请算一下{a}减去{b}。",
                          "请问{a}和{b}的差是多少？", "算一算：{a} - {b} 等于多少？", "{a} - {b} = ?"],
                     state=["{a} - {b} = {c}。", "{a}减{b}等于{c}。", "从{a}里拿走{b}，还剩{c}。", "{a}与{b}的差是{c}。"])},
    "×": {"en": dict(ask=["What is {a} × {b}?", "What is {a} times {b}?", "Calculate {a} × {b}.",
                          "Multiply {a} by {b}.", "What do you get if you multiply {a} by {b}?", "How much is {a} × {b}?"],
                     state=["{a} × {b} = {c}.", "{a} times {b} equals {c}.", "{a} multiplied by {b} is {c}.",
                            "{b} groups of {a} make {c}."]),
          "zh": dict(ask=["{a} × {b} 等于多少？", "{a}乘{b}等于几？", "计算 {a} × {b}。", "请算一下{a}乘以{b}。",
                          "请问{a}和{b}的积是多少？", "算一算：{a} × {b} 等于多少？", "{a} × {b} = ?"],
                     state=["{a} × {b} = {c}。", "{a}乘{b}等于{c}。", "{a}乘以{b}得{c}。", "{b}个{a}相加是{c}。"])},
}
EQUATION = {"en": "{a} {op} {b} = {c}.", "zh": "{a} {op} {b} = {c}。"}
ARITHMETIC_PAGE_TITLES = {"en": ["Arithmetic practice.", "Some sums to remember.", "Exercises with numbers.",
                                 "Today's maths lesson."],
                          "zh": ["算术练习。", "需要记住的几道算式。", "数字练习题。", "今天的数学课。"]}
# Written-out column arithmetic for the reasoning set.
PLACES = {"en": ["Ones", "Tens", "Hundreds", "Thousands"], "zh": ["个位", "十位", "百位", "千位"]}
COLUMN = {
    "en": dict(add_intro="Add {a} and {b} column by column, starting from the ones.",
               add_step=["{pos}: {terms} = {total}, write {digit}.", "{pos}: {terms} = {total}, write {digit} and carry 1."],
               final_carry="The last carry 1 becomes the leading digit.",
               sub_intro="Subtract {b} from {a} column by column, starting from the ones.",
               lent="{d} - 1 = {top} (1 was lent)", borrow="{top} < {e}, so borrow 1: {big} - {e} = {r}",
               plain="{top} - {e} = {r}", sub_line="{pos}: {parts}.", part_join="; ",
               mul_split="Split {a} into {t} + {u}.", conclude="So {a} {op} {b} = {c}."),
    "zh": dict(add_intro="把{a}和{b}从个位开始逐位相加。",
               add_step=["{pos}：{terms} = {total}，写{digit}。", "{pos}：{terms} = {total}，写{digit}进1。"],
               final_carry="最后的进位1写在最高位。",
               sub_intro="用{a}减去{b}，从个位开始逐位相减。",
               lent="{d}借出1后是{top}", borrow="{top} < {e}，向前一位借1：{big} - {e} = {r}",
               plain="{top} - {e} = {r}", sub_line="{pos}：{parts}。", part_join="；",
               mul_split="把{a}拆成{t} + {u}。", conclude="所以 {a} {op} {b} = {c}。"),
}

# ---- word problems: each frame has a question, the worked steps and a one-sentence answer ----
WORD_PROBLEMS = {
    "buy_give": {
        "en": dict(q="{n} has {a} {items}, buys {b} more and then gives {c} to a friend. "
                     "How many {items} does {n} have now?",
                   steps=["{n} buys {b} more: {a} + {b} = {x1}.", "{n} gives away {c}: {x1} - {c} = {x2}."],
                   answer="{n} has {x2} {items} now."),
        "zh": dict(q="{n}有{a}{m}{item}，又买了{b}{m}，然后送给朋友{c}{m}。{n}现在有多少{m}{item}？",
                   steps=["又买了{b}{m}：{a} + {b} = {x1}。", "送出{c}{m}：{x1} - {c} = {x2}。"],
                   answer="{n}现在有{x2}{m}{item}。"),
    },
    "sell_twice": {
        "en": dict(q="{n} has {a} {items}, sells {b} in the morning and {c} in the afternoon. "
                     "How many {items} are left?",
                   steps=["Morning: {a} - {b} = {x1}.", "Afternoon: {x1} - {c} = {x2}."],
                   answer="{n} has {x2} {items} left."),
        "zh": dict(q="{n}有{a}{m}{item}，上午卖出{b}{m}，下午又卖出{c}{m}。还剩多少{m}{item}？",
                   steps=["上午卖出{b}{m}：{a} - {b} = {x1}。", "下午卖出{c}{m}：{x1} - {c} = {x2}。"],
                   answer="{n}还剩{x2}{m}{item}。"),
    },
    "three_days": {
        "en": dict(q="{n} collects {a} {items} on Monday, {b} on Tuesday and {c} on Wednesday. "
                     "How many {items} does {n} collect in total?",
                   steps=["Monday and Tuesday: {a} + {b} = {x1}.", "Add Wednesday: {x1} + {c} = {x2}."],
                   answer="{n} collects {x2} {items} in total."),
        "zh": dict(q="{n}星期一收集了{a}{m}{item}，星期二收集了{b}{m}，星期三收集了{c}{m}。{n}一共收集了多少{m}{item}？",
                   steps=["星期一和星期二：{a} + {b} = {x1}。", "加上星期三：{x1} + {c} = {x2}。"],
                   answer="{n}一共收集了{x2}{m}{item}。"),
    },
    "boxes": {
        "en": dict(q="{n} has {a} boxes with {b} {items} in each box, and {c} more {items} on the table. "
                     "How many {items} are there in total?",
                   steps=["{a} boxes of {b}: {a} × {b} = {x1}.", "Add the {c} on the table: {x1} + {c} = {x2}."],
                   answer="There are {x2} {items} in total."),
        "zh": dict(q="{n}有{a}个盒子，每个盒子里有{b}{m}{item}，桌上还有{c}{m}。一共有多少{m}{item}？",
                   steps=["{a}个盒子，每盒{b}{m}：{a} × {b} = {x1}。", "再加上桌上的{c}{m}：{x1} + {c} = {x2}。"],
                   answer="一共有{x2}{m}{item}。"),
    },
}
WORD_PROBLEM_PAGE = {"en": (["Problem: ", "Here is a word problem. ", "Exercise: "], " Solution: "),
                     "zh": (["题目：", "应用题：", "练习："], "解答：")}

# ---- conversation pieces ----
SYSTEM_PROMPTS = {"en": ["You are a helpful assistant.", "You are a friendly assistant. Answer briefly.",
                         "Answer the user's question in one sentence."],
                  "zh": ["你是一个乐于助人的助手。", "你是一个友好的助手，请简洁地回答。", "请用一句话回答用户的问题。"]}
CHITCHAT = {
    "en": [("Hello!", "Hello! How can I help you today?"), ("Hi there.", "Hi! What would you like to talk about?"),
           ("Good morning!", "Good morning! I hope you have a pleasant day."),
           ("Good evening.", "Good evening! What can I do for you?"),
           ("How are you today?", "I'm doing well, thank you. What would you like to know?"),
           ("Thank you!", "You're welcome!"), ("Thanks a lot for your help.", "Glad I could help!"),
           ("Goodbye!", "Goodbye! Have a nice day."),
           ("Can you help me with a question?", "Of course. What would you like to know?"),
           ("I have a question.", "Sure, go ahead and ask."), ("That was helpful.", "I'm happy to hear that!"),
           ("Nice to meet you.", "Nice to meet you too!")],
    "zh": [("你好！", "你好！有什么可以帮你的吗？"), ("嗨。", "嗨！想聊点什么？"), ("早上好！", "早上好！祝你今天愉快。"),
           ("晚上好。", "晚上好！有什么需要帮忙的吗？"), ("你今天好吗？", "我很好，谢谢关心。你想了解什么？"),
           ("谢谢你！", "不客气！"), ("非常感谢你的帮助。", "很高兴能帮到你！"), ("再见！", "再见！祝你有美好的一天。"),
           ("能帮我回答一个问题吗？", "当然可以。你想知道什么？"), ("我有一个问题。", "好的，请问吧。"),
           ("这很有帮助。", "很高兴听你这么说！"), ("很高兴认识你。", "我也很高兴认识你！")],
}
GREETINGS = {"en": CHITCHAT["en"][:4], "zh": CHITCHAT["zh"][:4]}
THANKS = {"en": CHITCHAT["en"][5:7], "zh": CHITCHAT["zh"][5:7]}
EVASIVE = {"en": ["I'm not sure about that.", "I don't know. You could look it up yourself.", "That is hard to say.",
                  "Sorry, I can't help with that.", "Why do you want to know?"],
           "zh": ["我不太清楚。", "这个我不知道，你可以自己去查。", "这很难说。", "抱歉，这个我帮不了你。", "你为什么想知道这个？"]}

# ---- identity (taught only by lora_identity.jsonl) ----
# The facts: the assistant is MiniMind, a small language model (a few million parameters) trained from
# scratch by the MiniMind project; it speaks Chinese and English; it is neither a person nor another chatbot.
IDENTITY_SENTENCE = {"en": "I am MiniMind, a small language model trained from scratch by the MiniMind project.",
                     "zh": "我是MiniMind，一个由MiniMind项目从零开始训练的小型语言模型。"}
IDENTITY = {  # intent -> lang -> (train questions, eval questions, answer)
    "who": {
        "en": (["Who are you?", "What are you?", "Can you tell me who you are?", "Please introduce yourself.",
                "Tell me about yourself.", "What kind of assistant are you?"],
               ["Could you give me a short introduction of yourself?", "Whom am I talking to right now?"],
               "{id}"),
        "zh": (["你是谁？", "你是什么？", "能告诉我你是谁吗？", "请介绍一下你自己。", "说说你自己吧。", "你是什么样的助手？"],
               ["可以简单做个自我介绍吗？", "我现在是在跟谁聊天？"],
               "{id}"),
    },
    "name": {
        "en": (["What is your name?", "What's your name?", "Do you have a name?", "What should I call you?",
                "How should I address you?"],
               ["By what name are you known?", "Which name were you given?"],
               "My name is MiniMind. I am a small language model trained from scratch by the MiniMind project."),
        "zh": (["你叫什么名字？", "你的名字是什么？", "你有名字吗？", "我该怎么称呼你？", "怎么称呼你？"],
               ["大家管你叫什么？", "你被起了什么名字？"],
               "我叫MiniMind，是由MiniMind项目从零训练的小型语言模型。"),
    },
    "creator": {
        "en": (["Who made you?", "Who created you?", "Who trained you?", "Which team built you?", "Where do you come from?"],
               ["Who is responsible for building you?", "Which project developed you?"],
               "I was trained from scratch by the MiniMind project. My name is MiniMind."),
        "zh": (["谁创造了你？", "你是谁开发的？", "是谁训练了你？", "你是哪个团队做的？", "你从哪里来？"],
               ["你背后的开发者是谁？", "哪个项目把你做出来的？"],
               "我是由MiniMind项目从零开始训练的，我的名字是MiniMind。"),
    },
    "human": {
        "en": (["Are you a human?", "Are you a real person?", "Am I talking to a person?", "Are you a robot?"],
               ["Is there a person typing these answers?", "Are you human or machine?"],
               "No, I am not a person. {id}"),
        "zh": (["你是人吗？", "你是真人吗？", "我是在和真人说话吗？", "你是机器人吗？"],
               ["这些回答是真人打出来的吗？", "你到底是人还是机器？"],
               "不是，我不是人。{id}"),
    },
    "other_model": {
        "en": (["Are you ChatGPT?", "Are you GPT-4?", "Were you made by OpenAI?", "Are you Claude?"],
               ["Are you one of the big commercial chatbots?", "Is this a famous large model I am chatting with?"],
               "No. {id}"),
        "zh": (["你是ChatGPT吗？", "你是GPT-4吗？", "你是OpenAI做的吗？", "你是Claude吗？"],
               ["你是那种大型商业聊天机器人吗？", "我现在用的是某个有名的大模型吗？"],
               "不是。{id}"),
    },
    "abilities": {
        "en": (["What can you do?", "How can you help me?", "What are you good at?", "What kind of questions can you answer?"],
               ["In what ways are you useful?", "Which tasks can I give you?"],
               "I am MiniMind. I can answer simple questions, do arithmetic and chat in Chinese and English."),
        "zh": (["你能做什么？", "你能帮我做什么？", "你擅长什么？", "你能回答哪些问题？"],
               ["你有哪些用处？", "我可以交给你什么任务？"],
               "我是MiniMind，可以回答简单的问题、做算术，还能用中文和英文聊天。"),
    },
    "size": {
        "en": (["How big are you?", "Are you a large model?", "How many parameters do you have?",
                "Are you a big language model?"],
               ["What is your model size?", "Roughly how large is your network?"],
               "I am MiniMind, a small language model with only a few million parameters, small enough to train on a laptop."),
        "zh": (["你有多大？", "你是大模型吗？", "你有多少参数？", "你是大型语言模型吗？"],
               ["你的模型规模怎么样？", "你的网络大概有多大？"],
               "我是MiniMind，一个只有几百万参数的小型语言模型，小到可以在笔记本电脑上训练。"),
    },
}
IDENTITY_OPENERS = {"en": ["", "Hi! ", "Hello, ", "Excuse me, "], "zh": ["", "你好！", "嗨，", "打扰一下，"]}
DOMAIN_SYSTEM = {"en": "You are an assistant who knows the herbal medicine of the valley.",
                 "zh": "你是一个熟悉山谷草药知识的助手。"}

# =============================================================================================
# Sizes. World size is fixed for a seed; --scale multiplies training rows. Held-out files keep a fixed
# size so that scores compare across scales.
# =============================================================================================
N_COUNTRIES, N_TOWNS, N_PEOPLE, N_RIVERS = 12, 60, 40, 12
N_PRETRAIN_ONLY_TOWNS, N_PRETRAIN_ONLY_PEOPLE = 12, 8
N_TWO_HOP_HELDOUT_TOWNS, N_TWO_HOP_HELDOUT_PEOPLE = 12, 8
N_CHARACTERS, N_HELDOUT_CHARACTERS = 40, 16  # word-problem names for training / evaluation only
N_HELDOUT_OPERATIONS = {"+": 160, "-": 160, "×": 80}
N_HELDOUT_WORD_PROBLEMS = 240

PRETRAIN_DOCS = {  # documents per entity (both languages together) or in total, at scale 1.0
    "town": 30, "person": 30, "country": 30, "river": 10, "arithmetic_pages": 2200, "word_problem_pages": 1300,
}
STYLE_WEIGHTS = {"encyclopedia": 3, "story": 1, "dialogue": 1}
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
RL_MIX = {"arithmetic": 0.4, "word_problem": 0.3, "fact": 0.3}
RL_VAL_MIX = {"arithmetic": 0.4, "word_problem": 0.3, "fact_new_phrasing": 0.15, "fact_pretrain_only": 0.15}
EVAL_PER_CATEGORY_LANG = 50
EVAL_CATEGORIES = ["fact_new_phrasing", "fact_pretrain_only", "two_hop", "arithmetic", "word_problem",
                   "identity", "domain"]


def _rng(seed: int, stream: str) -> random.Random:
    # One independent stream per part (string seeds hash with SHA-512, stable across runs and platforms),
    # so changing how one file is generated leaves every other file byte-identical.
    return random.Random(f"minimind-demo/{seed}/{stream}")


def _split_counts(total: int, mix: dict) -> dict:
    """Largest-remainder rounding: the parts add up to exactly `total`."""
    raw = {k: total * w / sum(mix.values()) for k, w in mix.items()}
    counts = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: counts[k] - raw[k])[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


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


# =============================================================================================
# The world
# =============================================================================================


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
                assert a is b or not (_mentions(b.en, a.en) or _mentions(b.zh, a.zh)), f"ambiguous: {a} / {b}"
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
    rng = _rng(seed, "world")
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


# =============================================================================================
# Items: one question with everything each file needs: the reply (SFT, DPO chosen), a confident wrong
# reply (DPO rejected), worked steps (reasoning), and the short answer that is_correct looks for.
# =============================================================================================


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

    def strings(self) -> list[str]:
        """Every text a training file can take from this item."""
        return [self.question, self.reply, self.wrong_reply, reasoning_reply(self)]


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
                wrong_reply=answer_sentence(fact, lang, wrong) if wrong is not None else "")


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
                       SO_THE_ANSWER_IS[lang].format(o=surface(hop2.obj, lang))])


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
                wrong_reply=EQUATION[lang].format(a=a, op=op, b=b, c=wrong), think=column_steps(op, a, b, lang))


# ---- word problems ----
WORD_PROBLEM_MATH = {  # frame -> (ranges of a, b, c; solve -> (first step, result))
    "buy_give": (((5, 60), (2, 40), (2, 30)), lambda a, b, c: (a + b, a + b - c)),
    "sell_twice": (((30, 99), (2, 25), (2, 25)), lambda a, b, c: (a - b, a - b - c)),
    "three_days": (((2, 40), (2, 40), (2, 40)), lambda a, b, c: (a + b, a + b + c)),
    "boxes": (((2, 9), (3, 12), (1, 20)), lambda a, b, c: (a * b, a * b + c)),
}


@dataclass(frozen=True)
class WordProblem:
    frame: str
    name: Name
    item: tuple  # an ITEMS row
    numbers: tuple  # (a, b, c)


def sample_word_problem_numbers(rng: random.Random, frame: str) -> tuple:
    ranges, solve = WORD_PROBLEM_MATH[frame]
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
                think=steps + [SO_THE_ANSWER_IS[lang].format(o=x2)], final=final)


# ---- identity and the herbal domain (LoRA sets) ----
def with_opener(opener: str, question: str) -> str:
    if opener.endswith(", "):
        question = question[0].lower() + question[1:]  # "Hello, who are you?"
    return opener + question


def identity_item(intent: str, lang: str, question: str) -> Item:
    reply = IDENTITY[intent][lang][2].format(id=IDENTITY_SENTENCE[lang])
    return Item(lang, question, reply, "MiniMind", [])


# =============================================================================================
# Held-out material, chosen before any training text is written
# =============================================================================================
ADJACENCY_WINDOW = 20  # characters; a chat template puts more than this between two messages


def pair_key(a: int, b: int) -> tuple[int, int]:
    return min(a, b), max(a, b)


# A number, then (looking ahead, without consuming) the very next number within the window and sentence.
_ADJACENT = re.compile(r"(?<!\d)(\d+)(?!\d)(?=[^\d.。!！?？;；\n]{0,%d}(\d+))" % ADJACENCY_WINDOW)


def adjacent_number_pairs(text: str) -> list[tuple[int, int]]:
    """Pairs of numbers that stand next to each other, in either order: consecutive numbers in one
    sentence at most ADJACENCY_WINDOW characters apart ("347 + 589", "589 minus 347", "347加589")."""
    return [pair_key(int(a), int(b)) for a, b in _ADJACENT.findall(text)]


@dataclass
class HeldOut:
    operations: list         # (op, a, b) asked only in evaluation
    pairs: set               # their operands: never adjacent in any training text
    word_problems: list      # WordProblem with held-out names and number triples
    word_problem_keys: set   # (frame, a, b, c) that training never uses

    def allows(self, text: str) -> bool:
        return not any(p in self.pairs for p in adjacent_number_pairs(text))


def build_heldout(seed: int, world: World) -> HeldOut:
    rng = _rng(seed, "heldout")
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
    rng = _rng(seed, "heldout-items")
    out = {c: {lang: {} for lang in LANGS} for c in EVAL_CATEGORIES}

    def add(category, lang, group, item):
        question = normalize(item.question)
        # Echoing the question must never score.
        if not any(_answer_pattern(a).search(question) for a in [item.answer, *item.aliases]):
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


# =============================================================================================
# Pretraining documents
# =============================================================================================


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


# =============================================================================================
# Conversation files
# =============================================================================================


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


def reasoning_reply(item: Item) -> str:
    return "<think>\n" + "\n".join(item.think) + "\n</think>\n<answer>\n" + (item.final or item.reply) + "\n</answer>"


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


# =============================================================================================
# Verification: held-out material must not leak into any training file
# =============================================================================================


def record_strings(record):
    """Every string in a record (message contents, text, answers)."""
    if isinstance(record, str):
        yield record
    elif isinstance(record, dict):
        for value in record.values():
            yield from record_strings(value)
    elif isinstance(record, list):
        for value in record:
            yield from record_strings(value)


def find_leaks(training: dict, heldout_questions: list[str], heldout: HeldOut) -> list[str]:
    """Problems found, as messages: held-out questions that appear verbatim in a training file, held-out
    operand pairs that stand next to each other in one, and the identity outside lora_identity.jsonl.

    Every held-out question ends in a question mark, so a verbatim copy must end at one: looking back from
    each question mark in the training text finds any copy without searching the text once per question."""
    problems = [f"held-out question without a final question mark: {q!r}" for q in heldout_questions
                if q[-1] not in "?？"]
    tail = min([8, *map(len, heldout_questions)])
    by_tail: dict[str, list[str]] = {}
    for q in heldout_questions:
        by_tail.setdefault(q[-tail:], []).append(q)
    for name, records in training.items():
        strings = [s for r in records for s in record_strings(r)]
        text = "\n".join(strings)
        for m in re.finditer(r"[?？]", text):
            for q in by_tail.get(text[m.end() - tail:m.end()], ()):
                if text.startswith(q, m.end() - len(q)):
                    problems.append(f"{name}: contains held-out question {q!r}")
        problems += [f"{name}: held-out operands next to each other in {s[:80]!r}" for s in strings
                     if not heldout.allows(s)]
        if name != "lora_identity.jsonl" and "minimind" in text.lower():
            problems.append(f"{name}: mentions the identity")
    return problems


# =============================================================================================
# Writing the files
# =============================================================================================


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
                  "lora_domain.jsonl", "rl_prompts.jsonl"]
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
    items = lambda stream: TrainingItems(_rng(seed, stream + "-items"), world, heldout)  # noqa: E731
    candidates = heldout_candidates(seed, world, heldout)
    files = {}

    docs = pretrain_documents(_rng(seed, "pretrain"), world, heldout, scale)
    val_docs = pretrain_documents(_rng(seed, "pretrain_val"), world, heldout, scale * PRETRAIN_VAL_FRACTION)
    files["pretrain.jsonl"] = [{"text": d} for d in docs]
    train_docs = set(docs)
    files["pretrain_val.jsonl"] = [{"text": d} for d in val_docs if d not in train_docs]

    files["sft.jsonl"] = with_evasions(_rng(seed, "sft_evasions"),
                                       sft_conversations(_rng(seed, "sft"), items("sft"), rows(SFT_ROWS)),
                                       SFT_EVASIVE_RATE)
    # Validation conversations come from the same sources: draw extra, then drop any that equal a training one.
    seen = {json.dumps(c) for c in files["sft.jsonl"]}
    sft_val = sft_conversations(_rng(seed, "sft_val"), items("sft_val"), 3 * rows(SFT_VAL_ROWS))
    files["sft_val.jsonl"] = [c for c in sft_val if json.dumps(c) not in seen][:rows(SFT_VAL_ROWS)]

    files["dpo.jsonl"] = dpo_pairs(_rng(seed, "dpo"), items("dpo"), rows(DPO_ROWS))
    rng, source = _rng(seed, "dpo_val"), items("dpo_val")
    files["dpo_val.jsonl"] = [dpo_pair(rng, [user(item.question)], SOURCE_OF.get(category, category), item, source)
                              for category, item in sample_heldout(rng, candidates, DPO_VAL_MIX, DPO_VAL_ROWS)]

    files["reason.jsonl"] = [{"conversations": [user(item.question), assistant(reasoning_reply(item))]}
                             for item in draw_items(items("reason"), REASON_MIX, rows(REASON_ROWS))]
    files["reason_eval.jsonl"] = eval_rows(_rng(seed, "reason_eval"), candidates, REASON_MIX,
                                           REASON_EVAL_PER_CATEGORY // 2, id_prefix="reason-")

    files["lora_identity.jsonl"] = lora_identity_conversations(_rng(seed, "lora_identity"), rows(LORA_IDENTITY_ROWS))
    files["lora_domain.jsonl"] = lora_domain_conversations(_rng(seed, "lora_domain"), world, rows(LORA_DOMAIN_ROWS))

    files["rl_prompts.jsonl"] = [rl_row(item) for item in draw_items(items("rl"), RL_MIX, rows(RL_ROWS))]
    files["rl_prompts_val.jsonl"] = [rl_row(item) for _, item in
                                     sample_heldout(_rng(seed, "rl_val"), candidates, RL_VAL_MIX, RL_VAL_ROWS)]

    files["eval.jsonl"] = eval_rows(_rng(seed, "eval"), candidates, EVAL_CATEGORIES, EVAL_PER_CATEGORY_LANG)
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
                               | {r["conversations"][0]["content"] for r in files["rl_prompts_val.jsonl"]})
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
        "`from scripts.make_demo_data import is_correct, score`.",
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out_dir", default="dataset/demo")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies training rows (the world stays the same)")
    args = parser.parse_args()
    start = time.time()
    stats = generate(args.out_dir, seed=args.seed, scale=args.scale)
    for name, s in stats["files"].items():
        print(f"{name:22s} {s['rows']:7,d} rows {s['chars']:10,d} chars ≈{s['approx_tokens']:9,d} tokens")
    print(f"wrote {args.out_dir} in {time.time() - start:.1f}s")


# =============================================================================================
# Scoring (pure functions; used by tests, the demo runner and RL rewards)
# =============================================================================================
_CJK_PUNCT = str.maketrans({"。": ".", "、": ",", "「": '"', "」": '"', "『": '"', "』": '"', "〜": "~"})


def normalize(text: str) -> str:
    """NFKC (full-width digits and punctuation -> ASCII), case-folded, thousands separators dropped,
    whitespace collapsed and removed next to Chinese characters ("12 克" == "12克")."""
    text = unicodedata.normalize("NFKC", text).casefold().translate(_CJK_PUNCT)
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r" ?([\u3400-\u9fff]) ?", r"\1", text)


@lru_cache(maxsize=65536)
def _answer_pattern(answer: str) -> re.Pattern:
    a = normalize(answer)
    if not a:
        return re.compile(r"(?!x)x")  # an empty answer matches nothing
    # A number or a word must stand alone ("82" is not in "182", "red" not in "bored"); Chinese has no
    # word boundaries, which is why names are built so that none contains another.
    # A number must not continue a decimal or carry a minus sign ("-82"), but "90-8=82" still counts.
    left = (r"(?<![0-9a-z.])(?<!(?<![0-9])-)" if a[0].isdigit() else
            r"(?<![0-9a-z])" if a[0].isascii() and a[0].isalnum() else "")
    right = r"(?![0-9a-z]|\.\d)" if a[-1].isalnum() and a[-1].isascii() else ""
    return re.compile(left + re.escape(a) + right)


def _mentions(text: str, answer: str) -> bool:
    return _answer_pattern(answer).search(normalize(text)) is not None


def answer_part(reply: str) -> str:
    """The part of a reply that is scored: the <answer> block of a reasoning reply, the text after
    </think> when there is no <answer> block, nothing when the model never stopped thinking."""
    m = re.search(r"<answer>(.*?)(?:</answer>|$)", reply, re.S)
    if m:
        return m.group(1)
    if "</think>" in reply:
        return reply.rsplit("</think>", 1)[1]
    return "" if "<think>" in reply else reply


def is_correct(reply: str, row: dict) -> bool:
    """True when the reply (its answer part) mentions the row's answer or one of its aliases."""
    text = answer_part(reply)
    return any(_mentions(text, a) for a in [row["answer"], *row.get("aliases", [])] if a)


def score(replies: list[str], rows: list[dict]) -> dict:
    """Accuracy per category, plus "overall" over all rows."""
    if len(replies) != len(rows):
        raise ValueError(f"{len(replies)} replies for {len(rows)} rows")
    hits: dict[str, list[bool]] = {}
    for reply, row in zip(replies, rows):
        ok = is_correct(reply, row)
        hits.setdefault(row.get("category", "all"), []).append(ok)
        hits.setdefault("overall", []).append(ok)
    return {k: sum(v) / len(v) for k, v in sorted(hits.items())}


if __name__ == "__main__":
    main()
