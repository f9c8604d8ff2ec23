"""STMGT: spatio-temporal multi-graph transformer with weather cross-attention and a Gaussian-mixture head.

Shapes: B batch, N nodes, T input steps (seq_len), P forecast steps (pred_len), D hidden_dim, K components.

    speed [B, N, T] --traffic_encoder (per patch of patch_len steps)--> + node + position + hour/day embeddings
                                                                        --> h [B, T/patch_len, N, D]
    num_blocks x STBlock: spatial GATv2 attention over the road graph  ||  temporal self-attention over T,
                          mixed by a learned sigmoid gate, then a feed-forward layer (pre-norm residuals);
                          the graph attention is torch_geometric's GATv2Conv (scatter over an edge list), or
                          with model.graph_attention: dense the same attention as one gather over a
                          [N, 1 + k] neighbour table (NeighborTableGATv2; needs max_neighbors)
    decoder: one query per forecast step (horizon + its hour/day + node) attends to the node's encoded
             past, then adds its own step's weather and attends to the weather tokens (past and
             forecast window) -> MixtureHead
    MixtureHead: means, stds (softplus, floored), logits per node and step  [B, N, P, K];
                 with residual=True the means are offsets from the last observed speed
    calibrated(): the mixture stretched about its mean by a per-step spread scale [P] fitted on the
                  validation split after training (the point forecast stays); predict() applies it

Everything runs in normalised units; predict() returns km/h (or the dataset's unit).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATv2Conv
from torch_geometric.utils import dropout_edge

from kiln.recipes.traffic.metrics import dilate_mixture


class FeedForward(nn.Sequential):
    # Dropout is applied once, on the residual branch (CPU dropout masks are costly: one per branch is enough).
    def __init__(self, dim: int, mult: int = 2):
        super().__init__(nn.Linear(dim, mult * dim), nn.GELU(), nn.Linear(mult * dim, dim))


def batched_edges(edge_index: Tensor, num_nodes: int, copies: int) -> Tensor:
    """The graph repeated `copies` times as one disconnected graph (node ids offset per copy)."""
    offsets = torch.arange(copies, device=edge_index.device).repeat_interleave(edge_index.shape[1]) * num_nodes
    return edge_index.repeat(1, copies) + offsets


def neighbor_table(edge_index: Tensor, num_nodes: int) -> tuple[Tensor, Tensor]:
    """Every node's incoming edges as rows of a fixed width 1 + k (k the largest in-degree):
    (neighbors [N, 1 + k] source node ids, valid [N, 1 + k]). Slot 0 is the node itself, the self loop GATv2Conv adds
    (self loops in edge_index are dropped first, as GATv2Conv does); then its in-neighbours in edge order; padding is
    invalid."""
    source, target = edge_index[:, edge_index[0] != edge_index[1]]
    order = torch.argsort(target, stable=True)
    source, target = source[order], target[order]
    degree = torch.bincount(target, minlength=num_nodes)
    slot = 1 + torch.arange(len(target), device=target.device) - torch.repeat_interleave(torch.cumsum(degree, 0) - degree, degree)
    width = 1 + int(degree.max()) if len(target) else 1
    neighbors = torch.arange(num_nodes, device=edge_index.device)[:, None].repeat(1, width)  # padding points at the node itself
    valid = torch.zeros(num_nodes, width, dtype=torch.bool, device=edge_index.device)
    valid[:, 0] = True
    neighbors[target, slot] = source
    valid[target, slot] = True
    return neighbors, valid


class NeighborTableGATv2(GATv2Conv):
    """GATv2 (Brody, Alon & Yahav, "How Attentive are Graph Attention Networks?", ICLR 2022) as one dense gather and
    softmax over a neighbour table, for graphs whose nodes have few incoming edges (model.max_neighbors). Per head,
    node i attends to itself and to each in-neighbour j:

        e_ij = a . LeakyReLU(W_r x_i + W_l x_j),   alpha_ij = softmax_j(e_ij),   out_i = sum_j alpha_ij W_l x_j + b

    with the heads concatenated: torch_geometric's GATv2Conv(add_self_loops=True, concat=True), whose parameters,
    initialisation and attention dropout this class inherits, computed without its scatter operations over an edge
    list. GATv2Conv stays the reference: tests compare outputs and gradients on the same weights."""

    def forward(self, x: Tensor, neighbors: Tensor, mask: Tensor) -> Tensor:
        """x [M, N, D] (M copies of the graph: batch x tokens); neighbors [N, S] from neighbor_table; mask [M or 1, N, S]
        the slots that are edges (DropEdge clears some) -> [M, N, H * C]."""
        M, N, _ = x.shape
        H, C = self.heads, self.out_channels
        source = self.lin_l(x).view(M, N, H, C)                                   # W_l x_j: keys and messages
        target = self.lin_r(x).view(M, N, 1, H, C)                                # W_r x_i: queries
        messages = source.index_select(1, neighbors.view(-1)).view(M, N, -1, H, C)  # [M, N, S, H, C]
        score = (F.leaky_relu(messages + target, self.negative_slope) * self.att).sum(-1)  # [M, N, S, H]
        score = score.masked_fill(~mask[..., None], float("-inf"))                # padding and dropped edges
        alpha = F.dropout(torch.softmax(score, dim=2), p=self.dropout, training=self.training)
        out = (alpha[..., None] * messages).sum(2)                                # [M, N, H, C]
        return out.reshape(M, N, H * C) + self.bias


class STBlock(nn.Module):
    """Parallel spatial (graph attention) and temporal (self-attention) mixing with a gated fusion."""

    def __init__(self, dim: int, heads: int, dropout: float, dense_attention: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.dense_attention = dense_attention
        spatial = NeighborTableGATv2 if dense_attention else GATv2Conv
        self.spatial = spatial(dim, dim // heads, heads=heads, dropout=dropout, add_self_loops=True)
        self.temporal = nn.MultiheadAttention(dim, heads, batch_first=True)  # no attention dropout: keeps the fused SDPA kernel
        self.gate = nn.Linear(2 * dim, dim)
        self.drop = nn.Dropout(dropout)
        self.ff_norm = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, h: Tensor, graph: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        """h [B, T, N, D]; graph: STMGT.graph(B * T), the batched edge_index or (neighbors, mask) -> [B, T, N, D]."""
        B, T, N, D = h.shape
        x = self.norm(h)
        if self.dense_attention:
            spatial = self.spatial(x.reshape(B * T, N, D), *graph).view(B, T, N, D)
        else:
            spatial = self.spatial(x.reshape(B * T * N, D), graph).view(B, T, N, D)
        seq = x.transpose(1, 2).reshape(B * N, T, D)  # each node's own time series
        temporal = self.temporal(seq, seq, seq, need_weights=False)[0].view(B, N, T, D).transpose(1, 2)
        g = torch.sigmoid(self.gate(torch.cat([spatial, temporal], -1)))
        h = h + self.drop(g * spatial + (1 - g) * temporal)
        return h + self.drop(self.ff(self.ff_norm(h)))


class MixtureHead(nn.Module):
    """Per node and step: K Gaussian means, stds (softplus keeps them smoothly positive) and logits."""

    def __init__(self, dim: int, components: int, min_std: float):
        super().__init__()
        self.components, self.min_std = components, min_std
        self.proj = nn.Linear(dim, 3 * components)
        with torch.no_grad():  # start components spread over the normalised speed range, not on top of each other
            self.proj.bias[:components] = torch.linspace(-1, 1, components) if components > 1 else 0.0

    def forward(self, h: Tensor) -> dict[str, Tensor]:
        means, raw_std, logits = self.proj(h).float().split(self.components, -1)
        return {"means": means, "stds": F.softplus(raw_std) + self.min_std, "logits": logits}


class STMGT(nn.Module):
    def __init__(self, num_nodes: int, edge_index: Tensor, seq_len: int = 12, pred_len: int = 12, hidden_dim: int = 64,
                 num_heads: int = 4, num_blocks: int = 3, mixture_components: int = 3, dropout: float = 0.2,
                 drop_edge_p: float = 0.1, weather_dim: int = 0, min_std: float = 0.01, patch_len: int = 1,
                 residual: bool = True, use_day_of_week: bool = True, dense_attention: bool = False,
                 speed_mean: float = 0.0, speed_std: float = 1.0,
                 weather_mean: list[float] | None = None, weather_std: list[float] | None = None):
        super().__init__()
        D = hidden_dim
        self.num_nodes, self.seq_len, self.pred_len, self.drop_edge_p = num_nodes, seq_len, pred_len, drop_edge_p
        self.patch_len = patch_len  # steps per input token: graph attention cost falls by this factor
        self.residual = residual    # centre the mixture on the last observed speed: the model learns the change
        self.dense_attention = dense_attention  # graph attention over a neighbour table instead of GATv2Conv's edge list
        self.register_buffer("edge_index", edge_index.long(), persistent=False)
        # Normalisers live with the weights, so predict() needs nothing but raw inputs.
        self.register_buffer("speed_mean", torch.tensor(float(speed_mean)))
        self.register_buffer("speed_std", torch.tensor(float(speed_std)))
        self.register_buffer("weather_mean", torch.tensor(weather_mean or [0.0] * weather_dim, dtype=torch.float32))
        self.register_buffer("weather_std", torch.tensor(weather_std or [1.0] * weather_dim, dtype=torch.float32))
        # per forecast step: how much to stretch the mixture about its mean (1 = as trained; TrafficTask.calibrate fits it)
        self.register_buffer("spread_scale", torch.ones(pred_len))

        self.traffic_encoder = nn.Linear(patch_len, D)
        # attention is order-blind: without this the tokens of one hour (same hour embedding) are indistinguishable
        self.position_embedding = nn.Parameter(torch.randn(seq_len // patch_len, D) * 0.02)
        self.node_embedding = nn.Parameter(torch.randn(num_nodes, D) * 0.02)
        # small init: a category never seen in training (Los-loop's test weekdays) adds almost nothing
        self.hour_embedding = nn.Embedding(24, D)
        self.day_embedding = nn.Embedding(7, D) if use_day_of_week else None
        for table in (self.hour_embedding, self.day_embedding):
            if table is not None:
                nn.init.normal_(table.weight, std=0.02)
        self.st_blocks = nn.ModuleList(STBlock(D, num_heads, dropout, dense_attention) for _ in range(num_blocks))
        self.horizon_embedding = nn.Parameter(torch.randn(pred_len, D) * 0.02)
        self.readout_norm = nn.LayerNorm(D)
        self.readout = nn.MultiheadAttention(D, num_heads, batch_first=True)
        self.weather_encoder = nn.Linear(weather_dim, D) if weather_dim else None
        self.weather_attention = nn.MultiheadAttention(D, num_heads, batch_first=True) if weather_dim else None
        self.weather_norm = nn.LayerNorm(D) if weather_dim else None
        self.out_norm = nn.LayerNorm(D)
        self.out_ff = FeedForward(D)
        self.head = MixtureHead(D, mixture_components, min_std)
        self._graph_cache: tuple | None = None  # the batched edges or the neighbour table of edge_index

    def calendar(self, hour: Tensor, dow: Tensor) -> Tensor:
        time = self.hour_embedding(hour)  # [B, S, D]
        return time + self.day_embedding(dow) if self.day_embedding is not None else time

    def graph(self, copies: int) -> Tensor | tuple[Tensor, Tensor]:
        """The road graph for `copies` stacked copies (batch x tokens): GATv2Conv's batched edge_index, or the
        neighbour table and a mask [copies or 1, N, S] of its edges. In training DropEdge removes a fresh random
        share of the edges of every copy (never the self loops, which GATv2Conv adds after the drop)."""
        drop = self.drop_edge_p if self.training else 0.0
        if self.dense_attention:
            if self._graph_cache is None or self._graph_cache[0].device != self.edge_index.device:
                self._graph_cache = neighbor_table(self.edge_index, self.num_nodes)
            neighbors, valid = self._graph_cache
            if drop == 0:
                return neighbors, valid[None]
            kept = torch.rand(copies, *valid.shape, device=valid.device) >= drop
            kept[:, :, 0] = True
            return neighbors, valid & kept
        if self._graph_cache is None or self._graph_cache[0] != copies or self._graph_cache[1].device != self.edge_index.device:
            self._graph_cache = (copies, batched_edges(self.edge_index, self.num_nodes, copies))
        edges = self._graph_cache[1]
        return dropout_edge(edges, p=drop, training=True)[0] if drop > 0 else edges

    def forward(self, x: Tensor, hour: Tensor, dow: Tensor, weather: Tensor | None = None) -> dict[str, Tensor]:
        """x [B, N, T] normalised speed; hour/dow [B, T+P]; weather [B, T+P, W] normalised -> [B, N, P, K] each."""
        B, N, T = x.shape
        P, p, T_in = self.pred_len, self.patch_len, x.shape[-1]
        time = self.calendar(hour, dow)                                       # [B, T+P, D]
        h = self.traffic_encoder(x.view(B, N, T // p, p)).transpose(1, 2)      # [B, T/p, N, D]
        h = h + self.node_embedding + self.position_embedding[:, None, :] + time[:, p - 1:T:p, None, :]  # patch = its last step
        T = T // p
        graph = self.graph(B * T)
        for block in self.st_blocks:
            h = block(h, graph)

        memory = h.transpose(1, 2).reshape(B * N, T, -1)                       # each node's encoded past
        query = self.horizon_embedding + time[:, None, self.seq_len:, :] + self.node_embedding[None, :, None, :]  # [B, N, P, D]
        query = query.reshape(B * N, P, -1)
        q = query + self.readout(self.readout_norm(query), memory, memory, need_weights=False)[0]
        if self.weather_encoder is not None and weather is not None:
            tokens = self.weather_encoder(weather)                             # [B, T+P, D]
            # each forecast step also sees its own step's weather directly, so the cross-attention
            # does not have to discover the time alignment from few rain events
            q = q + tokens[:, None, T_in:, :].expand(B, N, P, -1).reshape(B * N, P, -1)
            q = q + self.attend_weather(q.view(B, N, P, -1), tokens + time).reshape(B * N, P, -1)
        q = q + self.out_ff(self.out_norm(q))
        out = self.head(q.view(B, N, P, -1))
        if self.residual:
            out["means"] = out["means"] + x[:, :, -1, None, None]
        return out

    def attend_weather(self, q: Tensor, tokens: Tensor) -> Tensor:
        """q [B, N, P, D] forecast queries; tokens [B, T+P, D] the window's weather (+ calendar) -> [B, N, P, D].
        Every node of a window attends to the same tokens, so this is one attention over the N * P queries of each
        window: the same as giving every node its own copy of the tokens, without projecting N copies."""
        B, N, P, D = q.shape
        out = self.weather_attention(self.weather_norm(q).view(B, N * P, D), tokens, tokens, need_weights=False)[0]
        return out.reshape(B, N, P, D)

    def calibrated(self, out: dict[str, Tensor]) -> dict[str, Tensor]:
        """forward()'s mixture with its spread scaled per forecast step (the mixture mean is unchanged)."""
        means, stds = dilate_mixture(out["means"], out["stds"], out["logits"], self.spread_scale)
        return {"means": means, "stds": stds, "logits": out["logits"]}

    @torch.no_grad()
    def predict(self, x_traffic: Tensor, edge_index: Tensor | None = None, x_weather: Tensor | None = None,
                temporal: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Raw speeds [B, N, T] (+ raw weather [B, T+P, W], temporal {"hour", "dow"} [B, T+P]) -> denormalised,
        calibrated means/stds [B, N, P, K] in the data's unit and mixture logits. `edge_index` [2, E] is the graph for
        this call only (e.g. with a road closed); the stored graph stays."""
        B, device = x_traffic.shape[0], self.speed_mean.device
        if temporal is None:
            temporal = {k: torch.zeros(B, self.seq_len + self.pred_len, dtype=torch.long, device=device) for k in ("hour", "dow")}
        stored = self.edge_index, self._graph_cache
        if edge_index is not None:
            self.edge_index, self._graph_cache = edge_index.long().to(device), None
        try:
            x = (x_traffic - self.speed_mean) / self.speed_std
            w = (x_weather - self.weather_mean) / self.weather_std if x_weather is not None and self.weather_encoder is not None else None
            out = self.calibrated(self(x, temporal["hour"], temporal["dow"], w))
        finally:
            self.edge_index, self._graph_cache = stored
        return {"means": out["means"] * self.speed_std + self.speed_mean, "stds": out["stds"] * self.speed_std,
                "logits": out["logits"]}
