"""Guidance and conditioning as model wrappers, so every solver can use them.

- ``classifier_free``: (1 + w) eps(x, t, c) - w eps(x, t, null) (Ho & Salimans 2022, arXiv:2207.12598,
  eq. 6), both halves in one batched network call.
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


def classifier_free(net, schedule, prediction: str, *, cond: torch.Tensor, null: torch.Tensor, w: float) -> DiffusionModel:
    """A DiffusionModel for ``net(x, t, c)`` guided with weight ``w`` towards ``cond`` against ``null``.

    ``cond`` and ``null`` hold one condition per sample (first dimension = batch). The two halves go
    through the network as one batch of 2B, counted as one evaluation. w = 0 is the conditional model.
    Any prediction type works, since each is affine in eps at fixed (x, t).
    """
    if cond.shape != null.shape:
        raise ValueError(f"classifier_free: cond and null need the same shape, got {tuple(cond.shape)} and {tuple(null.shape)}")

    def guided(x, t):
        out = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, null]))
        conditional, unconditional = out.chunk(2)
        return (1 + w) * conditional - w * unconditional

    return DiffusionModel(guided, schedule, prediction)


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
