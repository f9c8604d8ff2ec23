"""Config sections of the seqgen recipe (pydantic only: imported by `kiln --help` and config checks).

The original guide's flags map onto these: --hidden_size, --num_layers, --dropout, --teacher_forcing_start/end,
--noise_level, --max_lag, --alpha -> model.*; --epochs, --batch_size, --start_lr, --min_lr, --weight_decay,
--clip_grad_norm, --save_every, --mixed_precision -> train.{max_epochs, batch_size, lr, scheduler.min_lr,
weight_decay, gradient_clip_val, checkpoint_every_n_epochs, precision}; --data_dir -> data.dir;
--output_dir -> --run-dir; --existing_model -> --init-from. The guide's three training scripts are model.loss.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from kiln.config import RunConfig, Section

GUIDE_ALPHA = 0.5  # the guide's combined script: 50% MAE + 50% autocorrelation


class SeqSplit(Section):
    """How the sequences are split (the guide: 4400 train / 550 validation / the rest test), by a seeded shuffle."""

    train_size: int = Field(4400, ge=1, description="sequences in the training split")
    val_size: int = Field(550, ge=1, description="sequences in the validation split; the rest are the test split")
    split_seed: int = Field(0, description="seed of the shuffle that assigns files to splits")


class SeqGenerator(Section):
    """Settings of `kiln data seqgen --synthetic`; when data.dir is missing, kiln train generates it."""

    num_sequences: int = Field(5500, ge=3, description="sequences (CSV files) to write")
    profile_points: int = Field(64, ge=8, description="points of the simulated string profile before PCA")
    seed: int = Field(0, description="seed of the parameter draws")


class SyntheticStrings(SeqGenerator, SeqSplit):
    """Everything `kiln data seqgen --synthetic` needs: the simulation and the split its PCA is fitted on."""


class SeqgenData(Section):
    dir: str = Field("data/seqgen/synthetic", description="directory of CSV files, one sequence each (151 rows x "
                     "step, pc1..pc5, param1, param2)")
    generate: SeqGenerator | None = Field(SeqGenerator(), description="null for a dataset made elsewhere")
    split: SeqSplit = SeqSplit()
    on_bad_file: Literal["error", "skip"] = Field(
        "error", description="a CSV with the wrong row count, missing columns, NaN or varying parameters: "
        "error (stop and name it) or skip (name it in the log and leave it out)")


class SeqgenModel(Section):
    hidden_size: int = Field(256, gt=0, description="LSTM hidden units")
    num_layers: int = Field(2, gt=0, description="stacked LSTM layers")
    dropout: float = Field(0.3, ge=0, lt=1, description="dropout between LSTM layers")
    loss: Literal["mae", "autocorr", "combined"] = Field(
        "combined", description="the guide's three scripts: mae (L1), autocorr (ACF up to max_lag), combined")
    alpha: float | None = Field(None, ge=0, le=1, description=f"loss combined only: alpha * MAE + (1 - alpha) * "
                                f"autocorrelation loss (null: the guide's {GUIDE_ALPHA})")
    max_lag: int = Field(10, ge=1, le=150, description="largest lag of the autocorrelation loss (logged under every loss) "
                         "and of the test ACF error")
    teacher_forcing_start: float = Field(0.7, ge=0, le=1, description="share of steps fed the true previous value, first epoch")
    teacher_forcing_end: float = Field(0.6, ge=0, le=1, description="... falling linearly to this over the run (or phase)")
    noise_level: float = Field(0.05, ge=0, description="std of Gaussian noise added to the model's inputs in training")
    sampling: Literal["sequential", "parallel"] = Field(
        "sequential", description="scheduled sampling: sequential (the guide's step loop, own outputs compound) or "
                                  "parallel (one teacher-forced pass supplies the own outputs; faster, never compounds)")

    @model_validator(mode="before")
    @classmethod
    def _alpha_weighs_the_combined_loss_only(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        loss = raw.get("loss", "combined")
        if loss == "combined" and raw.get("alpha") is None:
            return {**raw, "alpha": GUIDE_ALPHA}
        if loss != "combined" and raw.get("alpha") is not None:
            raise ValueError(f"model.alpha weighs the combined loss and model.loss={loss} ignores it; drop model.alpha "
                             f"(a phase that switches to {loss} sets alpha: null) or set model.loss=combined")
        return raw

    @model_validator(mode="after")
    def _settings_that_act(self):
        if self.num_layers == 1 and self.dropout:
            raise ValueError("model.dropout acts between LSTM layers; with model.num_layers=1 set model.dropout=0")
        if self.teacher_forcing_start < self.teacher_forcing_end:
            raise ValueError(f"model.teacher_forcing_start ({self.teacher_forcing_start}) is below model.teacher_forcing_end "
                             f"({self.teacher_forcing_end}): the guide's schedule only falls, max(end, start - (start - end) * "
                             f"epoch / epochs), so it would stay at end; set start >= end")
        return self


class SeqgenConfig(RunConfig):
    recipe: Literal["seqgen"] = "seqgen"
    data: SeqgenData = SeqgenData()
    model: SeqgenModel = SeqgenModel()
    # the guide's per-epoch Test Loss column of training_metrics.csv
    train_defaults: ClassVar[dict[str, Any]] = {"log_test_metrics": True}
