"""Explicit Runge-Kutta solvers in t on the eta family of DESIGN.md.

dx = [f x - (1 + eta^2)/2 g^2 score] dt + eta g dw_bar; eta = 0 is the probability-flow ODE
(Song et al. 2021, arXiv:2011.13456, eq. 13). Times run backwards, so every dt is negative.
"""
from __future__ import annotations

import math

import torch


def euler_maruyama_step(model, x: torch.Tensor, t: float, s: float, eta: float, noise) -> torch.Tensor:
    """One Euler(-Maruyama) step of the eta family from t to s: x + drift dt + eta g(t) sqrt(|dt|) z."""
    dt = s - t
    x = x + model.drift(x, t, eta) * dt
    if eta > 0:
        x = x + eta * math.sqrt(float(model.schedule.g2(t)) * -dt) * noise(t, s, x)
    return x


def euler_step(model, x: torch.Tensor, t: float, s: float) -> torch.Tensor:
    """One Euler step from t to s on the probability-flow ODE (the eta = 0 member of the family)."""
    return euler_maruyama_step(model, x, t, s, 0.0, None)


def euler(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise) -> torch.Tensor:
    """Euler (eta = 0) or Euler-Maruyama (eta > 0) on the eta family.

    Song et al. 2021 (arXiv:2011.13456) eq. 6 discretised by Euler-Maruyama (Kloeden & Platen 1992,
    eq. 9.1.1): x <- x + drift dt + eta g(t) sqrt(|dt|) z. Order 1 (strong order 1 for the additive
    noise here), 1 NFE per step. eta is DESIGN.md's eta: 0 the ODE, 1 the reverse SDE.
    """
    times = ts.tolist()
    for t, s in zip(times[:-1], times[1:]):
        x = euler_maruyama_step(model, x, t, s, eta, noise)
    return x


def heun_step(model, x: torch.Tensor, t: float, s: float) -> torch.Tensor:
    """One Heun step from t to s on the probability-flow ODE."""
    dt = s - t
    d = model.drift(x, t)
    return x + (d + model.drift(x + d * dt, s)) * (dt / 2)


def heun(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise) -> torch.Tensor:
    """Heun's method (explicit trapezoidal rule) on the probability-flow ODE.

    Karras et al. 2022 (arXiv:2206.00364), Algorithm 1, in the schedule's own time t. Order 2,
    2 NFE per step (the correction is applied on every step, the last included, since t_min > 0).
    """
    times = ts.tolist()
    for t, s in zip(times[:-1], times[1:]):
        x = heun_step(model, x, t, s)
    return x


def midpoint(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise) -> torch.Tensor:
    """The explicit midpoint rule on the probability-flow ODE (Hairer et al. 1993, II.1, eq. 1.7): an Euler
    half step, then the full step with the drift at the half point. Order 2, 2 NFE per step. The times,
    half points included, are host floats: no device-to-host synchronisation per network call."""
    times = ts.tolist()
    for t, s in zip(times[:-1], times[1:]):
        half = (s - t) / 2
        x = x + model.drift(x + model.drift(x, t) * half, t + half) * (s - t)
    return x


def rk4_step(model, x: torch.Tensor, t: float, s: float, k1: torch.Tensor | None = None) -> torch.Tensor:
    """One classical RK4 step from t to s; ``k1`` is the drift at (x, t) when the caller has it."""
    dt = s - t
    k1 = model.drift(x, t) if k1 is None else k1
    k2 = model.drift(x + k1 * (dt / 2), t + dt / 2)
    k3 = model.drift(x + k2 * (dt / 2), t + dt / 2)
    k4 = model.drift(x + k3 * dt, s)
    return x + (k1 + 2 * k2 + 2 * k3 + k4) * (dt / 6)


def rk4(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise) -> torch.Tensor:
    """Classical 4-stage Runge-Kutta on the probability-flow ODE (Hairer et al. 1993, Table 1.2).

    Order 4, 4 NFE per step.
    """
    times = ts.tolist()
    for t, s in zip(times[:-1], times[1:]):
        x = rk4_step(model, x, t, s)
    return x
