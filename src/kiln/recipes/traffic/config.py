"""Config sections of the traffic recipe (pydantic only: imported by `kiln --help` and config checks).

The original guide's keys map onto these: model.{hidden_dim, num_heads, num_blocks, mixture_components,
seq_len, pred_len}, model.{drop_edge_p, mse_loss_weight} (the guide keeps them under "training"),
train.{batch_size, lr (learning_rate), weight_decay, max_epochs, patience, precision (use_amp)}
and data.dir (data_source).

`model:` is one of the architectures below, chosen by `model.arch` (default stmgt); each has exactly its own keys.
The point baselines' keys are their constructors' keyword arguments (kiln.recipes.traffic.baselines).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from kiln.config import RunConfig, Section, by_arch


class CityGenerator(Section):
    """Settings of `kiln data traffic --simulate`; when data.dir is missing, kiln train simulates it."""

    days: int = Field(28, ge=3, description="days of 15-minute records (one collection run per day)")
    interval_minutes: int = Field(15, ge=1, le=60)
    seed: int = 0
    per_segment: bool = Field(False, description="records per road segment (node_a_id, node_b_id), as the guide's data, "
                              "instead of per node; the graph then comes from the records")


class TrafficData(Section):
    dir: str = Field("data/traffic/city", description="dataset directory (traffic.parquet, nodes.csv, edges.csv)")
    generate: CityGenerator | None = Field(CityGenerator(), description="null for a dataset made elsewhere")
    protocol: Literal["chronological", "tgcn"] = Field(
        "chronological", description="chronological: train/val/test fractions of the timeline; "
        "tgcn: T-GCN's 80/20 split (validation carved from the end of the 80%)")
    val_fraction: float = Field(0.15, gt=0, lt=0.5, description="share of the timeline (tgcn: of the training 80%) for validation")
    test_fraction: float = Field(0.15, gt=0, lt=0.5, description="chronological protocol only; tgcn uses 0.2")


class Windows(Section):
    """What every architecture has: the window it reads and the steps it forecasts."""

    seq_len: int = Field(12, ge=1, description="input steps")
    pred_len: int = Field(12, ge=1, description="forecast steps")


class STMGTModel(Windows):
    arch: Literal["stmgt"] = "stmgt"
    hidden_dim: int = Field(64, gt=0)
    num_heads: int = Field(4, gt=0)
    num_blocks: int = Field(3, gt=0, description="parallel spatial/temporal blocks")
    mixture_components: int = Field(3, gt=0, description="K Gaussians per node and horizon")
    dropout: float = Field(0.2, ge=0, lt=1)
    drop_edge_p: float = Field(0.1, ge=0, lt=1, description="DropEdge: share of graph edges dropped per training step")
    patch_len: int = Field(1, ge=1, description="input steps per token (1 = one token per step); divides seq_len")
    max_neighbors: int | None = Field(None, ge=1, description="keep each node's heaviest incoming edges only; null = all")
    graph_attention: Literal["gatv2", "dense"] = Field(
        "gatv2", description="gatv2: torch_geometric's GATv2Conv over the edge list; dense: the same attention as one "
        "gather over a neighbour table of max_neighbors slots (equal outputs; no faster on Los-loop, docs/benchmarks.md)")
    use_day_of_week: bool = Field(True, description="day-of-week embedding; off for data shorter than a few weeks (Los-loop)")
    residual: bool = Field(True, description="mixture means are offsets from the last observed speed")
    use_weather: bool = Field(True, description="weather cross-attention (off by itself when the data has no weather)")
    mse_loss_weight: float = Field(0.4, ge=0, description="loss = mixture NLL + w * MSE of the mixture mean (+ MAE term) + regularisers")
    mae_loss_weight: float = Field(0.0, ge=0, description="+ w * MAE of the mixture mean (pulls the point forecast to the median)")
    diversity_weight: float = Field(0.01, ge=0, description="pushes mixture components apart (raise it against collapse)")
    entropy_weight: float = Field(0.001, ge=0, description="per-forecast mixture-weight entropy penalty")
    usage_weight: float = Field(0.0, ge=0, description="KL(mean mixture weights || uniform): balances how much each component is used")
    min_std: float = Field(0.01, gt=0, description="floor on component stds, in normalised units")
    calibration_level: float | None = Field(
        0.8, gt=0, lt=1, description="after training, stretch each forecast step's mixture about its mean until its "
        "central interval at this level covers this share of the validation targets; null = off")

    @model_validator(mode="after")
    def _heads_divide_dim_and_patches_divide_window(self):
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"model.hidden_dim={self.hidden_dim} must be divisible by model.num_heads={self.num_heads}")
        if self.seq_len % self.patch_len:
            raise ValueError(f"model.patch_len={self.patch_len} must divide model.seq_len={self.seq_len}")
        if self.graph_attention == "dense" and self.max_neighbors is None:
            raise ValueError("model.graph_attention 'dense' needs model.max_neighbors (the width of its neighbour table); "
                             "set it, e.g. to the largest number of roads into a node, or use 'gatv2'")
        return self


class PointModel(Windows):
    """A point forecaster: one speed per node and step, trained on this loss (in normalised units)."""

    point_loss: Literal["mae", "mse"] = Field("mae", description="training loss (and val_loss) of the point forecast")


class GraphPointModel(PointModel):
    max_neighbors: int | None = Field(None, ge=1, description="keep each node's heaviest incoming edges only; null = all")


class HistoricalAverageModel(PointModel):
    """The training split's mean speed per time-of-day slot and node, fitted in closed form."""

    arch: Literal["historical_average"] = "historical_average"


class LSTMModel(PointModel):
    arch: Literal["lstm"] = "lstm"
    hidden_dim: int = Field(64, gt=0)
    num_layers: int = Field(2, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1, description="between stacked LSTM layers")
    embedding_dim: int = Field(16, gt=0, description="learned node embedding fed beside the speed")


class GraphWaveNetModel(GraphPointModel):
    arch: Literal["graphwavenet"] = "graphwavenet"
    residual_channels: int = Field(32, gt=0)
    dilation_channels: int = Field(32, gt=0)
    skip_channels: int = Field(256, gt=0)
    end_channels: int = Field(512, gt=0)
    blocks: int = Field(4, ge=1, description="stacks of dilated layers")
    layers: int = Field(2, ge=1, description="dilated layers per block (dilations 1, 2, 4, ...)")
    kernel_size: int = Field(2, ge=1)
    dropout: float = Field(0.3, ge=0, lt=1, description="after each graph convolution")
    adaptive: bool = Field(True, description="add the self-adaptive adjacency softmax(relu(E1 E2))")
    embedding_dim: int = Field(10, gt=0, description="node embeddings of the adaptive adjacency")


class ASTGCNModel(GraphPointModel):
    arch: Literal["astgcn"] = "astgcn"
    nb_block: int = Field(2, ge=1)
    cheb_k: int = Field(3, ge=1, description="Chebyshev polynomial order K")
    nb_chev_filter: int = Field(64, gt=0)
    nb_time_filter: int = Field(64, gt=0)
    time_strides: int = Field(1, ge=1, description="stride in time of the first block")


class TGCNModel(GraphPointModel):
    arch: Literal["tgcn"] = "tgcn"
    hidden_dim: int = Field(64, gt=0)
    self_loop: float = Field(1.0, ge=0, description="weight of the I that GCN's renormalisation adds to the adjacency")


class TrafficConfig(RunConfig):
    recipe: Literal["traffic"] = "traffic"
    data: TrafficData = TrafficData()
    model: by_arch(STMGTModel, LSTMModel, GraphWaveNetModel, ASTGCNModel, TGCNModel, HistoricalAverageModel) = STMGTModel()

    train_defaults: ClassVar[dict[str, Any]] = {"monitor": "val_mae"}  # the guide keeps the best checkpoint by validation MAE
