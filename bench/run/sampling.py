"""Sampling one config: its time grid, its seeded noise, batch by batch, timed, with the OOM retry.

This is the path every row's samples take, and the one tests of the runner's numbers call. The
noise of a config is decided by the solver's registry entry (``Solver.draws_noise``), not by eta
alone: a stochastic run gets one Brownian path per noise batch (the spec's ``batch_size`` samples),
fixed by the config's seed and the batch index (so a 2n-step step-doubling partner, and every other
config with that seed and batch size, sees the same path), queried for the whole time grid before
the clock starts; a deterministic run gets ``NoNoise``, which raises if a solver draws anyway.

A config is solved in parts of at most the spec's batch: smaller ones when an out-of-memory error
halves the batch, or when its pre-drawn noise would exceed ``NOISE_BUDGET_BYTES`` (a 1,000-step DDPM at
batch 2,000 of 3x32x32 images would hold 25 GB). A part takes its rows of its noise batch's path
(``RowsOf``), so every sample sees the same noise whatever the part it is solved in.

A conditional config's labels go with its x_T: each part's rows of them are set on the guided model
(``condition_on``) before the part is solved, outside the clock.

A solve shorter than ``REPEAT_BELOW_S`` is timed ``timing_repeats`` times (the same x_T and noise,
so the same samples); ``wall_s`` is the median and ``wall_s_std`` the spread of those timings.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from bench.spec.config import RunConfig
from bench.run.execution import CapturedSolve
from solvers import get_solver, sample
from solvers.noise import BrownianNoise, NoNoise, PrecomputedNoise, RowsOf
from solvers.spacing import timesteps

BATCH_SEED_STRIDE = 100_003  # noise batch b of seed s draws its path from seed s * stride + b
NOISE_BUDGET_BYTES = 2 * 1024**3  # pre-drawn noise one part of a config may hold
REPEAT_BELOW_S = 1.0  # a solve that takes less is timed again, up to the spec's timing_repeats in all


class Timer:
    """Wall time of a block: CUDA events around it on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.end.record()
            torch.cuda.synchronize()
            self.seconds = self.start.elapsed_time(self.end) / 1000
        else:
            self.seconds = time.perf_counter() - self.t0


def _noise_plan(cfg: RunConfig, schedule, ts: torch.Tensor) -> tuple[bool, int, list]:
    """(whether the run draws noise, extra streams, extra intervals) of a config on the grid ``ts``."""
    solver, options = get_solver(cfg.solver), dict(cfg.options)
    if not solver.draws_noise(cfg.eta, options):
        return False, 0, []
    return True, solver.extra_noise_streams(options), solver.extra_noise_intervals(schedule, ts.tolist(), options)


def part_size(cfg: RunConfig, schedule, ts: torch.Tensor, like: torch.Tensor) -> int:
    """The largest part of a noise batch whose pre-drawn noise fits NOISE_BUDGET_BYTES (the spec's batch if it fits)."""
    draws, streams, intervals = _noise_plan(cfg, schedule, ts)
    if not draws:
        return cfg.batch_size
    per_sample = ((len(ts) - 1) * (streams + 1) + len(intervals)) * like[0].numel() * like.element_size()
    return max(1, min(cfg.batch_size, NOISE_BUDGET_BYTES // per_sample))


def noise_source(cfg: RunConfig, noise_batch: torch.Tensor, schedule, batch_index: int, ts: torch.Tensor,
                 rows: slice | None = None):
    """The noise rows ``rows`` (default all) of noise batch ``batch_index`` are sampled with: its seeded Brownian
    path, drawn now on the time grid ``ts`` (PrecomputedNoise) so the solve's clock does not time the Brownian tree;
    or NoNoise. (Adaptive solvers are ODE solvers: they never draw.)"""
    draws, streams, intervals = _noise_plan(cfg, schedule, ts)
    if not draws:
        return NoNoise(f"{cfg.solver} at eta = {cfg.eta:g} with options {dict(cfg.options)} is deterministic "
                       "according to its registry entry (Solver.draws_noise)")
    path = BrownianNoise(noise_batch, schedule.t_min, schedule.t_max, seed=cfg.seed * BATCH_SEED_STRIDE + batch_index)
    part = noise_batch
    if rows is not None and (rows.start, rows.stop) != (0, len(noise_batch)):
        path, part = RowsOf(path, noise_batch, rows.start, rows.stop), noise_batch[rows]
    return PrecomputedNoise(path, ts, part, streams=streams, extra_intervals=intervals)


def grid(cfg: RunConfig, schedule, steps: int | None) -> torch.Tensor:
    """The time grid a config is solved on with ``steps`` steps (adaptive solvers: t_max and t_min only; a fitted
    grid: its own values, on the model's schedule)."""
    if cfg.fitted is not None:
        return cfg.fitted.times(schedule)
    return timesteps(cfg.spacing, steps, schedule) if steps is not None else timesteps("uniform", 1, schedule)


FINAL_STEP_NFE = {"none": 0, "x0": 1}  # network evaluations a solve's final step adds (bench.spec.config.FINAL_STEPS)


def declared_nfe(cfg: RunConfig, steps: int | None) -> int | None:
    """The network evaluations per sample a fixed-step solve of ``steps`` declares: its solver entry's
    ``nfe(steps, options)`` and the final step's; None for an adaptive solver (it counts as it goes)."""
    nfe = get_solver(cfg.solver).nfe(steps, **dict(cfg.options))
    return None if nfe is None else nfe + FINAL_STEP_NFE[cfg.final_step]


def final_step(cfg: RunConfig, model, x: torch.Tensor, t_last: float) -> torch.Tensor:
    """A solve's sample from its state ``x`` at the grid's last time: x itself, or with ``final_step = "x0"`` the x0
    prediction there (one network evaluation, counted: the step to sigma 0 that ends k-diffusion's and ComfyUI's
    schedules and diffusers' FlowMatchEulerDiscreteScheduler; for DDIM it is exactly DDIM's step to sigma 0)."""
    return model.x0(x, t_last) if cfg.final_step == "x0" else x


@dataclass
class Solve:
    """All samples of one config and what it cost: time (the median over repeated timings, their standard
    deviation, how many), NFE, network passes (a guided evaluation: 1 NFE, 2 passes; None for an unguided model) and
    adaptive steps per part, the part size used and the number of parts (for the overhead against the bare network
    forward), the untimed CUDA-graph capture, and the noise draws the solver asked for that its entry's NoisePlan
    did not list (drawn from the Brownian tree inside the timed solve: PrecomputedNoise.misses)."""

    samples: torch.Tensor
    seconds: float
    seconds_std: float
    repeats: int
    nfe: float
    passes: float | None
    accepted: float
    rejected: float
    batch_used: int
    batches: int
    capture_s: float
    noise_misses: int = 0


FORWARD_REPEATS = 5


def forward_seconds(model, like: torch.Tensor, t: float, device: torch.device, conditions=None) -> float:
    """The bare network forward at ``like``'s batch shape, device and dtype (a guided model's: one guided evaluation
    on ``conditions``): the median of FORWARD_REPEATS timed calls after one untimed call, under no_grad, as the
    solve runs it."""
    times = torch.full((like.shape[0],), t, device=like.device, dtype=like.dtype)
    if conditions is not None:
        model.condition_on(conditions)
    seconds = []
    with torch.no_grad():
        model.net(like, times)
        for _ in range(FORWARD_REPEATS):
            with Timer(device) as timer:
                model.net(like, times)
            seconds.append(timer.seconds)
    return sorted(seconds)[len(seconds) // 2]


def solve(cfg: RunConfig, model, x_T: torch.Tensor, steps: int | None, device: torch.device,
          exec_mode: str | None = None, repeats: int = 1, conditions: torch.Tensor | None = None) -> Solve:
    """Sample every x_T of a config (``steps`` overrides its step count, for the step-doubling partner;
    ``exec_mode`` the config's, for its eager twin; ``conditions``: a conditional config's labels, one per x_T). ``model`` is already in the mode (bench.run.execution.in_mode);
    cuda_graph captures the solve here. A solve faster than REPEAT_BELOW_S is timed up to ``repeats`` times.

    On a CUDA out-of-memory error the part size halves and the whole config starts again.
    """
    graphed = (exec_mode or cfg.exec_mode) == "cuda_graph"
    options = dict(cfg.options)
    if cfg.tolerance is not None:
        options.update(rtol=cfg.tolerance, atol=cfg.tolerance)
    schedule = model.schedule
    get_solver(cfg.solver).validate_options(dict(cfg.options), schedule)  # before any noise is drawn or network called
    ts = grid(cfg, schedule, steps)
    adaptive = get_solver(cfg.solver).adaptive
    batch = part_size(cfg, schedule, ts, x_T)
    captured = {}  # cuda_graph: one captured solve per part shape (capture untimed)
    noise_misses = 0  # in the first timed pass

    def solve_part(x, noise, **extra):
        x = sample(cfg.solver, model, x, ts, eta=cfg.eta, noise=noise, **options, **extra)
        return final_step(cfg, model, x, float(ts[-1]))

    def timed_pass(drawn: list | None):
        """Every part once: (outputs, seconds, NFE, passes, accepted, rejected) summed over parts, and the parts with
        their noise while the pass is still short enough to be repeated (a repeat reuses them; None after that)."""
        nonlocal noise_misses
        outputs, seconds, nfe, passes, accepted, rejected = [], 0.0, 0, 0, 0, 0
        parts = drawn if drawn is not None else _parts()
        kept = []
        for part, noise, labels in parts:
            extra = {"stats": {}} if adaptive else {}  # adaptive solvers fill it
            if labels is not None:
                model.condition_on(labels)
            if graphed and part.shape not in captured:
                captured[part.shape] = CapturedSolve(solve_part, model, part, noise)
            model.reset_nfe()
            # no_grad, not inference_mode: classifier guidance takes gradients inside (enable_grad)
            with Timer(device) as timer, torch.no_grad():
                out = captured[part.shape](part, noise) if graphed else solve_part(part, noise, **extra)
            outputs.append(out)
            seconds += timer.seconds
            nfe += captured[part.shape].nfe if graphed else model.nfe
            if drawn is None:  # the first pass (a repeat reuses the same noise, and would count its misses again)
                noise_misses += getattr(noise, "misses", 0)
            passes += captured[part.shape].passes if graphed else getattr(model, "passes", 0)
            if adaptive:
                accepted, rejected = accepted + extra["stats"]["accepted"], rejected + extra["stats"]["rejected"]
            if kept is not None and repeats > 1 and seconds < REPEAT_BELOW_S:
                kept.append((part, noise, labels))
            else:
                kept = None
        return (outputs, seconds, nfe, passes, accepted, rejected), kept

    def _parts():
        """(part, its pre-drawn noise, its labels) for every part of every noise batch, drawn as the pass reaches it."""
        for index, noise_batch in enumerate(x_T.split(cfg.batch_size)):
            for start in range(0, len(noise_batch), batch):
                rows = slice(start, min(start + batch, len(noise_batch)))
                first = index * cfg.batch_size + rows.start
                labels = None if conditions is None else conditions[first:first + rows.stop - rows.start]
                yield noise_batch[rows], noise_source(cfg, noise_batch, schedule, index, ts, rows), labels

    while True:
        try:
            noise_misses = 0
            (outputs, seconds, nfe, passes, accepted, rejected), drawn = timed_pass(None)
            timings = [seconds]
            while drawn is not None and len(timings) < repeats:  # a short solve, timed again on the same noise
                timings.append(timed_pass(drawn)[0][1])
            n = len(outputs)
            spread = statistics.stdev(timings) if len(timings) > 1 else float("nan")
            return Solve(torch.cat(outputs), statistics.median(timings), spread, len(timings), nfe / n,
                         passes / n if hasattr(model, "passes") else None, accepted / n, rejected / n, batch, n,
                         sum(c.capture_s for c in captured.values()), noise_misses)
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
            batch = max(1, batch // 2)
            captured.clear()
            torch.cuda.empty_cache()
