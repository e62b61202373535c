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
