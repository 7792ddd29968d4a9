"""The whole MiniMind chain in one command, with a report card.

    python run_demo.py                                     # CPU, ~20 minutes: bundled demo data, demo-size model
    python run_demo.py --preset full --data_dir dataset --device cuda --nproc 8    # published data, 512 x 8

Each stage is the ordinary train_*.py script, run as a subprocess (under torchrun when --nproc > 1) with the
flags shown in the report, so anything here can be re-run by hand. After each stage the runner measures the
checkpoint on held-out data: bits per byte on held-out text, and, on the demo, accuracy on held-out
questions asked in phrasings never seen in training, with sample answers. Everything goes to
<out_dir>/report.md as it happens (loss curves beside it).
"""
import argparse
import csv
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.abspath(__file__))
DEMO = os.path.join(ROOT, "dataset", "demo")


@dataclass
class Stage:
    name: str  # the report's name for it
    script: str
    flags: list[str]
    product: str  # the checkpoint it writes
    base: str | None = None  # for LoRA: the model the adapters go on
    chat: bool = True  # ask held-out questions through the chat template (False: as plain text)
    max_new_tokens: int | None = None  # for held-out answers (None: --max_new_tokens); reasoning thinks first
    note: str = ""
    vision: bool = False  # a MiniMind-V stage: measured on the held-out image questions
    results: dict = field(default_factory=dict)


def sized(hidden: int, layers: int) -> list[str]:
    return ["--hidden_size", str(hidden), "--num_hidden_layers", str(layers)]


def demo_stages(args) -> list[Stage]:
    """A model small enough to train on 2 CPU cores in minutes; budgets chosen by measurement."""
    h, out = args.hidden_size, args.out_dir
    ckpt = lambda stage, hidden=h: os.path.join(out, f"{stage}_{hidden}.pth")  # noqa: E731
    common = ["--out_dir", out, "--max_seq_len", "256", "--log_interval", "25", "--save_interval", "1000000",
              "--device", args.device, "--warmup_iters", "20", "--eval_batches", "20"]
    main = sized(h, args.num_hidden_layers) + common
    vlm = main + ["--batch_size", "16"]
    student = sized(args.student_hidden_size, args.student_layers) + common + ["--batch_size", "16"]
    # Small batches: on this little data the number of updates, more than the tokens, decides what is learned.
    return [
        Stage("pretrain", "train_pretrain.py", main + ["--epochs", "1", "--batch_size", "8", "--learning_rate", "2e-3"],
              ckpt("pretrain"), chat=False,
              note="The pretrained model only continues text, so its held-out questions are asked as plain text."),
        Stage("full_sft", "train_full_sft.py", main + ["--epochs", "1", "--batch_size", "4", "--pack", "1",
                                                       "--learning_rate", "1e-3"], ckpt("full_sft"),
              note="Short chats packed several to a 256-token window, each learning only its replies."),
        Stage("pretrain_vlm", "train_pretrain_vlm.py", vlm + [
            "--from_weight", ckpt("full_sft"), "--vision_model", os.path.join(out, "vision_encoder"),
            "--train_llm", "all", "--center_features", "--epochs", "2", "--learning_rate", "1e-3"],
              ckpt("pretrain_vlm"), vision=True,
              note="MiniMind-V, stage 1: the SFT model learns to caption 64x64 pictures of shapes. Its vision "
                   "encoder is the demo's stand-in for a downloaded CLIP: a 3-layer ViT with 16x16 patches (16 "
                   "tokens per picture), pretrained just before on fresh training-safe pictures to tell each patch's "
                   "shape kind and colour (scripts/pretrain_demo_vision.py), then frozen as a real CLIP would be. "
                   "The LLM trains too (--train_llm all, where the script's default freezes it): the demo's LLM has "
                   "never seen a word for a shape or a colour, and a frozen one cannot learn to say them (its "
                   "caption loss stayed at 7.5). --center_features subtracts each picture's mean patch feature, "
                   "which is mostly the background."),
        Stage("sft_vlm", "train_sft_vlm.py", vlm + [
            "--from_weight", ckpt("pretrain_vlm"), "--epochs", "2", "--learning_rate", "3e-4",
            "--mix_path", os.path.join(DEMO, "vlm", "pretrain_vlm.jsonl"), "--mix_ratio", "0.25"],
              ckpt("sft_vlm"), vision=True,
              note="MiniMind-V, stage 2: questions about the pictures (what shape, what colour, how many, where, is "
                   "there a ..., do two pictures hold as many shapes), some multi-turn, some with two images; the "
                   "LLM and the projection train, the encoder stays frozen; one caption row is replayed per four "
                   "questions (--mix_path), or the stage forgets the shape names the captions taught. Yes/no "
                   "replies first say what they looked at (the shapes in the asked colour; both counts), then the "
                   "verdict. Held-out: fresh pictures, phrasings never seen in training, and colour/shape, "
                   "position/shape and count/background combinations no training picture has."),
        Stage("lora_identity", "train_lora.py", main + ["--lora_name", "identity", "--epochs", "2",
                                                        "--batch_size", "16", "--learning_rate", "4e-3", "--mix_path",
                                                        os.path.join(DEMO, "sft.jsonl"), "--mix_ratio", "3"]
              + (["--quantize", args.lora_quantize] if args.lora_quantize != "none" else []),
              os.path.join(out, "lora", f"lora_identity_{h}.pth"), base=ckpt("full_sft"),
              note="LoRA adds the identity (who am I) to the SFT model, with three general chats replayed per "
                   "identity chat so that the other categories hold."),
        Stage("dpo", "train_dpo.py", main + ["--max_steps", "100", "--batch_size", "8", "--learning_rate", "1e-4",
                                             "--sft_weight", "1", "--eval_batches", "40"], ckpt("rlhf"),
              note="Like real SFT sets, the demo's SFT chats dodge a few questions (5%); DPO on pairs whose "
                   "rejected reply is wrong, evasive or answers another question unlearns that. Preference "
                   "accuracy (pref_acc, and sft_pref_acc for the SFT model) is on the held-out pairs."),
        Stage("reason", "train_distill_reason.py", main + ["--max_steps", "100", "--batch_size", "16",
                                                           "--learning_rate", "1e-3", "--eval_samples", "100",
                                                           "--max_new_tokens", "160"],
              ckpt("reason"), max_new_tokens=160),
        Stage("grpo", "train_grpo.py", main + [
            "--from_weight", ckpt("rlhf"), "--max_steps", "40", "--batch_size", "8", "--num_generations", "8",
            "--max_new_tokens", "64", "--overlong_cache", "32", "--format_weight", "0", "--learning_rate", "1e-4",
            "--warmup_iters", "2",
            "--log_interval", "1", "--eval_interval", "20", "--data_path", os.path.join(DEMO, "rl_prompts.jsonl"),
            "--val_path", os.path.join(DEMO, "rl_prompts_val.jsonl")], ckpt("grpo"),
              note="RL from verifiable rewards (CISPO) on the DPO model: it samples 8 replies to each fact, "
                   "arithmetic and word-problem prompt, the accuracy reward (with length and repetition "
                   "penalties) scores them, and replies that beat their group's average become more likely. "
                   "It starts from the DPO model, not the reasoning one: the reasoning model follows the "
                   "template but gets almost no answer right (pass@8 near 0), and a group whose replies all "
                   "score alike teaches nothing. Accuracy is greedy replies to the held-out RL prompts."),
        Stage("tool_sft", "train_full_sft.py", sized(h, args.num_hidden_layers) + common + [
            "--from_weight", ckpt("full_sft"), "--save_weight", "tool_sft",
            "--data_path", os.path.join(DEMO, "sft_tools.jsonl"), "--max_steps", "150", "--batch_size", "4",
            "--pack", "1", "--max_seq_len", "1024", "--learning_rate", "1e-3"],
              ckpt("tool_sft"),
              note="Tool-use SFT on the SFT model: chats whose system turn offers a calculator, a lookup of the "
                   "world's facts and a unit converter; the replies call them (<tool_call> blocks), read the "
                   "results (<tool_response>) and answer, or answer small talk directly."),
        Stage("agent", "train_agent.py", sized(h, args.num_hidden_layers) + common + [
            "--from_weight", ckpt("tool_sft"), "--max_steps", "16", "--batch_size", "4", "--num_generations", "4",
            "--max_new_tokens", "64", "--max_tool_turns", "3", "--learning_rate", "1e-4", "--warmup_iters", "2",
            "--max_seq_len", "512", "--log_interval", "1", "--data_path", os.path.join(DEMO, "agent_prompts.jsonl")],
              ckpt("agent"),
              note="Agentic RL (CISPO) on the tool-SFT model: 4 episodes for each of 4 prompts per step; each "
                   "episode runs the model's tool calls in the sandbox and feeds the results back, up to 3 "
                   "turns; the reward checks the final answer and that every call was valid. Tool results are "
                   "context only, never trained on. Before and after: the tool-use table above."),
        Stage("student_sft", "train_full_sft.py", student + ["--from_weight", "none", "--max_steps", "150",
                                                             "--learning_rate", "2e-3"],
              ckpt("full_sft", args.student_hidden_size),
              note="Baseline for distillation: the small student trained from scratch on the SFT data alone."),
        Stage("distill", "train_distillation.py", student + [
            "--from_weight", "none", "--teacher_weight", ckpt("full_sft"), "--max_steps", "150",
            "--learning_rate", "2e-3"], ckpt("full_dist", args.student_hidden_size),
              note="The same student, same steps, also matching the SFT model's (the teacher's) distributions."),
    ]


def full_stages(args) -> list[Stage]:
    """The published recipe (minimind's defaults) on the published files in --data_dir."""
    d, out, h = args.data_dir, args.out_dir, args.hidden_size
    ckpt = lambda stage: os.path.join(out, f"{stage}_{h}.pth")  # noqa: E731
    common = sized(h, args.num_hidden_layers) + ["--out_dir", out, "--device", args.device, "--num_workers", "4"]
    data = lambda name: ["--data_path", os.path.join(d, name)]  # noqa: E731
    return [
        Stage("pretrain", "train_pretrain.py", common + data("pretrain_hq.jsonl") + [
            "--batch_size", "32", "--accumulation_steps", "8", "--learning_rate", "5e-4", "--max_seq_len", "512"],
              ckpt("pretrain"), chat=False),
        Stage("full_sft", "train_full_sft.py", common + data("sft_mini_512.jsonl") + [
            "--epochs", "2", "--batch_size", "16", "--learning_rate", "5e-5", "--max_seq_len", "512"],
              ckpt("full_sft")),
        Stage("lora_identity", "train_lora.py", common + data("lora_identity.jsonl") + [
            "--lora_name", "identity", "--epochs", "10", "--batch_size", "32", "--learning_rate", "1e-4"],
              os.path.join(out, "lora", f"lora_identity_{h}.pth"), base=ckpt("full_sft")),
        Stage("dpo", "train_dpo.py", common + data("dpo.jsonl") + [
            "--batch_size", "4", "--learning_rate", "4e-8", "--max_seq_len", "1024"], ckpt("rlhf")),
        Stage("reason", "train_distill_reason.py", common + data("r1_mix_1024.jsonl") + [
            "--batch_size", "8", "--learning_rate", "1e-6", "--max_seq_len", "1024"], ckpt("reason")),
    ]


def run_stage(stage: Stage, args, log_dir: str) -> float:
    """Run one training script, teeing its output to <log_dir>/<stage>.log; returns wall seconds."""
    launcher = [sys.executable]
    if args.nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc)]
    cmd = launcher + [stage.script] + stage.flags
    print(f"\n=== {stage.name}: {' '.join(shlex.quote(c) for c in cmd[1:])}", flush=True)
    start = time.time()
    with open(os.path.join(log_dir, f"{stage.name}.log"), "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        for line in proc.stdout:
            if "\r" not in line:  # progress bars go to the log only
                print(line, end="", flush=True)
            log.write(line)
    if proc.wait() != 0:
        sys.exit(f"{stage.name} failed (exit {proc.returncode}); see {log_dir}/{stage.name}.log")
    return time.time() - start


def training_numbers(stage: Stage) -> dict:
    """Steps, tokens, throughput and losses from the checkpoint's JSON meta and the run's CSV log."""
    stem = os.path.splitext(stage.product)[0]
    with open(stem + ".json") as f:
        meta = json.load(f)
    with open(stem + "_log.csv") as f:
        speeds = [float(r["tok_per_s"]) for r in csv.DictReader(f) if r.get("tok_per_s")]
    speeds = speeds[1:] or speeds  # the first interval includes start-up
    return {"tokens": meta["tokens"], "steps": meta["step"], "train_loss": meta["loss"],
            "val_loss": meta.get("val_loss"), "eval": meta.get("eval", {}),
            "tok_per_s": sum(speeds) / len(speeds) if speeds else float("nan"), "curve": stem + "_loss.png"}


def load_stage_model(stage: Stage, device: str):
    from model.checkpoint import load_model
    if stage.base is None:
        return load_model(stage.product, device=device)[0]
    from model.model_lora import load_lora, merge_lora
    model = load_model(stage.base, device=device)[0]
    load_lora(model, stage.product)
    return merge_lora(model)


def measure(stage: Stage, args, rows: list[dict]) -> dict:
    """Bits per byte on held-out text, and held-out question accuracy per category with sample answers."""
    import torch
    from model.checkpoint import load_tokenizer
    from model.generation import answer_questions
    from model.loss_eval import bits_per_byte

    torch.set_num_threads(os.cpu_count() or 1)
    model = load_stage_model(stage, args.eval_device).float().eval()
    tokenizer = load_tokenizer(os.path.join(ROOT, "model", "tokenizer"))
    results = {}
    if args.bpb_path:
        results["bpb"] = bits_per_byte(model, tokenizer, args.bpb_path, max_seq_len=256)["bits_per_byte"]
    if rows:
        from demo import score
        replies = answer_questions(model, tokenizer, [r["question"] for r in rows], chat=stage.chat,
                                   max_new_tokens=stage.max_new_tokens or args.max_new_tokens)
        results["accuracy"] = score(replies, rows)
        step = max(1, len(rows) // 8)
        results["samples"] = [(rows[i]["question"], replies[i]) for i in range(0, len(rows), step)][:8]
    return results


def vision_measure(stage: Stage, args) -> dict:
    """A MiniMind-V stage: greedy answers to the held-out image questions, accuracy per question kind (on all
    of them, and on those about unseen combinations) beside chance, and sample answers with their pictures."""
    import shutil

    import torch
    from demo.vision import chance_levels, demo_vlm_dir, is_correct_vlm, score_vlm
    from model.checkpoint import load_tokenizer
    from model.generation import answer_image_questions
    from model.vision import load_image_processor

    torch.set_num_threads(os.cpu_count() or 1)
    model = load_stage_model(stage, args.eval_device).float().eval()
    tokenizer = load_tokenizer(os.path.join(ROOT, "model", "tokenizer"))
    folder = demo_vlm_dir()
    with open(os.path.join(folder, "vlm_heldout.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    images = [[os.path.join(folder, "images", n.strip()) for n in r["image"].split(",")] for r in rows]
    replies = answer_image_questions(model, tokenizer, load_image_processor(model.config.vision_model_path),
                                     [(r["question"], i) for r, i in zip(rows, images)], max_new_tokens=32)
    shown = os.path.join(args.out_dir, "report_images")
    os.makedirs(shown, exist_ok=True)
    samples = []
    for kind in dict.fromkeys(r["kind"] for r in rows):  # one question of each kind, alternating languages
        i = next(k for k, r in enumerate(rows) if r["kind"] == kind and r["lang"] == ("en", "zh")[len(samples) % 2])
        for path in images[i]:
            shutil.copy(path, shown)
        samples.append((rows[i]["question"], replies[i], rows[i]["answer"], is_correct_vlm(replies[i], rows[i]),
                        [os.path.join("report_images", os.path.basename(p)) for p in images[i]]))
    return {"vision": {"accuracy": score_vlm(replies, rows), "chance": chance_levels(rows), "samples": samples}}


def flag(stage: Stage, name: str, default=None):
    return stage.flags[stage.flags.index(name) + 1] if name in stage.flags else default


def group_pass_rates(stage: Stage, args, n_prompts: int = 64) -> dict:
    """Before an RL stage: its starting model samples G replies (its sampling settings) to the first prompts
    of its training file; the share of groups with no right reply, some, and all. Only the mixed groups
    carry a learning signal."""
    import torch
    from model.checkpoint import load_model, load_tokenizer
    from model.dataset import RLPromptDataset
    from model.rewards import accuracy_reward
    from model.rollout import TorchRollout

    torch.set_num_threads(os.cpu_count() or 1)
    G = int(flag(stage, "--num_generations", 8))
    model = load_model(flag(stage, "--from_weight"), device=args.eval_device)[0].float().eval()
    tokenizer = load_tokenizer(os.path.join(ROOT, "model", "tokenizer"))
    data = RLPromptDataset(flag(stage, "--data_path"), tokenizer, 256)
    rows = [data[i] for i in range(min(n_prompts, len(data)))]
    sampler = TorchRollout(model, tokenizer.eos_token_id, int(flag(stage, "--max_new_tokens", 160)),
                           temperature=float(flag(stage, "--temperature", 1.0)), seed=1)
    right = []
    for start in range(0, len(rows), 8):
        batch = rows[start:start + 8]
        rollout = sampler([r["prompt_ids"].tolist() for r in batch], G, step=start)
        texts = tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
        right += [sum(accuracy_reward(texts[i * G + j], r["answer"]) for j in range(G)) for i, r in enumerate(batch)]
    n = len(right)
    return {"G": G, "prompts": n, "none": sum(k == 0 for k in right) / n, "all": sum(k == G for k in right) / n,
            "mixed": sum(0 < k < G for k in right) / n, "mean": sum(right) / (n * G)}


def tool_use(weights: str, args, with_tools: bool) -> dict:
    """Greedy episodes on the held-out agent prompts (agent_prompts_val.jsonl): accuracy per category, and
    whether a tool was called when one was needed and not called when not. with_tools=False asks the same
    questions without offering any tool (the plain SFT model's baseline)."""
    import torch
    from demo import is_correct
    from demo.tools import demo_tools
    from model.agent import greedy_episodes
    from model.chat import chat_prompt_ids
    from model.checkpoint import load_model, load_tokenizer
    from model.toolcall import normalize_messages

    torch.set_num_threads(os.cpu_count() or 1)
    model = load_model(weights, device=args.eval_device)[0].float().eval()
    tokenizer = load_tokenizer(os.path.join(ROOT, "model", "tokenizer"))
    tools = {t.name: t for t in demo_tools()} if with_tools else {}
    with open(os.path.join(DEMO, "agent_prompts_val.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    prompts = []
    for row in rows:
        messages, offered = normalize_messages(row["conversations"])
        messages = [{k: v for k, v in m.items() if k != "tools"} for m in messages]
        prompts.append(chat_prompt_ids(tokenizer, messages, offered if with_tools else None))
    episodes = greedy_episodes(model, tokenizer, tools, prompts, [list(tools)] * len(rows), 64, 3)
    by_category, needed, not_needed = {}, [], []
    for row, episode in zip(rows, episodes):
        called = bool(episode.calls)
        (needed if row["needs_tool"] else not_needed).append(called if row["needs_tool"] else not called)
        if row["answer"]:
            by_category.setdefault(row["category"], []).append(is_correct(episode.answer, row))
    accuracy = {c: sum(v) / len(v) for c, v in sorted(by_category.items())}
    accuracy["overall"] = sum(map(sum, by_category.values())) / sum(map(len, by_category.values()))
    samples = []
    for i in range(0, len(rows), max(1, len(rows) // 6)):
        calls = [f"{c.name}({json.dumps(c.arguments, ensure_ascii=False)}) → {r}" for c, r in episodes[i].calls]
        samples.append((rows[i]["conversations"][-1]["content"], calls, episodes[i].answer))
    return {"accuracy": accuracy, "called_when_needed": sum(needed) / len(needed),
            "quiet_when_not": sum(not_needed) / len(not_needed), "samples": samples[:6]}


def reward_curve(stage: Stage) -> str | None:
    """The RL stage's reward per step (and its accuracy part), with the held-out accuracy of each evaluation."""
    stem = os.path.splitext(stage.product)[0]
    with open(stem + "_log.csv") as f:
        rows = list(csv.DictReader(f))
    series = {name: [(int(r["step"]), float(r[name])) for r in rows if r.get(name) not in (None, "")]
              for name in ("reward", "r_accuracy", "val_accuracy")}
    if not series["reward"]:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*series["reward"]), alpha=0.35, label="reward (per step)")
    if series["r_accuracy"]:
        steps, values = zip(*series["r_accuracy"])
        window = 5
        smooth = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                  for i in range(len(values))]
        ax.plot(steps, smooth, label=f"accuracy reward ({window}-step mean)")
    if series["val_accuracy"]:
        ax.plot(*zip(*series["val_accuracy"]), marker="o", label="held-out accuracy (greedy)")
    ax.set_xlabel("optimizer step")
    ax.set_title(os.path.basename(stem))
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(stem + "_reward.png", dpi=100)
    plt.close(fig)
    return stem + "_reward.png"


def rl_numbers(stage: Stage) -> dict:
    """Held-out accuracy and template compliance before (the step-0 evaluation) and after training."""
    with open(os.path.splitext(stage.product)[0] + "_log.csv") as f:
        evals = [r for r in csv.DictReader(f) if r.get("val_accuracy") not in (None, "")]
    names = ("val_accuracy", "val_template", "val_reward", "val_length")
    return {"before": {k: float(evals[0][k]) for k in names}, "after": {k: float(evals[-1][k]) for k in names}} \
        if evals else {}


def pct(value) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def num(value, spec: str = ".3f") -> str:
    """A number for the report card; a dash for one the stage does not have (None, or NaN from the meta)."""
    return "–" if value is None or math.isnan(value) else format(value, spec)


def write_report(stages: list[Stage], args, path: str, total_seconds: float):
    done = [s for s in stages if s.results]
    lines = ["# MiniMind report card", "",
             f"Preset `{args.preset}`, model {args.hidden_size} x {args.num_hidden_layers}, device `{args.device}`, "
             f"{args.nproc} process(es). Wall time: {total_seconds / 60:.1f} min.", "",
             "| stage | time | steps | tokens | tokens/s | train loss | held-out loss | held-out bits/byte | "
             "held-out accuracy |", "|---|---|---|---|---|---|---|---|---|"]
    for s in done:
        r = s.results
        acc = r.get("accuracy", {}).get("overall")
        val = r.get("val_loss")
        lines.append(f"| {s.name} | {r['seconds'] / 60:.1f} min | {r['steps']} | {r['tokens']:,} | "
                     f"{num(r['tok_per_s'], ',.0f')} | {num(r['train_loss'])} | {num(val)} | {num(r.get('bpb'))} | "
                     f"{pct(acc)} |")
    lines += ["", "Held-out loss is each stage's own validation set (text for pretraining, replies for chat "
              "stages, the DPO loss for DPO); bits per byte is on the same held-out pretraining text for every "
              "stage, so stages compare."]
    categories = sorted({c for s in done for c in s.results.get("accuracy", {}) if c != "overall"})
    if categories:
        lines += ["", "## Held-out accuracy by category", "",
                  "Questions never seen in training: facts asked in new phrasings, facts stated only in the "
                  "pretraining text, two-hop combinations, unseen arithmetic and word problems, identity and the "
                  "herb domain (the last two are taught only by LoRA data).", "",
                  "| stage | " + " | ".join(categories) + " |", "|---|" + "---|" * len(categories)]
        for s in done:
            acc = s.results.get("accuracy")
            if acc:
                lines.append(f"| {s.name} | " + " | ".join(pct(acc.get(c)) for c in categories) + " |")
    seen = [s for s in done if s.results.get("vision")]
    if seen:
        chance = seen[-1].results["vision"]["chance"]
        kinds = [k for k in chance if k != "overall" and "(" not in k]
        lines += ["", "## MiniMind-V: held-out image questions", "",
                  "Fresh pictures, question phrasings no training row uses; \"unseen\" counts only the questions "
                  "about a combination no training picture has (a colour on a shape, a shape at a position, a count "
                  "on a background). Chance: the best constant answer on these rows, then uniform guessing.", "",
                  "| | " + " | ".join(kinds) + " | overall |", "|---|" + "---|" * (len(kinds) + 1)]
        for s in seen:
            acc = s.results["vision"]["accuracy"]
            lines.append(f"| {s.name} | " + " | ".join(pct(acc.get(k)) for k in kinds) + f" | {pct(acc['overall'])} |")
            lines.append(f"| {s.name}, unseen | " + " | ".join(pct(acc.get(f"{k} (unseen combo)")) for k in kinds)
                         + f" | {pct(acc.get('overall (unseen combo)'))} |")
        lines.append("| chance (majority / uniform) | " + " | ".join(
            f"{pct(chance[k]['majority'])} / {pct(chance[k]['uniform'])}" for k in kinds) + " | |")
    tool_rows = [(name, t) for s in done for name, t in (("full_sft (no tools)", s.results.get("tools_baseline")),
                                                          (f"{s.name} (tools)", s.results.get("tools"))) if t]
    if tool_rows:
        kinds = sorted({c for _, t in tool_rows for c in t["accuracy"] if c != "overall"})
        lines += ["", "## Tool use", "",
                  "Held-out agent prompts (agent_prompts_val.jsonl: unseen operands and word problems, facts only "
                  "pretraining states, two-hop subjects never asked in training, small talk in new phrasings), "
                  "answered greedily; with tools, each call runs and its result goes back to the model (up to 3 "
                  "turns).", "",
                  "| model | " + " | ".join(kinds) + " | overall | tool called when needed | no call when not |",
                  "|---|" + "---|" * (len(kinds) + 3)]
        for name, t in tool_rows:
            lines.append(f"| {name} | " + " | ".join(pct(t["accuracy"].get(c)) for c in kinds) +
                         f" | {pct(t['accuracy']['overall'])} | {pct(t['called_when_needed'])} | "
                         f"{pct(t['quiet_when_not'])} |")
    for s in done:
        lines += ["", f"## {s.name}", "", f"`python {s.script} {' '.join(shlex.quote(f) for f in s.flags)}`", ""]
        if s.note:
            lines += [s.note, ""]
        if s.results.get("eval"):
            lines += ["Last evaluation in training: " + ", ".join(f"{k} {v:.4g}" for k, v in s.results["eval"].items()),
                      ""]
        if os.path.exists(s.results["curve"]):
            lines += [f"![{s.name} loss]({os.path.relpath(s.results['curve'], os.path.dirname(path))})", ""]
        rl = s.results.get("rl")
        if rl and rl.get("passes"):
            p = rl["passes"]
            lines += [f"Before training, pass@{p['G']} on {p['prompts']} training prompts: {pct(p['mixed'])} of the "
                      f"groups mixed (some replies right, some wrong: the ones that teach), {pct(p['none'])} with no "
                      f"right reply, {pct(p['all'])} all right; {pct(p['mean'])} of the replies right.", ""]
        if rl and rl.get("before"):
            b, a = rl["before"], rl["after"]
            lines += ["| held-out RL prompts (greedy) | before | after |", "|---|---|---|",
                      f"| accuracy | {pct(b['val_accuracy'])} | {pct(a['val_accuracy'])} |",
                      f"| template followed | {pct(b['val_template'])} | {pct(a['val_template'])} |",
                      f"| mean reward | {b['val_reward']:.3f} | {a['val_reward']:.3f} |",
                      f"| reply length (tokens) | {b['val_length']:.1f} | {a['val_length']:.1f} |", ""]
        if rl and rl.get("curve"):
            lines += [f"![{s.name} reward]({os.path.relpath(rl['curve'], os.path.dirname(path))})", ""]
        if s.results.get("prep"):
            took = f" ({s.results['prep_seconds'] / 60:.1f} min)" if "prep_seconds" in s.results else ""
            lines += [f"Before it{took}: `python {shlex.join(s.results['prep'])}`", ""]
        for question, reply, answer, right, pictures in s.results.get("vision", {}).get("samples", []):
            shown = " ".join(f"![picture]({p})" for p in pictures)
            lines.append(f"- {shown} **Q:** {question}  \n  **A:** {' '.join(reply.split())[:200]} "
                         f"({'right' if right else 'wrong'}; expected: {answer})")
        for question, reply in s.results.get("samples", []):
            reply = " ".join(reply.split())[:200]
            lines.append(f"- **Q:** {' '.join(question.split())}  \n  **A:** {reply}")
        if s.results.get("tools"):
            lines += ["", "Held-out episodes with tools:", ""]
            for question, calls, answer in s.results["tools"]["samples"]:
                steps = "".join(f"  \n  **call:** `{c}`" for c in calls)
                answer = " ".join(answer.split())[:200]
                lines.append(f"- **Q:** {' '.join(question.split())}{steps}  \n  **A:** {answer}")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo", choices=["demo", "full"])
    parser.add_argument("--data_dir", default="dataset", help="the published files, for --preset full")
    parser.add_argument("--out_dir", default=None, help="default: out/demo (demo) or out (full)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--nproc", type=int, default=1, help="processes (GPUs) per stage, via torchrun")
    parser.add_argument("--hidden_size", type=int, default=None, help="default 256 (demo) or 512 (full)")
    parser.add_argument("--num_hidden_layers", type=int, default=None, help="default 4 (demo) or 8 (full)")
    parser.add_argument("--student_hidden_size", type=int, default=128, help="the demo's distillation student")
    parser.add_argument("--student_layers", type=int, default=2)
    parser.add_argument("--stages", default=None, help="comma-separated subset of the stage names")
    parser.add_argument("--bpb_path", default=None, help="held-out text for bits per byte (demo: pretrain_val)")
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument("--lora_quantize", default="none", choices=["none", "nf4"],
                        help="nf4: the demo's LoRA stage as QLoRA (its base in 4-bit NormalFloat)")
    args = parser.parse_args()
    demo = args.preset == "demo"
    args.out_dir = args.out_dir or ("out/demo" if demo else "out")
    args.hidden_size = args.hidden_size or (256 if demo else 512)
    args.num_hidden_layers = args.num_hidden_layers or (4 if demo else 8)
    args.eval_device = "cpu" if args.device in ("auto", "cpu") else args.device
    log_dir = os.path.join(args.out_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)

    start = time.time()
    rows = []
    if demo:
        from demo import generate
        generate(DEMO)
        with open(os.path.join(DEMO, "eval.jsonl"), encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        args.bpb_path = args.bpb_path or os.path.join(DEMO, "pretrain_val.jsonl")
    stages = demo_stages(args) if demo else full_stages(args)
    if args.stages:
        stages = [s for s in stages if s.name in args.stages.split(",")]
    report = os.path.join(args.out_dir, "report.md")
    for stage in stages:
        rl = stage.script in ("train_grpo.py", "train_ppo.py")  # train_agent.py has its own table (tool_use)
        passes = group_pass_rates(stage, args) if rl else None
        prep, prep_seconds = None, {}
        if stage.name == "pretrain_vlm":  # the demo's stand-in for a downloaded CLIP: pretrain it first
            prep = ["scripts/pretrain_demo_vision.py", flag(stage, "--vision_model")]
            print(f"\n=== vision encoder: python {shlex.join(prep)}", flush=True)
            begun = time.time()
            subprocess.run([sys.executable, *prep], cwd=ROOT, check=True)
            prep_seconds = {"prep_seconds": time.time() - begun}
        seconds = run_stage(stage, args, log_dir)
        numbers = vision_measure(stage, args) if stage.vision else measure(stage, args, rows)
        stage.results = {"seconds": seconds, "prep": prep, **prep_seconds, **training_numbers(stage), **numbers}
        if rl:
            stage.results["rl"] = {"passes": passes, **rl_numbers(stage), "curve": reward_curve(stage)}
        if stage.name == "agent":
            stage.results["rl"] = {"curve": reward_curve(stage)}
        if stage.name in ("tool_sft", "agent"):
            if stage.name == "tool_sft":
                stage.results["tools_baseline"] = tool_use(flag(stage, "--from_weight"), args, with_tools=False)
            stage.results["tools"] = tool_use(stage.product, args, with_tools=True)
        if "accuracy" in stage.results:
            print(f"{stage.name}: held-out accuracy {pct(stage.results['accuracy']['overall'])}", flush=True)
        write_report(stages, args, report, time.time() - start)
    print(f"\ndone in {(time.time() - start) / 60:.1f} min; report card: {report}")


if __name__ == "__main__":
    main()
