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
