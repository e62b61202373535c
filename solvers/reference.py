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
    schedule = model.schedule
    alpha_start, alpha_end = float(schedule.alpha(t_start)), float(schedule.alpha(t_end))

    def rhs(lam: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = float(schedule.t_of_lambda(lam.to(torch.float64)))
        return -math.exp(-float(lam)) * model.eps(float(schedule.alpha(t)) * y, t)

    lams = torch.tensor([float(schedule.lambda_(t_start)), float(schedule.lambda_(t_end))], dtype=x.dtype, device=x.device)
    y_end = torchdiffeq.odeint(rhs, x / alpha_start, lams, rtol=rtol, atol=atol, method=method)[-1]
    return alpha_end * y_end
