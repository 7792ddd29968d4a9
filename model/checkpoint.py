"""Checkpoint files: weights written atomically with a JSON meta beside them, read back strictly (a checkpoint
that does not fit the model is an error that says what is wrong, never a `strict=False` load that silently
leaves the model random), and a stage's model built from the previous stage's checkpoint."""
import glob
import hashlib
import json
import os
import sys
import warnings
from contextlib import contextmanager

import torch

# Prefixes that wrappers add to parameter names: DistributedDataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the model as asked."""


def load_failure(error: Exception) -> str:
    """One line for why torch.load refused a file (its own messages run to a dozen lines)."""
    text = str(error)
    if "WeightsUnpickler error" in text:  # random bytes, or a pickle holding more than tensors (never run)
        detail = next((line.strip() for line in text.split("WeightsUnpickler error:")[1].splitlines()
                       if line.strip()), "")
        return ("not a weights-only torch file: corrupt, or a pickle with objects besides tensors, which is never "
                f"run ({detail})")
    if "central directory" in text or "PytorchStreamReader" in text:
        return "truncated or corrupt (its zip archive is incomplete)"
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def read_state_dict(path: str) -> dict:
    """Tensors of a `.pth` (plain state dict, or a dict holding one under `model`) or `.safetensors` file."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    try:
        with warnings.catch_warnings():  # "pickle protocol 4" warnings precede the real error for foreign files
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, pickle with code in it, not a torch file at all
        raise CheckpointError(f"{path}: cannot be read: {load_failure(e)}") from e
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj


def clean_state_dict(state_dict: dict) -> dict:
    out = {}
    for key, value in state_dict.items():
        for prefix in WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def describe_shape_hint(state_dict: dict) -> str:
    """What model the checkpoint was saved from, to tell the user which size flags to pass."""
    emb = state_dict.get("model.embed_tokens.weight")
    layers = {k.split(".")[2] for k in state_dict if k.startswith("model.layers.")}
    moe = any(".mlp.experts." in k for k in state_dict)
    if emb is None:
        return ""
    return (f" The checkpoint looks like --hidden_size {emb.shape[1]} --num_hidden_layers {len(layers)}"
            f"{' --use_moe 1' if moe else ''} (vocab {emb.shape[0]}).")


def load_weights(model: torch.nn.Module, source, name: str | None = None, mtp_resized: bool = False,
                 quiet: bool = False) -> torch.nn.Module:
    """Load a state dict (or a path to one) into `model`, requiring every key and shape to match.

    The tied `lm_head.weight` may be absent (it is the embedding). Weights are cast to the model's dtype.
    `mtp_resized`: the caller asked for another mtp_depth than the checkpoint's (--mtp_depth). Then, and only
    for the multi-token prediction modules (`mtp.{k}.*`), those the checkpoint lacks keep their init and those
    the model lacks are dropped, each said in one line; every other weight must still load.
    """
    name = name or (source if isinstance(source, str) else "state dict")
    state_dict = clean_state_dict(read_state_dict(source) if isinstance(source, str) else source)
    expected = model.state_dict()
    tied = getattr(model.config, "tie_word_embeddings", False)
    if tied and "lm_head.weight" not in state_dict and "model.embed_tokens.weight" in state_dict:
        state_dict["lm_head.weight"] = state_dict["model.embed_tokens.weight"]

    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    new_mtp = []
    if mtp_resized:
        new_mtp = [k for k in missing if k.startswith("mtp.")]
        old_mtp = [k for k in unexpected if k.startswith("mtp.")]
        missing, unexpected = [k for k in missing if k not in new_mtp], [k for k in unexpected if k not in old_mtp]
        state_dict = {k: v for k, v in state_dict.items() if k not in old_mtp}
        for keys, what in ((new_mtp, "not in the checkpoint: they start from init"),
                           (old_mtp, "of the checkpoint dropped: the model has no such module")):
            modules = sorted({".".join(k.split(".")[:2]) for k in keys})
            if modules and not quiet:
                print(f"{name}: multi-token prediction module(s) {', '.join(modules)} {what}", flush=True)
    mismatched = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        problems = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
                problems.append(f"{label}: {shown}")
        raise CheckpointError(f"{name} does not fit the model ({'; '.join(problems)}).{describe_shape_hint(state_dict)}")
    result = model.load_state_dict(state_dict, strict=not new_mtp)
    assert sorted(result.missing_keys) == sorted(new_mtp) and not result.unexpected_keys, result  # checked above
    return model


# ----------------------------------------------------------------------------------------------------------
# Writing: atomic, so a crash or Ctrl-C mid-write never leaves a corrupt file behind.


def atomic_write(path: str, write):
    """Call `write(file)` on a temp file beside `path`, flush it to disk, then rename it over `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_torch_save(obj, path: str):
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_json_save(obj, path: str):
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str).encode()))


def checkpoint_path(out_dir: str, stage: str, hidden_size: int, use_moe: bool) -> str:
    """out/<stage>_<hidden>[_moe].pth, the name every stage and tool agrees on."""
    return os.path.join(out_dir, f"{stage}_{hidden_size}{'_moe' if use_moe else ''}.pth")


def meta_path(weights_path: str) -> str:
    return os.path.splitext(weights_path)[0] + ".json"


def save_weights(model: torch.nn.Module, path: str, meta: dict, dtype=torch.float16, state: dict | None = None):
    """The stage's product: a plain half-precision state dict plus a JSON meta (config, flags, progress)
    beside it, so the next stage rebuilds the model without being told its size. `state`: the tensors to
    write, when not the whole model's (a VLM leaves out its frozen encoder)."""
    model = unwrap(model)
    # ZeRO-3 leaves each process 1/N of every weight (empty tensors here): refuse to write an empty model.
    partitioned = [n for n, p in model.named_parameters() if p.numel() != getattr(p, "ds_numel", p.numel())]
    if partitioned:
        raise RuntimeError(f"save_weights: {partitioned[0]} and {len(partitioned) - 1} more are partitioned by "
                           "ZeRO-3: save inside model.optimizer.whole_weights(model), entered by every process")
    source, state, converted = model.state_dict() if state is None else state, {}, {}
    for key, value in source.items():
        if value.data_ptr() not in converted:  # tied weights stay one tensor, stored once
            cast = dtype if value.is_floating_point() else value.dtype
            converted[value.data_ptr()] = value.detach().to("cpu", cast).clone()
        state[key] = converted[value.data_ptr()]
    save_pair(state, path, {"config": model.config.to_dict(), **meta})


def save_pair(state: dict, path: str, meta: dict):
    """Weights, then their JSON meta holding the weights file's SHA-256: each write is atomic, and a kill
    between the two leaves a pair that `read_meta` recognises as mismatched instead of trusting it."""
    atomic_torch_save(state, path)
    atomic_json_save({**meta, "weights_sha256": file_sha256(path)}, meta_path(path))


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def read_meta(weights_path: str) -> dict | None:
    """The JSON meta beside a weights file (None without one). A meta written for another save of the
    weights (a save killed between its two files) is an error, never silently paired with them."""
    path = meta_path(weights_path)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable meta ({e})") from e
    digest = meta.get("weights_sha256")  # absent in metas written before the pair check, and in downloads
    if digest and os.path.exists(weights_path) and file_sha256(weights_path) != digest:
        raise CheckpointError(f"{path} describes another save than {weights_path} (a save was interrupted "
                              f"between the two files): rerun the stage with --resume to write both again")
    return meta


def nonfinite_weights(model: torch.nn.Module, dtype=torch.float16) -> int:
    """Values that are NaN/inf, or beyond what `dtype` holds (fp16 tops out at 65504): a model that would
    be saved full of inf. Checked before every save."""
    limit = torch.finfo(dtype).max if dtype.is_floating_point else float("inf")
    return sum(int((~torch.isfinite(p) | (p.abs() > limit)).sum()) for p in unwrap(model).state_dict().values()
               if p.is_floating_point())


def remove_stale_temp_files(*paths: str) -> list[str]:
    """Delete `<path>.tmp<PID>` files that saves of dead processes left behind (kill -9 mid-write)."""
    removed = []
    for path in paths:
        for tmp in glob.glob(glob.escape(path) + ".tmp*"):
            pid = tmp.rsplit(".tmp", 1)[1]
            if pid.isdigit() and not process_alive(int(pid)):
                os.remove(tmp)
                removed.append(tmp)
    return removed


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP / DeepSpeed / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def load_model(path: str, overrides: dict | None = None, device="cpu", dtype=None, quiet=False,
               trust_remote_code: bool = False):
    """(model, meta) from a stage checkpoint `.pth` (config read from its JSON meta) or an HF folder.

    `overrides` are config fields the caller set explicitly (e.g. size flags); for a `.pth` without meta,
    such as a MiniMind2 download, they are the whole config. Overrides that change the checkpoint's own
    config are printed, so nobody wonders which value won. A MiniMind or Llama folder needs no remote code
    (this package registers MiniMind with the Auto classes); `trust_remote_code` runs a folder's own Python.
    """
    from .model_minimind import MiniMindConfig, MiniMindForCausalLM

    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    vision_model = overrides.pop("vision_model", None)
    if os.path.isdir(path):
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code, **overrides)
        meta = {"config": model.config.to_dict(), "source": path}
    else:
        meta = read_meta(path) or {}
        config = dict(meta.get("config", {}))
        changed = {k: (config[k], v) for k, v in overrides.items() if k in config and config[k] != v}
        if changed and not quiet:
            print(f"{path}: flags override the checkpoint's config: "
                  + ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items()))
        from .model_vlm import is_vlm_config, load_vlm
        if is_vlm_config(config):  # MiniMind-V: the encoder comes from its folder (`vision_model` overrides it)
            return load_vlm(path, meta, vision_model, overrides, quiet).to(device=device, dtype=dtype), meta
        model = MiniMindForCausalLM(MiniMindConfig(**{**config, **overrides}))
        mtp_resized = overrides.get("mtp_depth", config.get("mtp_depth", 0)) != config.get("mtp_depth", 0)
        load_weights(model, path, mtp_resized=mtp_resized, quiet=quiet)
    return model.to(device=device, dtype=dtype), meta



# ----------------------------------------------------------------------------------------------------------
# A stage's model: built from size flags, or from the previous stage's checkpoint (its config, flags overriding).


def resolve_weight(args, name: str) -> str | None:
    """A stage name -> out/<stage>_<hidden>[_moe].pth; a path stays a path; 'none' -> None."""
    if name in (None, "", "none"):
        return None
    if name.endswith((".pth", ".safetensors")) or os.path.isdir(name):
        return name
    return checkpoint_path(args.out_dir, name, args.hidden_size or 512, bool(args.use_moe))


def size_overrides(args) -> dict:
    return {"hidden_size": args.hidden_size, "num_hidden_layers": args.num_hidden_layers,
            "use_moe": None if args.use_moe is None else bool(args.use_moe),
            "attention": getattr(args, "attention", None), "kv_lora_rank": getattr(args, "kv_lora_rank", None),
            "mtp_depth": getattr(args, "mtp_depth", None)}  # the chat tools' flags have none: keep the checkpoint's


@contextmanager
def config_errors_as_one_line():
    """MiniMindConfig's ValueErrors (sizes that do not divide, an MLA latent wider than the model, ...) are the
    flags' fault: one line and exit 1, not a traceback."""
    try:
        yield
    except ValueError as e:
        sys.exit(f"error: {e}")


def build_model(args, run, tokenizer, from_weight: str | None = None, trains_mtp: bool = False, **config):
    """A MiniMind model on the run's device, in float32 (autocast handles the low precision).

    `trains_mtp`: the stage's loss includes the multi-token prediction modules (pretraining and SFT). Elsewhere
    a checkpoint's MTP modules are carried along frozen: DDP would stop on weights that get no gradient."""
    path = resolve_weight(args, args.from_weight if from_weight is None else from_weight)
    if path:
        if not os.path.exists(path):
            sys.exit(f"--from_weight: {path} not found (train the previous stage first, or pass "
                     f"--from_weight <path>; size flags pick the file name: --hidden_size, --use_moe)")
        with config_errors_as_one_line():
            model, meta = load_model(path, {**size_overrides(args), **config}, quiet=not run.is_main)
        run.print(f"model: loaded {path} ({meta.get('stage', '?')}, step {meta.get('step', '?')})")
    else:
        sizes = {k: v for k, v in size_overrides(args).items() if v is not None}
        from .model_minimind import MiniMindConfig, MiniMindForCausalLM
        with config_errors_as_one_line():
            config = MiniMindConfig(vocab_size=len(tokenizer), **sizes, **config)
        model = MiniMindForCausalLM(config)
    if model.config.vocab_size != len(tokenizer):
        sys.exit(f"model vocab {model.config.vocab_size} != tokenizer vocab {len(tokenizer)} "
                 f"({args.tokenizer_path}): use the tokenizer the model was trained with")
    if args.grad_checkpoint:  # HF's switch: MiniMindModel recomputes each block in the backward (use_reentrant=False)
        model.activation_checkpointing_enable()
    if model.config.mtp_depth and not trains_mtp:
        model.mtp.requires_grad_(False)
        run.print(f"model: its {model.config.mtp_depth} MTP module(s) are kept as they are (this stage does not "
                  f"train them; --mtp_depth 0 drops them)")
    n = sum(p.numel() for p in model.parameters())
    run.print(f"model: {n / 1e6:.2f}M parameters, hidden {model.config.hidden_size} x "
              f"{model.config.num_hidden_layers} layers{', MoE' if model.config.use_moe else ''}"
              f"{', MLA' if model.config.attention == 'mla' else ''}"
              f"{', activation checkpointing' if args.grad_checkpoint else ''}")
    return model.to(run.device)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path)


def build_vlm(args, run, tokenizer):
    """A vision-language model for train_pretrain_vlm.py / train_sft_vlm.py, on the run's device.

    `--from_weight` is either a VLM (continue it: SFT after the caption stage) or a plain LLM (pretrain_*,
    full_sft_*: it gets `--vision_model`'s encoder and a fresh projection). Then `--train_llm` and
    `--train_vision` decide what trains; the projection always does."""
    from .model_vlm import describe, is_vlm_config, vlm_from_llm
    path = resolve_weight(args, args.from_weight)
    if not path or not os.path.exists(path):
        sys.exit(f"--from_weight: {path} not found (a VLM starts from an LLM: pretrain or full_sft, or a .pth path)")
    meta = read_meta(path) or {}
    with config_errors_as_one_line():
        if is_vlm_config(meta.get("config", {})):
            model, _ = load_model(path, {"vision_model": args.vision_model}, quiet=not run.is_main)
        else:
            if not args.vision_model:
                sys.exit("--vision_model: a new VLM needs a vision encoder folder (a local CLIP or SigLIP, e.g. a "
                         "clone of openai/clip-vit-base-patch16)")
            llm, meta = load_model(path, size_overrides(args), quiet=not run.is_main)
            model = vlm_from_llm(llm, args.vision_model, args.projector, args.image_pool, args.center_features)
    run.print(f"model: loaded {path} ({meta.get('stage', '?')}, step {meta.get('step', '?')})")
    if model.config.vocab_size != len(tokenizer):
        sys.exit(f"model vocab {model.config.vocab_size} != tokenizer vocab {len(tokenizer)} "
                 f"({args.tokenizer_path}): use the tokenizer the model was trained with")

    model.requires_grad_(args.train_llm == "all")
    if args.train_llm not in ("none", "all"):
        if not args.train_llm.isdigit() or not 0 < int(args.train_llm) <= model.config.num_hidden_layers:
            sys.exit(f"--train_llm {args.train_llm}: none, all, or a number of blocks from 1 to "
                     f"{model.config.num_hidden_layers}")
        for module in (*model.model.layers[-int(args.train_llm):], model.model.norm):
            module.requires_grad_(True)
    model.vision_proj.requires_grad_(True)
    model.vision_encoder.requires_grad_(args.train_vision)
    if args.train_vision:  # from now on the encoder's weights are the checkpoint's
        model.config.trained_vision = True
    if args.grad_checkpoint:
        model.activation_checkpointing_enable()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    run.print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M "
              f"trained: LLM {args.train_llm}, projection{', vision encoder' if args.train_vision else ''}); "
              f"{describe(model)}")
    return model.to(run.device)
