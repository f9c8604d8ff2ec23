"""Baseline traffic forecasters for the STMGT comparison table, trained in the same harness and splits.

Every model takes (num_nodes, in_len, out_len, adjacency, **hyperparameters) and maps normalised speeds
x [B, N, in_len] to forecasts [B, N, out_len]. `adjacency` is a dense non-negative [N, N] weight matrix
(self loops allowed, not necessarily symmetric); matrices derived from it are non-persistent buffers, so
`.to(device)` moves them and checkpoints do not store them.

- LSTMForecaster: one LSTM shared by all nodes plus a learned node embedding; no graph.
- GraphWaveNet: Wu et al., IJCAI 2019: gated dilated TCN, diffusion + self-adaptive graph convolutions.
- ASTGCN: Guo et al., AAAI 2019 (recent component): temporal/spatial attention, Chebyshev graph convolution.
- TGCN: Zhao et al., IEEE T-ITS 2019: a GRU whose gates are graph convolutions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


# -----------------------------------------------------------------------------
# graph matrices


def transition_matrix(adjacency: Tensor) -> Tensor:
    """Random-walk transition matrix D^-1 A (rows sum to 1); a node without out-edges keeps a zero row."""
    degree = adjacency.sum(1, keepdim=True)
    return torch.where(degree > 0, adjacency / degree.clamp_min(torch.finfo(adjacency.dtype).tiny), 0.0)


def scaled_laplacian(adjacency: Tensor) -> Tensor:
    """L~ = 2 L / lambda_max - I with L = I - D^-1/2 A D^-1/2 (self loops removed); spectrum in [-1, 1].

    An asymmetric adjacency is symmetrised as (A + A^T) / 2 first: the Chebyshev expansion needs a
    symmetric Laplacian (real spectrum), and eigvalsh reads only one triangle.
    """
    a = adjacency.double()
    n = a.shape[0]
    eye = torch.eye(n, dtype=a.dtype, device=a.device)
    a = (a + a.T) / 2 * (1 - eye)
    degree = a.sum(1)
    d_inv_sqrt = torch.where(degree > 0, degree.clamp_min(torch.finfo(a.dtype).tiny).rsqrt(), 0.0)
    laplacian = eye - d_inv_sqrt[:, None] * a * d_inv_sqrt[None, :]
    lambda_max = torch.linalg.eigvalsh(laplacian).max()  # computed once, at construction
    return (2 * laplacian / lambda_max - eye).to(adjacency.dtype)


def gcn_propagation(adjacency: Tensor, self_loop: float = 1.0) -> Tensor:
    """GCN's renormalised adjacency D^-1/2 (A + sI)^T D^-1/2, D the row sums of A + sI (Kipf & Welling 2017, s = 1),
    as T-GCN's calculate_laplacian_with_self_loop computes it; the same as D^-1/2 (A + sI) D^-1/2 for a symmetric A."""
    a = adjacency + self_loop * torch.eye(adjacency.shape[0], dtype=adjacency.dtype, device=adjacency.device)
    d_inv_sqrt = a.sum(1).rsqrt()  # every row has its self loop, so no degree is 0
    return d_inv_sqrt[:, None] * a.T * d_inv_sqrt[None, :]


def chebyshev_polynomials(laplacian: Tensor, order: int) -> Tensor:
    """[order, N, N] stack T_0 = I, T_1 = L~, T_k = 2 L~ T_{k-1} - T_{k-2}."""
    polys = [torch.eye(laplacian.shape[0], dtype=laplacian.dtype, device=laplacian.device), laplacian]
    while len(polys) < order:
        polys.append(2 * laplacian @ polys[-1] - polys[-2])
    return torch.stack(polys[:order])


# -----------------------------------------------------------------------------
# LSTM


class LSTMForecaster(nn.Module):
    """LSTM (Hochreiter & Schmidhuber, "Long Short-Term Memory", Neural Computation 1997) per node.

    One LSTM is shared by all nodes (every node's series is one sequence, batch B*N); a learned node
    embedding is concatenated to the speed at every step so nodes can behave differently. The last
    hidden state goes through a linear head to all out_len steps at once. No graph: `adjacency` is ignored.
    """

    def __init__(self, num_nodes: int, in_len: int, out_len: int, adjacency: Tensor | None = None,
                 hidden_dim: int = 64, num_layers: int = 2, dropout: float = 0.1, embedding_dim: int = 16):
        super().__init__()
        self.node_embedding = nn.Embedding(num_nodes, embedding_dim)
        self.lstm = nn.LSTM(1 + embedding_dim, hidden_dim, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)  # dropout acts between stacked layers
        self.head = nn.Linear(hidden_dim, out_len)

    def forward(self, x: Tensor) -> Tensor:  # [B, N, T] -> [B, N, out_len]
        b, n, t = x.shape
        embedding = self.node_embedding.weight[None, :, None, :].expand(b, n, t, -1)
        inputs = torch.cat([x.unsqueeze(-1), embedding], dim=-1).reshape(b * n, t, -1)
        hidden, _ = self.lstm(inputs)
        return self.head(hidden[:, -1]).reshape(b, n, -1)


# -----------------------------------------------------------------------------
# Graph WaveNet


class DiffusionConv(nn.Module):
    """Diffusion graph convolution Z = W_0 X + sum_s sum_{k=1..order} W_sk (P_s^T)^k X, one linear map over the concat.

    P_s is row-stochastic; a step moves each node's value along its out-edges (h_w <- sum_v P[v, w] h_v), as the
    reference code (and DCRNN's) does, although the paper's equation writes P^k X.
    """

    def __init__(self, c_in: int, c_out: int, num_supports: int, order: int, dropout: float):
        super().__init__()
        self.order = order
        self.mlp = nn.Linear((order * num_supports + 1) * c_in, c_out)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, supports: list[Tensor]) -> Tensor:  # x [N, B, T, C]
        out = [x]
        for a in supports:
            h = x
            for _ in range(self.order):
                # one diffusion step h_w <- sum_v P[v, w] h_v, i.e. P^T h, as the reference's einsum 'ncvl,vw->ncwl'
                h = (a.T @ h.flatten(1)).view_as(x)
                out.append(h)
        return self.dropout(self.mlp(torch.cat(out, dim=-1)))


class GraphWaveNet(nn.Module):
    """Graph WaveNet: Wu, Pan, Long, Jiang, Zhang, "Graph WaveNet for Deep Spatial-Temporal Graph Modeling", IJCAI 2019.

    Follows the reference implementation (github.com/nnzhan/Graph-WaveNet, model.py): a 1x1 start conv on
    the input left-padded to the receptive field; per layer a gated dilated causal conv (tanh * sigmoid,
    dilations 1, 2, ... within each block), a 1x1 skip conv summed over layers, an order-2 diffusion
    convolution over the forward and backward transition matrices D_o^-1 A, D_i^-1 A^T and the
    self-adaptive adjacency softmax(relu(E1 E2)), a residual connection and batch norm; then
    relu -> 1x1 conv -> relu -> 1x1 conv to out_len channels, read at the last time step.

    Activations are laid out [N, B, T, C] (channels last, nodes first), so every 1x1 conv is an nn.Linear,
    a dilated conv is an nn.Linear over the kernel_size time-shifted slices, and a diffusion step is one
    [N, N] @ [N, B*T*C] GEMM: the same function as the reference's Conv2d/einsum code with fewer layout copies.
    """

    def __init__(self, num_nodes: int, in_len: int, out_len: int, adjacency: Tensor | None,
                 residual_channels: int = 32, dilation_channels: int = 32, skip_channels: int = 256,
                 end_channels: int = 512, blocks: int = 4, layers: int = 2, kernel_size: int = 2,
                 dropout: float = 0.3, adaptive: bool = True, embedding_dim: int = 10):
        super().__init__()
        if adjacency is None and not adaptive:
            raise ValueError("GraphWaveNet needs an adjacency, adaptive=True, or both")
        supports = torch.zeros(0, num_nodes, num_nodes)
        if adjacency is not None:
            adjacency = adjacency.float()
            supports = torch.stack([transition_matrix(adjacency), transition_matrix(adjacency.T)])
        self.register_buffer("supports", supports, persistent=False)
        self.adaptive = adaptive
        if adaptive:  # source/target node embeddings of the self-adaptive adjacency, N(0, 1) as in the reference
            self.nodevec1 = nn.Parameter(torch.randn(num_nodes, embedding_dim))
            self.nodevec2 = nn.Parameter(torch.randn(embedding_dim, num_nodes))
        num_supports = len(supports) + int(adaptive)

        self.kernel_size = kernel_size
        self.dilations = [2**i for _ in range(blocks) for i in range(layers)]
        self.receptive_field = 1 + (kernel_size - 1) * sum(self.dilations)
        self.start_conv = nn.Linear(1, residual_channels)
        # filter and gate convs of a layer fused into one map: [..., kernel_size * C_res] -> [..., 2 * C_dil]
        self.gated_convs = nn.ModuleList(nn.Linear(kernel_size * residual_channels, 2 * dilation_channels)
                                         for _ in self.dilations)
        self.skip_convs = nn.ModuleList(nn.Linear(dilation_channels, skip_channels) for _ in self.dilations)
        # the reference gives the last layer a graph conv and batch norm too, but the output reads only the
        # skips (taken before them), so they would be dead parameters: same function without them
        self.graph_convs = nn.ModuleList(DiffusionConv(dilation_channels, residual_channels, num_supports, 2, dropout)
                                         for _ in self.dilations[:-1])
        self.norms = nn.ModuleList(nn.BatchNorm1d(residual_channels) for _ in self.dilations[:-1])
        self.end_conv_1 = nn.Linear(skip_channels, end_channels)
        self.end_conv_2 = nn.Linear(end_channels, out_len)

    def adaptive_adjacency(self) -> Tensor:
        """Self-adaptive adjacency softmax(relu(E1 E2)): learned, row-stochastic."""
        return F.softmax(F.relu(self.nodevec1 @ self.nodevec2), dim=1)

    def forward(self, x: Tensor) -> Tensor:  # [B, N, T] -> [B, N, out_len]
        x = x.transpose(0, 1).unsqueeze(-1)  # [N, B, T, 1]: one input channel (speed)
        x = F.pad(x, (0, 0, max(self.receptive_field - x.shape[2], 0), 0))  # left pad: the TCN ends at length >= 1
        x = self.start_conv(x)
        supports = list(self.supports) + ([self.adaptive_adjacency()] if self.adaptive else [])
        skip = 0
        for i, d in enumerate(self.dilations):
            residual = x
            length = x.shape[2] - (self.kernel_size - 1) * d  # a valid (unpadded) dilated conv shortens time by (k-1)d
            taps = torch.cat([x[:, :, j * d:j * d + length] for j in range(self.kernel_size)], dim=-1)
            filt, gate = self.gated_convs[i](taps).chunk(2, dim=-1)
            x = torch.tanh(filt) * torch.sigmoid(gate)
            # the reference crops each skip to the final length; the forecast is read at the last step only,
            # so only that step of each skip is computed
            skip = skip + self.skip_convs[i](x[:, :, -1])
            if i == len(self.dilations) - 1:
                break
            x = self.graph_convs[i](x, supports) + residual[:, :, -length:]
            x = self.norms[i](x.reshape(-1, x.shape[-1])).view_as(x)  # batch statistics over nodes, batch and time
        x = F.relu(self.end_conv_1(F.relu(skip)))
        return self.end_conv_2(x).transpose(0, 1)  # [N, B, out_len] -> [B, N, out_len]


# -----------------------------------------------------------------------------
# ASTGCN


class TemporalAttention(nn.Module):
    """E = softmax(V_e sigmoid(((X^T U_1) U_2)(U_3 X) + b_e)) normalised over dim 1: [B, T, T] weights between steps."""

    def __init__(self, channels: int, num_nodes: int, steps: int):
        super().__init__()
        self.U1 = nn.Parameter(torch.empty(num_nodes))
        self.U2 = nn.Parameter(torch.empty(channels, num_nodes))
        self.U3 = nn.Parameter(torch.empty(channels))
        self.be = nn.Parameter(torch.empty(1, steps, steps))
        self.Ve = nn.Parameter(torch.empty(steps, steps))

    def forward(self, x: Tensor) -> Tensor:  # [B, N, F, T] -> [B, T, T]
        lhs = (x.permute(0, 3, 2, 1) @ self.U1) @ self.U2  # [B, T, F, N] -> [B, T, F] -> [B, T, N]
        rhs = self.U3 @ x  # [B, N, T]
        return F.softmax(self.Ve @ torch.sigmoid(lhs @ rhs + self.be), dim=1)


class SpatialAttention(nn.Module):
    """S = softmax(V_s sigmoid(((X W_1) W_2)(W_3 X)^T + b_s)) normalised over dim 1: [B, N, N] weights between nodes."""

    def __init__(self, channels: int, num_nodes: int, steps: int):
        super().__init__()
        self.W1 = nn.Parameter(torch.empty(steps))
        self.W2 = nn.Parameter(torch.empty(channels, steps))
        self.W3 = nn.Parameter(torch.empty(channels))
        self.bs = nn.Parameter(torch.empty(1, num_nodes, num_nodes))
        self.Vs = nn.Parameter(torch.empty(num_nodes, num_nodes))

    def forward(self, x: Tensor) -> Tensor:  # [B, N, F, T] -> [B, N, N]
        lhs = (x @ self.W1) @ self.W2  # [B, N, F] -> [B, N, T]
        rhs = (self.W3 @ x).transpose(-1, -2)  # [B, T, N]
        return F.softmax(self.Vs @ torch.sigmoid(lhs @ rhs + self.bs), dim=1)


class ChebConvWithAttention(nn.Module):
    """relu(sum_k ((T_k * S)^T X) Theta_k) per time step: Chebyshev graph conv modulated by spatial attention S."""

    def __init__(self, polynomials: Tensor, c_in: int, c_out: int):
        super().__init__()
        self.register_buffer("polynomials", polynomials, persistent=False)  # [K, N, N]
        self.theta = nn.Parameter(torch.empty(len(polynomials), c_in, c_out))

    def forward(self, x: Tensor, attention: Tensor) -> Tensor:  # x [B, N, F, T], attention [B, N, N]
        polys = self.polynomials.unsqueeze(1) * attention.unsqueeze(0)  # [K, B, N, N]
        # the reference multiplies by (T_k * S)^T: S is softmax-normalised over dim 1, so the rows of the transpose sum to 1
        h = torch.einsum("kbnm,bnft->kbmft", polys, x)
        return F.relu(torch.einsum("kbmft,kfo->bmot", h, self.theta))  # [B, N, F_out, T]


class ASTGCNBlock(nn.Module):
    def __init__(self, polynomials: Tensor, c_in: int, num_nodes: int, steps: int, nb_chev_filter: int,
                 nb_time_filter: int, time_strides: int):
        super().__init__()
        self.temporal_attention = TemporalAttention(c_in, num_nodes, steps)
        self.spatial_attention = SpatialAttention(c_in, num_nodes, steps)
        self.cheb_conv = ChebConvWithAttention(polynomials, c_in, nb_chev_filter)
        self.time_conv = nn.Conv2d(nb_chev_filter, nb_time_filter, (1, 3), stride=(1, time_strides), padding=(0, 1))
        self.residual_conv = nn.Conv2d(c_in, nb_time_filter, (1, 1), stride=(1, time_strides))
        self.ln = nn.LayerNorm(nb_time_filter)

    def forward(self, x: Tensor) -> Tensor:  # [B, N, F, T] -> [B, N, F', T']
        b, n, f, t = x.shape
        x_tat = (x.reshape(b, -1, t) @ self.temporal_attention(x)).reshape(b, n, f, t)
        spatial = self.spatial_attention(x_tat)  # attention weights from the time-attended input...
        g = self.cheb_conv(x, spatial)  # ...applied to the raw input, as in the reference
        g = self.time_conv(g.permute(0, 2, 1, 3))  # [B, F', N, T']
        residual = self.residual_conv(x.permute(0, 2, 1, 3))
        return self.ln(F.relu(residual + g).permute(0, 3, 2, 1)).permute(0, 2, 3, 1)  # layer norm over channels


class ASTGCN(nn.Module):
    """ASTGCN: Guo, Lin, Feng, Song, Wan, "Attention Based Spatial-Temporal Graph Convolutional Networks for
    Traffic Flow Forecasting", AAAI 2019; the recent component only (no daily/weekly-periodic branches).

    Follows the reference implementation (github.com/guoshnBJTU/ASTGCN-r-pytorch): nb_block blocks of temporal
    attention, spatial attention, an order-K Chebyshev graph conv on the scaled normalised Laplacian modulated by
    the spatial attention, a (1, 3) temporal conv, a residual 1x1 conv and layer norm; a final conv maps
    (time, channels) of each node to out_len. Initialisation as the reference (Xavier uniform for every parameter
    with more than one dimension, U(0, 1) for the rest) except for the attention vectors U1, U3, W1, W3.
    """

    def __init__(self, num_nodes: int, in_len: int, out_len: int, adjacency: Tensor, nb_block: int = 2,
                 cheb_k: int = 3, nb_chev_filter: int = 64, nb_time_filter: int = 64, time_strides: int = 1):
        super().__init__()
        if adjacency is None:
            raise ValueError("ASTGCN needs an adjacency (its Chebyshev graph convolution is built on the Laplacian)")
        polynomials = chebyshev_polynomials(scaled_laplacian(adjacency.float()), cheb_k)
        blocks, c_in, steps = [], 1, in_len
        for i in range(nb_block):
            stride = time_strides if i == 0 else 1  # only the first block strides in time
            blocks.append(ASTGCNBlock(polynomials, c_in, num_nodes, steps, nb_chev_filter, nb_time_filter, stride))
            c_in, steps = nb_time_filter, (steps - 1) // stride + 1
        self.blocks = nn.ModuleList(blocks)
        self.final_conv = nn.Conv2d(steps, out_len, kernel_size=(1, nb_time_filter))
        for p in self.parameters():  # the reference's initialisation...
            nn.init.xavier_uniform_(p) if p.dim() > 1 else nn.init.uniform_(p)
        for block in self.blocks:
            for k in range(cheb_k):  # ...which holds one [c_in, c_out] Theta_k per k, so Xavier fans are per k
                nn.init.xavier_uniform_(block.cheb_conv.theta[k])
            # ...except the attention vectors: zero-mean and fan-scaled, not U(0, 1). All-positive weights make the
            # scores sum coherently over nodes and channels; the second block's sigmoids then saturate (|z| ~ 1e4 at
            # N = 207), freezing its attention at a constant that gets no gradient
            for v in (block.temporal_attention.U1, block.temporal_attention.U3,
                      block.spatial_attention.W1, block.spatial_attention.W3):
                nn.init.uniform_(v, -len(v) ** -0.5, len(v) ** -0.5)

    def forward(self, x: Tensor) -> Tensor:  # [B, N, T] -> [B, N, out_len]
        x = x.unsqueeze(2)  # [B, N, 1, T]: one input channel (speed)
        for block in self.blocks:
            x = block(x)
        return self.final_conv(x.permute(0, 3, 1, 2))[..., -1].transpose(1, 2)  # [B, T', N, F] -> [B, out_len, N]


# -----------------------------------------------------------------------------
# T-GCN


class TGCNGraphConv(nn.Module):
    """A_hat [x, h] W + b: one GCN layer over the concatenated input speed and GRU state of every node."""

    def __init__(self, hidden_dim: int, out_dim: int, bias: float):
        super().__init__()
        self.linear = nn.Linear(hidden_dim + 1, out_dim)
        nn.init.xavier_uniform_(self.linear.weight)
        nn.init.constant_(self.linear.bias, bias)

    def forward(self, propagation: Tensor, x: Tensor, h: Tensor) -> Tensor:  # [N, N], [B, N], [B, N, H] -> [B, N, out]
        xh = torch.cat([x.unsqueeze(-1), h], dim=-1)                  # [B, N, H + 1]
        # propagate first (A_hat is N x N, the concat only H + 1 wide), then the per-node linear map
        return self.linear(torch.einsum("nm,bmc->bnc", propagation, xh))


class TGCN(nn.Module):
    """T-GCN: Zhao, Song, Zhang, Liu, Wang, Lin, Deng, Li, "T-GCN: A Temporal Graph Convolutional Network for
    Traffic Prediction", IEEE T-ITS 2019.

    Follows the reference implementation (github.com/lehaifeng/T-GCN, T-GCN-PyTorch models/tgcn.py and
    tasks/supervised.py): a GRU over the input steps whose gates and candidate are GCN layers over the
    renormalised adjacency,
        [r, u] = sigmoid(A_hat [x_t, h] W_g + b_g)     (gate biases start at 1)
        c      = tanh(A_hat [x_t, r * h] W_c + b_c)
        h      = u * h + (1 - u) * c,
    then one linear regressor maps each node's last state to all out_len steps.

    Both reference implementations (TensorFlow and PyTorch) split the gate output in two halves of its
    flattened [N * 2H] form, not per node: r holds the 2H gate outputs of nodes 0..N/2-1, u those of nodes
    N/2..N-1, each read back as N rows of H. The paper's equations describe per-node gates; kiln keeps the
    code's layout, which produced the published figures.
    """

    def __init__(self, num_nodes: int, in_len: int, out_len: int, adjacency: Tensor, hidden_dim: int = 64,
                 self_loop: float = 1.0):
        super().__init__()
        if adjacency is None:
            raise ValueError("TGCN needs an adjacency (its gates are graph convolutions)")
        self.hidden_dim = hidden_dim
        # kiln's graphs carry no self loops; T-GCN adds I to a file adjacency that may have its own (Los-loop's
        # diagonal is 1, so the reference propagates over A + 2I: self_loop 2 reproduces that)
        self.register_buffer("propagation", gcn_propagation(adjacency.float(), self_loop), persistent=False)
        self.gates = TGCNGraphConv(hidden_dim, 2 * hidden_dim, bias=1.0)
        self.candidate = TGCNGraphConv(hidden_dim, hidden_dim, bias=0.0)
        self.regressor = nn.Linear(hidden_dim, out_len)

    def forward(self, x: Tensor) -> Tensor:  # [B, N, T] -> [B, N, out_len]
        b, n, t = x.shape
        h = x.new_zeros(b, n, self.hidden_dim)
        for step in range(t):
            x_t = x[:, :, step]
            gates = torch.sigmoid(self.gates(self.propagation, x_t, h))       # [B, N, 2H]
            r, u = gates.reshape(b, 2, n, self.hidden_dim).unbind(1)          # halves of the flat [B, N * 2H]
            c = torch.tanh(self.candidate(self.propagation, x_t, r * h))
            h = u * h + (1 - u) * c
        return self.regressor(h)


BASELINES = {"lstm": LSTMForecaster, "graphwavenet": GraphWaveNet, "astgcn": ASTGCN, "tgcn": TGCN}
