"""The dynamic programme of GITS (Geometry-Inspired Time Scheduling, Chen et al. 2024, arXiv:2405.11326): the coarse grid of exactly n steps
through a fine candidate grid whose summed step costs are least.

Candidates are indexed 0 (t_max) to M (t_min); ``costs[j, k]`` (j < k) is the cost of one step from candidate j to
candidate k, inf where a step is not admissible. The programme keeps, for every candidate k and number of steps m,
the cheapest way to reach k from 0 in m steps: O(n M^2) additions.
"""
from __future__ import annotations

import torch


def cheapest_path(costs: torch.Tensor, steps: int) -> tuple[list[int], float]:
    """(candidate indices 0 = i_0 < i_1 < ... < i_steps = M, their summed cost) minimising the sum of
    ``costs[i_m, i_m+1]``; a ValueError when no path of ``steps`` admissible steps exists."""
    last = costs.shape[0] - 1
    if costs.shape != (last + 1, last + 1):
        raise ValueError(f"costs must be square (M + 1 candidates), got shape {tuple(costs.shape)}")
    if not 1 <= steps <= last:
        raise ValueError(f"{steps} steps cannot be taken through {last + 1} candidates (need 1 <= steps <= {last})")
    upper = torch.triu(torch.ones_like(costs, dtype=torch.bool), diagonal=1)
    step_cost = torch.where(upper, costs.double(), torch.full_like(costs, float("inf"), dtype=torch.float64))
    best = torch.full((last + 1,), float("inf"), dtype=torch.float64)
    best[0] = 0.0
    came_from = []
    for _ in range(steps):
        through = best[:, None] + step_cost  # through[j, k]: reach j in m - 1 steps, then step to k
        best, previous = through.min(dim=0)
        came_from.append(previous)
    if not torch.isfinite(best[last]):
        raise ValueError(f"no path of {steps} admissible steps reaches the last candidate")
    path = [last]
    for previous in reversed(came_from):
        path.append(int(previous[path[-1]]))
    return path[::-1], float(best[last])
