"""Pretraining: a randomly initialised MiniMind learns to predict the next token of plain text.

    python train_pretrain.py                                   # bundled demo data, MiniMind2 size (512 x 8)
    python train_pretrain.py --data_path dataset/pretrain_hq.jsonl --batch_size 32 --accumulation_steps 8
    torchrun --nproc_per_node 4 train_pretrain.py ...          # DDP; add --deepspeed ds_config.json for ZeRO

Reads {"text": ...} jsonl (or a .bin from scripts/pretokenize.py); writes out/pretrain_<hidden>[_moe].pth.
"""
import argparse

from demo import data_paths
from model.checkpoint import build_model, load_tokenizer
from model.dataloader import load_datasets
from model.dataset import PretrainDataset
from model.runtime import add_common_args, setup_run
from model.session import Session, train_next_token


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, learning_rate=5e-4, save_weight="pretrain")
    parser.add_argument("--pack", type=int, default=1, choices=[0, 1],
                        help="1: join documents into full windows (no padding); 0: one padded document per sample")
    args = parser.parse_args()
    run = setup_run(args)

    tokenizer = load_tokenizer(args.tokenizer_path)
    train_data, val_data = load_datasets(PretrainDataset, *data_paths(args.data_path, args.val_path, "pretrain"),
                                         tokenizer, args.max_seq_len, pack=bool(args.pack), skip_bad=args.skip_bad)
    model = build_model(args, run, tokenizer, trains_mtp=True)
    session = Session(args, run, model, train_data, args.save_weight, tokenizer, val_data)
    # The loop (model/session.py): loss = next-token cross-entropy on every token (+ MoE balancing),
    # backward, an optimizer step every --accumulation_steps micro-batches.
    train_next_token(session)


if __name__ == "__main__":
    main()
