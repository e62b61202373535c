"""Stochastic solvers sample the right distribution; Brownian increments refine consistently.

Strong orders on the runner's own Brownian paths are in test_noise_paths.py."""
import pytest
import torch

from bench.models import ring2d
from solvers import sample
from solvers.noise import BrownianNoise, GaussianNoise
from solvers.schedules import VPLinear
from solvers.spacing import timesteps
from support import prior_sample

N_SAMPLES, N_STEPS = 20_000, 500
SCHEDULE = VPLinear()


pytestmark = pytest.mark.xdist_group("stochastic")  # one pytest-xdist worker computes the module fixtures once


@pytest.fixture(scope="module")
def setup():
    mixture = ring2d()
    return mixture.model(SCHEDULE), prior_sample(SCHEDULE, N_SAMPLES, 2), mixture.moments(SCHEDULE, SCHEDULE.t_min)


def _z_scores(x, mean, cov):
    """Deviations of the sample mean and covariance from the exact ones, in standard errors."""
    n = x.shape[0]
    centred = x - x.mean(0)
    products = (centred[:, :, None] * centred[:, None, :]).reshape(n, -1)
    cov_se = (products.std(0) / n**0.5).reshape(cov.shape)
    mean_se = (cov.diag() / n).sqrt()
    return ((x.mean(0) - mean) / mean_se).abs().max().item(), ((torch.cov(x.T) - cov) / cov_se).abs().max().item()


def _sample(setup, name, noise, **options):
    model, x_T, _ = setup
    return sample(name, model, x_T, timesteps("logsnr", N_STEPS, SCHEDULE), eta=1.0, noise=noise, **options)


@pytest.mark.parametrize("name, options", [
    ("euler_maruyama", {}), ("euler", {}), ("ddpm", {}), ("ddpm", {"variance": "beta"}), ("ddim", {}),
    ("dpmpp_2m_sde", {}), ("edm_stochastic", {}), ("pc", {}), ("pc", {"predictor": "reverse_diffusion"}),
    ("euler_ancestral", {}), ("dpm_2_ancestral", {}), ("dpmpp_sde", {}), ("restart", {}), ("seeds_2", {}),
    ("seeds_3", {}), ("er_sde", {}), ("sa_solver", {}), ("dpmpp_2m_sde", {"second_order": "taylor"}),
    ("dpmpp_3m_sde", {}), ("dpmpp_3m_sde", {"d2_weight": "2phi_3"}),
], ids=["euler_maruyama", "euler-eta1", "ddpm-beta_tilde", "ddpm-beta", "ddim-eta1", "dpmpp_2m_sde-eta1",
        "edm_stochastic-eta1", "pc-em", "pc-reverse_diffusion", "euler_ancestral-eta1", "dpm_2_ancestral-eta1",
        "dpmpp_sde-eta1", "restart", "seeds_2-eta1", "seeds_3-eta1", "er_sde", "sa_solver-eta1",
        "dpmpp_2m_sde-taylor-eta1", "dpmpp_3m_sde-eta1", "dpmpp_3m_sde-2phi_3-eta1"])
def test_eta_one_matches_exact_moments(setup, name, options):
    x = _sample(setup, name, GaussianNoise(torch.Generator().manual_seed(1)), **options)
    z_mean, z_cov = _z_scores(x, *setup[2])
    assert z_mean < 5 and z_cov < 5, f"{name}: mean off by {z_mean:.1f} SE, covariance by {z_cov:.1f} SE"


def test_moment_check_detects_wrong_noise_level(setup):
    """Negative control: 30% too much noise must fail the same check."""
    gaussian = GaussianNoise(torch.Generator().manual_seed(1))
    x = _sample(setup, "ddpm", lambda t, s, like: 1.3 * gaussian(t, s, like))
    assert _z_scores(x, *setup[2])[1] > 5


def test_ddpm_posterior_variance_equals_ddim_eta_one(setup):
    model, x_T, _ = setup
    ts = timesteps("uniform", 20, SCHEDULE)
    a = sample("ddpm", model, x_T[:100], ts, generator=torch.Generator().manual_seed(3))
    b = sample("ddim", model, x_T[:100], ts, eta=1.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_brownian_increments_agree_across_refinements():
    like = torch.zeros(3, 2, dtype=torch.float64)
    coarse, fine = BrownianNoise(like, 0.0, 1.0, seed=11), BrownianNoise(like, 0.0, 1.0, seed=11)
    ts = torch.linspace(1, 0, 9, dtype=torch.float64).tolist()
    for i in range(0, 8, 2):
        whole = coarse(ts[i], ts[i + 2], like)
        halves = (fine(ts[i], ts[i + 1], like) + fine(ts[i + 1], ts[i + 2], like)) / 2**0.5
        torch.testing.assert_close(whole, halves, rtol=0, atol=1e-12)
    assert not torch.equal(BrownianNoise(like, 0.0, 1.0, seed=12)(1.0, 0.5, like), coarse(1.0, 0.5, like))


def test_brownian_increments_have_unit_variance():
    like = torch.zeros(20_000, dtype=torch.float64)
    z = BrownianNoise(like, 0.0, 1.0, seed=5)(0.8, 0.3, like)
    assert abs(z.mean().item()) < 5 / 20_000**0.5 and abs(z.var().item() - 1) < 5 * (2 / 20_000) ** 0.5


def _mmd(x, y, bandwidth=0.1):
    """Squared maximum mean discrepancy with a Gaussian kernel (Gretton et al. 2012, eq. 3, biased form)."""
    def kernel_mean(a, b):
        return torch.exp(-torch.cdist(a, b) ** 2 / (2 * bandwidth**2)).mean()

    return (kernel_mean(x, x) + kernel_mean(y, y) - 2 * kernel_mean(x, y)).item()


def test_langevin_corrector_brings_pc_closer_to_the_exact_distribution():
    """Equal predictor steps (20, logsnr): MMD to exact samples of p_{t_min} falls with corrector steps."""
    mixture = ring2d()
    model = mixture.model(SCHEDULE)
    x_T = prior_sample(SCHEDULE, 3000, 2)
    alpha, sigma = float(SCHEDULE.alpha(SCHEDULE.t_min)), float(SCHEDULE.sigma(SCHEDULE.t_min))
    g = torch.Generator().manual_seed(9)
    exact = alpha * mixture.sample(3000, g) + sigma * torch.randn(3000, 2, generator=g, dtype=torch.float64)
    ts = timesteps("logsnr", 20, SCHEDULE)
    mmds = [_mmd(sample("pc", model, x_T, ts, corrector_steps=k, generator=torch.Generator().manual_seed(1)), exact)
            for k in (0, 1, 2)]
    assert mmds[1] < mmds[0] and mmds[2] < 0.6 * mmds[0], f"MMD with 0/1/2 corrector steps: {mmds}"


@pytest.mark.slow
@pytest.mark.parametrize("name, options", [("euler_maruyama", {}), ("dpmpp_2m_sde", {}), ("edm_stochastic", {}),
                                           ("pc", {}), ("dpmpp_sde", {}), ("restart", {}), ("seeds_2", {}),
                                           ("seeds_3", {}), ("er_sde", {}), ("sa_solver", {}), ("dpmpp_3m_sde", {})],
                         ids=["euler_maruyama", "dpmpp_2m_sde", "edm_stochastic", "pc", "dpmpp_sde", "restart",
                              "seeds_2", "seeds_3", "er_sde", "sa_solver", "dpmpp_3m_sde"])
def test_exact_moments_on_the_runners_own_noise(name, options):
    """The moment check on the path a sweep takes: bench.run.sampling with its seeded Brownian path, drawn
    for the whole grid before the solve (the fast tests above use GaussianNoise)."""
    from bench.run import sampling
    from bench.spec.config import expand, parse_spec
    from bench.run.runner import SweepCache

    spec = parse_spec({"models": ["ring2d"], "solvers": [name], "steps": [N_STEPS], "etas": [1.0], "dtype": "float64",
                       "n_samples": N_SAMPLES, "options": {name: options} if options else {}})
    cfg = expand(spec)[0]
    cache = SweepCache()
    source, model = cache.model(cfg)
    x_T = cache.prior(cfg, source.event_shape, torch.device("cpu"), torch.float64)
    x = sampling.solve(cfg, model, x_T, cfg.steps, torch.device("cpu")).samples
    z_mean, z_cov = _z_scores(x, *source.moments(SCHEDULE, SCHEDULE.t_min))
    assert z_mean < 5 and z_cov < 5, f"{name}: mean off by {z_mean:.1f} SE, covariance by {z_cov:.1f} SE"
