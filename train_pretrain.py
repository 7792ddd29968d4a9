"""Pretraining: a randomly initialised MiniMind learns to predict the next token of plain text.

    python train_pretrain.py                                   # bundled demo data, MiniMind2 size (512 x 8)
    python train_pretrain.py --data_path dataset/pretrain_hq.jsonl --batch_size 32 --accumulation_steps 8
    torchrun --nproc_per_node 4 train_pretrain.py ...          # DDP; add --deepspeed ds_config.json for ZeRO

Reads {"text": ...} jsonl (or a .bin from scripts/pretokenize.py); writes out/pretrain_<hidden>[_moe].pth.
"""
import argparse

from model.dataset import PretrainDataset
from model.training import Session, add_common_args, build_model, demo_data, load_tokenizer, setup_run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, learning_rate=5e-4, save_weight="pretrain")
    parser.add_argument("--pack", type=int, default=1, choices=[0, 1],
                        help="1: join documents into full windows (no padding); 0: one padded document per sample")
    args = parser.parse_args()
    run = setup_run(args)

    tokenizer = load_tokenizer(args.tokenizer_path)
    train_data = PretrainDataset(demo_data(args.data_path, "pretrain.jsonl"), tokenizer, args.max_seq_len,
                                 pack=bool(args.pack))
    val_path = args.val_path or (None if args.data_path else demo_data(None, "pretrain_val.jsonl"))
    val_data = PretrainDataset(val_path, tokenizer, args.max_seq_len, pack=bool(args.pack)) if val_path else None
    model = build_model(args, run, tokenizer)
    session = Session(args, run, model, train_data, args.save_weight, tokenizer, val_data)

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
