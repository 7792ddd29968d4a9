"""Batches for training and evaluation: a data order that is deterministic per (seed, epoch), split across
ranks and resumable at any batch, and padding trimmed from each batch."""
import sys

import numpy as np
import torch

from .dataset import IGNORE, DataError, PackedDataset


def batch_order(n_samples: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
                shuffle: bool = True) -> list[list[int]]:
    """This rank's batches of one epoch. Every rank draws the same permutation and takes every world-th
    sample, so step s of N ranks with batch B sees exactly the samples one process sees with batch N*B.
    The last incomplete global batch is dropped so all ranks take the same number of steps."""
    order = np.random.default_rng([seed, epoch]).permutation(n_samples) if shuffle else np.arange(n_samples)
    global_batch = batch_size * world
    n_batches = n_samples // global_batch
    order = order[:n_batches * global_batch].reshape(n_batches, global_batch)
    return [row[rank::world].tolist() for row in order]


def trim_padding(samples: list[dict]) -> dict:
    """Stack samples into a batch, then cut the right-end columns where no row learns anything.

    Chat samples are padded to max_seq_len but are often much shorter. Columns after the last learned label
    of every row change no loss (causal attention never looks right), so computing them is waste. All
    sequence tensors are cut to one width, so chosen and rejected (DPO) still concatenate.
    """
    batch = torch.utils.data.default_collate(samples)
    labels = [v for k, v in batch.items() if k.endswith("labels")]
    if not labels:
        return batch
    learned = torch.stack([(lab != IGNORE).any(dim=0) for lab in labels]).any(dim=0)  # per column
    width = int(learned.nonzero().max()) + 1 if learned.any() else 1
    seq_len = labels[0].shape[1]
    return {k: v[:, :width] if torch.is_tensor(v) and v.dim() == 2 and v.shape[1] == seq_len else v
            for k, v in batch.items()}


def model_inputs(batch: dict) -> dict:
    """The forward's inputs besides input_ids that a batch may carry: a vision-language batch's images."""
    return {"pixel_values": batch["pixel_values"]} if "pixel_values" in batch else {}


def make_loader(dataset, batch_size: int, seed: int, epoch: int, skip: int, run, num_workers: int = 0,
                shuffle: bool = True):
    """A DataLoader over this rank's batches of `epoch`, starting after the first `skip` of them, collated
    by the dataset's own `collate` when it has one (RL prompts), else stacked with padding trimmed."""
    batches = batch_order(len(dataset), batch_size, seed, epoch, run.rank, run.world_size, shuffle)[skip:]
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                                       collate_fn=getattr(dataset, "collate", trim_padding),
                                       pin_memory=run.device.type == "cuda")


def train_batches(dataset, args, run, progress):
    """Micro-batches from where `progress` says (epoch, batch) to the end of the last epoch, keeping
    `progress.epoch` / `progress.batch_in_epoch` current, so a save at any optimizer step can resume exactly.
    Each epoch's batch count is a multiple of accumulation_steps: no step straddles two epochs."""
    while progress.epoch < args.epochs:
        usable = steps_per_epoch(dataset, args, run) * args.accumulation_steps
        loader = make_loader(dataset, args.batch_size, args.seed, progress.epoch, progress.batch_in_epoch, run,
                             args.num_workers)
        for batch in loader:
            if progress.batch_in_epoch >= usable:
                break
            progress.batch_in_epoch += 1
            yield batch
        progress.epoch, progress.batch_in_epoch = progress.epoch + 1, 0


def steps_per_epoch(dataset, args, run) -> int:
    """Optimizer steps in one epoch."""
    return len(dataset) // (args.batch_size * run.world_size) // args.accumulation_steps


def with_replay(train, replay, ratio: float, seed: int, run, path: str):
    """`train` and, beside it, int(ratio * len(train)) samples of `replay` (at most all of them, drawn once
    with `seed`): earlier data replayed so that a new stage does not forget what the earlier one taught
    (LoRA's general chats, the VLM question stage's captions). The mix keeps `train`'s own collate."""
    from torch.utils.data import ConcatDataset, Subset
    picked = torch.randperm(len(replay), generator=torch.Generator().manual_seed(seed))
    picked = picked[:int(ratio * len(train))].tolist()
    run.print(f"data: {len(train)} samples + {len(picked)} replayed from {path}")
    mixed = ConcatDataset([train, Subset(replay, picked)])
    if hasattr(train, "collate"):
        mixed.collate = train.collate
    return mixed


def load_datasets(dataset_class, train_path: str, val_path: str | None, tokenizer, max_seq_len: int,
                  pack_chats: bool = False, seed: int = 0, **kwargs):
    """(train, validation or None) datasets of one class; kwargs (skip_bad=...) go to the class. `pack_chats`
    fills the training windows with several chats (PackedDataset); validation stays one chat per row.
    Bad data lines (the classes check every line when made) end the run here, with the dataset's message
    naming them and no traceback, before the script has written anything."""
    try:
        train = dataset_class(train_path, tokenizer, max_seq_len, **kwargs)
        val = dataset_class(val_path, tokenizer, max_seq_len, **kwargs) if val_path else None
        if pack_chats:  # encodes every sample, so what only tokenizing finds (over-long chats) stops it too
            train = PackedDataset(train, max_seq_len, seed)
    except DataError as e:
        sys.exit(f"error: {e}")
    return train, val


def load_vlm_datasets(model, tokenizer, args, train_path: str, val_path: str | None):
    """(train, validation or None) VLMDatasets whose image slots and pixels fit `model`'s vision encoder."""
    from .dataset import VLMDataset
    from .vision import load_image_processor
    return load_datasets(VLMDataset, train_path, val_path, tokenizer, args.max_seq_len, skip_bad=args.skip_bad,
                         image_processor=load_image_processor(model.config.vision_model_path),
                         image_tokens=model.config.image_tokens, image_token_id=model.config.image_token_id,
                         images_path=args.images_path)
