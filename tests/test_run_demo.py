"""run_demo.py's report card (the chain itself runs in CI's README command, not here: it takes minutes)."""
import argparse
import math

from run_demo import Stage, write_report


def test_report_card_shows_a_dash_for_numbers_a_stage_does_not_have(tmp_path):
    results = {"seconds": 60.0, "steps": 10, "tokens": 1000, "tok_per_s": 500.0, "train_loss": 1.5,
               "curve": str(tmp_path / "none.png"), "accuracy": {"overall": 0.25, "arithmetic": 0.5}}
    with_val = Stage("SFT", "train_full_sft.py", [], "x.pth", results={**results, "val_loss": 0.75, "bpb": 1.25})
    without = Stage("LoRA", "train_lora.py", [], "y.pth", results={**results, "val_loss": math.nan})  # as the meta has it
    args = argparse.Namespace(preset="demo", hidden_size=256, num_hidden_layers=4, device="cpu", nproc=1)
    path = tmp_path / "report.md"
    write_report([with_val, without], args, str(path), 120.0)
    rows = {}  # the first table: stage -> time, steps, tokens, tokens/s, train loss, held-out loss, bits/byte, acc
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if cells and cells[0] in ("SFT", "LoRA"):
            rows.setdefault(cells[0], cells[1:])
    assert rows["SFT"][4:8] == ["1.500", "0.750", "1.250", "25.0%"]
    assert rows["LoRA"][4:8] == ["1.500", "–", "–", "25.0%"]
    assert "nan" not in path.read_text()


def test_report_card_shows_an_rl_stage_before_and_after(tmp_path):
    results = {"seconds": 60.0, "steps": 40, "tokens": 1000, "tok_per_s": 500.0, "train_loss": 0.1,
               "curve": str(tmp_path / "none.png"),
               "rl": {"passes": {"G": 8, "prompts": 64, "none": 0.25, "all": 0.125, "mixed": 0.625, "mean": 0.3},
                      "before": {"val_accuracy": 0.1, "val_template": 0.5, "val_reward": 0.2, "val_length": 30.0},
                      "after": {"val_accuracy": 0.2, "val_template": 0.75, "val_reward": 0.4, "val_length": 20.0},
                      "curve": None}}
    args = argparse.Namespace(preset="demo", hidden_size=256, num_hidden_layers=4, device="cpu", nproc=1)
    path = tmp_path / "report.md"
    write_report([Stage("grpo", "train_grpo.py", [], "g.pth", results=results)], args, str(path), 60.0)
    text = path.read_text()
    assert "pass@8 on 64 training prompts: 62.5% of the groups mixed" in text
    assert "| accuracy | 10.0% | 20.0% |" in text and "| template followed | 50.0% | 75.0% |" in text


def test_report_card_shows_the_tool_use_table(tmp_path):
    def tools(acc, needed, quiet):
        return {"accuracy": {"arithmetic": acc, "overall": acc}, "called_when_needed": needed, "quiet_when_not": quiet,
                "samples": [("What is 347 + 589?", ['calculator({"expression": "347 + 589"}) → 936'], "936.")]}
    base = {"seconds": 60.0, "steps": 10, "tokens": 1000, "tok_per_s": 500.0, "train_loss": 0.5,
            "curve": str(tmp_path / "none.png")}
    sft = Stage("tool_sft", "train_full_sft.py", [], "t.pth", results={**base, "tools_baseline": tools(0.0, 0.0, 1.0),
                                                                        "tools": tools(0.5, 0.9, 0.8)})
    agent = Stage("agent", "train_agent.py", [], "a.pth", results={**base, "tools": tools(0.75, 1.0, 0.9),
                                                                    "rl": {"curve": None}})
    args = argparse.Namespace(preset="demo", hidden_size=256, num_hidden_layers=4, device="cpu", nproc=1)
    path = tmp_path / "report.md"
    write_report([sft, agent], args, str(path), 60.0)
    text = path.read_text()
    assert "| full_sft (no tools) | 0.0% | 0.0% | 0.0% | 100.0% |" in text
    assert "| tool_sft (tools) | 50.0% | 50.0% | 90.0% | 80.0% |" in text
    assert "| agent (tools) | 75.0% | 75.0% | 100.0% | 90.0% |" in text
    assert '**call:** `calculator({"expression": "347 + 589"}) → 936`' in text


def test_report_card_shows_the_vision_table_with_chance_and_pictures(tmp_path):
    chance = {k: {"majority": 0.5 if k == "exists" else 0.2, "uniform": 0.5 if k == "exists" else 1 / 6}
              for k in ("shape", "exists", "overall")}
    accuracy = {"shape": 0.75, "exists": 0.875, "overall": 0.8, "shape (unseen combo)": 0.5,
                "exists (unseen combo)": 1.0, "overall (unseen combo)": 0.7}
    results = {"seconds": 60.0, "steps": 10, "tokens": 1000, "tok_per_s": 500.0, "train_loss": 0.5,
               "curve": str(tmp_path / "none.png"), "prep": ["scripts/pretrain_demo_vision.py", "enc"],
               "prep_seconds": 150.0,
               "vision": {"accuracy": accuracy, "chance": chance,
                          "samples": [("What shape?", "A circle.", "circle", True, ["report_images/a.png"])]}}
    args = argparse.Namespace(preset="demo", hidden_size=256, num_hidden_layers=4, device="cpu", nproc=1)
    path = tmp_path / "report.md"
    write_report([Stage("sft_vlm", "train_sft_vlm.py", [], "v.pth", vision=True, results=results)], args, str(path),
                 60.0)
    text = path.read_text()
    assert "| | shape | exists | overall |" in text
    assert "| sft_vlm | 75.0% | 87.5% | 80.0% |" in text
    assert "| sft_vlm, unseen | 50.0% | 100.0% | 70.0% |" in text
    assert "| chance (majority / uniform) | 20.0% / 16.7% | 50.0% / 50.0% | |" in text
    assert "Before it (2.5 min): `python scripts/pretrain_demo_vision.py enc`" in text
    assert "![picture](report_images/a.png) **Q:** What shape?" in text and "(right; expected: circle)" in text
