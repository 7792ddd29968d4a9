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
