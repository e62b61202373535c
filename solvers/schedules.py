"""Noise schedules in continuous time.

The forward process is x_t = alpha_t x_0 + sigma_t eps with lambda_t = log(alpha_t / sigma_t).
Each schedule gives alpha, sigma, lambda_, its inverse t_of_lambda, and the SDE coefficients
dx = f(t) x dt + g(t) dw with f = d log alpha / dt and g^2 = d sigma^2 / dt - 2 f sigma^2.

Every method takes a python float or a tensor of any float dtype and shape (float64 is used
for a python float) and returns a tensor of the same shape and dtype. ``t_min``/``t_max`` are
the default integration range; a solver refuses times outside it.
"""
from __future__ import annotations

import math

import torch


def _as_tensor(t) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        if not t.is_floating_point():
            raise TypeError(f"schedule times must be a floating tensor, got dtype {t.dtype}")
        return t
    return torch.as_tensor(t, dtype=torch.float64)


ALPHA_SIGMA_MEMO_SIZE = 4096  # times whose (alpha, sigma) a schedule remembers


class Schedule:
    """Base class: subclasses define the marginal coefficients; the rest follows from them."""

    t_min: float
    t_max: float

    def alpha(self, t):
        return torch.exp(self.log_alpha(t))

    def lambda_(self, t):
        return self.log_alpha(t) - torch.log(self.sigma(t))

    def alpha_sigma(self, t: float) -> tuple[float, float]:
        """(alpha_t, sigma_t) at one time as python floats: the lookup every solver step makes, remembered per
        time (a sweep steps through the same times batch after batch; a schedule never changes, so the values
        are the ones a fresh evaluation gives, bit for bit)."""
        t = float(t)
        memo = self.__dict__.setdefault("_alpha_sigma_memo", {})
        if t not in memo:
            if len(memo) >= ALPHA_SIGMA_MEMO_SIZE:  # adaptive solvers visit new times: keep the memo bounded
                memo.clear()
            memo[t] = float(self.alpha(t)), float(self.sigma(t))
        return memo[t]

    def log_alpha(self, t):
        raise NotImplementedError

    def sigma(self, t):
        raise NotImplementedError

    def t_of_lambda(self, lam):
        raise NotImplementedError

    def f(self, t):
        """Drift coefficient f(t) = d log alpha / dt."""
        raise NotImplementedError

    def g2(self, t):
        """Squared diffusion coefficient g^2(t) = d sigma^2/dt - 2 f sigma^2."""
        raise NotImplementedError

    def _check_range(self, t_min: float, t_max: float, lo: float, hi: float) -> None:
        if not lo <= t_min < t_max <= hi:
            raise ValueError(
                f"{type(self).__name__}: need {lo} <= t_min < t_max <= {hi}, got t_min={t_min}, t_max={t_max}"
            )
        self.t_min, self.t_max = float(t_min), float(t_max)


class VariancePreserving(Schedule):
    """alpha^2 + sigma^2 = 1. Subclasses give log_alpha, its derivative and its inverse."""

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2 * self.log_alpha(t)))

    def lambda_(self, t):
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * torch.log(-torch.expm1(2 * log_alpha))

    def t_of_lambda(self, lam):
        # alpha^2 = sigmoid(2 lambda)  =>  log alpha = -softplus(-2 lambda) / 2
        return self.t_of_log_alpha(-0.5 * torch.nn.functional.softplus(-2 * _as_tensor(lam)))

    def t_of_log_alpha(self, log_alpha):
        raise NotImplementedError

    def g2(self, t):
        # sigma^2 = 1 - alpha^2  =>  d sigma^2/dt = -2 f alpha^2, so g^2 = -2 f.
        return -2 * self.f(t)


class VPLinear(VariancePreserving):
    """VP-SDE with linear beta(t) (Song et al. 2021, arXiv:2011.13456, eq. 11; DDPM's continuous limit).

    log alpha_t = -t^2 (beta_max - beta_min)/4 - t beta_min/2 on t in (0, 1].
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3, t_max: float = 1.0):
        if not 0 < beta_min < beta_max:
            raise ValueError(f"VPLinear: need 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self._check_range(t_min, t_max, 0.0, 1.0)
        if t_min == 0.0:
            raise ValueError("VPLinear: t_min must be > 0 (sigma vanishes at t = 0)")

    def __repr__(self):
        return f"VPLinear(beta_min={self.beta_min}, beta_max={self.beta_max}, t_min={self.t_min}, t_max={self.t_max})"

    def log_alpha(self, t):
        t = _as_tensor(t)
        return -t**2 * (self.beta_max - self.beta_min) / 4 - t * self.beta_min / 2

    def f(self, t):
        t = _as_tensor(t)
        return -(self.beta_min + t * (self.beta_max - self.beta_min)) / 2

    def t_of_log_alpha(self, log_alpha):
        # Solve a t^2 + b t = L for t >= 0, in the cancellation-free form 2L / (b + sqrt(b^2 + 4 a L)).
        a, b = (self.beta_max - self.beta_min) / 4, self.beta_min / 2
        big_l = -_as_tensor(log_alpha)
        return 2 * big_l / (b + torch.sqrt(b * b + 4 * a * big_l))


class VPCosine(VariancePreserving):
    """Cosine schedule (Nichol & Dhariwal 2021, arXiv:2102.09672, eq. 17) in continuous time.

    alpha_t = cos((t + s)/(1 + s) pi/2) / cos(s/(1 + s) pi/2). alpha vanishes at t = 1, so t_max
    defaults to 0.9946 as in DPM-Solver's reference code.
    """

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946):
        if s <= 0:
            raise ValueError(f"VPCosine: s must be > 0, got {s}")
        self.s = float(s)
        self._check_range(t_min, t_max, 0.0, 1.0)
        if t_min == 0.0 or t_max == 1.0:
            raise ValueError("VPCosine: need 0 < t_min and t_max < 1 (sigma or alpha vanishes at the ends)")
        self._log_alpha_0 = math.log(math.cos(self.s / (1 + self.s) * math.pi / 2))

    def __repr__(self):
        return f"VPCosine(s={self.s}, t_min={self.t_min}, t_max={self.t_max})"

    def _angle(self, t):
        return (_as_tensor(t) + self.s) / (1 + self.s) * math.pi / 2

    def log_alpha(self, t):
        return torch.log(torch.cos(self._angle(t))) - self._log_alpha_0

    def f(self, t):
        return -torch.tan(self._angle(t)) * math.pi / (2 * (1 + self.s))

    def t_of_log_alpha(self, log_alpha):
        angle = torch.arccos(torch.exp(_as_tensor(log_alpha) + self._log_alpha_0))
        return angle * 2 * (1 + self.s) / math.pi - self.s


class DiscreteVP(VariancePreserving):
    """A model trained on N discrete steps (DDPM, Ho et al. 2020, arXiv:2006.11239) in continuous time.

    Step n = 0..N-1 sits at t_n = (n + 1)/N with alpha_{t_n}^2 = prod_{i<=n} (1 - beta_i), the
    convention of DPM-Solver (Lu et al. 2022, arXiv:2206.00927, App. D.1); log alpha is piecewise
    linear in t between those points and 0 at t = 0. ``network_time(t) = N t - 1`` maps back to the
    step index the network was trained on. ``steps_offset`` is the diffusers scheduler config's, which the
    ``leading`` spacing adds to its timesteps (1 for Stable Diffusion's configs, the default; 0 for diffusers').
    """

    def __init__(self, betas, t_min: float | None = None, t_max: float = 1.0, steps_offset: int = 1):
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 2 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("DiscreteVP: betas must be a 1-D sequence of at least 2 values in (0, 1)")
        self.n_train = betas.numel()
        self.steps_offset = int(steps_offset)
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        self._grid_t = torch.arange(self.n_train + 1, dtype=torch.float64) / self.n_train
        self._grid_log_alpha = torch.cat([torch.zeros(1, dtype=torch.float64), 0.5 * torch.log(self.alphas_cumprod)])
        self._slopes = torch.diff(self._grid_log_alpha) * self.n_train
        # the same tables as python floats, for the scalar times solvers step through (log_alpha's fast path)
        self._table = list(zip(self._grid_t.tolist(), self._grid_log_alpha.tolist(), self._slopes.tolist()))
        self._check_range(1.0 / self.n_train if t_min is None else t_min, t_max, 0.0, 1.0)
        if self.t_min == 0.0:
            raise ValueError("DiscreteVP: t_min must be > 0 (sigma vanishes at t = 0)")

    @classmethod
    def linear(cls, n_train: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, **kwargs):
        """The DDPM paper's linear beta schedule."""
        return cls(torch.linspace(beta_start, beta_end, n_train, dtype=torch.float64), **kwargs)

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod, **kwargs):
        """The schedule whose products of (1 - beta) are ``alphas_cumprod`` (a diffusers scheduler's, exactly:
        its float32 products, read in float64), so our solver steps on the grid that scheduler steps on."""
        cumulative = torch.as_tensor(alphas_cumprod).double()
        return cls(1 - cumulative / torch.cat([torch.ones(1, dtype=torch.float64), cumulative[:-1]]), **kwargs)

    def __repr__(self):
        return f"DiscreteVP(n_train={self.n_train}, t_min={self.t_min}, t_max={self.t_max})"

    def _segment(self, t):
        return torch.clamp(torch.floor(t * self.n_train).long(), 0, self.n_train - 1)

    def log_alpha(self, t):
        if isinstance(t, float):  # a solver's scalar time: the tensor path's float64 operations, in python
            t0, log_alpha0, slope = self._table[min(max(math.floor(t * self.n_train), 0), self.n_train - 1)]
            return torch.tensor(log_alpha0 + slope * (t - t0), dtype=torch.float64)
        t = _as_tensor(t)
        k = self._segment(t.detach().to(torch.float64).cpu())
        t0 = self._grid_t[k].to(t.device, t.dtype)
        return self._grid_log_alpha[k].to(t.device, t.dtype) + self._slopes[k].to(t.device, t.dtype) * (t - t0)

    def f(self, t):
        t = _as_tensor(t)
        return self._slopes[self._segment(t.detach().to(torch.float64).cpu())].to(t.device, t.dtype)

    def t_of_log_alpha(self, log_alpha):
        log_alpha = _as_tensor(log_alpha)
        flat = log_alpha.detach().to(torch.float64).cpu().reshape(-1)
        # _grid_log_alpha decreases; search on its negation, which increases.
        k = torch.clamp(torch.searchsorted(-self._grid_log_alpha, -flat) - 1, 0, self.n_train - 1).reshape(log_alpha.shape)
        t0 = self._grid_t[k].to(log_alpha.device, log_alpha.dtype)
        la0 = self._grid_log_alpha[k].to(log_alpha.device, log_alpha.dtype)
        return t0 + (log_alpha - la0) / self._slopes[k].to(log_alpha.device, log_alpha.dtype)

    def network_time(self, t):
        return _as_tensor(t) * self.n_train - 1


class VarianceExploding(Schedule):
    """alpha = 1. Subclasses give sigma, its derivative and its inverse."""

    def log_alpha(self, t):
        return torch.zeros_like(_as_tensor(t))

    def lambda_(self, t):
        return -torch.log(self.sigma(t))

    def t_of_lambda(self, lam):
        return self.t_of_sigma(torch.exp(-_as_tensor(lam)))

    def f(self, t):
        return torch.zeros_like(_as_tensor(t))

    def g2(self, t):
        return 2 * self.sigma(t) * self.dsigma(t)

    def dsigma(self, t):
        raise NotImplementedError

    def t_of_sigma(self, sigma):
        raise NotImplementedError


class VE(VarianceExploding):
    """VE-SDE (Song et al. 2021, arXiv:2011.13456, eq. 9): sigma_t = sigma_min (sigma_max/sigma_min)^t, t in [0, 1]."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 0.0, t_max: float = 1.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"VE: need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)
        self._check_range(t_min, t_max, 0.0, 1.0)

    def __repr__(self):
        return f"VE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, t_min={self.t_min}, t_max={self.t_max})"

    def sigma(self, t):
        return self.sigma_min * torch.exp(_as_tensor(t) * self._log_ratio)

    def dsigma(self, t):
        return self.sigma(t) * self._log_ratio

    def t_of_sigma(self, sigma):
        return torch.log(_as_tensor(sigma) / self.sigma_min) / self._log_ratio


class EDM(VarianceExploding):
    """Karras et al. 2022 (arXiv:2206.00364, Table 1): sigma_t = t, alpha = 1, t in [sigma_min, sigma_max]."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"EDM: need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._check_range(sigma_min, sigma_max, sigma_min, sigma_max)

    def __repr__(self):
        return f"EDM(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"

    def sigma(self, t):
        return _as_tensor(t).clone()

    def dsigma(self, t):
        return torch.ones_like(_as_tensor(t))

    def t_of_sigma(self, sigma):
        return _as_tensor(sigma).clone()


class FlowMatching(Schedule):
    """Rectified flow / flow matching (Liu et al. 2022, arXiv:2209.03003; Lipman et al. 2022, arXiv:2210.02747):
    x_t = (1 - sigma) x_0 + sigma eps, i.e. alpha = 1 - sigma, with the timestep shift of SD3 (Esser et al.
    2024, arXiv:2403.03206, eq. 23) as a reparametrisation of time,

        sigma_t = shift t / (1 + (shift - 1) t),   t in [t_min, t_max] within [0, 1],

    so that a spacing uniform in t is the shifted grid SD3, Flux and diffusers' FlowMatchEulerDiscreteScheduler
    sample on (shift = 1: sigma_t = t). ``for_resolution`` gives Flux's resolution-dependent shift. A network
    trained with timesteps sigma x n_train sees ``network_time(t) = n_train sigma_t``. At t = 1 alpha vanishes
    and lambda is -inf: only Euler-type updates (ddim, which is flow-matching Euler here) are defined there,
    so t_max defaults to 0.999, where every solver, the exponential integrators included, can start.
    """

    def __init__(self, shift: float = 1.0, t_min: float = 1e-3, t_max: float = 0.999, n_train: int = 1000):
        if not shift > 0:
            raise ValueError(f"FlowMatching: shift must be > 0, got {shift}")
        self.shift, self.n_train = float(shift), int(n_train)
        self._check_range(t_min, t_max, 0.0, 1.0)
        if self.t_min == 0.0:
            raise ValueError("FlowMatching: t_min must be > 0 (sigma vanishes at t = 0)")

    @classmethod
    def for_resolution(cls, image_seq_len: int, base_shift: float = 0.5, max_shift: float = 1.15,
                       base_seq_len: int = 256, max_seq_len: int = 4096, **kwargs) -> "FlowMatching":
        """Flux's resolution-dependent shift (diffusers' use_dynamic_shifting with exponential time shift):
        mu linear in the number of image tokens between (base_seq_len, base_shift) and (max_seq_len,
        max_shift), shift = exp(mu)."""
        slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
        return cls(shift=math.exp(base_shift + slope * (image_seq_len - base_seq_len)), **kwargs)

    def __repr__(self):
        return f"FlowMatching(shift={self.shift}, t_min={self.t_min}, t_max={self.t_max})"

    def sigma(self, t):
        t = _as_tensor(t)
        return self.shift * t / (1 + (self.shift - 1) * t)

    def dsigma(self, t):
        t = _as_tensor(t)
        return self.shift / (1 + (self.shift - 1) * t) ** 2

    def log_alpha(self, t):
        return torch.log1p(-self.sigma(t))

    def alpha(self, t):
        return 1 - self.sigma(t)

    def lambda_(self, t):
        sigma = self.sigma(t)
        return torch.log1p(-sigma) - torch.log(sigma)

    def t_of_sigma(self, sigma):
        sigma = _as_tensor(sigma)
        return sigma / (self.shift - (self.shift - 1) * sigma)

    def t_of_lambda(self, lam):
        return self.t_of_sigma(torch.sigmoid(-_as_tensor(lam)))

    def f(self, t):
        return -self.dsigma(t) / (1 - self.sigma(t))

    def g2(self, t):
        # d sigma^2/dt - 2 f sigma^2 = 2 sigma sigma' + 2 sigma' sigma^2 / (1 - sigma) = 2 sigma sigma' / (1 - sigma)
        sigma = self.sigma(t)
        return 2 * sigma * self.dsigma(t) / (1 - sigma)

    def network_time(self, t):
        return self.sigma(t) * self.n_train


SCHEDULES = {"VPLinear": VPLinear, "VPCosine": VPCosine, "VE": VE, "EDM": EDM, "DiscreteVP": DiscreteVP.linear,
             "FlowMatching": FlowMatching}
