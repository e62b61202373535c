"""Solvers of a user's own, outside the solvers package, as the README's recipe writes them: specs name them
python:user_solvers:<name>, and the sweep's worker processes import them by that name. Each restates a registered
solver's update in the user's own words, so its samples must equal that solver's bit for bit on the same x_T and
noise."""
from __future__ import annotations

import math

from solvers import Solver


def euler_in_my_words(model, x, ts, *, eta, noise):
    """Euler on the probability-flow ODE in t (Song et al. 2021, arXiv:2011.13456, eq. 13). Order 1, 1 NFE."""
    times = ts.tolist()
    for t, s in zip(times[:-1], times[1:]):
        x = x + (s - t) * model.drift(x, t)
    return x


def euler_maruyama_in_my_words(model, x, ts, *, eta, noise):
    """Euler-Maruyama on the eta family (Kloeden & Platen 1992, eq. 9.1.1): a drift step, then eta g(t) sqrt(|dt|) z
    with z from the harness's noise source for the step (t, s)."""
    times = ts.tolist()
    for t, s in zip(times[:-1], times[1:]):
        x = x + model.drift(x, t, eta) * (s - t)
        if eta > 0:
            x = x + eta * math.sqrt(float(model.schedule.g2(t)) * (t - s)) * noise(t, s, x)
    return x


MY_EULER = Solver("my_euler", euler_in_my_words, order=1, stochastic="ode", nfe_per_step=1, eta="0 only",
                  reference="Song et al. 2021, arXiv:2011.13456, eq. 13 (tests: a user's restatement of euler)")
MY_EULER_MARUYAMA = Solver("my_euler_maruyama", euler_maruyama_in_my_words, order=1, stochastic="both",
                           nfe_per_step=1, eta="the eta family",
                           reference="Kloeden & Platen 1992, eq. 9.1.1 (tests: a user's restatement of euler)")
# An entry whose NFE is wrong (euler evaluates once per step, not twice): the runner counts, and says so.
MY_EULER_MISCOUNTED = Solver("my_euler_miscounted", euler_in_my_words, order=1, stochastic="ode", nfe_per_step=2,
                             eta="0 only", reference="tests: an entry that declares the wrong NFE")
