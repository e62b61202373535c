"""What noise costs inside the timed solve: the same solver at eta = 0 and eta = 1, side by side, timed the
way the runner times a config (bench.run.sampling: the Brownian path is queried for the whole time grid
before the clock starts, so eta = 1 adds only the noise arithmetic, one scaled add per step), and, for
comparison, with the Brownian tree queried inside the loop, as the runner did before.
"""
import pytest
import torch

from bench.run import sampling
from bench.spec.config import expand, parse_spec
from bench.run.runner import SweepCache
from solvers import sample
from solvers.noise import BrownianNoise
from solvers.spacing import timesteps

CPU = torch.device("cpu")
GROUP = "ddim, 16 steps, ring2d, 128 samples: the timed part of a config"


def _setup(eta):
    spec = parse_spec({"models": ["ring2d"], "solvers": ["ddim"], "steps": [16], "etas": [eta], "n_samples": 128,
                       "metrics": []})
    cfg = expand(spec)[0]
    cache = SweepCache()
    source, model = cache.model(cfg)
    x_T = cache.prior(cfg, source.event_shape, CPU, torch.float32)
    return cfg, model, x_T, timesteps(cfg.spacing, cfg.steps, model.schedule)


@pytest.mark.parametrize("eta", [0.0, 1.0], ids=["eta0", "eta1"])
def test_runner_timed_solve(benchmark, eta):
    """The runner's noise source (drawn before the clock), then the solve alone under the benchmark's clock."""
    cfg, model, x_T, ts = _setup(eta)
    benchmark.group = GROUP

    def setup():
        return (sampling.noise_source(cfg, x_T, model.schedule, 0, ts),), {}

    benchmark.pedantic(lambda noise: sample("ddim", model, x_T, ts, eta=eta, noise=noise), setup=setup, rounds=30)


def test_brownian_tree_queried_inside_the_loop(benchmark):
    cfg, model, x_T, ts = _setup(1.0)
    s = model.schedule
    benchmark.group = GROUP

    def setup():
        return (BrownianNoise(x_T, s.t_min, s.t_max, seed=0),), {}

    benchmark.pedantic(lambda noise: sample("ddim", model, x_T, ts, eta=1.0, noise=noise), setup=setup, rounds=30)
