"""How the demo world is said, in English and Chinese (data only): the templates of every relation, two-hop
questions, the prose of pretraining documents, arithmetic and word-problem phrasings, conversation pieces, and
the identity the LoRA teaches.

Relation templates: {s} is the subject, {o} the object. Per relation and language:
  state   how pretraining text states the fact (several phrasings, mixed in every document)
  clause  an indirect question used only by pretraining dialogues ("Do you know <clause>?")
  train   questions SFT, DPO, RL and LoRA ask
  eval    questions reserved for evaluation: no training file uses them
  answer  the one answer sentence every training file uses, so a tiny model learns a single form
"""
LANGS = ("en", "zh")
OTHER_LANG = {"en": "zh", "zh": "en"}
SENTENCE_JOIN = {"en": " ", "zh": ""}  # Chinese sentences follow each other without spaces

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

# ---- tool use (sft_tools.jsonl, agent_prompts*.jsonl) ----
# Units the convert tool knows, as questions name them; the tool is called with the unit symbols.
UNIT_WORDS = {"km": {"en": "kilometers", "zh": "公里"}, "m": {"en": "meters", "zh": "米"},
              "cm": {"en": "centimeters", "zh": "厘米"}, "kg": {"en": "kilograms", "zh": "千克"},
              "g": {"en": "grams", "zh": "克"}, "hour": {"en": "hours", "zh": "小时"},
              "minute": {"en": "minutes", "zh": "分钟"}, "second": {"en": "seconds", "zh": "秒"},
              "day": {"en": "days", "zh": "天"}}
CONVERT_ASK = {"en": ["How many {to} are in {v} {frm}?", "Convert {v} {frm} to {to}.", "What is {v} {frm} in {to}?"],
               "zh": ["{v}{frm}是多少{to}？", "把{v}{frm}换算成{to}。", "{v}{frm}等于多少{to}？"]}
CONVERT_ANSWER = {"en": "{v} {frm} is {r}.", "zh": "{v}{frm}是{r}。"}
# Small talk that only the agent's held-out prompts use: no tool is needed to answer it.
CHITCHAT_HELDOUT = {"en": ["Hey there, how is your day going?", "Could you chat with me for a bit?",
                           "Are you having a good day?", "Is it nice to talk with me?", "Shall we have a little chat?"],
                    "zh": ["你今天过得怎么样？", "可以陪我聊聊天吗？", "最近还好吗？", "和我聊天开心吗？", "我们随便聊几句好吗？"]}
