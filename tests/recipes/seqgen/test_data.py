"""The original guide's CSV format: the synthetic generator (physics, PCA on the training split only), validation of bad
files, and the seeded split."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from kiln.errors import KilnError
from kiln.recipes import load_recipe_config
from kiln.recipes.seqgen.config import SyntheticStrings
from kiln.recipes.seqgen.data import COLUMNS, generate_dataset, read_sequences, split_indices
from kiln.recipes.seqgen.sim import PLUCK, string_profiles


def test_the_string_starts_as_the_pluck_and_decays():
    params = np.array([[1.0, 0.01], [0.5, 0.002]])
    u = string_profiles(params, points=99)
    x = np.linspace(0, 1, 101)[1:-1]
    triangle = np.where(x < PLUCK, x / PLUCK, (1 - x) / (1 - PLUCK))  # the released shape, unit height at x0
    np.testing.assert_allclose(u[:, 0], np.broadcast_to(triangle, (2, 99)), atol=0.06)  # 10 terms of its Fourier series (Gibbs-free, worst at the kink)
    same_speed = string_profiles(np.array([[1.0, 0.02], [1.0, 0.002]]), points=99)
    late = np.sqrt((same_speed[:, -30:] ** 2).mean((1, 2)))       # the fundamental decays as exp(-1.5 d t)
    assert late[0] / late[1] == pytest.approx(np.exp(-1.5 * 0.018 * 135), rel=0.5)


def test_synthetic_dataset_is_the_guide_s_format_with_pca_fitted_on_training_sequences_only(strings_dir):
    files = sorted(strings_dir.glob("*.csv"))
    assert len(files) == 48
    frame = pd.read_csv(files[0])
    assert list(frame.columns) == COLUMNS and len(frame) == 151 and frame["step"].tolist() == list(range(151))
    info = json.loads((strings_dir / "dataset.json").read_text())
    assert info["pca_fit_split"] == {"train_size": 32, "val_size": 8, "split_seed": 1}
    pca = np.load(strings_dir / "pca.npz")
    assert pca["components"].shape == (5, 16)
    _, params, components = read_sequences(strings_dir, "error", lambda m: None)
    split = split_indices(48, 32, 8, 1)
    train_scores = components[split["train"]].reshape(-1, 5)
    # PCA scores have zero mean and uncorrelated, decreasing variance over the data the PCA was fitted on ...
    np.testing.assert_allclose(train_scores.mean(0), 0, atol=1e-5)
    cov = np.cov(train_scores.T, bias=True)
    np.testing.assert_allclose(cov - np.diag(np.diag(cov)), 0, atol=1e-5)
    assert (np.diff(np.diag(cov)) < 0).all()
    # ... which the held-out sequences are not part of
    assert np.abs(components[split["test"]].reshape(-1, 5).mean(0)).max() > 1e-3
    # the scores are the projection of the profiles onto the saved components
    profiles = string_profiles(params[:3], 16)
    np.testing.assert_allclose((profiles - pca["mean"]) @ pca["components"].T, components[:3], atol=1e-5)


def test_split_is_seeded_disjoint_and_complete():
    a, b = split_indices(100, 70, 20, 5), split_indices(100, 70, 20, 5)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert [len(a[k]) for k in ("train", "val", "test")] == [70, 20, 10]
    assert sorted(np.concatenate(list(a.values())).tolist()) == list(range(100))
    assert not np.array_equal(split_indices(100, 70, 20, 6)["train"], a["train"])
    with pytest.raises(KilnError, match="100 sequences cannot make 90 train \\+ 10 val"):
        split_indices(100, 90, 10, 0)


@pytest.mark.parametrize("damage, reason", [
    (lambda f: f.iloc[:150], "has 150 rows, expected 151"),
    (lambda f: f.drop(columns=["pc3"]), "lacks column(s) pc3"),
    (lambda f: f.assign(pc2=f["pc2"].where(f.index != 7)), "has a NaN, infinite or non-numeric value (row 8, column pc2)"),
    (lambda f: f.assign(param1=np.linspace(0, 1, len(f))), "has parameters that change between rows"),
])
def test_a_bad_file_is_named_and_is_an_error_or_skipped(strings_dir, tmp_path, damage, reason):
    data = tmp_path / "data"
    shutil.copytree(strings_dir, data)
    bad = sorted(data.glob("*.csv"))[5]
    damage(pd.read_csv(bad)).to_csv(bad, index=False)
    with pytest.raises(KilnError) as err:
        read_sequences(data, "error", lambda m: None)
    assert str(err.value).startswith(f"'{bad}' {reason}") and "data.on_bad_file=skip" in str(err.value)
    lines = []
    names, params, components = read_sequences(data, "skip", lines.append)
    assert bad.name not in names and len(names) == 47 and components.shape == (47, 151, 5) and params.shape == (47, 2)
    assert lines[0].startswith(f"Warning: skipped {bad.name} {reason}") and "(1 bad files skipped)" in lines[-1]


def test_kiln_data_seqgen_cli(tmp_path):
    out = tmp_path / "made"
    args = [sys.executable, "-m", "kiln", "data", "seqgen", "--synthetic", "--num-sequences", "12", "--profile-points", "12",
            "--train-size", "8", "--val-size", "2", "--out", str(out)]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "12 sequences" in done.stdout and len(list(out.glob("*.csv"))) == 12 and (out / "pca.npz").is_file()
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.returncode == 2 and "not empty" in again.stderr and len(again.stderr.strip().splitlines()) == 1


def test_a_dataset_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    out = tmp_path / "strings"
    with pytest.raises(KilnError, match="10 sequences cannot make 9 train \\+ 1 val"):
        generate_dataset(out, SyntheticStrings(num_sequences=10, profile_points=8, train_size=9, val_size=1), print)
    assert list(tmp_path.iterdir()) == []                           # neither the directory nor a temporary
    (out / "mine.csv").parent.mkdir()
    (out / "mine.csv").write_text("x")
    monkeypatch.setattr("kiln.recipes.seqgen.sim.string_profiles", lambda *a: pytest.fail("simulated into a taken --out"))
    with pytest.raises(KilnError, match="exists and is not empty"):
        generate_dataset(out, SyntheticStrings(num_sequences=10, profile_points=8, train_size=6, val_size=2), print)
    assert [f.name for f in tmp_path.iterdir()] == ["strings"] and [f.name for f in out.iterdir()] == ["mine.csv"]


def test_kiln_train_makes_a_missing_data_dir_with_the_config_s_split_and_warns_on_another(seqgen_config, tmp_path):
    from kiln.recipes.seqgen import RECIPE

    data_dir = tmp_path / "made"
    overrides = [f"data.dir={data_dir}", "data.generate={num_sequences: 20, profile_points: 8, seed: 1}",
                 "data.split={train_size: 12, val_size: 4, split_seed: 2}"]
    lines = []
    RECIPE.prepare_data(load_recipe_config(seqgen_config, overrides)[1], lines.append)
    info = json.loads((data_dir / "dataset.json").read_text())
    assert info["pca_fit_split"] == {"train_size": 12, "val_size": 4, "split_seed": 2} and info["seed"] == 1
    assert lines[0] == f"data.dir '{data_dir}' not found: generating it from data.generate" and len(lines) == 2
    lines.clear()
    RECIPE.prepare_data(load_recipe_config(seqgen_config, overrides + ["data.split.split_seed=3", "data.generate.seed=4"])[1],
                        lines.append)
    assert lines == [f"Warning: using existing {data_dir}, made with seed=1 (config: 4); delete it or change data.dir to regenerate",
                     f"Warning: using existing {data_dir}, made with split_seed=2 (config: 3); delete it or change data.dir "
                     f"to regenerate"]
    with pytest.raises(KilnError, match=rf"data.dir '{tmp_path / 'none'}' does not exist; make it with: "
                                        rf"kiln data seqgen --synthetic --out {tmp_path / 'none'}$"):
        RECIPE.prepare_data(load_recipe_config(seqgen_config, [f"data.dir={tmp_path / 'none'}"])[1], print)


# ---------------------------------------------------------------- found by tests/fuzz/test_seqgen_files.py

def test_a_value_beyond_float32_is_a_bad_file(strings_dir, tmp_path):
    """1e39 is finite as float64, so it passed the NaN check and became inf in the model's float32 tensors."""
    data = tmp_path / "data"
    shutil.copytree(strings_dir, data)
    bad = sorted(data.glob("*.csv"))[2]
    frame = pd.read_csv(bad)
    frame.loc[4, "pc1"] = 1e39
    frame.to_csv(bad, index=False)
    with pytest.raises(KilnError) as err:
        read_sequences(data, "error", lambda m: None)
    assert str(err.value).startswith(f"'{bad}' has 1e+39 (row 5, column pc1), beyond float32's")


def test_an_integer_too_long_for_a_float_is_a_bad_file(strings_dir, tmp_path):
    """A 400-digit integer in the integer `step` column made pandas raise OverflowError (found by CI's fuzzer run)."""
    data = tmp_path / "data"
    shutil.copytree(strings_dir, data)
    bad = sorted(data.glob("*.csv"))[3]
    lines = bad.read_text().splitlines()
    head, row = lines[0].split(","), lines[6].split(",")
    row[head.index("step")] = "1" * 400
    lines[6] = ",".join(row)
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(KilnError) as err:
        read_sequences(data, "error", lambda m: None)
    assert str(err.value).startswith(f"'{bad}' has a NaN, infinite or non-numeric value (row 6, column step)")


def test_a_column_name_with_a_newline_stays_on_one_line(strings_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(strings_dir, data)
    bad = sorted(data.glob("*.csv"))[0]
    bad.write_text(bad.read_text().replace("pc3", '"pc\n3"', 1))
    with pytest.raises(KilnError, match=r"lacks column\(s\) pc3 \(has \['step', 'pc1', 'pc2', 'pc\\n3'") as err:
        read_sequences(data, "error", lambda m: None)
    assert "\n" not in str(err.value)
