import subprocess
import sys

from kiln.cli import main


def run_kiln(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "kiln", *args], capture_output=True, text=True, cwd=cwd)


def test_help_does_not_import_torch():
    # `kiln --help` must answer at once: torch and Lightning are imported only by the verbs that train.
    code = "import sys; from kiln.cli import build_parser; build_parser(); print('torch' in sys.modules, 'lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_help_lists_verbs():
    result = run_kiln("--help")
    assert result.returncode == 0
    for verb in ("train", "evaluate", "data", "status", "logs"):
        assert verb in result.stdout


def test_config_error_exits_2_with_one_line(tiny_config, capsys):
    assert main(["train", str(tiny_config), "train.lrr=1e-3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "kiln: error: unknown config key 'train.lrr'; did you mean 'train.lr'?"


def test_seed_flags_map_onto_config(tiny_config, tmp_path, capsys):
    # `--dim 0` is invalid, so the run stops at validation and names the mapped key.
    assert main(["train", str(tiny_config), "--dim", "0", "--run-dir", str(tmp_path / "r")]) == 2
    assert "model.dim: Input should be greater than 0" in capsys.readouterr().err


def test_refuses_a_run_dir_another_live_kiln_is_training(tiny_config, tmp_path, capsys):
    import json
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_text("x")
    (run_dir / "status.json").write_text(json.dumps({"state": "running"}))
    (run_dir / "config.yaml").write_text(tiny_config.read_text())
    # a live process that holds the run's lock, as a training kiln does
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from kiln.engine.rundir import RunLock; "
                               "RunLock.acquire(sys.argv[1]); print('locked', flush=True); time.sleep(60)", str(run_dir)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", str(tiny_config), "--run-dir", str(run_dir), "--overwrite"]) == 2
        assert f"in use by a running kiln (pid {holder.pid}" in capsys.readouterr().err
        assert main(["train", "--resume", str(run_dir)]) == 2
        assert f"in use by a running kiln (pid {holder.pid}" in capsys.readouterr().err
        assert (run_dir / "checkpoints" / "last.ckpt").read_text() == "x"
    finally:
        holder.kill()
        holder.wait()
    # once that process is gone (killed: its lock file stays behind), --overwrite takes the lock over and replaces the run
    assert main(["train", str(tiny_config), "--run-dir", str(run_dir), "--overwrite", "train.max_epochs=1"]) == 0
    assert f"Took over the lock of {run_dir}: its holder (pid {holder.pid}" in (run_dir / "train.log").read_text()
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() != b"x"


def test_refuses_non_empty_run_dir(tiny_config, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "keep.txt").write_text("precious")
    assert main(["train", str(tiny_config), "--run-dir", str(run_dir)]) == 2
    assert "is not empty; pass --overwrite" in capsys.readouterr().err
    assert (run_dir / "keep.txt").read_text() == "precious"


def test_unrecognised_argument_is_rejected(capsys):
    try:
        main(["status", "--bogus"])
    except SystemExit as exit:
        assert exit.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_missing_user_dataset_names_the_data_command(tmp_path, capsys):
    config = tmp_path / "user.yaml"
    config.write_text(f"recipe: nav\ndata: {{dir: {tmp_path / 'mine'}, generate: null}}\n")
    assert main(["train", str(config), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"make it with: kiln data nav --out {tmp_path / 'mine'}" in err


def test_a_directory_without_or_with_a_broken_dataset_json_gets_one_line(tmp_path, capsys):
    """A directory that exists but holds no dataset.json is not a nav dataset; a damaged one is named."""
    mine = tmp_path / "mine"
    mine.mkdir()
    config = tmp_path / "user.yaml"
    config.write_text(f"recipe: nav\ndata: {{dir: {mine}, generate: null}}\n")
    assert main(["train", str(config), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"data.dir '{mine}' has no dataset.json, so it is not a nav dataset; make one with: kiln data nav" in err

    (mine / "dataset.json").write_text('{"num_train": 10,')
    assert main(["train", str(config), "--run-dir", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert f"'{mine / 'dataset.json'}' is not valid JSON" in err and len(err.strip().splitlines()) == 1


def test_kiln_data_nav_writes_a_dataset_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["data", "nav", "--num-train", "40", "--num-val", "8", "--num-test", "8", "--grid-size", "6",
                 "--augment", "--seed", "5", "--out", str(out)]) == 0
    import json

    info = json.loads((out / "dataset.json").read_text())
    assert info["counts"] == {"train": 320, "val": 8, "test": 8} and info["seed"] == 5 and info["augment"] is True
    assert main(["data", "nav", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["data", "nav", "--obstacle-density", "1.5", "--out", str(tmp_path / "e")]) == 2
    assert "--obstacle-density: Input should be less than 1" in capsys.readouterr().err


def test_recipe_flags_come_from_the_recipe(tiny_config, tmp_path, capsys):
    from kiln.recipes import get_recipe

    assert get_recipe("nav").train_flags["--dim"] == "model.dim"
    help_text = run_kiln("train", "--help").stdout
    assert "--dim" in help_text and "nav: model.dim" in help_text
    traffic = tmp_path / "traffic.yaml"
    traffic.write_text("recipe: traffic\n")
    assert main(["train", str(traffic), "--dim", "8"]) == 2
    assert "--dim is not a flag of the traffic recipe" in capsys.readouterr().err


def test_seed_flag_names_are_aliases(tiny_config, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", "--config", str(tiny_config), "train.max_epochs=1", "--output-dir", str(out), "--lr", "0.01"]) == 0
    assert "lr: 0.01" in (out / "config.yaml").read_text()
    assert main(["train", "--config", str(tiny_config), "--checkpoint-dir", str(tmp_path / "ck"), "train.max_epochs=1"]) == 0
    assert (tmp_path / "ck" / "best_model.pt").is_file()
    assert main(["train", str(tiny_config), "--config", str(tiny_config)]) == 2
    assert "give the config once" in capsys.readouterr().err
    assert main(["data", "nav", "--num-train", "8", "--num-val", "4", "--num-test", "4", "--output-dir", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "dataset.json").is_file()


def test_data_flags_derive_from_the_generator_schema():
    from kiln.recipes.nav.config import NavGenerator

    help_text = " ".join(run_kiln("data", "nav", "--help").stdout.split())
    for name, field in NavGenerator.model_fields.items():
        assert "--" + name.replace("_", "-") in help_text
    assert "--augment, --no-augment" in help_text and "(default: 5000)" in help_text


def test_evaluate_flags_belong_to_their_recipe_and_it_uses_the_run_s_threads(tiny_config, tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()
    run_dir = tmp_path / "run"
    assert main(["train", str(tiny_config), "--run-dir", str(run_dir), "train.max_epochs=1"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--scen", "x.scen"]) == 2
    assert "--scen needs --map" in capsys.readouterr().err
    torch.set_num_threads(2)
    try:
        assert main(["evaluate", str(run_dir)]) == 0
        assert torch.get_num_threads() == 1  # the run's train.threads, as in kiln train
    finally:
        torch.set_num_threads(threads)
    assert "test results" in capsys.readouterr().out


def test_resume_of_a_phased_run_needs_no_top_level_checkpoint(tiny_config, tmp_path, capsys):
    import yaml

    config = yaml.safe_load(tiny_config.read_text())
    config["phases"] = [{"train": {"max_epochs": 1}}, {"train": {"max_epochs": 1, "lr": 1e-3}}]
    path = tmp_path / "phased.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    assert main(["train", str(path), "--run-dir", str(run_dir)]) == 0
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert "already finished all 2 phases" in capsys.readouterr().err
    assert main(["evaluate", str(run_dir)]) == 0


def test_a_recipe_brings_its_own_commands(monkeypatch, capsys):
    import dataclasses
    import types

    from kiln import recipes

    seen = {}
    nav = recipes.get_recipe("nav")
    tool = (lambda parser: parser.add_argument("run"), lambda args: seen.setdefault("run", args.run) and 0)
    module = types.SimpleNamespace(RECIPE=dataclasses.replace(nav, name="tooly", commands={"inspect": tool}, train_flags={},
                                                              evaluate_arguments=None))
    monkeypatch.setitem(recipes.RECIPES, "tooly", "kiln_test_tooly")
    monkeypatch.setitem(__import__("sys").modules, "kiln_test_tooly", module)
    assert main(["tooly", "inspect", "runs/x"]) == 0 and seen == {"run": "runs/x"}
    try:
        main(["tooly"])
    except SystemExit as exit:
        assert exit.code == 2
    assert "the following arguments are required: COMMAND" in capsys.readouterr().err


def test_an_out_under_a_file_is_one_line_for_every_command_that_writes(tiny_config, tmp_path, capsys):
    """Issue 27 item 4: export, compare, lr-find and kiln data (seqgen) with --out inside a file exit 2 with one line
    naming the file, and write nothing there (train and kiln data traffic have their own tests)."""
    run = tmp_path / "run"
    assert main(["train", str(tiny_config), "--run-dir", str(run), "train.max_epochs=1"]) == 0
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    capsys.readouterr()
    commands = {
        "export": ["export", str(run), "--format", "safetensors", "--out", str(blocker / "model.safetensors")],
        "compare": ["compare", str(run), "--out", str(blocker / "compare.png")],
        "lr-find": ["lr-find", str(tiny_config), "--steps", "10", "--out", str(blocker / "lr")],
        "data seqgen": ["data", "seqgen", "--synthetic", "--out", str(blocker / "data")],
    }
    for name, command in commands.items():
        assert main(command) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"'{blocker}' is a file" in err, (name, err)
    assert blocker.read_text() == "mine"


def test_evaluate_with_the_dataset_deleted_says_it_remakes_it_and_scores_the_same(tiny_config, tmp_path, capsys):
    """Issue 27 item 5: the deleted data.dir is named and made again from the run's data.generate (the same seed),
    so the results are the training's own."""
    import json
    import shutil

    import yaml

    config = yaml.safe_load(tiny_config.read_text())
    config["data"] = {"dir": str(tmp_path / "nav6"), "generate": {"num_train": 96, "num_val": 32, "num_test": 32, "grid_size": 6,
                                                                  "obstacle_density": 0.2, "seed": 5}}
    (tmp_path / "gen.yaml").write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "gen.yaml"), "--run-dir", str(run), "train.max_epochs=1"]) == 0
    trained = json.loads((run / "test_results.json").read_text())
    shutil.rmtree(tmp_path / "nav6")
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    assert f"The run's data.dir '{tmp_path / 'nav6'}' is gone; it is made again" in capsys.readouterr().out
    assert json.loads((run / "test_results.json").read_text()) == trained
