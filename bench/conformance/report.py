"""The conformance report: every solver and spacing that k-diffusion or diffusers also has, run by both on the
same model, time grid and x_T in float64, with the largest relative difference and, where the two differ on
purpose, the reason in one line (`python -m bench conformance`, `make conformance`).

Users ask in the peers' issue trackers why one sampler gives different images in two tools (diffusers #8683 and
#3253, ComfyUI #3507 and #4098); the answer is nearly always a convention (a weight, a warm-up, the last step,
what eta means), and this table names it. Each comparison either agrees (below its tolerance: 1e-8 against
k-diffusion in float64; 2e-6 against diffusers, whose schedulers keep sigmas and samples in float32), or differs
by design (above it, with the reason), or differs by the peer's error (above it, with the error named, and a row of
the peer with that error mended, which agrees); anything else is a failure and the command exits 1.

Problem: the 8-mode ring (exact score) under VPLinear, 64 samples from one seeded x_T, 10 steps on the Karras
grid for k-diffusion (its users' default), on the scheduler's own discrete grid for diffusers.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from bench.conformance import peers
from bench.models import ring2d
from solvers import DiffusionModel, sample
from solvers.schedules import FlowMatching, VPLinear
from solvers.spacing import timesteps

SCHEDULE = VPLinear()
STEPS, N_SAMPLES = 10, 64
K_DIFFUSION_TOLERANCE, DIFFUSERS_TOLERANCE = 1e-8, 2e-6
PEER_ERROR = "differs: the peer's error"  # the verdict where the peer's code is wrong (Comparison.peer_error)


@dataclass(frozen=True)
class Comparison:
    """One of our settings against its closest peer setting; ``run()`` gives (ours, theirs)."""

    ours: str
    peer: str
    library: str
    run: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    by_design: str = ""  # non-empty: they differ on purpose, and why
    peer_error: str = ""  # non-empty: they differ because the peer's code is wrong, and where

    @property
    def tolerance(self) -> float:
        return K_DIFFUSION_TOLERANCE if self.library == "k-diffusion" else DIFFUSERS_TOLERANCE


def _x_T(schedule, n: int = N_SAMPLES) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return float(schedule.sigma(schedule.t_max)) * torch.randn(n, 2, generator=g, dtype=torch.float64)


def _k_diffusion(name: str, options: dict, sampler: str, peer_kwargs: dict | None = None, eta: float | None = None,
                 draws_per_step: int = 0, steps: int = STEPS, same_draw_count: bool = True):
    """Ours (``name`` with ``options`` at ``eta``) and k-diffusion's ``sampler(**peer_kwargs)`` on ``steps`` Karras
    steps; a stochastic pair gets the same replayed normal draws (``draws_per_step`` of them per step), and both
    must use them all unless ``same_draw_count`` is False."""
    def run():
        model, x_T = ring2d().model(SCHEDULE), _x_T(SCHEDULE)
        ts = timesteps("karras", steps, SCHEDULE)
        noise = peers.ReplayedNoise(x_T.shape, steps * draws_per_step) if draws_per_step else None
        ours = sample(name, model, x_T, ts, eta=eta, noise=noise, **options)
        extra = {"noise_sampler": noise.sampler} if noise else {}
        theirs = peers.k_diffusion_run(getattr(peers.k_diffusion_sampling(), sampler), model, x_T, ts,
                                       **(peer_kwargs or {}), **extra)
        if noise and same_draw_count and not noise.all_used():
            raise RuntimeError(f"{name} and k-diffusion's {sampler} drew different numbers of normals")
        return ours, theirs
    return run


def _dpm_adaptive(order: int, rtol: float, atol: float):
    def peer(denoiser, x, sigmas, disable):
        # k-diffusion copies the float64 sigma ends with torch.tensor(tensor), which warns; floats would make them float32
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "To copy construct from a tensor", UserWarning)
            return peers.k_diffusion_sampling().sample_dpm_adaptive(denoiser, x, sigmas[-1], sigmas[0],
                                                                    disable=disable, order=order, rtol=rtol, atol=atol)

    def run():
        model, x_T = ring2d().model(SCHEDULE), _x_T(SCHEDULE)
        ts = timesteps("uniform", 1, SCHEDULE)
        return (sample("dpm_adaptive", model, x_T, ts, order=order, rtol=rtol, atol=atol),
                peers.k_diffusion_run(peer, model, x_T, ts))
    return run


def _k_diffusion_grid(spacing: str, getter: str):
    """Our spacing's sigma~ grid against k-diffusion's get_sigmas_* between the same ends (theirs ends in 0)."""
    def run():
        ours = torch.exp(-SCHEDULE.lambda_(timesteps(spacing, STEPS, SCHEDULE)))
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)  # k-diffusion builds its grids in the default dtype
        try:
            theirs = getattr(peers.k_diffusion_sampling(), getter)(STEPS + 1, float(ours[-1]), float(ours[0]))
        finally:
            torch.set_default_dtype(previous)
        return ours, theirs[: len(ours)]
    return run


def _diffusers(scheduler, config: dict, name: str, options: dict, eta: float | None = None,
               seed: int | None = None, replayed: bool = False):
    def run():
        return peers.diffusers_run(scheduler, config, lambda schedule: ring2d().model(schedule), _x_T, name, options,
                                   n=STEPS, eta=eta, seed=seed, replayed=replayed)
    return run


def _diffusers_sde(order: int, solver_type: str, name: str, options: dict, sign_fixed: bool = False):
    """DPMSolverMultistepScheduler's sde-dpmsolver++ (the eta family at eta 1) at ``order`` against ``name`` at eta 1,
    on the same float64 draws (the scheduler's as variance_noise); ``sign_fixed``: its third-order update with the
    sign of the D2 weight's 1/2 corrected (_sign_fixed_sde3)."""
    def run():
        import diffusers

        scheduler = _sign_fixed_sde3(diffusers.DPMSolverMultistepScheduler) if sign_fixed else _MULTISTEP
        config = {"solver_order": order, "algorithm_type": "sde-dpmsolver++", "solver_type": solver_type,
                  "lower_order_final": False}
        return _diffusers(scheduler, config, name, options, eta=1.0, replayed=True)()
    return run


def _sign_fixed_sde3(scheduler_class):
    """``scheduler_class`` (DPMSolverMultistepScheduler) whose sde-dpmsolver++ third-order update weights D2 by
    kappa h phi_3(-kappa h) = 1/2 - phi_2(-kappa h) (kappa h = 2h), as k-diffusion's sample_dpmpp_3m_sde and ours do.
    diffusers 0.42.1 writes (1 - e^(-2h) - 2h)/(2h)^2 - 1/2 = -phi_2(-2h) - 1/2 there: the 1/2 has the wrong sign,
    which adds -alpha_t D2 (about -alpha_t h^2 x0''/2) to every step from the third on. The subclass adds alpha_t D2
    back: the weight's difference is exactly 1."""
    class SignFixed(scheduler_class):
        def multistep_dpm_solver_third_order_update(self, model_output_list, *args, sample=None, noise=None, **kwargs):
            x_t = super().multistep_dpm_solver_third_order_update(model_output_list, *args, sample=sample, noise=noise,
                                                                  **kwargs)
            sigmas = [self.sigmas[self.step_index + 1 - k] for k in range(4)]  # t, s0, s1, s2
            alphas_sigmas = [self._sigma_to_alpha_sigma_t(sigma) for sigma in sigmas]
            lam = [torch.log(alpha) - torch.log(sigma) for alpha, sigma in alphas_sigmas]
            h = lam[0] - lam[1]
            r0, r1 = (lam[1] - lam[2]) / h, (lam[2] - lam[3]) / h
            m0, m1, m2 = model_output_list[-1], model_output_list[-2], model_output_list[-3]
            d2 = ((m0 - m1) / r0 - (m1 - m2) / r1) / (r0 + r1)
            return x_t + alphas_sigmas[0][0] * d2
    return SignFixed


def _sa_solver(diffusers_config: dict, options: dict, eta: float):
    """SASolverScheduler with tau = eta on training steps 200-800 (its default interval, t = (step + 1)/1000 here)
    against sa_solver on the sigma~ interval of those steps (the sigma~ of t = 0.1995 and 0.8005 on the scheduler's
    betas: half a training step outside them, so no grid time is at an end), the same generator draws."""
    from solvers.schedules import DiscreteVP

    def tau(step, eta=eta):
        return eta if 0.2 <= (int(step) + 1) / 1000 <= 0.8 else 0.0

    betas = DiscreteVP.linear()
    low, high = (math.exp(-float(betas.lambda_(t))) for t in (0.1995, 0.8005))
    return _diffusers("SASolverScheduler", {**diffusers_config, "tau_func": tau}, "sa_solver",
                      {"noise_sigma_min": low, "noise_sigma_max": high, **options}, eta=eta, seed=3)


def _diffusers_timesteps(spacing: str):
    """Our discrete spacing's training timesteps against DDIMScheduler's (DPMSolverMultistep's for linspace)."""
    def run():
        import diffusers
        from solvers.schedules import DiscreteVP

        schedule = DiscreteVP.linear()
        ours = (timesteps(spacing, STEPS, schedule) * schedule.n_train - 1).round()[:-1]
        scheduler_class = diffusers.DPMSolverMultistepScheduler if spacing == "linspace" else diffusers.DDIMScheduler
        scheduler = scheduler_class(num_train_timesteps=1000, timestep_spacing=spacing,
                                    steps_offset=1 if spacing == "leading" else 0)
        scheduler.set_timesteps(STEPS)
        return ours, scheduler.timesteps.double()
    return run


def flow_prediction_model(schedule) -> DiffusionModel:
    """The ring mixture under ``schedule`` as a flow-prediction model: u = eps - x0 from its exact eps."""
    exact = ring2d().model(schedule)

    def flow(x, t):
        alpha, sigma = exact.coefficients(x, t)
        eps = exact.net(x, t)
        return eps - (x - sigma * eps) / alpha

    return DiffusionModel(flow, schedule, "flow")


def _diffusers_sigmas(spacing: str, flag: str):
    """Our spacing's sigma~ grid (STEPS steps) on DPMSolverMultistepScheduler's betas against the scheduler's sigmas
    with ``flag`` set for STEPS + 1 steps: its first STEPS + 1 sigmas span the same ends (its last step goes to 0)."""
    def run():
        import diffusers
        from solvers.schedules import DiscreteVP

        scheduler = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", **{flag: True})
        schedule = DiscreteVP.from_alphas_cumprod(scheduler.alphas_cumprod)
        scheduler.set_timesteps(STEPS + 1)
        return torch.exp(-schedule.lambda_(timesteps(spacing, STEPS, schedule))), scheduler.sigmas[: STEPS + 1].double()
    return run


def _flow_match_euler():
    """FlowMatchEulerDiscreteScheduler (shift 3) on our unshifted times as its sigmas: its Euler in sigma with
    the last step to sigma 0 is our ddim followed by the x0 prediction."""
    def run():
        import diffusers

        schedule = FlowMatching(shift=3.0, t_max=0.99, t_min=0.01)
        model, x_T = flow_prediction_model(schedule), _x_T(schedule)
        ts = torch.linspace(0.99, 0.01, STEPS + 1, dtype=torch.float64)
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
        scheduler.set_timesteps(sigmas=ts.tolist())
        x = x_T
        for t, timestep in zip(ts, scheduler.timesteps):
            x = scheduler.step(model.net(x, torch.full((len(x),), float(t), dtype=torch.float64)), timestep,
                               x).prev_sample
        return model.x0(sample("ddim", model, x_T, ts), ts[-1]), x.double()
    return run


_MULTISTEP = "DPMSolverMultistepScheduler"
COMPARISONS = [
    # k-diffusion 0.1.1.post1, Karras grid, float64
    Comparison("ddim", "sample_euler", "k-diffusion", _k_diffusion("ddim", {}, "sample_euler")),
    Comparison("edm_stochastic (eta 0)", "sample_heun", "k-diffusion", _k_diffusion("edm_stochastic", {}, "sample_heun")),
    Comparison("dpm_solver_2", "sample_dpm_2", "k-diffusion", _k_diffusion("dpm_solver_2", {}, "sample_dpm_2")),
    Comparison("dpmpp_2s", "sample_dpmpp_2s_ancestral(eta=0)", "k-diffusion",
               _k_diffusion("dpmpp_2s", {}, "sample_dpmpp_2s_ancestral", {"eta": 0.0})),
    Comparison("dpmpp_2m", "sample_dpmpp_2m", "k-diffusion", _k_diffusion("dpmpp_2m", {}, "sample_dpmpp_2m")),
    Comparison("dpmpp_3m_phi3 (second_order=taylor)", "sample_dpmpp_3m_sde(eta=0)", "k-diffusion",
               _k_diffusion("dpmpp_3m_phi3", {"second_order": "taylor"}, "sample_dpmpp_3m_sde", {"eta": 0.0})),
    Comparison("dpmpp_3m", "sample_dpmpp_3m_sde(eta=0)", "k-diffusion",
               _k_diffusion("dpmpp_3m", {"second_order": "taylor"}, "sample_dpmpp_3m_sde", {"eta": 0.0}),
               by_design="D2 weighted 2 phi_3 (the Taylor-consistent order-3 step); k-diffusion weights it phi_3, "
                         "which is order 2: that is dpmpp_3m_phi3"),
    Comparison("dpmpp_2m_sde (eta 0.5)", "sample_dpmpp_2m_sde(eta=0.25)", "k-diffusion",
               _k_diffusion("dpmpp_2m_sde", {}, "sample_dpmpp_2m_sde", {"eta": 0.25}, eta=0.5, draws_per_step=1)),
    Comparison("dpmpp_2m_sde (eta 0.5)", "sample_dpmpp_2m_sde(eta=0.5)", "k-diffusion",
               _k_diffusion("dpmpp_2m_sde", {}, "sample_dpmpp_2m_sde", {"eta": 0.5}, eta=0.5, draws_per_step=1),
               by_design="eta means different things: k-diffusion's (and diffusers') eta for this sampler is our "
                         "eta^2, so our 0.5 is their 0.25 (row above)"),
    Comparison("dpmpp_2m_sde (eta 1, second_order=taylor)", "sample_dpmpp_2m_sde(eta=1, solver_type=heun)",
               "k-diffusion", _k_diffusion("dpmpp_2m_sde", {"second_order": "taylor"}, "sample_dpmpp_2m_sde",
                                           {"eta": 1.0, "solver_type": "heun"}, eta=1.0, draws_per_step=1)),
    Comparison("dpmpp_3m_sde (eta 1)", "sample_dpmpp_3m_sde(eta=1)", "k-diffusion",
               _k_diffusion("dpmpp_3m_sde", {}, "sample_dpmpp_3m_sde", {"eta": 1.0}, eta=1.0, draws_per_step=1)),
    Comparison("dpmpp_3m_sde (eta 0.5)", "sample_dpmpp_3m_sde(eta=0.25)", "k-diffusion",
               _k_diffusion("dpmpp_3m_sde", {}, "sample_dpmpp_3m_sde", {"eta": 0.25}, eta=0.5, draws_per_step=1)),
    Comparison("euler_ancestral (eta 1)", "sample_euler_ancestral(eta=1)", "k-diffusion",
               _k_diffusion("euler_ancestral", {}, "sample_euler_ancestral", {"eta": 1.0}, eta=1.0, draws_per_step=1)),
    Comparison("ddim (eta 0.5)", "sample_euler_ancestral(eta=0.5)", "k-diffusion",
               _k_diffusion("ddim", {}, "sample_euler_ancestral", {"eta": 0.5}, eta=0.5, draws_per_step=1)),
    Comparison("dpm_2_ancestral (eta 1)", "sample_dpm_2_ancestral(eta=1)", "k-diffusion",
               _k_diffusion("dpm_2_ancestral", {}, "sample_dpm_2_ancestral", {"eta": 1.0}, eta=1.0, draws_per_step=1)),
    Comparison("dpm_2_ancestral (eta 2, 1 step)", "sample_dpm_2_ancestral(eta=2)", "k-diffusion",
               _k_diffusion("dpm_2_ancestral", {}, "sample_dpm_2_ancestral", {"eta": 2.0}, eta=2.0, draws_per_step=1,
                            steps=1, same_draw_count=False),
               by_design="where eta > 1 asks for all of sigma_s as noise (sigma_down = 0), k-diffusion's Euler branch "
                         "skips the noise and leaves a noiseless sample at sigma_s > 0; ours adds it"),
    Comparison("dpmpp_sde (eta 1)", "sample_dpmpp_sde(eta=1)", "k-diffusion",
               _k_diffusion("dpmpp_sde", {}, "sample_dpmpp_sde", {"eta": 1.0}, eta=1.0, draws_per_step=2)),
    Comparison("ipndm_v", "sample_lms (order 4)", "k-diffusion", _k_diffusion("ipndm_v", {}, "sample_lms")),
    Comparison("dpm_adaptive (order 3, rtol 0.05, atol 0.0078)", "sample_dpm_adaptive (defaults)", "k-diffusion",
               _dpm_adaptive(3, 0.05, 0.0078)),
    Comparison("dpm_adaptive (order 2, rtol = atol = 1e-3)", "sample_dpm_adaptive(order=2, rtol=atol=1e-3)",
               "k-diffusion", _dpm_adaptive(2, 1e-3, 1e-3)),
    Comparison("heun", "sample_heun", "k-diffusion", _k_diffusion("heun", {}, "sample_heun"),
               by_design="our heun steps in t on the probability-flow drift; k-diffusion's steps in sigma~ on eps, "
                         "which is our edm_stochastic at eta 0 (row above)"),
    Comparison("euler", "sample_euler", "k-diffusion", _k_diffusion("euler", {}, "sample_euler"),
               by_design="our euler steps in t on the drift; k-diffusion's Euler in sigma~ on eps is our ddim"),
    Comparison("lms (warmup=lower_order)", "sample_lms", "k-diffusion",
               _k_diffusion("lms", {"warmup": "lower_order"}, "sample_lms"),
               by_design="the same warm-up, but our Adams steps are in t on the drift, k-diffusion's in sigma~ on eps: "
                         "that is ipndm_v (row above)"),
    Comparison("lms (default: RK4 warm-up)", "sample_lms", "k-diffusion", _k_diffusion("lms", {}, "sample_lms"),
               by_design="warm-up: ours takes the first 3 steps with RK4 (keeps order 4, +9 NFE), k-diffusion's at "
                         "lower Adams orders (caps it at 2); and t vs sigma~ as above"),
    Comparison("karras spacing", "get_sigmas_karras(rho=7)", "k-diffusion", _k_diffusion_grid("karras", "get_sigmas_karras")),
    Comparison("exponential spacing", "get_sigmas_exponential", "k-diffusion",
               _k_diffusion_grid("exponential", "get_sigmas_exponential")),
    # diffusers, the scheduler's own grid and loop (float32 inside)
    *[Comparison(f"dpmpp_2m (lower_order_final={final})", f"{_MULTISTEP}(solver_order=2, lower_order_final={final})",
                 "diffusers", _diffusers(_MULTISTEP, {"solver_order": 2, "algorithm_type": "dpmsolver++",
                                                       "lower_order_final": final}, "dpmpp_2m",
                                         {"lower_order_final": final})) for final in (False, True)],
    Comparison("dpmpp_2m (default)", f"{_MULTISTEP}(solver_order=2) (defaults)", "diffusers",
               _diffusers(_MULTISTEP, {"solver_order": 2, "algorithm_type": "dpmsolver++"}, "dpmpp_2m", {}),
               by_design="final step: diffusers takes the last step at first order below 15 steps "
                         "(lower_order_final=True by default); ours does with lower_order_final=True (row above)"),
    *[Comparison(f"dpmpp_3m_phi3 (second_order={ours}, lower_order_final={final})",
                 f"{_MULTISTEP}(solver_order=3, solver_type={form}, lower_order_final={final})", "diffusers",
                 _diffusers(_MULTISTEP, {"solver_order": 3, "algorithm_type": "dpmsolver++", "solver_type": form,
                                         "lower_order_final": final}, "dpmpp_3m_phi3",
                            {"second_order": ours, "lower_order_final": final}))
      for form, ours in (("midpoint", "midpoint"), ("heun", "taylor")) for final in (False, True)],
    Comparison("dpmpp_3m", f"{_MULTISTEP}(solver_order=3, lower_order_final=False)", "diffusers",
               _diffusers(_MULTISTEP, {"solver_order": 3, "algorithm_type": "dpmsolver++", "lower_order_final": False},
                          "dpmpp_3m", {}),
               by_design="D2 weighted 2 phi_3 (order 3); diffusers weights it phi_3 (order 2): dpmpp_3m_phi3"),
    *[Comparison(f"dpmpp_2m_sde (eta 1, second_order={ours})",
                 f"{_MULTISTEP}(algorithm_type=sde-dpmsolver++, solver_order=2, solver_type={form})", "diffusers",
                 _diffusers_sde(2, form, "dpmpp_2m_sde", {"second_order": ours}))
      for form, ours in (("midpoint", "midpoint"), ("heun", "taylor"))],
    Comparison("dpmpp_3m_sde (eta 1)", f"{_MULTISTEP}(algorithm_type=sde-dpmsolver++, solver_order=3, "
               "solver_type=heun)", "diffusers", _diffusers_sde(3, "heun", "dpmpp_3m_sde", {}),
               peer_error="diffusers' third-order sde-dpmsolver++ step weights D2 by (1 - e^(-2h) - 2h)/(2h)^2 - 1/2; "
                          "the 1/2 must be + (k-diffusion's -phi_3): about -alpha_t D2 more per step (row below)"),
    Comparison("dpmpp_3m_sde (eta 1)", f"{_MULTISTEP}(algorithm_type=sde-dpmsolver++, solver_order=3, "
               "solver_type=heun), its D2 weight's sign fixed", "diffusers",
               _diffusers_sde(3, "heun", "dpmpp_3m_sde", {}, sign_fixed=True)),
    *[Comparison(f"unipc_{order} (variant={variant}, lower_order_final={final})",
                 f"UniPCMultistepScheduler(solver_order={order}, solver_type={variant}, lower_order_final={final})",
                 "diffusers", _diffusers("UniPCMultistepScheduler", {"solver_order": order, "solver_type": variant,
                                                                      "lower_order_final": final},
                                         f"unipc_{order}", {"variant": variant, "lower_order_final": final}))
      for order in (2, 3) for variant in ("bh1", "bh2") for final in (False, True)],
    Comparison("deis_3", "DEISMultistepScheduler(solver_order=3, lower_order_final=False)", "diffusers",
               _diffusers("DEISMultistepScheduler", {"solver_order": 3, "lower_order_final": False}, "deis_3", {}),
               by_design="tAB-DEIS: ours extrapolates eps in t with quadrature weights (the paper's eq. 14); "
                         "diffusers extrapolates in log rho with closed-form weights"),
    Comparison("sa_solver (eta 1, orders 2/2, lower_order_final=True)",
               "SASolverScheduler (defaults: orders 2/2, lower_order_final=True, tau 1 on steps 200-800)", "diffusers",
               _sa_solver({}, {"predictor_order": 2, "corrector_order": 2, "lower_order_final": True}, 1.0)),
    Comparison("sa_solver (eta 0)", "SASolverScheduler(predictor_order=3, corrector_order=4, lower_order_final=False, "
               "tau 0)", "diffusers",
               _sa_solver({"predictor_order": 3, "corrector_order": 4, "lower_order_final": False}, {}, 0.0)),
    Comparison("sa_solver (eta 1, defaults)", "SASolverScheduler (defaults, tau 1 on steps 200-800)", "diffusers",
               _sa_solver({}, {}, 1.0),
               by_design="our defaults are ComfyUI's orders 3/4 without lower_order_final (order 4); diffusers' "
                         "2/2 with it (order 2): the rows above set them alike"),
    Comparison("ddim on FlowMatching(shift 3), then x0", "FlowMatchEulerDiscreteScheduler(shift=3)", "diffusers",
               _flow_match_euler()),
    Comparison("karras spacing", "DPMSolverMultistepScheduler(use_karras_sigmas=True) sigmas", "diffusers",
               _diffusers_sigmas("karras", "use_karras_sigmas")),
    Comparison("exponential spacing", "DPMSolverMultistepScheduler(use_exponential_sigmas=True) sigmas", "diffusers",
               _diffusers_sigmas("exponential", "use_exponential_sigmas")),
    Comparison("beta spacing", "DPMSolverMultistepScheduler(use_beta_sigmas=True) sigmas", "diffusers",
               _diffusers_sigmas("beta", "use_beta_sigmas"),
               by_design="ours places the Beta(0.6, 0.6) quantiles in time (Lee et al. 2024, as ComfyUI's beta "
                         "scheduler does); diffusers places them in sigma"),
    *[Comparison(f"{spacing} spacing", f"{'DPMSolverMultistep' if spacing == 'linspace' else 'DDIM'}Scheduler "
                 f"timestep_spacing={spacing}", "diffusers", _diffusers_timesteps(spacing))
      for spacing in ("leading", "trailing", "linspace")],
]


# ComfyUI does not install as a package here, so it has no rows above: its published updates are restated in
# tests/conformance/test_peers.py and compared on the same draws. Where its conventions differ from ours, they are these.
COMFYUI_CONVENTIONS = [
    ("sa_solver", "two-node steps: simple_order_2=False by default, the plain Lagrange integrals",
     "the paper's O(h^3) modification always (diffusers applies it too): ComfyUI's simple_order_2=True",
     "simple_order_2=false", "test_sa_solver_agrees_with_comfyuis_published_update_under_its_conventions"),
    ("sa_solver", "noise switched on and off by each step's end sigma (tau_func(sigmas[i + 1]))",
     "by each step's start, as diffusers decides by the step's timestep", 'noise_switch="end"', "the same test"),
    ("sa_solver", "noise interval: percent_to_sigma(0.2) to percent_to_sigma(0.8) of the model's own sigma range, "
     "so a different sigma range on each model", "sigma~ = sigma/alpha in [0.72, 25.5] on every schedule (where "
     "DDPM's linear betas put training steps 200-800, diffusers' interval)", "noise_sigma_min, noise_sigma_max",
     "the same test; test_sa_solvers_noise_interval_means_the_same_noise_levels_on_every_schedule"),
    ("sa_solver", "on grids that end at sigma 0, the corrector's order is lowered one step more than the "
     "predictor's near the end", "our grids end at t_min > 0, where this never applies; lower_order_final lowers "
     "the last prediction to order 1 (diffusers' rule)", "lower_order_final=true", "-"),
    ("er_sde", "the integrals of 1/phi by a 200-point Riemann sum in float32",
     "16-point Gauss-Legendre in log sigma~ (float64; a 200-point midpoint rule moves samples by 8.6e-7)", "-",
     "test_er_sde_agrees_with_comfyuis_published_update_on_the_same_noise (against an accurate integral)"),
]


def relative_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    theirs = theirs.to(ours.dtype)
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def verdict(comparison: Comparison, difference: float) -> tuple[str, bool]:
    """(verdict, ok): agreement where expected, a difference where the reason says there is one."""
    agrees = math.isfinite(difference) and difference < comparison.tolerance
    if comparison.by_design or comparison.peer_error:
        expected = "differs by design" if comparison.by_design else PEER_ERROR
        return (expected, True) if not agrees else ("agrees, but a difference was expected", False)
    return ("agrees", True) if agrees else ("DIFFERS", False)


def run_comparisons(comparisons: list[Comparison] | None = None) -> pd.DataFrame:
    """One row per comparison (default: COMPARISONS): ours, peer, library, max relative difference, tolerance,
    verdict, ok, reason. A peer that is not installed gives a row that says so (ok: it is optional)."""
    rows = []
    for comparison in COMPARISONS if comparisons is None else comparisons:
        row = {"ours": comparison.ours, "peer": comparison.peer, "library": comparison.library,
               "tolerance": comparison.tolerance, "reason": comparison.by_design or comparison.peer_error}
        try:
            difference = relative_difference(*comparison.run())
        except ImportError as err:
            rows.append({**row, "max_relative_difference": float("nan"), "verdict": f"not run: {err}", "ok": True})
            continue
        except Exception as err:  # one broken comparison must not lose the others
            rows.append({**row, "max_relative_difference": float("nan"),
                         "verdict": f"ERROR: {type(err).__name__}: {err}", "ok": False})
            continue
        text, ok = verdict(comparison, difference)
        rows.append({**row, "max_relative_difference": difference, "verdict": text, "ok": ok})
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    lines = ["# Conformance: our solvers and spacings against k-diffusion 0.1.1.post1 and diffusers", "",
             __doc__.split("\n\n", 2)[2].strip(), "",
             "| ours | closest peer setting | library | max relative difference | verdict | why they differ |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in table.itertuples():
        difference = "-" if math.isnan(row.max_relative_difference) else f"{row.max_relative_difference:.1e}"
        lines.append(f"| {row.ours} | {row.peer} | {row.library} | {difference} | {row.verdict} | {row.reason} |")
    lines += ["", "## Conventions where ComfyUI differs", "",
              "ComfyUI does not install as a package here, so its samplers are not in the table above: ipndm, "
              "res_multistep, seeds_2/3, er_sde and sa_solver are compared with its published updates, restated in "
              "tests/conformance/test_peers.py, on the same draws (to 1e-8 relative), and so is ipndm_v: equal at "
              "max_order 2; at 3 its published weight misplaces a parenthesis (read as intended it agrees), and at "
              "its default 4 its weights do not sum to 1 on grids whose step ratios vary (karras, 16-128 steps: "
              "order 1.82 against ours 3.38); the CFG++ samplers "
              "(euler_cfg_pp, euler_ancestral_cfg_pp, dpmpp_2m_cfg_pp, dpmpp_2s_ancestral_cfg_pp, "
              "res_multistep_cfg_pp) with its code at commit 02159d814dee609acc27994c1bf25fc5b40e2aaa, restated in "
              "tests/conformance/test_cfg_pp.py, on a guided class-conditional mixture at scales 1 and 2.5, logsnr "
              "and karras grids, the same labels and draws: all agree to 1e-8 relative in float64, in ComfyUI's own "
              "forms (dpmpp_2s_ancestral_cfg_pp evaluates the guided midpoint and uses only its unconditional half; "
              "dpmpp_2m_cfg_pp's history term is D - U_prev). Where its conventions differ from ours:", "",
              "| ours | ComfyUI | ours by default | ComfyUI's choice in ours | checked by |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {' | '.join(entry)} |" for entry in COMFYUI_CONVENTIONS]
    return "\n".join(lines) + "\n"


def write_report(out: Path, table: pd.DataFrame) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "conformance.csv", index=False)
    (out / "conformance.md").write_text(markdown(table))
    return out / "conformance.md"
