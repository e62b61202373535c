"""Conformance: our solvers and spacings against the code users run (k-diffusion, diffusers), on the same model,
grid and x_T, with the largest difference and, where they differ on purpose, why.

Job: the conformance report (report.py, `python -m bench conformance`) and the peers' loaders and loops it runs
(peers.py; also used by tests/conformance/test_peers.py).

May import: solvers, bench.models. Nothing else of the harness.
"""
