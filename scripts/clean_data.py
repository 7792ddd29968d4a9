"""Clean and deduplicate a corpus: jsonl ({"text": ...} or {"conversations": [...]}) or plain text.

    python scripts/clean_data.py --input raw.jsonl --output dataset/pretrain_clean.jsonl \\
        --max_chars 512 --near_dup_threshold 0.8 --val_ratio 0.01

Each document is cleaned (NFKC with --nfkc, control characters, HTML tags and entities,
markdown noise with --strip_markdown, whitespace), then dropped if too short or too long, an
exact duplicate (same 8-byte hash of the cleaned text) or a near duplicate (MinHash LSH over
shingles of English words and Chinese characters). In a conversation every message's content
is cleaned and the whole conversation is one document. A plain-text file has one document per
line. Kept documents go to --output, or to its `.val` twin for a share --val_ratio chosen by
hash, so a document lands on the same side in every run and whatever the file order.

Streaming: one line in memory at a time. What grows is the memory of the documents kept:
16 bytes per exact hash and 16 per LSH band (9 bands at the defaults), ~200 bytes per
document, 2 GB for 10 M documents; --near_dup_threshold 0 turns the LSH off.
"""
import argparse
import hashlib
import html
import json
import os
import re
import unicodedata
from collections import Counter
from contextlib import ExitStack

import numpy as np
from datasketch import MinHash
from scipy.special import beta, betainc  # scipy comes with datasketch
from tqdm import tqdm

# --- cleaning ---------------------------------------------------------------------------

CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b\u200e\u200f\u2060\ufeff]")
# Only tags of real HTML elements: <think>, <answer> and "a < b > c" must survive.
HTML_ELEMENTS = ("a|abbr|article|aside|audio|b|big|blockquote|body|br|button|caption|center|cite|code|col|colgroup|"
                 "dd|del|div|dl|dt|em|figcaption|figure|font|footer|form|h[1-6]|head|header|hr|html|i|iframe|img|"
                 "input|ins|label|li|link|meta|nav|noscript|ol|option|p|picture|pre|s|section|select|small|source|"
                 "span|strike|strong|sub|sup|table|tbody|td|textarea|tfoot|th|thead|title|tr|tt|u|ul|video")
HTML_HIDDEN = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>|<!--.*?-->", re.I | re.S)
HTML_BLOCK = re.compile(r"</?(?:br|p|div|li|tr|h[1-6]|hr|table|ul|ol|blockquote)\b[^<>]*>", re.I)  # → line break
HTML_TAG = re.compile(rf"</?(?:{HTML_ELEMENTS})\b[^<>]*>", re.I)
MARKDOWN = [
    (re.compile(r"!\[[^\]]*\]\([^)]*\)"), ""),                  # images
    (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),               # links keep their text
    (re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1"), r"\2"),       # bold
    (re.compile(r"^ {0,3}#{1,6}[ \t]+", re.M), ""),              # heading marks
    (re.compile(r"^ {0,3}>[ \t]?", re.M), ""),                   # quote marks
    (re.compile(r"^ {0,3}([-*_=])[ \t]*(?:\1[ \t]*){2,}$", re.M), ""),  # rules, setext underlines
]
SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
LINE_BREAKS = re.compile("\r\n?|[\u2028\u2029\x85]")


def clean_text(text, nfkc=False, keep_html=False, strip_markdown=False):
    if nfkc:  # full-width letters/digits → ASCII, ligatures split; also turns Chinese "，" into ","
        text = unicodedata.normalize("NFKC", text)
    text = CONTROL.sub("", LINE_BREAKS.sub("\n", text))
    if not keep_html:
        text = HTML_HIDDEN.sub("", text)
        text = HTML_TAG.sub("", HTML_BLOCK.sub("\n", text))
        if "&" in text:  # after removing tags, so "&lt;b&gt;" stays as visible text "<b>"
            text = html.unescape(text)
    if strip_markdown:
        for pattern, replacement in MARKDOWN:
            text = pattern.sub(replacement, text)
    text = SPACES.sub(" ", text)
    text = re.sub(r"(?<=\S)[ \t]{2,}", " ", text)  # runs inside a line; leading indentation (code) stays
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


# --- exact and near duplicates ------------------------------------------------------------

def hash64(data):
    """8-byte hash as a nonzero int (0 marks an empty slot in HashSet)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") or 1


class HashSet:
    """A set of 64-bit hashes in one numpy open-addressing table: 8-byte slots kept at most
    half full, so at most 16 bytes per hash (a Python set of ints costs ~70)."""

    def __init__(self, capacity=1 << 16):
        self.slots = np.zeros(capacity, np.uint64)
        self.count = 0

    def _slot(self, h):
        """The slot holding h, or the empty one where it would go (linear probing)."""
        mask = len(self.slots) - 1
        i = h & mask
        while int(self.slots[i]) not in (0, h):
            i = (i + 1) & mask
        return i

    def __contains__(self, h):
        return int(self.slots[self._slot(h)]) == h

    def add(self, h):
        i = self._slot(h)
        if self.slots[i] == 0:
            self.slots[i] = h
            self.count += 1
            if 2 * self.count > len(self.slots):
                self._grow()

    def _grow(self):
        old = self.slots[self.slots != 0].tolist()
        self.slots, self.count = np.zeros(2 * len(self.slots), np.uint64), 0
        for h in old:
            self.add(h)


CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
UNITS = re.compile(rf"[{CJK}]|[^\W_{CJK}]+")  # one Chinese character, or one word of letters/digits


def shingles(text, size):
    """Overlapping runs of `size` units, a unit being an English word or a Chinese character,
    so both languages get comparable granularity; punctuation and case are ignored."""
    units = UNITS.findall(text.lower())
    return {" ".join(units[i:i + size]) for i in range(max(1, len(units) - size + 1))} if units else set()


def lsh_bands(threshold, num_perm, fp_weight=0.5, fn_weight=0.5):
    """(bands, rows): b bands of r MinHash values each, b * r <= num_perm. Two documents share a band
    with probability P(J) = 1 - (1 - J^r)^b for Jaccard similarity J. Pick the b, r that minimise the
    weighted false-positive area (P below the threshold) plus false-negative area (1 - P above it),
    as datasketch's MinHashLSH does; the areas are incomplete beta functions (substitute u = J^r)."""
    b, r = np.array([(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]).T
    below = betainc(1 / r, b + 1, threshold ** r)  # share of the integral of (1 - J^r)^b over [0, 1] below it
    area = beta(1 / r, b + 1) / r  # the integral of (1 - J^r)^b over [0, 1]
    false_pos, false_neg = threshold - area * below, area * (1 - below)
    best = np.argmin(fp_weight * false_pos + fn_weight * false_neg)
    return int(b[best]), int(r[best])


class NearDupIndex:
    """Streaming near-duplicate filter: a document is a duplicate if one of its LSH band keys
    was seen in an earlier kept document. Candidates are not verified against the original
    (that would mean storing every signature): the band S-curve alone decides."""

    def __init__(self, threshold=0.8, num_perm=128, shingle_size=3, seed=1):
        self.bands, self.rows = lsh_bands(threshold, num_perm)
        self.minhash = MinHash(num_perm=num_perm, seed=seed)  # one sketch, cleared for each document
        self.shingle_size = shingle_size
        self.seen = HashSet()

    def check_and_add(self, text):
        """True if text is a near duplicate; otherwise remember it and return False."""
        grams = shingles(text, self.shingle_size)
        if not grams:
            return False
        self.minhash.clear()
        self.minhash.update_batch([g.encode() for g in grams])
        values = self.minhash.hashvalues
        keys = [hash64(band.to_bytes(2, "little") + values[band * self.rows:(band + 1) * self.rows].tobytes())
                for band in range(self.bands)]
        if any(key in self.seen for key in keys):
            return True
        for key in keys:
            self.seen.add(key)
        return False


# --- documents of each input format ---------------------------------------------------------

def read_document(line, is_jsonl):
    """(document, reason): a dict for jsonl, a str for plain text, or None and why it is unusable."""
    if not is_jsonl:
        return line.decode("utf-8", errors="replace").rstrip("\r\n"), None
    try:
        doc = json.loads(line)
    except ValueError:
        return None, "bad_json"
    if isinstance(doc, dict) and isinstance(doc.get("text"), str):
        return doc, None
    if isinstance(doc, dict) and isinstance(doc.get("conversations"), list) and doc["conversations"] and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in doc["conversations"]):
        return doc, None
    return None, "bad_format"


def contents(doc):
    """The texts of a document that get cleaned and counted."""
    if isinstance(doc, str):
        return [doc]
    return [doc["text"]] if "text" in doc else [m["content"] for m in doc["conversations"]]


def with_contents(doc, texts):
    if isinstance(doc, str):
        return texts[0].replace("\n", " ")  # plain text: one document per line
    if "text" in doc:
        return {**doc, "text": texts[0]}
    return {**doc, "conversations": [{**m, "content": t} for m, t in zip(doc["conversations"], texts)]}


def dedup_key(doc):
    if isinstance(doc, str) or "text" in doc:
        return contents(doc)[0]
    return "\n".join(f"<{m.get('role')}>{m['content']}" for m in doc["conversations"])


def val_path(output):
    stem, ext = os.path.splitext(output)
    return f"{stem}.val{ext}"


def clean_file(input_path, output, nfkc=False, keep_html=False, strip_markdown=False, min_chars=1,
               max_chars=0, near_dup_threshold=0.8, num_perm=128, shingle_size=3, val_ratio=0.0):
    """Clean, filter and split input_path into output (and its .val twin); returns the statistics."""
    if os.path.abspath(input_path) == os.path.abspath(output):
        raise ValueError("--output must differ from --input")
    is_jsonl = input_path.endswith((".jsonl", ".json"))
    exact = HashSet()
    near = NearDupIndex(near_dup_threshold, num_perm, shingle_size) if near_dup_threshold > 0 else None
    stats = Counter()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with ExitStack() as files:
        source = files.enter_context(open(input_path, "rb"))
        outputs = {"train": files.enter_context(open(output, "w", encoding="utf-8"))}
        if val_ratio > 0:
            outputs["val"] = files.enter_context(open(val_path(output), "w", encoding="utf-8"))
        bar = files.enter_context(tqdm(total=os.path.getsize(input_path), unit="B", unit_scale=True, desc="clean"))
        for line in source:
            bar.update(len(line))
            if not line.strip():
                continue
            stats["docs_in"] += 1
            doc, reason = read_document(line, is_jsonl)
            if doc is not None:
                stats["chars_in"] += sum(map(len, contents(doc)))
                texts = [clean_text(t, nfkc, keep_html, strip_markdown) for t in contents(doc)]
                doc = with_contents(doc, texts)
                key = dedup_key(doc)
                digest = hash64(key.encode())
                reason = filter_reason(texts, key, digest, exact, near, min_chars, max_chars)
            if reason:
                stats[f"removed_{reason}"] += 1
                continue
            # Split by the top bits of the hash: fixed per text, independent of the table slot (low bits).
            split = "val" if (digest >> 11) / 2**53 < val_ratio else "train"
            outputs[split].write((json.dumps(doc, ensure_ascii=False) if is_jsonl else doc) + "\n")
            stats[f"kept_{split}"] += 1
            stats["chars_out"] += sum(map(len, texts))
    return stats


def filter_reason(texts, key, digest, exact, near, min_chars, max_chars):
    """Why the cleaned document is dropped, or None; kept documents are remembered for dedup."""
    chars = sum(map(len, texts))
    if chars < min_chars:
        return "too_short"
    if max_chars and chars > max_chars:
        return "too_long"
    if digest in exact:
        return "exact_dup"
    if near is not None and near.check_and_add(key):
        return "near_dup"
    exact.add(digest)
    return None


def print_stats(stats, output):
    print(f"{'documents in':<22}{stats['docs_in']:>12,}")
    for reason in ("bad_json", "bad_format", "too_short", "too_long", "exact_dup", "near_dup"):
        print(f"{'  removed ' + reason:<22}{stats['removed_' + reason]:>12,}")
    print(f"{'kept, train':<22}{stats['kept_train']:>12,}  → {output}")
    if stats["kept_val"]:
        print(f"{'kept, validation':<22}{stats['kept_val']:>12,}  → {val_path(output)}")
    print(f"{'characters in / out':<22}{stats['chars_in']:>12,} / {stats['chars_out']:,}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help=".jsonl/.json ({'text'} or {'conversations'}) or plain text")
    parser.add_argument("--output", required=True, help="cleaned file, same format as the input")
    parser.add_argument("--nfkc", action="store_true", help="Unicode NFKC (also turns full-width punctuation ASCII)")
    parser.add_argument("--keep_html", action="store_true", help="keep HTML tags and entities (data about HTML)")
    parser.add_argument("--strip_markdown", action="store_true", help="drop markdown images, link URLs, bold, headings")
    parser.add_argument("--min_chars", type=int, default=1, help="drop documents shorter than this after cleaning")
    parser.add_argument("--max_chars", type=int, default=0, help="drop documents longer than this (0: no limit)")
    parser.add_argument("--near_dup_threshold", type=float, default=0.8, help="MinHash Jaccard threshold (0: off)")
    parser.add_argument("--num_perm", type=int, default=128, help="MinHash permutations")
    parser.add_argument("--shingle_size", type=int, default=3, help="words / Chinese characters per shingle")
    parser.add_argument("--val_ratio", type=float, default=0.0, help="share of documents for <output>.val")
    args = parser.parse_args()
    stats = clean_file(args.input, args.output, args.nfkc, args.keep_html, args.strip_markdown, args.min_chars,
                       args.max_chars, args.near_dup_threshold, args.num_perm, args.shingle_size, args.val_ratio)
    print_stats(stats, args.output)


if __name__ == "__main__":
    main()
