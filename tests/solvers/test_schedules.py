import math

import pytest
import torch

from solvers import schedules
from solvers.schedules import EDM, VE, DiscreteVP, VPCosine, VPLinear, VariancePreserving


def interior_times(schedule, n=101, dtype=torch.float64):
    return torch.linspace(schedule.t_min, schedule.t_max, n, dtype=dtype)[1:-1]


@pytest.mark.parametrize("schedule", [VPLinear(), VPCosine(), DiscreteVP.linear()], ids=repr)
def test_variance_preserving_identity(schedule):
    assert isinstance(schedule, VariancePreserving)
    t = interior_times(schedule)
    torch.testing.assert_close(schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2, torch.ones_like(t), rtol=0, atol=1e-12)


def test_lambda_is_log_snr(schedule):
    t = interior_times(schedule)
    expected = torch.log(schedule.alpha(t) / schedule.sigma(t))
    torch.testing.assert_close(schedule.lambda_(t), expected, rtol=1e-10, atol=1e-10)


def test_t_of_lambda_inverts_lambda(schedule):
    t = torch.linspace(schedule.t_min, schedule.t_max, 257, dtype=torch.float64)
    back = schedule.t_of_lambda(schedule.lambda_(t))
    assert (back - t).abs().max().item() < 1e-6 * max(1.0, schedule.t_max)


def test_lambda_decreases_in_t(schedule):
    lam = schedule.lambda_(interior_times(schedule))
    assert bool((torch.diff(lam) < 0).all())


def test_sde_coefficients_match_finite_differences(schedule):
    # Points away from DiscreteVP's kinks, where its piecewise-linear log alpha has no derivative.
    t = interior_times(schedule, 40) + 0.37 / 1000 * (schedule.t_max - schedule.t_min)
    dt = 1e-6 * (schedule.t_max - schedule.t_min)
    dlog_alpha = (torch.log(schedule.alpha(t + dt)) - torch.log(schedule.alpha(t - dt))) / (2 * dt)
    dsigma2 = (schedule.sigma(t + dt) ** 2 - schedule.sigma(t - dt) ** 2) / (2 * dt)
    f = schedule.f(t)
    torch.testing.assert_close(f, dlog_alpha, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(schedule.g2(t), dsigma2 - 2 * f * schedule.sigma(t) ** 2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_any_float_dtype(schedule, dtype):
    t = interior_times(schedule, 12, dtype).reshape(2, 5)
    for fn in (schedule.alpha, schedule.sigma, schedule.lambda_, schedule.f, schedule.g2):
        out = fn(t)
        assert out.shape == (2, 5) and out.dtype == dtype
    assert schedule.t_of_lambda(schedule.lambda_(t)).dtype == dtype


def test_python_float_gives_float64_scalar(schedule):
    out = schedule.sigma(0.5 * (schedule.t_min + schedule.t_max))
    assert out.dtype == torch.float64 and out.ndim == 0


def test_discrete_vp_reproduces_ddpm_cumulative_products():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    schedule = DiscreteVP(betas)
    t_grid = torch.arange(1, 1001, dtype=torch.float64) / 1000
    torch.testing.assert_close(schedule.alpha(t_grid) ** 2, torch.cumprod(1 - betas, 0), rtol=1e-12, atol=0)
    assert schedule.network_time(t_grid).tolist() == list(range(1000))


@pytest.mark.parametrize("n_train", [1000, 37])
def test_discrete_vp_scalar_times_take_the_tensor_paths_values_to_the_bit(n_train):
    """log_alpha of a python float (every time a solver steps through) is computed in python floats, the same
    float64 operations as the tensor path: the same bits, at random times, on every grid node and at the ends."""
    schedule = DiscreteVP(torch.linspace(1e-4, 0.02, n_train, dtype=torch.float64))
    times = (torch.rand(5000, generator=torch.Generator().manual_seed(0), dtype=torch.float64).tolist()
             + [k / n_train for k in range(n_train + 1)] + [0.0, 1e-12, 1 - 1e-12, 1.0])
    scalar = [schedule.log_alpha(t) for t in times]
    assert all(value.dtype == torch.float64 and value.ndim == 0 for value in scalar)
    assert [float(value) for value in scalar] == schedule.log_alpha(torch.tensor(times, dtype=torch.float64)).tolist()


@pytest.mark.parametrize("schedule", [VPLinear(), VPCosine(), DiscreteVP.linear(), EDM()], ids=repr)
def test_alpha_sigma_remembers_each_time_with_the_values_a_fresh_evaluation_gives(schedule, monkeypatch):
    monkeypatch.setattr(schedules, "ALPHA_SIGMA_MEMO_SIZE", 50)
    times = torch.linspace(schedule.t_min, schedule.t_max, 120, dtype=torch.float64).tolist()
    for _ in range(2):  # the second pass reads what the first remembered (the memo clears at 50 times)
        assert [schedule.alpha_sigma(t) for t in times] == [(float(schedule.alpha(t)), float(schedule.sigma(t)))
                                                             for t in times]
    assert 0 < len(schedule._alpha_sigma_memo) <= 50


def test_vp_linear_matches_its_closed_form():
    schedule = VPLinear(beta_min=0.1, beta_max=20.0)
    t = torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64)
    expected = torch.exp(-t**2 * 19.9 / 4 - t * 0.05)
    torch.testing.assert_close(schedule.alpha(t), expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("build, message", [
    (lambda: VPLinear(beta_min=2.0, beta_max=1.0), "beta_min < beta_max"),
    (lambda: VPLinear(t_min=0.0), "t_min must be > 0"),
    (lambda: VPLinear(t_min=0.5, t_max=0.2), "t_min < t_max"),
    (lambda: VPCosine(t_max=1.0), "t_max < 1"),
    (lambda: VE(sigma_min=5.0, sigma_max=1.0), "sigma_min < sigma_max"),
    (lambda: EDM(sigma_min=-1.0), "0 < sigma_min"),
    (lambda: DiscreteVP([0.5, 1.5]), "values in (0, 1)"),
])
def test_invalid_schedules_raise(build, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build()


def test_flow_matching_shift_and_resolution_shift():
    """SD3's shift maps t to sigma = s t / (1 + (s - 1) t): ends fixed, the middle pushed up; Flux's shift is
    exp(mu) with mu linear in the token count (0.5 at 256 tokens, 1.15 at 4096)."""
    from solvers.schedules import FlowMatching

    plain, shifted = FlowMatching(), FlowMatching(shift=3.0)
    t = torch.tensor([1e-3, 0.25, 0.5, 0.999], dtype=torch.float64)
    torch.testing.assert_close(plain.sigma(t), t)
    torch.testing.assert_close(shifted.sigma(torch.tensor(0.5, dtype=torch.float64)), torch.tensor(0.75, dtype=torch.float64))
    torch.testing.assert_close(shifted.t_of_sigma(shifted.sigma(t)), t, rtol=1e-14, atol=0)
    torch.testing.assert_close(shifted.alpha(t) + shifted.sigma(t), torch.ones_like(t))
    assert FlowMatching.for_resolution(256).shift == pytest.approx(math.exp(0.5))
    assert FlowMatching.for_resolution(4096).shift == pytest.approx(math.exp(1.15))
    with pytest.raises(ValueError, match="shift must be > 0"):
        FlowMatching(shift=0.0)
    with pytest.raises(ValueError, match="prediction 'flow' .* needs a FlowMatching schedule"):
        from solvers import DiffusionModel
        from solvers.schedules import VPLinear

        DiffusionModel(lambda x, t: x, VPLinear(), "flow")


def test_a_discrete_schedule_rebuilt_from_its_products_has_its_betas():
    linear = DiscreteVP.linear()
    torch.testing.assert_close(DiscreteVP.from_alphas_cumprod(linear.alphas_cumprod).betas, linear.betas,
                               rtol=1e-12, atol=0)
