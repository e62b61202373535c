"""Guidance and conditioning as model wrappers, so every solver can use them.

- ``GuidedModel``: classifier-free guidance, eps = eps(x, t, null) + s (eps(x, t, c) - eps(x, t, null))
  (Ho & Salimans 2022, arXiv:2207.12598, eq. 6 with w = s - 1: the scale as diffusers and ComfyUI give it,
  s = 1 the conditional model, s = 0 the unconditional one), both halves in one batched network call,
  optionally only on an interval of noise levels (Kynkaanniemi et al. 2024, arXiv:2404.07724).
- ``classifier_guided``: score + s grad_x log p(y | x_t) (Dhariwal & Nichol 2021, arXiv:2105.05233,
  Sec. 4.1; Song et al. 2021, arXiv:2011.13456, eq. 14).
- ``inpaint``: sampling with known pixels imposed, noised to the current time (Song et al. 2021,
  App. I.2; Lugmayr et al. 2022 without resampling).
- ``slerp``: spherical interpolation between two x_T, for interpolation with deterministic solvers
  (Song, Meng & Ermon 2021, arXiv:2010.02502, Sec. 5.3).
"""
from __future__ import annotations

import torch

from solvers.model import DiffusionModel
from solvers.registry import sample


class GuidedModel(DiffusionModel):
    """Classifier-free guidance of ``net(x, t, c)`` at scale ``scale`` towards per-sample conditions against
    ``null`` (one condition, the unconditional one), in the output's own prediction type: every prediction type
    is affine in eps at fixed (x, t), so guiding the output is guiding eps.

    The conditions of the batch being solved are set with ``condition_on(conditions)`` (first dimension = batch);
    one buffer is kept per batch size, so a CUDA graph captured on it reads the conditions of each replay.
    A guided evaluation is one network call on the 2B batch [x; x] with [c; null]: one NFE, two network passes
    (``passes`` counts them; scales 0 and 1 need one pass). ``interval = (lo, hi)`` guides only where lo < sigma~
    <= hi, sigma~ = sigma_t / alpha_t, and uses the conditional model alone (one pass) elsewhere (Kynkaanniemi
    et al. 2024, arXiv:2404.07724; ComfyUI's per-sigma-range CFG). ``guided_and_unconditional`` gives CFG++
    samplers both predictions from one call (always two passes, as ComfyUI's disable_cfg1_optimization).
    """

    def __init__(self, net, schedule, prediction: str, *, null: torch.Tensor, scale: float,
                 interval: tuple[float, float] | None = None):
        if not scale >= 0:
            raise ValueError(f"GuidedModel: scale must be >= 0 (1: the conditional model), got {scale!r}")
        if interval is not None and not 0 <= interval[0] < interval[1]:
            raise ValueError(f"GuidedModel: interval must be (lo, hi) with 0 <= lo < hi in sigma~, got {interval!r}")
        super().__init__(self._guided, schedule, prediction)
        self.conditional_net, self.null, self.scale, self.interval = net, null, float(scale), interval
        self.passes = 0
        self._buffers: dict = {}  # batch size -> (conditions, null repeated)
        self._scale_now = None  # the scale of the evaluation in progress (eps_and_x0 sets it from t)

    def __repr__(self):
        return f"GuidedModel(scale={self.scale:g}, interval={self.interval}, prediction={self.prediction!r})"

    def reset_nfe(self) -> None:
        self.nfe = self.passes = 0

    def with_network(self, transform) -> "GuidedModel":
        guided = GuidedModel(transform(self.conditional_net), self.schedule, self.prediction, null=self.null,
                             scale=self.scale, interval=self.interval)
        guided._buffers = self._buffers  # the same conditions, whichever mode runs the network
        return guided

    def condition_on(self, conditions: torch.Tensor) -> None:
        """The conditions of the next batch (one per sample), copied into this batch size's buffer."""
        batch = conditions.shape[0]
        if batch in self._buffers and self._buffers[batch][0].shape == conditions.shape:
            self._buffers[batch][0].copy_(conditions)
        else:
            null = self.null.to(conditions.device).expand(batch, *self.null.shape).clone()
            self._buffers[batch] = (conditions.clone(), null)

    def _conditions(self, batch: int):
        if batch not in self._buffers:
            raise RuntimeError(f"GuidedModel: no conditions for a batch of {batch}; call condition_on first")
        return self._buffers[batch]

    def scale_at(self, t):
        """The guidance scale at t: ``scale`` inside the interval, 1 outside (a (batch,) tensor for per-sample t)."""
        if self.interval is None:
            return self.scale
        lo, hi = self.interval
        if isinstance(t, torch.Tensor) and t.ndim > 0:
            t64 = t.to(torch.float64)
            sigma_tilde = self.schedule.sigma(t64) / self.schedule.alpha(t64)
            return torch.where((sigma_tilde > lo) & (sigma_tilde <= hi), self.scale, 1.0)
        alpha, sigma = self.schedule.alpha_sigma(float(t))
        return self.scale if lo < sigma / alpha <= hi else 1.0

    def eps_and_x0(self, x: torch.Tensor, t):
        self._scale_now = self.scale_at(t)
        try:
            return super().eps_and_x0(x, t)
        finally:
            self._scale_now = None

    def _pair(self, x: torch.Tensor, t: torch.Tensor):
        """(conditional, unconditional) outputs from one network call on the doubled batch."""
        conditions, null = self._conditions(x.shape[0])
        out = self.conditional_net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([conditions, null]))
        self.passes += 2
        return out.chunk(2)

    def _guided(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network as the solvers see it: the guided output at (x, t) (at ``scale`` when called directly)."""
        scale = self.scale if self._scale_now is None else self._scale_now
        if not isinstance(scale, torch.Tensor) and scale in (0.0, 1.0):
            conditions, null = self._conditions(x.shape[0])
            self.passes += 1
            return self.conditional_net(x, t, conditions if scale == 1.0 else null)
        conditional, unconditional = self._pair(x, t)
        if isinstance(scale, torch.Tensor):
            scale = scale.to(x.device, x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
        return unconditional + scale * (conditional - unconditional)

    def guided_and_unconditional(self, x: torch.Tensor, t):
        """((eps, x0) guided at the scale for t, (eps, x0) unconditional) from one network call: one NFE."""
        conditional, unconditional = self._pair(x, self._time_batch(x, t))
        self.nfe += 1
        scale = self.scale_at(t)
        if isinstance(scale, torch.Tensor):
            scale = scale.to(x.device, x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
        guided = unconditional + scale * (conditional - unconditional)
        return self.convert(x, t, guided), self.convert(x, t, unconditional)


def classifier_guided(model: DiffusionModel, log_likelihood, y, scale: float = 1.0) -> DiffusionModel:
    """A DiffusionModel whose score is model.score + scale * grad_x log p(y | x_t).

    ``log_likelihood(x, t, y)`` returns log p(y | x_t) per sample (a noise-aware classifier). Its
    gradient is taken with autograd; only the diffusion network's calls count as NFE.
    """
    def guided_eps(x, t):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(log_likelihood(x_in, t, y).sum(), x_in)
        _, sigma = model.coefficients(x, t)
        return model.eps(x, t) - scale * sigma * grad

    return DiffusionModel(guided_eps, model.schedule, "eps")


def inpaint(name: str, model: DiffusionModel, x: torch.Tensor, ts: torch.Tensor, *, mask: torch.Tensor,
            known: torch.Tensor, generator: torch.Generator | None = None, **kwargs) -> torch.Tensor:
    """Sample with solver ``name`` while pixels where ``mask`` is 1 follow ``known``.

    Before every network evaluation at time t the known pixels are replaced by alpha_t known +
    sigma_t z, with one fixed z per run (drawn from ``generator``), which is the projection after
    each step applied where the network reads it, so multistep and multistage solvers keep their
    history; the result carries ``known`` exactly in the masked pixels. ``kwargs`` go to ``sample``.
    """
    if mask.shape != x.shape[1:] and mask.shape != x.shape:
        raise ValueError(f"inpaint: mask must have shape {tuple(x.shape[1:])} or {tuple(x.shape)}, got {tuple(mask.shape)}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("inpaint: mask must hold only 0 and 1")
    if known.shape != x.shape and known.shape != x.shape[1:]:
        raise ValueError(f"inpaint: known must have shape {tuple(x.shape[1:])} or {tuple(x.shape)}, got {tuple(known.shape)}")
    mask, known = mask.to(x), known.to(x)
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device if generator else x.device).to(x)

    def projected(x_t, t):
        alpha, sigma = model.coefficients(x_t, t)
        return model.net(mask * (alpha * known + sigma * z) + (1 - mask) * x_t, t)

    wrapped = DiffusionModel(projected, model.schedule, model.prediction)
    out = sample(name, wrapped, x, ts, generator=generator, **kwargs)
    model.nfe += wrapped.nfe
    return mask * known + (1 - mask) * out


def slerp(x_a: torch.Tensor, x_b: torch.Tensor, weight: float) -> torch.Tensor:
    """Spherical interpolation per sample: weight 0 gives x_a, 1 gives x_b."""
    a, b = x_a.flatten(1), x_b.flatten(1)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1, 1))[:, None]
    out = (torch.sin((1 - weight) * theta) * a + torch.sin(weight * theta) * b) / torch.sin(theta)
    return out.reshape(x_a.shape)
