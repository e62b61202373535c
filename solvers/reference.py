"""High-accuracy reference solutions of the probability-flow ODE, the ground truth for solver errors.

The ODE is solved in its exponential-integrator form: with y = x / alpha and lambda = log(alpha/sigma),
dy/dlambda = -exp(-lambda) eps(alpha y, t(lambda)) (Lu et al. 2022, arXiv:2206.00927, eq. 3.5
rearranged). Its right-hand side is much smoother in lambda than the drift is in t, so torchdiffeq's
adaptive dopri5 reaches 1e-10 in a few thousand evaluations. A formulation different from every
fixed-step solver's keeps the reference independent of the code it checks.
"""
from __future__ import annotations

import math

import torch
import torchdiffeq

from solvers.model import DiffusionModel


def reference_solve(model: DiffusionModel, x: torch.Tensor, t_start: float, t_end: float, *,
                    rtol: float = 1e-10, atol: float = 1e-10, method: str = "dopri5") -> torch.Tensor:
    """The probability-flow ODE solution at ``t_end`` from x at ``t_start``, to ~rtol."""
    return reference_trajectory(model, x, [t_start, t_end], rtol=rtol, atol=atol, method=method)[-1]


def reference_trajectory(model: DiffusionModel, x: torch.Tensor, times, *, rtol: float = 1e-10, atol: float = 1e-10,
                         method: str = "dopri5") -> torch.Tensor:
    """The probability-flow ODE solution from x at ``times[0]`` at every one of ``times`` (decreasing), stacked:
    shape (len(times), *x.shape), the first x itself. One adaptive solve; the states between its own steps come
    from dopri5's dense output (4th-order interpolation, within the tolerance)."""
    schedule = model.schedule
    times = [float(t) for t in times]
    alphas = torch.tensor([float(schedule.alpha(t)) for t in times], dtype=x.dtype, device=x.device)

    def rhs(lam: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = float(schedule.t_of_lambda(lam.to(torch.float64)))
        return -math.exp(-float(lam)) * model.eps(float(schedule.alpha(t)) * y, t)

    lams = torch.tensor([float(schedule.lambda_(t)) for t in times], dtype=x.dtype, device=x.device)
    ys = torchdiffeq.odeint(rhs, x / alphas[0], lams, rtol=rtol, atol=atol, method=method)
    return alphas.reshape(-1, *([1] * x.ndim)) * ys
