"""DiffusionModel: a network, its prediction type and its schedule.

Solvers never call a raw network: they ask this wrapper for eps, x0, score or v at (x, t), and it
converts whatever the network predicts (x_t = alpha x0 + sigma eps; score = -eps / sigma;
v = alpha eps - sigma x0, Salimans & Ho 2022, arXiv:2202.00512; flow u = eps - x0 for flow-matching
models, whose schedule has alpha = 1 - sigma) and counts network evaluations.
"""
from __future__ import annotations

import torch

from solvers.schedules import Schedule

PREDICTIONS = ("eps", "x0", "v", "score", "flow")


def _per_sample(t) -> bool:
    """Whether t holds one time per sample (a (batch,) tensor) rather than one time for the batch."""
    return isinstance(t, torch.Tensor) and t.ndim > 0


class DiffusionModel:
    """Wraps ``net(x, t) -> tensor like x`` where t is a (batch,) tensor of continuous times.

    ``nfe`` counts calls of the network (one call on a batch is one evaluation); ``reset_nfe()``
    zeroes it. Times given to the methods may be a python float, a 0-d tensor or a (batch,) tensor.
    """

    def __init__(self, net, schedule: Schedule, prediction: str = "eps"):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; valid: {', '.join(PREDICTIONS)}")
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a solvers.schedules.Schedule, got {type(schedule).__name__}")
        if prediction == "flow" and not hasattr(schedule, "shift"):
            raise ValueError(f"prediction 'flow' (u = eps - x0) needs a FlowMatching schedule (alpha = 1 - sigma), "
                             f"got {type(schedule).__name__}")
        self.net = net
        self.schedule = schedule
        self.prediction = prediction
        self.nfe = 0

    def __repr__(self):
        return f"DiffusionModel(prediction={self.prediction!r}, schedule={self.schedule!r})"

    def reset_nfe(self) -> None:
        self.nfe = 0

    def coefficients(self, x: torch.Tensor, t):
        """(alpha_t, sigma_t), as python floats for a scalar t, else shaped to broadcast against x."""
        if _per_sample(t):
            return self._schedule_at(x, t, self.schedule.alpha, self.schedule.sigma)
        return self.schedule.alpha_sigma(t)

    def _schedule_at(self, x: torch.Tensor, t, *functions):
        if _per_sample(t):
            t64 = t.to(torch.float64)
            shape = (-1,) + (1,) * (x.ndim - 1)
            return tuple(fn(t64).to(x.dtype).reshape(shape) for fn in functions)
        t = float(t)
        return tuple(float(fn(t)) for fn in functions)

    def _time_batch(self, x: torch.Tensor, t) -> torch.Tensor:
        if _per_sample(t):
            if t.shape != (x.shape[0],):
                raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")
            return t.to(device=x.device, dtype=x.dtype)
        return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)

    def eps_and_x0(self, x: torch.Tensor, t):
        """One network evaluation, converted to both eps and x0."""
        out = self.net(x, self._time_batch(x, t))
        self.nfe += 1
        return self.convert(x, t, out)

    def convert(self, x: torch.Tensor, t, out: torch.Tensor):
        """(eps, x0) at (x, t) from the network output ``out`` in this model's prediction type."""
        alpha, sigma = self.coefficients(x, t)
        if self.prediction == "eps":
            eps = out
            return eps, (x - sigma * eps) / alpha
        if self.prediction == "x0":
            x0 = out
            return (x - alpha * x0) / sigma, x0
        if self.prediction == "score":
            eps = -sigma * out
            return eps, (x - sigma * eps) / alpha
        if self.prediction == "flow":  # u = eps - x0 with x = (1 - sigma) x0 + sigma eps (alpha = 1 - sigma)
            return x + (1 - sigma) * out, x - sigma * out
        norm = alpha * alpha + sigma * sigma  # v-prediction: invert v = alpha eps - sigma x0
        return (sigma * x + alpha * out) / norm, (alpha * x - sigma * out) / norm

    def with_network(self, transform) -> "DiffusionModel":
        """The same model with its network replaced by ``transform(network)`` (an execution mode: autocast,
        torch.compile); a guided model transforms its conditional network and keeps its guidance."""
        return DiffusionModel(transform(self.net), self.schedule, self.prediction)

    def eps(self, x, t):
        return self.eps_and_x0(x, t)[0]

    def x0(self, x, t):
        return self.eps_and_x0(x, t)[1]

    def score(self, x, t):
        _, sigma = self.coefficients(x, t)
        return -self.eps(x, t) / sigma

    def v(self, x, t):
        alpha, sigma = self.coefficients(x, t)
        eps, x0 = self.eps_and_x0(x, t)
        return alpha * eps - sigma * x0

    def drift(self, x, t, eta: float = 0.0):
        """Drift of the eta family, dx = [f x - (1 + eta^2)/2 g^2 score] dt + eta g dw_bar.

        eta = 0 is the probability-flow ODE (Song et al. 2021, arXiv:2011.13456, eq. 13).
        """
        f, g2, sigma = self._schedule_at(x, t, self.schedule.f, self.schedule.g2, self.schedule.sigma)
        return f * x + (1 + eta * eta) / 2 * g2 / sigma * self.eps(x, t)
