"""`kiln demo --recipes`: every recipe trained in its own process; one that fails is named with its one line, the
others still report their headline against the baseline, the exit code is non-zero, and runs/demo.md says the same."""

from __future__ import annotations

import json

import yaml

from kiln.cli import main
from kiln.recipes import get_recipe


def write_configs(tmp_path, tiny_config):
    """configs/<recipe>/quick.yaml: nav's tiny config, and a traffic one with a misspelt key."""
    nav = yaml.safe_load(tiny_config.read_text())
    nav["name"] = "tiny"
    nav["train"]["max_epochs"] = 1
    config_dir = tmp_path / "configs"
    for recipe, config in (("nav", nav), ("traffic", {"recipe": "traffic", "model": {"hidden_dimm": 8}})):
        (config_dir / recipe).mkdir(parents=True)
        (config_dir / recipe / "quick.yaml").write_text(yaml.safe_dump(config))
    return config_dir


def test_demo_reports_the_recipes_that_ran_and_names_the_one_that_failed(tiny_config, tmp_path, monkeypatch, capsys):
    config_dir = write_configs(tmp_path, tiny_config)
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--recipes", "traffic,nav", "--config-dir", str(config_dir)]) == 1
    out = capsys.readouterr().out

    run_dir = tmp_path / "runs" / "nav" / "demo"
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"
    assert not (tmp_path / "runs" / "traffic" / "demo").exists()
    h = get_recipe("nav").headline(json.loads((run_dir / "test_results.json").read_text()))
    parameters = next(line for line in (run_dir / "train.log").read_text().splitlines() if " parameters," in line)
    count = parameters.split(": ", 1)[1].split(" parameters")[0]  # the loop's count (nav saves no float buffers)

    table = (tmp_path / "runs" / "demo.md").read_text().splitlines()
    traffic_row = next(line for line in table if line.startswith("| traffic |"))
    nav_row = next(line for line in table if line.startswith("| nav |"))
    assert table.index(traffic_row) < table.index(nav_row)  # in the order asked for
    assert traffic_row.startswith(f"| traffic | FAILED: {config_dir / 'traffic' / 'quick.yaml'}: unknown config key "
                                  f"'model.hidden_dimm'; did you mean 'model.hidden_dim'? | - |")
    cells = [c.strip() for c in nav_row.strip("|").split(" | ")]
    assert cells[:3] == ["nav", "finished", f"tiny: mixer {count} weights, 1 epochs"]
    assert cells[3] == f"{h['metric']} ({'higher' if h['higher_is_better'] else 'lower'} is better)"
    assert cells[4] == f"{h['value']:.4f}" and cells[5] == f"{h['baseline']}: {h['baseline_value']:.4f}"
    assert cells[6].endswith("s")
    assert "FAILED" in out and h["metric"] in out and "Wrote runs/demo.md" in out

    # again, nav only: the earlier demo run is replaced (a fresh run, not a resumed one), and all is well
    assert main(["demo", "--recipes", "nav", "--config-dir", str(config_dir)]) == 0
    assert len(json.loads((run_dir / "run.json").read_text())["invocations"]) == 1
    assert "FAILED" not in (tmp_path / "runs" / "demo.md").read_text()


def test_demo_refuses_an_unknown_recipe(capsys):
    assert main(["demo", "--recipes", "nav,wrld"]) == 2
    assert "--recipes: unknown recipe 'wrld'; available:" in capsys.readouterr().err
