"""The training loop on the engine's own toy task (linear regression): accumulation, clipping, interrupts,
non-finite values, step intervals, precision, the DataLoader path, frozen modules and health warnings."""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import numpy as np
import pytest
import torch

from kiln.engine import batches as batches_module
from kiln.engine import devices
from kiln.engine.batches import TensorBatches, epoch_order, make_batches
from kiln.engine.checkpoint import load_checkpoint
from kiln.errors import KilnError


def final_weights(run_dir):
    return torch.load(run_dir / "final_model.pt", weights_only=True)["state_dict"]


def test_accumulating_k_micro_batches_equals_one_batch_k_times_larger(toy_cfg, run_toy):
    _, small = run_toy("small", toy_cfg(batch_size=8, accumulate_grad_batches=4, max_epochs=2))
    _, large = run_toy("large", toy_cfg(batch_size=32, max_epochs=2))
    a, b = final_weights(small), final_weights(large)
    assert not torch.equal(a["head.weight"], torch.zeros_like(a["head.weight"]))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert json.loads((small / "status.json").read_text())["step"] == 4  # 64 samples / 32 per update x 2 epochs


def test_clipping_caps_the_global_norm(toy_cfg, run_toy, toy):
    clip, lr = 0.01, 1.0
    cfg = toy_cfg(batch_size=16, max_steps=1, gradient_clip_val=clip, lr=lr)
    # the gradient of the first batch, by hand: d/dw mean((w.x + b - y)^2)
    torch.manual_seed(cfg.train.seed)
    task = toy.build_task(cfg, {})
    start = {k: v.clone() for k, v in task.state_dict().items()}
    batch = {k: v[epoch_order(64, True, cfg.train.seed, 0)[:16]] for k, v in toy.load_data(cfg, print).train.items()}
    error = task.predict(batch["x"]).detach() - batch["y"]
    grad = torch.cat([2 * (error[:, None] * batch["x"]).mean(0), (2 * error.mean())[None]])
    assert grad.norm() > 10 * clip  # so the cap matters
    _, run_dir = run_toy("clipped", cfg)
    end = final_weights(run_dir)
    step = torch.cat([end["head.weight"][0] - start["head.weight"][0], end["head.bias"] - start["head.bias"]])
    torch.testing.assert_close(step, -lr * clip * grad / grad.norm(), rtol=1e-4, atol=1e-7)


def test_an_interrupt_inside_an_accumulation_window_resumes_to_identical_weights(toy_cfg, run_toy, monkeypatch):
    cfg = toy_cfg(batch_size=4, accumulate_grad_batches=4, max_epochs=2)
    _, straight = run_toy("straight", cfg)

    original = TensorBatches.epoch

    def interrupting(self, epoch=0, start=0):  # Ctrl-C during the 2nd micro-batch of the 2nd window of epoch 2
        for i, batch in enumerate(original(self, epoch, start), start=start):
            if self.shuffle and epoch == 1 and i == 5:
                os.kill(os.getpid(), signal.SIGINT)
            yield batch

    monkeypatch.setattr(TensorBatches, "epoch", interrupting)
    results, resumed = run_toy("resumed", cfg)
    monkeypatch.setattr(TensorBatches, "epoch", original)
    assert results == {"state": "interrupted"}
    saved = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["batch_in_epoch"] == 8  # finished the window (an optimizer update), then stopped
    run_toy("resumed", cfg, resume=True)
    for key, value in final_weights(straight).items():
        assert torch.equal(final_weights(resumed)[key], value), key


def test_the_task_hears_of_each_epoch_and_of_the_resumed_one(toy_cfg, toy, run_toy, monkeypatch):
    tasks = []
    recording = dataclasses.replace(toy, build_task=lambda cfg, info: tasks.append(toy.build_task(cfg, info)) or tasks[-1])
    cfg = toy_cfg(max_epochs=3)
    original = TensorBatches.epoch

    def interrupting(self, epoch=0, start=0):
        for i, batch in enumerate(original(self, epoch, start), start=start):
            if self.shuffle and epoch == 1 and i == 1:
                os.kill(os.getpid(), signal.SIGINT)
            yield batch

    monkeypatch.setattr(TensorBatches, "epoch", interrupting)
    run_toy("run", cfg, recipe=recording)
    monkeypatch.setattr(TensorBatches, "epoch", original)
    run_toy("run", cfg, recipe=recording, resume=True)
    assert tasks[0].epochs_started == [(0, 3), (1, 3)] and tasks[1].epochs_started == [(1, 3), (2, 3)]


def test_a_non_finite_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(toy_cfg, run_toy, tmp_path):
    cfg = toy_cfg(model={"poison_call": 6})  # 4 steps per epoch: call 6 is epoch 2, step 6
    with pytest.raises(KilnError, match=r"the loss became non-finite at epoch 2, step 6; stopped before that update"):
        run_toy("nan", cfg)
    run_dir = tmp_path / "nan"
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and "non-finite at epoch 2, step 6" in status["error"]
    last = load_checkpoint(run_dir / "checkpoints" / "last.ckpt", "toy")
    assert last["epoch"] == 1 and last["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in last["model"].values())


def test_a_non_finite_gradient_is_caught_too(toy_cfg, run_toy, tmp_path):
    cfg = toy_cfg(data={"scales": [1e30, 1.0, 1.0, 1.0]})  # finite inputs whose squared error overflows float32
    with pytest.raises(KilnError, match=r"became non-finite at epoch 1, step 1"):
        run_toy("inf", cfg)


def test_step_intervals_validate_checkpoint_and_stop_by_steps(toy_cfg, run_toy):
    # 4 steps per epoch, validation every 3 steps, checkpoints every 5, stop after 7 steps (mid-epoch 2)
    cfg = toy_cfg(max_epochs=5, max_steps=7, val_every_n_steps=3, checkpoint_every_n_steps=5)
    _, run_dir = run_toy("steps", cfg)
    history = json.loads((run_dir / "history.json").read_text())
    assert history["step"] == [3, 6, 7]  # the last validation is the final step's
    assert history["epoch"] == [0.75, 1.5, 1.75]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt", "step_0000005.ckpt"]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["stop_reason"] == "max_steps" and status["step"] == 7
    assert "Step 3: Epoch 1/5" in (run_dir / "train.log").read_text()


def test_auto_precision_follows_the_cpu(monkeypatch, toy_cfg, run_toy):
    monkeypatch.setattr(devices, "cpu_native_bf16", lambda: None)
    assert devices.resolve_precision("auto", "cpu")[0] == "32"
    monkeypatch.setattr(devices, "cpu_native_bf16", lambda: "AVX512-BF16")
    assert devices.resolve_precision("auto", "cpu") == ("bf16-mixed", "this CPU has native bf16 (AVX512-BF16)")
    assert devices.resolve_precision("32", "cpu") == ("32", "set in the config")  # an explicit value wins
    monkeypatch.setattr(devices, "cpu_native_bf16", lambda: None)
    _, run_dir = run_toy("auto", toy_cfg(precision="auto", max_epochs=1))
    first = (run_dir / "train.log").read_text().splitlines()[0]
    assert first.startswith("Precision: 32 (auto: this CPU has no native bf16")
    assert json.loads((run_dir / "run.json").read_text())["invocations"][0]["precision"] == "32"


def test_aten_avx2_dispatch_counts_as_no_native_bf16(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert devices.cpu_native_bf16() is None


def test_batches_split_an_epoch_across_ranks_like_one_larger_batch():
    tensors = {"i": torch.arange(37)}
    one = TensorBatches(tensors, 8, shuffle=True, seed=3)
    ranks = [TensorBatches(tensors, 4, shuffle=True, seed=3, rank=r, world=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(one) == 5  # 37 padded to 38: 19 per rank
    for whole, *parts in zip(one.epoch(1), *(r.epoch(1) for r in ranks)):
        assert set(whole["i"].tolist()) <= set(torch.cat([p["i"] for p in parts]).tolist())
    every = torch.cat([b["i"] for r in ranks for b in r.epoch(1)])
    assert set(every.tolist()) == set(range(37)) and len(every) == 38
    val = [TensorBatches(tensors, 8, shuffle=False, rank=r, world=2, even=False) for r in range(2)]
    assert sorted(torch.cat([b["i"] for v in val for b in v.epoch()]).tolist()) == list(range(37))  # nothing counted twice
    assert [b["i"].tolist() for b in one.epoch(2, start=3)] == [b["i"].tolist() for b in list(one.epoch(2))[3:]]


class MemmapFrames(torch.utils.data.Dataset):
    """The world recipe's case: samples read from a memory-mapped file, never loaded whole."""

    def __init__(self, path, size, dim):
        self.x = np.memmap(path, dtype=np.float32, mode="r", shape=(size, dim + 1))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        row = torch.from_numpy(np.array(self.x[i]))
        return {"x": row[:-1], "y": row[-1]}


def test_the_dataloader_path_trains_exactly_like_in_memory_batches(toy_cfg, toy, run_toy, tmp_path):
    cfg = toy_cfg(max_epochs=2)
    _, memory = run_toy("memory", cfg)
    _, workers = run_toy("workers", toy_cfg(max_epochs=2, num_workers=2))
    splits = toy.load_data(cfg, print)
    path = tmp_path / "train.f32"
    np.concatenate([splits.train["x"].numpy(), splits.train["y"].numpy()[:, None]], 1).astype(np.float32).tofile(path)
    streamed = dataclasses.replace(toy, load_data=lambda cfg, log: type(splits)(MemmapFrames(path, 64, 4), splits.val, splits.test, splits.info))
    _, mapped = run_toy("memmap", cfg, recipe=streamed)
    for key, value in final_weights(memory).items():
        assert torch.equal(final_weights(workers)[key], value)
        torch.testing.assert_close(final_weights(mapped)[key], value)


def test_loader_batches_resume_mid_epoch_in_the_same_order():
    dataset = batches_module.TensorDictDataset({"i": torch.arange(50)})
    loader = make_batches(dataset, 8, shuffle=True, seed=1, num_workers=2)
    memory = make_batches({"i": torch.arange(50)}, 8, shuffle=True, seed=1)
    assert [b["i"].tolist() for b in loader.epoch(4, start=2)] == [b["i"].tolist() for b in memory.epoch(4, start=2)]
    assert [b["i"].tolist() for b in loader.epoch(5)] != [b["i"].tolist() for b in loader.epoch(4)]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_loader_epoch_leaves_the_global_rng_alone(workers):
    """A DataLoader draws its workers' base seed as an iterator starts; from torch's global RNG that would shift the
    stream the training step draws augmentation and dropout from whenever a resumed process starts its iterators at
    another moment (found by bench/crash_resume.py --recipe world: weights differed after 4 kills)."""
    loader = make_batches(batches_module.TensorDictDataset({"i": torch.arange(20)}), 8, shuffle=True, seed=1,
                          num_workers=workers)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for epoch in range(2):
        list(loader.epoch(epoch))
    assert torch.equal(torch.rand(3), expected)


def test_frozen_modules_stay_as_they_started(toy_cfg, toy, run_toy):
    cfg = toy_cfg(model={"hidden": 8}, freeze=["encoder"], param_groups={"head": {"lr": 0.01}})
    torch.manual_seed(cfg.train.seed)  # the engine seeds the same way before building the task
    initial = toy.build_task(cfg, {}).state_dict()
    _, run_dir = run_toy("frozen", cfg)
    final = final_weights(run_dir)
    assert "(40 frozen)" in (run_dir / "train.log").read_text()  # encoder: 4 x 8 + 8
    assert torch.equal(final["encoder.weight"], initial["encoder.weight"])
    assert not torch.equal(final["head.weight"], initial["head.weight"])
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert [g["lr"] for g in saved["optimizer"]["param_groups"]] == [pytest.approx(0.01)]  # only the head's group trains
    assert json.loads((run_dir / "history.json").read_text())["lr"][0] == pytest.approx(0.01)


def test_health_warnings_are_silent_in_a_healthy_run_and_one_line_each_otherwise(toy_cfg, run_toy):
    _, healthy = run_toy("healthy", toy_cfg(batch_size=32, max_epochs=3, data={"size": 1024}))
    assert "Warning" not in (healthy / "train.log").read_text()
    # a learning rate too small to change anything: a stationary loss with one injected spike, no improvement
    cfg = toy_cfg(batch_size=32, max_epochs=3, lr=1e-12, data={"size": 1024}, model={"spike_call": 30},
                  health={"grad_norm_max": 0.5, "plateau_evals": 2})
    _, sick = run_toy("sick", cfg)
    warnings = [line for line in (sick / "train.log").read_text().splitlines() if line.startswith("Warning")]
    assert sum("loss spike at step 30" in w for w in warnings) == 1
    assert sum("above train.health.grad_norm_max=0.5" in w for w in warnings) == 3  # at most once per validation period
    assert sum("has not improved for 2 validations" in w for w in warnings) == 1


def test_calibrate_sees_only_the_validation_split_and_the_saved_weights_carry_its_fit(toy_cfg, toy, run_toy):
    """Task.calibrate: called in eval mode under no_grad with the validation split (never the test split), on
    the saved weights once training ends; what it fits (a buffer) is in best_model.pt and final_model.pt."""
    cfg = toy_cfg(max_epochs=3)
    toy_task = type(toy.build_task(cfg, {}))
    seen, loaded = [], []

    class Calibrated(toy_task):
        def __init__(self, cfg):
            super().__init__(cfg)
            self.register_buffer("val_bias", torch.zeros(()))

        def calibrate(self, val):
            seen.append((val, self.training, torch.is_grad_enabled()))
            self.val_bias.fill_((self.predict(val["x"]) - val["y"]).mean())

    def load_data(cfg, log):
        loaded.append(toy.load_data(cfg, log))
        return loaded[-1]

    recipe = dataclasses.replace(toy, build_task=lambda cfg, info: Calibrated(cfg), load_data=load_data)
    _, run_dir = run_toy("calibrated", cfg, recipe=recipe)
    val = loaded[0].val
    assert len(seen) == 2 and all(split is val and not training and not grad for split, training, grad in seen)
    for name in ("best_model.pt", "final_model.pt"):
        saved = load_checkpoint(run_dir / name, "toy")["state_dict"]
        task = Calibrated(cfg)
        task.load_state_dict(saved)
        with torch.no_grad():
            expected = (task.predict(val["x"]) - val["y"]).mean()
        assert saved["val_bias"].item() == pytest.approx(expected.item(), abs=1e-6) and expected != 0


def test_a_callback_sees_every_update_and_validation_and_can_end_the_run(toy_cfg, run_toy):
    """fit(callbacks=...) joins the loop after the config's own: the hook a sweep's pruning uses."""
    from kiln.engine.callbacks import Callback

    class StopAfterTwo(Callback):
        def __init__(self):
            self.updates, self.rows, self.ended = 0, [], None

        def on_update(self, run, loss, grad_norm):
            self.updates += 1

        def on_validation(self, run, row, improved):
            self.rows.append(row["val_loss"])
            if len(self.rows) == 2:
                run.stop_reason = "stopped_by_test"

        def on_end(self, run, outcome):
            self.ended = outcome

    probe = StopAfterTwo()
    results, run_dir = run_toy("probe", toy_cfg(max_epochs=5), callbacks=(probe,))
    history = json.loads((run_dir / "history.json").read_text())
    assert probe.rows == history["val_loss"] and len(probe.rows) == 2
    assert probe.updates == history["step"][-1] == 2 * 4  # 64 samples at batch 16: 4 updates per epoch
    assert probe.ended == "finished"
    assert json.loads((run_dir / "status.json").read_text())["stop_reason"] == "stopped_by_test"


def test_auto_precision_times_the_task_where_bf16_is_a_candidate_and_picks_the_faster(monkeypatch, toy_cfg, run_toy):
    """On a CPU with native bf16, auto runs a few real steps of the run's own task in bf16-mixed and in fp32; here a
    timing stub makes bf16 the slower, so fp32 is chosen, and the reason on the first line gives both timings."""
    from kiln.engine import fit as fit_module

    monkeypatch.setattr(devices, "cpu_native_bf16", lambda: "AVX512-BF16")
    calls = []

    def timed(build_task, split, train, candidates, accelerator):
        calls.append(candidates)
        real = devices.time_precisions(build_task, split, train, candidates, accelerator)
        assert set(real) == {"bf16-mixed", "32"} and all(ms > 0 for ms in real.values())
        return {"bf16-mixed": 9.0, "32": 3.0}

    monkeypatch.setattr(fit_module, "time_precisions", timed)
    monkeypatch.delenv(devices.AUTO_PRECISION_VARIABLE, raising=False)
    _, run_dir = run_toy("timed", toy_cfg(precision="auto", max_epochs=1))
    assert calls == [["bf16-mixed", "32"]]
    record = json.loads((run_dir / "run.json").read_text())["invocations"][0]
    assert record["precision"] == "32"
    assert record["precision_reason"].startswith("bf16-mixed 9.0 ms, 32 3.0 ms per training step of this task, so 32;")
    assert (run_dir / "train.log").read_text().splitlines()[0].startswith("Precision: 32 (auto: bf16-mixed 9.0 ms, 32 3.0 ms")
    calls.clear()
    _, run_dir = run_toy("explicit", toy_cfg(precision="32", max_epochs=1))
    assert calls == []  # an explicit precision is never timed


@pytest.mark.parametrize("bf16_ms, chosen", [(2.0, "bf16-mixed"), (2.8, "32"), (3.0, "32")])
def test_auto_takes_bf16_only_when_it_is_clearly_faster(monkeypatch, toy_cfg, run_toy, bf16_ms, chosen):
    """Within 10% of fp32 a loaded CPU's timing noise decides, so auto keeps fp32 there (and says why)."""
    from kiln.engine import fit as fit_module

    monkeypatch.setattr(devices, "cpu_native_bf16", lambda: "AVX512-BF16")
    monkeypatch.setattr(fit_module, "time_precisions", lambda *args: {"bf16-mixed": bf16_ms, "32": 3.0})
    monkeypatch.delenv(devices.AUTO_PRECISION_VARIABLE, raising=False)
    _, run_dir = run_toy(f"bf16_{bf16_ms}", toy_cfg(precision="auto", max_epochs=1))
    record = json.loads((run_dir / "run.json").read_text())["invocations"][0]
    assert record["precision"] == chosen
    assert record["precision_reason"].startswith(
        f"bf16-mixed {bf16_ms:.1f} ms, 32 3.0 ms per training step of this task, so {chosen}"
        + (" (bf16 is faster by less than 10%);" if bf16_ms == 2.8 else ";"))


def test_a_resumed_auto_run_keeps_the_precision_it_trained_in(monkeypatch, toy_cfg, run_toy):
    """auto's timing may choose otherwise at a later start (another load on the machine); a resumed run must not,
    or it would not end as the uninterrupted run does. Here the first start times bf16 faster, the resume would time
    it slower, and the resumed run keeps bf16 without timing."""
    from kiln.engine import fit as fit_module

    monkeypatch.setattr(devices, "cpu_native_bf16", lambda: "AVX512-BF16")
    monkeypatch.delenv(devices.AUTO_PRECISION_VARIABLE, raising=False)
    timings = [{"bf16-mixed": 1.0, "32": 3.0}]
    monkeypatch.setattr(fit_module, "time_precisions", lambda *args: timings.pop(0))
    cfg = toy_cfg(precision="auto", max_epochs=1)
    run_toy("run", cfg)
    monkeypatch.delenv(devices.AUTO_PRECISION_VARIABLE, raising=False)
    _, run_dir = run_toy("run", toy_cfg(precision="auto", max_epochs=2), resume=True)  # timings is empty: no timing
    first, resumed = json.loads((run_dir / "run.json").read_text())["invocations"]
    assert first["precision"] == resumed["precision"] == "bf16-mixed"
    assert resumed["precision_reason"].startswith("as this run trained before it stopped (run.json)")


def test_compiled_steps_train_the_same_weights_and_keep_checkpoint_keys(toy_cfg, run_toy):
    """train.compile wraps the training step in torch.compile (aot_eager here: the same kernels as eager, traced), so
    the weights are the eager run's and the checkpoints and weight files keep their keys (no _orig_mod.)."""
    _, eager = run_toy("eager", toy_cfg(max_epochs=2, model={"hidden": 8}))
    _, compiled = run_toy("compiled", toy_cfg(max_epochs=2, model={"hidden": 8}, compile={"backend": "aot_eager"}))
    a = torch.load(eager / "final_model.pt", weights_only=True)["state_dict"]
    b = torch.load(compiled / "final_model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)
    assert torch.load(compiled / "checkpoints" / "last.ckpt", weights_only=True)["model"].keys() == a.keys()
    assert "train.compile: compiled the training step in" in (compiled / "train.log").read_text()


def test_a_model_that_does_not_compile_trains_eagerly_said_in_one_line(toy_cfg, run_toy, monkeypatch):
    def broken_compile(fn, **options):
        def step(batch):
            raise RuntimeError("Unsupported: a graph break dynamo cannot trace\nmore detail")
        return step

    monkeypatch.setattr(torch, "compile", broken_compile)
    _, eager = run_toy("eager", toy_cfg(max_epochs=1))
    _, fallback = run_toy("fallback", toy_cfg(max_epochs=1, compile=True))
    log = (fallback / "train.log").read_text()
    assert "train.compile: this toy model does not compile (Unsupported: a graph break dynamo cannot trace); training eagerly" in log
    a = torch.load(eager / "final_model.pt", weights_only=True)["state_dict"]
    b = torch.load(fallback / "final_model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
