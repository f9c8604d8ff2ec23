"""Stage 1 output and stage 2 preparation: no trajectory in two splits, statistics from train only, features
as the streaming predictor computes them, the original guide's RealTimeDataset."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import torch

from kiln.errors import KilnError
from kiln.recipes.printer.config import PrinterData, PrinterGenerator
from kiln.recipes import get_recipe, load_recipe_config
from kiln.recipes.printer.data import (RealTimeDataset, assign_splits, feature_names, load_trajectories, prepare,
                                       read_split, simulate, stream_features, window_tensors)
from kiln.recipes.printer.gcode import read_gcode
from kiln.recipes.printer.procedural_prints import MODELS, procedural_gcode
from kiln.recipes.printer.sim import Printer, select_layers, simulate_moves


def test_simulation_is_vectorised_and_error_is_actual_minus_reference():
    printer = Printer(PrinterGenerator())
    moves = read_gcode(procedural_gcode("boat", 3))
    started = time.perf_counter()
    trajectories = simulate_moves(printer, moves, "boat", "all")
    seconds = time.perf_counter() - started
    samples = sum(len(t.time) for t in trajectories)
    assert samples > 40_000 and seconds < 10  # a Python loop per sample would take minutes on this machine
    t = trajectories[0]
    np.testing.assert_allclose(t.error[:, 0], t.signals["x_act"] - t.signals["x_ref"])
    assert np.allclose(np.diff(t.time), 1e-3) and 1e-3 < np.abs(t.error).max() < 1.0  # microns to a fraction of a mm


def test_procedural_models_have_their_layers_and_sampling_picks_every_nth():
    for name in MODELS:
        moves = read_gcode(procedural_gcode(name, 10))
        assert len(moves.layer_z) == 10 and not moves.errors
    assert select_layers("sampled:5", 50).tolist() == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45]
    assert select_layers("first:2", 50).tolist() == [0, 1] and select_layers("3-5", 50).tolist() == [3, 4, 5]
    with pytest.raises(KilnError, match="sampled:N"):
        select_layers("every:3", 10)


def test_splits_hold_out_whole_models_and_never_share_a_trajectory(printer_dir):
    trajectories = load_trajectories(printer_dir)
    data = PrinterData(dir=str(printer_dir), sequence_length=32, stride=16, test_models=["bearing5"])
    stats = prepare(printer_dir, data, lambda message: None)
    seen = {}
    for name in ("train", "val", "test"):
        split = read_split(printer_dir / "processed" / name)
        keys = list(zip(split["models"], split["layers"]))
        for key in keys:
            assert key not in seen, f"{key} is in {seen.get(key)} and {name}"
            seen[key] = name
        offsets = split["offsets"]
        owner_end = offsets[split["trajectory"] + 1]
        assert (split["starts"] + 32 <= owner_end).all() and (split["starts"] >= offsets[split["trajectory"]]).all()
        # every window's last sample lies in its layer, after the warm-up history
        warmup = torch.tensor(split["warmup"])[split["trajectory"]]
        assert (split["starts"] + 31 >= offsets[split["trajectory"]] + warmup).all()
        assert (name == "test") == all(model == "bearing5" for model in split["models"])
    assert len(seen) == len(trajectories)
    # normalisation comes from the training split only
    train = read_split(printer_dir / "processed" / "train")
    np.testing.assert_allclose(stats["feature_mean"], train["features"].double().mean(0).numpy(), rtol=1e-6, atol=1e-9)
    everything = torch.cat([read_split(printer_dir / "processed" / s)["features"] for s in ("train", "val", "test")])
    assert not np.allclose(stats["feature_std"], everything.double().std(0).numpy(), rtol=1e-3)


def test_layer_split_without_test_models_and_bad_names(printer_dir):
    trajectories = load_trajectories(printer_dir)
    ids = assign_splits(trajectories, [], val_ratio=0.2, test_ratio=0.2, seed=1)
    assert sorted(sum(ids.values(), [])) == list(range(len(trajectories))) and all(ids.values())
    with pytest.raises(KilnError, match="does not have"):
        assign_splits(trajectories, ["teapot"], 0.1, 0.1, 0)


def test_features_are_what_a_stream_can_compute():
    rng = np.random.default_rng(0)
    v = np.cumsum(rng.normal(size=(50, 2)), 0)
    signals = {"x_ref": np.arange(50.0), "y_ref": -np.arange(50.0), "vx_ref": v[:, 0], "vy_ref": v[:, 1]}
    f = stream_features(signals, 1000.0, position=True, acceleration=True, velocity_lags_ms=[3])
    assert feature_names(True, True, [3]) == ["x_ref", "y_ref", "vx_ref", "vy_ref", "ax_ref", "ay_ref", "vx_lag3ms", "vy_lag3ms"]
    np.testing.assert_allclose(f[1:, 4:6], np.diff(v, axis=0) * 1000, rtol=1e-5)
    np.testing.assert_allclose(f[0, 4:6], 0)
    np.testing.assert_allclose(f[3:, 6:8], v[:-3], rtol=1e-6)
    np.testing.assert_allclose(f[:3, 6:8], np.repeat(v[:1], 3, 0), rtol=1e-6)
    assert stream_features(signals, 1000.0, False, False, []).shape == (50, 2)


def test_realtime_dataset_gives_the_guides_items(printer_dir):
    data = PrinterData(dir=str(printer_dir), sequence_length=32, stride=16, test_models=["bearing5"])
    stats = prepare(printer_dir, data, lambda message: None)
    dataset = RealTimeDataset(printer_dir / "processed" / "train")
    item = dataset[3]
    assert set(item) == {"features", "target", "metadata"}
    assert item["features"].shape == (32, len(stats["feature_names"])) and item["target"].shape == (2,)
    windows = window_tensors(read_split(printer_dir / "processed" / "train"), stats)
    assert len(dataset) == len(windows["targets"])
    torch.testing.assert_close(item["features"], windows["input_features"][3])
    torch.testing.assert_close(item["target"], windows["targets"][3])
    assert item["metadata"]["model"] in ("nautilus", "boat")
    # the same settings keep processed/; other settings prepare again
    before = (printer_dir / "processed" / "prep.json").stat().st_mtime_ns
    prepare(printer_dir, data, lambda message: None)
    assert (printer_dir / "processed" / "prep.json").stat().st_mtime_ns == before
    prepare(printer_dir, data.model_copy(update={"stride": 24}), lambda message: None)
    assert json.loads((printer_dir / "processed" / "prep.json").read_text())["stride"] == 24


def test_a_taken_out_is_refused_before_simulating_and_a_failed_one_leaves_nothing(tmp_path, monkeypatch):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with monkeypatch.context() as patch:
        patch.setattr("kiln.recipes.printer.data.simulate_sources", lambda *args: pytest.fail("simulated"))
        with pytest.raises(KilnError, match="exists and is not empty"):
            simulate(taken, PrinterGenerator(), lambda message: None)
    with pytest.raises(KilnError, match="neither a procedural model"):
        simulate(tmp_path / "new", PrinterGenerator(models="boat,teapot", model_layers=2), lambda message: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_processed_is_written_whole_or_not_at_all(printer_dir, tmp_path, monkeypatch):
    data_dir = tmp_path / "tiny"
    data_dir.mkdir()
    for name in ("dataset.json", "trajectories.npz"):
        shutil.copy(printer_dir / name, data_dir / name)
    data = PrinterData(dir=str(data_dir), sequence_length=32, stride=16, test_models=["bearing5"])
    prepare(data_dir, data, lambda message: None)
    real_save = __import__("kiln.engine.files", fromlist=["save_atomic"]).save_atomic

    def full_disk_at_val(obj, path):
        if path.parent.name == "val":
            raise KilnError(f"could not write '{path}' (No space left on device); free some disk space")
        real_save(obj, path)

    with monkeypatch.context() as patch:
        patch.setattr("kiln.recipes.printer.data.save_atomic", full_disk_at_val)
        with pytest.raises(KilnError, match="No space left"):
            prepare(data_dir, data.model_copy(update={"stride": 24}), lambda message: None)
    assert sorted(p.name for p in data_dir.iterdir()) == ["dataset.json", "trajectories.npz"]  # no half processed/
    prepare(data_dir, data.model_copy(update={"stride": 24}), lambda message: None)
    assert json.loads((data_dir / "processed" / "prep.json").read_text())["stride"] == 24


def test_a_directory_without_dataset_json_is_refused_without_a_warning(printer_config, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    recipe = get_recipe("printer")
    _, cfg = load_recipe_config(printer_config, [f"data.dir={tmp_path / 'elsewhere'}"])
    said = []
    recipe.prepare_data(cfg, said.append)
    assert said == []
    with pytest.raises(KilnError, match=r"has no dataset.json, so it is not a printer dataset; make one with: "
                                        r"kiln data printer --out .*elsewhere$"):
        recipe.load_data(cfg, said.append)


class RunsCode:
    def __reduce__(self):
        return (print, ("this ran",))


def test_a_damaged_or_crafted_windows_file_is_one_whole_line(tmp_path, capsys):
    """The reason is shown whole (issue 27 item 8 cut it at 120 characters, mid-word), and a pickle runs nothing."""
    split_dir = tmp_path / "processed" / "train"
    split_dir.mkdir(parents=True)
    torch.save({"x": RunsCode()}, split_dir / "windows.pt")
    with pytest.raises(KilnError) as refused:
        read_split(split_dir)
    message = str(refused.value)
    assert "this ran" not in capsys.readouterr().out
    assert "\n" not in message and message.endswith(f"delete {tmp_path / 'processed'} to prepare it again")
    assert "(Unsupported global: GLOBAL print was not an allowed global by default)" in message  # the whole reason
    (split_dir / "windows.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(KilnError, match=r"cannot read '.*windows.pt' \(.+\); delete"):
        read_split(split_dir)
