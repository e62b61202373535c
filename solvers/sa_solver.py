"""SA-Solver: stochastic Adams predictor-corrector in data prediction (Xue et al. 2023, arXiv:2309.05019)."""
from __future__ import annotations

import math

import torch

from solvers.coefficients import gauss_legendre, lagrange_basis_values, log_snr


def _stochastic_adams_step(schedule, x, t: float, s: float, lams: list[float], x0s: list[torch.Tensor], tau: float,
                           z, simple_order_2: bool) -> torch.Tensor:
    """x at s from x at t on the SDE with noise level tau (Xue et al. 2023, the data-prediction SA step):
    x_s = e^(-tau^2 h) (sigma_s/sigma_t) x + kappa alpha_s sum_k b_k x0_k + sigma_s sqrt(1 - e^(-2 tau^2 h)) z,
    kappa = 1 + tau^2, b_k = int_{lambda_t}^{lambda_s} e^(kappa (lambda - lambda_s)) L_k(lambda) d lambda with L_k the
    Lagrange basis through ``lams`` (newest first, matching ``x0s``), by 16-point Gauss-Legendre (exact up to
    rounding for these smooth integrands). With ``simple_order_2`` a two-node step gets the paper's O(h^3)
    modification, (h^2/2 - (kappa h - 1 + e^(-kappa h))/kappa^2) / (lambda_0 - lambda_1), added to b_0 and taken
    from b_1."""
    sigma_t, (alpha_s, sigma_s) = schedule.alpha_sigma(t)[1], schedule.alpha_sigma(s)
    lam_t, lam_s = float(schedule.lambda_(t)), float(schedule.lambda_(s))
    h, kappa = lam_s - lam_t, 1 + tau * tau
    nodes, weights = gauss_legendre(16)
    taus = lam_t + h * (nodes + 1) / 2
    kernel = torch.exp(kappa * (taus - lam_s)) * weights * (h / 2)
    b = (lagrange_basis_values(lams, taus) * kernel).sum(1).tolist()
    if simple_order_2 and len(b) == 2:
        modification = (h * h / 2 - (kappa * h - 1 + math.exp(-kappa * h)) / kappa**2) / (lams[0] - lams[1])
        b[0], b[1] = b[0] + modification, b[1] - modification
    x = math.exp(-tau * tau * h) * (sigma_s / sigma_t) * x + kappa * alpha_s * sum(c * x0 for c, x0 in zip(b, x0s))
    if tau > 0:
        x = x + sigma_s * math.sqrt(-math.expm1(-2 * tau * tau * h)) * z
    return x


# The noise interval's default ends in sigma~ = sigma/alpha: where DDPM's linear betas (1,000 steps) put training
# steps 200 and 800, the interval of the paper's code and diffusers' SASolverScheduler (0.7193 and 25.53 there).
NOISE_SIGMA_MIN, NOISE_SIGMA_MAX = 0.72, 25.5
NOISE_SWITCHES = ("start", "end")


def sa_solver(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise, predictor_order: int = 3,
              corrector_order: int = 4, noise_sigma_min: float = NOISE_SIGMA_MIN,
              noise_sigma_max: float = NOISE_SIGMA_MAX, noise_switch: str = "start", simple_order_2: bool = True,
              lower_order_final: bool = False) -> torch.Tensor:
    """SA-Solver (Xue et al. 2023, arXiv:2309.05019; diffusers' SASolverScheduler, ComfyUI's sample_sa_solver).

    Each step i predicts x_{i+1} with the stochastic Adams-Bashforth step through the last ``predictor_order``
    x0 evaluations (SA-Predictor), then, once x0 is evaluated there, corrects x_{i+1} by the stochastic
    Adams-Moulton step from x_i through x0_{i+1} and the last ``corrector_order`` - 1 others with the same noise
    z_i (SA-Corrector); the next prediction starts from the corrected x_{i+1} with the same x0_{i+1}, so 1 NFE per
    step. The noise level tau is eta where the noise level sigma~ = sigma/alpha lies in [noise_sigma_min,
    noise_sigma_max] and 0 outside, so the interval means the same signal-to-noise range on every schedule; the
    default is where DDPM's linear betas put training steps 200-800 (the paper's and diffusers' interval). Within
    it eta is DESIGN.md's. ``noise_switch``: whether a step's tau is decided by the sigma~ at its start ("start",
    as diffusers decides by the step's timestep) or at its end ("end", as ComfyUI decides by the step's next
    sigma). Orders build up as the history does. As an ODE solver (eta 0) its order is min(corrector_order,
    predictor_order + 1): 4 with the defaults (ComfyUI's orders). ``lower_order_final=True`` (diffusers' default,
    on every grid) takes the last prediction at order 1, uncorrected, which caps it at order 2 (measured 2.13 over
    256-1024 steps). ``simple_order_2`` (ComfyUI's name and meaning): two-node steps get the paper's O(h^3)
    modification (its Appendix D's simple order-2 coefficients, which diffusers always applies); False leaves them
    the plain Lagrange integrals (ComfyUI's default). A stochastic run draws z every step, even where tau is 0 (as
    diffusers does).
    """
    schedule, times = model.schedule, ts.tolist()
    lams = log_snr(schedule, times)
    noisy = [noise_sigma_min <= math.exp(-lam) <= noise_sigma_max for lam in lams]  # sigma~ = exp(-lambda)
    n = len(times) - 1
    history: list[torch.Tensor] = []  # x0 evaluations, newest first
    x_pred = x
    for i in range(n):
        x0 = model.x0(x_pred, times[i])
        history = [x0] + history[: max(predictor_order, corrector_order) - 1]
        if i > 0:  # correct x_i from x_{i-1} through x0_i, x0_{i-1}, ... with the predictor's noise
            k = corrector_order_used
            x = _stochastic_adams_step(schedule, x, times[i - 1], times[i], lams[i::-1][:k], history[:k], tau, z,
                                       simple_order_2)
        else:
            x = x_pred
        tau = eta if noisy[i if noise_switch == "start" else i + 1] else 0.0
        z = noise(times[i], times[i + 1], x) if eta > 0 else None
        k = min(predictor_order, i + 1, n - i if lower_order_final else predictor_order)
        corrector_order_used = min(corrector_order, i + 2, n - i + 1 if lower_order_final else corrector_order)
        x_pred = _stochastic_adams_step(schedule, x, times[i], times[i + 1], lams[i::-1][:k], history[:k], tau, z,
                                        simple_order_2)
    return x_pred


def sa_solver_order(eta: float, options: dict) -> int | None:
    """sa_solver's order (Solver.order_rule). As an ODE solver (eta 0): the predictor-corrector pair's
    min(corrector_order, predictor_order + 1), 2 at most with lower_order_final's uncorrected last step of order 1.
    On a fixed Brownian path (eta > 0): 1 when the noise lasts to the end of the solve (noise_sigma_min <= 0;
    measured 0.98 at eta 1), none when it stops inside it: tau switches off at a step boundary, so the noise of the
    part of that step below noise_sigma_min differs between grids and the noiseless rest of the solve keeps it
    (errors measured flat, 0.16 at 64-256 steps, for the default interval)."""
    if eta > 0:
        return 1 if options["noise_sigma_min"] <= 0 else None
    order = min(options["corrector_order"], options["predictor_order"] + 1)
    return min(order, 2) if options["lower_order_final"] else order


def check_options(options: dict, schedule=None) -> None:
    """The noise interval's ends in order (Solver.check_options: before any compute; each option alone is judged by
    Solver.allowed)."""
    low, high = options["noise_sigma_min"], options["noise_sigma_max"]
    if not 0 <= low <= high:
        raise ValueError(f"sa_solver: need 0 <= noise_sigma_min <= noise_sigma_max (sigma~ = sigma/alpha), got "
                         f"{low}, {high}")
