"""The metric registry's declarations: which way each figure is better (what compare judges), checked on register."""
import pytest

from bench.metrics import BETTER, COLUMNS, METRICS, Metric, register
from bench.metrics.registry import F64


def _metric(figure: str, better: dict) -> Metric:
    columns = {figure: (F64, "a figure"), f"{figure}_se": (F64, "its standard error"),
               "spread": (F64, "a figure without a standard error")}
    return Metric("test_metric", "a test metric", columns, ("images",), lambda inputs: {}, better=better)


@pytest.mark.parametrize("figure, better, problem", [
    ("score", {"score": "smaller"}, "'smaller'"),             # not a direction
    ("score", {"spread": "lower"}, "'spread'"),               # no standard error beside it
    ("score", {"missing": "lower"}, "'missing'"),             # not a column of the metric
    ("precision", {"precision": "lower"}, "another higher")])  # precision is better higher wherever it is filled
def test_a_direction_that_cannot_be_judged_is_refused_before_anything_registers(figure, better, problem):
    registered, columns, directions = dict(METRICS), dict(COLUMNS), dict(BETTER)
    with pytest.raises(ValueError, match=problem):
        register(_metric(figure, better))
    assert (METRICS, COLUMNS, BETTER) == (registered, columns, directions)


def test_every_figure_with_a_direction_has_its_standard_error_and_the_shared_ones_agree():
    assert BETTER["fid"] == BETTER["kid"] == BETTER["err_reference"] == "lower"
    assert BETTER["precision"] == BETTER["recall"] == BETTER["coverage"] == BETTER["clip_score"] == "higher"
    for column in BETTER:
        assert f"{column}_se" in COLUMNS
    assert METRICS["fid"].better["precision"] == METRICS["precision_recall"].better["precision"]
    # no direction: a diversity, a density that may exceed 1, a signed difference, a log density rewarding collapse
    assert not {"lpips_diversity", "density", "fid_vs_eager", "sample_log_density"} & set(BETTER)


_AT_THEIR_FEWEST = [("ring2d", name) for name in ("err_reference", "err_stepdoubling", "sample_log_density", "frechet",
                                                  "precision_recall", "sliced_wasserstein", "nll")]
_AT_THEIR_FEWEST += [("digits", name) for name in ("fid", "density_coverage")]
_AT_THEIR_FEWEST += [("python:support:image_mixture_32", name) for name in ("lpips_reference", "lpips_diversity")]


@pytest.mark.parametrize("model, metric", _AT_THEIR_FEWEST, ids=[name for _, name in _AT_THEIR_FEWEST])
def test_a_metric_gives_every_figure_and_its_standard_error_from_its_fewest_samples(model, metric, tmp_path):
    """At ``min_samples`` samples (and reference images) the row is ok with every figure and SE finite; one fewer
    is refused by the spec before anything runs (it used to fail every row after its solves: the k-th nearest
    neighbour of too few points, or an SE of NaN)."""
    import math

    from bench.run import store
    from bench.run.sweep import run_sweep
    from bench.spec import expand, parse_spec
    from bench.spec.config import SpecError
    from support import have_fid_weights, have_lpips_weights

    if metric in ("fid", "density_coverage") and not have_fid_weights():
        pytest.skip("needs the FID weights (make setup provides them)")
    if metric.startswith("lpips") and not have_lpips_weights():
        pytest.skip("needs the LPIPS weights (make setup provides them)")
    fewest = METRICS[metric].min_samples
    raw = {"models": [model], "solvers": ["euler"], "steps": [3], "n_samples": fewest, "reference_size": fewest,
           "metrics": [metric], "time_limit_s": 0, "reference_time_limit_s": 0, "reference_tolerance": 1e-4}
    spec = parse_spec(raw, str(tmp_path / "s.toml"))
    run_sweep(expand(spec), tmp_path / "run", store.open_run(tmp_path / "run", spec)["run_id"], progress=False)
    row = store.load_rows(tmp_path / "run").iloc[0]
    assert row.status == "ok", row.message
    filled = [column for column in METRICS[metric].columns  # fid_vs_eager: non-eager rows; nll_bpd: images
              if f"{column}_se" in METRICS[metric].columns and math.isfinite(row[column])]
    assert filled and all(math.isfinite(row[f"{column}_se"]) for column in filled), row[filled]
    with pytest.raises(SpecError, match=f"key 'n_samples': {fewest - 1} is too few for metric '{metric}', whose "
                                        f"figures and standard errors need at least {fewest}"):
        parse_spec({**raw, "n_samples": fewest - 1}, str(tmp_path / "s.toml"))
