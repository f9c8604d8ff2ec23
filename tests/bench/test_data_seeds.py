"""bench/data_seeds.py: its overrides make another data draw of every quick config, and its summary is the mean and
the worst seed (the training runs themselves are the bench's, minutes each)."""

from pathlib import Path

import pytest

from kiln.recipes import load_recipe_config

ROOT = Path(__file__).resolve().parents[2]
BENCH = "data_seeds"  # the bench fixture (conftest.py) imports bench/data_seeds.py


def seeds_of(recipe: str, cfg) -> tuple:
    """What makes the data of `recipe`'s validated config: the values data_overrides sets."""
    data = cfg.data
    return {"nav": lambda: (data.generate.seed,), "traffic": lambda: (data.generate.seed,),
            "world": lambda: (data.generate.seed,), "printer": lambda: (data.split_seed, tuple(data.test_models)),
            "seqgen": lambda: (data.generate.seed, data.split.split_seed)}[recipe]()


@pytest.mark.parametrize("recipe", ["nav", "traffic", "world", "printer", "seqgen"])
def test_each_seed_is_another_draw_of_the_quick_config_s_data_in_its_own_folder(bench, recipe, tmp_path):
    draws = set()
    for seed in (0, 1, 2):
        cfg = load_recipe_config(ROOT / "configs" / recipe / "quick.yaml",
                                 bench.data_overrides(recipe, seed, tmp_path / f"seed_{seed}"))[1]
        assert Path(cfg.data.dir) == tmp_path / f"seed_{seed}"
        draws.add(seeds_of(recipe, cfg))
    assert len(draws) == 3
    shipped = load_recipe_config(ROOT / "configs" / recipe / "quick.yaml", [])[1]
    assert seeds_of(recipe, shipped) in draws  # seed 0 is the shipped draw


def test_the_summary_is_the_mean_and_the_worst_seed(bench):
    rows = [{"seed": s, "value": v, "baseline_value": b, "higher_is_better": False, "coverage_80": c}
            for s, v, b, c in ((0, 0.04, 0.08, 0.79), (1, 0.06, 0.07, 0.81), (2, 0.05, 0.04, 0.80))]
    out = bench.summary(rows + [{"seed": 3, "error": "exit code 1"}])
    assert out["value_mean"] == pytest.approx(0.05) and out["value_worst"] == 0.06  # lower is better: the highest
    assert out["margin_mean"] == pytest.approx((0.04 + 0.01 - 0.01) / 3, abs=1e-4)  # rounded to 4 places and out["margin_worst"] == pytest.approx(-0.01)
    assert out["beats_baseline_on"] == "2/3" and out["coverage_80_range"] == [0.79, 0.81]
    higher = bench.summary([{**r, "higher_is_better": True} for r in rows])
    assert higher["value_worst"] == 0.04 and higher["margin_worst"] == pytest.approx(-0.04)
