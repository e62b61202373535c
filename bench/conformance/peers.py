"""Running the peers users compare us with (k-diffusion 0.1.1.post1's samplers, diffusers' schedulers) on our
model, time grid and x_T, so that their samples and ours can be compared value for value.

k-diffusion works in EDM's variables: x~ = x / alpha_t and sigma~ = sigma_t / alpha_t = exp(-lambda_t), with a
denoiser D(x~, sigma~) = x0. diffusers' schedulers step on their own discrete grid of training timesteps under
their betas: ``diffusers_run`` builds the same grid and schedule (a DiscreteVP from the scheduler's own
alphas_cumprod) for our solver. Used by the conformance report (bench.conformance.report) and the tests.
"""
from __future__ import annotations

import importlib.util
import sys
import types

import torch

from solvers import sample
from solvers.schedules import DiscreteVP


def k_diffusion_sampling():
    """k-diffusion 0.1.1.post1's ``sampling`` module, loaded without its package ``__init__`` (which imports
    clean-fid, wandb and other extras `make setup` does not install); ImportError with the fix if absent."""
    if "k_diffusion.sampling" not in sys.modules:
        spec = importlib.util.find_spec("k_diffusion")
        if spec is None:
            raise ImportError("k-diffusion is an optional peer: `make setup` installs it "
                              "(pip install --no-deps k-diffusion==0.1.1.post1)")
        folder = spec.submodule_search_locations[0]
        package = types.ModuleType("k_diffusion")
        package.__path__ = [folder]
        sys.modules["k_diffusion"] = package
        for name in ("utils", "sampling"):
            module_spec = importlib.util.spec_from_file_location(f"k_diffusion.{name}", f"{folder}/{name}.py")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[f"k_diffusion.{name}"] = module
            module_spec.loader.exec_module(module)
            setattr(package, name, module)
    return sys.modules["k_diffusion"].sampling


def k_diffusion_run(sampler, model, x_T: torch.Tensor, ts: torch.Tensor, **kwargs) -> torch.Tensor:
    """A k-diffusion-style ``sampler(denoiser, x~, sigmas~, disable=True, **kwargs)`` on our model and grid,
    mapped back to our variables (x = alpha x~ at the last time)."""
    schedule = model.schedule

    def denoiser(x_tilde, sigma_tilde):
        t = schedule.t_of_lambda(-torch.log(sigma_tilde[0]))
        return model.x0(float(schedule.alpha(t)) * x_tilde, float(t))

    sigmas = torch.exp(-schedule.lambda_(ts))
    alpha_start, alpha_end = float(schedule.alpha(ts[0])), float(schedule.alpha(ts[-1]))
    return alpha_end * sampler(denoiser, x_T / alpha_start, sigmas, disable=True, **kwargs)


class ReplayedNoise:
    """The same standard normal draws, in order, for our solver (noise(t, s, like)) and k-diffusion's
    noise_sampler(sigma, sigma_next): both draw the same number per step, in the same order, and scale them
    themselves. ``all_used()`` says whether both consumed every draw."""

    def __init__(self, shape, draws: int, seed: int = 5):
        g = torch.Generator().manual_seed(seed)
        self.draws = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(draws)]
        self.ours, self.theirs = iter(self.draws), iter(self.draws)

    def __call__(self, t, s, like):
        return next(self.ours)

    def sampler(self, sigma, sigma_next):
        return next(self.theirs)

    def all_used(self) -> bool:
        return next(self.ours, None) is None and next(self.theirs, None) is None


def diffusers_run(scheduler_name: str, config: dict, make_model, x_T_of, name: str, options: dict, n: int = 10,
                  eta: float | None = None, seed: int | None = None, replayed: bool = False):
    """(ours, diffusers') samples: ``scheduler_name``'s own loop (or a subclass of a scheduler, given as the class), ``n`` steps, under the scheduler's linear betas
    (as a DiscreteVP: its float32 alphas_cumprod, exactly), and ``name`` at ``eta`` on the same discrete grid from
    the same x_T, ending at timestep 0. ``make_model(schedule)`` and ``x_T_of(schedule)`` give the model and x_T.
    With ``seed``, both draw their noise from a generator seeded with it (diffusers' randn_tensor is torch.randn
    on it, so both see the same draws when they draw one per step and in one dtype); ``replayed``: both get the same
    float64 normal draws, one per step (ReplayedNoise; the scheduler's as its step's ``variance_noise``, which
    DPMSolverMultistepScheduler would otherwise draw in float32)."""
    import inspect

    import diffusers

    scheduler_class = getattr(diffusers, scheduler_name) if isinstance(scheduler_name, str) else scheduler_name
    if "final_sigmas_type" in inspect.signature(scheduler_class.__init__).parameters:
        config = {"final_sigmas_type": "sigma_min", **config}  # the last step to timestep 0 (DEIS always does)
    scheduler = scheduler_class(num_train_timesteps=1000, beta_schedule="linear", **config)
    schedule = DiscreteVP.from_alphas_cumprod(scheduler.alphas_cumprod)
    model = make_model(schedule)
    scheduler.set_timesteps(n)
    x_T = x_T_of(schedule)
    x = x_T
    step_kwargs = {} if seed is None else {"generator": torch.Generator().manual_seed(seed)}
    noise = ReplayedNoise(x_T.shape, n) if replayed else None
    for step in scheduler.timesteps:
        if noise:
            step_kwargs["variance_noise"] = noise.sampler(None, None)
        x = scheduler.step(model.eps(x, (int(step) + 1) / 1000), step, x, **step_kwargs).prev_sample
    ts = torch.tensor([(int(s) + 1) / 1000 for s in scheduler.timesteps] + [1 / 1000], dtype=torch.float64)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    ours = sample(name, model, x_T, ts, eta=eta, generator=generator, noise=noise, **options)
    if noise and not noise.all_used():
        raise RuntimeError(f"{name} and {scheduler_name} drew different numbers of normals")
    return ours, x
