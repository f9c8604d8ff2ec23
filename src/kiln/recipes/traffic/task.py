"""The traffic tasks: STMGT's mixture forecast (MixtureTask) and the point forecasters (PointTask, with the
historical average fitted in closed form), each with its loss and per-epoch metrics; `build_task` picks one."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import Tensor

from kiln.engine.task import Task
from kiln.recipes.traffic.config import GraphPointModel, PointModel, STMGTModel, TrafficConfig
from kiln.recipes.traffic.evaluation import predict_split
from kiln.recipes.traffic.losses import mixture_diversity, mixture_entropy, mixture_nll, mixture_usage_kl
from kiln.recipes.traffic.metrics import mixture_mean, pit, spread_scale_for_coverage
from kiln.recipes.traffic.references import HistoricalAverage

COLLAPSE = 0.8  # the original guide's warning sign: one component carrying more than 80% of the weight
# Keys of a point baseline's config that are not keyword arguments of its constructor.
POINT_SETTINGS = {"arch", "seq_len", "pred_len", "point_loss", "max_neighbors"}


def road_graph(info: dict, max_neighbors: int | None) -> tuple[Tensor, Tensor]:
    """The dataset's edges [2, E] and weights [E], each node's `max_neighbors` heaviest incoming ones where given."""
    edge_index = torch.tensor(info["edge_index"], dtype=torch.long).view(2, -1)
    edge_weight = torch.tensor(info["edge_weight"], dtype=torch.float32)
    if max_neighbors is None:
        return edge_index, edge_weight
    return strongest_edges(edge_index, edge_weight, info["num_nodes"], max_neighbors)


def strongest_edges(edge_index: Tensor, weight: Tensor, num_nodes: int, k: int) -> tuple[Tensor, Tensor]:
    """Each node keeps its k heaviest incoming edges (ties by order): a sparser graph, cheaper attention."""
    order = torch.argsort(weight, descending=True, stable=True)
    target = edge_index[1, order]
    by_target = order[torch.argsort(target, stable=True)]           # grouped by target, heaviest first
    counts = torch.bincount(edge_index[1], minlength=num_nodes)
    rank = torch.arange(len(by_target)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    keep = by_target[rank < k]
    return edge_index[:, keep], weight[keep]


def build_stmgt(m: STMGTModel, info: dict) -> torch.nn.Module:
    from kiln.recipes.traffic.model import STMGT

    weather = m.use_weather and info["has_weather"]
    return STMGT(info["num_nodes"], road_graph(info, m.max_neighbors)[0], m.seq_len, m.pred_len, m.hidden_dim, m.num_heads,
                 m.num_blocks, m.mixture_components, m.dropout, m.drop_edge_p, weather_dim=3 if weather else 0,
                 min_std=m.min_std, speed_mean=info["speed_mean"], speed_std=info["speed_std"],
                 weather_mean=info.get("weather_mean") if weather else None,
                 weather_std=info.get("weather_std") if weather else None, patch_len=m.patch_len,
                 residual=m.residual, use_day_of_week=m.use_day_of_week, dense_attention=m.graph_attention == "dense")


def build_point_model(m: PointModel, info: dict) -> torch.nn.Module:
    """A point baseline from its config: the graph baselines get the road graph as a dense adjacency, the LSTM none."""
    from kiln.recipes.traffic.baselines import BASELINES

    num_nodes = info["num_nodes"]
    adjacency = None
    if isinstance(m, GraphPointModel):
        edge_index, edge_weight = road_graph(info, m.max_neighbors)
        adjacency = torch.zeros(num_nodes, num_nodes)
        adjacency[edge_index[0], edge_index[1]] = edge_weight
    return BASELINES[m.arch](num_nodes, m.seq_len, m.pred_len, adjacency, **m.model_dump(exclude=POINT_SETTINGS))


def build_task(cfg: TrafficConfig, info: dict) -> TrafficTask:
    if cfg.model.arch == "stmgt":
        return MixtureTask(build_stmgt(cfg.model, info), cfg, info)
    if cfg.model.arch == "historical_average":
        return HistoricalAverageTask(HistoricalAverage(info["num_nodes"], info["steps_per_day"], cfg.model.seq_len), cfg, info)
    return PointTask(build_point_model(cfg.model, info), cfg, info)


# ---------------------------------------------------------------- deployable modules (kiln export)

class MixtureForecast(torch.nn.Module):
    """Deployable STMGT: raw speeds x [B, N, T] in the data's unit, hour and day of week [B, T+P] ->
    calibrated mixture means and stds [B, N, P, K] in the data's unit, and mixture logits [B, N, P, K]."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, hour: Tensor, dow: Tensor, weather: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        m = self.model
        w = (weather - m.weather_mean) / m.weather_std if weather is not None else None
        out = m.calibrated(m((x - m.speed_mean) / m.speed_std, hour, dow, w))
        return out["means"] * m.speed_std + m.speed_mean, out["stds"] * m.speed_std, out["logits"]


class WeatherMixtureForecast(MixtureForecast):
    """MixtureForecast with raw weather [B, T+P, 3] (temperature, wind, precipitation) as a fourth input."""

    def forward(self, x: Tensor, hour: Tensor, dow: Tensor, weather: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return super().forward(x, hour, dow, weather)


class PointForecast(torch.nn.Module):
    """Deployable point baseline: raw speeds x [B, N, T] -> forecast [B, N, P], both in the data's unit."""

    def __init__(self, model: torch.nn.Module, mean: float, std: float):
        super().__init__()
        self.model, self.mean, self.std = model, mean, std

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) / self.std) * self.std + self.mean


# ---------------------------------------------------------------- tasks

class TrafficTask(Task, ABC):
    """What every traffic model shares: normalised targets, the error metrics in the data's unit, the original
    guide's history file and epoch block. Subclasses give the model's outputs, its loss and its forecast."""

    console_metrics = ("loss", "mae", "rmse")
    history_file = ("training_history.csv", ("epoch", "train_loss", "train_mae", "train_rmse", "val_loss", "val_mae",
                                             "val_rmse", "val_mape", "val_coverage_80"))

    def __init__(self, model: torch.nn.Module, cfg: TrafficConfig, info: dict):
        super().__init__()
        self.model = model
        self.settings = cfg.model
        self.speed_mean, self.speed_std = float(info["speed_mean"]), float(info["speed_std"])

    @abstractmethod
    def outputs(self, batch: dict[str, Tensor]):
        """The model's normalised outputs on a batch."""

    @abstractmethod
    def point(self, out) -> Tensor:
        """The normalised point forecast [B, N, P] in `out`."""

    @abstractmethod
    def loss(self, out, target: Tensor, mask: Tensor, error: Tensor, regularise: bool) -> tuple[Tensor, dict[str, Tensor]]:
        """(loss, extra logged figures) of `out` against the normalised `target` where `mask`; `error` = point - target there."""

    @abstractmethod
    def forecast(self, out) -> dict[str, Tensor]:
        """Denormalised forecasts from `out`: {"point": [B, N, P]} (+ the mixture's means/stds/logits)."""

    def calibrated(self, out):
        """`out` as the model ships it (the identity where nothing is fitted after training)."""
        return out

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.terms(self.outputs(batch), batch, regularise=True)

    def validation_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.terms(self.outputs(batch), batch, regularise=False)

    def terms(self, out, batch: dict[str, Tensor], regularise: bool) -> dict[str, Tensor]:
        """The loss and the logged figures of the model's (uncalibrated) outputs on a batch."""
        y = batch["y"]
        mask = torch.isfinite(y)
        target = (torch.nan_to_num(y) - self.speed_mean) / self.speed_std
        error = (self.point(out) - target)[mask]  # normalised units
        loss, logs = self.loss(out, target, mask, error, regularise)
        error = error * self.speed_std  # in the data's unit
        truth = y[mask]
        nonzero = truth != 0
        return {"loss": loss, **logs, "mae": error.abs().mean(), "mse": (error ** 2).mean(),
                "mape": 100 * (error[nonzero].abs() / truth[nonzero].abs()).mean()}

    def finish_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        for split in ("train", "val"):
            if f"{split}_mse" in metrics:
                metrics[f"{split}_rmse"] = math.sqrt(metrics.pop(f"{split}_mse"))
        return metrics

    def epoch_line(self, epoch: int, max_epochs: int, metrics: dict[str, float], best: bool) -> str:
        """The original guide's epoch block: loss, train metrics, val metrics with MAPE and 80% coverage."""
        m = metrics
        lines = [f"Epoch {epoch}/{max_epochs}", f"Train Loss: {m['train_loss']:.4f}",
                 f"Train Metrics -> MAE: {m['train_mae']:.2f}, RMSE: {m['train_rmse']:.2f}"]
        val = f"Val Metrics -> MAE: {m['val_mae']:.2f}, RMSE: {m['val_rmse']:.2f}, MAPE: {m['val_mape']:.1f}%"
        if "val_coverage_80" in m:
            val += f", COVERAGE@80: {m['val_coverage_80']:.2f}"
        lines.append(val)
        extras = []
        if "train_nll" in m:
            extras.append(f"NLL {m['train_nll']:.3f}, diversity {m['train_diversity']:.3f}, entropy {m['train_entropy']:.3f}")
            weights = [v for k, v in sorted(m.items()) if k.startswith("val_mix_w")]
            extras.append("mixture weights " + " ".join(f"{w:.2f}" for w in weights))
        if "grad_norm_mean" in m:
            extras.append(f"grad norm mean {m['grad_norm_mean']:.2f} max {m['grad_norm_max']:.2f}, |grad| max {m['grad_abs_max']:.3g}")
        if extras:
            lines.append("Loss/health -> " + "; ".join(extras))
        if best:
            lines.append(f"Saved best model checkpoint (MAE: {m['val_mae']:.2f})")
        return "\n".join(lines)


class MixtureTask(TrafficTask):
    """STMGT: a Gaussian mixture per node and step, trained on its NLL plus point-error terms and regularisers, its
    spread calibrated on validation after training."""

    def __init__(self, model: torch.nn.Module, cfg: TrafficConfig, info: dict):
        super().__init__(model, cfg, info)
        self.use_weather = model.weather_encoder is not None  # asked for, and the data has weather
        self.eval_batch_size = cfg.train.eval_batch_size

    def outputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Normalised mixture means, stds and logits [B, N, P, K]."""
        return self.model(batch["x"], batch["hour"], batch["dow"], batch.get("weather") if self.use_weather else None)

    def point(self, out: dict[str, Tensor]) -> Tensor:
        return mixture_mean(out["means"], out["logits"])

    def loss(self, out, target, mask, error, regularise):
        s = self.settings
        means, stds, logits = out["means"], out["stds"], out["logits"]
        nll = mixture_nll(means, stds, logits, target, mask)
        diversity, entropy = mixture_diversity(means, stds), mixture_entropy(logits)
        loss = nll + s.mse_loss_weight * (error ** 2).mean() + s.mae_loss_weight * error.abs().mean()
        if regularise:
            loss = loss + s.diversity_weight * diversity + s.entropy_weight * entropy
            if s.usage_weight:
                loss = loss + s.usage_weight * mixture_usage_kl(logits, mask)
        inside = (pit(means, stds, logits, target) - 0.5).abs() <= 0.4  # inside the central 80% interval
        logs = {"nll": nll, "diversity": diversity, "entropy": entropy, "coverage_80": inside[mask].float().mean()}
        logs.update({f"mix_w{k}": w for k, w in enumerate(torch.softmax(logits, -1)[mask].mean(0))})
        return loss, logs

    def calibrated(self, out: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.model.calibrated(out)

    def forecast(self, out: dict[str, Tensor]) -> dict[str, Tensor]:
        means, stds = out["means"] * self.speed_std + self.speed_mean, out["stds"] * self.speed_std
        return {"means": means, "stds": stds, "logits": out["logits"], "point": mixture_mean(means, out["logits"])}

    def calibrate(self, val: dict[str, Tensor]) -> None:
        """The per-step spread scale whose central `calibration_level` interval covers that share of the validation
        targets (the engine passes the validation split only)."""
        level = self.settings.calibration_level
        if level is None:
            return
        raw = predict_split(self, val, self.eval_batch_size, calibrated=False)
        self.model.spread_scale.copy_(spread_scale_for_coverage(raw["means"], raw["stds"], raw["logits"], val["y"], level))

    def epoch_warnings(self, metrics: dict[str, float]) -> list[str]:
        weights = [v for k, v in sorted(metrics.items()) if k.startswith("val_mix_w")]
        if weights and max(weights) > COLLAPSE:
            k = int(np.argmax(weights))
            return [f"mixture collapse: component {k + 1} carries {max(weights):.0%} of the weight; "
                    f"raise model.diversity_weight (now {self.settings.diversity_weight}) or lower model.mixture_components"]
        return []

    def export_module(self, batch: dict[str, Tensor]):
        """Raw-unit inputs in, the calibrated mixture in the data's unit out."""
        x = batch["x"] * self.speed_std + self.speed_mean
        if not self.use_weather:
            return MixtureForecast(self.model), (x, batch["hour"], batch["dow"])
        weather = batch["weather"] * self.model.weather_std + self.model.weather_mean
        return WeatherMixtureForecast(self.model), (x, batch["hour"], batch["dow"], weather)


class PointTask(TrafficTask):
    """A point baseline (LSTM, Graph WaveNet, ASTGCN, T-GCN): speeds in, one forecast per node and step out,
    trained on its MAE or MSE."""

    def outputs(self, batch: dict[str, Tensor]) -> Tensor:
        """Normalised point forecasts [B, N, P]."""
        return self.model(batch["x"])

    def point(self, out: Tensor) -> Tensor:
        return out.float()

    def loss(self, out, target, mask, error, regularise):
        return (error.abs().mean() if self.settings.point_loss == "mae" else (error ** 2).mean()), {}

    def forecast(self, out: Tensor) -> dict[str, Tensor]:
        return {"point": out.float() * self.speed_std + self.speed_mean}

    def export_module(self, batch: dict[str, Tensor]):
        """Raw speeds in, forecasts in the data's unit out."""
        return PointForecast(self.model, self.speed_mean, self.speed_std), (batch["x"] * self.speed_std + self.speed_mean,)


class HistoricalAverageTask(PointTask):
    """The training split's mean speed per time-of-day slot and node: a lookup table fitted in closed form."""

    def fit_data(self, train: dict[str, Tensor]) -> None:
        self.model.fit(train["x"], train["slot"])

    def outputs(self, batch: dict[str, Tensor]) -> Tensor:
        return self.model(batch["slot"])

    def export_module(self, batch: dict[str, Tensor]):
        """A lookup table: nothing to export."""
        return None
