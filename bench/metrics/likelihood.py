"""The exact likelihood of data under a diffusion model, through the probability-flow ODE.

Song et al. 2021 (arXiv:2011.13456, Sec. 4.3 and App. D.2), the instantaneous change of variables of
Chen et al. 2018 (arXiv:1806.07366, Thm. 1): along dx/dt = v(x, t), the PF-ODE drift (DESIGN.md's eta
family at eta = 0), d log p_t(x(t)) / dt = -div v. Integrating x from the data at t_min to t_max,

    log p_{t_min}(x) = log N(x(t_max); 0, sigma_{t_max}^2 I) + int_{t_min}^{t_max} div v(x(t), t) dt,

with the prior the samplers start from. The divergence is exact (one autograd pass per dimension) up to
``EXACT_DIVERGENCE_MAX_DIM`` dimensions, else Hutchinson's estimate z^T (dv/dx) z with one Rademacher z
per sample held fixed along the path (Grathwohl et al. 2019, arXiv:1810.01367): unbiased, its spread is
part of the per-sample spread the standard error is taken over.

The augmented ODE runs on the general-purpose integrators the registry has (``INTEGRATORS``: a fixed
time grid, or adaptive with rtol = atol = the config's tolerance), so a table shows how the likelihood
depends on the solver; exponential integrators and multistep solvers are built for the sampling
direction of x alone and are not offered.
"""
from __future__ import annotations

import math

import torch
import torchdiffeq

from bench.metrics.registry import F64, Inputs, Metric, register

# registry name -> torchdiffeq method that integrates the augmented ODE the same way
INTEGRATORS = {"euler": "euler", "heun": "heun2", "midpoint": "midpoint", "rk4": "rk4", "dopri5": "dopri5",
               "bosh3": "bosh3", "adaptive_heun": "adaptive_heun", "dopri8": "dopri8"}
EXACT_DIVERGENCE_MAX_DIM = 64


def _divergence(drift: torch.Tensor, x: torch.Tensor, probe: torch.Tensor | None) -> torch.Tensor:
    """Per-sample div of ``drift`` w.r.t. ``x``: exact (``probe`` None) or z^T J z with z = ``probe``."""
    if probe is not None:
        (jz,) = torch.autograd.grad(drift, x, probe)
        return (jz * probe).flatten(1).sum(1)
    dim = x[0].numel()
    basis = torch.eye(dim, dtype=x.dtype, device=x.device)[:, None, :].expand(dim, x.shape[0], dim)
    (rows,) = torch.autograd.grad(drift.flatten(1), x, basis, is_grads_batched=True)  # rows[i] = e_i^T dv/dx
    return rows.flatten(2).diagonal(dim1=0, dim2=2).sum(1)


def pf_ode_nll(model, x: torch.Tensor, solver: str, ts: torch.Tensor | None = None, tolerance: float | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample negative log-likelihood in nats of ``x`` (data at ``model.schedule.t_min``) under the model.

    ``solver``: a key of INTEGRATORS; fixed-step ones integrate over the grid ``ts`` (sampling order, t_max
    first, as the spacings give it), adaptive ones need ``tolerance``. ``generator`` draws the Hutchinson
    probes where the dimension exceeds EXACT_DIVERGENCE_MAX_DIM."""
    if solver not in INTEGRATORS:
        raise ValueError(f"nll: {solver!r} does not integrate the augmented PF-ODE; use one of {', '.join(INTEGRATORS)}")
    schedule, dim = model.schedule, x[0].numel()
    probe = None
    if dim > EXACT_DIVERGENCE_MAX_DIM:
        probe = torch.randint(0, 2, x.shape, generator=generator).to(x) * 2 - 1

    def rhs(t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        with torch.enable_grad():
            y = state[0].detach().requires_grad_(True)
            drift = model.drift(y, float(t))
            return drift.detach(), _divergence(drift, y, probe).detach()

    if ts is None:  # step_t pins the end and first_step replaces torchdiffeq's initial-step probe: neither then
        # evaluates the model past t_max, outside the range it was trained on (solvers.adaptive does the same)
        times = torch.tensor([schedule.t_min, schedule.t_max], dtype=x.dtype, device=x.device)
        options = {"rtol": tolerance, "atol": tolerance,
                   "options": {"step_t": times, "first_step": (schedule.t_max - schedule.t_min) / 64}}
    else:
        times, options = ts.flip(0), {}  # fixed-step methods step from grid point to grid point
    start = (x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
    path = torchdiffeq.odeint(rhs, start, times.to(device=x.device, dtype=x.dtype), method=INTEGRATORS[solver], **options)
    end_x, integral = path[0][-1], path[1][-1]
    sigma_max = float(schedule.sigma(schedule.t_max))
    prior = -0.5 * end_x.flatten(1).double().square().sum(1) / sigma_max**2 - dim * (math.log(sigma_max) + 0.5 * math.log(2 * math.pi))
    return -(prior + integral.double())


def bits_per_dim(nll: torch.Tensor, dim: int) -> torch.Tensor:
    """Bits per dimension of 8-bit images from the NLL (nats) of their dequantised values in [-1, 1]."""
    return (nll + dim * math.log(127.5)) / (dim * math.log(2))


def dequantize(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """8-bit images in [-1, 1] (k / 127.5 - 1) with uniform noise within each pixel's bin: (k + u) / 127.5 - 1."""
    pixels = torch.round((images.double() + 1) * 127.5).clamp(0, 255)
    return ((pixels + torch.rand(images.shape, generator=generator, dtype=torch.float64)) / 127.5 - 1).to(images.dtype)


NLL_SEED = 30_000  # held-out points and Hutchinson probes come from this offset plus the config's seed


def _nll(inputs: Inputs) -> dict:
    """NLL of held-out data under the model through the PF-ODE integrated by the config's solver: exact samples of
    p_0 for the analytic models, dequantised Fashion-MNIST test images for a network."""
    from solvers import get_solver
    from solvers.spacing import timesteps

    from bench.models.analytic import GaussianMixture
    from bench.models.data import fashion_mnist
    from bench.models.networks import FASHION_MNIST

    cfg, source, model = inputs.cfg, inputs.source, inputs.model
    if cfg.solver not in INTEGRATORS:
        inputs.notes.append(f"no nll: {cfg.solver} does not integrate the augmented PF-ODE ({', '.join(INTEGRATORS)} do)")
        return {}
    if get_solver(cfg.solver).draws_noise(cfg.eta, dict(cfg.options)):
        inputs.notes.append("no nll: it is the probability-flow ODE's, measured on the eta = 0 rows")
        return {}
    generator = torch.Generator().manual_seed(NLL_SEED + cfg.seed)
    if isinstance(source, GaussianMixture):
        data, real_images = source.sample(cfg.n_samples, generator), False
    elif not str(getattr(source, "dataset", None)).startswith(FASHION_MNIST):
        inputs.notes.append("no nll: which data this network models is not known, and a network's nll is of "
                            "Fashion-MNIST test images (the shipped UNets, folders written by python -m bench train)")
        return {}
    else:
        held_out = inputs.sweep.setdefault("held_out", {})
        key = (cfg.data_dir, source.event_shape[-1], cfg.image_resize)
        if key not in held_out:  # read once per sweep, not once per config
            held_out[key] = fashion_mnist("test", data_dir=cfg.data_dir, size=key[1], resize=cfg.image_resize)
        test = held_out[key]
        chosen = test[torch.randperm(len(test), generator=generator)[:cfg.n_samples]]
        data, real_images = dequantize(chosen, generator), True
    data = data.to(device=inputs.device, dtype=getattr(torch, cfg.dtype))
    ts = timesteps(cfg.spacing, cfg.steps, model.schedule) if cfg.steps is not None else None
    per_sample = torch.cat([pf_ode_nll(model, chunk, cfg.solver, ts, cfg.tolerance, generator).cpu()
                            for chunk in data.split(cfg.batch_size)])
    dim = data[0].numel()
    out = {"nll": per_sample.mean().item() / dim, "nll_se": per_sample.std().item() / dim / math.sqrt(len(per_sample))}
    if real_images:
        bits = bits_per_dim(per_sample, dim)
        out.update(nll_bpd=bits.mean().item(), nll_bpd_se=bits.std().item() / math.sqrt(len(bits)))
    return out


register(Metric(
    "nll", "negative log-likelihood per dimension (nats) of n_samples held-out points (exact samples of p_0; for a "
    "network that models Fashion-MNIST, the shipped UNets or a folder of python -m bench train, its test images, "
    "dequantised; no other network's data is known) through the PF-ODE integrated by the config's solver, exact "
    "divergence up to 64 dimensions, else Hutchinson; nll_bpd bits/dim of the images (eta = 0 rows of euler, heun, "
    "midpoint, rk4 and the adaptive solvers)",
    {"nll": (F64, "mean negative log-likelihood per dimension (nats) of the held-out points"),
     "nll_se": (F64, "its standard error (over the held-out points)"),
     "nll_bpd": (F64, "the same in bits per dimension of the 8-bit images (networks)"),
     "nll_bpd_se": (F64, "its standard error")},
    ("dataset",), _nll, better={"nll": "lower", "nll_bpd": "lower"}))
