"""Supervised fine-tuning: the pretrained model learns to answer in the chat format.

    python train_full_sft.py                                   # loads out/pretrain_512.pth, bundled demo chats
    python train_full_sft.py --data_path dataset/sft_mini_512.jsonl --from_weight pretrain --epochs 2

Reads {"conversations": [{"role", "content"}, ...]} jsonl. Only assistant replies are learned (through
their <|im_end|>): the model is taught to answer, not to imitate users. Writes out/full_sft_<hidden>[_moe].pth.
"""
import argparse

from model.dataset import SFTDataset
from model.training import Session, add_common_args, build_model, demo_data, load_tokenizer, setup_run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, learning_rate=5e-5, from_weight="pretrain", save_weight="full_sft")
    args = parser.parse_args()
    run = setup_run(args)

    tokenizer = load_tokenizer(args.tokenizer_path)
    train_data = SFTDataset(demo_data(args.data_path, "sft.jsonl"), tokenizer, args.max_seq_len)
    val_path = args.val_path or (None if args.data_path else demo_data(None, "sft_val.jsonl"))
    val_data = SFTDataset(val_path, tokenizer, args.max_seq_len) if val_path else None
    model = build_model(args, run, tokenizer)
    session = Session(args, run, model, train_data, args.save_weight, tokenizer, val_data)

    for batch in session.batches():
        with run.autocast():
            out = session.model(batch["input_ids"], labels=batch["labels"])  # labels: assistant tokens only
            loss = out.loss + out.aux_loss
        session.backward(loss)
        if session.ready:
            session.step(out.loss)
    session.finish()


if __name__ == "__main__":
    main()
