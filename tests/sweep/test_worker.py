"""A worker in this process (torch already imported): pruning, exceptions, NaN."""

import json

from kiln.sweep.launch import define
from kiln.sweep.study import create_or_join, open_storage, open_sweep, save_sweep
from kiln.sweep.worker import run_worker


def start_sweep(tmp_path, config, grid, **kwargs):
    settings = dict(space=None, trials=None, objective=None, direction=None, sampler=None, pruner=None, retries=None)
    settings.update(kwargs)
    sweep = define(str(config), ["train.max_epochs=1"], grid=grid, log=lambda line: None, **settings)
    out = tmp_path / "sweep"
    out.mkdir()
    save_sweep(out, sweep, None)
    create_or_join(open_storage(None, out), sweep, log=lambda line: None)
    return out


def states(out):
    return [(t.state.name, t.user_attrs.get("retry_of")) for t in open_sweep(out)[1].get_trials(deepcopy=False)]


def test_the_pruner_stops_a_trial_whose_validations_are_poor(tmp_path, sweep_config):
    # five trials that learn, then one whose lr is too small to move: its first validation is worse than the median
    # of the others' first validations, so the median pruner ends it there (out of 2 epochs)
    out = start_sweep(tmp_path, sweep_config, ["train.lr=3e-3,4e-3,5e-3,6e-3,8e-3,1e-9", "train.max_epochs=2"],
                      pruner="median")
    assert run_worker(out, threads=1, log=lambda line: None) == 0
    _, study = open_sweep(out)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 5 + ["PRUNED"]
    pruned = study.trials[5]
    assert list(pruned.intermediate_values) == [1]  # reported once, at its first validation
    assert pruned.intermediate_values[1] > sorted(t.intermediate_values[1] for t in study.trials[:5])[2]
    assert all(list(t.intermediate_values) == [1, 2] for t in study.trials[:5])
    run = out / pruned.user_attrs["run_dir"]
    status = json.loads((run / "status.json").read_text())
    assert (status["state"], status["stop_reason"], status["epoch"]) == ("finished", "pruned", 1)
    assert (run / "final_model.pt").is_file() and (run / "test_results.json").is_file()  # an ordinary finished run
    assert "Pruned by the sweep's median pruner at validation 1" in (run / "train.log").read_text()


def test_an_exception_fails_the_trial_and_is_retried_at_most_retries_times(tmp_path, sweep_config):
    # train.monitor val_nope passes the schema and fails when its run starts
    out = start_sweep(tmp_path, sweep_config, ["train.monitor=val_loss,val_nope"], retries=1)
    assert run_worker(out, threads=1, log=lambda line: None) == 0
    assert states(out) == [("COMPLETE", None), ("FAIL", None), ("FAIL", 1)]
    _, study = open_sweep(out)
    first, retry = study.trials[1], study.trials[2]
    assert first.user_attrs["error"] == retry.user_attrs["error"]
    assert first.user_attrs["error"].startswith("KilnError: train.monitor 'val_nope' is not a metric of this nav task")
    assert retry.user_attrs["retry_reason"].startswith("retry 1 of 1 after: train.monitor 'val_nope'")
    assert retry.user_attrs["run_dir"] == "trial_0001"


def test_a_nan_fails_the_trial_for_good(tmp_path, sweep_config):
    out = start_sweep(tmp_path, sweep_config, ["train.lr=3e-3,1e30"], retries=2)
    assert run_worker(out, threads=1, log=lambda line: None) == 0
    assert states(out) == [("COMPLETE", None), ("FAIL", None)]
    assert open_sweep(out)[1].trials[1].user_attrs["error"].startswith("the loss became non-finite")


def test_another_objective_scores_the_kept_model(tmp_path, sweep_config):
    import dataclasses

    from kiln.recipes import load_recipe_config
    from kiln.sweep.worker import kept_row, objective_value

    out = start_sweep(tmp_path, sweep_config, ["model.dim=8,16", "train.max_epochs=2"], objective="test_rollout_success",
                      direction="max")
    assert run_worker(out, threads=1, log=lambda line: None) == 0
    sweep, study = open_sweep(out)
    by_val_acc = dataclasses.replace(sweep, objective="val_acc")
    for trial in study.trials:
        run = out / trial.user_attrs["run_dir"]
        results = json.loads((run / "test_results.json").read_text())
        assert trial.value == results["rollout_success"]  # test_X: the test result X of best_model.pt
        history = json.loads((run / "history.json").read_text())
        t = load_recipe_config(run / "config.yaml")[1].train
        monitored = history[t.monitor]  # best_model.pt is picked by the monitor (its first best)
        kept = monitored.index((max if t.mode == "max" else min)(monitored))
        _, row = kept_row(run, load_recipe_config(run / "config.yaml")[1])
        assert objective_value(by_val_acc, results, row) == history["val_acc"][kept]


def test_a_run_killed_while_writing_its_report_keeps_its_results(tmp_path, sweep_config):
    from kiln.recipes import load_recipe_config
    from kiln.sweep.worker import finished_results

    _, cfg = load_recipe_config(sweep_config)
    run = tmp_path / "run"
    run.mkdir()
    (run / "test_results.json").write_text('{"rollout_success": 0.5}')
    lines = []
    for state, expected in (("running", None), ("failed", None), ("evaluating", {"rollout_success": 0.5}),
                            ("finished", {"rollout_success": 0.5})):
        (run / "status.json").write_text(json.dumps({"state": state}))
        assert finished_results(run, cfg, lines.append) == expected
    assert lines == [f"{run} was evaluated but stopped while writing its report: using its test_results.json "
                     f"(kiln evaluate {run} rewrites the report)"]
