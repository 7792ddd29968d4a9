"""Supervised fine-tuning: the pretrained model learns to answer in the chat format.

    python train_full_sft.py                                   # loads out/pretrain_512.pth, bundled demo chats
    python train_full_sft.py --data_path dataset/sft_mini_512.jsonl --from_weight pretrain --epochs 2

Reads {"conversations": [{"role", "content"}, ...]} jsonl. Only assistant replies are learned (through
their <|im_end|>): the model is taught to answer, not to imitate users. Writes out/full_sft_<hidden>[_moe].pth.
"""
import argparse

from model.dataset import SFTDataset
from model.training import Session, add_common_args, build_model, load_tokenizer, setup_run, train_and_val
from train_pretrain import train_next_token


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, learning_rate=5e-5, from_weight="pretrain", save_weight="full_sft")
    parser.add_argument("--pack", type=int, default=0, choices=[0, 1],
                        help="1: several short chats per window (no compute spent on padding)")
    args = parser.parse_args()
    run = setup_run(args)

    tokenizer = load_tokenizer(args.tokenizer_path)
    train_data, val_data = train_and_val(args, tokenizer, SFTDataset, "sft", pack_chats=bool(args.pack))
    model = build_model(args, run, tokenizer)
    session = Session(args, run, model, train_data, args.save_weight, tokenizer, val_data)
    train_next_token(session, run)  # labels are -100 outside assistant replies: only answers are learned


if __name__ == "__main__":
    main()
