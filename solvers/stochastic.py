"""Stochastic samplers with their own noise mechanisms: EDM's churn and Song et al.'s predictor-corrector."""
from __future__ import annotations

import math

import torch

from solvers.coefficients import gauss_legendre
from solvers.denoising import ddpm_step
from solvers.runge_kutta import euler_maruyama_step
from solvers.spacing import timesteps


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


def restart_interval(schedule, t_start: float, t_end: float, options: dict) -> tuple[float, float]:
    """(t_restart, t_restart_max): restart's interval [sigma_restart_min, sigma_restart_max] (in sigma~) as times;
    ValueError naming the options when it does not lie inside a solve from t_start to t_end."""
    low, high = options["sigma_restart_min"], options["sigma_restart_max"]
    if not 0 < low < high:
        raise ValueError(f"restart: need 0 < sigma_restart_min < sigma_restart_max, got {low}, {high}")
    sigma_end, sigma_start = (math.exp(-float(schedule.lambda_(t))) for t in (t_end, t_start))
    if not (sigma_end < low and high <= sigma_start):
        raise ValueError(f"restart: options sigma_restart_min, sigma_restart_max = {low}, {high} (in sigma/alpha) "
                         f"must lie in the solve's ({sigma_end:.4g}, {sigma_start:.4g}]")
    return tuple(float(schedule.t_of_lambda(-math.log(v))) for v in (low, high))


def check_restart(options: dict, schedule=None) -> None:
    """restart's interval (Solver.check_options; its counts are judged by Solver.allowed): in order, and inside
    ``schedule`` where it is known."""
    if schedule is None:
        low, high = options["sigma_restart_min"], options["sigma_restart_max"]
        if not 0 < low < high:
            raise ValueError(f"restart: need 0 < sigma_restart_min < sigma_restart_max, got {low}, {high}")
    else:
        restart_interval(schedule, schedule.t_max, schedule.t_min, options)


def restart_times(schedule, times: list[float], options: dict) -> tuple[int, float, float]:
    """(j, t_restart, t_restart_max) of a restart solve on ``times``: the interval's ends as times, and the interior
    grid point j (nearest to t_restart) that t_restart replaces, so the grid keeps its n steps."""
    if len(times) < 3:
        raise ValueError("restart: the grid needs at least 2 steps (the restart time replaces an interior time)")
    t_restart, t_restart_max = restart_interval(schedule, times[0], times[-1], options)
    j = min(range(1, len(times) - 1), key=lambda i: abs(times[i] - t_restart))
    return j, t_restart, t_restart_max


def restart(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise, sigma_restart_min: float = 0.06,
            sigma_restart_max: float = 0.3, restarts: int = 2, restart_steps: int = 3) -> torch.Tensor:
    """Restart sampling (Xu et al. 2023, arXiv:2306.14878, Algorithm 1): the ODE with EDM's Heun, and at the
    restart interval's low end the ``restarts`` forward jumps back to its high end, each followed by
    ``restart_steps`` Heun steps down again.

    In x~ = x/alpha and sigma~ = sigma/alpha (the paper's EDM variables, where the forward process adds
    N(0, sigma~^2 - sigma~'^2) between noise levels): a jump is x~ <- x~ + sqrt(sigma~_max^2 - sigma~_min^2) z,
    with the interval [sigma_restart_min, sigma_restart_max] given in sigma~. The Heun steps are
    edm_stochastic's at eta 0 (Karras et al. 2022, Alg. 1), the restart's on a Karras (rho 7) grid. The restart
    time replaces the main grid's nearest interior time, so the grid keeps n steps and the restart happens at
    the same time for every n: with the noise fixed the samples converge at Heun's order 2 (a restart at the
    nearest grid time would move with n and converge at order 1). Jump k draws the noise of
    [t_restart, t_restart_max] on stream k - 1, so the jumps are independent and a finer grid sees the same
    ones. The defaults are an illustration (the paper tunes the interval, K and steps per dataset); eta has no
    role (fixed at 1). NFE: 2 per step + 2 restarts x restart_steps.
    """
    schedule, times = model.schedule, ts.tolist()
    j, t_restart, t_restart_max = restart_times(schedule, times, {"sigma_restart_min": sigma_restart_min,
                                                                   "sigma_restart_max": sigma_restart_max})
    grid = torch.tensor(times[:j] + [t_restart] + times[j + 1:], dtype=torch.float64)
    x = edm_stochastic(model, x, grid[: j + 1], eta=0.0, noise=noise)
    restart_grid = timesteps("karras", restart_steps, schedule, t_min=t_restart, t_max=t_restart_max)
    jump = math.sqrt(sigma_restart_max**2 - sigma_restart_min**2)
    alpha_restart, alpha_restart_max = float(schedule.alpha(t_restart)), float(schedule.alpha(t_restart_max))
    for k in range(restarts):
        draw = noise if k == 0 else noise.independent(k)
        z = draw(t_restart_max, t_restart, x)
        x = alpha_restart_max * (x / alpha_restart + jump * z)
        x = edm_stochastic(model, x, restart_grid, eta=0.0, noise=noise)
    return edm_stochastic(model, x, grid[j:], eta=0.0, noise=noise)


def restart_noise(schedule, times: list[float], options: dict) -> list[tuple]:
    """The draws of restart's jumps, (stream, t_restart_max, t_restart) for streams 0..restarts - 1."""
    _, t_restart, t_restart_max = restart_times(schedule, times, options)
    return [(k, t_restart_max, t_restart) for k in range(options["restarts"])]


def er_sde_noise_scale(v):
    """ER-SDE-Solver's noise scale function phi(v) = v (e^(v^0.3) + 10) of sigma~ (Cui et al. 2023; the function
    the authors' code and ComfyUI use)."""
    return v * (math.exp(v**0.3) + 10.0)


def _er_sde_integrals(low: float, high: float) -> tuple[float, float]:
    """(int_low^high dv / phi(v), int_low^high (v - high) / phi(v) dv) by 16-point Gauss-Legendre in log v, where
    the integrands times v are smooth (ComfyUI uses a 200-point Riemann sum in float32)."""
    nodes, weights = gauss_legendre(16)
    a, b = math.log(low), math.log(high)
    v = torch.exp(a + (b - a) * (nodes + 1) / 2)
    smooth = 1 / (torch.exp(v**0.3) + 10.0)  # v / phi(v)
    scale = (b - a) / 2
    return float((weights * smooth).sum() * scale), float((weights * (v - high) * smooth).sum() * scale)


def er_sde(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise, max_stage: int = 3) -> torch.Tensor:
    """ER-SDE-Solver-3 (Cui et al. 2023, arXiv:2309.06169, VP data prediction; ComfyUI's
    sample_er_sde): the extended reverse-time SDE whose noise is set by a scale function phi of sigma~.

    In sigma~ = sigma/alpha, a step from t to s with r = phi(sigma~_s)/phi(sigma~_t):
    x_s = (alpha_s/alpha_t) r x + alpha_s (1 - r) x0_t
          + alpha_s (sigma~_s - sigma~_t + phi(sigma~_s) I_1) x0'
          + alpha_s ((sigma~_s - sigma~_t)^2/2 + phi(sigma~_s) I_2) x0''
          + alpha_s sqrt(sigma~_s^2 - sigma~_t^2 r^2) z,
    I_1, I_2 the integrals of _er_sde_integrals over [sigma~_s, sigma~_t], x0' and x0'' divided differences of
    x0 in sigma~ (ComfyUI's: the second over half the two-step span). Stages build up with the history to
    ``max_stage`` (1-3); phi = er_sde_noise_scale. Its noise is phi's, not the eta family's: eta is fixed at 1.
    1 NFE per step.
    """
    schedule, times = model.schedule, ts.tolist()
    scaled = [math.exp(-float(schedule.lambda_(t))) for t in times]
    x0_prev = d1_prev = None
    for i, (t, s) in enumerate(zip(times[:-1], times[1:])):
        (alpha_t, _), (alpha_s, _) = schedule.alpha_sigma(t), schedule.alpha_sigma(s)
        v_t, v_s = scaled[i], scaled[i + 1]
        ratio = er_sde_noise_scale(v_s) / er_sde_noise_scale(v_t)
        x0 = model.x0(x, t)
        x = (alpha_s / alpha_t) * ratio * x + alpha_s * (1 - ratio) * x0
        stage = min(max_stage, i + 1)
        if stage >= 2:
            dv = v_s - v_t
            first, second = _er_sde_integrals(v_s, v_t)
            d1 = (x0 - x0_prev) / (v_t - scaled[i - 1])
            x = x + alpha_s * (dv + first * er_sde_noise_scale(v_s)) * d1
            if stage == 3:
                d2 = (d1 - d1_prev) / ((v_t - scaled[i - 2]) / 2)
                x = x + alpha_s * (dv * dv / 2 + second * er_sde_noise_scale(v_s)) * d2
            d1_prev = d1
        x = x + alpha_s * math.sqrt(max(v_s**2 - (v_t * ratio) ** 2, 0.0)) * noise(t, s, x)
        x0_prev = x0
    return x


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
    """pc's order (Solver.order_rule; pc always draws noise): the predictor's strong order 1 on a fixed Brownian path
    without correctors, none with them."""
    return 1 if options["corrector_steps"] == 0 else None


def edm_draws_noise(eta: float, options: dict) -> bool:
    """EDM's sampler is stochastic when eta > 0 or when the paper's churn is switched on."""
    return eta > 0 or (options["s_churn"] or 0) > 0


def corrector_nfe(n_steps: int, options: dict) -> int:
    """pc's evaluations beyond the predictor's one per step: one per corrector step."""
    return n_steps * options["corrector_steps"]
