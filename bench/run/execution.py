"""How the network is executed: a grid axis (spec key ``exec_modes``), separate from the solver.

On a large grid the way the network runs, not the solver arithmetic, decides what a user can afford;
each mode is the same solver on the same x_T with the network executed differently, and rows record
how far the samples drift from the eager ones (``drift_vs_eager``):

- ``eager``: the network as given, in the config's dtype (TF32 as the sweep's execution policy sets it,
  bench.run.policy: no mode switches it).
- ``bf16``: the network under ``torch.autocast`` in bfloat16 (CPU or CUDA); the solver's own
  arithmetic stays in the config's dtype.
- ``compile``: the network function under ``torch.compile`` (TorchInductor), compiled for the batch
  shapes the warm-up runs.
- ``cuda_graph``: the whole fixed-step solve (every network call and every solver update) captured once per
  config and batch shape in a CUDA graph with static input buffers (x_T and the pre-drawn noise), then
  replayed per batch (``CapturedSolve``); the network itself runs as in eager. At batch 1-64 an eager loop is
  bound by kernel launches, which a replay does not pay. CUDA only (a CPU device is a spec error), fixed-step
  solvers only (adaptive ones decide their steps on the host: skipped rows).
"""
from __future__ import annotations

import time

import torch

from bench.spec.config import EXEC_MODES
from solvers.model import DiffusionModel


def _autocast_bf16(net, device: torch.device):
    def net_bf16(x, t, *condition):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return net(x, t, *condition).to(x.dtype)

    return net_bf16


def in_mode(model: DiffusionModel, mode: str, device: torch.device) -> DiffusionModel:
    """``model`` with its network executed in ``mode`` (the same schedule and prediction)."""
    if mode not in EXEC_MODES:
        raise ValueError(f"unknown exec mode {mode!r}; allowed: {', '.join(EXEC_MODES)}")
    if mode == "bf16":
        return model.with_network(lambda net: _autocast_bf16(net, device))
    if mode == "compile":
        return model.with_network(lambda net: torch.compile(net, dynamic=False))
    return model  # eager, and cuda_graph: the network as in eager, the solve captured (CapturedSolve)


class CapturedSolve:
    """One fixed-step solve captured in a CUDA graph for one batch shape (exec mode ``cuda_graph``).

    ``solve(x, noise)`` must run on device tensors without host synchronisation. It runs once on a side stream
    (allocations and kernel choices happen outside the graph), then once under capture into static buffers: x
    and ``noise``'s pre-drawn tensors (a PrecomputedNoise, or NoNoise for a deterministic run). A call copies the
    batch's x_T and its own pre-drawn noise into those buffers, replays the graph and returns a copy of the
    output. ``nfe`` (``passes``) is the network evaluations (passes) of one solve (the graph replays them without counting);
    ``capture_s`` the seconds the warm-up and capture took (untimed, recorded in the row).
    """

    def __init__(self, solve, model: DiffusionModel, x: torch.Tensor, noise):
        started = time.perf_counter()
        self.x, self.noise = x.clone(), noise
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.no_grad():
            with torch.cuda.stream(side):
                solve(self.x, self.noise)
            torch.cuda.current_stream(x.device).wait_stream(side)
            model.reset_nfe()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = solve(self.x, self.noise)
        torch.cuda.synchronize(x.device)
        self.nfe, self.capture_s = model.nfe, time.perf_counter() - started
        self.passes = getattr(model, "passes", None)  # a guided model's network passes per solve

    def __call__(self, x: torch.Tensor, noise) -> torch.Tensor:
        self.x.copy_(x)
        if noise is not self.noise and hasattr(noise, "copy_into"):
            noise.copy_into(self.noise)
        self.graph.replay()
        return self.out.clone()
