"""Pretraining: a randomly initialised MiniMind learns to predict the next token of plain text.

    python train_pretrain.py                                   # bundled demo data, MiniMind2 size (512 x 8)
    python train_pretrain.py --data_path dataset/pretrain_hq.jsonl --batch_size 32 --accumulation_steps 8
    torchrun --nproc_per_node 4 train_pretrain.py ...          # DDP; add --deepspeed ds_config.json for ZeRO

Reads {"text": ...} jsonl (or a .bin from scripts/pretokenize.py); writes out/pretrain_<hidden>[_moe].pth.
"""
import argparse

from model.dataset import PretrainDataset
from model.training import Session, add_common_args, build_model, load_tokenizer, setup_run, train_and_val


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, learning_rate=5e-4, save_weight="pretrain")
    parser.add_argument("--pack", type=int, default=1, choices=[0, 1],
                        help="1: join documents into full windows (no padding); 0: one padded document per sample")
    args = parser.parse_args()
    run = setup_run(args)

    tokenizer = load_tokenizer(args.tokenizer_path)
    train_data, val_data = train_and_val(args, tokenizer, PretrainDataset, "pretrain", pack=bool(args.pack))
    model = build_model(args, run, tokenizer)
    session = Session(args, run, model, train_data, args.save_weight, tokenizer, val_data)
    train_next_token(session, run)


def train_next_token(session, run):
    """The loop of pretraining, and of SFT and LoRA too: they differ only in their labels (-100 outside the
    assistant replies) and in which parameters train."""
    for batch in session.batches():
        with run.autocast():
            out = session.model(batch["input_ids"], labels=batch["labels"])
            loss = out.loss + out.aux_loss  # next-token cross-entropy (+ MoE load balancing)
        session.backward(loss)
        if session.ready:  # every --accumulation_steps micro-batches
            session.step(out.loss)
    session.finish()


if __name__ == "__main__":
    main()
