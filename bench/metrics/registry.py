"""The metric registry: every metric a spec may name, the row columns it fills, what it needs, and how it is computed.

A metric is a ``Metric`` registered under its name by the module that computes it (``register``), so adding
one is one file in this package (density_coverage.py is the example): the spec validates names against
``METRICS``, the run stage loops over the names a config asks for, the store's schema and the generated column
table take the declared columns.

A metric's ``compute(inputs)`` returns its columns (a standard error ``<column>_se`` beside every sample-based
figure), or nothing where it does not apply, adding to ``inputs.notes`` why when the user would wonder. What
the run stage owns it hands over in ``Inputs``: the samples, the model, and callables for the reference solve,
the 2n-step partner solve and the eager twin; a metric keeps what it shares across configs (an Inception
network, a reference set's statistics) in ``inputs.sweep`` and what it shares with the other metrics of one row
(the samples' Inception features) in ``inputs.row``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa
import torch

# What a metric may need, and where it comes from.
NEEDS = {
    "reference": "the reference solve from the same x_T (deterministic configs; made by the run stage first)",
    "partner": "the 2n-step solve of the same config, x_T and noise (the run stage keeps or makes it)",
    "exact": "exact samples of p_0 (an analytic mixture)",
    "images": "image samples, shape (C, H, W)",
    "inception": "the samples' Inception pool3 features, computed once per row for every metric that uses them",
    "dataset": "the dataset's images (the FID reference set, held-out images)",
    "eager_twin": "the samples of the same config run eager (a non-eager exec mode's drift)",
}
F64, I64, STR = pa.float64(), pa.int64(), pa.string()


@dataclass(frozen=True)
class Metric:
    """``columns``: column -> (pyarrow type, what it holds); ``better``: figure column -> "lower" or "higher", the
    direction in which a change is an improvement (what compare judges; a figure left out, such as a diversity or
    a signed difference, only "changed"); ``in_spec``: False for a metric computed wherever it applies rather than
    named in a spec (the drift of a non-eager row); ``min_samples``: the fewest samples per configuration, and images
    in a reference set it compares with, from which its figures and their standard errors come (2 for a bootstrap,
    more for a jackknife whose kept samples need a covariance or k nearest neighbours); the spec checks it;
    ``min_image_side``: for a metric of images, the fewest pixels a side its network takes (smaller ones are skipped
    with a note; a spec whose models all make smaller ones is refused)."""

    name: str
    description: str
    columns: dict
    needs: tuple
    compute: Callable[["Inputs"], dict]
    in_spec: bool = True
    better: dict = field(default_factory=dict)
    min_samples: int = 2
    min_image_side: int = 1


@dataclass
class Inputs:
    """What a config's metrics are computed from. ``samples`` are on the config's device; ``reference()``,
    ``partner()`` and ``eager_twin()`` give the solves the run stage owns (the reference is None where it failed,
    the row's message then says why)."""

    cfg: object
    source: object
    model: object
    x_T: torch.Tensor
    samples: torch.Tensor
    device: torch.device
    reference: Callable[[], torch.Tensor | None]
    partner: Callable[[], torch.Tensor]
    eager_twin: Callable[[], torch.Tensor]
    sweep: dict
    row: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None  # a latent model's decoder (latents -> images)

    @property
    def seed(self) -> int:
        return self.cfg.seed

    def images(self, samples: torch.Tensor) -> torch.Tensor:
        """What the image metrics see of ``samples`` (the row's own, its reference solve, its eager twin): the
        samples themselves, or a latent model's decoded images (the row's own decoded once, shared by its metrics)."""
        if self.decode is None:
            return samples
        if samples is self.samples:
            if "images" not in self.row:
                self.row["images"] = self.decode(samples)
            return self.row["images"]
        return self.decode(samples)


METRICS: dict[str, Metric] = {}
COLUMNS: dict[str, tuple] = {}  # every metric column -> (type, description), in registration order
BETTER: dict[str, str] = {}  # every figure with a direction -> "lower" or "higher"
DIRECTIONS = ("lower", "higher")


def register(metric: Metric) -> Metric:
    """Add ``metric``; a column two metrics fill (precision and recall: in data space or on Inception features) must
    be declared with the same type and direction by both."""
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name!r} is registered twice")
    for column, direction in metric.better.items():
        if column not in metric.columns or f"{column}_se" not in metric.columns or direction not in DIRECTIONS:
            raise ValueError(f"metric {metric.name!r}: better[{column!r}] = {direction!r}; a direction is one of "
                             f"{DIRECTIONS} for a column the metric fills with its standard error beside it")
        if BETTER.get(column, direction) != direction:
            raise ValueError(f"metric {metric.name!r} says {column!r} is better {direction}, another {BETTER[column]}")
    for column, (kind, description) in metric.columns.items():
        if column in COLUMNS and COLUMNS[column][0] != kind:
            raise ValueError(f"metric {metric.name!r} declares column {column!r} as {kind}, another as "
                             f"{COLUMNS[column][0]}")
    for column, (kind, description) in metric.columns.items():
        COLUMNS.setdefault(column, (kind, description))
    BETTER.update(metric.better)
    METRICS[metric.name] = metric
    return metric


def named_in_spec() -> dict[str, Metric]:
    return {name: metric for name, metric in METRICS.items() if metric.in_spec}


def needing(need: str) -> set[str]:
    """The names of the metrics that need ``need`` (a key of NEEDS)."""
    return {name for name, metric in METRICS.items() if need in metric.needs}


def for_config(names) -> list[Metric]:
    """The metrics a config computes: those its spec names, in registry order, then those computed wherever they
    apply."""
    return [metric for name, metric in METRICS.items() if name in set(names) or not metric.in_spec]


def fewest_samples(names) -> tuple[int, str | None]:
    """The fewest samples per configuration the metrics ``names`` need (their largest ``min_samples``), and the
    metric that needs them; 1 and None for no metrics."""
    needs = max((METRICS[name] for name in names), key=lambda metric: metric.min_samples, default=None)
    return (needs.min_samples, needs.name) if needs else (1, None)
