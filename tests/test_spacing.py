import pytest
import torch

from solvers.spacing import SPACINGS, timesteps


@pytest.mark.parametrize("kind", list(SPACINGS))
@pytest.mark.parametrize("n", [1, 2, 7, 50, 256])
def test_grid_shape_ends_and_order(schedule, kind, n):
    ts = timesteps(kind, n, schedule)
    assert ts.shape == (n + 1,) and ts.dtype == torch.float64
    assert ts[0].item() == schedule.t_max and ts[-1].item() == schedule.t_min
    assert bool((torch.diff(ts) < 0).all())


def test_formulas_at_interior_points(ring):
    from solvers.schedules import VPLinear

    schedule = VPLinear()
    lo, hi = schedule.t_min, schedule.t_max
    n = 4
    assert timesteps("uniform", n, schedule)[1].item() == pytest.approx(hi + 0.25 * (lo - hi))
    assert timesteps("quadratic", n, schedule)[1].item() == pytest.approx(lo + (hi - lo) * (1 - 0.25**2))
    assert timesteps("time_quadratic", n, schedule)[2].item() == pytest.approx((0.5 * (hi**0.5 + lo**0.5)) ** 2)
    lams = schedule.lambda_(timesteps("logsnr", n, schedule))
    torch.testing.assert_close(torch.diff(lams), torch.full((n,), (lams[-1] - lams[0]).item() / n, dtype=torch.float64))
    sig = torch.exp(-schedule.lambda_(timesteps("karras", n, schedule))) ** (1 / 7)
    torch.testing.assert_close(torch.diff(sig), torch.full((n,), (sig[-1] - sig[0]).item() / n, dtype=torch.float64))


def test_karras_rho_is_configurable():
    from solvers.schedules import EDM

    assert not torch.equal(timesteps("karras", 10, EDM(), rho=3.0), timesteps("karras", 10, EDM()))


def test_unknown_kind_lists_valid_kinds(schedule):
    with pytest.raises(ValueError, match="unknown spacing 'linear'.*uniform, quadratic, cosine, logsnr, karras, time_quadratic"):
        timesteps("linear", 10, schedule)


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_bad_step_count(schedule, n):
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        timesteps("uniform", n, schedule)
