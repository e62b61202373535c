"""Per-step overhead of each fixed-step solver: what a sampler costs beyond the network.

The network is near free (eps = 0.1 x), so the time is the solver's own arithmetic, schedule
lookups and Python. Run with `make perf` (saved under .benchmarks/) and `make perf-compare`.
These are benchmarks, not tests: they assert nothing about speed.
"""
import pytest
import torch

from solvers import SOLVERS, DiffusionModel, sample
from solvers.guidance import GuidedModel
from solvers.noise import GaussianNoise
from solvers.schedules import VPLinear
from solvers.spacing import timesteps

STEPS = 20
SCHEDULE = VPLinear()
TS = timesteps("logsnr", STEPS, SCHEDULE)
X = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", [n for n, s in SOLVERS.items() if not s.adaptive])
def test_per_step_overhead(benchmark, name):
    solver = SOLVERS[name]
    if solver.needs_guidance:  # CFG++: the same near-free network, guided (one batched pair per evaluation)
        model = GuidedModel(lambda x, t, c: 0.1 * x, SCHEDULE, "eps", null=torch.tensor(0), scale=2.0)
        model.condition_on(torch.zeros(len(X), dtype=torch.int64))
    else:
        model = DiffusionModel(lambda x, t: 0.1 * x, SCHEDULE, "eps")
    eta = solver.default_eta if solver.stochastic == "ode" else solver.default_eta if solver.stochastic == "sde" else 1.0
    benchmark.group = "per-step overhead (20 steps, 64x3x16x16, near-free network)"
    benchmark.extra_info["nfe_per_step"] = solver.nfe(STEPS) / STEPS
    out = benchmark(lambda: sample(name, model, X, TS, eta=eta, noise=GaussianNoise(torch.Generator().manual_seed(1))))
    assert out.shape == X.shape
