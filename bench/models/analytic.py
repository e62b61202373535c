"""Gaussian mixtures with diagonal components: exact ground truth under any schedule.

If x_0 ~ sum_k w_k N(mu_k, diag(v_k)) then x_t = alpha_t x_0 + sigma_t eps is the mixture
sum_k w_k N(alpha_t mu_k, diag(alpha_t^2 v_k + sigma_t^2)), so p_t, its score, the optimal eps
prediction eps = -sigma_t score, exact samples of p_0 and the moments of p_t are all closed form.
Quadratic forms are computed with matrix products, so memory is O(batch x components), which
keeps the 1,797-component digits mixture cheap.

A mixture whose components carry class labels is class-conditional: p(x | y) is the mixture of class y's
components (weights renormalised), p(x) the whole mixture, so the conditional and unconditional scores, and any
classifier-free guided combination of them, are exact too.
"""
from __future__ import annotations

import math

import torch

from bench.models.conditioning import ClassConditioning
from solvers.model import DiffusionModel
from solvers.schedules import Schedule


class GaussianMixture:
    """sum_k weights[k] N(means[k], diag(variances[k])) over events of shape ``event_shape``.

    ``means``: (K, D); ``variances``: a number, (K,) isotropic or (K, D) diagonal; ``weights``: (K,)
    or None for uniform; ``component_classes``: (K,) class labels 0..C-1 that make it class-conditional, named by
    ``class_names``. All math runs in the means' dtype (float64 by default).
    """

    dataset = "synthetic"  # what the means come from; presets name their data
    prediction = "eps"  # of conditional_net

    def __init__(self, means, variances, weights=None, event_shape: tuple[int, ...] | None = None,
                 component_classes=None, class_names=None):
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
        self.conditioning, self.component_classes = None, None
        if component_classes is not None:
            classes = torch.as_tensor(component_classes, dtype=torch.int64)
            n_classes = int(classes.max()) + 1
            if classes.shape != (k,) or int(classes.min()) < 0 or len(torch.unique(classes)) != n_classes:
                raise ValueError(f"component_classes must label each of the {k} components with 0..C-1, every "
                                 f"class used, got {classes.tolist()}")
            names = tuple(class_names) if class_names is not None else tuple(str(c) for c in range(n_classes))
            if len(names) != n_classes:
                raise ValueError(f"{len(names)} class names for {n_classes} classes")
            self.component_classes = classes
            self.conditioning = ClassConditioning(n_classes, names, null_class=n_classes)

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

    def _per_time(self, x: torch.Tensor, t, schedule: Schedule | None, fn, labels: torch.Tensor | None = None):
        """Apply fn(x_rows, alpha, sigma) per distinct time (one group when t is a scalar); with ``labels`` (one per
        sample), fn(x_rows, alpha, sigma, labels_rows)."""
        x = self._flat(x)

        def call(rows_x, alpha, sigma, rows=None):
            if labels is None:
                return fn(rows_x, alpha, sigma)
            return fn(rows_x, alpha, sigma, labels if rows is None else labels[rows.to(labels.device)])

        if schedule is None:
            return call(x, 1.0, 0.0)
        if not (isinstance(t, torch.Tensor) and t.ndim > 0):
            t = float(t)
            return call(x, float(schedule.alpha(t)), float(schedule.sigma(t)))
        t = t.detach().to("cpu", torch.float64)
        if bool((t == t[0]).all()):  # the usual case: every sample at the same time
            t = float(t[0])
            return call(x, float(schedule.alpha(t)), float(schedule.sigma(t)))
        out = None
        for value in torch.unique(t).tolist():
            rows = (t == value).to(x.device)
            part = call(x[rows], float(schedule.alpha(value)), float(schedule.sigma(value)), rows)
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

    def _score_rows(self, rows: torch.Tensor, alpha: float, sigma: float, labels: torch.Tensor | None = None):
        """The score of the rows; with ``labels``, of p(x | y) for each row's label (the null class: p(x))."""
        log_joint, precision, scaled_means = self._log_resp_and_terms(rows, alpha, sigma)
        if labels is not None:
            classes = self.component_classes.to(labels.device)
            allowed = (classes[None, :] == labels[:, None]) | (labels[:, None] == self.conditioning.null_class)
            log_joint = log_joint.masked_fill(~allowed.to(log_joint.device), -math.inf)
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

    def conditional_eps(self, x: torch.Tensor, schedule: Schedule, t, labels: torch.Tensor) -> torch.Tensor:
        """The exact eps of p_t(x | y) per sample, y = ``labels`` (the null class: of p_t(x))."""
        if self.conditioning is None:
            raise ValueError("conditional_eps: this mixture has no component classes")
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if labels.shape != (x.shape[0],):
            raise ValueError(f"conditional_eps: need one label per sample ({x.shape[0]},), got {tuple(labels.shape)}")

        def eps_rows(rows, alpha, sigma, rows_labels):
            return -sigma * self._score_rows(rows, alpha, sigma, rows_labels)

        return self._per_time(x, t, schedule, eps_rows, labels).reshape(x.shape)

    def conditional_net(self, schedule: Schedule):
        """The exact class-conditional network ``net(x, t, labels)`` (eps prediction) under ``schedule``."""
        return lambda x, t, labels: self.conditional_eps(x, schedule, t, labels)

    def subset(self, components) -> "GaussianMixture":
        """The mixture restricted to ``components`` (weights renormalised): a class-conditional p(x | y)."""
        return GaussianMixture(self.means[components], self.variances[components], self.log_weights[components].exp(),
                               self.event_shape)

    def model(self, schedule: Schedule) -> DiffusionModel:
        """A DiffusionModel whose network is this mixture's exact eps under ``schedule``."""
        return DiffusionModel(lambda x, t: self.eps(x, schedule, t), schedule, prediction="eps")
