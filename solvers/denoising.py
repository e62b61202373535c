"""Denoising samplers that step through the Gaussian posterior q(x_s | x_t, x0): DDIM and DDPM.

Written for any schedule with alpha_{t|s} = alpha_t / alpha_s and sigma_{t|s}^2 = sigma_t^2 -
alpha_{t|s}^2 sigma_s^2 (Kingma et al. 2021, arXiv:2107.00630, eq. 2-3), s < t.
"""
from __future__ import annotations

import math

import torch

DDPM_VARIANCES = ("beta_tilde", "beta")  # the posterior's variance, the forward step's (ddpm's variance option)

def ancestral_noise_std(schedule, t: float, s: float, eta: float) -> float:
    """The std c of the fresh noise a step from t to s adds at ``eta``: DDIM's eq. 16 variance in log-SNR form,
    c^2 = eta^2 sigma_s^2 (1 - exp(-2h)), h = lambda_s - lambda_t (k-diffusion's sigma_up, times alpha_s), at most
    sigma_s: with eta > 1 a coarse step would ask for more noise than sigma_s holds, and k-diffusion caps it there."""
    if eta == 0:
        return 0.0
    h = float(schedule.lambda_(s) - schedule.lambda_(t))
    sigma_s = schedule.alpha_sigma(s)[1]
    return min(eta * sigma_s * math.sqrt(-math.expm1(-2 * h)), sigma_s)


def ddim(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise) -> torch.Tensor:
    """DDIM (Song, Meng & Ermon 2021, arXiv:2010.02502, eq. 12).

    x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z with DDIM's eq. 16 variance, which in
    log-SNR form is c^2 = eta^2 sigma_s^2 (1 - exp(-2h)), h = lambda_s - lambda_t. eta = 0 is the
    deterministic DDIM (first order, 1 NFE per step; equal to DPM-Solver-1); eta = 1 is DDPM's
    posterior sampler. To first order in h, c^2 = 2 eta^2 sigma^2 h equals the eta family's noise
    variance eta^2 g^2 |dt|, so DDIM's eta is DESIGN.md's eta.
    """
    times = ts.tolist()
    for t, s in zip(times[:-1], times[1:]):
        eps, x0 = model.eps_and_x0(x, t)
        x = ddim_step(model.schedule, x0, eps, t, s, eta, noise)
    return x


def ddim_step(schedule, x0: torch.Tensor, eps: torch.Tensor, t: float, s: float, eta: float, noise) -> torch.Tensor:
    """One step of DDIM's eq. 12 from t to s given the x0 and the eps it re-noises with:
    x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z, c = ancestral_noise_std (no draw at eta 0)."""
    alpha_s, sigma_s = schedule.alpha_sigma(s)
    c = ancestral_noise_std(schedule, t, s, eta)
    x = alpha_s * x0 + math.sqrt(sigma_s**2 - c**2) * eps
    if eta > 0:
        x = x + c * noise(t, s, x)
    return x


def gradient_estimation(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise, gamma: float = 2.0) -> torch.Tensor:
    """Gradient estimation (Permenter & Yuan 2024, arXiv:2306.04848, Algorithm 2): DDIM with eps replaced by
    gamma eps_t + (1 - gamma) eps_prev from the second step on (the denoiser read as a gradient, extrapolated
    over the last step).

    In x~ = x / alpha and sigma~ = sigma / alpha, where DDIM is x~_s = x~_t + (sigma~_s - sigma~_t) eps. 1 NFE
    per step; gamma = 1 is DDIM. Order 1 as an ODE solver: the extrapolation changes the error constant, not
    its order (measured in tests/solvers/test_convergence.py).
    """
    schedule = model.schedule
    times = ts.tolist()
    previous = None
    for t, s in zip(times[:-1], times[1:]):
        (alpha_t, sigma_t), (alpha_s, sigma_s) = schedule.alpha_sigma(t), schedule.alpha_sigma(s)
        eps = model.eps(x, t)
        direction = eps if previous is None else gamma * eps + (1 - gamma) * previous
        x = alpha_s * (x / alpha_t + (sigma_s / alpha_s - sigma_t / alpha_t) * direction)
        previous = eps
    return x


def ddpm_step(model, x: torch.Tensor, t: float, s: float, noise, variance: str = "beta_tilde") -> torch.Tensor:
    """One ancestral step from t to s: the posterior mean given x0_hat plus the chosen variance."""
    schedule = model.schedule
    _, x0 = model.eps_and_x0(x, t)
    (alpha_t, sigma_t), (alpha_s, sigma_s) = schedule.alpha_sigma(t), schedule.alpha_sigma(s)
    alpha_ts = alpha_t / alpha_s
    sigma2_ts = sigma_t**2 - alpha_ts**2 * sigma_s**2
    mean = (alpha_ts * sigma_s**2 / sigma_t**2) * x + (alpha_s * sigma2_ts / sigma_t**2) * x0
    var = sigma2_ts * sigma_s**2 / sigma_t**2 if variance == "beta_tilde" else sigma2_ts
    return mean + math.sqrt(var) * noise(t, s, x)


def ddpm(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise, variance: str = "beta_tilde") -> torch.Tensor:
    """DDPM ancestral sampling (Ho, Jain & Abbeel 2020, arXiv:2006.11239, eq. 7 and Algorithm 2).

    x_s = mean of q(x_s | x_t, x0_hat) + std z, on any time grid. ``variance="beta_tilde"`` uses the
    posterior variance sigma_{t|s}^2 sigma_s^2 / sigma_t^2 (then identical to DDIM with eta = 1);
    ``variance="beta"`` uses the forward variance sigma_{t|s}^2 (DDPM's sigma_t^2 = beta_t). First
    order, 1 NFE per step. It is the reverse SDE's discretisation: eta is fixed at 1.
    """
    times = ts.tolist()
    for t, s in zip(times[:-1], times[1:]):
        x = ddpm_step(model, x, t, s, noise, variance)
    return x
