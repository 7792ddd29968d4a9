"""MiniMind-V, stage 2: instructions and multi-turn conversations about images.

    python train_sft_vlm.py                                        # from out/pretrain_vlm_512.pth, demo data
    python train_sft_vlm.py --data_path dataset/sft_i2t.parquet --train_llm all

Continues the caption stage's VLM (--from_weight pretrain_vlm; a plain LLM works too, with --vision_model);
by default the whole LLM trains with the projection (--train_llm N: only the last N blocks; none: the projection
only). Same data formats as train_pretrain_vlm.py; several images per conversation are fine (one <image> tag
each). Writes out/sft_vlm_<hidden>.pth.
"""
import argparse

from demo import data_paths
from model.checkpoint import build_vlm, load_tokenizer
from model.dataloader import load_vlm_datasets
from model.model_vlm import save_vlm
from model.runtime import add_common_args, add_vlm_args, setup_run
from model.session import Session, train_next_token


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, learning_rate=5e-5, from_weight="pretrain_vlm", save_weight="sft_vlm")
    add_vlm_args(parser, train_llm="all")
    args = parser.parse_args()
    run = setup_run(args)

    tokenizer = load_tokenizer(args.tokenizer_path)
    model = build_vlm(args, run, tokenizer)
    train_data, val_data = load_vlm_datasets(model, tokenizer, args, *data_paths(args.data_path, args.val_path,
                                                                                 "vlm/sft_vlm"))
    session = Session(args, run, model, train_data, args.save_weight, tokenizer, val_data, save_fn=save_vlm)
    # SFT's loop (model/session.py) with the batch's images spliced in; only the replies are learned.
    train_next_token(session)


if __name__ == "__main__":
    main()
