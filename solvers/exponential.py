"""Exponential integrators in lambda = log(alpha/sigma): DPM-Solver, DPM-Solver++ and DEIS.

Notation: a step goes from t to s < t, h = lambda_s - lambda_t > 0, r = ratio of step sizes in
lambda, phi_k the phi functions of solvers.coefficients. Noise-prediction solvers integrate the
linear part of x' exactly with x_s = (alpha_s/alpha_t) x - sigma_s int e^(lambda) eps, data-prediction
ones with x_s = (sigma_s/sigma_t) x + alpha_s int e^(-lambda) x0 (Lu et al. 2022, arXiv:2206.00927,
eq. 3.4; Lu et al. 2022b, arXiv:2211.01095, eq. 9).
"""
from __future__ import annotations

import math

import torch

from solvers.coefficients import gauss_legendre, lagrange_basis_values, log_snr, phi
from solvers.denoising import ancestral_noise_std


def dpm_solver_stages(model, x: torch.Tensor, t: float, s: float, lam_t: float, lam_s: float, order: int,
                      r1: float = 0.5, r2: float = 2 / 3) -> list[torch.Tensor]:
    """One DPM-Solver step from t to s (lambda_t to lambda_s) at each order up to ``order``, from one set of
    evaluations (Lu et al. 2022, arXiv:2206.00927): [DPM-Solver-1 (eq. 3.7), DPM-Solver-2 with its intermediate
    point at r1 h (Algorithm 1), DPM-Solver-3 with points at r1 h and r2 h (Algorithm 2)]. The fixed-step solvers
    take the last; dpm_adaptive compares the last two."""
    schedule = model.schedule
    h = lam_s - lam_t
    (alpha_t, _), (alpha_s, sigma_s) = schedule.alpha_sigma(t), schedule.alpha_sigma(s)
    eps_t = model.eps(x, t)
    first = (alpha_s / alpha_t) * x - sigma_s * h * phi(1, h) * eps_t
    results = [first]
    if order >= 2:
        s1 = float(schedule.t_of_lambda(lam_t + r1 * h))
        alpha_s1, sigma_s1 = schedule.alpha_sigma(s1)
        d1 = model.eps((alpha_s1 / alpha_t) * x - sigma_s1 * r1 * h * phi(1, r1 * h) * eps_t, s1) - eps_t
        results.append(first - sigma_s * h * phi(1, h) * d1 / (2 * r1))
    if order >= 3:
        s2 = float(schedule.t_of_lambda(lam_t + r2 * h))
        alpha_s2, sigma_s2 = schedule.alpha_sigma(s2)
        u2 = ((alpha_s2 / alpha_t) * x - sigma_s2 * r2 * h * phi(1, r2 * h) * eps_t
              - sigma_s2 * (r2 / r1) * r2 * h * phi(2, r2 * h) * d1)
        d2 = model.eps(u2, s2) - eps_t
        results.append(first - sigma_s * h * phi(2, h) * d2 / r2)
    return results


def _dpm_solver(model, x: torch.Tensor, ts: torch.Tensor, order: int, **points) -> torch.Tensor:
    schedule, times = model.schedule, ts.tolist()
    lams = log_snr(schedule, times)
    for i, (t, s) in enumerate(zip(times[:-1], times[1:])):
        x = dpm_solver_stages(model, x, t, s, lams[i], lams[i + 1], order, **points)[-1]
    return x


def dpm_solver_1(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise) -> torch.Tensor:
    """DPM-Solver-1 (Lu et al. 2022, arXiv:2206.00927, eq. 3.7): x_s = (a_s/a_t) x - s_s (e^h - 1) eps.

    Order 1, 1 NFE per step; the same map as deterministic DDIM.
    """
    return _dpm_solver(model, x, ts, 1)


def dpm_solver_2(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise, r1: float = 0.5) -> torch.Tensor:
    """DPM-Solver-2, singlestep (Lu et al. 2022, arXiv:2206.00927, Algorithm 1), intermediate point at r1 h.

    Order 2, 2 NFE per step.
    """
    return _dpm_solver(model, x, ts, 2, r1=r1)


def dpm_2_ancestral(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise) -> torch.Tensor:
    """DPM-2 ancestral, k-diffusion's sample_dpm_2_ancestral (Crowson, k-diffusion 0.1.1; from DPM-Solver-2,
    Lu et al. 2022, arXiv:2206.00927, Algorithm 1 with r1 = 1/2).

    Each step from t to s splits the noise the step owes as DDIM does (eq. 16 variance, so c = ddim's c and
    eta is DESIGN.md's eta to first order): a deterministic DPM-Solver-2 step from t to the log-SNR where
    sigma/alpha = sigma_down~ = sqrt(sigma_s^2 - c^2) / alpha_s, its midpoint at the geometric mean of
    sigma/alpha (k-diffusion's sigma_mid), then fresh noise c z. Written in x~ = x / alpha, where DPM-Solver-2
    is x~_mid = x~ + (sigma_mid~ - sigma_t~) eps_t, x~_down = x~ + (sigma_down~ - sigma_t~) eps_mid; the
    model is only called at t and at the midpoint (inside [s, t] for eta <= 1). eta = 0: dpm_solver_2.
    2 NFE per step, except a step whose noise takes all of sigma_s (eta > 1 on a coarse grid: sigma_down = 0),
    which is Euler's to x0 with 1 NFE, as in k-diffusion.
    """
    schedule = model.schedule
    times = ts.tolist()
    for t, s in zip(times[:-1], times[1:]):
        (alpha_t, sigma_t), (alpha_s, sigma_s) = schedule.alpha_sigma(t), schedule.alpha_sigma(s)
        c = ancestral_noise_std(schedule, t, s, eta)
        scaled_t, scaled_down = sigma_t / alpha_t, math.sqrt(sigma_s**2 - c**2) / alpha_s
        if scaled_down == 0:
            x = alpha_s * model.x0(x, t) + c * noise(t, s, x)
            continue
        scaled_mid = math.sqrt(scaled_t * scaled_down)
        t_mid = float(schedule.t_of_lambda(-math.log(scaled_mid)))
        x_scaled = x / alpha_t
        x_mid = x_scaled + (scaled_mid - scaled_t) * model.eps(x, t)
        eps_mid = model.eps(float(schedule.alpha(t_mid)) * x_mid, t_mid)
        x = alpha_s * (x_scaled + (scaled_down - scaled_t) * eps_mid)
        if eta > 0:
            x = x + c * noise(t, s, x)
    return x


def stage_times(schedule, times: list[float], fractions: tuple[float, ...]) -> list[list[float]]:
    """For each step of ``times``, the times at lambda_t + r h for r in ``fractions``: the intermediate stages of a
    singlestep exponential solver (dpmpp_sde, SEEDS). The runner draws their noise before the solve with these same
    floats (Solver.noise_intervals)."""
    lams = log_snr(schedule, times)
    return [[float(schedule.t_of_lambda(lam + r * (lam_next - lam))) for r in fractions]
            for lam, lam_next in zip(lams[:-1], lams[1:])]


def dpmpp_sde(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise, r: float = 0.5) -> torch.Tensor:
    """DPM-Solver++ SDE, k-diffusion's sample_dpmpp_sde (Crowson, k-diffusion 0.1.1; the singlestep
    DPM-Solver++(2S) of Lu et al. 2022b, arXiv:2211.01095, Algorithm 1, with an ancestral split of each stage).

    Each step from t to s, with its intermediate time t_mid at lambda_t + r h, takes two ancestral stages in
    x~ = x/alpha, sigma~ = sigma/alpha, each split as DDIM's eq. 16 (c = ancestral_noise_std, so eta is
    DESIGN.md's eta to first order): (1) a DPM-Solver++ first-order step from t to the sigma_down~ of
    [t, t_mid], x~_mid = (sigma_down~/sigma_t~) x~ + (1 - sigma_down~/sigma_t~) x0_t, plus c_mid z_1;
    (2) the same from t to the sigma_down~ of [t, s] with x0 replaced by (1 - 1/(2r)) x0_t + x0_mid / (2r),
    plus c_s z_2. z_1 is the noise of [t, t_mid] and z_2 of [t, s]: on one Brownian path they are
    correlated, as in k-diffusion's Brownian tree. eta = 0 is dpmpp_2s. 2 NFE per step.
    """
    schedule, times = model.schedule, ts.tolist()
    midpoints = [u for (u,) in stage_times(schedule, times, (r,))]

    def ancestral_stage(x_scaled, scaled_t, t, s, x0):
        """One DPM-Solver++ first-order step in x~ from t to sigma_down~ of [t, s] plus its noise; returns x at s."""
        alpha_s, sigma_s = schedule.alpha_sigma(s)
        c = ancestral_noise_std(schedule, t, s, eta)
        ratio = math.sqrt(sigma_s**2 - c**2) / alpha_s / scaled_t
        x = alpha_s * (ratio * x_scaled + (1 - ratio) * x0)
        return x + c * noise(t, s, x) if eta > 0 else x

    for t, t_mid, s in zip(times[:-1], midpoints, times[1:]):
        alpha_t, sigma_t = schedule.alpha_sigma(t)
        x_scaled, scaled_t = x / alpha_t, sigma_t / alpha_t
        x0_t = model.x0(x, t)
        x0_mid = model.x0(ancestral_stage(x_scaled, scaled_t, t, t_mid, x0_t), t_mid)
        x = ancestral_stage(x_scaled, scaled_t, t, s, (1 - 1 / (2 * r)) * x0_t + x0_mid / (2 * r))
    return x


class _StageNoise:
    """The eta family's noise within one step, built segment by segment (SEEDS, Gonzalez et al. 2023):
    after a segment of length dh in lambda, w <- e^(-eta^2 dh) w + sqrt(1 - e^(-2 eta^2 dh)) z, z the noise of
    that segment, so that sigma_u w at each stage u has the exact variance of the linear SDE's noise since t."""

    def __init__(self, noise, eta: float):
        self.noise, self.eta2, self.w = noise, eta * eta, 0.0

    def advance(self, start: float, end: float, dh: float, like: torch.Tensor):
        if self.eta2 == 0:
            return 0.0
        decay = math.exp(-self.eta2 * dh)
        self.w = decay * self.w + math.sqrt(-math.expm1(-2 * self.eta2 * dh)) * self.noise(start, end, like)
        return self.w


SEEDS_SOLVER_TYPES = ("phi_1", "phi_2")


def seeds_2(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise, r: float = 0.5,
            solver_type: str = "phi_1") -> torch.Tensor:
    """SEEDS-2 (Gonzalez et al. 2023, arXiv:2305.14267, data prediction; ComfyUI's sample_seeds_2):
    DPM-Solver++(2S) on the eta family's SDE, its linear part and noise integrated exactly stage by stage.

    With kappa = 1 + eta^2 and the stage u at lambda_t + r h:
    x_u = (sigma_u/sigma_t) e^(-eta^2 r h) x + alpha_u (1 - e^(-kappa r h)) x0_t + sigma_u w_u, then
    x_s = (sigma_s/sigma_t) e^(-eta^2 h) x + alpha_s [the 2S update of x0_t, x0_u] + sigma_s w_s, where w chains
    the noise of [t, u] and [u, s] (_StageNoise). ``solver_type="phi_1"``: (1 - e^(-kappa h))
    ((1 - 1/(2r)) x0_t + x0_u/(2r)); ``"phi_2"``: kappa h [phi_1 x0_t + phi_2 (x0_u - x0_t)/r] at -kappa h.
    ComfyUI's eta is our eta^2 (as for dpmpp_2m_sde); eta 0 with phi_1 is dpmpp_2s. 2 NFE per step.
    """
    schedule, times = model.schedule, ts.tolist()
    lams = log_snr(schedule, times)
    kappa, eta2 = 1 + eta * eta, eta * eta
    for i, ((t, s), (u,)) in enumerate(zip(zip(times[:-1], times[1:]), stage_times(schedule, times, (r,)))):
        h = lams[i + 1] - lams[i]
        (_, sigma_t), (alpha_u, sigma_u), (alpha_s, sigma_s) = (schedule.alpha_sigma(v) for v in (t, u, s))
        stage_noise = _StageNoise(noise, eta)
        x0_t = model.x0(x, t)
        x_u = ((sigma_u / sigma_t) * math.exp(-eta2 * r * h) * x - alpha_u * math.expm1(-kappa * r * h) * x0_t
               + sigma_u * stage_noise.advance(t, u, r * h, x))
        x0_u = model.x0(x_u, u)
        if solver_type == "phi_1":
            update = -math.expm1(-kappa * h) * (x0_t + (x0_u - x0_t) / (2 * r))
        else:
            update = kappa * h * (phi(1, -kappa * h) * x0_t + phi(2, -kappa * h) * (x0_u - x0_t) / r)
        x = ((sigma_s / sigma_t) * math.exp(-eta2 * h) * x + alpha_s * update
             + sigma_s * stage_noise.advance(u, s, (1 - r) * h, x))
    return x


def seeds_3(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise, r1: float = 1 / 3,
            r2: float = 2 / 3) -> torch.Tensor:
    """SEEDS-3 (Gonzalez et al. 2023, arXiv:2305.14267, data prediction; ComfyUI's sample_seeds_3):
    the three-stage exponential Runge-Kutta of DPM-Solver++ (stages at lambda_t + r1 h and + r2 h) on the eta
    family's SDE, linear part and noise exact stage by stage as in seeds_2. With kappa = 1 + eta^2 and phi_k at
    -kappa r h: x_1 = first-order stage to r1; x_2 = (sigma_2/sigma_t) e^(-eta^2 r2 h) x + alpha_2 kappa r2 h
    [phi_1 x0_t + (r2/r1) phi_2 (x0_1 - x0_t)]; x_s the same over h with phi_2 (x0_2 - x0_t)/r2. Order 3 at
    eta = 0; ComfyUI's eta is our eta^2. 3 NFE per step.
    """
    schedule, times = model.schedule, ts.tolist()
    lams = log_snr(schedule, times)
    kappa, eta2 = 1 + eta * eta, eta * eta
    for i, ((t, s), (u1, u2)) in enumerate(zip(zip(times[:-1], times[1:]), stage_times(schedule, times, (r1, r2)))):
        h = lams[i + 1] - lams[i]
        (_, sigma_t), (alpha_1, sigma_1), (alpha_2, sigma_2), (alpha_s, sigma_s) = (
            schedule.alpha_sigma(v) for v in (t, u1, u2, s))
        stage_noise = _StageNoise(noise, eta)
        x0_t = model.x0(x, t)
        x_1 = ((sigma_1 / sigma_t) * math.exp(-eta2 * r1 * h) * x - alpha_1 * math.expm1(-kappa * r1 * h) * x0_t
               + sigma_1 * stage_noise.advance(t, u1, r1 * h, x))
        x0_1 = model.x0(x_1, u1)
        k2 = kappa * r2 * h
        x_2 = ((sigma_2 / sigma_t) * math.exp(-eta2 * r2 * h) * x
               + alpha_2 * k2 * (phi(1, -k2) * x0_t + (r2 / r1) * phi(2, -k2) * (x0_1 - x0_t))
               + sigma_2 * stage_noise.advance(u1, u2, (r2 - r1) * h, x))
        x0_2 = model.x0(x_2, u2)
        k = kappa * h
        x = ((sigma_s / sigma_t) * math.exp(-eta2 * h) * x
             + alpha_s * k * (phi(1, -k) * x0_t + phi(2, -k) * (x0_2 - x0_t) / r2)
             + sigma_s * stage_noise.advance(u2, s, (1 - r2) * h, x))
    return x


def ordered_stages(solver: str):
    """Solver.check_options of a three-stage step (dpm_solver_3, seeds_3): its stages r1 h and r2 h in order (each
    inside the step: Solver.allowed)."""
    def check(options: dict, schedule=None) -> None:
        if not options["r1"] < options["r2"]:
            raise ValueError(f"{solver}: need 0 < r1 < r2 < 1, got r1={options['r1']}, r2={options['r2']}")
    return check


def seeds_noise(fraction_options: tuple[str, ...]):
    """Solver.noise_intervals for SEEDS: the segments [t, u_1], [u_1, u_2], ..., [u_k, s] of every step."""
    def intervals(schedule, times: list[float], options: dict) -> list[tuple]:
        fractions = tuple(options[name] for name in fraction_options)
        found = []
        for t, s, stages in zip(times[:-1], times[1:], stage_times(schedule, times, fractions)):
            ends = [t, *stages, s]
            found += [(0, a, b) for a, b in zip(ends[:-1], ends[1:])]
        return found
    return intervals


def dpm_solver_3(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise, r1: float = 1 / 3,
                 r2: float = 2 / 3) -> torch.Tensor:
    """DPM-Solver-3, singlestep (Lu et al. 2022, arXiv:2206.00927, Algorithm 2), points at r1 h and r2 h.

    Order 3, 3 NFE per step.
    """
    return _dpm_solver(model, x, ts, 3, r1=r1, r2=r2)


def dpmpp_2s(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise, r: float = 0.5) -> torch.Tensor:
    """DPM-Solver++(2S), singlestep data prediction (Lu et al. 2022b, arXiv:2211.01095, Algorithm 1).

    Order 2, 2 NFE per step.
    """
    schedule, times = model.schedule, ts.tolist()
    lams = log_snr(schedule, times)
    for i, (t, s) in enumerate(zip(times[:-1], times[1:])):
        h = lams[i + 1] - lams[i]
        s1 = float(schedule.t_of_lambda(lams[i] + r * h))
        (_, sigma_t), (alpha_s1, sigma_s1), (alpha_s, sigma_s) = (schedule.alpha_sigma(u) for u in (t, s1, s))
        x0_t = model.x0(x, t)
        u = (sigma_s1 / sigma_t) * x + alpha_s1 * r * h * phi(1, -r * h) * x0_t
        d = (1 - 1 / (2 * r)) * x0_t + model.x0(u, s1) / (2 * r)
        x = (sigma_s / sigma_t) * x + alpha_s * h * phi(1, -h) * d
    return x


def dpmpp_2m(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise,
             lower_order_final: bool = False) -> torch.Tensor:
    """DPM-Solver++(2M), multistep data prediction (Lu et al. 2022b, arXiv:2211.01095, Algorithm 2).

    The first step is first order while the history builds up; ``lower_order_final=True`` also takes
    the last step at first order (DPM-Solver's and diffusers' default on short grids). Order 2, 1 NFE
    per step.
    """
    return _x0_multistep(model, x, ts, 2, 0.0, "midpoint", lower_order_final)


def dpmpp_2m_sde(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise, second_order: str = "midpoint",
                 lower_order_final: bool = False) -> torch.Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022b, arXiv:2211.01095, Sec. 5 / App. B; "midpoint" form).

    Solving the eta family exactly in its linear part: with kappa = 1 + eta^2,
    x_s = (sigma_s/sigma_t) e^(-eta^2 h) x + alpha_s (1 - e^(-kappa h)) (x0 + (x0 - x0_prev)/(2 r))
          + sigma_s sqrt(1 - e^(-2 eta^2 h)) z.
    eta = 0 is DPM-Solver++(2M); eta = 1 is the published SDE solver. k-diffusion's and diffusers'
    eta for this sampler is eta^2 here. ``second_order="taylor"`` weights the history term
    kappa h phi_2(-kappa h) instead of (1 - e^(-kappa h))/2 (k-diffusion's solver_type="heun", ComfyUI's
    dpmpp_2m_sde_heun, diffusers' solver_type="heun"). Order 2 for eta = 0 (strong order 1 for eta > 0),
    1 NFE per step; feed it a solvers.noise.BrownianNoise to refine one Brownian path. ``lower_order_final``:
    the last step without the history term, as diffusers does on grids of fewer than 15 steps.
    """
    return _x0_multistep(model, x, ts, 2, 0.0, second_order, lower_order_final, eta, noise)


D2_WEIGHTS = {"2phi_3": 2.0, "phi_3": 1.0}
SECOND_ORDER_FORMS = ("midpoint", "taylor")


def dpmpp_3m(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise, d2_weight: str = "2phi_3",
             second_order: str = "midpoint", lower_order_final: bool = False) -> torch.Tensor:
    """DPM-Solver++(3M), multistep data prediction (Lu et al. 2022b, arXiv:2211.01095, App. B, and the
    reference implementation's third-order multistep update).

    x_s = (sigma_s/sigma_t) x + alpha_s h [phi_1(-h) x0 + phi_2(-h) D1 + w phi_3(-h) D2], with
    D1 ~ h x0' and D2 ~ h^2 x0''/2 the scaled divided differences of x0 in lambda. With w = 2
    (``d2_weight="2phi_3"``, registered as ``dpmpp_3m``) the bracket is the Taylor expansion
    h phi_1 x0 + h^2 phi_2 x0' + h^3 phi_3 x0'': order 3. The peers (DPM-Solver's reference code,
    k-diffusion's ``sample_dpmpp_3m_sde``, diffusers' ``DPMSolverMultistepScheduler``) use w = 1
    (``"phi_3"``, registered as ``dpmpp_3m_phi3``), which leaves an O(h^3) local error: order 2.
    Step 2 runs the 2M update, ``second_order="midpoint"`` (phi_1(-h) D1 / 2: DPM-Solver's
    "dpmsolver" type, diffusers' default) or ``"taylor"`` (phi_2(-h) D1: k-diffusion; DPM-Solver's
    "taylor", diffusers' "heun"); step 1 is first order. ``lower_order_final=True`` takes the last
    two steps at orders 1 and 2 (DPM-Solver's default below 10 steps, diffusers' below 15). 1 NFE per step.
    """
    return _x0_multistep(model, x, ts, 3, D2_WEIGHTS[d2_weight], second_order, lower_order_final)


def dpmpp_3m_sde(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise, d2_weight: str = "phi_3",
                 second_order: str = "taylor", lower_order_final: bool = False) -> torch.Tensor:
    """DPM-Solver++(3M) SDE, k-diffusion's sample_dpmpp_3m_sde (Crowson, k-diffusion 0.1.1; ComfyUI's
    dpmpp_3m_sde): dpmpp_3m's update on the eta family solved exactly in its linear part, as dpmpp_2m_sde is.

    With kappa = 1 + eta^2 and phi_k at -kappa h:
    x_s = (sigma_s/sigma_t) e^(-eta^2 h) x + alpha_s kappa h [phi_1 x0 + phi_2 D1 + w phi_3 D2]
          + sigma_s sqrt(1 - e^(-2 eta^2 h)) z,
    the integral of x0's Taylor expansion against the SDE's kernel kappa e^(-kappa (lambda_s - lambda)). The
    defaults are k-diffusion's: D2 weighted phi_3 (w = 1) and the "taylor" second step; eta 0 is dpmpp_3m_phi3
    with second_order="taylor", and ``d2_weight="2phi_3"`` gives dpmpp_3m's order-3 weight. k-diffusion's eta is
    our eta^2 (as for dpmpp_2m_sde). ODE order 2 (3 with 2phi_3), strong order 1 for eta > 0; 1 NFE per step.
    """
    return _x0_multistep(model, x, ts, 3, D2_WEIGHTS[d2_weight], second_order, lower_order_final, eta, noise)


def res_multistep(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise) -> torch.Tensor:
    """RES multistep (Zhang et al. 2023, arXiv:2308.02157, its second-order multistep; ComfyUI's
    sample_res_multistep).

    The exponential Adams step of order 2 on the data prediction whose weights satisfy the
    exponential integrator's order conditions exactly (the paper's point against DPM-Solver++(2M)'s
    phi_1/2 weight): x_s = (sigma_s/sigma_t) x + alpha_s h [phi_1(-h) x0 + phi_2(-h) (x0 - x0_prev)/r],
    r the ratio of the previous step to this one in lambda. ComfyUI writes it as
    h (b1 x0 + b2 x0_prev) with c2 = -r; it is dpmpp_3m's second-order "taylor" step, kept at order 2.
    The first step is DDIM's. Order 2, 1 NFE per step.
    """
    return _x0_multistep(model, x, ts, 2, 0.0, "taylor", False)


def _x0_multistep(model, x, ts, max_order: int, d2_weight: float, second_order: str, lower_order_final: bool,
                  eta: float = 0.0, noise=None):
    """The data-prediction exponential multistep update of dpmpp_3m (see there) up to ``max_order``, on the eta
    family solved exactly in its linear part (dpmpp_3m_sde): h becomes kappa h = (1 + eta^2) h in the weights, the
    state decays by e^(-eta^2 h) more, and noise of variance sigma_s^2 (1 - e^(-2 eta^2 h)) is added."""
    schedule, times = model.schedule, ts.tolist()
    lams = log_snr(schedule, times)
    n = len(times) - 1
    history: list[torch.Tensor] = []  # newest first
    for i, (t, s) in enumerate(zip(times[:-1], times[1:])):
        h = lams[i + 1] - lams[i]
        kappa_h = (1 + eta * eta) * h
        (_, sigma_t), (alpha_s, sigma_s) = schedule.alpha_sigma(t), schedule.alpha_sigma(s)
        history = [model.x0(x, t)] + history[: max_order - 1]
        order = min(len(history), n - i) if lower_order_final else len(history)
        m0 = history[0]
        update = phi(1, -kappa_h) * m0
        if order >= 2:
            r0 = (lams[i] - lams[i - 1]) / h
            d1_0 = (m0 - history[1]) / r0
        if order == 2:
            update = update + (phi(1, -kappa_h) / 2 if second_order == "midpoint" else phi(2, -kappa_h)) * d1_0
        elif order == 3:
            r1 = (lams[i - 1] - lams[i - 2]) / h
            d1_1 = (history[1] - history[2]) / r1
            d2 = (d1_0 - d1_1) / (r0 + r1)
            update = update + phi(2, -kappa_h) * (d1_0 + r0 * d2) + d2_weight * phi(3, -kappa_h) * d2
        x = (sigma_s / sigma_t) * math.exp(-eta * eta * h) * x + alpha_s * kappa_h * update
        if eta > 0:
            x = x + sigma_s * math.sqrt(-math.expm1(-2 * eta * eta * h)) * noise(t, s, x)
    return x


def deis(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise, order: int = 3) -> torch.Tensor:
    """tAB-DEIS (Zhang & Chen 2022, arXiv:2204.13902, eq. 14-15): exponential Adams-Bashforth in t.

    With y = x/alpha and rho = sigma/alpha, the ODE is dy = eps d rho exactly; eps is extrapolated by
    the Lagrange polynomial in t through the last ``order`` evaluations, and the weights
    int_t^s L_j(tau) rho'(tau) d tau are computed by 16-point Gauss-Legendre quadrature
    (rho' = e^(-lambda) g^2 / (2 sigma^2)). The first steps run at the order the history allows.
    Order ``order``, 1 NFE per step.
    """
    schedule, times = model.schedule, ts.tolist()
    nodes, weights = gauss_legendre(16)
    y = x / float(schedule.alpha(times[0]))
    history: list[torch.Tensor] = []
    for i, (t, s) in enumerate(zip(times[:-1], times[1:])):
        history = [model.eps(float(schedule.alpha(t)) * y, t)] + history[: order - 1]
        taus = t + (s - t) * (nodes + 1) / 2
        drho = torch.exp(-schedule.lambda_(taus)) * schedule.g2(taus) / (2 * schedule.sigma(taus) ** 2)
        basis = lagrange_basis_values(times[i::-1][: len(history)], taus)  # (k, quadrature nodes)
        coefficients = ((basis * drho * weights).sum(1) * (s - t) / 2).tolist()
        y = y + sum(c * e for c, e in zip(coefficients, history))
    return y * float(schedule.alpha(times[-1]))
