"""Multi-phase runs on the toy task: layout, hand-over of weights, resume at the right phase, validation."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from kiln.engine.batches import TensorBatches
from kiln.engine.runs import print_status
from kiln.errors import KilnError

PHASES = [{"name": "warm", "train": {"max_epochs": 2, "lr": 0.05}},
          {"name": "fine", "train": {"max_epochs": 2, "lr": 0.01, "scheduler": "linear_decay"}, "model": {"spike_call": 999}}]


def weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_phases_run_in_order_each_in_its_own_run_directory(toy_cfg, run_toy, capsys):
    results, run_dir = run_toy("two", toy_cfg(phases=PHASES))
    for k in (1, 2):
        phase = run_dir / f"phase_{k}"
        assert {"config.yaml", "status.json", "train.log", "history.csv", "best_model.pt", "final_model.pt",
                "test_results.json"} <= {p.name for p in phase.iterdir()}
        assert json.loads((phase / "status.json").read_text())["state"] == "finished"
    assert "lr: 0.01" in (run_dir / "phase_2" / "config.yaml").read_text()
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "finished" and status["phase"] == "2/2"
    history = json.loads((run_dir / "history.json").read_text())
    assert history["phase"] == [1, 1, 2, 2] and history["epoch"] == [1, 2, 3, 4] and history["phase_epoch"] == [1, 2, 1, 2]
    assert json.loads((run_dir / "test_results.json").read_text()) == results
    for name in ("best_model.pt", "final_model.pt"):
        for key, value in weights(run_dir / "phase_2" / name).items():
            assert torch.equal(weights(run_dir / name)[key], value)
    log = (run_dir / "train.log").read_text()
    assert log.index("Phase 1/2: warm") < log.index("Phase 2/2: fine, from") < log.index("All 2 phases finished")
    capsys.readouterr()
    print_status([run_dir])
    assert "2/2 fine" in capsys.readouterr().out


def test_each_phase_starts_from_the_previous_phase_s_best_weights(toy_cfg, run_toy):
    frozen = [PHASES[0], {"name": "still", "train": {"max_epochs": 1, "lr": 1e-12}}]
    _, run_dir = run_toy("handover", toy_cfg(phases=frozen))
    start = weights(run_dir / "phase_1" / "best_model.pt")
    for key, value in weights(run_dir / "phase_2" / "final_model.pt").items():
        torch.testing.assert_close(value, start[key], atol=1e-9, rtol=0)
    # init: last takes the previous phase's final weights instead; --init-from seeds phase 1
    _, seeded = run_toy("seeded", toy_cfg(phases=[{"train": {"lr": 1e-12, "max_epochs": 1}}]),
                        init_from=str(run_dir / "phase_1" / "best_model.pt"))
    for key, value in weights(seeded / "phase_1" / "final_model.pt").items():
        torch.testing.assert_close(value, start[key], atol=1e-9, rtol=0)


def test_resume_continues_at_the_interrupted_phase_and_step(toy_cfg, run_toy, monkeypatch):
    cfg = toy_cfg(phases=PHASES)
    _, straight = run_toy("straight", cfg)
    original, calls = TensorBatches.epoch, {"n": 0}

    def interrupting(self, epoch=0, start=0):  # Ctrl-C in phase 2's first epoch (the 3rd training epoch overall)
        if self.shuffle:
            calls["n"] += 1
        for i, batch in enumerate(original(self, epoch, start), start=start):
            if self.shuffle and calls["n"] == 3 and i == 1:
                os.kill(os.getpid(), signal.SIGINT)
            yield batch

    monkeypatch.setattr(TensorBatches, "epoch", interrupting)
    assert run_toy("resumed", cfg)[0] == {"state": "interrupted"}
    monkeypatch.setattr(TensorBatches, "epoch", original)
    run_dir = straight.parent / "resumed"
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "interrupted" and status["phase"] == "2/2"
    phase_1_log = (run_dir / "phase_1" / "train.log").read_text()
    run_toy("resumed", cfg, resume=True)
    assert (run_dir / "phase_1" / "train.log").read_text() == phase_1_log  # phase 1 was not trained again
    assert "Resuming" in (run_dir / "phase_2" / "train.log").read_text()
    for key, value in weights(straight / "final_model.pt").items():
        assert torch.equal(weights(run_dir / "final_model.pt")[key], value), key
    with pytest.raises(KilnError, match="already finished all 2 phases"):
        run_toy("resumed", cfg, resume=True)


def test_overwrite_trains_every_phase_again(toy_cfg, run_toy):
    # kiln demo replaces runs/<recipe>/demo this way: the old run's finished phases must not be taken as the new one's
    _, run_dir = run_toy("again", toy_cfg(phases=PHASES))
    changed = toy_cfg(phases=[PHASES[0], {**PHASES[1], "train": {**PHASES[1]["train"], "lr": 0.02}}])
    run_toy("again", changed, overwrite=True)
    assert "lr: 0.02" in (run_dir / "phase_2" / "config.yaml").read_text()
    log = (run_dir / "train.log").read_text()
    assert "Phase 1/2: warm" in log and "Phase 2/2: fine" in log
    history = json.loads((run_dir / "history.json").read_text())
    assert history["epoch"] == [1, 2, 3, 4]


@pytest.mark.parametrize("phases, message", [
    ([{"train": {"lrr": 1}}], "phases[1]: unknown config key 'train.lrr'; did you mean 'train.lr'?"),
    ([{}, {"name": "b", "model": {"spike": 3}}], "phases[2] (b): unknown config key 'model.spike'; did you mean 'model.spike_call'?"),
    ([{"epochs": 3}], "phases[1]: unknown key 'epochs'; a phase may set name, init, data, model and train"),
    ([{"init": "worst"}], "phases[1]: init must be best or last"),
    ([{"train": {"precision": "bf16-mixed"}}], "phases[1]: train.precision is set for the whole run and cannot change per phase"),
    ([{"train": {"batch_size": 0}}], "phases[1]: train.batch_size: Input should be greater than 0"),
])
def test_a_bad_phase_is_named_before_anything_runs(toy_cfg, phases, message):
    with pytest.raises(KilnError) as err:
        toy_cfg(phases=phases).phase_configs()
    assert message in str(err.value)
