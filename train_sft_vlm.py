"""MiniMind-V, stage 2: instructions and multi-turn conversations about images.

    python train_sft_vlm.py                                        # from out/pretrain_vlm_512.pth, demo data
    python train_sft_vlm.py --data_path dataset/sft_i2t.parquet --train_llm all
    python train_sft_vlm.py --mix_path dataset/demo/vlm/pretrain_vlm.jsonl --mix_ratio 0.25   # replay captions

Continues the caption stage's VLM (--from_weight pretrain_vlm; a plain LLM works too, with --vision_model);
by default the whole LLM trains with the projection (--train_llm N: only the last N blocks; none: the projection
only). Same data formats as train_pretrain_vlm.py; several images per conversation are fine (one <image> tag
each). Writes out/sft_vlm_<hidden>.pth. A small model trained on questions alone forgets how to name what the
caption stage taught it to name; --mix_path replays some caption rows (or any VLM rows) beside the questions.
"""
import argparse

from demo import data_paths
from model.checkpoint import build_vlm, load_tokenizer
from model.dataloader import load_vlm_datasets, with_replay
from model.model_vlm import save_vlm
from model.runtime import add_common_args, add_vlm_args, setup_run
from model.session import Session, train_next_token


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, learning_rate=5e-5, from_weight="pretrain_vlm", save_weight="sft_vlm")
    g = add_vlm_args(parser, train_llm="all").add_argument_group("replay")
    g.add_argument("--mix_path", default=None, help="VLM rows (e.g. the caption stage's) replayed beside the questions")
    g.add_argument("--mix_ratio", type=float, default=0.25, help="replayed rows per question row")
    args = parser.parse_args()
    run = setup_run(args)

    tokenizer = load_tokenizer(args.tokenizer_path)
    model = build_vlm(args, run, tokenizer)
    train_data, val_data = load_vlm_datasets(model, tokenizer, args, *data_paths(args.data_path, args.val_path,
                                                                                 "vlm/sft_vlm"))
    if args.mix_path:
        replay, _ = load_vlm_datasets(model, tokenizer, args, args.mix_path, None)
        train_data = with_replay(train_data, replay, args.mix_ratio, args.seed, run, args.mix_path)
    session = Session(args, run, model, train_data, args.save_weight, tokenizer, val_data, save_fn=save_vlm)
    # SFT's loop (model/session.py) with the batch's images spliced in; only the replies are learned.
    train_next_token(session)


if __name__ == "__main__":
    main()
