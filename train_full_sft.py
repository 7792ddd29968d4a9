"""Supervised fine-tuning: the pretrained model learns to answer in the chat format.

    python train_full_sft.py                                   # loads out/pretrain_512.pth, bundled demo chats
    python train_full_sft.py --data_path dataset/sft_mini_512.jsonl --from_weight pretrain --epochs 2

Reads {"conversations": [{"role", "content"}, ...]} jsonl. Only assistant replies are learned (through
their <|im_end|>): the model is taught to answer, not to imitate users. Writes out/full_sft_<hidden>[_moe].pth.
"""
import argparse

from demo import data_paths
from model.checkpoint import build_model, load_tokenizer
from model.dataloader import load_datasets
from model.dataset import SFTDataset
from model.runtime import add_common_args, setup_run
from model.session import Session, train_next_token


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, learning_rate=5e-5, from_weight="pretrain", save_weight="full_sft")
    parser.add_argument("--pack", type=int, default=0, choices=[0, 1],
                        help="1: several short chats per window (no compute spent on padding)")
    args = parser.parse_args()
    run = setup_run(args)

    tokenizer = load_tokenizer(args.tokenizer_path)
    train_data, val_data = load_datasets(SFTDataset, *data_paths(args.data_path, args.val_path, "sft"), tokenizer,
                                         args.max_seq_len, pack_chats=bool(args.pack), seed=args.seed,
                                         skip_bad=args.skip_bad)
    model = build_model(args, run, tokenizer, trains_mtp=True)
    session = Session(args, run, model, train_data, args.save_weight, tokenizer, val_data)
    # Pretraining's loop (model/session.py); the labels are -100 outside assistant replies, so only the
    # answers are learned.
    train_next_token(session)


if __name__ == "__main__":
    main()
