"""A library of diffusion-model samplers: torch only, usable without the benchmarking harness.

    from solvers import SOLVERS, sample, DiffusionModel
    x0 = sample("heun", DiffusionModel(net, schedule, "eps"), x_T, timesteps("logsnr", 20, schedule))
"""
from solvers.adaptive import SolverDiverged
from solvers.model import DiffusionModel
from solvers.registry import SOLVERS, NoisePlan, Solver, get_solver, sample

__all__ = ["SOLVERS", "NoisePlan", "Solver", "DiffusionModel", "SolverDiverged", "get_solver", "sample"]
