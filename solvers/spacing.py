"""Time grids: ``timesteps(kind, n, schedule)`` returns n+1 float64 times, t[0] = t_max > ... > t[n] = t_min.

With s = i/n in [0, 1]:
- ``uniform``: t = t_max + s (t_min - t_max)
- ``quadratic``: t = t_min + (t_max - t_min)(1 - s^2)            (dense at high noise)
- ``cosine``: t = t_min + (t_max - t_min) c(s)/c(0), c(s) = cos(((s + 0.008)/1.008) pi/2)^2
- ``logsnr``: lambda uniform (DPM-Solver's default, Lu et al. 2022, arXiv:2206.00927)
- ``karras``: sigma^(1/rho) uniform in sigma = exp(-lambda), rho = 7 (Karras et al. 2022, arXiv:2206.00364, eq. 5)
- ``time_quadratic``: sqrt(t) uniform (DDIM's / DPM-Solver's "quadratic": dense at low noise)
"""
from __future__ import annotations

import math

import torch

from solvers.schedules import Schedule


def _uniform(s, t_min, t_max, schedule, **_):
    return t_max + s * (t_min - t_max)


def _quadratic(s, t_min, t_max, schedule, **_):
    return t_min + (t_max - t_min) * (1 - s**2)


def _cosine(s, t_min, t_max, schedule, **_):
    c = torch.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    return t_min + (t_max - t_min) * c / c[0]


def _logsnr(s, t_min, t_max, schedule, **_):
    lam_start, lam_end = schedule.lambda_(t_max), schedule.lambda_(t_min)
    return schedule.t_of_lambda(lam_start + s * (lam_end - lam_start))


def _karras(s, t_min, t_max, schedule, rho=7.0, **_):
    if rho <= 0:
        raise ValueError(f"karras spacing: rho must be > 0, got {rho}")
    # EDM's sigma is sigma_t / alpha_t = exp(-lambda_t) for any schedule.
    sig_max = torch.exp(-schedule.lambda_(t_max)) ** (1 / rho)
    sig_min = torch.exp(-schedule.lambda_(t_min)) ** (1 / rho)
    sigmas = (sig_max + s * (sig_min - sig_max)) ** rho
    return schedule.t_of_lambda(-torch.log(sigmas))


def _time_quadratic(s, t_min, t_max, schedule, **_):
    return (math.sqrt(t_max) + s * (math.sqrt(t_min) - math.sqrt(t_max))) ** 2


SPACINGS = {
    "uniform": _uniform,
    "quadratic": _quadratic,
    "cosine": _cosine,
    "logsnr": _logsnr,
    "karras": _karras,
    "time_quadratic": _time_quadratic,
}


def timesteps(kind: str, n: int, schedule: Schedule, *, rho: float = 7.0, t_min: float | None = None,
              t_max: float | None = None) -> torch.Tensor:
    """n + 1 decreasing times from ``t_max`` (default: the schedule's) to ``t_min``, as float64 on the CPU."""
    if kind not in SPACINGS:
        raise ValueError(f"unknown spacing {kind!r}; valid kinds: {', '.join(SPACINGS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"spacing {kind!r}: n must be an integer >= 1, got {n!r}")
    t_min = schedule.t_min if t_min is None else float(t_min)
    t_max = schedule.t_max if t_max is None else float(t_max)
    if not schedule.t_min <= t_min < t_max <= schedule.t_max:
        raise ValueError(
            f"spacing {kind!r}: need {schedule.t_min} <= t_min < t_max <= {schedule.t_max} for {schedule!r}, "
            f"got t_min={t_min}, t_max={t_max}"
        )
    s = torch.arange(n + 1, dtype=torch.float64) / n
    ts = torch.as_tensor(SPACINGS[kind](s, t_min, t_max, schedule, rho=rho), dtype=torch.float64)
    ts[0], ts[-1] = t_max, t_min  # exact ends, whatever the rounding of an inverse
    return ts
