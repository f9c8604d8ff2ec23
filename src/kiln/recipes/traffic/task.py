"""The traffic task: STMGT (or a baseline) plus its loss, per-epoch metrics and the test evaluation."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from kiln.engine.task import Evaluation, Task
from kiln.errors import KilnError
from kiln.recipes.traffic.losses import mixture_diversity, mixture_entropy, mixture_nll, mixture_usage_kl
from kiln.recipes.traffic.metrics import (dilate_mixture, error_metrics, interval_coverage, mixture_crps, mixture_mean, pit, pit_histogram,
                          reliability_curve, spread_scale_for_coverage, tgcn_metrics)
from kiln.recipes.traffic.config import TrafficConfig
from kiln.recipes.traffic.references import HistoricalAverage

COLLAPSE = 0.8  # the seed's warning sign: one component carrying more than 80% of the weight
RAIN_MM = 0.05  # a forecast step counts as rainy above this precipitation


def build_model(cfg: TrafficConfig, info: dict) -> torch.nn.Module:
    m = cfg.model
    num_nodes = info["num_nodes"]
    edge_index = torch.tensor(info["edge_index"], dtype=torch.long).view(2, -1)
    edge_weight = torch.tensor(info["edge_weight"], dtype=torch.float32)
    if m.max_neighbors is not None:
        edge_index, edge_weight = strongest_edges(edge_index, edge_weight, num_nodes, m.max_neighbors)
    if m.arch == "stmgt":
        from kiln.recipes.traffic.model import STMGT

        weather = m.use_weather and info["has_weather"]
        return STMGT(num_nodes, edge_index, m.seq_len, m.pred_len, m.hidden_dim, m.num_heads, m.num_blocks,
                     m.mixture_components, m.dropout, m.drop_edge_p, weather_dim=3 if weather else 0, min_std=m.min_std,
                     speed_mean=info["speed_mean"], speed_std=info["speed_std"],
                     weather_mean=info.get("weather_mean") if weather else None,
                     weather_std=info.get("weather_std") if weather else None, patch_len=m.patch_len,
                     residual=m.residual, use_day_of_week=m.use_day_of_week)
    if m.arch == "historical_average":
        return HistoricalAverage(num_nodes, info["steps_per_day"], m.seq_len)
    from kiln.recipes.traffic.baselines import BASELINES

    adjacency = torch.zeros(num_nodes, num_nodes)
    adjacency[edge_index[0], edge_index[1]] = edge_weight
    try:
        return BASELINES[m.arch](num_nodes, m.seq_len, m.pred_len, adjacency, **m.baseline)
    except TypeError as err:
        raise KilnError(f"model.baseline: {err} (arch {m.arch})") from None


def strongest_edges(edge_index: Tensor, weight: Tensor, num_nodes: int, k: int) -> tuple[Tensor, Tensor]:
    """Each node keeps its k heaviest incoming edges (ties by order): a sparser graph, cheaper attention."""
    order = torch.argsort(weight, descending=True, stable=True)
    target = edge_index[1, order]
    by_target = order[torch.argsort(target, stable=True)]           # grouped by target, heaviest first
    counts = torch.bincount(edge_index[1], minlength=num_nodes)
    rank = torch.arange(len(by_target)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    keep = by_target[rank < k]
    return edge_index[:, keep], weight[keep]


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


class TrafficTask(Task):
    console_metrics = ("loss", "mae", "rmse")
    history_file = ("training_history.csv", ("epoch", "train_loss", "train_mae", "train_rmse", "val_loss", "val_mae",
                                             "val_rmse", "val_mape", "val_coverage_80"))

    def __init__(self, cfg: TrafficConfig, info: dict):
        super().__init__()
        self.model = build_model(cfg, info)
        self.settings = cfg.model
        self.probabilistic = cfg.model.arch == "stmgt"
        self.use_weather = self.probabilistic and cfg.model.use_weather and info["has_weather"]
        self.speed_mean, self.speed_std = float(info["speed_mean"]), float(info["speed_std"])
        self.unit = info["unit"]
        self.eval_batch_size = cfg.train.eval_batch_size

    def fit_data(self, train: dict[str, Tensor]) -> None:
        if isinstance(self.model, HistoricalAverage):
            self.model.fit(train["x"], train["slot"])

    def outputs(self, batch: dict[str, Tensor]):
        """Normalised model outputs: a mixture dict [B, N, P, K] or point forecasts [B, N, P]."""
        if self.probabilistic:
            return self.model(batch["x"], batch["hour"], batch["dow"], batch.get("weather") if self.use_weather else None)
        if isinstance(self.model, HistoricalAverage):
            return self.model(batch["slot"])
        return self.model(batch["x"])

    def export_module(self, batch: dict[str, Tensor]):
        """Raw-unit inputs in, raw-unit forecasts out (the historical average is a lookup table: nothing to export)."""
        if isinstance(self.model, HistoricalAverage):
            return None
        x = batch["x"] * self.speed_std + self.speed_mean
        if not self.probabilistic:
            return PointForecast(self.model, self.speed_mean, self.speed_std), (x,)
        if not self.use_weather:
            return MixtureForecast(self.model), (x, batch["hour"], batch["dow"])
        m = self.model
        weather = batch["weather"] * m.weather_std + m.weather_mean
        return WeatherMixtureForecast(self.model), (x, batch["hour"], batch["dow"], weather)

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.step(batch, regularise=True)

    def validation_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.step(batch, regularise=False)

    def step(self, batch: dict[str, Tensor], regularise: bool) -> dict[str, Tensor]:
        return self.terms(self.outputs(batch), batch, regularise)

    def terms(self, out, batch: dict[str, Tensor], regularise: bool) -> dict[str, Tensor]:
        """The loss and the logged figures of the model's (uncalibrated) outputs on a batch."""
        y = batch["y"]
        mask = torch.isfinite(y)
        target = (torch.nan_to_num(y) - self.speed_mean) / self.speed_std
        point = mixture_mean(out["means"], out["logits"]) if self.probabilistic else out.float()
        error = (point - target)[mask]  # normalised units
        logs = {}
        if self.probabilistic:
            means, stds, logits = out["means"], out["stds"], out["logits"]
            nll = mixture_nll(means, stds, logits, target, mask)
            diversity, entropy = mixture_diversity(means, stds), mixture_entropy(logits)
            loss = nll + self.settings.mse_loss_weight * (error ** 2).mean() + self.settings.mae_loss_weight * error.abs().mean()
            if regularise:
                loss = loss + self.settings.diversity_weight * diversity + self.settings.entropy_weight * entropy
                if self.settings.usage_weight:
                    loss = loss + self.settings.usage_weight * mixture_usage_kl(logits, mask)
            inside = (pit(means, stds, logits, target) - 0.5).abs() <= 0.4  # inside the central 80% interval
            logs = {"nll": nll, "diversity": diversity, "entropy": entropy, "coverage_80": inside[mask].float().mean()}
            logs.update({f"mix_w{k}": w for k, w in enumerate(torch.softmax(logits, -1)[mask].mean(0))})
        else:
            loss = error.abs().mean() if self.settings.point_loss == "mae" else (error ** 2).mean()
        error = error * self.speed_std  # in the data's unit
        truth = y[mask]
        nonzero = truth != 0
        return {"loss": loss, **logs, "mae": error.abs().mean(), "mse": (error ** 2).mean(),
                "mape": 100 * (error[nonzero].abs() / truth[nonzero].abs()).mean()}

    def calibrate(self, val: dict[str, Tensor]) -> None:
        """STMGT: the per-step spread scale whose central `calibration_level` interval covers that share of the
        validation targets (the engine passes the validation split only)."""
        level = self.settings.calibration_level
        if not self.probabilistic or level is None:
            return
        raw = predict_split(self, val, self.eval_batch_size, calibrated=False)
        self.model.spread_scale.copy_(spread_scale_for_coverage(raw["means"], raw["stds"], raw["logits"], val["y"], level))

    def finish_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        for split in ("train", "val"):
            if f"{split}_mse" in metrics:
                metrics[f"{split}_rmse"] = math.sqrt(metrics.pop(f"{split}_mse"))
        return metrics

    def epoch_warnings(self, metrics: dict[str, float]) -> list[str]:
        weights = [v for k, v in sorted(metrics.items()) if k.startswith("val_mix_w")]
        if weights and max(weights) > COLLAPSE:
            k = int(np.argmax(weights))
            return [f"mixture collapse: component {k + 1} carries {max(weights):.0%} of the weight; "
                    f"raise model.diversity_weight (now {self.settings.diversity_weight}) or lower model.mixture_components"]
        return []

    def epoch_line(self, epoch: int, max_epochs: int, metrics: dict[str, float], best: bool) -> str:
        """The seed's epoch block: loss, train metrics, val metrics with MAPE and 80% coverage."""
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


# ---------------------------------------------------------------- evaluation

@torch.no_grad()
def predict_split(task: TrafficTask, tensors: dict[str, Tensor], batch_size: int, calibrated: bool = True,
                  with_loss: bool = False) -> dict[str, Tensor]:
    """Denormalised forecasts for a whole split, on the CPU: {"point": [S, N, P]} plus means/stds/logits [S, N, P, K]
    (the mixture calibrated by the model's spread scale unless `calibrated` is False). `with_loss` adds "loss", the
    validation step's loss over the split (its batches weighted by their size), from the same forward passes."""
    task.eval()
    parts, loss = [], torch.zeros((), device=task.device)  # summed on the device: no sync per batch
    size = len(tensors["x"])
    for lo in range(0, size, batch_size):
        batch = {k: v[lo:lo + batch_size].to(task.device) for k, v in tensors.items()}
        out = task.outputs(batch)
        if with_loss:
            loss += task.terms(out, batch, regularise=False)["loss"].float() * len(batch["x"]) / size
        if task.probabilistic and calibrated:
            out = task.model.calibrated(out)
        out = {k: v.float().cpu() for k, v in out.items()} if isinstance(out, dict) else out.float().cpu()
        if task.probabilistic:
            part = {"means": out["means"] * task.speed_std + task.speed_mean, "stds": out["stds"] * task.speed_std,
                    "logits": out["logits"]}
            part["point"] = mixture_mean(part["means"], part["logits"])
        else:
            part = {"point": out.float() * task.speed_std + task.speed_mean}
        parts.append(part)
    pred = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return {**pred, "loss": loss.cpu()} if with_loss else pred


TAILS = {"below_q01": 0.01, "below_q05": 0.05, "above_q95": 0.95, "above_q99": 0.99}


def distribution_metrics(pred: dict[str, Tensor], y: Tensor) -> dict:
    """From the PIT of every target: 80% coverage, the reliability curve (observed coverage of the central
    interval at nominal 10..90%), the PIT histogram (uniform when calibrated) and the tails: the share of targets
    below the forecast's 1% and 5% quantiles and above its 95% and 99% quantiles (ideally 0.01, 0.05, 0.05, 0.01)."""
    u = pit(pred["means"].double(), pred["stds"].double(), pred["logits"].double(), y.double())
    curve = reliability_curve(u)
    tails = {name: (u < q if q < 0.5 else u > q).double().mean().item() for name, q in TAILS.items()}
    return {"coverage_80": round(curve["0.8"], 6),
            "crps": round(float(mixture_crps(pred["means"], pred["stds"], pred["logits"], y).mean()), 6),
            "calibration": {k: round(v, 6) for k, v in curve.items()},
            "pit_histogram": [round(c, 6) for c in pit_histogram(u)],
            "tail_coverage": {k: round(v, 6) for k, v in tails.items()}}


def forecast_metrics(pred: dict[str, Tensor], y: Tensor) -> dict[str, float]:
    """MAE, RMSE, MAPE, R2 (+ 80% coverage, CRPS) over all elements of [S, N, P] (finite targets only)."""
    point = error_metrics(pred["point"], y)
    out = {k: round(float(v), 6) for k, v in point.items()}
    if "means" in pred:
        args = (pred["means"], pred["stds"], pred["logits"], y)
        out["coverage_80"] = round(interval_coverage(*args, level=0.8), 6)
        out["crps"] = round(float(mixture_crps(*args).mean()), 6)
    return out


@torch.no_grad()
def evaluate(task: TrafficTask, splits, cfg: TrafficConfig, options: dict) -> Evaluation:
    """Test metrics (point, distribution, per horizon, per node, by weather, references, the T-GCN protocol);
    the report draws from the same forecasts (outputs["pred"], the mixture as the model ships it)."""
    info = splits.info
    test = splits.test
    y = test["y"]
    complete = torch.isfinite(y).all(-1).all(-1)  # windows with every target inside the data
    pred = predict_split(task, test, cfg.train.eval_batch_size, calibrated=False, with_loss=True)
    loss = pred.pop("loss")
    if "means" in pred:  # keep the trained mixture for the uncalibrated figures, then stretch it as the model ships it
        raw = {k: pred[k] for k in ("means", "stds", "logits")}
        pred["means"], pred["stds"] = dilate_mixture(pred["means"], pred["stds"], pred["logits"], task.model.spread_scale.cpu())
    full = {k: v[complete] for k, v in pred.items()}
    y_full = y[complete]
    results = {"model": cfg.model.arch, "unit": info["unit"], "samples": int(complete.sum()),
               **forecast_metrics({"point": full["point"]}, y_full),  # the mixture's figures: distribution_metrics
               "loss": round(loss.item(), 6)}  # over every test window, as val_loss is over every validation window
    if "means" in full:
        results.update(distribution_metrics(full, y_full))
        results["spread_scale"] = [round(float(s), 4) for s in task.model.spread_scale]
        results["uncalibrated"] = distribution_metrics({k: v[complete] for k, v in raw.items()}, y_full)
        results["mixture_usage"] = [round(float(w), 4) for w in torch.softmax(full["logits"], -1).mean((0, 1, 2))]

    interval = info["interval_minutes"]
    per_step = {f"{(h + 1) * interval}min": forecast_metrics({k: v[:, :, h] for k, v in full.items()}, y_full[:, :, h])
                for h in range(y.shape[-1])}
    results["per_horizon"] = per_step
    node_errors = error_metrics(full["point"].transpose(0, 1).reshape(y.shape[1], -1),
                                y_full.transpose(0, 1).reshape(y.shape[1], -1), dim=0)
    results["per_node"] = {k: [round(float(v), 4) for v in node_errors[k]] for k in ("mae", "rmse")}

    if "weather" in test:  # the weather branch's use shows where it rains in the forecast window
        rain_mm = test["weather"][complete][:, -y.shape[-1]:, 2] * info["weather_std"][2] + info["weather_mean"][2]
        rain = (rain_mm > RAIN_MM)[:, None, :].expand_as(y_full)
        results["weather_conditions"] = {
            name: {"share": round(float(m.float().mean()), 4), **forecast_metrics({k: v[m] for k, v in full.items()}, y_full[m])}
            for name, m in (("rain", rain), ("dry", ~rain)) if m.any()}
    references = reference_forecasts(task, splits, cfg)
    results["references"] = {name: forecast_metrics({"point": p[complete]}, y_full) for name, p in references.items()}
    results["reference_horizons"] = {
        name: {step: {k: v for k, v in forecast_metrics({"point": p[complete][:, :, h]}, y_full[:, :, h]).items() if k in ("mae", "rmse")}
               for h, step in enumerate(per_step)} for name, p in references.items()}
    if info["protocol"] == "tgcn":
        results["tgcn_protocol"] = tgcn_table(pred["point"], y, info)
        results["tgcn_references"] = {name: tgcn_table(p, y, info) for name, p in references.items()}
        published = info.get("tgcn_references") or {}  # computed once by kiln data traffic --tgcn-references
        if "linear_svr" in published and info["seq_len"] == 12:
            results["tgcn_references"]["linear_svr"] = published["linear_svr"]
    return Evaluation(results, {"pred": pred})


def reference_forecasts(task: TrafficTask, splits, cfg: TrafficConfig) -> dict[str, Tensor]:
    """Persistence (last observed speed) and the training split's time-of-day average, on the test windows."""
    test, train = splits.test, splits.train
    mean, std = task.speed_mean, task.speed_std
    P = test["y"].shape[-1]
    last = test["x"][:, :, -1:] * std + mean
    average = HistoricalAverage(test["x"].shape[1], splits.info["steps_per_day"], cfg.model.seq_len)
    average.fit(train["x"], train["slot"])
    return {"persistence": last.expand(-1, -1, P), "historical_average": average(test["slot"]) * std + mean}


def tgcn_table(point: Tensor, y: Tensor, info: dict) -> dict[str, dict[str, float]]:
    """T-GCN protocol: for each horizon h (15 min = 3 steps at 5 minutes), its windows range(len(test) - seq - h)
    and all steps 1..h pooled, in the data's unit."""
    size = info["bounds"]["test"][1] - info["bounds"]["test"][0]
    table = {}
    for name, h in info["tgcn_horizons"].items():
        if h > y.shape[-1]:
            continue
        n = size - info["seq_len"] - h
        table[name] = {k: round(v, 6) for k, v in tgcn_metrics(point[:n, :, :h].numpy(), y[:n, :, :h].numpy()).items()}
    return table


