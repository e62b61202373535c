"""Gaussian mixtures with diagonal components: exact ground truth under any schedule.

If x_0 ~ sum_k w_k N(mu_k, diag(v_k)) then x_t = alpha_t x_0 + sigma_t eps is the mixture
sum_k w_k N(alpha_t mu_k, diag(alpha_t^2 v_k + sigma_t^2)), so p_t, its score, the optimal eps
prediction eps = -sigma_t score, exact samples of p_0 and the moments of p_t are all closed form.
Quadratic forms are computed with matrix products, so memory is O(batch x components), which
keeps the 1,797-component digits mixture cheap.
"""
from __future__ import annotations

import math

import torch

from solvers.model import DiffusionModel
from solvers.schedules import Schedule


class GaussianMixture:
    """sum_k weights[k] N(means[k], diag(variances[k])) over events of shape ``event_shape``.

    ``means``: (K, D); ``variances``: a number, (K,) isotropic or (K, D) diagonal; ``weights``: (K,)
    or None for uniform. All math runs in the means' dtype (float64 by default).
    """

    dataset = "synthetic"  # what the means come from; presets name their data

    def __init__(self, means, variances, weights=None, event_shape: tuple[int, ...] | None = None):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (components, dim), got {tuple(means.shape)}")
        k, d = means.shape
        variances = torch.as_tensor(variances, dtype=torch.float64)
        if variances.ndim == 0:
            variances = variances.expand(k)
        if variances.ndim == 1:
            variances = variances[:, None].expand(k, d)
        if variances.shape != (k, d) or not bool((variances > 0).all()):
            raise ValueError(f"variances must be positive with shape (), ({k},) or ({k}, {d}), got {tuple(variances.shape)}")
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (k,) or not bool((weights > 0).all()):
            raise ValueError(f"weights must be positive with shape ({k},), got {tuple(weights.shape)}")
        self.means, self.variances = means, variances.contiguous()
        self.log_weights = torch.log(weights / weights.sum())
        self._cast: dict = {}
        self.isotropic = bool((self.variances == self.variances[:, :1]).all())
        self.event_shape = tuple(event_shape) if event_shape is not None else (d,)
        if math.prod(self.event_shape) != d:
            raise ValueError(f"event_shape {self.event_shape} does not hold {d} values")

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    # -- exact samples and moments ------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact samples of p_0, shape (n, *event_shape)."""
        k = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype)
        return (self.means[k] + self.variances[k].sqrt() * z).reshape(n, *self.event_shape)

    def moments(self, schedule: Schedule | None = None, t: float | None = None):
        """Mean (D,) and covariance (D, D) of p_t (of p_0 when no schedule is given)."""
        alpha, sigma = (1.0, 0.0) if schedule is None else (float(schedule.alpha(t)), float(schedule.sigma(t)))
        w = self.log_weights.exp()
        means, variances = alpha * self.means, alpha**2 * self.variances + sigma**2
        mean = w @ means
        centred = means - mean
        cov = (centred.T * w) @ centred + torch.diag(w @ variances)
        return mean, cov

    # -- exact density and score ----------------------------------------------------------------
    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], self.dim)
        return x if x.is_floating_point() else x.to(self.means.dtype)

    def _params(self, like: torch.Tensor):
        """(means, variances, log_weights) in x's dtype and device: float32 sampling computes in float32."""
        key = (like.dtype, like.device)
        if key not in self._cast:
            self._cast[key] = tuple(p.to(like.device, like.dtype) for p in (self.means, self.variances, self.log_weights))
        return self._cast[key]

    def _log_resp_and_terms(self, x: torch.Tensor, alpha: float, sigma: float):
        """Per-component log(w_k N(x; alpha mu_k, var_k)) as (B, K), plus the precisions (K, D) or, for
        isotropic components, (K, 1), and the precision-scaled means alpha mu_k / var_k (K, D)."""
        means, variances, log_weights = self._params(x)
        if self.isotropic:  # one (B, D) x (D, K) product instead of two
            precision = 1.0 / (alpha**2 * variances[:, :1] + sigma**2)  # (K, 1)
            squared_distance = ((x * x).sum(1, keepdim=True) - 2 * alpha * x @ means.T
                                + alpha**2 * (means * means).sum(1))
            quad = squared_distance * precision.T
            log_det_precision = self.dim * torch.log(precision[:, 0])
        else:
            precision = 1.0 / (alpha**2 * variances + sigma**2)  # (K, D)
            quad = (x * x) @ precision.T - 2 * alpha * x @ (means * precision).T + alpha**2 * (means * means * precision).sum(1)
            log_det_precision = torch.log(precision).sum(1)
        log_norm = 0.5 * (log_det_precision - self.dim * math.log(2 * math.pi))
        return log_weights + log_norm - 0.5 * quad, precision, alpha * means * precision

    def _per_time(self, x: torch.Tensor, t, schedule: Schedule | None, fn):
        """Apply fn(x_rows, alpha, sigma) per distinct time (one group when t is a scalar)."""
        x = self._flat(x)
        if schedule is None:
            return fn(x, 1.0, 0.0)
        if not (isinstance(t, torch.Tensor) and t.ndim > 0):
            t = float(t)
            return fn(x, float(schedule.alpha(t)), float(schedule.sigma(t)))
        t = t.detach().to("cpu", torch.float64)
        if bool((t == t[0]).all()):  # the usual case: every sample at the same time
            return self._per_time(x, float(t[0]), schedule, fn)
        out = None
        for value in torch.unique(t).tolist():
            rows = (t == value).to(x.device)
            part = fn(x[rows], float(schedule.alpha(value)), float(schedule.sigma(value)))
            if out is None:
                out = part.new_empty((x.shape[0],) + part.shape[1:])
            out[rows] = part
        return out

    def component_log_joint(self, x: torch.Tensor, schedule: Schedule | None = None, t=None) -> torch.Tensor:
        """log(w_k N(x; alpha_t mu_k, alpha_t^2 v_k + sigma_t^2)) per sample and component, shape (B, K)."""
        return self._per_time(x, t, schedule, lambda rows, a, s: self._log_resp_and_terms(rows, a, s)[0])

    def log_prob(self, x: torch.Tensor, schedule: Schedule | None = None, t=None) -> torch.Tensor:
        """Exact log p_t(x) per sample (log p_0 without a schedule)."""
        return torch.logsumexp(self.component_log_joint(x, schedule, t), 1)

    def _score_rows(self, rows: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        log_joint, precision, scaled_means = self._log_resp_and_terms(rows, alpha, sigma)
        resp = torch.softmax(log_joint, dim=1)
        return resp @ scaled_means - rows * (resp @ precision)

    def score(self, x: torch.Tensor, schedule: Schedule, t) -> torch.Tensor:
        """Exact grad_x log p_t(x), shaped like x."""
        return self._per_time(x, t, schedule, self._score_rows).reshape(x.shape)

    def eps(self, x: torch.Tensor, schedule: Schedule, t) -> torch.Tensor:
        """The optimal noise prediction eps = -sigma_t grad log p_t(x)."""
        def eps_rows(rows, alpha, sigma):
            return -sigma * self._score_rows(rows, alpha, sigma)

        return self._per_time(x, t, schedule, eps_rows).reshape(x.shape)

    def subset(self, components) -> "GaussianMixture":
        """The mixture restricted to ``components`` (weights renormalised): a class-conditional p(x | y)."""
        return GaussianMixture(self.means[components], self.variances[components], self.log_weights[components].exp(),
                               self.event_shape)

    def model(self, schedule: Schedule) -> DiffusionModel:
        """A DiffusionModel whose network is this mixture's exact eps under ``schedule``."""
        return DiffusionModel(lambda x, t: self.eps(x, schedule, t), schedule, prediction="eps")
