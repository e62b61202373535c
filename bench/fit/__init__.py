"""Fit: time grids fitted to a model for a solver and a step count (``python -m bench fit-schedule``).

Job: a teacher trajectory of the model on the training seeds, the cost of every candidate step, the grid of least
summed cost by dynamic programming (dynamic.py, GITS), refined on the whole-solve error, written as a file a spec
names with ``fitted:PATH`` (bench.spec.fitted reads it; the sweep evaluates it like any spacing).

May import: solvers, bench.files, bench.models, bench.metrics (per-sample errors), bench.spec, bench.run (the
runner's model, x_T and solve path).
Never the analysis stage.
"""
from bench.fit.dynamic import cheapest_path
from bench.fit.schedule import FORMULAS, FitRequest, Fitter, check, step_counts

__all__ = ["FORMULAS", "FitRequest", "Fitter", "cheapest_path", "check", "step_counts"]
