"""LoRA fine-tuning: the SFT model learns a new skill through small low-rank adapters beside its frozen weights.

    python train_lora.py                                    # out/full_sft_512.pth + demo identity chats
    python train_lora.py --lora_name domain                 # demo herbal-medicine chats (lora_domain.jsonl)
    python train_lora.py --data_path dataset/lora_medical.jsonl --lora_name medical --lora_rank 16
    python train_lora.py --mix_path dataset/demo/sft.jsonl  # replay general chats beside the new skill
    python train_lora.py --quantize nf4                     # QLoRA: the frozen base in 4 bits

Same data format and loss as train_full_sft.py (only assistant replies are learned), but every base weight
stays frozen: at rank 8 on MiniMind2 (512 x 8) the adapters are 0.58M numbers beside 25.8M, so training is
light and the base model stays intact underneath (drop the adapters and it is back). Only the adapters are
saved, to out/lora/lora_<name>_<hidden>[_moe].pth with a JSON meta (rank, alpha, targets, base config);
`eval_model.py --lora_name <name>` or `model.model_lora.load_lora(model, path)` puts them on a base again.

Frozen weights do not mean nothing is forgotten: the adapters change what the model computes for every
prompt. Train on the new skill alone and a small model answers everything with it; mix in some of the
SFT data (--mix_path, replay) to keep the old skills. --epochs defaults to 10 because LoRA sets are small.

QLoRA (--quantize nf4): every attention and MLP projection of the base (all of default_targets, whether or not
they take adapters; not the embeddings, the output head or the norms) is stored in 4-bit NormalFloat with
block-wise scales (model/quant.py) and dequantised on the fly: the projections take about 1/8 of their float32
memory (512 x 8: base weights 103 MB -> 25 MB). The adapter file is the same as plain LoRA's: load it onto the
full-precision base for inference. The merged model differs slightly from what training saw (training saw the
dequantised NF4 weights under the adapters); README's LoRA notes give the measured difference.
"""
import argparse
import os
import sys

from demo import data_paths
from model.checkpoint import build_model, checkpoint_path, load_tokenizer
from model.dataloader import load_datasets, with_replay
from model.dataset import SFTDataset
from model.model_lora import apply_lora, count_parameters, default_targets, save_lora
from model.quant import quantize_nf4_, weight_bytes
from model.runtime import add_common_args, setup_run
from model.session import Session, train_next_token

DEMO_SETS = ("identity", "domain")  # dataset/demo/lora_<name>.jsonl


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, learning_rate=1e-4, from_weight="full_sft", epochs=10)
    g = parser.add_argument_group("lora")
    g.add_argument("--lora_name", default="identity",
                   help=f"names the output file; without --data_path, the demo set ({', '.join(DEMO_SETS)})")
    g.add_argument("--lora_rank", type=int, default=8, help="r: the rank of each update B A")
    g.add_argument("--lora_alpha", type=float, default=16, help="the update is scaled by alpha / r")
    g.add_argument("--lora_dropout", type=float, default=0.0, help="dropout on the adapters' input")
    g.add_argument("--lora_targets", default=None,
                   help="comma-separated names of the projections that get adapters (default: every attention "
                        "and MLP projection: q/k/v/o_proj and gate/up/down_proj, or an MLA model's own)")
    g.add_argument("--mix_path", default=None,
                   help="general chats (e.g. the SFT data) replayed beside the new skill, so the model keeps "
                        "answering everything else as before instead of giving the new answer to every question")
    g.add_argument("--mix_ratio", type=float, default=1.0, help="replayed chats per LoRA chat")
    g.add_argument("--quantize", default="none", choices=["none", "nf4"],
                   help="nf4: QLoRA, the frozen attention and MLP projections stored in 4-bit NormalFloat")
    g.add_argument("--double_quant", type=int, default=1, choices=[0, 1],
                   help="with --quantize nf4: quantise the block scales too (8 bits, as in QLoRA)")
    args = parser.parse_args()
    if not args.data_path and args.lora_name not in DEMO_SETS:
        sys.exit(f"--lora_name {args.lora_name}: no demo set of that name ({', '.join(DEMO_SETS)}); "
                 "pass --data_path")
    run = setup_run(args)

    tokenizer = load_tokenizer(args.tokenizer_path)
    train_path, val_path = data_paths(args.data_path, args.val_path, f"lora_{args.lora_name}")
    train_data, val_data = load_datasets(SFTDataset, train_path, val_path, tokenizer, args.max_seq_len,
                                         skip_bad=args.skip_bad)
    if args.mix_path:
        replay, _ = load_datasets(SFTDataset, args.mix_path, None, tokenizer, args.max_seq_len, skip_bad=args.skip_bad)
        train_data = with_replay(train_data, replay, args.mix_ratio, args.seed, run, args.mix_path)
    model = build_model(args, run, tokenizer)
    if args.quantize == "nf4":  # before the adapters, which go on top of the 4-bit layers
        before = weight_bytes(model)
        quantized = quantize_nf4_(model, default_targets(model.config), double_quant=bool(args.double_quant))
        run.print(f"qlora: {len(quantized)} projections in NF4{' (double quant)' if args.double_quant else ''}: "
                  f"base weights {before / 1e6:.1f} MB -> {weight_bytes(model) / 1e6:.1f} MB")
    args.lora_targets = args.lora_targets or ",".join(default_targets(model.config))
    targets = [t.strip() for t in args.lora_targets.split(",")]
    apply_lora(model, args.lora_rank, args.lora_alpha, args.lora_dropout, targets)
    trainable, total = count_parameters(model)
    run.print(f"lora: rank {args.lora_rank}, alpha {args.lora_alpha} on {args.lora_targets}: "
              f"{trainable / 1e6:.3f}M trainable of {total / 1e6:.2f}M ({100 * trainable / total:.2f}%)")
    config = model.config
    weights_path = checkpoint_path(os.path.join(args.out_dir, "lora"), f"lora_{args.lora_name}",
                                   config.hidden_size, config.use_moe)
    # The optimizer sees only the adapters (the frozen weights have requires_grad False); the product is
    # the adapters alone (save_lora), while the resume state keeps the whole model as for every stage (with
    # --quantize nf4 the 4-bit base: a resumed run goes on from the very codes it trained on).
    session = Session(args, run, model, train_data, f"lora_{args.lora_name}", tokenizer, val_data,
                      weights_path=weights_path, save_fn=save_lora)
    train_next_token(session)  # SFT's loss on the assistant tokens; only the adapters have gradients


if __name__ == "__main__":
    main()
