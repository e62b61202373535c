"""Exact identities between solvers that are the same map written two ways (float64)."""
import pytest
import torch

from bench.models import ring2d
from solvers import sample
from solvers.schedules import EDM
from solvers.spacing import timesteps
from support import prior_sample


@pytest.mark.parametrize("spacing", ["logsnr", "uniform", "karras"])
def test_dpm_solver_1_equals_ddim(schedule, spacing):
    model = ring2d().model(schedule)
    x_T = prior_sample(schedule, 64, 2)
    ts = timesteps(spacing, 25, schedule)
    torch.testing.assert_close(sample("dpm_solver_1", model, x_T, ts), sample("ddim", model, x_T, ts), rtol=0, atol=1e-12)


@pytest.mark.parametrize("spacing", ["logsnr", "karras", "uniform"])
def test_ddim_equals_euler_on_the_edm_schedule(spacing):
    schedule = EDM()
    model = ring2d().model(schedule)
    x_T = prior_sample(schedule, 64, 2)
    ts = timesteps(spacing, 25, schedule)
    torch.testing.assert_close(sample("ddim", model, x_T, ts), sample("euler", model, x_T, ts), rtol=0, atol=1e-12)


def test_dpmpp_2m_sde_with_eta_zero_is_dpmpp_2m(schedule):
    model = ring2d().model(schedule)
    x_T = prior_sample(schedule, 64, 2)
    ts = timesteps("logsnr", 25, schedule)
    torch.testing.assert_close(sample("dpmpp_2m_sde", model, x_T, ts, eta=0.0), sample("dpmpp_2m", model, x_T, ts),
                               rtol=0, atol=1e-12)


def test_ddpm_with_the_posterior_variance_is_ddim_at_eta_one(schedule):
    """Ho et al.'s ancestral step with sigma^2 = beta_tilde is DDIM's eq. 16 at eta = 1 (Song et al. 2021,
    Sec. 4.1), draw for draw on the same noise."""
    from solvers.noise import BrownianNoise

    model = ring2d().model(schedule)
    x_T = prior_sample(schedule, 64, 2)
    ts = timesteps("logsnr", 20, schedule)

    def run(name, **options):
        noise = BrownianNoise(x_T, schedule.t_min, schedule.t_max, seed=3)
        return sample(name, model, x_T, ts, eta=1.0, noise=noise, **options)

    torch.testing.assert_close(run("ddpm", variance="beta_tilde"), run("ddim"), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(run("ddpm", variance="beta"), run("ddim"))
