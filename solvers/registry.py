"""The solver registry SOLVERS and ``sample``, which validates every input before the first network call."""
from __future__ import annotations

import difflib
import importlib
import inspect
import math
import sys
from dataclasses import dataclass, field
from typing import Callable

import torch

from solvers import adaptive, cfg_pp, denoising, exponential, multistep, runge_kutta, sa_solver, stochastic, unipc
from solvers.model import DiffusionModel
from solvers.noise import GaussianNoise

STOCHASTIC_KINDS = ("ode", "sde", "both")


def _eta_positive(eta: float, options: dict) -> bool:
    return eta > 0


@dataclass(frozen=True)
class NoisePlan:
    """What noise a run of a solver draws: whether it draws at all (``draws(eta, options)``; default eta > 0), how
    many independent streams beyond the main one a step draws from (``streams(options)``: pc's corrector, restart's
    jumps) and which (stream, t, s) besides the grid's own steps (``intervals(schedule, times, options)``:
    dpmpp_sde's half steps, SEEDS' stage segments, restart's jumps). The runner draws them all before the clock
    starts, with the same floats the solver asks for."""

    draws: Callable[[float, dict], bool] = _eta_positive
    streams: Callable[[dict], int] | None = None
    intervals: Callable[[object, list, dict], list] | None = None


@dataclass(frozen=True)
class Solver:
    """One registered sampler and what the harness needs to know about it.

    ``stochastic``: "ode" takes eta = 0 only; "both" takes any eta >= 0 (default 0); "sde" needs
    eta > 0 (default 1), or exactly ``fixed_eta`` when the method has no free noise level.
    Fixed-step solvers cost ``nfe(n) = nfe_per_step * n + nfe_extra(n, options)`` evaluations
    (``nfe_note`` says what the extra is, for the registry table). ``order`` is the ODE order with
    default options; ``order_for(eta, options)`` is the order a run converges at as its steps are refined,
    from ``order_rule(eta, options)`` where a solver has one, else the default rule (``_default_order``).
    ``noise`` says what a run draws (NoisePlan). ``needs_guidance``: the solver reads the unconditional prediction
    beside the guided one (CFG++), so it runs on classifier-free guided models only. Before any compute, each option given
    must be of its default's type and within ``allowed[option]``; then ``check_options(options, schedule or None)``
    (what involves several options, or the schedule) raises a ValueError naming a bad option.
    """

    name: str
    fn: Callable
    order: int
    stochastic: str
    nfe_per_step: int | None
    eta: str
    reference: str
    adaptive: bool = False
    fixed_eta: float | None = None
    nfe_extra: Callable[[int, dict], int] | None = None
    fixed: dict = field(default_factory=dict)
    nfe_note: str = ""
    peers: str = ""  # how it relates to the code users run (k-diffusion, diffusers, the papers' code)
    order_rule: Callable[[float, dict], int | None] | None = None
    noise: NoisePlan = NoisePlan()
    min_steps: int = 1  # fewer steps give a skipped row with the reason
    check_options: Callable[[dict, object], None] | None = None
    needs_guidance: bool = False  # CFG++: needs a classifier-free guided model (its unconditional prediction)
    allowed: dict = field(default_factory=dict)  # option -> (is_allowed(value), what is allowed), checked before compute
    options: dict = field(init=False)

    def __post_init__(self):
        if self.stochastic not in STOCHASTIC_KINDS:
            raise ValueError(f"{self.name}: stochastic must be one of {STOCHASTIC_KINDS}, got {self.stochastic!r}")
        params = inspect.signature(self.fn).parameters.values()
        hidden = {"eta", "noise", *self.fixed}
        opts = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name not in hidden}
        object.__setattr__(self, "options", opts)

    @property
    def default_eta(self) -> float:
        if self.fixed_eta is not None:
            return self.fixed_eta
        return 1.0 if self.stochastic == "sde" else 0.0

    def nfe(self, n_steps: int, **options) -> int | None:
        """Network evaluations for ``n_steps`` steps; None for adaptive solvers (they count as they go)."""
        if self.nfe_per_step is None:
            return None
        extra = self.nfe_extra(n_steps, {**self.options, **options}) if self.nfe_extra else 0
        return self.nfe_per_step * n_steps + extra

    def _complete(self, options: dict | None) -> dict:
        return {**self.options, **(options or {})}

    def order_for(self, eta: float = 0.0, options: dict | None = None) -> int | None:
        """The order the error of a run with this eta and options falls at as its steps are refined: the ODE order
        under the options, or for a run that draws noise the strong order on a fixed Brownian path (None: no
        pathwise convergence, so no step-doubling estimate)."""
        options = self._complete(options)
        return self.order_rule(eta, options) if self.order_rule else self._default_order(eta, options)

    def _default_order(self, eta: float, options: dict) -> int:
        """Strong order 1 for a run that draws noise (every stochastic solver here but restart, measured). For an
        ODE run, ``order``, or the ``order`` option where the solver has one; lms's ``warmup="lower_order"``
        starts with an Euler step whose O(h^2) local error caps the global order at 2 (measured 1.87 on VE; on VP
        its coefficient is tiny, and an estimate with p = 2 is conservative); ``lower_order_final`` lowers the last
        steps, where x0 hardly moves any more: the order-2 step before them caps the measured order at 3 (dpmpp_3m
        2.95, unipc_3 3.03 instead of 4, on the ring mixture under VP and VE)."""
        if self.draws_noise(eta, options):
            return 1
        order = self.order if "order" in self.fixed else int(options.get("order", self.order))
        if options.get("warmup") == "lower_order":
            order = min(order, 2)
        if options.get("lower_order_final"):
            order = min(order, 3)
        return order

    def draws_noise(self, eta: float, options: dict | None = None) -> bool:
        """Whether a run with this eta and these options is stochastic (needs a seeded noise source)."""
        return self.noise.draws(eta, self._complete(options))

    def extra_noise_streams(self, options: dict | None = None) -> int:
        """How many independent noise streams a step draws from beyond the main one."""
        return self.noise.streams(self._complete(options)) if self.noise.streams else 0

    def extra_noise_intervals(self, schedule, times: list[float], options: dict | None = None) -> list[tuple]:
        """The (stream, t, s) a solve on ``times`` draws besides the grid's own steps (t_i, t_i+1)."""
        return self.noise.intervals(schedule, times, self._complete(options)) if self.noise.intervals else []

    def validate_options(self, options: dict | None = None, schedule=None) -> None:
        """A ValueError naming the option, its value and what is allowed, before any compute: each given option of
        its default's type (a TOML "false" is no boolean; an integer option takes no 2.5) and within ``allowed``,
        then the entry's ``check_options``; ``schedule`` (None where it is not known yet) lets a solver check options
        against the time range it runs on."""
        for option, value in (options or {}).items():
            if option not in self.options:
                continue  # sample() and the spec name unknown options
            wanted = _type_problem(self.options[option], value)
            if wanted is None and option in self.allowed and not self.allowed[option][0](value):
                wanted = self.allowed[option][1]
            if wanted:
                raise ValueError(f"{self.name}: {option} must be {wanted}, got {value!r}")
        if self.check_options:
            self.check_options(self._complete(options), schedule)

    def check_eta(self, eta) -> float:
        """The eta to use, or a ValueError that says what this solver accepts."""
        if eta is None:
            return self.default_eta
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta):
            raise ValueError(f"{self.name}: eta must be a finite number, got {eta!r}")
        if eta < 0:
            raise ValueError(f"{self.name}: eta must be >= 0, got {eta}")
        if self.stochastic == "ode" and eta > 0:
            raise ValueError(f"{self.name} is an ODE solver: eta must be 0, got {eta} (stochastic solvers: "
                             f"{', '.join(n for n, s in SOLVERS.items() if s.stochastic != 'ode')})")
        if self.fixed_eta is not None and eta != self.fixed_eta:
            raise ValueError(f"{self.name}: eta is fixed at {self.fixed_eta} ({self.eta}), got {eta}")
        if self.stochastic == "sde" and eta == 0:
            raise ValueError(f"{self.name} is an SDE solver: eta must be > 0, got 0 (use an ODE solver for eta = 0)")
        return float(eta)


def _type_problem(default, value) -> str | None:
    """What an option's ``value`` must be, judged by the type of its ``default`` (None: it is that, or the default
    is None and the entry's check_options judges it)."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if isinstance(default, float):
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "a string"
    return None


def _one_of(values) -> tuple:
    return (lambda value: value in values), f"one of {tuple(values)}"


def _integer_in(low: int, high: int) -> tuple:
    return (lambda value: low <= value <= high), f"an integer in {low}..{high}"


_STAGE_FRACTION = (lambda value: 0 < value < 1), "in (0, 1)"  # a stage strictly inside the step
_POSITIVE, _NON_NEGATIVE = ((lambda value: value > 0), "> 0"), ((lambda value: value >= 0), ">= 0")
_COUNT = (lambda value: value >= 1), "an integer >= 1"  # of an integer option (its type is checked first)
_TOLERANCES = {"rtol": _POSITIVE, "atol": _NON_NEGATIVE, "max_nfe": _COUNT}


def _solver(name, fn, order, stochastic, nfe_per_step, eta, reference, **kwargs) -> tuple[str, Solver]:
    return name, Solver(name, fn, order, stochastic, nfe_per_step, eta, reference, **kwargs)


def _NO_ORDER(eta: float, options: dict) -> None:
    """CFG++ samplers add an O(1) guidance term per step: no limit as the grid is refined, so no order."""
    return None


_ETA_FAMILY = "DESIGN.md's eta: 0 probability-flow ODE, 1 reverse SDE"
_ODE_ONLY = "none (eta must be 0)"
_ANCESTRAL_ETA = "k-diffusion's eta = DDIM's = DESIGN.md's to first order (default 1, > 0)"

SOLVERS: dict[str, Solver] = dict([
    _solver("euler", runge_kutta.euler, 1, "both", 1, _ETA_FAMILY, "Song et al. 2021, arXiv:2011.13456, eq. 6/13",
            peers="steps in t on the drift; k-diffusion's sample_euler (Euler in sigma) is our ddim"),
    _solver("euler_maruyama", runge_kutta.euler, 1, "sde", 1, _ETA_FAMILY + " (default 1)",
            "Song et al. 2021, arXiv:2011.13456, eq. 6; Kloeden & Platen 1992"),
    _solver("heun", runge_kutta.heun, 2, "ode", 2, _ODE_ONLY, "Karras et al. 2022, arXiv:2206.00364, Alg. 1",
            peers="steps in t; k-diffusion's sample_heun (in sigma) is our edm_stochastic at eta 0 (tested)"),
    _solver("rk4", runge_kutta.rk4, 4, "ode", 4, _ODE_ONLY, "Hairer et al. 1993, Table 1.2"),
    _solver("ddim", denoising.ddim, 1, "both", 1, "DDIM's eta (eq. 16), equal to DESIGN.md's eta to first order",
            "Song, Meng & Ermon 2021, arXiv:2010.02502, eq. 12",
            peers="= k-diffusion sample_euler at eta 0 (tested)"),
    _solver("euler_ancestral", denoising.ddim, 1, "sde", 1, _ANCESTRAL_ETA,
            "k-diffusion 0.1.1 sample_euler_ancestral (Crowson); the map of DDIM, arXiv:2010.02502, eq. 12",
            peers="= k-diffusion sample_euler_ancestral (tested): Euler in sigma~ to sigma_down, then sigma_up noise, "
                  "which is DDIM's step at eta > 0"),
    _solver("dpm_2_ancestral", exponential.dpm_2_ancestral, 2, "sde", 2, _ANCESTRAL_ETA,
            "k-diffusion 0.1.1 sample_dpm_2_ancestral (Crowson); DPM-Solver-2, arXiv:2206.00927, Alg. 1",
            peers="= k-diffusion sample_dpm_2_ancestral (tested); its eta 0 is dpm_solver_2"),
    _solver("dpmpp_sde", exponential.dpmpp_sde, 2, "sde", 2, _ANCESTRAL_ETA,
            "k-diffusion 0.1.1 sample_dpmpp_sde (Crowson); DPM-Solver++(2S), arXiv:2211.01095, Alg. 1",
            noise=NoisePlan(intervals=lambda schedule, times, options: [
                (0, t, t_mid) for t, (t_mid,) in zip(times, exponential.stage_times(schedule, times, (options["r"],)))]),
            allowed={"r": _STAGE_FRACTION},
            peers="= k-diffusion sample_dpmpp_sde (tested on the same draws); its eta 0 is dpmpp_2s"),
    _solver("gradient_estimation", denoising.gradient_estimation, 1, "ode", 1, _ODE_ONLY,
            "Permenter & Yuan 2024, arXiv:2306.04848, Alg. 2",
            peers="ComfyUI's sample_gradient_estimation (Euler in sigma with the same extrapolated direction, "
                  "ge_gamma = gamma); not installable here, so not compared"),
    _solver("ddpm", denoising.ddpm, 1, "sde", 1, "fixed at 1: ancestral sampling is the reverse SDE",
            "Ho et al. 2020, arXiv:2006.11239, Alg. 2", fixed_eta=1.0,
            allowed={"variance": _one_of(denoising.DDPM_VARIANCES)}),
    _solver("lms", multistep.lms, 4, "ode", 1, _ODE_ONLY, "Adams-Bashforth; Hairer et al. 1993, III.5",
            nfe_extra=multistep.lms_warmup_nfe, nfe_note="+ 3 per RK4 warm-up step",
            allowed={"order": _integer_in(1, 4), "warmup": _one_of(multistep.LMS_WARMUPS)},
            peers="k-diffusion's sample_lms warms up at lower order (warmup='lower_order', order 2) and steps in sigma~ on "
                  "eps: that is ipndm_v"),
    _solver("ipndm", multistep.ipndm, 2, "ode", 1, _ODE_ONLY,
            "Zhang & Chen 2022, arXiv:2204.13902, iPNDM; Hairer et al. 1993, III.1",
            fixed={"weights": "equal_step"}, allowed={"max_order": _integer_in(1, 4)},
            peers="ComfyUI's sample_ipndm (AB weights for equal steps in sigma~; not installable here: compared with "
                  "its published update restated in k-diffusion's variables); order 2 on non-uniform grids"),
    _solver("ipndm_v", multistep.ipndm, 2, "ode", 1, _ODE_ONLY,
            "Zhang & Chen 2022, arXiv:2204.13902, iPNDM with variable-step AB weights; Hairer et al. 1993, III.5",
            fixed={"weights": "variable_step"}, allowed={"max_order": _integer_in(1, 4)},
            peers="= k-diffusion sample_lms(order=max_order) (tested); ComfyUI's sample_ipndm_v at max_order 2, where "
                  "its closed-form weights at orders 3 and 4 are not the variable-step ones (tests/conformance/test_peers.py)"),
    _solver("dpm_solver_1", exponential.dpm_solver_1, 1, "ode", 1, _ODE_ONLY, "Lu et al. 2022, arXiv:2206.00927, eq. 3.7"),
    _solver("dpm_solver_2", exponential.dpm_solver_2, 2, "ode", 2, _ODE_ONLY, "Lu et al. 2022, arXiv:2206.00927, Alg. 1",
            allowed={"r1": _STAGE_FRACTION}),
    _solver("dpm_solver_3", exponential.dpm_solver_3, 3, "ode", 3, _ODE_ONLY, "Lu et al. 2022, arXiv:2206.00927, Alg. 2",
            allowed={"r1": _STAGE_FRACTION, "r2": _STAGE_FRACTION}, check_options=exponential.ordered_stages("dpm_solver_3")),
    _solver("dpmpp_2s", exponential.dpmpp_2s, 2, "ode", 2, _ODE_ONLY, "Lu et al. 2022b, arXiv:2211.01095, Alg. 1",
            allowed={"r": _STAGE_FRACTION},
            peers="= k-diffusion sample_dpmpp_2s_ancestral at eta 0 (tested)"),
    _solver("dpmpp_2m", exponential.dpmpp_2m, 2, "ode", 1, _ODE_ONLY, "Lu et al. 2022b, arXiv:2211.01095, Alg. 2",
            peers="= k-diffusion sample_dpmpp_2m; = diffusers DPMSolverMultistepScheduler order 2, whose default below 15 steps is lower_order_final (both tested)"),
    _solver("dpmpp_3m", exponential.dpmpp_3m, 3, "ode", 1, _ODE_ONLY,
            "Lu et al. 2022b, arXiv:2211.01095, App. B; D2 weighted 2 phi_3 (Taylor-consistent)",
            fixed={"d2_weight": "2phi_3"}, allowed={"second_order": _one_of(exponential.SECOND_ORDER_FORMS)},
            peers="peers weight D2 by phi_3: dpmpp_3m_phi3; step 2: second_order='midpoint' (DPM-Solver, diffusers) or 'taylor' (k-diffusion); lower_order_final"),
    _solver("dpmpp_3m_phi3", exponential.dpmpp_3m, 2, "ode", 1, _ODE_ONLY,
            "the peers' DPM-Solver++(3M): D2 weighted phi_3 as in DPM-Solver's code, k-diffusion, diffusers",
            fixed={"d2_weight": "phi_3"}, allowed={"second_order": _one_of(exponential.SECOND_ORDER_FORMS)},
            peers="= diffusers DPMSolverMultistepScheduler order 3 (solver_type midpoint/heun = second_order midpoint/taylor, lower_order_final); taylor = k-diffusion sample_dpmpp_3m_sde at eta 0 (all tested)"),
    _solver("res_multistep", exponential.res_multistep, 2, "ode", 1, _ODE_ONLY,
            "Zhang et al. 2023, arXiv:2308.02157 (RES), exponential AB2 with phi_2 weight",
            peers="ComfyUI's sample_res_multistep (not installable here: compared with its published update restated "
                  "in k-diffusion's variables); = dpmpp_3m's taylor second-order step"),
    _solver("dpmpp_2m_sde", exponential.dpmpp_2m_sde, 2, "both", 1,
            _ETA_FAMILY + " (k-diffusion's/diffusers' eta = eta^2)", "Lu et al. 2022b, arXiv:2211.01095, Sec. 5",
            allowed={"second_order": _one_of(exponential.SECOND_ORDER_FORMS)},
            peers="= k-diffusion sample_dpmpp_2m_sde (their eta is our eta^2; solver_type 'heun', ComfyUI's "
                  "dpmpp_2m_sde_heun: second_order='taylor'); = diffusers' sde-dpmsolver++ at eta 1 (all tested)"),
    _solver("dpmpp_3m_sde", exponential.dpmpp_3m_sde, 2, "both", 1,
            _ETA_FAMILY + " (k-diffusion's eta = eta^2)",
            "k-diffusion 0.1.1 sample_dpmpp_3m_sde (Crowson); DPM-Solver++(3M), arXiv:2211.01095, App. B, on the SDE",
            order_rule=lambda eta, options: 1 if eta > 0 else 3 if options["d2_weight"] == "2phi_3" else 2,
            allowed={"d2_weight": _one_of(exponential.D2_WEIGHTS),
                     "second_order": _one_of(exponential.SECOND_ORDER_FORMS)},
            peers="= k-diffusion sample_dpmpp_3m_sde (tested on the same draws; their eta is our eta^2); its eta 0 is "
                  "dpmpp_3m_phi3 with second_order='taylor'"),
    _solver("seeds_2", exponential.seeds_2, 2, "both", 2, _ETA_FAMILY + " (ComfyUI's eta = eta^2)",
            "Gonzalez et al. 2023, arXiv:2305.14267, SEEDS-2", noise=NoisePlan(intervals=exponential.seeds_noise(("r",))),
            allowed={"r": _STAGE_FRACTION, "solver_type": _one_of(exponential.SEEDS_SOLVER_TYPES)},
            peers="ComfyUI's sample_seeds_2 (not installable here: compared with its published update restated); "
                  "eta 0 with phi_1 is dpmpp_2s"),
    _solver("seeds_3", exponential.seeds_3, 3, "both", 3, _ETA_FAMILY + " (ComfyUI's eta = eta^2)",
            "Gonzalez et al. 2023, arXiv:2305.14267, SEEDS-3",
            noise=NoisePlan(intervals=exponential.seeds_noise(("r1", "r2"))),
            allowed={"r1": _STAGE_FRACTION, "r2": _STAGE_FRACTION}, check_options=exponential.ordered_stages("seeds_3"),
            peers="ComfyUI's sample_seeds_3 (not installable here: compared with its published update restated)"),
    _solver("deis_2", exponential.deis, 2, "ode", 1, _ODE_ONLY, "Zhang & Chen 2022, arXiv:2204.13902, tAB eq. 14",
            fixed={"order": 2},
            peers="tAB in t; diffusers' DEISMultistepScheduler extrapolates in log rho (not offered)"),
    _solver("deis_3", exponential.deis, 3, "ode", 1, _ODE_ONLY, "Zhang & Chen 2022, arXiv:2204.13902, tAB eq. 14",
            fixed={"order": 3},
            peers="tAB in t; diffusers' DEISMultistepScheduler extrapolates in log rho (not offered)"),
    _solver("unipc_2", unipc.unipc, 3, "ode", 1, _ODE_ONLY, "Zhao et al. 2023, arXiv:2302.04867, UniP-2 + UniC",
            fixed={"order": 2}, allowed={"variant": _one_of(unipc.UNIPC_VARIANTS)},
            peers="= diffusers UniPCMultistepScheduler for bh1/bh2 (variant) and lower_order_final, its default below 15 steps (tested); reference code default bh1"),
    _solver("unipc_3", unipc.unipc, 4, "ode", 1, _ODE_ONLY, "Zhao et al. 2023, arXiv:2302.04867, UniP-3 + UniC",
            fixed={"order": 3}, allowed={"variant": _one_of(unipc.UNIPC_VARIANTS)},
            peers="= diffusers UniPCMultistepScheduler for bh1/bh2 (variant) and lower_order_final, its default below 15 steps (tested); reference code default bh1"),
    _solver("sa_solver", sa_solver.sa_solver, 4, "both", 1,
            _ETA_FAMILY + " where sigma/alpha is in [noise_sigma_min, noise_sigma_max] (default 0.72-25.5, "
            "DDPM's steps 200-800), 0 outside (SA-Solver's tau)",
            "Xue et al. 2023, arXiv:2309.05019, SA-Predictor + SA-Corrector", order_rule=sa_solver.sa_solver_order,
            allowed={"predictor_order": _integer_in(1, 4), "corrector_order": _integer_in(1, 4),
                     "noise_switch": _one_of(sa_solver.NOISE_SWITCHES)}, check_options=sa_solver.check_options,
            peers="= diffusers SASolverScheduler with the same orders, tau interval and lower_order_final (tested on the "
                  "same generator draws); diffusers defaults to orders 2/2 and lower_order_final=True (order 2)"),
    _solver("edm_stochastic", stochastic.edm_stochastic, 2, "both", 2,
            "eta sets EDM's churn gamma_i = eta^2 (sigma_i - sigma_i+1)/sigma_i (eta family to first order); "
            "or pass s_churn", "Karras et al. 2022, arXiv:2206.00364, Alg. 2",
            noise=NoisePlan(draws=stochastic.edm_draws_noise),
            allowed={"s_churn": ((lambda value: value is None or (isinstance(value, (int, float))
                                                                 and not isinstance(value, bool) and value >= 0)),
                                 "a number >= 0 (or unset: eta sets the churn)"),
                     "s_noise": _NON_NEGATIVE},
            peers="eta 0 = k-diffusion sample_heun (tested); k-diffusion's s_churn is ours"),
    _solver("restart", stochastic.restart, 2, "sde", 2,
            "fixed at 1: the noise is restart's forward jumps, not the eta family",
            "Xu et al. 2023, arXiv:2306.14878, Alg. 1", fixed_eta=1.0, order_rule=lambda eta, options: 2,
            nfe_extra=lambda n, options: 2 * options["restarts"] * options["restart_steps"],
            nfe_note="+ 2 x restarts x restart_steps",
            noise=NoisePlan(streams=lambda options: options["restarts"] - 1, intervals=stochastic.restart_noise),
            min_steps=2, allowed={"restarts": _COUNT, "restart_steps": _COUNT}, check_options=stochastic.check_restart,
            peers="ComfyUI's sample_restart restarts at the nearest grid sigma with its own interval table "
                  "(not installable here; not compared)"),
    _solver("er_sde", stochastic.er_sde, 3, "sde", 1,
            "fixed at 1: the noise is set by ER-SDE's scale function phi(v) = v (e^(v^0.3) + 10), not by eta",
            "Cui et al. 2023, arXiv:2309.06169, ER-SDE-Solver-3", fixed_eta=1.0, allowed={"max_stage": _integer_in(1, 3)},
            peers="ComfyUI's sample_er_sde (not installable here: compared with its published update restated; "
                  "it integrates phi by a 200-point float32 Riemann sum, we by Gauss-Legendre)"),
    _solver("pc", stochastic.pc, 1, "sde", 1, _ETA_FAMILY + " for the predictor (default 1)",
            "Song et al. 2021, arXiv:2011.13456, Alg. 2-3", nfe_extra=stochastic.corrector_nfe,
            nfe_note="+ corrector_steps", order_rule=stochastic.pc_order,
            noise=NoisePlan(streams=lambda options: options["corrector_steps"]),
            allowed={"predictor": _one_of(stochastic.PC_PREDICTORS), "corrector_steps": _NON_NEGATIVE, "snr": _POSITIVE},
            peers="the paper's code: batch-averaged norms in the Langevin step (so results depend on the batch)"),
    _solver("step_doubling_euler", adaptive.step_doubling, 1, "ode", None, _ODE_ONLY,
            "Richardson step doubling; Hairer et al. 1993, II.4", adaptive=True, fixed={"method": "euler"},
            allowed=_TOLERANCES),
    _solver("step_doubling_heun", adaptive.step_doubling, 2, "ode", None, _ODE_ONLY,
            "Richardson step doubling; Hairer et al. 1993, II.4", adaptive=True, fixed={"method": "heun"},
            allowed=_TOLERANCES),
    _solver("dpm_adaptive", adaptive.dpm_adaptive, 3, "ode", None, _ODE_ONLY,
            "Lu et al. 2022, arXiv:2206.00927, DPM-Solver-23 with adaptive step size", adaptive=True,
            allowed={**_TOLERANCES, "order": _integer_in(2, 3), "h_init": _POSITIVE},
            peers="= k-diffusion sample_dpm_adaptive at eta 0 (tested; its defaults rtol 0.05, atol 0.0078); "
                  "k-diffusion's eta > 0 variant is not offered"),
    *[_solver(name, adaptive.torchdiffeq_adaptive, order, "ode", None, _ODE_ONLY, f"torchdiffeq {name}; {ref}",
              adaptive=True, fixed={"method": name}, allowed=_TOLERANCES)
      for name, order, ref in [("dopri5", 5, "Dormand & Prince 1980"), ("bosh3", 3, "Bogacki & Shampine 1989"),
                               ("adaptive_heun", 2, "Heun-Euler 2(1)"), ("dopri8", 8, "Prince & Dormand 1981")]],
    *[_solver(name, fn, 1, kind, nfe, eta, reference, order_rule=_NO_ORDER, needs_guidance=True,
              peers=f"= ComfyUI's sample_{name} (not installable here: compared with its published code restated, "
                    f"tests/conformance/test_cfg_pp.py); no ODE limit, so no order")
      for name, fn, kind, nfe, eta, reference in [
          ("euler_cfg_pp", cfg_pp.euler_cfg_pp, "ode", 1, _ODE_ONLY, "Chung et al. 2024, arXiv:2406.08070, Alg. 1"),
          ("euler_ancestral_cfg_pp", cfg_pp.euler_cfg_pp, "sde", 1, _ANCESTRAL_ETA,
           "Chung et al. 2024, arXiv:2406.08070, Alg. 1 with DDIM's ancestral noise"),
          ("dpmpp_2m_cfg_pp", cfg_pp.dpmpp_2m_cfg_pp, "ode", 1, _ODE_ONLY,
           "ComfyUI's CFG++ form of DPM-Solver++(2M), arXiv:2211.01095, Alg. 2"),
          ("dpmpp_2s_ancestral_cfg_pp", cfg_pp.dpmpp_2s_ancestral_cfg_pp, "sde", 2, _ANCESTRAL_ETA,
           "ComfyUI's CFG++ form of DPM-Solver++(2S) ancestral, arXiv:2211.01095, Alg. 1"),
          ("res_multistep_cfg_pp", cfg_pp.res_multistep_cfg_pp, "ode", 1, _ODE_ONLY,
           "ComfyUI's CFG++ form of RES multistep, arXiv:2308.02157")]],
    # torchdiffeq's explicit_adams is not registered: on the non-uniform grids used here it measured order 2
    # (VP, logsnr) and diverged on VE; lms is the variable-step Adams-Bashforth instead.
    _solver("midpoint", runge_kutta.midpoint, 2, "ode", 2, _ODE_ONLY, "explicit midpoint; Hairer et al. 1993, II.1",
            peers="= torchdiffeq's fixed-grid midpoint (tested)"),
])


PLUGIN_PREFIX = "python:"
_PLUGINS: dict[str, Solver] = {}


def get_solver(name: str) -> Solver:
    """The registry entry for ``name``: a registered solver, or ``python:module:attribute``, a Solver of the user's
    own (``plugin_solver``); else a ValueError listing the valid names and the closest ones."""
    if name in SOLVERS:
        return SOLVERS[name]
    if isinstance(name, str) and name.startswith(PLUGIN_PREFIX):
        return plugin_solver(name)
    close = difflib.get_close_matches(str(name), SOLVERS, n=3)
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"unknown solver {name!r}.{hint} Valid solvers: {', '.join(SOLVERS)}")


def plugin_solver(name: str) -> Solver:
    """The Solver that ``python:module:attribute`` names: a solver of the user's own, defined outside this package as
    the registry's are (a plain function plus a ``Solver`` entry), run and checked by the harness as they are. The
    module is imported on first use, in each process that needs it (the sweep's workers and Ray tasks too), so it
    must be on the python path; a ValueError names what is wrong (the form, the module, the attribute, its type)."""
    if name in _PLUGINS:
        return _PLUGINS[name]
    module_name, attribute = _plugin_parts(name)
    if not module_name or not attribute:
        raise ValueError(f"solver {name!r}: expected python:module:attribute, the attribute a solvers.Solver")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name and not module_name.startswith(f"{error.name}."):
            raise  # the module is there and one of its own imports is not: its traceback says which
        raise ValueError(f"solver {name!r}: no module {module_name!r} on the python path (put its folder on "
                         f"PYTHONPATH)") from None
    if not hasattr(module, attribute):
        raise ValueError(f"solver {name!r}: module {module_name!r} has no attribute {attribute!r}")
    solver = getattr(module, attribute)
    if not isinstance(solver, Solver):
        raise ValueError(f"solver {name!r}: {module_name}.{attribute} is a {type(solver).__name__}, not a "
                         f"solvers.Solver; wrap the function in one: Solver(name, fn, order, stochastic, "
                         f"nfe_per_step, eta, reference)")
    _PLUGINS[name] = solver
    return solver


def _plugin_parts(name: str) -> tuple[str, str]:
    """``python:module:attribute`` -> (module, attribute); empty where the name lacks one."""
    module_name, _, attribute = name[len(PLUGIN_PREFIX):].partition(":")
    return module_name, attribute


def plugin_source_files(name: str) -> list[str]:
    """The files a python: solver's code is in: its module's (the Solver entry) and, where another, its function's."""
    solver = plugin_solver(name)
    modules = {_plugin_parts(name)[0], solver.fn.__module__}
    return sorted(inspect.getsourcefile(sys.modules[module]) for module in modules)


def solver_problem(name: str) -> str | None:
    """Why ``name`` names no registry entry, in one line (a python: solver's own import error included: a user's
    module may raise anything), or None where it names one."""
    try:
        get_solver(name)
    except Exception as error:
        said = str(error)
        return said if said.startswith(("unknown solver", f"solver {name!r}")) else (
            f"solver {name!r}: importing it raised {type(error).__name__}: {error}")
    return None


def _check_time_grid(model: DiffusionModel, ts) -> torch.Tensor:
    if not isinstance(ts, torch.Tensor):
        raise TypeError(f"ts must be a 1-D floating torch.Tensor, got {type(ts).__name__}")
    if ts.ndim != 1 or not ts.is_floating_point():
        raise ValueError(f"ts must be a 1-D floating tensor, got shape {tuple(ts.shape)} and dtype {ts.dtype}")
    ts = ts.detach().to("cpu", torch.float64)
    if ts.numel() < 2:
        raise ValueError(f"ts must hold at least 2 times (one step), got {ts.numel()}")
    if not bool(torch.isfinite(ts).all()):
        raise ValueError(f"ts must be finite, got {ts.tolist()}")
    steps = torch.diff(ts)
    if not bool((steps < 0).all()):
        i = int(torch.nonzero(steps >= 0)[0])
        raise ValueError(f"ts must be strictly decreasing (t_max first), but ts[{i}] = {ts[i].item()} <= "
                         f"ts[{i + 1}] = {ts[i + 1].item()}")
    schedule = model.schedule
    lo, hi = float(ts[-1]), float(ts[0])
    slack = 1e-9 * max(1.0, abs(schedule.t_max))
    if lo < schedule.t_min - slack or hi > schedule.t_max + slack:
        raise ValueError(f"ts spans [{lo}, {hi}] but {schedule!r} is defined on [{schedule.t_min}, {schedule.t_max}]; "
                         f"build the schedule with other t_min/t_max to widen it")
    return ts


def sample(name: str, model: DiffusionModel, x: torch.Tensor, ts: torch.Tensor, *, eta: float | None = None,
           generator: torch.Generator | None = None, noise=None, **options) -> torch.Tensor:
    """Run solver ``name`` from x = x_T at ts[0] down to ts[-1]; returns the sample at ts[-1].

    ``eta`` defaults to the solver's own (0 for ODE solvers, 1 for SDE solvers). Noise for
    stochastic solvers comes from ``noise`` (a noise source, see solvers.noise) or else from
    ``generator``. ``options`` are the solver's own keyword options (``SOLVERS[name].options``).
    """
    solver = get_solver(name)
    if not isinstance(model, DiffusionModel):
        raise TypeError(f"model must be a solvers.DiffusionModel, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating torch.Tensor, got {type(x).__name__}")
    eta = solver.check_eta(eta)
    unknown = sorted(set(options) - set(solver.options))
    if unknown:
        allowed = ", ".join(solver.options) or "none"
        raise ValueError(f"{name}: unknown option(s) {', '.join(unknown)}; allowed options: {allowed}")
    ts = _check_time_grid(model, ts)
    solver.validate_options(options, model.schedule)
    if solver.needs_guidance and not callable(getattr(model, "guided_and_unconditional", None)):
        raise ValueError(f"{name} is a CFG++ sampler: it needs a classifier-free guided model "
                         f"(solvers.guidance.GuidedModel), which gives the unconditional prediction beside the guided "
                         f"one; got {type(model).__name__}")
    if noise is None:
        noise = GaussianNoise(generator)
    return solver.fn(model, x, ts, eta=eta, noise=noise, **solver.fixed, **options)
