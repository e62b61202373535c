"""Solvers of a user's own, outside the solvers package, as the README's recipe writes them: specs name them
python:user_solvers:<name>, and the sweep's worker processes import them by that name. Each restates a registered
solver's update in the user's own words, so its samples must equal that solver's bit for bit on the same x_T and
noise."""
from __future__ import annotations

import math

from solvers import NoisePlan, Solver


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


def euler_maruyama_in_half_steps(model, x, ts, *, eta, noise):
    """Euler-Maruyama (Kloeden & Platen 1992, eq. 9.1.1) in two half steps per step of the grid, each with its own
    increment of the Brownian path: draws off the grid's steps, which an entry's NoisePlan must list."""
    times = ts.tolist()
    for t, s in zip(times[:-1], times[1:]):
        for a, b in ((t, (t + s) / 2), ((t + s) / 2, s)):
            x = x + model.drift(x, a, eta) * (b - a)
            x = x + eta * math.sqrt(float(model.schedule.g2(a)) * (a - b)) * noise(a, b, x)
    return x


def _half_steps(schedule, times, options):
    return [(0, a, b) for t, s in zip(times[:-1], times[1:]) for a, b in ((t, (t + s) / 2), ((t + s) / 2, s))]


MY_HALF_STEPS = Solver("my_half_steps", euler_maruyama_in_half_steps, order=1, stochastic="sde", nfe_per_step=2,
                       eta="the eta family", reference="tests: draws at half steps, listed in its NoisePlan",
                       noise=NoisePlan(intervals=_half_steps))
# The same without its half steps listed: the runner draws them inside the timed solve, and says so.
MY_HALF_STEPS_UNLISTED = Solver("my_half_steps_unlisted", euler_maruyama_in_half_steps, order=1, stochastic="sde",
                                nfe_per_step=2, eta="the eta family",
                                reference="tests: draws at half steps its NoisePlan does not list")
