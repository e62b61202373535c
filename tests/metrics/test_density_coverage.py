"""Density and coverage (Naeem et al. 2020), the metric added as one file: the paper's definition on a hand-made
case, and the sweep computing it from the Inception features the fid metric computes, once per row."""
import pytest
import torch

from bench.metrics import METRICS
from bench.metrics.density_coverage import density_coverage
from bench.metrics.uncertainty import share_se
from bench.run import store
from support import have_fid_weights

REFERENCE = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])
SAMPLES = torch.tensor([[0.5], [2.2], [20.0]])


@pytest.mark.parametrize("k, density, coverage", [(1, 4 / 3, 4 / 5), (2, 5 / 6, 1.0)])
def test_the_papers_definition_on_points_on_a_line(k, density, coverage):
    """Radii to the k-th nearest other reference point: k = 1 gives (1, 1, 1, 1, 7), so 0.5 falls in the balls of
    0 and 1, 2.2 in those of 2 and 3, 20 in none: density (2 + 2 + 0) / (1 x 3), coverage 4 of 5 balls. k = 2
    gives (2, 1, 1, 2, 8): 2.2 also falls in 10's ball, density (2 + 3 + 0) / (2 x 3), every ball covered."""
    out = density_coverage(SAMPLES, REFERENCE, k=k)
    assert out["density"] == pytest.approx(density) and out["coverage"] == pytest.approx(coverage)
    assert out["density_se"] > 0 and out["coverage_se"] >= 0


def test_density_rewards_samples_on_the_reference_and_coverage_their_spread():
    g = torch.Generator().manual_seed(0)
    reference = torch.randn(400, 8, generator=g)
    matched = density_coverage(torch.randn(400, 8, generator=g), reference)
    collapsed = density_coverage(0.05 * torch.randn(400, 8, generator=g), reference)  # all near the mode
    assert 0.8 < matched["density"] < 1.2 and matched["coverage"] > 0.9
    assert collapsed["coverage"] < 0.3 < matched["coverage"]


def test_it_is_a_registered_metric_that_shares_the_fid_features():
    metric = METRICS["density_coverage"]
    assert set(metric.columns) == {"density", "density_se", "coverage", "coverage_se"}
    assert "inception" in metric.needs and "inception" in METRICS["fid"].needs


@pytest.mark.skipif(not have_fid_weights(), reason="needs the FID weights (make setup provides them)")
def test_a_sweep_computes_it_beside_fid_from_one_inception_pass(tmp_path, monkeypatch):
    from bench.metrics import fid
    from bench.run.sweep import run_sweep
    from bench.spec import expand, parse_spec

    passes = []
    original = fid.InceptionFeatures.__call__
    monkeypatch.setattr(fid.InceptionFeatures, "__call__", lambda self, images: passes.append(len(images))
                        or original(self, images))
    spec = parse_spec({"models": ["python:support:image_mixture_32"], "solvers": ["ddim"], "steps": [3],
                       "n_samples": 16, "metrics": ["fid", "density_coverage"], "fid_reference": "fashion_mnist_test",
                       "time_limit_s": 0, "reference_time_limit_s": 0}, str(tmp_path / "s.toml"))
    run_sweep(expand(spec), tmp_path / "run", store.open_run(tmp_path / "run", spec)["run_id"], progress=False)
    row = store.load_rows(tmp_path / "run").iloc[0]
    assert row.status == "ok", row.message
    # smooth random images against Fashion-MNIST: in none of its balls, and far in FID; the SEs what 16 samples in
    # none of them and 2,000 balls none of which holds a sample can tell (the density's was 0 up to 8c6c42f, the
    # coverage's up to b531141)
    assert row.coverage == 0 and row.density == 0 and row.fid > 100
    assert row.density_se == pytest.approx(share_se(0, 16) / 5) and row.coverage_se == pytest.approx(share_se(0, 2000))
    assert passes == [16]  # the samples once for both metrics (the standard reference's features are shipped)
