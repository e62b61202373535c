"""UniPC: the unified predictor-corrector of Zhao et al. 2023 (arXiv:2302.04867), data prediction."""
from __future__ import annotations

import math

import torch

from solvers.coefficients import log_snr, phi

UNIPC_VARIANTS = ("bh1", "bh2")


def _rho(ratios: list[float], h: float, b_h: float, corrector: bool) -> list[float]:
    """The UniPC weights: solve R rho = b with R_ij = r_j^(i-1), b_i = i! (-h) phi_{i+1}(-h) / B(h)
    (Zhao et al. 2023, Algorithms 1-2 and eq. 8); the predictor drops the last row and column."""
    size = len(ratios) + 1
    b = [math.factorial(i) * -h * phi(i + 1, -h) / b_h for i in range(1, size + 1)]
    nodes = ratios + [1.0]
    if not corrector:
        size -= 1
        if size == 1:
            return [0.5]  # UniP-2: the paper's fixed choice
    if size == 1:
        return [0.5]  # UniC-1
    matrix = torch.tensor([[r ** i for r in nodes[:size]] for i in range(size)], dtype=torch.float64)
    return torch.linalg.solve(matrix, torch.tensor(b[:size], dtype=torch.float64)).tolist()


def unipc(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise, order: int = 2,
          variant: str = "bh2", lower_order_final: bool = False) -> torch.Tensor:
    """UniPC-p: the UniP-p multistep predictor followed by the UniC corrector (Zhao et al. 2023,
    arXiv:2302.04867, Algorithms 1-3, data prediction as in its reference code).

    The corrector reuses the evaluation at the predicted point that the next step needs anyway, so
    the cost stays 1 NFE per step; the last step is not corrected (no further evaluation). B(h) =
    h (``variant="bh1"``, the reference code's default) or e^h - 1 (``"bh2"``, diffusers' default).
    The predictor has order p, the corrector raises it to p + 1 (Theorem 3.1); the first steps use
    the order their history allows, and with ``lower_order_final=True`` the last p - 1 steps lower it
    again (order min(p, steps left), diffusers' default below 15 steps).
    """
    schedule, times = model.schedule, ts.tolist()
    lams = log_snr(schedule, times)
    n = len(times) - 1
    history: list[tuple[float, torch.Tensor]] = []  # (lambda, x0) newest first
    m_next = model.x0(x, times[0])
    x_prev = used = None
    for i, (t, s) in enumerate(zip(times[:-1], times[1:])):
        if x_prev is not None:  # UniC: correct the step that led here with the evaluation at its end
            x = _corrector(x_prev, used, lams[i], times[i - 1], t, schedule, variant, m_next)
        history = [(lams[i], m_next)] + history[: order - 1]
        used = history[: min(order, n - i)] if lower_order_final else history
        x_prev = x
        x = _predictor(x, used, lams[i + 1], t, s, schedule, variant)
        if i + 1 < n:
            m_next = model.x0(x, s)
    return x


def _first_order_terms(x, history, lam_s, t, s, schedule, variant):
    """What UniP and UniC share for a step from t to s: h, B(h), alpha_s, the ratios r_k and scaled
    differences D_k = (x0_k - x0_t) / r_k of the older history, and the first-order (DDIM) map of x."""
    (lam_t, m0), older = history[0], history[1:]
    h = lam_s - lam_t
    (_, sigma_t), (alpha_s, sigma_s) = schedule.alpha_sigma(t), schedule.alpha_sigma(s)
    b_h = -h if variant == "bh1" else math.expm1(-h)
    ratios = [(lam_j - lam_t) / h for lam_j, _ in older]
    diffs = [(m_j - m0) / r for (_, m_j), r in zip(older, ratios)]
    x_s = (sigma_s / sigma_t) * x - alpha_s * math.expm1(-h) * m0
    return h, b_h, alpha_s, ratios, diffs, x_s


def _predictor(x, history, lam_s, t, s, schedule, variant):
    """UniP-p (Algorithm 2): the first-order map plus the weighted differences of the history."""
    h, b_h, alpha_s, ratios, diffs, x_s = _first_order_terms(x, history, lam_s, t, s, schedule, variant)
    if not diffs:
        return x_s
    rho = _rho(ratios, h, b_h, corrector=False)
    return x_s - alpha_s * b_h * sum(r * d for r, d in zip(rho, diffs))


def _corrector(x, history, lam_s, t, s, schedule, variant, m_new):
    """UniC (Algorithm 1): the step from t to s redone with m_new, x0 evaluated at the predicted x_s."""
    h, b_h, alpha_s, ratios, diffs, x_s = _first_order_terms(x, history, lam_s, t, s, schedule, variant)
    rho = _rho(ratios, h, b_h, corrector=True)
    correction = sum(r * d for r, d in zip(rho[:-1], diffs)) + rho[-1] * (m_new - history[0][1])
    return x_s - alpha_s * b_h * correction
