"""Helpers shared by the tests (a plain module: torch-fidelity's wheel ships a top-level `tests` package,
so test modules import this as `support`, never as `tests.something`)."""
from __future__ import annotations

import numpy as np
import torch


def fitted_slope(ns, errors) -> float:
    """The empirical order: minus the least-squares slope of log error against log n."""
    return float(-np.polyfit(np.log(ns), np.log(errors), 1)[0])


def prior_sample(schedule, n: int, dim: int, seed: int = 0) -> torch.Tensor:
    """x_T ~ N(0, sigma_{t_max}^2 I) (alpha_{t_max} is ~0 on VP schedules, 1 on VE), float64."""
    g = torch.Generator().manual_seed(seed)
    scale = float(schedule.sigma(schedule.t_max))
    return scale * torch.randn(n, dim, generator=g, dtype=torch.float64)


def k_diffusion_sampling():
    """k-diffusion 0.1.1.post1's ``sampling`` module, loaded without its package ``__init__`` (which
    imports clean-fid, wandb and other extras that `make setup` does not install)."""
    import importlib.util
    import sys
    import types

    if "k_diffusion.sampling" not in sys.modules:
        spec = importlib.util.find_spec("k_diffusion")
        if spec is None:
            raise ImportError("k-diffusion is a test-only peer: `make setup` installs it (pip install --no-deps "
                              "k-diffusion==0.1.1.post1)")
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
