"""The layout's one rule: imports flow from scripts to packages, never back (model/ and demo/ import no script)."""
import ast
import glob
import os

from tests.helpers import ROOT

SCRIPTS = {"scripts", "run_demo", "eval_model", "eval_vlm"} | {os.path.basename(p)[:-3] for p in glob.glob(f"{ROOT}/train_*.py")}


def imported_modules(path):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_packages_import_no_script():
    files = glob.glob(f"{ROOT}/model/*.py") + glob.glob(f"{ROOT}/demo/*.py")
    assert len(files) > 20
    back = [(os.path.relpath(f, ROOT), m) for f in files for m in imported_modules(f) if m.split(".")[0] in SCRIPTS]
    assert back == []


def test_model_does_not_import_the_demo():
    """The demo world uses the package (the reasoning format); the package never needs the demo."""
    back = [(os.path.relpath(f, ROOT), m) for f in glob.glob(f"{ROOT}/model/*.py") for m in imported_modules(f)
            if m.split(".")[0] == "demo"]
    assert back == []
