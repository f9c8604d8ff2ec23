"""Grid-navigation policies that read a whole grid and predict the action at EVERY cell at once.

Input: cell codes [B, G, G] (0 free, 1 wall, 2 goal). Output: action logits [B, G*G, 5] in the
order up, down, left, right, stay. One forward pass is the whole policy for that goal, so a
rollout is a table walk, not one network call per step.

- GridMixer: MLP-Mixer (Tolstikhin et al., 2021); `recursions > 1` applies the same blocks again
  with tied weights, which suits a target (BFS distances) that is itself an iterated local rule.
- TinyRecursiveMixer: TRM ("Less is More: Recursive Reasoning with Tiny Networks", Jolicoeur-
  Martineau, 2025): one tiny network refines a latent z and an answer y, with deep supervision.
- RecurrentConvPolicy: a weight-tied recurrent convolutional network with no size in its weights
  (value-iteration networks, Tamar et al. 2016; "deep thinking" networks, Schwarzschild et al. 2021
  and Bansal et al. 2022). It is trained on small grids and run for more iterations on larger ones.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kiln.recipes.nav.grid import bfs_distance_field

CELL_CODES = 3  # free, wall, goal
NUM_ACTIONS = 5


class MixerBlock(nn.Module):
    """Token mixing (across cells) then channel mixing (within a cell), each pre-norm and residual.

    Dropout acts on each branch's output only: on CPU its random mask costs as much as the
    matmuls, and the hidden layers are 2-4x wider than the branch outputs.
    """

    def __init__(self, tokens: int, dim: int, token_hidden: int, channel_hidden: int, dropout: float):
        super().__init__()
        self.token_norm = nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(
            nn.Linear(tokens, token_hidden), nn.GELU(), nn.Linear(token_hidden, tokens), nn.Dropout(dropout)
        )
        self.channel_norm = nn.LayerNorm(dim)
        self.channel_mlp = nn.Sequential(
            nn.Linear(dim, channel_hidden), nn.GELU(), nn.Linear(channel_hidden, dim), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:  # [B, T, D]
        x = x + self.token_mlp(self.token_norm(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.channel_norm(x))


class GridEncoder(nn.Module):
    """Cell code embedding plus a learned embedding per grid position."""

    def __init__(self, grid_size: int, dim: int):
        super().__init__()
        self.cells = nn.Embedding(CELL_CODES, dim)
        self.position = nn.Parameter(torch.randn(1, grid_size * grid_size, dim) * 0.02)

    def forward(self, cells: Tensor) -> Tensor:  # [B, G, G] -> [B, G*G, D]
        return self.cells(cells.flatten(1).long()) + self.position


class GridMixer(nn.Module):
    def __init__(self, grid_size: int, dim: int, depth: int, dropout: float, token_hidden: int, channel_mult: int, recursions: int = 1):
        super().__init__()
        tokens = grid_size * grid_size
        self.recursions = recursions
        self.encoder = GridEncoder(grid_size, dim)
        self.blocks = nn.ModuleList(MixerBlock(tokens, dim, token_hidden, channel_mult * dim, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, NUM_ACTIONS)

    def forward(self, cells: Tensor) -> list[Tensor]:
        x = self.encoder(cells)
        for _ in range(self.recursions):  # tied weights: the same blocks, applied again
            for block in self.blocks:
                x = block(x)
        return [self.head(self.norm(x))]


class TinyRecursiveMixer(nn.Module):
    """TRM with a mixer as its one tiny network.

    Per supervision step: T cycles (the first T-1 without gradients) of n latent updates
    z <- net(x + y + z) followed by one answer update y <- net(y + z). Each supervision step
    emits logits and carries (y, z) on detached, so every step is trained on its own loss.
    """

    def __init__(self, grid_size: int, dim: int, depth: int, dropout: float, token_hidden: int, channel_mult: int,
                 recursions: int, cycles: int, supervision_steps: int):
        super().__init__()
        tokens = grid_size * grid_size
        self.n, self.cycles, self.supervision_steps = recursions, cycles, supervision_steps
        self.encoder = GridEncoder(grid_size, dim)
        # post-norm, as in TRM: the residual stream is fed back in sums (x + y + z), and without a
        # norm after each application its scale compounds with every recursion
        self.net = nn.Sequential(*(MixerBlock(tokens, dim, token_hidden, channel_mult * dim, dropout) for _ in range(depth)),
                                 nn.LayerNorm(dim))
        self.y_init = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.z_init = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, NUM_ACTIONS)

    def cycle(self, x: Tensor, y: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        for _ in range(self.n):
            z = self.net(x + y + z)
        return self.net(y + z), z

    def forward(self, cells: Tensor) -> list[Tensor]:
        x = self.encoder(cells)
        y, z = self.y_init.expand_as(x), self.z_init.expand_as(x)
        outputs = []
        for _ in range(self.supervision_steps):
            with torch.no_grad():
                for _ in range(self.cycles - 1):
                    y, z = self.cycle(x, y, z)
            y, z = self.cycle(x, y, z)
            outputs.append(self.head(self.norm(y)))
            y, z = y.detach(), z.detach()
        return outputs


class RecurrentConvPolicy(nn.Module):
    """One convolutional cell applied again and again; every iteration re-reads the grid ("recall").

    State h [B, C, H, W] starts at zero. An iteration sees each cell's 3x3 neighbourhood of h plus the
    grid itself and makes a gated update (a convolutional GRU without reset gate), so a cell can hold its
    state once it has settled. One 3x3 convolution per iteration moves information by one cell, the speed
    of a BFS wavefront: trained with the BFS trace (task.py), iteration t's `reached` head marks the cells
    within t - 1 steps of the goal, and the action head gives, at each reached cell, a move towards it.
    Nothing depends on the grid's size, so a map needs only as many iterations as its wave is long: at
    inference each map runs its goal's BFS eccentricity + 2 iterations (`iteration_counts`), or a fixed
    `iterations`.
    """

    def __init__(self, dim: int, hidden: int, iterations: int | None = None):
        super().__init__()
        self.dim, self.iterations = dim, iterations
        self.recall = nn.Conv2d(CELL_CODES, hidden, 3, padding=1)  # the grid, re-read every iteration
        self.mix = nn.Conv2d(dim, hidden, 3, padding=1, bias=False)
        self.update = nn.Conv2d(hidden, 2 * dim, 1)  # gate and candidate
        self.reached_head = nn.Conv2d(dim, 1, 1)
        self.action_head = nn.Conv2d(dim, NUM_ACTIONS, 1)
        self.last_iterations = 0  # iterations the last inference call ran

    def read(self, cells: Tensor) -> tuple[Tensor, Tensor]:
        """Cell codes [B, H, W] -> (the recall term [B, hidden, H, W], the initial state [B, C, H, W])."""
        one_hot = F.one_hot(cells.long(), CELL_CODES).permute(0, 3, 1, 2).to(self.recall.weight.dtype)
        recall = self.recall(one_hot)  # zero padding: off the map reads as "no cell", unlike any code
        return recall, recall.new_zeros(cells.shape[0], self.dim, *cells.shape[1:])

    def step(self, h: Tensor, recall: Tensor) -> Tensor:
        gate, candidate = self.update(torch.relu(recall + self.mix(h))).chunk(2, dim=1)
        return h + torch.sigmoid(gate) * (torch.tanh(candidate) - h)

    def reached(self, h: Tensor) -> Tensor:  # [B, C, H, W] -> logits [B, H, W]
        return self.reached_head(h)[:, 0]

    def actions(self, h: Tensor) -> Tensor:  # [B, C, H, W] -> logits [B, H*W, 5]
        return self.action_head(h).flatten(2).transpose(1, 2)

    def forward(self, cells: Tensor) -> list[Tensor]:
        recall, h = self.read(cells)
        limits = self.iteration_counts(cells)
        for t in range(1, int(limits.max()) + 1):
            # a map whose count is spent holds its state while the rest of the batch goes on
            h = torch.where((t <= limits)[:, None, None, None], self.step(h, recall), h)
        self.last_iterations = int(limits.max())  # what the slowest map of the batch needed
        return [self.actions(h)]

    def iteration_counts(self, cells: Tensor) -> Tensor:
        """Iterations per map [B]: `iterations` if set, else the length of the goal's BFS wave + 1.

        The wave reaches the farthest cell at iteration eccentricity + 1; one more is a margin. Learned stopping
        signals were tried and failed (docs/nav.md): the state never settles after the wave, and on 64x64 mazes
        the reached head runs ahead of it.
        """
        if self.iterations is not None:
            return torch.full((cells.shape[0],), self.iterations, device=cells.device)
        codes = cells.cpu().numpy()
        goals = np.argwhere(codes == 2)
        if len(goals) != len(codes) or (goals[:, 0] != np.arange(len(codes))).any():
            raise ValueError("every map needs exactly one goal cell (code 2)")
        eccentricity = bfs_distance_field((codes == 1).astype(np.uint8), goals[:, 1:]).reshape(len(codes), -1).max(1)
        return torch.as_tensor(eccentricity.astype(np.int64) + 2, device=cells.device)


def build_model(model_cfg, grid_size: int) -> nn.Module:
    """The policy a config's model: section names (config.MixerModel, TrmModel or RecurrentModel)."""
    if model_cfg.arch == "recurrent":
        return RecurrentConvPolicy(model_cfg.dim, model_cfg.channel_mult * model_cfg.dim, model_cfg.iterations)
    mixer = dict(grid_size=grid_size, dim=model_cfg.dim, depth=model_cfg.depth, dropout=model_cfg.dropout,
                 token_hidden=model_cfg.token_hidden, channel_mult=model_cfg.channel_mult, recursions=model_cfg.recursions)
    if model_cfg.arch == "trm":
        return TinyRecursiveMixer(**mixer, cycles=model_cfg.cycles, supervision_steps=model_cfg.supervision_steps)
    return GridMixer(**mixer)
