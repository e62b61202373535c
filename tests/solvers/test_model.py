import pytest
import torch

from bench.models.analytic import GaussianMixture
from bench.models import ANALYTIC_PRESETS, digits, gmm_hd, ring2d
from solvers import DiffusionModel
from solvers.schedules import VPLinear


def _data(n=6, shape=(3, 4)):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, *shape, generator=g, dtype=torch.float64), torch.randn(n, *shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score"])
def test_every_prediction_type_gives_the_same_eps_and_x0(schedule, prediction):
    x0, eps = _data()
    t = 0.5 * (schedule.t_min + schedule.t_max)
    alpha, sigma = float(schedule.alpha(t)), float(schedule.sigma(t))
    xt = alpha * x0 + sigma * eps
    target = {"eps": eps, "x0": x0, "v": alpha * eps - sigma * x0, "score": -eps / sigma}[prediction]
    model = DiffusionModel(lambda x, tt: target, schedule, prediction)
    eps_hat, x0_hat = model.eps_and_x0(xt, t)
    torch.testing.assert_close(eps_hat, eps)
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(model.score(xt, t), -eps / sigma)
    torch.testing.assert_close(model.v(xt, t), alpha * eps - sigma * x0)


def test_eps_x0_eps_round_trip(schedule):
    x0, eps = _data()
    t = schedule.t_min + 0.3 * (schedule.t_max - schedule.t_min)
    xt = float(schedule.alpha(t)) * x0 + float(schedule.sigma(t)) * eps
    from_eps = DiffusionModel(lambda x, tt: eps, schedule, "eps")
    x0_hat = from_eps.x0(xt, t)
    from_x0 = DiffusionModel(lambda x, tt: x0_hat, schedule, "x0")
    torch.testing.assert_close(from_x0.eps(xt, t), eps)


def test_nfe_counts_network_calls_and_resets():
    model = DiffusionModel(lambda x, t: torch.zeros_like(x), VPLinear())
    x = torch.ones(5, 2)
    model.eps(x, 0.5)
    model.x0(x, 0.5)
    model.drift(x, 0.5)
    model.v(x, 0.5)
    assert model.nfe == 4
    model.reset_nfe()
    assert model.nfe == 0


def test_time_broadcast_scalar_and_batch():
    seen = []
    model = DiffusionModel(lambda x, t: (seen.append(t), torch.zeros_like(x))[1], VPLinear())
    x = torch.ones(3, 2, 2)
    model.eps(x, 0.5)
    model.eps(x, torch.tensor(0.5))
    per_sample = torch.tensor([0.2, 0.5, 0.9])
    out = model.x0(x, per_sample)
    assert all(t.shape == (3,) for t in seen)
    torch.testing.assert_close(seen[2], per_sample)
    alpha = VPLinear().alpha(per_sample.double()).float()
    torch.testing.assert_close(out, x / alpha[:, None, None])
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(3,\)"):
        model.eps(x, torch.tensor([0.1, 0.2]))


def test_invalid_model_arguments():
    with pytest.raises(ValueError, match="unknown prediction 'noise'; valid: eps, x0, v, score"):
        DiffusionModel(lambda x, t: x, VPLinear(), "noise")
    with pytest.raises(TypeError, match="schedule must be"):
        DiffusionModel(lambda x, t: x, "vp")


@pytest.mark.parametrize("mixture", [ring2d(), gmm_hd(dim=5, n_modes=3),
                                     GaussianMixture(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)),
                                                     torch.rand(4, 3, generator=torch.Generator().manual_seed(1)) + 0.1,
                                                     torch.tensor([0.1, 0.2, 0.3, 0.4]))],
                         ids=["ring2d", "gmm_hd", "diagonal"])
def test_gmm_score_is_gradient_of_log_density(schedule, mixture):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, mixture.dim, generator=g, dtype=torch.float64).requires_grad_(True)
    for frac in (0.01, 0.3, 0.9):
        t = schedule.t_min + frac * (schedule.t_max - schedule.t_min)
        (grad,) = torch.autograd.grad(mixture.log_prob(x, schedule, t).sum(), x)
        torch.testing.assert_close(mixture.score(x.detach(), schedule, t), grad, rtol=1e-9, atol=1e-9)


def test_gmm_per_sample_times_match_scalar_times():
    mixture, schedule = ring2d(), VPLinear()
    x = torch.randn(6, 2, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.1, 0.9, 0.5, 0.5], dtype=torch.float64)
    batched = mixture.eps(x, schedule, t)
    for i in range(6):
        torch.testing.assert_close(batched[i : i + 1], mixture.eps(x[i : i + 1], schedule, t[i].item()))


def test_gmm_log_density_is_normalised_in_2d():
    mixture, schedule = ring2d(), VPLinear()
    grid = torch.linspace(-6, 6, 1201, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    cell = (grid[1] - grid[0]).item() ** 2
    for t in (None, 0.3):
        mass = (mixture.log_prob(pts, schedule if t else None, t).exp().sum() * cell).item()
        assert mass == pytest.approx(1.0, abs=1e-6)


def test_gmm_exact_samples_have_exact_moments():
    mixture = ring2d()
    x = mixture.sample(200_000, torch.Generator().manual_seed(0))
    mean, cov = mixture.moments()
    torch.testing.assert_close(x.mean(0), mean, rtol=0, atol=5 * (cov.diag() / 200_000).sqrt().max().item())
    torch.testing.assert_close(torch.cov(x.T), cov, rtol=0, atol=0.01)


def test_digits_preset_holds_the_scikit_learn_images():
    mixture = digits()
    assert mixture.n_components == 1797 and mixture.event_shape == (1, 8, 8)
    assert mixture.means.min().item() == -1.0 and mixture.means.max().item() == 1.0
    x = mixture.sample(4, torch.Generator().manual_seed(0))
    assert x.shape == (4, 1, 8, 8)
    eps = mixture.model(VPLinear()).eps(x, 0.5)
    assert eps.shape == x.shape and bool(torch.isfinite(eps).all())


def test_presets_are_registered():
    assert set(ANALYTIC_PRESETS) == {"ring2d", "gmm_hd", "gmm_classes", "digits", "fashion_gmm"}
