"""Fit a time grid to a model for a solver and a step count: ``python -m bench fit-schedule``.

The objective is what err_reference measures: the distance at t_min between the solver's samples and a
high-accuracy solve of the same model from the same x_T (the teacher), here the mean over training samples of
the per-sample L2 norm. The fit runs on the runner's own path: the model, x_T and conditions of a RunConfig of
the training seeds (bench.run.runner.SweepCache), its solves through bench.run.sampling, its dtype and device.

1. **Teacher.** One dopri5 solve per training seed in float64 (solvers.reference.reference_trajectory), read at
   M + 1 candidate times uniform in log-SNR between t_max and t_min.
2. **Step costs and the dynamic programme** (GITS, Chen et al. 2024, arXiv:2405.11326). The cost of a step from
   candidate j to candidate k is the mean distance between one step of the solver from the teacher's state at t_j
   and the teacher's state at t_k; bench.fit.dynamic picks the n steps of least summed cost. A step's first network
   evaluation is at the teacher's state, whatever k: the network is called once per candidate for it and the
   result reused (``RememberedNetwork``), so a 1-NFE solver's M(M + 1)/2 step costs take M + 1 network calls.
   A multistep solver's step reads earlier evaluations, which a single step from the teacher does not have: its
   cost is that of the solver's own one-step (starting) form, and the whole-solve refinement (3) fits the
   multistep solver itself. The summed local costs stand in for the final error; (3) measures the final error.
3. **Start and refinement.** The DP grid and every formula spacing compared (``formulas``) are solved whole on
   the training seeds; coordinate descent starts from the best of them and moves one interior point at a time
   in log-SNR (by the candidate spacing, halved every round), keeping a move only when the whole-solve error
   falls. The fitted grid's training error is therefore never above that of any formula it was compared with.

Each grid is written with what it cost (network calls of the training batch, seconds); the teacher and the step
costs are shared by every step count fitted together, and each file counts them in full (what fitting that one
grid alone costs).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.fit.dynamic import cheapest_path
from bench.metrics.errors import per_sample_norms
from bench.run import sampling
from bench.run.runner import SweepCache, resolve_device
from bench.spec import SpecError, expand, parse_spec
from bench.spec import fitted as fitted_grids
from solvers import get_solver, sample
from solvers.registry import solver_problem
from solvers.noise import NoNoise
from solvers.reference import reference_trajectory
from solvers.spacing import AYS_LEVELS, SPACINGS, explicit_name, timesteps

# What a fit compares its grid with by default: the spacings the issue that asked for fitting named, AYS where
# its published range fits the model.
FORMULAS = ("uniform", "logsnr", "karras", "time_quadratic", "kl_optimal", *AYS_LEVELS)


@dataclass
class FitRequest:
    """What to fit: a model (a spec's model name), solvers, step counts or NFE budgets, and the training set."""

    model: str
    solvers: list[str]
    steps: list[int] = field(default_factory=list)
    nfe: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [1000])
    n_samples: int = 32
    candidates: int = 40
    teacher_tolerance: float = 1e-5
    refine_rounds: int = 2
    formulas: tuple = FORMULAS
    schedule: str = "VPLinear"
    guidance_scale: float | None = None
    device: str = "cpu"
    dtype: str = "float32"
    threads: int | None = None


def _raw_spec(request: FitRequest, solver: str, steps: list[int]) -> dict:
    raw = {"models": [request.model], "solvers": [solver], "steps": steps, "spacings": ["logsnr"],
           "seeds": request.seeds, "n_samples": request.n_samples, "schedule": request.schedule,
           "device": request.device, "dtype": request.dtype, "metrics": ["err_reference"],
           "reference_tolerance": request.teacher_tolerance}
    if request.guidance_scale is not None:
        raw["guidance_scales"] = [request.guidance_scale]
    if request.threads is not None:
        raw["threads"] = request.threads
    return raw


def step_counts(request: FitRequest, solver_name: str) -> list[int]:
    """The step counts to fit for a solver: ``steps``, and for each NFE budget the most steps it affords."""
    solver = get_solver(solver_name)
    counts = list(request.steps)
    for budget in request.nfe:
        fitting = [n for n in range(solver.min_steps, budget + 1) if solver.nfe(n) <= budget]
        counts.append(max(fitting))
    return sorted(set(counts))


def check(request: FitRequest) -> list[str]:
    """Every problem with a request, one line each, before any compute."""
    errors = []
    if not request.steps and not request.nfe:
        errors.append("fit-schedule: give --steps or --nfe (the number of steps, or the NFE budget, to fit for)")
    if request.candidates < 2:
        errors.append(f"fit-schedule: --candidates must be >= 2, got {request.candidates}")
    if request.refine_rounds < 0:
        errors.append(f"fit-schedule: --refine-rounds must be >= 0, got {request.refine_rounds}")
    if bad := [s for s in request.formulas if s not in SPACINGS]:
        errors.append(f"fit-schedule: --formulas: unknown spacing {bad[0]!r}; allowed: {', '.join(SPACINGS)}")
    for name in request.solvers:
        if problem := solver_problem(name):
            errors.append(f"fit-schedule: {problem}")
            continue
        solver = get_solver(name)
        if solver.adaptive:
            errors.append(f"fit-schedule: {name} is adaptive: it chooses its own steps, there is no grid to fit "
                          "(fit a fixed-step solver)")
            continue
        try:
            solver.check_eta(0.0)
            deterministic = not solver.draws_noise(0.0)
        except ValueError:
            deterministic = False
        if not deterministic:
            errors.append(f"fit-schedule: {name} draws noise: its samples have no single reference solve to be fitted "
                          "against (fit the deterministic solvers, eta 0)")
            continue
        if solver.order_for(0.0) is None:
            errors.append(f"fit-schedule: {name} does not converge to the probability-flow ODE's solution (its "
                          "registry order is None), so the reference solve is not its target")
            continue
        minimum = solver.nfe(solver.min_steps)
        if bad := [b for b in request.nfe if b < minimum]:
            errors.append(f"fit-schedule: NFE budget {bad[0]} is below {name}'s minimum of {minimum} "
                          f"({solver.min_steps} step(s) of {solver.nfe_per_step} NFE)")
            continue
        if bad := [n for n in request.steps if n < solver.min_steps]:
            errors.append(f"fit-schedule: {name} needs at least {solver.min_steps} steps, got {bad[0]}")
            continue
        if too_many := [n for n in step_counts(request, name) if n >= request.candidates]:
            errors.append(f"fit-schedule: {too_many[0]} steps of {name} need more than {too_many[0]} candidates "
                          f"(--candidates {request.candidates})")
            continue
        try:
            parse_spec(_raw_spec(request, name, step_counts(request, name)), "fit-schedule")
        except SpecError as err:
            errors += [line.replace("fit-schedule: key", "fit-schedule: spec key") for line in str(err).splitlines()]
    return list(dict.fromkeys(errors))


class RememberedNetwork:
    """A network that counts its calls and, while ``remembering``, answers a call it has seen (the same times and
    exactly equal inputs) from memory: the step costs evaluate every step from a teacher state at the same state."""

    def __init__(self, net):
        self.net, self.calls, self.remembering = net, 0, False
        self._seen: dict = {}

    def __call__(self, *args):
        if not self.remembering:  # the whole solves: a plain counted call (no key read from the device)
            self.calls += 1
            return self.net(*args)
        key = float(args[1].reshape(-1)[0])  # the time of the batch's first sample
        for seen_args, output in self._seen.get(key, ()):
            if all(_same(a, b) for a, b in zip(args, seen_args)):
                return output.clone()
        self.calls += 1
        output = self.net(*args)
        self._seen.setdefault(key, []).append((tuple(a.clone() if torch.is_tensor(a) else a for a in args),
                                                output.clone()))
        return output

    def forget(self) -> None:
        self._seen.clear()


def _same(a, b) -> bool:
    if torch.is_tensor(a) and torch.is_tensor(b):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    return a == b


@dataclass
class _Seed:
    """One training seed's config (its x_T and conditions) and the teacher's states at the candidates."""

    cfg: object
    x_T: torch.Tensor
    conditions: torch.Tensor | None
    teacher: torch.Tensor  # (M + 1, n, ...) float64


class Fitter:
    """The fit of one model and training set: its teacher (shared by every solver and step count), then grids."""

    def __init__(self, request: FitRequest, log=print):
        self.request, self.log = request, log
        self.cache = SweepCache()
        self.device, self.dtype = resolve_device(request.device), getattr(torch, request.dtype)
        self.seeds: list[_Seed] = []

    def _configs(self, solver: str, steps: list[int]):
        return expand(parse_spec(_raw_spec(self.request, solver, steps), "fit-schedule"))

    def prepare(self, solver: str) -> None:
        """The model and the teacher trajectories (once: every solver shares them)."""
        if self.seeds:
            return
        started = time.perf_counter()
        per_seed = {c.seed: c for c in self._configs(solver, step_counts(self.request, solver))}
        first = next(iter(per_seed.values()))
        self.source, eager = self.cache.model(first)
        self.model = eager.with_network(RememberedNetwork)
        self.network = self.model.conditional_net if hasattr(self.model, "conditional_net") else self.model.net
        self.schedule = self.model.schedule
        self.candidates = timesteps("logsnr", self.request.candidates, self.schedule)
        for seed, cfg in per_seed.items():
            x_T = self.cache.prior(cfg, self.source.event_shape, self.device, self.dtype)
            conditions = self.cache.conditions(cfg, self.device)
            if conditions is not None:
                self.model.condition_on(conditions)
            with torch.no_grad():
                teacher = reference_trajectory(self.model, x_T.double(), self.candidates,
                                               rtol=self.request.teacher_tolerance, atol=self.request.teacher_tolerance)
            self.seeds.append(_Seed(cfg, x_T, conditions, teacher))
        self.teacher_calls, self.teacher_s = self.network.calls, time.perf_counter() - started
        n = len(self.seeds) * self.request.n_samples
        self.log(f"teacher: {n} samples (seeds {self.request.seeds}) at {self.request.candidates + 1} candidate times, "
                 f"dopri5 rtol = atol = {self.request.teacher_tolerance:g}: {self.teacher_calls} network calls, "
                 f"{self.teacher_s:.1f} s")

    def step_costs(self, solver: str) -> torch.Tensor:
        """costs[j, k]: the mean distance to the teacher at t_k of one step of ``solver`` from the teacher at t_j."""
        size = len(self.candidates)
        total = torch.zeros((size, size), dtype=torch.float64)
        self.network.remembering = True
        try:
            for seed in self.seeds:
                if seed.conditions is not None:
                    self.model.condition_on(seed.conditions)
                for j in range(size - 1):
                    start = seed.teacher[j].to(self.dtype)
                    for k in range(j + 1, size):
                        ts = self.candidates[[j, k]]
                        with torch.no_grad():
                            x = sample(solver, self.model, start, ts, eta=0.0, noise=NoNoise("fit-schedule: eta 0"))
                        total[j, k] += per_sample_norms(x.double() - seed.teacher[k]).mean()
                    self.network.forget()  # the next j starts from other states
        finally:
            self.network.remembering = False
            self.network.forget()
        admissible = torch.ones_like(total, dtype=torch.bool).triu(diagonal=1)  # steps go forward, from j to k > j
        return torch.where(admissible, total / len(self.seeds), float("inf"))

    def error(self, solver: str, ts: torch.Tensor) -> float:
        """The objective: mean over training samples of |x - x_teacher| at t_min, solved on the runner's path."""
        distances = []
        for seed in self.seeds:
            cfg = dataclasses.replace(seed.cfg, solver=solver, spacing=explicit_name(ts.tolist(), "times"),
                                      steps=len(ts) - 1)
            x = sampling.solve(cfg, self.model, seed.x_T, len(ts) - 1, self.device, conditions=seed.conditions).samples
            distances.append(per_sample_norms(x.double() - seed.teacher[-1]))
        value = float(torch.cat(distances).mean())
        return value if math.isfinite(value) else float("inf")

    def refine(self, solver: str, ts: torch.Tensor, error: float) -> tuple[torch.Tensor, float]:
        """Coordinate descent on the whole-solve error over the interior points, in log-SNR."""
        lam = self.schedule.lambda_(ts).to(torch.float64)
        delta = float(lam[-1] - lam[0]) / self.request.candidates
        for _ in range(self.request.refine_rounds):
            for i in range(1, len(ts) - 1):
                for move in (delta, -delta):
                    trial = lam.clone()
                    trial[i] += move
                    if not (trial[i - 1] < trial[i] < trial[i + 1]):
                        continue
                    trial_ts = self.schedule.t_of_lambda(trial).to(torch.float64)
                    trial_ts[0], trial_ts[-1] = ts[0], ts[-1]
                    if not bool((torch.diff(trial_ts) < 0).all()):
                        continue
                    trial_error = self.error(solver, trial_ts)
                    if trial_error < error:
                        lam, ts, error = trial, trial_ts, trial_error
                        break
            delta /= 2
        return ts, error

    def fit(self, solver: str) -> list[dict]:
        """Fitted grids for ``solver`` (its default options) at each step count of the request: one dict each."""
        self.prepare(solver)
        started, calls = time.perf_counter(), self.network.calls
        costs = self.step_costs(solver)
        shared_calls = self.teacher_calls + self.network.calls - calls
        shared_s = self.teacher_s + time.perf_counter() - started
        self.log(f"{solver}: step costs of {len(self.candidates) * (len(self.candidates) - 1) // 2} candidate steps: "
                 f"{self.network.calls - calls} network calls, {time.perf_counter() - started:.1f} s")
        fitted = []
        for steps in step_counts(self.request, solver):
            started, calls = time.perf_counter(), self.network.calls
            path, dp_cost = cheapest_path(costs, steps)
            dp_ts = self.candidates[path]
            errors = {"dp": self.error(solver, dp_ts)}
            grids = {"dp": dp_ts}
            for formula in self.request.formulas:
                try:
                    grids[formula] = timesteps(formula, steps, self.schedule)
                except ValueError:  # e.g. AYS outside its published range: not a formula for this model
                    continue
                errors[formula] = self.error(solver, grids[formula])
            start = min(errors, key=errors.get)
            ts, error = self.refine(solver, grids[start], errors[start])
            own_calls, own_s = self.network.calls - calls, time.perf_counter() - started
            best_formula = min((k for k in errors if k != "dp"), key=errors.get, default=None)
            sigmas = torch.exp(-self.schedule.lambda_(ts).to(torch.float64))
            fitted.append({
                "solver": solver, "steps": steps, "nfe": get_solver(solver).nfe(steps),
                "times": ts.tolist(), "sigmas": sigmas.tolist(), "start": start, "dp_cost": dp_cost,
                "train_error": {"fitted": error, **errors}, "best_formula": best_formula,
                "network_evaluations": shared_calls + own_calls, "seconds": shared_s + own_s,
                "shared_evaluations": shared_calls})
            self.log(f"{solver} {steps} steps: fitted {error:.4g} (start {start}, DP {errors['dp']:.4g}, best formula "
                     f"{best_formula} {errors.get(best_formula, math.nan):.4g}); {shared_calls + own_calls} network "
                     f"calls, {shared_s + own_s:.1f} s")
        return fitted

    def write(self, fitted: dict, out_dir: Path) -> Path:
        request = self.request
        path = Path(out_dir) / fitted_grids.file_name(request.model, fitted["solver"], fitted["steps"])
        path.parent.mkdir(parents=True, exist_ok=True)
        fields = {
            "model": request.model, "weights_sha256": self.cache.digests.get(
                (request.model, request.schedule, self.seeds[0].cfg.image_resize)),
            "schedule": repr(self.schedule), "solver": fitted["solver"],
            "steps": fitted["steps"], "nfe": fitted["nfe"], "guidance_scale": request.guidance_scale,
            "sigmas": fitted["sigmas"], "times": fitted["times"], "seeds": list(request.seeds),
            "n_samples": request.n_samples, "device": request.device, "dtype": request.dtype,
            "candidates": request.candidates, "teacher_tolerance": request.teacher_tolerance,
            "refine_rounds": request.refine_rounds, "start": fitted["start"], "dp_cost": fitted["dp_cost"],
            "best_formula": fitted["best_formula"], "formulas": [k for k in fitted["train_error"] if k not in
                                                                 ("fitted", "dp")]}
        tables = {"fit_cost": {"network_evaluations": fitted["network_evaluations"], "seconds": fitted["seconds"],
                               "shared_evaluations": fitted["shared_evaluations"]},
                  "train_error": fitted["train_error"]}
        comment = (f"A time grid for {fitted['solver']} at {fitted['steps']} steps on {request.model}, fitted by "
                   f"python -m bench fit-schedule (bench/fit/schedule.py).\nsigmas: sigma/alpha from t_max to t_min; "
                   f"train_error: mean |x - x_teacher| at t_min on the training seeds.\nUse it in a spec: spacings = "
                   f"[\"fitted:{path}\"] (or the folder). Evaluate it on other seeds than {list(request.seeds)}.")
        fitted_grids.write(path, fields, tables, comment)
        return path
