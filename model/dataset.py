"""Datasets for every training stage: jsonl lines in, fixed-length tensors out.

Each class reads one format of dataset/README.md and returns tensors the Hugging Face way:
`input_ids` right-padded with the pad id to exactly `max_seq_len`, and `labels` equal to
`input_ids` where a token is learned and -100 elsewhere (not shifted: the model shifts).

The published files are 1-10 GB, so nothing reads them into Python strings: `JsonlIndex`
finds where every line starts in one numpy pass, and `__getitem__` reads and parses only
the line it needs. Pretraining can also read the compact binary of scripts/pretokenize.py.
Every line is checked when a dataset is made (once per file: the result is cached with the
index), so bad data stops a run before its first step, not in the middle of it.
"""
import hashlib
import json
import os
import sys
from itertools import islice

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from . import toolcall
from .reasoning import TAGS as REASON_TAGS
from .vision import IMAGE_MARKER, VisionError, encode_with_images, load_images, pixel_values
from .toolcall import ToolCallError, normalize_messages, tool_names

IGNORE = -100  # label of a token the loss skips (the default ignore_index of cross_entropy)
ROLES = ("system", "user", "assistant", "tool")
MAX_WARNINGS = 10  # bad lines reported one by one before counting silently
PROGRESS_BYTES = 1 << 26  # files from this size (64 MB) show a progress bar while their lines are checked


class DataError(ValueError):
    """A bad sample; the message names file and line, e.g. 'sft.jsonl:12: conversation has no assistant message'."""


# --- finding lines in a large file -----------------------------------------------------

class JsonlIndex:
    """Byte offsets of the non-blank lines of a text file, found in one vectorised pass.

    `bounds[k]` is where line k (0-based) starts and `bounds[-1]` is the file size; `rows`
    lists the non-blank lines, so sample i is line rows[i], reported as line rows[i] + 1.
    That is 16 bytes per line (160 MB for 10 M lines), cached beside the file as
    `<file>.lines.npz` and rebuilt when the file's size or mtime changes. The results of
    `check` are cached in the same file, so they too last until the file changes.
    """

    def __init__(self, path, cache=True):
        self.path, self.cache = str(path), cache
        stat = os.stat(self.path)
        self.stamp = np.array([stat.st_size, stat.st_mtime_ns], np.int64)
        self.cache_path = self.path + ".lines.npz"
        self.checks = {}  # check key -> (positions of the bad lines, messages of the first MAX_WARNINGS)
        if not (cache and self._load_cache()):
            self.bounds, self.rows = scan_lines(self.path)
            if cache:
                self._save_cache()
        self._data = None  # the file as a read-only memmap, opened on first use in each process

    def __len__(self):
        return len(self.rows)

    def _memmap(self):
        if self._data is None:
            self._data = np.memmap(self.path, np.uint8, mode="r")
        return self._data

    def line(self, i):
        """(1-based line number, raw bytes) of the i-th non-blank line."""
        k = int(self.rows[i])
        return k + 1, self._memmap()[self.bounds[k]:self.bounds[k + 1]].tobytes()

    def lines(self, positions=None, block=4096):
        """(line number, raw bytes) of the non-blank lines at `positions` (ascending; default all), read
        `block` lines at a time: a full pass ~3x faster than calling line() for each."""
        positions = np.arange(len(self)) if positions is None else positions
        for a in range(0, len(positions), block):
            rows = self.rows[positions[a:a + block]]
            starts, ends = self.bounds[rows], self.bounds[rows + 1]
            base = int(starts[0])
            buffer = self._memmap()[base:int(ends[-1])].tobytes()
            for k, start, end in zip(rows.tolist(), (starts - base).tolist(), (ends - base).tolist()):
                yield k + 1, buffer[start:end]

    def check(self, key, check_line, desc="check"):
        """(positions of the lines that `check_line(raw)` rejects with DataError, 'file:line: why' of the
        first MAX_WARNINGS of them). One pass over the file, then cached under `key`, which must name
        everything the check depends on (its code, the tokenizer's chat markup...)."""
        if key not in self.checks:
            bad, messages = [], []
            lines = tqdm(self.lines(), f"{desc} {self.path}", len(self), unit=" lines", leave=False,
                         disable=self.stamp[0] < PROGRESS_BYTES)
            for position, (lineno, raw) in enumerate(lines):
                try:
                    check_line(raw)
                except DataError as e:
                    bad.append(position)
                    if len(messages) < MAX_WARNINGS:
                        messages.append(f"{self.path}:{lineno}: {e}")
            self.checks[key] = np.array(bad, np.int64), messages
            if self.cache:
                self._save_cache()
        return self.checks[key]

    def __getstate__(self):
        # A memmap pickles as a full copy: DataLoader workers started by spawn reopen it instead.
        return {**self.__dict__, "_data": None}

    def _load_cache(self):
        try:
            with np.load(self.cache_path) as cached:
                if not np.array_equal(cached["stamp"], self.stamp):
                    return False
                self.bounds, self.rows = cached["bounds"], cached["rows"]
                for name in cached.files:
                    if name.startswith("bad_"):
                        key = name[len("bad_"):]
                        self.checks[key] = cached[name], cached["why_" + key].tolist()
                return True
        except (OSError, KeyError, ValueError):
            return False

    def _save_cache(self):
        # temp + rename: several ranks of one run may build the same index at once.
        tmp = f"{self.cache_path}.{os.getpid()}.tmp.npz"
        checks = {}
        for key, (bad, messages) in self.checks.items():
            checks["bad_" + key], checks["why_" + key] = bad, np.array(messages, dtype=str)
        try:
            np.savez(tmp, stamp=self.stamp, bounds=self.bounds, rows=self.rows, **checks)
            os.replace(tmp, self.cache_path)
        except OSError:  # a read-only dataset folder: keep the index in memory only
            pass


def scan_lines(path, chunk_bytes=1 << 26):
    """(bounds, rows) of JsonlIndex: newline positions found 64 MB at a time with numpy."""
    size = os.path.getsize(path)
    if size == 0:
        return np.zeros(1, np.int64), np.zeros(0, np.int64)
    data = np.memmap(path, np.uint8, mode="r")
    newlines = [np.flatnonzero(data[a:a + chunk_bytes] == ord("\n")) + a for a in range(0, size, chunk_bytes)]
    starts = np.concatenate([[0], np.concatenate(newlines) + 1]).astype(np.int64)
    if starts[-1] == size:  # the file ends with a newline: no line starts there
        starts = starts[:-1]
    bounds = np.append(starts, size)
    # A blank line (empty, "\r", spaces) starts with a whitespace byte; jsonl lines start
    # with "{", so only the rare candidates are checked in Python, by the rule bytes.strip() uses.
    whitespace = np.frombuffer(b" \t\n\r\x0b\x0c", np.uint8)
    maybe_blank = np.flatnonzero(np.isin(data[starts], whitespace))
    keep = np.ones(len(starts), bool)
    for k in maybe_blank:
        keep[k] = bool(data[bounds[k]:bounds[k + 1]].tobytes().strip())
    return bounds, np.flatnonzero(keep)


# --- checking rows ----------------------------------------------------------------------

def parse_row(raw):
    """One jsonl line (bytes) → dict, or DataError. A parquet row is a dict already."""
    if isinstance(raw, dict):
        return raw
    try:
        row = json.loads(raw)
    except ValueError as e:  # also catches invalid UTF-8
        raise DataError(f"malformed JSON ({e})") from None
    if not isinstance(row, dict):
        raise DataError(f"expected a JSON object, got {type(row).__name__}")
    return row


def get_field(row, name, kind):
    if name not in row:
        raise DataError(f"missing field '{name}'")
    if not isinstance(row[name], kind):
        raise DataError(f"field '{name}' must be a {kind.__name__}, got {type(row[name]).__name__}")
    return row[name]


def chat_messages(messages) -> tuple[list, list | None]:
    """A row's conversation, checked, with minimind's JSON-string `tools` / `tool_calls` parsed: (messages,
    tools on offer or None), ready for the chat template."""
    try:
        messages, tools = normalize_messages(messages)
    except ToolCallError as e:
        raise DataError(str(e)) from None
    return messages, tools


def check_conversation(messages, need_assistant=True):
    if not messages:
        raise DataError("empty conversation")
    for n, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            raise DataError(f"message {n} is not a JSON object")
        if message.get("role") not in ROLES:
            raise DataError(f"message {n} has role {message.get('role')!r}, expected one of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise DataError(f"message {n} has no string 'content'")
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise DataError("conversation has no assistant message")


def _code_fingerprint():
    """Hash of the code that checks rows (this module and the tool-call parser): a check result cached with
    the line index is reused only while that code is unchanged."""
    digest = hashlib.sha256()
    for module in (sys.modules[__name__], toolcall):
        with open(module.__file__, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


CODE_FINGERPRINT = _code_fingerprint()


class _JsonlDataset(Dataset):
    """Map-style dataset over the good lines of a jsonl file; subclasses define `_check(row)`, which returns
    the row's checked content or raises DataError, and `_encode(row)`, which starts with `_check`.

    Every line is checked when the dataset is made, before a run trains or writes anything: `_check` runs over
    the whole file (JSON, fields, types, roles, an assistant turn: all that needs no tokenizing), ~50-90k
    lines/s, and its result is cached with the line index, so a 10 GB file is checked once, not every run.
    Bad lines raise one DataError naming the first MAX_WARNINGS as file:line and counting all of them. With
    skip_bad=True they are left out instead: len() excludes them, so batches never meet them and the data
    order (and resume) depend on the good lines only.

    What only tokenizing shows (a reply cut away by max_seq_len, an over-long RL prompt) is found when the
    sample is read: DataError, or with skip_bad the next good sample instead (deterministic, so resuming at a
    sample index replays the same data), recorded in `bad_lines` ({line number: message}) by the process
    that met it.
    """

    def __init__(self, path, tokenizer, max_samples=None, skip_bad=False, cache_index=True):
        self.path, self.tokenizer, self.skip_bad = str(path), tokenizer, skip_bad
        self.index = self._index(path, cache_index)
        self.samples = self._good_lines()[:max_samples]  # sample i is index line samples[i]
        self.size = len(self.samples)

    def _good_lines(self):
        """Positions of the lines that pass `_check`, after raising (or, with skip_bad, reporting) the rest."""
        key = hashlib.sha256(self._check_key().encode()).hexdigest()[:16]
        bad, messages = self.index.check(key, lambda raw: self._check(parse_row(raw)))
        self.bad_lines = {int(self.index.rows[k]) + 1: m for k, m in zip(bad.tolist(), messages)}
        self.skipped = len(bad)  # lines left out by the check
        if self.skipped:
            listing = "".join(f"\n  {m}" for m in messages)
            listing += f"\n  {self.skipped} bad line{'s' if self.skipped > 1 else ''} of {len(self.index)}"
            if not self.skip_bad:
                raise DataError(f"bad lines in {self.path} (fix them, or pass --skip_bad to train without them):"
                                + listing)
            print(f"skipping bad lines of {self.path} (--skip_bad):{listing}", file=sys.stderr)
        return np.delete(np.arange(len(self.index)), bad)

    def _index(self, path, cache):
        return JsonlIndex(path, cache)

    def _check_key(self):
        """Names the check in the index cache: its code, plus (in subclasses) what else it depends on."""
        return f"{type(self)._check.__qualname__} {CODE_FINGERPRINT}"

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        if not 0 <= i < len(self):
            raise IndexError(i)
        for j in range(len(self)):
            lineno, raw = self.index.line(self.samples[(i + j) % len(self)])
            try:
                return self._encode(parse_row(raw))
            except DataError as e:
                self._bad_line(lineno, e)
        raise DataError(f"{self.path}: no valid sample in its first {len(self)} lines")

    def _bad_line(self, lineno, error):
        message = f"{self.path}:{lineno}: {error}"
        if not self.skip_bad:
            raise DataError(message) from None
        if lineno not in self.bad_lines and len(self.bad_lines) < MAX_WARNINGS:
            print(f"skipping {message}", file=sys.stderr)
        self.bad_lines[lineno] = message

    def _check(self, row):
        raise NotImplementedError

    def _encode(self, row):
        raise NotImplementedError


# --- pretraining ------------------------------------------------------------------------

def pretrain_text(row):
    return get_field(row, "text", str)


def token_dtype(vocab_size):
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def tokenizer_fingerprint(tokenizer):
    """Short hash of the vocabulary, stored with pre-tokenized data to catch a swapped tokenizer."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return hashlib.sha256(vocab.encode()).hexdigest()[:16]


def tokenize_documents(tokenizer, lines, source, skip_bad=False, batch_size=1024):
    """Tokenize pretraining lines, each document WITHOUT bos/eos (added when a sample is made).

    tokenizer: a transformers tokenizer, or a model.fast_tokenizer.BatchEncoder (scripts/pretokenize.py
    builds one: tiktoken with proven-equal ids, ~4x faster); either way the ids are those of
    `tokenizer(texts, add_special_tokens=False)`, special-token strings in the text included.
    lines: iterable of (line number, raw bytes); blank lines are skipped, as JsonlIndex does.
    Returns (flat token ids, document lengths, {bad line number: message}). Ids go to numpy
    one batch at a time: Python lists of ints cost ~36 bytes per token.
    """
    from .fast_tokenizer import BatchEncoder
    encode = tokenizer if isinstance(tokenizer, BatchEncoder) else BatchEncoder(tokenizer, use_tiktoken=False)
    dtype = token_dtype(encode.vocab_size)
    parts, lengths, bad = [], [], {}
    lines = iter(lines)
    while batch := list(islice(lines, batch_size)):
        texts = []
        for lineno, raw in batch:
            if not raw.strip():
                continue
            try:
                texts.append(pretrain_text(parse_row(raw)))
            except DataError as e:
                if not skip_bad:
                    raise DataError(f"{source}:{lineno}: {e}") from None
                bad[lineno] = f"{source}:{lineno}: {e}"
        tokens, doc_lengths = encode(texts, dtype)
        parts.append(tokens)
        lengths.append(doc_lengths)
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype)
    return tokens, np.concatenate(lengths) if lengths else np.zeros(0, np.int64), bad


def load_pretokenized(path, tokenizer):
    """(meta, document offsets) of scripts/pretokenize.py's `<name>.bin/.idx/.json` triple."""
    stem = str(path)[:-len(".bin")]
    with open(stem + ".json") as f:
        meta = json.load(f)
    if meta["tokenizer_fingerprint"] != tokenizer_fingerprint(tokenizer):
        raise DataError(f"{path}: pre-tokenized with another tokenizer ({meta['tokenizer']}); "
                        "run scripts/pretokenize.py again")
    offsets = np.fromfile(stem + ".idx", np.int64)
    return meta, offsets


class PretrainDataset(_JsonlDataset):
    """Pretraining samples: every token is learned, padding is not.

    path: a jsonl of {"text": ...} tokenized on the fly, or (ending in .bin) the binary of
    scripts/pretokenize.py read through a memmap; both give the same ids.
    pack=False, minimind's convention: a sample is one document, bos + ids + eos, cut to
    max_seq_len (a cut document loses its eos: eos marks a real end) and right-padded.
    Simple, and every sample starts at a document start, but short documents waste compute
    on padding.
    pack=True, nanoGPT's: documents are joined into one stream, bos ids eos bos ids eos ...,
    cut into windows of max_seq_len with no padding; tokens attend across document boundaries
    inside a window (the bos/eos markers tell the model where one ends). Windows need every
    document's length up front, so a jsonl is tokenized at start-up: pre-tokenize large files.
    """

    def __init__(self, path, tokenizer, max_seq_len=512, pack=False, max_samples=None,
                 skip_bad=False, cache_index=True):
        self.path, self.tokenizer, self.max_seq_len, self.pack = str(path), tokenizer, max_seq_len, pack
        self.bos, self.eos, self.pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
        self.bad_lines, self.skipped, self.tokens, self.offsets = {}, 0, None, None
        if self.path.endswith(".bin"):
            self.meta, self.offsets = load_pretokenized(self.path, tokenizer)
            n = len(self.offsets) - 1
        else:
            super().__init__(path, tokenizer, None, skip_bad, cache_index)  # checks every line
            n = len(self.samples)
            if pack:  # the good lines only: tokenizing them raises nothing
                lines = tqdm(self.index.lines(self.samples), f"tokenize {self.path}", n, unit=" docs", leave=False)
                self.tokens, lengths, _ = tokenize_documents(tokenizer, lines, self.path)
                self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        if pack:
            # Document k starts at stream position offsets[k] + 2k: each earlier one added bos and eos.
            self.doc_starts = self.offsets[:-1] + 2 * np.arange(len(self.offsets) - 1)
            n = int(self.offsets[-1] + 2 * (len(self.offsets) - 1)) // max_seq_len  # drop the last partial window
        self.size = n if max_samples is None else min(n, max_samples)

    def __getitem__(self, i):
        if self.offsets is None:  # on-the-fly documents: the base class reads line i
            return super().__getitem__(i)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._sample(self._window(i) if self.pack else self._document(i))

    def _check(self, row):
        return pretrain_text(row)

    def _encode(self, row):
        ids = self.tokenizer.encode(self._check(row), add_special_tokens=False)
        return self._sample([self.bos] + ids + [self.eos])

    def _document(self, k):
        if self.tokens is None:  # opened lazily so that DataLoader workers do not pickle a copy
            self.tokens = np.memmap(self.path, self.meta["dtype"], mode="r")
        return [self.bos] + self.tokens[self.offsets[k]:self.offsets[k + 1]].tolist() + [self.eos]

    def _window(self, i):
        start = i * self.max_seq_len
        k = int(np.searchsorted(self.doc_starts, start, side="right")) - 1
        ids, skip = [], start - int(self.doc_starts[k])
        while len(ids) < self.max_seq_len:
            ids += self._document(k)[skip:]
            k, skip = k + 1, 0
        return ids

    def _sample(self, ids):
        ids = ids[:self.max_seq_len]
        labels = ids + [IGNORE] * (self.max_seq_len - len(ids))
        ids = ids + [self.pad] * (self.max_seq_len - len(ids))
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}

    def __getstate__(self):
        state = dict(self.__dict__)
        if self.path.endswith(".bin"):
            state["tokens"] = None
        return state


# --- chat stages: SFT, DPO, reasoning, RL prompts ----------------------------------------

def generation_prompt(tokenizer):
    """What the chat template puts before an assistant reply, e.g. '<|im_start|>assistant\\n'."""
    messages = [{"role": "user", "content": "x"}]
    without = tokenizer.apply_chat_template(messages, tokenize=False)
    with_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not with_prompt.startswith(without) or with_prompt == without:
        raise ValueError("the tokenizer's chat template adds no generation prompt after the messages")
    return with_prompt[len(without):]


class _ChatDataset(_JsonlDataset):
    """Renders conversations with the tokenizer's chat template and masks all but assistant replies."""

    def __init__(self, path, tokenizer, max_seq_len, max_samples=None, skip_bad=False, cache_index=True):
        self.max_seq_len = max_seq_len
        self.pad, self.eos = tokenizer.pad_token_id, tokenizer.eos_token_id
        self.header = generation_prompt(tokenizer)  # before the base class checks lines with it
        self.header_ids = tokenizer.encode(self.header, add_special_tokens=False)
        super().__init__(path, tokenizer, max_samples, skip_bad, cache_index)

    def _check_key(self):
        return f"{super()._check_key()} {self.header!r}"

    def _chat(self, messages, need_assistant=True):
        """(messages, tools) of a conversation, checked and ready for the chat template."""
        messages, tools = chat_messages(messages)
        check_conversation(messages, need_assistant)
        for n, message in enumerate(messages, 1):
            if self.header in message["content"]:  # would split the rendered chat at the wrong place
                raise DataError(f"message {n} contains the chat markup {self.header!r}")
        return messages, tools

    def _tokenize_chat(self, messages, tools):
        """(ids, labels) of a whole conversation: labels cover each reply through its <|im_end|>.

        The template renders once; the text is then encoded piece by piece, split at each
        assistant header. The header thus keeps its own tokens even when a reply begins with
        whitespace that BPE would merge into the header's "\\n": the same tokens the model
        sees at inference, where the prompt ends with the header. Otherwise (the usual case)
        the ids equal those of encoding the whole text at once.
        """
        pieces = self.tokenizer.apply_chat_template(messages, tools=tools, tokenize=False).split(self.header)
        replies = sum(m["role"] == "assistant" for m in messages)
        if len(pieces) - 1 != replies:
            raise DataError(f"found {len(pieces) - 1} assistant headers for {replies} assistant messages "
                            "(does a message contain chat markup?)")
        ids = self._encode_text(pieces[0])
        labels = [IGNORE] * len(ids)
        for piece in pieces[1:]:
            body = self._encode_text(piece)
            # The reply runs through its <|im_end|>; the "\n" after it belongs to the template.
            reply = body.index(self.eos) + 1 if self.eos in body else len(body)
            ids += self.header_ids + body
            labels += [IGNORE] * len(self.header_ids) + body[:reply] + [IGNORE] * (len(body) - reply)
        return ids, labels

    def _encode_text(self, text):
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _fit(self, ids, labels):
        """Cut to max_seq_len, right-pad; a sample with nothing left to learn is an error."""
        ids, labels = ids[:self.max_seq_len], labels[:self.max_seq_len]
        if all(label == IGNORE for label in labels):
            raise DataError(f"over-long: nothing left to learn after truncation to {self.max_seq_len} tokens")
        padding = self.max_seq_len - len(ids)
        return torch.tensor(ids + [self.pad] * padding), torch.tensor(labels + [IGNORE] * padding)


class SFTDataset(_ChatDataset):
    """{"conversations": [{"role", "content"}, ...]} → input_ids, labels (assistant replies only)."""

    def _check(self, row):
        return self._chat(get_field(row, "conversations", list))

    def _encode(self, row):
        input_ids, labels = self._fit(*self._tokenize_chat(*self._check(row)))
        return {"input_ids": input_ids, "labels": labels}


class DPODataset(_ChatDataset):
    """{"chosen": [messages], "rejected": [messages]} → chosen_/rejected_ input_ids and labels,
    padded to the same length so a trainer can concatenate them into one batch."""

    def _check(self, row):
        chats = {side: get_field(row, side, list) for side in ("chosen", "rejected")}
        return {side: self._side(side, lambda: self._chat(messages)) for side, messages in chats.items()}

    def _encode(self, row):
        sample = {}
        for side, (messages, tools) in self._check(row).items():
            ids, labels = self._side(side, lambda: self._fit(*self._tokenize_chat(messages, tools)))
            sample[f"{side}_input_ids"], sample[f"{side}_labels"] = ids, labels
        return sample

    @staticmethod
    def _side(side, fn):
        """fn(), with a DataError's message prefixed by the side it is about."""
        try:
            return fn()
        except DataError as e:
            raise DataError(f"{side}: {e}") from None


class ReasonDataset(SFTDataset):
    """SFT plus `loss_weights`: 1 on learned tokens, `tag_weight` on the tokens of <think>,
    </think>, <answer>, </answer> inside replies, 0 elsewhere (reasoning distillation
    up-weights the format so the small model learns to keep it)."""

    def __init__(self, path, tokenizer, max_seq_len, tag_weight=10.0, max_samples=None, skip_bad=False,
                 cache_index=True):
        super().__init__(path, tokenizer, max_seq_len, max_samples, skip_bad, cache_index)
        self.tag_weight = tag_weight
        # One id when a tag is an added token, several BPE pieces otherwise; a tag whose pieces
        # merge with neighbouring text (e.g. " <think>") is not found, and keeps weight 1.
        self.tag_ids = [np.array(tokenizer.encode(tag, add_special_tokens=False)) for tag in REASON_TAGS]

    def _encode(self, row):
        sample = super()._encode(row)
        ids, learned = sample["input_ids"].numpy(), (sample["labels"] != IGNORE).numpy()
        weights = learned.astype(np.float32)
        for tag in self.tag_ids:
            windows = np.lib.stride_tricks.sliding_window_view(ids, len(tag))
            for start in np.flatnonzero((windows == tag).all(axis=1)):
                span = slice(start, start + len(tag))
                weights[span] = np.where(learned[span], self.tag_weight, 0.0)
        sample["loss_weights"] = torch.from_numpy(weights)
        return sample


class RLPromptDataset(_ChatDataset):
    """{"conversations": [..., {"role": "user"}, optional empty assistant], "answer": optional}
    → prompt (text with the generation prompt), prompt_ids (unpadded), answer ("" when absent), tools (the names
    of the functions the system turn offers, [] when none).
    The training loader batches them with `collate`, as lists."""

    def __init__(self, path, tokenizer, max_prompt_len=512, max_samples=None, skip_bad=False, cache_index=True):
        super().__init__(path, tokenizer, max_prompt_len, max_samples, skip_bad, cache_index)

    def _check(self, row):
        """(messages, tools, answer) of a prompt row."""
        messages = get_field(row, "conversations", list)
        if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant" \
                and messages[-1].get("content") in (None, "", "None"):
            messages = messages[:-1]  # minimind's RLAIF rows end with an empty reply to fill in ("" or "None")
        messages, tools = self._chat(messages, need_assistant=False)
        if messages[-1]["role"] not in ("user", "tool"):
            raise DataError(f"prompt must end with a user or tool message, not {messages[-1]['role']}")
        answer = row.get("answer", "")
        if not isinstance(answer, (str, int, float)):
            raise DataError(f"field 'answer' must be a string or number, got {type(answer).__name__}")
        return messages, tools, str(answer)

    def _encode(self, row):
        messages, tools, answer = self._check(row)
        prompt = self.tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        if len(ids) > self.max_seq_len:
            raise DataError(f"over-long: prompt has {len(ids)} tokens, max_prompt_len is {self.max_seq_len}")
        return {"prompt": prompt, "prompt_ids": torch.tensor(ids), "answer": answer, "tools": tool_names(tools)}

    def _checked_rows(self):
        """(line number, (messages, tools, answer)) of every sample: the raw rows, no tokenizing."""
        for lineno, raw in self.index.lines(self.samples):
            yield lineno, self._check(parse_row(raw))

    def check_answers(self):
        """Raise DataError naming the first line without a target answer (the accuracy reward needs one on
        every row), so a run fails before it trains or writes anything."""
        for lineno, (_, _, answer) in self._checked_rows():
            if not answer.strip():
                raise DataError(f"{self.path}:{lineno}: no 'answer' (the accuracy reward needs a target on every row)")

    def check_tools(self, available):
        """Raise DataError naming the first line whose system turn offers a function not in `available` (the
        rollouts could not run its calls)."""
        for lineno, (_, tools, _) in self._checked_rows():
            missing = sorted(set(tool_names(tools)) - set(available))
            if missing:
                raise DataError(f"{self.path}:{lineno}: offers {', '.join(missing)}, which --tools / --mcp do not "
                                f"provide (have: {', '.join(available) or 'none'})")

    def collate(self, batch):
        """A batch as lists: the prompts' token ids (unpadded: the rollout engine takes each as it is), their
        texts and target answers."""
        return {"prompt_ids": [s["prompt_ids"].tolist() for s in batch], "prompts": [s["prompt"] for s in batch],
                "answers": [s["answer"] for s in batch], "tools": [s["tools"] for s in batch]}


# --- vision-language (MiniMind-V) --------------------------------------------------------

class VLMDataset(SFTDataset):
    """minimind-v's data → input_ids, labels (assistant replies only) and pixel_values, one image per `<image>`
    tag of the user turns, each tag expanded to the model's run of image slots (`model.model_vlm`).

    Two layouts: jsonl whose `image` field names files in `images_path` (several: a list, or comma-separated),
    and parquet (newer minimind-v) with `conversations` as a JSON string and the images' bytes in `image_bytes`.
    A missing image or a tag count that differs from the image count is found when the dataset is made; an
    image that cannot be decoded, or slots cut by max_seq_len, when the sample is read: each an error naming
    file and line, or with skip_bad left out and counted.
    """

    def __init__(self, path, tokenizer, max_seq_len, image_processor=None, image_tokens=1, image_token_id=None,
                 images_path=None, **kwargs):
        self.image_processor, self.image_tokens = image_processor, image_tokens
        self.image_token_id = len(tokenizer) if image_token_id is None else image_token_id
        default_images = os.path.join(os.path.dirname(os.path.abspath(path)), "images")
        self.images_path = images_path or (default_images if os.path.isdir(default_images)
                                           else os.path.dirname(os.path.abspath(path)))
        super().__init__(path, tokenizer, max_seq_len, **kwargs)

    def _index(self, path, cache):
        return ParquetIndex(path) if str(path).endswith(".parquet") else JsonlIndex(path, cache)

    def _check_key(self):
        return f"{super()._check_key()} {self.images_path!r}"

    def _check(self, row):
        conversations = row.get("conversations")
        if isinstance(conversations, str):  # parquet stores the conversation as JSON text
            try:
                conversations = json.loads(conversations)
            except ValueError as e:
                raise DataError(f"field 'conversations' is not valid JSON ({e})") from None
        messages, tools = self._chat(get_field({"conversations": conversations}, "conversations", list))
        for n, message in enumerate(messages, 1):
            if message["role"] != "user" and IMAGE_MARKER in message["content"]:
                raise DataError(f"message {n} ({message['role']}) holds {IMAGE_MARKER}: images go in user turns")
        tags = sum(m["content"].count(IMAGE_MARKER) for m in messages)
        sources = self._image_sources(row)
        count = row["image_count"] if "image_count" in row else len(sources)
        if tags != count:
            raise DataError(f"{tags} {IMAGE_MARKER} tag(s) in the conversation for {count} image(s)")
        return messages, tools, sources

    def _image_sources(self, row):
        """Paths (jsonl) or bytes (parquet) of a row's images, in order; a missing file is a DataError."""
        if "image_bytes" in row:
            data = row["image_bytes"]
            return [] if data is None else list(data) if isinstance(data, list) else [data]
        names = row.get("image") or []
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else names
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise DataError("field 'image' must name image files: a string (comma-separated) or a list of strings")
        paths = [os.path.join(self.images_path, n) for n in names]
        for name, path in zip(names, paths):
            if not os.path.isfile(path):
                raise DataError(f"image {name} not found in {self.images_path}")
        return paths

    def _encode_text(self, text):
        return encode_with_images(self.tokenizer, text, self.image_token_id, self.image_tokens)

    def _encode(self, row):
        messages, tools, sources = self._check(row)
        input_ids, labels = self._fit(*self._tokenize_chat(messages, tools))
        if int((input_ids == self.image_token_id).sum()) != len(sources) * self.image_tokens:
            raise DataError(f"over-long: {len(sources)} image(s) of {self.image_tokens} tokens do not fit whole in "
                            f"max_seq_len {self.max_seq_len}")
        try:
            images = load_images(sources)
        except VisionError as e:
            raise DataError(str(e)) from None
        pixels = pixel_values(self.image_processor, images) if images else torch.zeros(0)
        return {"input_ids": input_ids, "labels": labels, "pixel_values": pixels}

    def collate(self, samples):
        """Padding trimmed as for text; the batch's images concatenated in row order (the order of the slots)."""
        from .dataloader import trim_padding
        images = [s.pop("pixel_values") for s in samples]
        batch = trim_padding(samples)
        images = [x for x in images if len(x)]
        if images:
            batch["pixel_values"] = torch.cat(images)
        return batch


class ParquetIndex:
    """The rows of a parquet file, read the way `JsonlIndex` reads lines (`line(i)` gives a row's dict).

    Parquet pages must be decoded whole, so reading one random row costs its whole row group; the file is
    therefore copied once into an Arrow IPC file beside it (`<file>.arrow`, as Hugging Face datasets caches),
    which is memory-mapped: reading a row touches only its own bytes, and memory stays small for a 5 GB file.
    """

    COLUMNS = ("conversations", "image_bytes")

    def __init__(self, path, cache=True):
        import pyarrow as pa
        import pyarrow.parquet as pq
        self.path = str(path)
        arrow = self.path + ".arrow"
        if not os.path.exists(arrow) or os.path.getmtime(arrow) < os.path.getmtime(self.path):
            try:
                source = pq.ParquetFile(self.path)
            except (OSError, pa.ArrowException) as e:
                raise DataError(f"{self.path}: cannot be read as parquet ({e})") from None
            missing = [c for c in self.COLUMNS if c not in source.schema_arrow.names]
            if missing:
                raise DataError(f"{self.path}: no column {', '.join(map(repr, missing))} (minimind-v's parquet has "
                                f"{' and '.join(self.COLUMNS)})")
            tmp = f"{arrow}.{os.getpid()}.tmp"
            with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, source.schema_arrow) as writer:
                for group in tqdm(range(source.num_row_groups), f"arrow copy of {self.path}", leave=False):
                    writer.write_table(source.read_row_group(group))
            os.replace(tmp, arrow)
        self.table = pa.ipc.open_file(pa.memory_map(arrow)).read_all()
        self.rows = np.arange(self.table.num_rows)

    def __len__(self):
        return len(self.rows)

    def line(self, i):
        """(1-based row number, the row as a dict)."""
        return i + 1, {c: self.table.column(c)[int(i)].as_py() for c in self.COLUMNS}

    def check(self, key, check_line, desc="check"):
        """Like `JsonlIndex.check`, on the conversations and the number of images (not decoded) of each row."""
        import pyarrow as pa
        import pyarrow.compute as pc
        images = self.table.column("image_bytes")
        counts = (pc.list_value_length(images).fill_null(0) if pa.types.is_list(images.type)
                  else pc.if_else(pc.is_null(images), 0, 1)).to_pylist()
        bad, messages = [], []
        for i, (conversations, count) in enumerate(zip(self.table.column("conversations").to_pylist(), counts)):
            try:
                check_line({"conversations": conversations, "image_count": count})
            except DataError as e:
                bad.append(i)
                if len(messages) < MAX_WARNINGS:
                    messages.append(f"{self.path}:{i + 1}: {e}")
        return np.array(bad, np.int64), messages


# --- packing short chats into full windows ------------------------------------------------

class PackedDataset(Dataset):
    """Several samples of a chat dataset per window of max_seq_len, padding only at the window's end.

    Chat samples are short (the demo's average 68 tokens of 256), so one sample per row spends about half
    the compute on padding; packing spends it on text. Each sample keeps its own labels (-100 outside its
    replies), so nothing extra is learned; as in most SFT packers, attention may look back into the
    earlier chats of the same window. Windows are filled first-fit in a seeded shuffled order, once.
    """

    def __init__(self, dataset, max_seq_len: int, seed: int = 0):
        self.dataset, self.max_seq_len = dataset, max_seq_len
        self.pad = dataset.tokenizer.pad_token_id
        self.lengths = {}  # sample -> tokens before its padding, measured once here
        self.windows, window, used = [], [], 0
        order = np.random.default_rng(seed).permutation(len(dataset))
        for i in tqdm(order.tolist(), f"pack {getattr(dataset, 'path', '')}", leave=False, unit=" samples"):
            real = (dataset[i]["input_ids"] != self.pad).nonzero()
            n = self.lengths[i] = int(real[-1]) + 1 if len(real) else 0
            if used + n > max_seq_len:
                self.windows.append(window)
                window, used = [], 0
            window.append(i)
            used += n
        if window:
            self.windows.append(window)

    def __len__(self):
        return len(self.windows)

    def __getitem__(self, w):
        samples = [self.dataset[i] for i in self.windows[w]]
        lengths = [self.lengths[i] for i in self.windows[w]]
        fill = {"input_ids": self.pad, "labels": IGNORE, "loss_weights": 0.0}
        packed = {}
        for key in samples[0]:
            parts = [s[key][:n] for s, n in zip(samples, lengths)]
            tail = torch.full((self.max_seq_len - sum(lengths),), fill[key], dtype=parts[0].dtype)
            packed[key] = torch.cat(parts + [tail])
        return packed
