"""Held-out loss, the one place it is computed.

- `held_out_sums`: the loop over held-out batches that every stage's evaluation uses (validation loss and
  bits per byte in training, DPO's preference accuracy, distillation's KL to the teacher): eval mode, the
  same batches in the same order, sums all-reduced over ranks.
- `loss_sums`: what a batch adds to the loss and to bits per byte.
- `evaluate`: validation loss and bits per byte of a dataset; `bits_per_byte`: the same numbers for raw
  documents (text or chats) of any length, in sliding windows.

Bits per byte divides the summed loss (in bits) by the UTF-8 bytes of the predicted tokens, so models with
different tokenizers compare on the same scale. Special tokens (chat markers, bos) are not text: their loss
and their (zero) bytes stay out of it.
"""
import json
import math

import torch
import torch.nn.functional as F
import torch.distributed as dist
from tqdm import tqdm

from .dataloader import make_loader, model_inputs
from .dataset import IGNORE


class DocumentError(ValueError):
    """A held-out file that cannot be read as documents; the message names the file and line."""


def token_byte_lengths(tokenizer) -> torch.Tensor:
    """UTF-8 bytes each token stands for; special tokens count 0 (they are not text).

    Byte-level BPE stores each byte as one printable character (GPT-2's byte-to-unicode table), so a
    vocabulary entry's length in characters is its length in bytes.
    """
    from tokenizers.pre_tokenizers import ByteLevel
    alphabet = set(ByteLevel.alphabet())
    lengths = torch.zeros(len(tokenizer), dtype=torch.long)
    special = set(tokenizer.all_special_ids)
    added = {t.content for t in tokenizer.added_tokens_decoder.values()}
    for token, i in tokenizer.get_vocab().items():
        if i in special:
            continue
        if token in added or not set(token) <= alphabet:
            lengths[i] = len(token.encode("utf-8"))
        else:
            lengths[i] = len(token)
    return lengths


def loss_sums(logits: torch.Tensor, labels: torch.Tensor, byte_lengths: torch.Tensor | None = None) -> dict:
    """Summed next-token loss of a batch: `nats` over the `tokens` learned (labels != -100, aligned with the
    inputs), and `text_nats` over the `text_tokens` that stand for `bytes` of text (needs `byte_lengths`)."""
    targets = labels[:, 1:]
    nats = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
    learned = targets != IGNORE
    sums = {"nats": nats[learned].sum(), "tokens": learned.sum()}
    if byte_lengths is not None:
        nbytes = byte_lengths.to(targets.device)[targets.clamp(min=0)] * learned
        is_text = nbytes > 0
        sums.update(text_nats=nats[is_text].sum(), text_tokens=is_text.sum(), bytes=nbytes.sum())
    return sums


@torch.no_grad()
def held_out_sums(model, dataset, args, run, measure, max_batches: int | None = None) -> dict:
    """Sum the numbers `measure(batch)` returns (a dict of name -> tensor) over the first `max_batches`
    held-out batches of `dataset`, in a fixed order, over all ranks. `measure` runs under autocast with
    the model in eval mode; float64 sums keep many small numbers exact."""
    was_training = model.training
    model.eval()
    totals = {}
    for i, batch in enumerate(make_loader(dataset, args.batch_size, args.seed, 0, 0, run, shuffle=False)):
        if max_batches and i >= max_batches:
            break
        batch = {k: v.to(run.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with run.autocast():
            sums = measure(batch)
        for name, value in sums.items():
            totals[name] = totals.get(name, 0) + torch.as_tensor(value, device=run.device).double()
    model.train(was_training)
    if not totals:
        return {}
    names = list(totals)  # measure's order, the same on every rank
    stacked = torch.stack([totals[n] for n in names])
    if run.ddp:
        dist.all_reduce(stacked)
    return dict(zip(names, stacked.tolist()))


def per_token(sums: dict) -> tuple[float, float]:
    """(mean loss per learned token, bits per byte) from `loss_sums` totals."""
    loss = sums.get("nats", 0.0) / max(sums.get("tokens", 0.0), 1.0)
    nbytes = sums.get("bytes", 0.0)
    bpb = sums["text_nats"] / math.log(2) / nbytes if nbytes else float("nan")
    return loss, bpb


def evaluate(model, dataset, args, run, byte_lengths: torch.Tensor | None = None,
             max_batches: int | None = None) -> tuple[float, float]:
    """(mean loss per learned token, bits per byte) on held-out data, averaged over all ranks."""
    sums = held_out_sums(model, dataset, args, run,
                         lambda batch: loss_sums(model(batch["input_ids"], **model_inputs(batch)).logits,
                                                           batch["labels"], byte_lengths),
                         max_batches)
    return per_token(sums)


# ----------------------------------------------------------------------------------------------------------
# Bits per byte of raw documents (scripts/eval_bpb.py, the demo's report card)


def read_documents(path: str):
    """Documents of a held-out file: jsonl rows with `text` (a string) or `conversations` (chat messages),
    or a plain text file as one document."""
    if not path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            yield f.read()
        return
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise DocumentError(f"{path} line {line_number}: not JSON ({e})") from e
            document = row.get("text", row.get("conversations")) if isinstance(row, dict) else None
            if not isinstance(document, (str, list)):
                raise DocumentError(f"{path} line {line_number}: expected a 'text' string or a "
                                    f"'conversations' list")
            yield document


def start_token(tokenizer) -> int:
    """The token a document starts with (bos; eos for tokenizers without one, as GPT-2 and lm-eval do)."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def document_ids(tokenizer, document) -> list[int]:
    """A document's tokens as training saw them: start token + text, or the chat template's rendering."""
    if isinstance(document, list):
        document = tokenizer.apply_chat_template(document, tokenize=False)
    ids = tokenizer.encode(document, add_special_tokens=False)
    return ids if ids[:1] == [start_token(tokenizer)] else [start_token(tokenizer)] + ids


def sliding_windows(n_tokens: int, max_seq_len: int, stride: int):
    """(start, end, first_scored): windows over tokens [start, end) that together predict every token
    after the first exactly once. The model reads tokens[start:end-1] (at most max_seq_len) and each window
    scores the targets from first_scored on: the first window all it can, each later one the next `stride`
    tokens, with max_seq_len - stride + 1 or more tokens of context before them."""
    scored = 1
    while scored < n_tokens:
        end = min(n_tokens, scored + (max_seq_len if scored == 1 else stride))
        yield max(0, end - 1 - max_seq_len), end, scored
        scored = end


def window_batch(windows: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) of right-padded windows; labels are -100 before each window's first scored token
    and on the padding. No attention mask is needed: causal attention never looks right."""
    width = max(len(ids) for ids, _ in windows)
    input_ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(windows), width), IGNORE, dtype=torch.long)
    for row, (ids, first_scored) in enumerate(windows):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, first_scored:len(ids)] = torch.tensor(ids[first_scored:])
    return input_ids, labels


@torch.no_grad()
def bits_per_byte(model, tokenizer, documents, max_seq_len: int, stride: int | None = None,
                  batch_size: int = 8, progress: bool = False) -> dict:
    """Perplexity and bits per byte of `documents` (a path for `read_documents`, or a list of texts or
    message lists), in sliding windows of max_seq_len tokens moving by `stride` (default max_seq_len // 2).

    Every token after a document's start token is predicted once, with `loss_sums` as in training's
    evaluation: special tokens (chat markers) are not text, so their loss and bytes stay out.
    """
    stride = stride or max(1, max_seq_len // 2)
    if not 1 <= stride <= max_seq_len:
        raise ValueError(f"stride {stride} must be in 1..max_seq_len ({max_seq_len}): a larger step would "
                         f"leave tokens unscored")
    documents = read_documents(documents) if isinstance(documents, str) else documents
    windows, n_documents = [], 0
    for document in documents:
        ids = document_ids(tokenizer, document)
        windows += [(ids[start:end], scored - start) for start, end, scored in
                    sliding_windows(len(ids), max_seq_len, stride)]
        n_documents += 1
    windows.sort(key=lambda w: -len(w[0]))  # similar lengths share a batch; a batch too big fails at once
    device = next(model.parameters()).device
    byte_lengths = token_byte_lengths(tokenizer).to(device)
    was_training = model.training
    model.eval()
    totals = {}
    for start in tqdm(range(0, len(windows), batch_size), desc="bits per byte", disable=not progress):
        input_ids, labels = window_batch(windows[start:start + batch_size], tokenizer.pad_token_id or 0)
        sums = loss_sums(model(input_ids.to(device)).logits, labels.to(device), byte_lengths)
        for name, value in sums.items():
            totals[name] = totals.get(name, 0.0) + float(value)
    model.train(was_training)
    nats, n_tokens, n_bytes = totals.get("text_nats", 0.0), int(totals.get("text_tokens", 0)), int(totals.get("bytes", 0))
    return {"documents": n_documents, "tokens": n_tokens, "bytes": n_bytes, "nats": nats,
            "nats_per_token": nats / max(n_tokens, 1), "perplexity": math.exp(nats / max(n_tokens, 1)),
            "bits_per_byte": nats / math.log(2) / n_bytes if n_bytes else float("nan"),
            "max_seq_len": max_seq_len, "stride": stride}
