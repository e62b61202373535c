"""Helpers shared by the tests (a plain module: torch-fidelity's wheel ships a top-level `tests` package,
so test modules import this as `support`, never as `tests.something`)."""
from __future__ import annotations

import numpy as np
import torch


def fitted_slope(ns, errors) -> float:
    """The empirical order: minus the least-squares slope of log error against log n."""
    return float(-np.polyfit(np.log(ns), np.log(errors), 1)[0])


def prior_sample(schedule, n: int, dim: int, seed: int = 0) -> torch.Tensor:
    """x_T ~ N(0, sigma_{t_max}^2 I) (alpha_{t_max} is ~0 on VP schedules, 1 on VE), float64."""
    g = torch.Generator().manual_seed(seed)
    scale = float(schedule.sigma(schedule.t_max))
    return scale * torch.randn(n, dim, generator=g, dtype=torch.float64)
