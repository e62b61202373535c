"""Check: one solver against exact ground truth in one command (``python -m bench check-solver``).

Job: a small grid of the solver on the analytic mixtures, run as any grid is (spec, sweep, rows), and verdicts read
from its rows: every configuration ran, the network evaluations counted equal the solver entry's, every noise draw
was in its NoisePlan, and the measured convergence order (against the exact reference solve at eta 0, against the
2n-step solve on the same Brownian path for a run that draws noise) reaches the entry's order. For a user's
python: solver as for a registered one after an edit.

May import: solvers, bench.spec, bench.run, bench.analysis (the measured orders).
"""
from bench.check.solver import CHECK_MODELS, GUIDED_MODEL, SolverCheck, check_solver

__all__ = ["CHECK_MODELS", "GUIDED_MODEL", "SolverCheck", "check_solver"]
