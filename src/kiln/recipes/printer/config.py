"""Config sections of the printer recipe (pydantic only: imported by `kiln --help` and config checks).

The original guide's keys map onto these: data.{sequence_length, stride, val_ratio, test_ratio}
(prepare_training_data.py), model.{hidden_size, num_layers, dropout, loss_type, loss_ratio} and train.{batch_size,
lr, max_epochs (epochs), weight_decay, precision (--mixed_precision), accumulate_grad_batches (--accumulation_steps),
patience (--early_stopping_patience)}.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from kiln.config import RunConfig, Section, by_arch

GUIDE_LOSS_RATIO = 0.7  # the guide's HybridLoss(mae_ratio=0.7)
LAYERS_PATTERN = r"all|sampled:[1-9]\d*|first:\d+|\d+-\d+"  # the forms sim.select_layers reads


class PrinterGenerator(Section):
    """Settings of `kiln data printer`: which prints, and the simulated machine (planner, shaper, belt axes)."""

    model_config = ConfigDict(allow_inf_nan=False)  # no printer has an infinite acceleration or rate

    models: str = Field("3dbenchy,bearing5,nautilus,boat,coaster,mixed", description="comma-separated procedural models "
                        "(3dbenchy, bearing5, nautilus, boat, coaster, mixed) and/or G-code files or folders")
    model_layers: int = Field(50, ge=1, le=1000, description="layers of 0.2 mm in each procedural model (up to 200 mm tall)")
    layers: str = Field("sampled:5", description="layers simulated: all, sampled:N (every N-th), first:N or A-B")
    sample_rate: float = Field(1000.0, ge=200, le=100_000, description="samples per second (Hz); the axes resonate at up to 80 Hz")
    firmware: Literal["marlin", "klipper"] = Field("marlin", description="cornering: Marlin junction deviation or "
                                                    "Klipper square corner velocity")
    junction_deviation: float = Field(0.013, gt=0, description="Marlin junction deviation (mm)")
    square_corner_velocity: float = Field(5.0, gt=0, description="Klipper square corner velocity (mm/s)")
    acceleration: float = Field(3000.0, gt=0, le=1_000_000, description="print acceleration (mm/s^2); M204 in the file is ignored")
    max_velocity: float = Field(200.0, gt=0, description="cap on the G-code's F (mm/s)")
    shaper: Literal["none", "zv", "mzv", "ei"] = Field("mzv", description="input shaper (Klipper's definitions)")
    shaper_x_hz: float | None = Field(None, ge=5, le=200, description="shaper frequency of X; null = the X resonance (a tuned printer)")
    shaper_y_hz: float | None = Field(None, ge=5, le=200, description="shaper frequency of Y; null = the Y resonance")
    shaper_damping: float = Field(0.1, gt=0, lt=1, description="damping ratio the shaper is designed for")
    resonance_x_hz: float = Field(45.0, ge=30, le=80, description="X belt-axis resonance (Hz)")
    resonance_y_hz: float = Field(36.0, ge=30, le=80, description="Y belt-axis resonance (Hz)")
    damping_x: float = Field(0.1, ge=0.05, le=0.15, description="X damping ratio")
    damping_y: float = Field(0.08, ge=0.05, le=0.15, description="Y damping ratio")
    friction: float = Field(1500.0, ge=0, le=100_000, description="Coulomb friction of the carriage per unit mass (mm/s^2)")
    friction_velocity: float = Field(2.0, gt=0, description="speed (mm/s) over which friction reaches full strength (tanh)")

    @field_validator("layers")
    @classmethod
    def _layers_form(cls, spec: str) -> str:
        if not re.fullmatch(LAYERS_PATTERN, spec):
            raise ValueError(f"'{spec}' is not one of all, sampled:N (N >= 1), first:N or A-B")
        return spec


class PrinterData(Section):
    model_config = ConfigDict(allow_inf_nan=False)

    dir: str = Field("data/printer/default", description="dataset directory written by `kiln data printer`")
    generate: PrinterGenerator | None = Field(PrinterGenerator(), description="null for a dataset made elsewhere")
    sequence_length: int = Field(64, ge=2, description="samples per window")
    stride: int = Field(4, ge=1, description="samples between window starts")
    position: bool = Field(True, description="x_ref, y_ref among the features (the guide's); the error does not depend on them")
    acceleration: bool = Field(True, description="add ax, ay (backward difference of the velocity) to the features")
    velocity_lags_ms: list[float] = Field(default_factory=list, description="add vx, vy this many ms earlier (longer history)")
    test_models: list[str] = Field(default_factory=lambda: ["bearing5"],
                                   description="models held out whole for test; [] = split layers by test_ratio")
    val_ratio: float = Field(0.15, gt=0, lt=0.5, description="share of the remaining layers for validation")
    test_ratio: float = Field(0.1, ge=0, lt=0.5, description="share of layers for test when test_models is empty")
    split_seed: int = Field(0, description="seed of the layer shuffle behind the splits")

    @field_validator("velocity_lags_ms")
    @classmethod
    def _positive_lags(cls, lags: list[float]) -> list[float]:
        if any(lag <= 0 for lag in lags):
            raise ValueError("velocity lags must be positive (ms before the current sample)")
        return lags


# the ridge FIR baseline: fitted alone (model.arch ridge) or beside every LSTM, on the same training windows
RidgeAlpha = Annotated[float, Field(ge=0, description="ridge penalty of the FIR baseline (on standardised windows)")]


class LSTMModel(Section):
    """The original guide's RealTimeCorrector with its losses; the ridge FIR baseline is fitted beside it."""

    arch: Literal["lstm"] = Field("lstm", description="lstm: the corrector; ridge: the linear FIR baseline alone")
    hidden_size: int = Field(64, gt=0)
    num_layers: int = Field(2, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1, description="between LSTM layers")
    burn_in: int = Field(16, ge=0, description="first steps of each window without loss (the state warms up)")
    loss_type: Literal["mae", "mse", "hybrid"] = "hybrid"
    loss_ratio: float | None = Field(None, ge=0, le=1, description=f"hybrid only: loss_ratio * MAE + (1 - loss_ratio) * "
                                     f"MSE (null: the guide's {GUIDE_LOSS_RATIO})")
    ridge_alpha: RidgeAlpha = 1e-3

    @model_validator(mode="before")
    @classmethod
    def _loss_ratio_weighs_the_hybrid_loss_only(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        loss = raw.get("loss_type", "hybrid")
        if loss == "hybrid" and raw.get("loss_ratio") is None:
            return {**raw, "loss_ratio": GUIDE_LOSS_RATIO}
        if loss != "hybrid" and raw.get("loss_ratio") is not None:
            raise ValueError(f"model.loss_ratio weighs the hybrid loss and model.loss_type={loss} ignores it; drop "
                             f"model.loss_ratio (null) or set model.loss_type=hybrid")
        return raw

    @model_validator(mode="after")
    def _dropout_between_layers(self):
        if self.num_layers == 1 and self.dropout:
            raise ValueError("model.dropout acts between LSTM layers; with model.num_layers=1 set model.dropout=0")
        return self


class RidgeModel(Section):
    """The ridge FIR baseline alone, fitted in closed form (no training loop)."""

    arch: Literal["ridge"] = "ridge"
    ridge_alpha: RidgeAlpha = 1e-3


class PrinterConfig(RunConfig):
    recipe: Literal["printer"] = "printer"
    data: PrinterData = PrinterData()
    model: by_arch(LSTMModel, RidgeModel) = LSTMModel()
    # an LSTM step multiplies tiny matrices: a second thread only waits on the first (and spins on a busy CPU)
    train_defaults: ClassVar[dict[str, Any]] = {"threads": 1}
