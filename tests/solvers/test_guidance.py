"""Guidance wrappers against exact answers on labelled mixtures."""
import pytest
import torch

from bench.models.analytic import GaussianMixture
from bench.models import ring2d
from solvers import SOLVERS, DiffusionModel, sample
from solvers.guidance import classifier_free, classifier_guided, inpaint, slerp
from solvers.schedules import VPLinear
from solvers.spacing import timesteps
from support import prior_sample

SCHEDULE = VPLinear()
TS = timesteps("logsnr", 12, SCHEDULE)
RING = ring2d()
CLASSES = [torch.tensor([0, 2, 4, 6]), torch.tensor([1, 3, 5, 7])]  # two labels: even and odd modes


def conditional_net(x, t, c):
    """eps of the class-conditional ring for label c (0 or 1), or of the full ring for c = -1."""
    out = torch.empty_like(x)
    for label, mixture in [(-1, RING), (0, RING.subset(CLASSES[0])), (1, RING.subset(CLASSES[1]))]:
        rows = c == label
        if rows.any():
            out[rows] = mixture.eps(x[rows], SCHEDULE, t[rows])
    return out


def test_cfg_with_zero_weight_is_the_conditional_model():
    x_T = prior_sample(SCHEDULE, 32, 2)
    cond, null = torch.zeros(32, dtype=torch.long), torch.full((32,), -1)
    guided = classifier_free(conditional_net, SCHEDULE, "eps", cond=cond, null=null, w=0.0)
    expected = sample("heun", RING.subset(CLASSES[0]).model(SCHEDULE), x_T, TS)
    torch.testing.assert_close(sample("heun", guided, x_T, TS), expected, rtol=0, atol=1e-12)
    assert guided.nfe == 2 * 12  # one batched evaluation per call


def test_cfg_weight_extrapolates_away_from_the_unconditional_output():
    x = prior_sample(SCHEDULE, 16, 2)
    cond, null = torch.ones(16, dtype=torch.long), torch.full((16,), -1)
    t = torch.full((16,), 0.5, dtype=torch.float64)
    c_out, u_out = conditional_net(x, t, cond), conditional_net(x, t, null)
    guided = classifier_free(conditional_net, SCHEDULE, "eps", cond=cond, null=null, w=2.0)
    torch.testing.assert_close(guided.eps(x, 0.5), 3 * c_out - 2 * u_out)


def _log_class_posterior(x, t, y):
    log_joint = RING.component_log_joint(x, SCHEDULE, t)
    return torch.logsumexp(log_joint[:, CLASSES[y]], 1) - torch.logsumexp(log_joint, 1)


@pytest.mark.parametrize("label", [0, 1])
def test_exact_classifier_guidance_equals_the_class_conditional_score(label):
    guided = classifier_guided(RING.model(SCHEDULE), _log_class_posterior, label, scale=1.0)
    exact = RING.subset(CLASSES[label]).model(SCHEDULE)
    x = prior_sample(SCHEDULE, 64, 2, seed=3)
    for t in (0.9, 0.3, 0.02):
        torch.testing.assert_close(guided.eps(x, t), exact.eps(x, t), rtol=1e-9, atol=1e-9)
    x_T = prior_sample(SCHEDULE, 64, 2)
    torch.testing.assert_close(sample("dpmpp_2m", guided, x_T, TS), sample("dpmpp_2m", exact, x_T, TS),
                               rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["heun", "dpmpp_2m", "ddpm"])
def test_inpainting_keeps_known_pixels_exactly(name):
    digits_like = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mixture = GaussianMixture(digits_like.flatten(1), 0.05, event_shape=(1, 4, 4))
    model = mixture.model(SCHEDULE)
    mask = torch.zeros(1, 4, 4, dtype=torch.float64)
    mask[:, :2] = 1
    known = digits_like[1]
    x_T = prior_sample(SCHEDULE, 8, 16).reshape(8, 1, 4, 4)
    out = inpaint(name, model, x_T, TS, mask=mask, known=known, generator=torch.Generator().manual_seed(2))
    assert torch.equal(out[:, :, :2], known[:, :2].expand(8, 1, 2, 4))
    assert bool(torch.isfinite(out).all()) and not torch.equal(out[:, :, 2:], x_T[:, :, 2:])
    assert model.nfe == SOLVERS[name].nfe(TS.numel() - 1)  # the wrapper's evaluations are the model's


def test_inpainting_rejects_bad_masks():
    model = RING.model(SCHEDULE)
    x_T = prior_sample(SCHEDULE, 4, 2)
    with pytest.raises(ValueError, match=r"mask must have shape \(2,\) or \(4, 2\), got \(3,\)"):
        inpaint("heun", model, x_T, TS, mask=torch.ones(3), known=torch.zeros(2))
    with pytest.raises(ValueError, match="mask must hold only 0 and 1"):
        inpaint("heun", model, x_T, TS, mask=torch.full((2,), 0.5), known=torch.zeros(2))


def test_slerp_ends_and_norm():
    a, b = prior_sample(SCHEDULE, 5, 64, seed=1), prior_sample(SCHEDULE, 5, 64, seed=2)
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    b_same_norm = b / b.norm(dim=1, keepdim=True) * a.norm(dim=1, keepdim=True)
    torch.testing.assert_close(slerp(a, b_same_norm, 0.3).norm(dim=1), a.norm(dim=1))


def test_classifier_free_shape_mismatch():
    with pytest.raises(ValueError, match="cond and null need the same shape"):
        classifier_free(conditional_net, SCHEDULE, "eps", cond=torch.zeros(3), null=torch.zeros(4), w=1.0)
    assert isinstance(classifier_free(conditional_net, SCHEDULE, "eps", cond=torch.zeros(3), null=torch.zeros(3), w=1.0),
                      DiffusionModel)
