"""Step coefficients shared by the solvers: Lagrange-basis integrals (Adams weights) and phi functions."""
from __future__ import annotations

import functools
import math

import torch


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


def phi(k: int, h: float) -> float:
    """phi_k(h) = int_0^1 exp((1 - u) h) u^(k-1)/(k-1)! du, the exponential-integrator weights.

    phi_0 = e^h, phi_{k+1}(h) = (phi_k(h) - 1/k!)/h (Hochbruck & Ostermann 2010, eq. 2.10).
    For k <= 3 and the |h| >= 1e-3 of any practical grid this recursion loses at most ~1e-9 relative.
    """
    value, factorial = math.expm1(h) / h, 1.0  # phi_1 without cancellation
    for j in range(2, k + 1):
        value = (value - 1.0 / factorial) / h
        factorial *= j
    return value if k >= 1 else math.exp(h)


def log_snr(schedule, times: list[float]) -> list[float]:
    """lambda_t at each time, as python floats."""
    return [float(schedule.lambda_(t)) for t in times]


@functools.cache
def gauss_legendre(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights of n-point Gauss-Legendre quadrature on [-1, 1] (Golub & Welsch 1969), float64."""
    k = torch.arange(1, n, dtype=torch.float64)
    off_diagonal = k / torch.sqrt(4 * k * k - 1)
    jacobi = torch.diag(off_diagonal, 1) + torch.diag(off_diagonal, -1)
    nodes, vectors = torch.linalg.eigh(jacobi)
    return nodes, 2 * vectors[0] ** 2


def lagrange_basis_values(nodes: list[float], taus: torch.Tensor) -> torch.Tensor:
    """L_j(tau) for the Lagrange basis of ``nodes``, shape (len(nodes), len(taus))."""
    rows = []
    for j, node_j in enumerate(nodes):
        value = torch.ones_like(taus)
        for m, node_m in enumerate(nodes):
            if m != j:
                value = value * (taus - node_m) / (node_j - node_m)
        rows.append(value)
    return torch.stack(rows)
