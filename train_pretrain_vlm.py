"""MiniMind-V, stage 1: the LLM learns to see, by captioning images.

    python train_pretrain_vlm.py --vision_model model/vision_model/clip-vit-base-patch16 \
        --data_path dataset/pretrain_i2t.parquet                  # minimind-v's caption data
    python train_pretrain_vlm.py --vision_model ... --data_path pretrain_vlm.jsonl --images_path pretrain_images

Starts from a text model (--from_weight full_sft, or pretrain) and a vision encoder folder (a local CLIP or
SigLIP); by default only the new projection trains, so the LLM keeps what it knew while image features learn
to speak its language (--train_llm and --train_vision unfreeze more). Reads minimind-v's conversations with
<image> in the user turn, as jsonl + an image folder or parquet with the image bytes; only the replies (the
captions) are learned. Writes out/pretrain_vlm_<hidden>.pth, without the encoder unless it was trained.
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
    add_common_args(parser, learning_rate=4e-4, from_weight="full_sft", save_weight="pretrain_vlm")
    add_vlm_args(parser, train_llm="none")
    args = parser.parse_args()
    run = setup_run(args)

    tokenizer = load_tokenizer(args.tokenizer_path)
    model = build_vlm(args, run, tokenizer)
    train_data, val_data = load_vlm_datasets(model, tokenizer, args, *data_paths(args.data_path, args.val_path,
                                                                                 "vlm/pretrain_vlm"))
    session = Session(args, run, model, train_data, args.save_weight, tokenizer, val_data, save_fn=save_vlm)
    # SFT's loop (model/session.py) with the batch's images spliced in: the loss is the captions' cross-entropy.
    train_next_token(session)


if __name__ == "__main__":
    main()
