"""Step coefficients shared by the multistep solvers: integrals of Lagrange basis polynomials."""
from __future__ import annotations


def _poly_mul(p: list[float], q: list[float]) -> list[float]:
    out = [0.0] * (len(p) + len(q) - 1)
    for i, a in enumerate(p):
        for j, b in enumerate(q):
            out[i + j] += a * b
    return out


def lagrange_integrals(nodes: list[float], a: float, b: float) -> list[float]:
    """[int_a^b L_j(tau) d tau for each j], L_j the Lagrange basis polynomial of ``nodes``.

    These are the variable-step Adams-Bashforth weights when ``nodes`` are the past times and
    [a, b] the step (Hairer, Norsett & Wanner 1993, III.5, eq. 5.3). Computed in the scaled
    variable u = (tau - a)/(b - a), so the weights are exact up to rounding for any step size.
    """
    h = b - a
    us = [(node - a) / h for node in nodes]
    weights = []
    for j, u_j in enumerate(us):
        poly = [1.0]  # coefficients in u, lowest degree first
        for m, u_m in enumerate(us):
            if m != j:
                poly = _poly_mul(poly, [-u_m / (u_j - u_m), 1.0 / (u_j - u_m)])
        weights.append(h * sum(c / (k + 1) for k, c in enumerate(poly)))
    return weights
