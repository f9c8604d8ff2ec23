"""Seqgen config: the shipped configs against the original guide's tables, the recipe's train defaults, and
settings that the chosen loss or schedule would ignore being one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kiln.cli import build_parser, collect_overrides
from kiln.config import dump_config, validate
from kiln.errors import KilnError
from kiln.recipes import get_recipe, load_recipe_config
from kiln.recipes.seqgen.config import SeqgenConfig

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "seqgen"


def test_shipped_configs_validate_and_reproduce_the_guide_s_tables():
    configs = {p.stem: load_recipe_config(p)[1] for p in sorted(CONFIGS.glob("*.yaml"))}
    assert {"quick", "mae_500", "autocorr_500", "combined_500"} <= set(configs)
    # the guide's tables, phase by phase: lr start, lr end, teacher forcing start, end, max_lag, noise, weight decay, clip
    autocorr = [(1e-3, 5e-4, .7, .6, 10, .05, .01, 1.0), (5e-4, 1e-4, .6, .5, 15, .05, .008, 1.0), (1e-4, 5e-5, .5, .4, 15, .04, .005, .9),
                (5e-5, 1e-5, .4, .3, 20, .02, .003, .7), (1e-5, 5e-6, .3, .2, 20, .01, .002, .6)]
    combined = [(1e-3, 5e-4, .7, .6, 10, .05, .01, 1.0), (5e-4, 1e-4, .6, .5, 15, .04, .008, .9), (1e-4, 5e-5, .5, .4, 15, .03, .005, .8),
                (5e-5, 1e-5, .4, .3, 20, .02, .003, .7), (1e-5, 5e-6, .3, .2, 20, .01, .002, .6)]
    for name, table in (("mae_500", combined), ("autocorr_500", autocorr), ("combined_500", combined)):
        phases = configs[name].phase_configs()
        assert len(phases) == 5 and configs[name].model.loss == name.split("_")[0]
        for k, (_, init, cfg) in enumerate(phases):
            t, m = cfg.train, cfg.model
            row = (t.lr, t.scheduler.min_lr, m.teacher_forcing_start, m.teacher_forcing_end, m.max_lag, m.noise_level,
                   t.weight_decay, t.gradient_clip_val)
            expected = table[k] if name != "mae_500" else table[k][:4] + (m.max_lag,) + table[k][5:]  # MAE: no max_lag column
            assert row == pytest.approx(expected), (name, k)
            assert t.max_epochs == 100 and init == "best"
            assert t.scheduler.name == ("warmup_cosine" if k == 0 else "linear_decay")
        assert phases[0][2].train.scheduler.warmup == 0.3


def test_a_phase_with_an_unknown_key_is_named(seqgen_config):
    with pytest.raises(KilnError, match=r"phases\[2\] \(fine\): unknown config key 'model.max_lagg'; did you mean 'model.max_lag'\?"):
        load_recipe_config(seqgen_config, ["phases=[{name: warm}, {name: fine, model: {max_lagg: 3}}]"])


def test_every_shipped_config_logs_the_guide_s_test_loss_and_its_dump_means_the_same():
    for path in sorted(CONFIGS.glob("*.yaml")):
        cfg = load_recipe_config(path)[1]
        assert cfg.train.log_test_metrics and cfg.train.monitor == "val_loss", path.name   # the recipe's train defaults
        dumped = dump_config(cfg)
        assert dump_config(validate(yaml.safe_load(dumped), SeqgenConfig, "config.yaml")) == dumped   # a run's config.yaml
        for _, _, phase in cfg.phase_configs():
            assert phase.model.loss == cfg.model.loss and phase.model.alpha == cfg.model.alpha


def test_alpha_is_the_combined_loss_s_and_defaults_to_the_guide_s(seqgen_config):
    assert load_recipe_config(seqgen_config)[1].model.alpha == 0.5
    assert load_recipe_config(seqgen_config, ["model.alpha=null"])[1].model.alpha == 0.5
    assert load_recipe_config(seqgen_config, ["model.alpha=0.9"])[1].model.alpha == 0.9
    assert load_recipe_config(seqgen_config, ["model.loss=mae"])[1].model.alpha is None


@pytest.mark.parametrize("loss", ["mae", "autocorr"])
def test_alpha_under_a_pure_loss_is_an_error(seqgen_config, tmp_path, loss):
    message = (rf"model.alpha weighs the combined loss and model.loss={loss} ignores it; drop model.alpha \(a phase that "
               rf"switches to {loss} sets alpha: null\) or set model.loss=combined$")
    with pytest.raises(KilnError, match=message) as err:
        load_recipe_config(seqgen_config, [f"model.loss={loss}", "model.alpha=0.5"])
    assert "\n" not in str(err.value)
    args = build_parser().parse_args(["train", str(seqgen_config), "--alpha", "0.3"])      # the guide's flag
    with pytest.raises(KilnError, match=message):
        load_recipe_config(seqgen_config, [f"model.loss={loss}", *collect_overrides(args, get_recipe("seqgen"))])
    with pytest.raises(KilnError, match=r"phases\[1\].*" + message):
        load_recipe_config(seqgen_config, [f"model.loss={loss}", "phases=[{model: {alpha: 0.7}}]"])
    with pytest.raises(KilnError, match=r"phases\[2\].*" + message):        # the base's (default) alpha, in a phase
        load_recipe_config(seqgen_config, [f"phases=[{{name: a}}, {{name: b, model: {{loss: {loss}}}}}]"])
    switched = load_recipe_config(seqgen_config, [f"phases=[{{name: a}}, {{name: b, model: {{loss: {loss}, alpha: null}}}}]"])[1]
    assert [(p.model.loss, p.model.alpha) for _, _, p in switched.phase_configs()] == [("combined", 0.5), (loss, None)]


def test_a_teacher_forcing_schedule_that_would_rise_is_an_error(seqgen_config):
    """The guide's max(end, start - (start - end) * epoch / epochs) stays at end when start < end."""
    from kiln.recipes.seqgen.task import teacher_forcing_ratio

    assert {teacher_forcing_ratio(epoch, 10, 0.5, 0.6) for epoch in range(10)} == {0.6}   # start would do nothing
    with pytest.raises(KilnError, match=r"model.teacher_forcing_start \(0.5\) is below model.teacher_forcing_end \(0.6\).*"
                                        r"set start >= end$"):
        load_recipe_config(seqgen_config, ["model.teacher_forcing_start=0.5", "model.teacher_forcing_end=0.6"])
    with pytest.raises(KilnError, match=r"phases\[2\].*model.teacher_forcing_start \(0.4\) is below"):
        load_recipe_config(seqgen_config, ["phases=[{name: a}, {name: b, model: {teacher_forcing_start: 0.4}}]"])
    constant = load_recipe_config(seqgen_config, ["model.teacher_forcing_start=0.6", "model.teacher_forcing_end=0.6"])[1]
    assert constant.model.teacher_forcing_start == constant.model.teacher_forcing_end == 0.6
