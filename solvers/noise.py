"""Noise sources for stochastic solvers.

A noise source is called as ``noise(t, s, like)`` for the step from time t to time s and returns a
standard-normal tensor shaped like ``like``. ``GaussianNoise`` draws fresh i.i.d. values from a
seeded generator. ``BrownianNoise`` returns (W(t) - W(s)) / sqrt(|t - s|) for one Brownian path W
fixed by its seed, so a solve on n steps and one on 2n steps see the same Brownian motion: two half
steps' noises combine, (z_1 + z_2)/sqrt(2), into the full step's noise. That is what makes a
step-doubling error estimate of a stochastic solver meaningful.

A solver that needs more than one standard normal per step (a Langevin corrector next to its
predictor) asks ``noise.independent(k)`` for stream k = 1, 2, ...: a source of the same kind whose
draws are independent of this one's and, for ``BrownianNoise``, fixed by the same seed, so such runs
stay paired across configs. Asking one source twice for the same (t, s) returns the same
increment: that is the path, not a fresh draw. ``NoNoise`` is what a deterministic run gets: it
raises if called.
"""
from __future__ import annotations

import hashlib
import math

import torch


class GaussianNoise:
    """Independent N(0, I) draws from ``generator`` (a torch.Generator, or None for torch's global RNG)."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def __call__(self, t: float, s: float, like: torch.Tensor) -> torch.Tensor:
        device = self.generator.device if self.generator is not None else like.device
        z = torch.randn(like.shape, generator=self.generator, device=device, dtype=like.dtype)
        return z.to(like.device)

    def independent(self, stream: int) -> "GaussianNoise":
        """Fresh draws of one generator are already independent of the earlier ones."""
        return self


class BrownianNoise:
    """Increments of one Brownian path on [t_min, t_max], fixed by ``seed`` (torchsde.BrownianInterval).

    The path is resolved on a dyadic tree to ``tol`` in time, so any set of query points gives
    increments of the same path: normalised increments of n and 2n step grids agree in the sense
    above. ``like`` fixes the shape, dtype and device of the path.
    """

    def __init__(self, like: torch.Tensor, t_min: float, t_max: float, seed: int, tol: float = 1e-7):
        import torchsde  # lazy: solvers import cheaply when no SDE path is wanted

        if not t_min < t_max:
            raise ValueError(f"BrownianNoise: need t_min < t_max, got {t_min}, {t_max}")
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.shape, self.seed, self.tol = like.shape, int(seed), tol
        self._like = torch.zeros((), dtype=like.dtype, device=like.device).expand(like.shape)
        self._streams: dict[int, BrownianNoise] = {}
        self._path = torchsde.BrownianInterval(
            t0=self.t_min, t1=self.t_max, size=like.shape, dtype=like.dtype, device=like.device,
            entropy=int(seed), tol=tol, halfway_tree=True, pool_size=24,
        )

    def increment(self, t: float, s: float) -> torch.Tensor:
        """W(max(t, s)) - W(min(t, s)), with variance |t - s| per element."""
        lo, hi = sorted((float(t), float(s)))
        lo, hi = max(lo, self.t_min), min(hi, self.t_max)
        return self._path(lo, hi)

    def __call__(self, t: float, s: float, like: torch.Tensor) -> torch.Tensor:
        if like.shape != self.shape:
            raise ValueError(f"BrownianNoise was built for shape {tuple(self.shape)}, asked for {tuple(like.shape)}")
        return self.increment(t, s) / math.sqrt(abs(float(t) - float(s)))

    def independent(self, stream: int) -> "BrownianNoise":
        """The Brownian path of stream ``stream`` (>= 1): independent of this one, fixed by the same seed."""
        if isinstance(stream, bool) or not isinstance(stream, int) or stream < 1:
            raise ValueError(f"BrownianNoise.independent: stream must be an integer >= 1, got {stream!r}")
        if stream not in self._streams:
            digest = hashlib.sha256(f"{self.seed}/{stream}".encode()).digest()
            self._streams[stream] = BrownianNoise(self._like, self.t_min, self.t_max,
                                                  seed=int.from_bytes(digest[:7], "little"), tol=self.tol)
        return self._streams[stream]


class RowsOf:
    """The draws of a noise source built for a whole batch, restricted to rows ``start:stop`` of it: a part of the batch
    solved on its own sees exactly the noise it sees inside the batch (so splitting a batch keeps the pairing)."""

    def __init__(self, source, like_batch: torch.Tensor, start: int, stop: int):
        self.source, self.start, self.stop = source, start, stop
        self._like = torch.zeros((), dtype=like_batch.dtype, device=like_batch.device).expand(like_batch.shape)

    def __call__(self, t: float, s: float, like: torch.Tensor) -> torch.Tensor:
        return self.source(t, s, self._like)[self.start:self.stop].clone()

    def independent(self, stream: int) -> "RowsOf":
        return RowsOf(self.source.independent(stream), self._like, self.start, self.stop)


class PrecomputedNoise:
    """A noise source's draws for one known time grid, made before the solve starts.

    Solvers ask for (t_i, t_i+1) of their grid, on stream 0 and, for a corrector, on streams 1..
    ``streams``, and a few others as (stream, t, s) (``extra_intervals``): all of those are drawn here, on the source's device, so that timing a solve times
    the solver and not the Brownian tree (whose queries cost far more than the arithmetic that uses
    them). The values are the source's own, so results do not change. A request off the grid goes
    to the source and is counted in ``misses``.
    """

    def __init__(self, source, ts: torch.Tensor, like: torch.Tensor, streams: int = 0, extra_intervals=()):
        times = ts.tolist()
        self.source, self.misses = source, 0
        self._draws = {}
        grid = [(stream, t, s) for stream in range(streams + 1) for t, s in zip(times[:-1], times[1:])]
        for stream, t, s in grid + list(extra_intervals):  # extra: draws off the grid's steps
            self._draws[stream, t, s] = self._stream(stream)(t, s, like)

    def _stream(self, stream: int):
        return self.source if stream == 0 else self.source.independent(stream)

    def draw(self, stream: int, t: float, s: float, like: torch.Tensor) -> torch.Tensor:
        found = self._draws.get((stream, t, s))
        if found is None or found.shape != like.shape:
            self.misses += 1
            return self._stream(stream)(t, s, like)
        return found

    def __call__(self, t: float, s: float, like: torch.Tensor) -> torch.Tensor:
        return self.draw(0, t, s, like)

    def independent(self, stream: int):
        return lambda t, s, like: self.draw(stream, t, s, like)

    def copy_into(self, other: "PrecomputedNoise") -> None:
        """Write these draws into ``other``'s tensors of the same keys (the static buffers of a captured solve)."""
        if self._draws.keys() != other._draws.keys():
            raise ValueError("PrecomputedNoise.copy_into: the two were drawn for different intervals")
        for key, value in self._draws.items():
            other._draws[key].copy_(value)


class NoNoise:
    """The noise source of a deterministic run: any draw is a bug in the caller's bookkeeping."""

    def __init__(self, reason: str = "this run was declared deterministic"):
        self.reason = reason

    def __call__(self, t: float, s: float, like: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(f"a solver drew noise, but {self.reason}")

    def independent(self, stream: int) -> "NoNoise":
        return self
