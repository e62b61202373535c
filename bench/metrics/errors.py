"""Solver errors per sample: against the reference solve, by step doubling, and a non-eager exec mode's drift."""
from __future__ import annotations

from solvers import get_solver

from bench.metrics.registry import F64, Inputs, Metric, register
from bench.metrics.uncertainty import bootstrap_se


def per_sample_norms(difference):
    """The L2 norm of each sample's difference (float64), shape (n,)."""
    return difference.reshape(difference.shape[0], -1).double().norm(dim=1)


def _err_reference(inputs: Inputs) -> dict:
    reference = inputs.reference()
    if reference is None:
        return {}
    norms = per_sample_norms(inputs.samples.double() - reference)
    return {"err_reference": norms.median().item(), "err_reference_se": bootstrap_se(norms, "median", inputs.seed),
            "reference_tolerance": inputs.cfg.reference_tolerance}


def _err_stepdoubling(inputs: Inputs) -> dict:
    cfg = inputs.cfg
    if cfg.steps is None:  # adaptive solvers control their own error
        return {}
    if ":" in cfg.spacing:
        inputs.notes.append("no err_stepdoubling: an explicit grid has no 2n-step refinement")
        return {}
    order = get_solver(cfg.solver).order_for(cfg.eta, dict(cfg.options))
    if order is None:  # no pathwise convergence (the registry says why)
        return {}
    norms = per_sample_norms(inputs.samples.cpu() - inputs.partner().cpu()) / (2**order - 1)
    return {"err_stepdoubling": norms.median().item(), "err_stepdoubling_se": bootstrap_se(norms, "median", inputs.seed),
            "err_stepdoubling_rms": norms.square().mean().sqrt().item(),
            "err_stepdoubling_rms_se": bootstrap_se(norms, "rms", inputs.seed)}


def _drift(inputs: Inputs) -> dict:
    if inputs.cfg.exec_mode == "eager":
        return {}
    norms = per_sample_norms(inputs.samples.cpu().double() - inputs.eager_twin().double())
    return {"drift_vs_eager": norms.median().item(), "drift_vs_eager_se": bootstrap_se(norms, "median", inputs.seed)}


register(Metric(
    "err_reference", "median per-sample L2 error against a dopri5 reference solve from the same x_T (rtol = atol = "
    "the spec's reference_tolerance, default 1e-8; deterministic configs)",
    {"err_reference": (F64, "median over samples of |x - x_reference| (L2 over the sample's values)"),
     "err_reference_se": (F64, "its standard error (bootstrap over samples)"),
     "reference_tolerance": (F64, "rtol = atol of the reference solve")},
    ("reference",), _err_reference, better={"err_reference": "lower"}))
register(Metric(
    "err_stepdoubling", "median (and RMS) over samples of |x_n - x_2n| / (2^p - 1), same x_T and Brownian path",
    {"err_stepdoubling": (F64, "median over samples of |x_n - x_2n| / (2^p - 1), p the run's order"),
     "err_stepdoubling_se": (F64, "its standard error (bootstrap over samples)"),
     "err_stepdoubling_rms": (F64, "the root mean square of the same per-sample estimates"),
     "err_stepdoubling_rms_se": (F64, "its standard error (bootstrap over samples)")},
    ("partner",), _err_stepdoubling, better={"err_stepdoubling": "lower", "err_stepdoubling_rms": "lower"}))
register(Metric(
    "drift_vs_eager", "median per-sample L2 distance between a non-eager exec mode's samples and the eager samples "
    "of the same config, x_T and noise path (computed for every non-eager row)",
    {"drift_vs_eager": (F64, "median over samples of |x_mode - x_eager|"),
     "drift_vs_eager_se": (F64, "its standard error (bootstrap over samples)")},
    ("eager_twin",), _drift, in_spec=False, better={"drift_vs_eager": "lower"}))
