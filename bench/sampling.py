"""Sampling one config: its time grid, its seeded noise, batch by batch, timed, with the OOM retry.

This is the path every row's samples take, and the one tests of the runner's numbers call. The
noise of a config is decided by the solver's registry entry (``Solver.draws_noise``), not by eta
alone: a stochastic run gets one Brownian path per batch, fixed by the config's seed and the batch
index (so a 2n-step step-doubling partner, and every other config with that seed and batch size,
sees the same path), queried for the whole time grid before the clock starts; a deterministic run
gets ``NoNoise``, which raises if a solver draws anyway.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from bench.config import RunConfig
from bench.execution import CapturedSolve
from solvers import SOLVERS, sample
from solvers.noise import BrownianNoise, NoNoise, PrecomputedNoise
from solvers.spacing import timesteps

BATCH_SEED_STRIDE = 100_003  # batch b of seed s draws its path from seed s * stride + b


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


def noise_source(cfg: RunConfig, chunk: torch.Tensor, schedule, batch_index: int, ts: torch.Tensor):
    """The noise a config's batch is sampled with: its seeded Brownian path, its draws on the time grid
    ``ts`` made now (PrecomputedNoise) so the solve's clock does not time the Brownian tree; or NoNoise.
    (Adaptive solvers are ODE solvers: they never draw.)"""
    solver, options = SOLVERS[cfg.solver], dict(cfg.options)
    if not solver.draws_noise(cfg.eta, options):
        return NoNoise(f"{cfg.solver} at eta = {cfg.eta:g} with options {options} is deterministic "
                       "according to its registry entry (Solver.draws_noise)")
    path = BrownianNoise(chunk, schedule.t_min, schedule.t_max, seed=cfg.seed * BATCH_SEED_STRIDE + batch_index)
    return PrecomputedNoise(path, ts, chunk, streams=solver.extra_noise_streams(options),
                            extra_intervals=solver.extra_noise_intervals(schedule, ts.tolist(), options))


@dataclass
class Solve:
    """All samples of one config and what it cost: time, NFE and adaptive steps per batch, batch used,
    and the number of batches (for the overhead against the bare network forward)."""

    samples: torch.Tensor
    seconds: float
    nfe: float
    accepted: float
    rejected: float
    batch_used: int
    batches: int


FORWARD_REPEATS = 5


def forward_seconds(model, like: torch.Tensor, t: float, device: torch.device) -> float:
    """The bare network forward at ``like``'s batch shape, device and dtype: the median of
    FORWARD_REPEATS timed calls after one untimed call, under no_grad, as the solve runs it."""
    times = torch.full((like.shape[0],), t, device=like.device, dtype=like.dtype)
    seconds = []
    with torch.no_grad():
        model.net(like, times)
        for _ in range(FORWARD_REPEATS):
            with Timer(device) as timer:
                model.net(like, times)
            seconds.append(timer.seconds)
    return sorted(seconds)[len(seconds) // 2]


def solve(cfg: RunConfig, model, x_T: torch.Tensor, steps: int | None, device: torch.device,
          exec_mode: str | None = None) -> Solve:
    """Sample every x_T of a config (``steps`` overrides its step count, for the step-doubling partner;
    ``exec_mode`` the config's, for its eager twin). ``model`` is already in the mode (bench.execution.in_mode);
    cuda_graph captures the solve here.

    On a CUDA out-of-memory error the batch halves and the whole config starts again.
    """
    graphed = (exec_mode or cfg.exec_mode) == "cuda_graph"
    options = dict(cfg.options)
    if cfg.tolerance is not None:
        options.update(rtol=cfg.tolerance, atol=cfg.tolerance)
    schedule = model.schedule
    ts = timesteps(cfg.spacing, steps, schedule) if steps is not None else timesteps("uniform", 1, schedule)
    adaptive = SOLVERS[cfg.solver].adaptive
    batch = cfg.batch_size

    def solve_batch(x, noise, **extra):
        return sample(cfg.solver, model, x, ts, eta=cfg.eta, noise=noise, **options, **extra)

    while True:
        try:
            outputs, seconds, nfe, accepted, rejected = [], 0.0, 0, 0, 0
            captured = {}  # cuda_graph: one captured solve per batch shape (capture untimed)
            for index, chunk in enumerate(x_T.split(batch)):
                noise = noise_source(cfg, chunk, schedule, index, ts)
                extra = {"stats": {}} if adaptive else {}  # adaptive solvers fill it
                if graphed and chunk.shape not in captured:
                    captured[chunk.shape] = CapturedSolve(solve_batch, model, chunk, noise)
                model.reset_nfe()
                # no_grad, not inference_mode: classifier guidance takes gradients inside (enable_grad)
                with Timer(device) as timer, torch.no_grad():
                    if graphed:
                        out = captured[chunk.shape](chunk, noise)
                    else:
                        out = solve_batch(chunk, noise, **extra)
                outputs.append(out)
                seconds += timer.seconds
                nfe += captured[chunk.shape].nfe if graphed else model.nfe
                if adaptive:
                    accepted, rejected = accepted + extra["stats"]["accepted"], rejected + extra["stats"]["rejected"]
            n = len(outputs)
            return Solve(torch.cat(outputs), seconds, nfe / n, accepted / n, rejected / n, batch, n)
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
            batch = max(1, batch // 2)
            torch.cuda.empty_cache()
