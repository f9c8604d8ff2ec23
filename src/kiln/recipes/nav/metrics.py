"""How good a policy's action logits are: the negative log-likelihood of the optimal set (also the training loss),
per-cell hits, and greedy rollouts from the start to the goal."""

from __future__ import annotations

import torch
from torch import Tensor

from kiln.recipes.nav.grid import ACTION_DELTAS, STAY


def optimal_set_nll(logits: Tensor, optimal: Tensor) -> Tensor:
    """-log P(optimal set) = -log sum_{a optimal} softmax(logits)_a, averaged over reachable cells."""
    reachable = optimal.any(-1)
    log_p = logits[reachable].float().log_softmax(-1)
    return -log_p.masked_fill(~optimal[reachable], float("-inf")).logsumexp(-1).mean()


def optimal_hits(logits: Tensor, optimal: Tensor) -> Tensor:
    """Per cell: is the argmax action in the optimal set? [B, T] bool (False off reachable cells)."""
    return optimal.gather(-1, logits.argmax(-1, keepdim=True)).squeeze(-1)


def greedy_rollout(actions: Tensor, walls: Tensor, starts: Tensor, goals: Tensor, max_steps: int,
                   record: bool = False) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Follow the policy's argmax action from each start, all grids at once.

    actions [B, G, G] (greedy action per cell), walls [B, G, G] bool, starts/goals [B, 2].
    A move into a wall or off the grid leaves the agent in place. Returns (reached goal [B],
    moves made [B], positions per step if `record`). The policy is deterministic, so an agent that
    does not move is stuck for good and the walk ends once no agent moves.
    """
    bounds = torch.tensor(walls.shape[-2:], device=starts.device)  # maps need not be square
    rows = torch.arange(len(starts), device=starts.device)
    deltas = torch.as_tensor(ACTION_DELTAS, device=starts.device)
    pos, moves = starts.clone(), torch.zeros(len(starts), dtype=torch.long, device=starts.device)
    done = (pos == goals).all(-1)
    trail = [pos.clone()] if record else []
    for _ in range(max_steps):
        action = actions[rows, pos[:, 0], pos[:, 1]]
        target = pos + deltas[action]
        inside = ((target >= 0) & (target < bounds)).all(-1)
        target = torch.minimum(target.clamp(min=0), bounds - 1)
        moved = ~done & inside & ~walls[rows, target[:, 0], target[:, 1]] & (action != STAY)
        if not moved.any():
            break
        pos = torch.where(moved[:, None], target, pos)
        moves += moved
        done |= (pos == goals).all(-1)
        if record:
            trail.append(pos.clone())
    return done, moves, trail


def rollout_metrics(logits: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """rollout_success (goal reached within 4 x cells moves) and rollout_optimality (BFS length / moves)."""
    cells = batch["cells"]
    height, width = cells.shape[-2:]
    actions = logits.argmax(-1).view(-1, height, width)
    reached, moves, _ = greedy_rollout(actions, cells == 1, batch["starts"], batch["goals"], 4 * height * width)
    shortest = batch["dist"][torch.arange(len(cells)), batch["starts"][:, 0], batch["starts"][:, 1]].float()
    optimality = (shortest / moves.clamp(min=1))[reached]
    return {"success": reached.float(), "optimality": optimality}

