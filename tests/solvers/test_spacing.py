import pytest
import torch

from solvers.schedules import EDM, VE, DiscreteVP, VPLinear
from solvers.spacing import AYS_LEVELS, DISCRETE, SPACINGS, timesteps


@pytest.mark.parametrize("kind", [k for k in SPACINGS if k not in DISCRETE and k not in AYS_LEVELS])
@pytest.mark.parametrize("n", [1, 2, 7, 50, 256])
def test_grid_shape_ends_and_order(schedule, kind, n):
    ts = timesteps(kind, n, schedule)
    assert ts.shape == (n + 1,) and ts.dtype == torch.float64
    assert ts[0].item() == schedule.t_max and ts[-1].item() == schedule.t_min
    assert bool((torch.diff(ts) < 0).all())


@pytest.mark.parametrize("kind", sorted(DISCRETE))
@pytest.mark.parametrize("n", [1, 2, 7, 50, 256])
def test_discrete_spacings_step_on_training_timesteps(kind, n):
    schedule = DiscreteVP.linear()
    ts = timesteps(kind, n, schedule)
    steps = ts * schedule.n_train - 1
    assert ts.shape == (n + 1,) and torch.equal(steps, steps.round()) and bool((torch.diff(ts) < 0).all())
    assert ts[-1].item() == schedule.t_min and ts[0].item() <= schedule.t_max
    with pytest.raises(ValueError, match=f"spacing '{kind}' is one of diffusers' discrete timestep spacings"):
        timesteps(kind, n, VE())


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("n", [5, 10, 50])
def test_discrete_spacings_are_diffusers_timesteps(spacing, n):
    """The same timesteps as diffusers' DDIMScheduler and DPMSolverMultistepScheduler for the same config
    (Stable Diffusion's steps_offset = 1 for leading), then the final step to timestep 0."""
    import diffusers

    schedule = DiscreteVP.linear()
    ours = (timesteps(spacing, n, schedule) * schedule.n_train - 1).round().long().tolist()
    scheduler_class = diffusers.DPMSolverMultistepScheduler if spacing == "linspace" else diffusers.DDIMScheduler
    scheduler = scheduler_class(num_train_timesteps=1000, timestep_spacing=spacing,
                                steps_offset=1 if spacing == "leading" else 0)
    scheduler.set_timesteps(n)
    assert ours[:-1] == [int(t) for t in scheduler.timesteps] and ours[-1] == 0


@pytest.mark.parametrize("scheduler_name", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler",
                                            "DEISMultistepScheduler"])
@pytest.mark.parametrize("n, offset", [(5, 1), (10, 1), (50, 1), (20, 0)])
def test_leading_multistep_is_the_multistep_schedulers_leading(scheduler_name, n, offset):
    """diffusers' multistep schedulers divide by n + 1 where DDIM's leading divides by n (901, 811, ... at 10 steps):
    a Stable Diffusion config's DPM-Solver++ runs on this grid, not on DDIM's."""
    import diffusers

    schedule = DiscreteVP.linear(steps_offset=offset)
    scheduler = getattr(diffusers, scheduler_name)(num_train_timesteps=1000, timestep_spacing="leading",
                                                   steps_offset=offset)
    scheduler.set_timesteps(n)
    ours = (timesteps("leading_multistep", n, schedule) * schedule.n_train - 1).round().long().tolist()
    assert ours[:-1] == [int(t) for t in scheduler.timesteps] and ours[-1] == 0
    if offset:  # DDIM's leading at offset 0 ends on timestep 0 itself (refused: two steps would share it)
        assert ours[:-1] != (timesteps("leading", n, schedule) * schedule.n_train - 1).round().long().tolist()[:-1]


def test_the_names_users_pick():
    schedule = VPLinear()
    n = 8
    torch.testing.assert_close(timesteps("exponential", n, schedule), timesteps("logsnr", n, schedule))
    torch.testing.assert_close(timesteps("sgm_uniform", n, schedule), timesteps("uniform", n, schedule))
    sig = torch.exp(-schedule.lambda_(timesteps("kl_optimal", n, schedule)))
    angles = torch.atan(sig)
    torch.testing.assert_close(torch.diff(angles), torch.full((n,), (angles[-1] - angles[0]).item() / n,
                                                              dtype=torch.float64))
    from scipy.stats import beta

    fraction = (timesteps("beta", n, schedule) - schedule.t_min) / (schedule.t_max - schedule.t_min)
    torch.testing.assert_close(torch.as_tensor(beta.cdf(fraction.numpy(), 0.6, 0.6)),
                               1 - torch.arange(n + 1, dtype=torch.float64) / n, rtol=0, atol=1e-9)
    # linear_quadratic: the first n // 2 steps remove 2.5% of the range in equal parts, the rest the remainder
    fraction = (timesteps("linear_quadratic", 10, schedule) - schedule.t_min) / (schedule.t_max - schedule.t_min)
    torch.testing.assert_close(fraction[:6], 1 - 0.005 * torch.arange(6, dtype=torch.float64))
    slopes = torch.diff(fraction)
    assert bool((torch.diff(slopes[4:]) < 0).all())  # accelerating after the linear part


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


def test_explicit_grids_in_times_and_sigmas():
    from solvers.spacing import explicit_name

    schedule = VPLinear()
    ts = timesteps(explicit_name([1.0, 0.5, 0.1, 0.001]), 3, schedule)
    torch.testing.assert_close(ts, torch.tensor([1.0, 0.5, 0.1, 0.001], dtype=torch.float64))
    sigmas = [80.0, 5.0, 0.5, 0.02]
    ts = timesteps(explicit_name(sigmas, "sigmas"), 3, schedule)
    torch.testing.assert_close(torch.exp(-schedule.lambda_(ts)), torch.tensor(sigmas, dtype=torch.float64))
    with pytest.raises(ValueError, match="has 3 steps, asked for 5"):
        timesteps(explicit_name([1.0, 0.5, 0.1, 0.001]), 5, schedule)
    with pytest.raises(ValueError, match="expected times:v0,v1,... with numbers"):
        timesteps("times:1.0,x", 1, schedule)


def _stable_diffusion_schedule():
    """SD 1.x/XL's: scaled_linear betas from 0.00085 to 0.012 over 1000 training steps."""
    return DiscreteVP(torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2)


AYS_FAMILIES = [("ays_sd1", _stable_diffusion_schedule), ("ays_sdxl", _stable_diffusion_schedule),
                ("ays_svd", lambda: EDM(0.002, 700.0))]


@pytest.mark.parametrize("kind, family", AYS_FAMILIES, ids=[k for k, _ in AYS_FAMILIES])
@pytest.mark.parametrize("n", [1, 7, 10, 20, 50])
def test_align_your_steps_is_the_published_schedule_interpolated(kind, family, n):
    schedule = family()
    ts = timesteps(kind, n, schedule)
    assert ts[0].item() == schedule.t_max and ts[-1].item() == schedule.t_min and bool((torch.diff(ts) < 0).all())
    sigmas = torch.exp(-schedule.lambda_(ts))
    published = torch.tensor(AYS_LEVELS[kind], dtype=torch.float64)
    if n % 10 == 0:  # every (n/10)-th point of the interpolated grid is a published level
        assert torch.allclose(sigmas[:: n // 10], published, rtol=1e-9)
    else:  # log-linear between the published levels: inside their range (the ends are the schedule's own)
        assert published[-1] * (1 - 1e-6) <= sigmas.min() and sigmas.max() <= published[0] * (1 + 1e-6)


@pytest.mark.parametrize("schedule", [VPLinear(), VE(), DiscreteVP.linear()], ids=repr)
def test_align_your_steps_is_refused_outside_its_family(schedule):
    with pytest.raises(ValueError, match="spacing 'ays_sd1' was published for sigma~ from 14.6146 to 0.0291672; "):
        timesteps("ays_sd1", 10, schedule)
