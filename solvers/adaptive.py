"""Adaptive and library-backed ODE solvers: Richardson step doubling, and torchdiffeq's integrators.

All integrate the probability-flow ODE in t. Adaptive solvers take the time span from ts[0] and
ts[-1] and choose their own steps; their NFE is what the model wrapper counts. Their step-size
control compares error norms on the host, so unlike the fixed-step solvers they synchronise with
the device once per step.
"""
from __future__ import annotations

import math

import torch
import torchdiffeq

from solvers.exponential import dpm_solver_stages
from solvers.runge_kutta import euler_step, heun_step

STEP_DOUBLING_SAFETY, STEP_DOUBLING_CLIP = 0.9, (0.2, 5.0)
MAX_NFE, MIN_STEP = 100_000, 1e-10  # per solve; MIN_STEP is relative to the time span


class SolverDiverged(RuntimeError):
    """An adaptive solve that cannot go on: the model returned NaN or inf, the step size fell below
    its minimum, or the evaluation budget ran out. The message says where (t) and after how much."""
STEP_DOUBLING_METHODS = {"euler": (euler_step, 1), "heun": (heun_step, 2)}


def richardson_error(step, order: int, model, x: torch.Tensor, t: float, s: float):
    """(two half steps, |full - halves| / (2^p - 1)): the Richardson estimate of the halves' local error."""
    full = step(model, x, t, s)
    middle = (t + s) / 2
    halves = step(model, step(model, x, t, middle), middle, s)
    return halves, (full - halves).abs() / (2**order - 1)


def _check_budget(name: str, model, nfe_start: int, max_nfe: int, t: float) -> None:
    if model.nfe - nfe_start > max_nfe:
        raise SolverDiverged(f"{name}: more than max_nfe = {max_nfe} evaluations without reaching the end (at t = {t:.6g})")


def step_doubling(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise, method: str = "euler",
                  rtol: float = 1e-3, atol: float = 1e-3, initial_steps: int = 16, max_nfe: int = MAX_NFE,
                  min_step: float = MIN_STEP, stats: dict | None = None) -> torch.Tensor:
    """Adaptive Euler or Heun by Richardson step doubling (Hairer, Norsett & Wanner 1993, II.4).

    Each step compares one full step with two half steps; the estimate err = |x_full - x_half| /
    (2^p - 1) is accepted when its RMS over all elements, scaled by rtol |x| + atol, is <= 1; the next
    step is h * clip(0.9 (1/ratio)^(1/(p+1)), 0.2, 5). The two half steps are kept. Costs 3 steps'
    evaluations per attempt (the half steps and the full one). ``stats``, when given, receives
    ``accepted`` and ``rejected`` counts. The first step is span / ``initial_steps``. A non-finite
    error estimate, a step below ``min_step`` x span or more than ``max_nfe`` evaluations raise
    SolverDiverged instead of looping.
    """
    step, order = STEP_DOUBLING_METHODS[method]
    t, t_end = float(ts[0]), float(ts[-1])
    h = (t_end - t) / initial_steps
    accepted = rejected = 0
    nfe_start, name = model.nfe, f"step_doubling_{method}"
    while t > t_end:
        if -h < min_step * (float(ts[0]) - t_end):
            raise SolverDiverged(f"{name}: step size {-h:.3g} below min_step x span at t = {t:.6g} "
                                 f"({accepted} steps accepted, {rejected} rejected)")
        _check_budget(name, model, nfe_start, max_nfe, t)
        h_step = max(h, t_end - t)  # h < 0: never step past the end
        halves, error = richardson_error(step, order, model, x, t, t + h_step)
        ratio = float(torch.sqrt(torch.mean((error / (rtol * x.abs() + atol)) ** 2)))
        if not math.isfinite(ratio):
            raise SolverDiverged(f"{name}: non-finite error estimate at t = {t:.6g} (step {accepted + rejected + 1}): "
                                 "the model returned NaN or inf")
        if ratio <= 1.0:
            x, t = halves, t + h_step
            accepted += 1
        else:
            rejected += 1
        low, high = STEP_DOUBLING_CLIP
        h *= min(high, max(low, STEP_DOUBLING_SAFETY * (1.0 / max(ratio, 1e-10)) ** (1 / (order + 1))))
    if stats is not None:
        stats.update(accepted=accepted, rejected=rejected)
    return x


class _ProbabilityFlow:
    """The ODE right-hand side for torchdiffeq, counting the steps it accepts and rejects (its callbacks)
    and ending the solve (SolverDiverged) on a non-finite drift or past ``max_nfe`` evaluations."""

    def __init__(self, model, name: str, max_nfe: int):
        self.model, self.name, self.max_nfe, self.accepted, self.rejected = model, name, max_nfe, 0, 0
        self.nfe_start = model.nfe

    def __call__(self, t, y):
        t = float(t)
        _check_budget(self.name, self.model, self.nfe_start, self.max_nfe, t)
        drift = self.model.drift(y, t)
        if not bool(torch.isfinite(drift).all()):  # adaptive control syncs with the host every step anyway
            raise SolverDiverged(f"{self.name}: non-finite drift at t = {t:.6g} after {self.accepted} accepted steps: "
                                 "the model returned NaN or inf")
        return drift

    def callback_accept_step(self, t0, y0, dt):
        self.accepted += 1

    def callback_reject_step(self, t0, y0, dt):
        self.rejected += 1


def torchdiffeq_adaptive(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise, method: str,
                         rtol: float = 1e-5, atol: float = 1e-5, max_nfe: int = MAX_NFE,
                         stats: dict | None = None) -> torch.Tensor:
    """torchdiffeq's embedded Runge-Kutta pairs (Chen et al. 2018, arXiv:1806.07366) on the
    probability-flow ODE from ts[0] to ts[-1]: dopri5 (Dormand-Prince 5(4)), bosh3 (Bogacki-Shampine
    3(2)), adaptive_heun (2(1)), dopri8 (8(7)), with torchdiffeq's error norm and step control.

    The first step is span/64 and ``step_t`` pins the end point: torchdiffeq's own initial-step probe
    and its stages past the end would otherwise evaluate the model outside the schedule's range.
    ``stats``, when given, receives ``accepted`` and ``rejected`` step counts. A non-finite drift,
    torchdiffeq's step-size underflow or more than ``max_nfe`` evaluations raise SolverDiverged.
    """
    span = torch.stack([ts[0], ts[-1]]).to(device=x.device, dtype=x.dtype)
    options = {"first_step": float(ts[0] - ts[-1]) / 64, "step_t": span}
    flow = _ProbabilityFlow(model, method, max_nfe)
    try:
        x = torchdiffeq.odeint(flow, x, span, method=method, rtol=rtol, atol=atol, options=options)[-1]
    except AssertionError as err:  # torchdiffeq's "underflow in dt" and its other step-control asserts
        raise SolverDiverged(f"{method}: {err} ({flow.accepted} steps accepted, {flow.rejected} rejected)") from err
    if stats is not None:
        stats.update(accepted=flow.accepted, rejected=flow.rejected)
    return x



class PIDStepController:
    """A PID step-size controller on the error norm (Soderlind 2003, "Digital filters in adaptive time-stepping",
    with the limiter 1 + atan(x - 1) of Soderlind & Wang 2006): k-diffusion's, for dpm_adaptive.

    The proposed factor is (1/e_n)^b1 (1/e_n-1)^b2 (1/e_n-2)^b3 with b = ((p + i + d), -(p + 2 d), d) / order;
    a step is accepted when the limited factor is at least ``accept_safety``. The step always takes the factor.
    """

    def __init__(self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float, accept_safety: float):
        self.h, self.accept_safety = h, accept_safety
        self.b = ((pcoeff + icoeff + dcoeff) / order, -(pcoeff + 2 * dcoeff) / order, dcoeff / order)
        self.inverse_errors: list[float] = []

    def propose(self, error: float) -> bool:
        inverse = 1 / (error + 1e-8)
        if not self.inverse_errors:
            self.inverse_errors = [inverse] * 3
        self.inverse_errors[0] = inverse
        factor = math.prod(e**b for e, b in zip(self.inverse_errors, self.b))
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.inverse_errors = [inverse, inverse, self.inverse_errors[1]]
        self.h *= factor
        return accept


def dpm_adaptive(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise, order: int = 3,
                 rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05, pcoeff: float = 0.0,
                 icoeff: float = 1.0, dcoeff: float = 0.0, accept_safety: float = 0.81, max_nfe: int = MAX_NFE,
                 stats: dict | None = None) -> torch.Tensor:
    """DPM-Solver-12 / -23 with adaptive step size (Lu et al. 2022, arXiv:2206.00927, its adaptive step size
    schedule), as k-diffusion 0.1.1's sample_dpm_adaptive runs it.

    Steps in lambda on x~ = x/alpha with sigma~ = e^(-lambda), starting at h_init. Each attempt takes the
    pair that shares its evaluations: order 3 compares DPM-Solver-2 (intermediate point at h/3) with
    DPM-Solver-3 (3 NFE), order 2 DPM-Solver-1 with DPM-Solver-2 (2 NFE). The error is the RMS of
    (low - high) / max(atol, rtol max(|low|, |x~_prev low|)), and PIDStepController (integral only by
    default) accepts and resizes. Defaults are k-diffusion's (its rtol and atol are meant for images in
    [-1, 1]; a sweep's ``tolerances`` set both). ``stats`` receives accepted and rejected counts. A non-finite
    error or more than ``max_nfe`` evaluations raise SolverDiverged.
    """
    schedule = model.schedule
    t, lam, lam_end = float(ts[0]), float(schedule.lambda_(ts[0])), float(schedule.lambda_(ts[-1]))
    y = x / float(schedule.alpha(t))
    y_prev = y
    controller = PIDStepController(h_init, pcoeff, icoeff, dcoeff, order, accept_safety)
    accepted = rejected = 0
    nfe_start = model.nfe
    while lam < lam_end - 1e-5:
        _check_budget("dpm_adaptive", model, nfe_start, max_nfe, t)
        lam_next = min(lam_end, lam + controller.h)
        s = float(schedule.t_of_lambda(lam_next))
        # the pair sharing its evaluations: DPM-Solver-1/-2 (r1 = 1/2) or -2/-3 (r1 = 1/3), compared in x~
        stages = dpm_solver_stages(model, float(schedule.alpha(t)) * y, t, s, lam, lam_next, order,
                                   r1=0.5 if order == 2 else 1 / 3)
        low, high = (x_s / float(schedule.alpha(s)) for x_s in stages[-2:])
        scale = torch.clamp(rtol * torch.maximum(low.abs(), y_prev.abs()), min=atol)
        error = float(torch.linalg.vector_norm((low - high) / scale)) / low.numel() ** 0.5
        if not math.isfinite(error):
            raise SolverDiverged(f"dpm_adaptive: non-finite error estimate at lambda = {lam:.6g} after {accepted} "
                                 "accepted steps: the model returned NaN or inf")
        if controller.propose(error):
            y_prev, y, t, lam = low, high, s, lam_next
            accepted += 1
        else:
            rejected += 1
    if stats is not None:
        stats.update(accepted=accepted, rejected=rejected)
    return y * float(schedule.alpha(ts[-1]))
