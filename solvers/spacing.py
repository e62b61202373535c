"""Time grids: ``timesteps(kind, n, schedule)`` returns n+1 float64 times, t[0] = t_max > ... > t[n] = t_min.

With s = i/n in [0, 1]:
- ``uniform``: t = t_max + s (t_min - t_max)
- ``quadratic``: t = t_min + (t_max - t_min)(1 - s^2)            (dense at high noise)
- ``cosine``: t = t_min + (t_max - t_min) c(s)/c(0), c(s) = cos(((s + 0.008)/1.008) pi/2)^2
- ``logsnr``: lambda uniform (DPM-Solver's default, Lu et al. 2022, arXiv:2206.00927)
- ``karras``: sigma^(1/rho) uniform in sigma = exp(-lambda), rho = 7 (Karras et al. 2022, arXiv:2206.00364, eq. 5)
- ``time_quadratic``: sqrt(t) uniform (DDIM's / DPM-Solver's "quadratic": dense at low noise)

The names users pick in ComfyUI and diffusers (sigma~ = sigma_t / alpha_t = exp(-lambda_t), EDM's sigma):
- ``exponential``: log sigma~ uniform (k-diffusion's get_sigmas_exponential): the same grid as ``logsnr``
- ``kl_optimal``: sigma~ = tan((1 - s) atan sigma~_max + s atan sigma~_min) (Sabour et al. 2024,
  arXiv:2404.14507, the KL-optimal schedule of their Theorem 3.1 as ComfyUI offers it)
- ``beta``: t = t_min + (t_max - t_min) B^-1(1 - s; 0.6, 0.6), B^-1 the inverse Beta CDF (Lee et al. 2024,
  arXiv:2407.12173, alpha = beta = 0.6): dense at both ends
- ``linear_quadratic``: Mochi's / ComfyUI's sigma schedule as a fraction f of the time range, t = t_min +
  (t_max - t_min) f: f falls linearly from 1 to 1 - 0.025 over the first n // 2 steps, then quadratically
  to 0, the two pieces meeting with equal slope (on FlowMatching, f is sigma itself)
- ``sgm_uniform``: uniform in the training timestep (ComfyUI), i.e. ``uniform`` in t

diffusers' discrete timestep spacings, for a model trained on N steps (DiscreteVP; step k sits at
t = (k + 1)/N), each ending with a step to timestep 0 (t_min; diffusers' final_sigmas_type="sigma_min"):
- ``linspace``: timesteps round(linspace(0, N - 1, n + 1)) from N - 1 down (DPMSolverMultistepScheduler)
- ``leading``: timesteps (n - 1 - i) floor(N / n) + offset for i < n, then 0: the grid starts below t_max, as in
  diffusers (offset: the schedule's steps_offset, 1 as in Stable Diffusion's configs unless a diffusers folder's
  scheduler config gives another)
- ``leading_multistep``: diffusers' multistep schedulers' (DPM-Solver++, UniPC, DEIS) leading, which divides by
  n + 1: timesteps (n - i) floor(N / (n + 1)) + offset for i < n, then 0 (901, 811, ... at n = 10, N = 1000, offset 1)
- ``trailing``: timesteps round(N - i N / n) - 1 for i < n, then 0 (Lin et al. 2024, arXiv:2305.08891)
- ``simple``: ComfyUI's, timesteps N - 1 - floor(i N / n) for i < n, then 0

Align Your Steps (Sabour et al. 2024, arXiv:2404.14507), the schedules published for three model families
(NVIDIA's AYS how-to page; ComfyUI's AlignYourStepsScheduler holds the same numbers): 10-step sigma~ levels,
log sigma~ interpolated linearly over the step index to n steps:
- ``ays_sd1``, ``ays_sdxl``: Stable Diffusion 1.x / XL (DiscreteVP, scaled_linear betas 0.00085..0.012, 1000 steps)
- ``ays_svd``: Stable Video Diffusion (EDM, sigma 0.002..700)
They are defined for a schedule whose sigma~ range is the family's (ends within 1%), else refused: the levels
were optimised for that model's noise range and mean nothing on another.
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


def _edm_sigma_range(schedule, t_min, t_max):
    return torch.exp(-schedule.lambda_(t_max)), torch.exp(-schedule.lambda_(t_min))


def _kl_optimal(s, t_min, t_max, schedule, **_):
    sig_max, sig_min = _edm_sigma_range(schedule, t_min, t_max)
    sigmas = torch.tan((1 - s) * torch.atan(sig_max) + s * torch.atan(sig_min))
    return schedule.t_of_lambda(-torch.log(sigmas))


BETA_ALPHA = BETA_BETA = 0.6


def _beta(s, t_min, t_max, schedule, **_):
    from scipy.stats import beta  # a dependency of torch-fidelity; only this spacing needs it

    fraction = torch.as_tensor(beta.ppf((1 - s).numpy(), BETA_ALPHA, BETA_BETA), dtype=torch.float64)
    return t_min + (t_max - t_min) * fraction


LINEAR_QUADRATIC_THRESHOLD = 0.025


def _linear_quadratic(s, t_min, t_max, schedule, **_):
    n = len(s) - 1
    i = torch.arange(n + 1, dtype=torch.float64)
    linear_steps = max(n // 2, 1)
    if n == 1:
        fraction = 1 - i
    else:
        threshold = LINEAR_QUADRATIC_THRESHOLD
        # rising "noise removed" curve r(i): linear threshold i / L up to L, then a quadratic a i^2 + b i + c with
        # r(L) = threshold, slope continuous at L and r(n) = 1
        quadratic_steps = n - linear_steps
        gap = linear_steps - threshold * n
        a = gap / (linear_steps * quadratic_steps**2)
        b = threshold / linear_steps - 2 * gap / quadratic_steps**2
        c = a * linear_steps**2
        removed = torch.where(i < linear_steps, i * threshold / linear_steps, a * i**2 + b * i + c)
        removed[-1] = 1.0
        fraction = 1 - removed
    return t_min + (t_max - t_min) * fraction


def _discrete_steps(schedule, kind):
    n_train = getattr(schedule, "n_train", None)
    if not hasattr(schedule, "alphas_cumprod"):
        raise ValueError(f"spacing {kind!r} is one of diffusers' discrete timestep spacings: it needs a model trained "
                         f"on discrete steps (DiscreteVP), got {schedule!r}")
    return n_train


def _from_timesteps(steps, n_train):
    return (torch.as_tensor(steps, dtype=torch.float64) + 1) / n_train


def _then_timestep_zero(steps, n_train):
    """The times of diffusers' timesteps ``steps`` followed by the final step to timestep 0."""
    return _from_timesteps(torch.cat([steps, torch.zeros(1, dtype=torch.float64)]), n_train)


def _linspace(s, t_min, t_max, schedule, **_):
    n_train = _discrete_steps(schedule, "linspace")
    return _from_timesteps(torch.round((n_train - 1) * (1 - s)), n_train)


def _leading(s, t_min, t_max, schedule, **_):
    n_train, n = _discrete_steps(schedule, "leading"), len(s) - 1
    steps = (n - 1 - torch.arange(n, dtype=torch.float64)) * (n_train // n) + schedule.steps_offset
    return _then_timestep_zero(steps, n_train)


def _leading_multistep(s, t_min, t_max, schedule, **_):
    n_train, n = _discrete_steps(schedule, "leading_multistep"), len(s) - 1
    steps = torch.arange(n, 0, -1, dtype=torch.float64) * (n_train // (n + 1)) + schedule.steps_offset
    return _then_timestep_zero(steps, n_train)


def _trailing(s, t_min, t_max, schedule, **_):
    n_train, n = _discrete_steps(schedule, "trailing"), len(s) - 1
    steps = torch.round(n_train - torch.arange(n, dtype=torch.float64) * n_train / n) - 1
    return _then_timestep_zero(steps, n_train)


def _simple(s, t_min, t_max, schedule, **_):
    n_train, n = _discrete_steps(schedule, "simple"), len(s) - 1
    steps = n_train - 1 - torch.floor(torch.arange(n, dtype=torch.float64) * n_train / n)
    return _then_timestep_zero(steps, n_train)


AYS_LEVELS = {  # sigma~ at 11 points, t_max first
    "ays_sd1": [14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092, 0.9642583904,
                0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582],
    "ays_sdxl": [14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141, 0.5550693289,
                 0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582],
    "ays_svd": [700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002],
}
AYS_END_TOLERANCE = 0.01


def _align_your_steps(kind):
    levels = torch.tensor(AYS_LEVELS[kind], dtype=torch.float64)

    def spacing(s, t_min, t_max, schedule, **_):
        ends = torch.exp(-torch.as_tensor([float(schedule.lambda_(t_max)), float(schedule.lambda_(t_min))],
                                          dtype=torch.float64))
        published = levels[[0, -1]]
        if not bool(((ends / published - 1).abs() <= AYS_END_TOLERANCE).all()):
            raise ValueError(f"spacing {kind!r} was published for sigma~ from {published[0]:g} to {published[1]:g}; "
                             f"{schedule!r} spans {ends[0]:.4g} to {ends[1]:.4g} between t_max and t_min")
        position = s * (len(levels) - 1)  # the step index on the published 10-step grid
        left = position.floor().clamp(max=len(levels) - 2).long()
        weight = position - left
        log_levels = (1 - weight) * levels.log()[left] + weight * levels.log()[left + 1]
        return schedule.t_of_lambda(-log_levels)

    return spacing


SPACINGS = {
    "uniform": _uniform,
    "quadratic": _quadratic,
    "cosine": _cosine,
    "logsnr": _logsnr,
    "karras": _karras,
    "time_quadratic": _time_quadratic,
    "exponential": _logsnr,
    "kl_optimal": _kl_optimal,
    "beta": _beta,
    "linear_quadratic": _linear_quadratic,
    "sgm_uniform": _uniform,
    "linspace": _linspace,
    "leading": _leading,
    "leading_multistep": _leading_multistep,
    "trailing": _trailing,
    "simple": _simple,
    **{name: _align_your_steps(name) for name in AYS_LEVELS},
}
DISCRETE = {"linspace", "leading", "leading_multistep", "trailing", "simple"}  # on the training steps of a DiscreteVP model
# name -> (the grid, where it comes from): the spacing table of docs/spacings.md is generated from this.
_AYS_NOTE = ("Align Your Steps' published 10-step sigma~ levels, log sigma~ linear in the step index to n steps; only on "
             "a schedule with the family's sigma~ range (SD 1.x/XL: DiscreteVP with scaled_linear betas 0.00085-0.012, "
             "14.61 to 0.0292; SVD: EDM 0.002-700), refused elsewhere (a spec error for the analytic models)",
             "Sabour et al. 2024, arXiv:2404.14507; levels from NVIDIA's AYS page (the same in ComfyUI); at n = 10, "
             "20, 50 every (n/10)-th point is a published level (tested)")
SPACING_NOTES = {
    "uniform": ("uniform in t", ""),
    "quadratic": ("t = t_min + (t_max - t_min)(1 - s^2): dense at high noise", ""),
    "cosine": ("cos^2 warp of t", "Nichol & Dhariwal 2021"),
    "logsnr": ("uniform in lambda = log(alpha/sigma)", "Lu et al. 2022, arXiv:2206.00927"),
    "karras": ("sigma~^(1/7) uniform", "Karras et al. 2022, arXiv:2206.00364, eq. 5 (equal to k-diffusion's "
               "get_sigmas_karras and diffusers' use_karras_sigmas: conformance table)"),
    "time_quadratic": ("sqrt(t) uniform: dense at low noise", "Song et al. 2021 (DDIM's \"quadratic\")"),
    "exponential": ("log sigma~ uniform: the logsnr grid under k-diffusion's / ComfyUI's name",
                    "k-diffusion get_sigmas_exponential, diffusers' use_exponential_sigmas (both equal: conformance "
                    "table)"),
    "kl_optimal": ("atan(sigma~) uniform", "Sabour et al. 2024, arXiv:2404.14507 (ComfyUI's kl_optimal)"),
    "beta": ("t fraction = inverse Beta(0.6, 0.6) CDF of 1 - s: dense at both ends",
             "Lee et al. 2024, arXiv:2407.12173; in time as ComfyUI's beta scheduler (diffusers' use_beta_sigmas "
             "places the quantiles in sigma: differs by design)"),
    "linear_quadratic": ("fraction of the range: linear to 2.5% over n // 2 steps, then quadratic (equal slopes)",
                         "Mochi / ComfyUI"),
    "sgm_uniform": ("uniform in the training timestep: uniform", "ComfyUI"),
    **{name: ("diffusers' discrete timesteps of a DiscreteVP model, then a step to timestep 0",
              "diffusers timestep_spacing (tested equal to DDIMScheduler's and DPMSolverMultistepScheduler's, leading "
              "with steps_offset 1)") for name in ("linspace", "leading", "trailing")},
    "simple": ("ComfyUI's: timesteps N - 1 - floor(i N / n), then 0", "ComfyUI"),
    "leading_multistep": ("diffusers' multistep schedulers' leading: timesteps (n - i) floor(N / (n + 1)) + offset, "
                          "then 0 (DDIM's leading divides by n)", "diffusers DPMSolverMultistepScheduler, "
                          "UniPCMultistepScheduler, DEISMultistepScheduler with timestep_spacing='leading' (tested)"),
    **{name: _AYS_NOTE for name in AYS_LEVELS},
}


EXPLICIT = ("times", "sigmas")


def explicit_name(values: list, unit: str = "times") -> str:
    """The spacing name of an explicit grid: ``times:...`` or ``sigmas:...`` with the values as written."""
    if unit not in EXPLICIT:
        raise ValueError(f"an explicit grid is given in {' or '.join(EXPLICIT)}, got {unit!r}")
    return f"{unit}:" + ",".join(repr(float(v)) for v in values)


def explicit_grid(kind: str, schedule: Schedule) -> torch.Tensor:
    """The times of an explicit grid (``times:...`` or ``sigmas:...``), checked to lie in the schedule's range
    and to decrease strictly."""
    unit, _, text = kind.partition(":")
    try:
        values = torch.tensor([float(v) for v in text.split(",")], dtype=torch.float64)
    except ValueError:
        raise ValueError(f"spacing {kind!r}: expected {unit}:v0,v1,... with numbers") from None
    if len(values) < 2 or not bool((torch.diff(values) < 0).all()):
        raise ValueError(f"spacing {kind!r}: an explicit grid needs at least 2 strictly decreasing values")
    if unit == "sigmas":
        if not bool((values > 0).all()):
            raise ValueError(f"spacing {kind!r}: sigmas must be > 0 (the last step ends at the schedule's t_min)")
        values = schedule.t_of_lambda(-torch.log(values))
        if not bool((torch.diff(values) < 0).all()):  # two sigmas the schedule cannot tell apart
            raise ValueError(f"spacing {kind!r}: the sigmas do not map to strictly decreasing times on {schedule!r}")
    span = schedule.t_min - 1e-12, schedule.t_max + 1e-12
    if not (span[0] <= float(values[-1]) and float(values[0]) <= span[1]):
        raise ValueError(f"spacing {kind!r}: times {float(values[0]):.6g}..{float(values[-1]):.6g} leave the range "
                         f"[{schedule.t_min}, {schedule.t_max}] of {schedule!r}")
    return values.clamp(schedule.t_min, schedule.t_max)


def timesteps(kind: str, n: int, schedule: Schedule, *, rho: float = 7.0, t_min: float | None = None,
              t_max: float | None = None) -> torch.Tensor:
    """n + 1 decreasing times from ``t_max`` (default: the schedule's) to ``t_min``, as float64 on the CPU."""
    if kind.partition(":")[0] in EXPLICIT and ":" in kind:
        ts = explicit_grid(kind, schedule)
        if n != len(ts) - 1:
            raise ValueError(f"spacing {kind!r} has {len(ts) - 1} steps, asked for {n}")
        return ts
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
    if kind in DISCRETE:  # the training steps themselves, t_min and t_max do not apply
        if not bool((torch.diff(ts) < 0).all()):
            raise ValueError(f"spacing {kind!r}: {n} steps do not fit {schedule.n_train} training steps "
                             f"(two would share a timestep)")
        return ts
    ts[0], ts[-1] = t_max, t_min  # exact ends, whatever the rounding of an inverse
    return ts
