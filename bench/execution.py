"""How the network is executed: a grid axis (spec key ``exec_modes``), separate from the solver.

On a large grid the way the network runs, not the solver arithmetic, decides what a user can afford;
each mode is the same solver on the same x_T with the network executed differently, and rows record
how far the samples drift from the eager ones (``drift_vs_eager``):

- ``eager``: the network as given, float32 (TF32 matmuls allowed on a GPU).
- ``bf16``: the network under ``torch.autocast`` in bfloat16 (CPU or CUDA); the solver's own
  arithmetic stays in the config's dtype.
- ``compile``: the network function under ``torch.compile`` (TorchInductor), compiled for the batch
  shapes the warm-up runs.

Capturing the whole solve in a CUDA graph is not offered yet (it needs a GPU to be tested on).
"""
from __future__ import annotations

import torch

from solvers.model import DiffusionModel

EXEC_MODES = ("eager", "bf16", "compile")


def _autocast_bf16(net, device: torch.device):
    def net_bf16(x, t):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return net(x, t).to(x.dtype)

    return net_bf16


def in_mode(model: DiffusionModel, mode: str, device: torch.device) -> DiffusionModel:
    """``model`` with its network executed in ``mode`` (the same schedule and prediction)."""
    if mode not in EXEC_MODES:
        raise ValueError(f"unknown exec mode {mode!r}; allowed: {', '.join(EXEC_MODES)}")
    if device.type == "cuda":  # float32 on a GPU means TF32 matmuls and convolutions, as users run it
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if mode == "bf16":
        return DiffusionModel(_autocast_bf16(model.net, device), model.schedule, model.prediction)
    if mode == "compile":
        return DiffusionModel(torch.compile(model.net, dynamic=False), model.schedule, model.prediction)
    return model
