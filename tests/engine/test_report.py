"""`kiln report RUN`: report.md again from what the run holds (the same text the training wrote), without
touching its checkpoints or weights; --html is one self-contained file."""

from __future__ import annotations

import base64
import json
import re

from kiln.cli import main
from kiln.recipes import get_recipe

PHASES = [{"name": "warm", "train": {"max_epochs": 1}}, {"name": "fine", "train": {"max_epochs": 1, "lr": 0.01}}]


def saved_files(run_dir):
    """Every checkpoint and weight file: its bytes and modification time."""
    paths = [*run_dir.glob("checkpoints/*"), *run_dir.glob("*.pt")]
    assert paths
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in paths}


def test_report_rewrites_the_training_report_from_the_run_s_files(tiny_config, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", str(tiny_config), "--run-dir", str(run_dir), "train.max_epochs=2"]) == 0
    written = (run_dir / "report" / "report.md").read_text()
    before = saved_files(run_dir)

    (run_dir / "report" / "report.md").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report" / "report.md").read_text() == written
    assert saved_files(run_dir) == before

    results = json.loads((run_dir / "test_results.json").read_text())
    h = get_recipe("nav").headline(results)
    assert f"| {h['metric']} | {h['value']:.4f} | {h['baseline_value']:.4f} |" in written
    assert f"| exact_accuracy | {results['exact_accuracy']:.4f} |" in written
    assert "![Learning curves](learning_curves.png)" in written and "(rollouts.png)" in written
    assert (run_dir / "config.yaml").read_text().strip() in written
    assert json.loads((run_dir / "run.json").read_text())["invocations"][0]["command"] in written

    capsys.readouterr()
    assert main(["report", str(run_dir), "--html"]) == 0
    assert "report.html" in capsys.readouterr().out
    page = (run_dir / "report" / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 2 and all(src.startswith("data:image/png;base64,") for src in sources)
    inlined = {base64.b64decode(src.split(",", 1)[1]) for src in sources}
    assert inlined == {(run_dir / "report" / name).read_bytes() for name in ("rollouts.png", "learning_curves.png")}
    assert "<table>" in page and f"<td>{h['value']:.4f}</td>" in page


def test_a_recipe_without_a_report_still_gets_one_with_its_learning_curves(toy, toy_cfg, run_toy, monkeypatch):
    import sys
    import types

    from kiln import recipes

    _, run_dir = run_toy("toy", toy_cfg())
    mse = json.loads((run_dir / "test_results.json").read_text())["mse"]
    assert f"| mse | {mse:.4f} |" in (run_dir / "report" / "report.md").read_text()  # written at training
    assert not (run_dir / "report" / "learning_curves.png").exists()

    module = types.ModuleType("kiln_test_toy_report")  # the toy recipe registered, as `kiln report` finds recipes
    module.RECIPE = toy
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(recipes.RECIPES, "toy", module.__name__)
    assert main(["report", str(run_dir)]) == 0
    text = (run_dir / "report" / "report.md").read_text()
    assert text.startswith("# toy run toy\n") and f"| mse | {mse:.4f} |" in text
    assert "![Learning curves](learning_curves.png)" in text and (run_dir / "report" / "learning_curves.png").is_file()


def test_a_phased_run_s_report_links_its_phase_reports(toy_cfg, run_toy):
    _, run_dir = run_toy("phased", toy_cfg(phases=PHASES))
    text = (run_dir / "report" / "report.md").read_text()
    assert "[Phase 1 report](../phase_1/report/report.md)" in text and "![Phase 1 report]" not in text
    assert "![Learning curves over all phases](learning_curves.png)" in text
