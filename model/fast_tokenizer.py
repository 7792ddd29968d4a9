"""Batch encoding for pre-tokenization: MiniMind's tokenizer run by tiktoken, with the ids of `tokenizers`.

The Hugging Face tokenizer (Rust `tokenizers`) spends most of its time in its pre-tokenizer (Oniguruma
regexes over strings that track every byte's offset): ~1.5 MB/s of jsonl per core. tiktoken runs the same
byte-level BPE ~4x faster (CPU time per MB of mixed English/Chinese jsonl). `BatchEncoder(tokenizer)` uses
it only where the ids are the same for every input, which it checks each time it is built (~3 s):

1. Added tokens ("<|im_start|>", "<think>", ...) are cut out of the text first, by both: tokenizers
   matches them leftmost-longest, tiktoken leftmost-first, the same when none is a prefix of another.
   Merges cannot make them (their ids are not merge results), so BPE never produces them in either.
2. Pre-tokenization. tokenizers splits every numeric character off (Digits, Rust's char::is_numeric),
   then cuts each piece with the Split regex (Oniguruma's \\p{L}, \\p{N}, \\s); tiktoken runs one regex
   (fancy-regex) over the text. `whole_text_regex` writes that regex with the character classes spelled
   out as the code points tokenizers itself puts in them, read from tokenizers over all of Unicode (the
   engines' own Unicode tables differ by some 17,000 recent code points), numeric characters matched
   first, one at a time, and excluded from every other class. A piece of tokenizers ends before a
   numeric character; the one construct that looks past a match, `(?!\\S)`, then sees the end of the
   piece, so the whole-text regex lets it see a numeric character as it sees the end. Both engines
   backtrack the Perl way: alternatives in order, greedy repeats.
3. BPE. tokenizers merges the leftmost pair of lowest merge rank among the listed merges; tiktoken the
   leftmost pair of lowest rank whose concatenation is a token, a token's id being its rank. Merge
   results have increasing ids, so ranks order alike. The merges inside a finished token's span never
   depend on what is outside it, so they are tiktoken's BPE of that token's bytes alone; when that uses
   only listed merges for every token of the vocabulary, every tiktoken run makes only listed merges,
   each also tokenizers' choice (the lowest over a superset, and listed), and both runs end together
   (no pair left for tiktoken, none listed). tiktoken's shortcut for a piece that is a token agrees too.

When a check fails, or tiktoken is not installed, the Rust tokenizer encodes (the same ids, slower) and
`engine`/`why` say so.
"""
import json
from functools import cache

import numpy as np

# The Split regex of MiniMind's tokenizer (model/tokenizer/tokenizer.json), the only one proven here.
SPLIT_REGEX = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def _byte_decoder():
    """GPT-2's byte-level alphabet, reversed: the character a tokenizer.json token uses for each byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _bpe_merges(piece, ranks):
    """tiktoken's BPE of one piece: (final parts, the pairs it merged, in order)."""
    parts, made = [bytes([b]) for b in piece], []
    while len(parts) > 1:
        candidates = [(ranks[p + q], k) for k, (p, q) in enumerate(zip(parts, parts[1:])) if p + q in ranks]
        best = min(candidates, default=None)
        if best is None:
            break
        k = best[1]
        made.append((parts[k], parts[k + 1]))
        parts[k:k + 2] = [parts[k] + parts[k + 1]]
    return parts, made


def _unicode_blocks(size=0x10000):
    """All code points (surrogates excepted) as strings of `size`: tokenizers' probes need ~100 bytes a character."""
    for start in range(0, 0x110000, size):
        yield "".join(chr(c) for c in range(start, start + size) if not 0xD800 <= c < 0xE000)


@cache  # they depend on the installed tokenizers only
def tokenizers_classes():
    """{name: set of code points} as tokenizers sees them: Oniguruma's \\p{L}, \\p{N}, \\s, and Digits' numerics."""
    from tokenizers import Regex, pre_tokenizers

    def members(text, cls):  # the characters of text in cls, kept by removing runs of the others
        split = pre_tokenizers.Split(Regex(f"(?:(?!{cls})[\\s\\S])+"), "removed")
        return "".join(s for s, _ in split.pre_tokenize_str(text))

    some, numeric = [], []
    digits = pre_tokenizers.Digits(individual_digits=False)
    for block in _unicode_blocks():
        some.append(members(block, r"[\p{L}\p{N}\s]"))  # the slow pass over all of Unicode, then small ones
        runs = digits.pre_tokenize_str("a" + block)  # not numeric, numeric, not numeric, ...
        numeric.append("".join(s for s, _ in runs[1::2]))
    some = "".join(some)
    classes = {name: set(members(some, cls)) for name, cls in (("L", r"\p{L}"), ("N", r"\p{N}"), ("s", r"\s"))}
    classes["digit"] = set("".join(numeric))
    return classes


def _char_class(chars, negate=False, extra=""):
    """A fancy-regex character class of exactly these characters (plus `extra`, written as regex)."""
    points, ranges = sorted(map(ord, chars)), []
    for c in points:
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    body = "".join(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges)
    return f"[{'^' if negate else ''}{extra}{body}]"


def whole_text_regex(classes):
    """SPLIT_REGEX after Digits, as one regex over the whole text with tokenizers' character classes."""
    digit, L, N, s = classes["digit"], classes["L"], classes["N"], classes["s"]
    d, letters, space = _char_class(digit), _char_class(L - digit), _char_class(s - digit)
    not_lnd = _char_class(L | N | digit, negate=True, extra=r"\r\n")
    not_slnd = _char_class(s | L | N | digit, negate=True)
    not_sd = _char_class(s | digit, negate=True)
    # \p{N} outside the numerics (an empty class, dropped, with today's tables: numerics cover \p{N})
    numbers = [_char_class(N - digit)] if N - digit else []
    return "|".join([d, "'(?i:[sdmt]|ll|ve|re)", f"{not_lnd}?{letters}+", *numbers, f" ?{not_slnd}+[\\r\\n]*",
                     f"{space}*[\\r\\n]+", f"{space}+(?!{not_sd})", f"{space}+"])


@cache
def _contractions_agree():
    """Does fancy-regex fold `'(?i:[sdmt]|ll|ve|re)` as Oniguruma does, over every code point (and pairs)?"""
    import tiktoken
    from tokenizers import Regex, pre_tokenizers
    bytes_only = {bytes([b]): b for b in range(256)}

    def onig(pattern, text):  # the matches: the pieces without the separating space
        pieces = pre_tokenizers.Split(Regex(pattern), "isolated").pre_tokenize_str(text)
        return "".join(s for s, _ in pieces if s.startswith("'") and " " not in s)

    def fancy(pattern, text):  # tiktoken drops what its regex does not match
        enc = tiktoken.Encoding("probe", pat_str=pattern, mergeable_ranks=bytes_only, special_tokens={})
        return bytes(enc._encode_only_native_bpe(text)).decode()

    # Each code point after an apostrophe: which fold to one of the letters (or to two, "ll", "ve", "re")?
    letters, matched = r"'(?i:[sdmtlvre]|ll|ve|re)", ""
    for block in _unicode_blocks(0x8000):
        singles = "".join(f"'{c} " for c in block)
        found = onig(letters, singles)
        if found != fancy(letters, singles):
            return False
        matched += found
    folds = matched[1::2]  # every match is an apostrophe and one character
    pairs = "".join(f"'{x}{y} " for x in folds for y in folds)
    contraction = r"'(?i:[sdmt]|ll|ve|re)"
    return onig(contraction, pairs) == fancy(contraction, pairs)


def tiktoken_encoding(tokenizer):
    """(tiktoken Encoding with the Rust tokenizer's ids, None), or (None, why it cannot have them)."""
    try:
        import tiktoken
    except ImportError:
        return None, "tiktoken is not installed"
    spec = json.loads(tokenizer.to_str())
    model, pre = spec["model"], spec["pre_tokenizer"] or {}
    shape = [(s["type"], s.get("individual_digits"), s.get("pattern"), s.get("behavior"), s.get("invert"),
              s.get("add_prefix_space"), s.get("use_regex")) for s in pre.get("pretokenizers", [])]
    if (model["type"] != "BPE" or model.get("dropout") or model.get("byte_fallback") or model.get("ignore_merges")
            or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") or spec["normalizer"]
            or pre.get("type") != "Sequence"
            or shape != [("Digits", True, None, None, None, None, None),
                         ("Split", None, {"Regex": SPLIT_REGEX}, "Isolated", False, None, None),
                         ("ByteLevel", None, None, None, None, False, False)]):
        return None, "not MiniMind's byte-level BPE pipeline (Digits, its Split regex, ByteLevel)"
    added = {t["content"]: t["id"] for t in spec["added_tokens"]}
    if tokenizer.encode_special_tokens:
        return None, "special tokens in the text are encoded as text (split_special_tokens)"
    if any(t["lstrip"] or t["rstrip"] or t["single_word"] for t in spec["added_tokens"]) or \
            any(a != b and b.startswith(a) for a in added for b in added):
        return None, "added tokens with strip/word options, or one a prefix of another"
    to_byte, vocab = _byte_decoder(), model["vocab"]
    if any(c not in to_byte for s in vocab if s not in added for c in s):
        return None, "a vocabulary token outside the byte-level alphabet"
    ranks = {bytes(to_byte[c] for c in s): i for s, i in vocab.items() if s not in added}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    made = [vocab.get(a + b) for a, b in merges]
    if len(ranks) != len(vocab) - len(set(added) & set(vocab)) or any(bytes([b]) not in ranks for b in range(256)) \
            or None in made or any(x >= y for x, y in zip(made, made[1:])) or set(made) & set(added.values()):
        return None, "merge results not in the vocabulary in merge order, or a byte missing"
    listed = {(bytes(to_byte[c] for c in a), bytes(to_byte[c] for c in b)) for a, b in merges}
    for token in ranks:
        parts, pairs = _bpe_merges(token, ranks)
        if parts != [token] or not all(p in listed for p in pairs):
            return None, f"BPE of token {token!r} alone does not rebuild it from listed merges"
    try:  # the probes use private tiktoken API (_encode_only_native_bpe): a newer tiktoken may lack it
        if not _contractions_agree():
            return None, "tokenizers and tiktoken fold the contractions differently"
        pattern = whole_text_regex(tokenizers_classes())
        return tiktoken.Encoding("minimind", pat_str=pattern, mergeable_ranks=ranks, special_tokens=added), None
    except Exception as e:
        return None, f"checking the regex engines failed: {e!r}"


class BatchEncoder:
    """texts → (flat ids, per-text lengths) without bos/eos, as `tokenizer(texts, add_special_tokens=False)`.

    tokenizer: a transformers fast tokenizer or its Rust `tokenizers.Tokenizer`. Special-token strings in
    the text become their ids, as in the transformers call. use_tiktoken=False skips the checks (~3 s).
    """

    def __init__(self, tokenizer, use_tiktoken=True):
        from tokenizers import Tokenizer
        # A copy without truncation or padding: transformers turns both off for a call that does not ask for them.
        rust = getattr(tokenizer, "backend_tokenizer", tokenizer)
        self.rust = Tokenizer.from_str(rust.to_str())
        self.rust.no_truncation()
        self.rust.no_padding()
        self.rust.encode_special_tokens = rust.encode_special_tokens  # a setting to_str does not save
        self.vocab_size = self.rust.get_vocab_size(with_added_tokens=True)
        self.tiktoken, self.why = tiktoken_encoding(self.rust) if use_tiktoken else (None, "not asked for")
        self.engine = "tiktoken" if self.tiktoken else "tokenizers"

    def __call__(self, texts, dtype):
        if self.tiktoken is not None:
            ids = [self.tiktoken.encode_to_numpy(t, allowed_special="all") for t in texts]
        else:  # what the transformers call runs, without the offsets nobody reads here
            ids = [np.array(e.ids, np.uint32) for e in self.rust.encode_batch_fast(texts, add_special_tokens=False)]
        lengths = np.array([len(i) for i in ids], np.int64)
        return (np.concatenate(ids).astype(dtype) if ids else np.zeros(0, dtype)), lengths
