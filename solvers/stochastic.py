"""Stochastic samplers with their own noise mechanisms: EDM's churn and Song et al.'s predictor-corrector."""
from __future__ import annotations

import math

import torch

from solvers.denoising import ddpm_step
from solvers.runge_kutta import euler_maruyama_step


def edm_stochastic(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise, s_churn: float | None = None,
                   s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0) -> torch.Tensor:
    """EDM's stochastic sampler (Karras et al. 2022, arXiv:2206.00364, Algorithm 2).

    Works in EDM's variables for any schedule: x~ = x/alpha, sigma~ = sigma/alpha = exp(-lambda),
    where the ODE is dx~/dsigma~ = eps. Each step raises the noise level sigma~_i to
    sigma^ = (1 + gamma_i) sigma~_i by adding N(0, (sigma^2 - sigma~_i^2) s_noise^2), then takes a Heun
    step from sigma^ to sigma~_{i+1}. With ``s_churn`` given, gamma_i = min(s_churn/N, sqrt(2) - 1)
    for sigma~_i in [s_tmin, s_tmax] (the paper's knobs). Otherwise gamma_i = eta^2 (sigma~_i -
    sigma~_{i+1}) / sigma~_i: the added variance 2 gamma sigma~^2 and the extra ODE stretch then equal
    the eta family's noise and drift to first order, so eta keeps DESIGN.md's meaning. sigma^ is
    capped at the schedule's t_max. Order 2 for gamma = 0 (Heun), 2 NFE per step.
    """
    if s_churn is not None and s_churn < 0:
        raise ValueError(f"edm_stochastic: s_churn must be >= 0, got {s_churn}")
    schedule, times = model.schedule, ts.tolist()
    n = len(times) - 1
    sigma_cap = math.exp(-float(schedule.lambda_(schedule.t_max)))
    sigmas = [math.exp(-float(schedule.lambda_(t))) for t in times]
    y = x / float(schedule.alpha(times[0]))

    def eps_at(y, sigma_tilde):
        t = float(schedule.t_of_lambda(-math.log(sigma_tilde)))
        return model.eps(float(schedule.alpha(t)) * y, t)

    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if s_churn is not None:
            gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0
        else:
            gamma = eta * eta * (sigma - sigma_next) / sigma
        sigma_hat = min(sigma * (1 + gamma), sigma_cap)
        if sigma_hat > sigma:
            y = y + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * noise(times[i], times[i + 1], y)
        d = eps_at(y, sigma_hat)
        y_euler = y + (sigma_next - sigma_hat) * d
        y = y + (sigma_next - sigma_hat) * (d + eps_at(y_euler, sigma_next)) / 2
    return y * float(schedule.alpha(times[-1]))


def pc(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise, predictor: str = "euler_maruyama",
       corrector_steps: int = 1, snr: float = 0.16) -> torch.Tensor:
    """Predictor-corrector sampling (Song et al. 2021, arXiv:2011.13456, Algorithms 2-3 / App. G).

    At each time t_i: ``corrector_steps`` Langevin steps targeting p_{t_i}, x <- x + e score +
    sqrt(2 e) z with e = 2 alpha_i (snr |z| / |score|)^2 (norms averaged over the batch; alpha_i =
    alpha_{t_{i+1}}^2 / alpha_{t_i}^2, the per-step 1 - beta_i, on VP schedules, 1 on VE), then one
    predictor step to t_{i+1}: Euler-Maruyama on the eta family (``"euler_maruyama"``) or DDPM's
    ancestral step (``"reverse_diffusion"``, eta must be 1). NFE per step: 1 + corrector_steps.
    Corrector step k draws z from ``noise.independent(k + 1)``, independent of the predictor's noise.
    The batch-averaged norms (as in the paper's code) make the result depend on the batch size.
    The Langevin step size does not shrink with the time step, so with correctors the samples do
    not converge pathwise as steps are refined (no strong order; see ``pc_order``).
    """
    if predictor not in PC_PREDICTORS:
        raise ValueError(f"pc: predictor must be one of {tuple(PC_PREDICTORS)}, got {predictor!r}")
    if isinstance(corrector_steps, bool) or not isinstance(corrector_steps, int) or corrector_steps < 0:
        raise ValueError(f"pc: corrector_steps must be an integer >= 0, got {corrector_steps!r}")
    if not snr > 0:
        raise ValueError(f"pc: snr must be > 0, got {snr}")
    if predictor == "reverse_diffusion" and eta != 1:
        raise ValueError(f"pc: the reverse_diffusion predictor is the reverse SDE, eta must be 1, got {eta}")
    schedule, times = model.schedule, ts.tolist()
    batch_dims = tuple(range(1, x.ndim))
    for t, s in zip(times[:-1], times[1:]):
        alpha_i = (schedule.alpha_sigma(s)[0] / schedule.alpha_sigma(t)[0]) ** 2
        for k in range(corrector_steps):
            score = model.score(x, t)
            z = noise.independent(k + 1)(t, s, x)  # the predictor draws from the main stream
            ratio = torch.linalg.vector_norm(z, dim=batch_dims).mean() / torch.linalg.vector_norm(score, dim=batch_dims).mean()
            step = 2 * alpha_i * (snr * ratio) ** 2
            x = x + step * score + torch.sqrt(2 * step) * z
        x = PC_PREDICTORS[predictor](model, x, t, s, eta, noise)
    return x


def _reverse_diffusion_step(model, x, t, s, eta, noise):
    return ddpm_step(model, x, t, s, noise, variance="beta")


PC_PREDICTORS = {"euler_maruyama": euler_maruyama_step, "reverse_diffusion": _reverse_diffusion_step}


def pc_order(eta: float, options: dict) -> int | None:
    """Strong order on a fixed Brownian path: the predictor's 1 without correctors, none with them."""
    return 1 if options["corrector_steps"] == 0 else None


def edm_draws_noise(eta: float, options: dict) -> bool:
    """EDM's sampler is stochastic when eta > 0 or when the paper's churn is switched on."""
    return eta > 0 or (options["s_churn"] or 0) > 0


def corrector_nfe(n_steps: int, options: dict) -> int:
    """pc's evaluations beyond the predictor's one per step: one per corrector step."""
    return n_steps * options["corrector_steps"]
