"""Distances between a solver's samples and exact samples of p_0 (analytic models), in data space.

Frechet distance and k-NN precision/recall (k = 3, Kynkaanniemi et al. 2019) on the raw data as features
(the formulas of bench.metrics.uncertainty, equal to torch-fidelity's functions: tested); sliced
Wasserstein-2 (Bonneel et al. 2015); and the mean exact log-density of the samples; each with its
standard error. The exact samples are drawn once per sweep from EXACT_SAMPLES_SEED, whatever the config's seed:
one reference set for every row (of every run at that sample count), so that rows of different seeds are judged
against the same set and their standard errors, which hold the reference fixed, hold for comparing them (an
unpaired compare across seeds, a report's mean over seeds).
"""
from __future__ import annotations

import torch

from bench.metrics.registry import F64, Inputs, Metric, register
from bench.metrics.uncertainty import (NEIGHBOUR_SAMPLES, FrechetReference, NeighbourReference, bootstrap_se,
                                       sliced_wasserstein_and_se)
from bench.models.analytic import GaussianMixture

EXACT_SAMPLES_SEED = 10_000  # the exact samples of p_0 the distances compare with (the samples' own seeds differ)


PRECISION_RECALL_COLUMNS = {  # NeighbourReference's, here and in the fid metric (on Inception features)
    "precision": (F64, "k-NN precision (k = 3): the share of samples inside the reference set's manifold"),
    "precision_se": (F64, "its standard error (binomial, Jeffreys prior: not 0 when every sample is inside)"),
    "recall": (F64, "k-NN recall (k = 3): the share of the reference set inside the samples' manifold"),
    "recall_se": (F64, "its standard error (jackknife over samples, never below a share's: not 0 at a bound; "
                       "measured conservative)")}


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def projections(dim: int, n_projections: int = 256, seed: int = 0) -> torch.Tensor:
    """Random unit directions (dim, n_projections) of the sliced Wasserstein distance, from the seed."""
    directions = torch.randn(dim, n_projections, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return directions / directions.norm(dim=0, keepdim=True)


def sliced_wasserstein(samples: torch.Tensor, reference: torch.Tensor, n_projections: int = 256, seed: int = 0) -> float:
    """SW_2 between two equal-size sample sets: random unit directions, sorted projections."""
    a, b = _flat(samples).double().cpu(), _flat(reference).double().cpu()
    if a.shape != b.shape:
        raise ValueError(f"sliced_wasserstein needs equal-size sets, got {tuple(a.shape)} and {tuple(b.shape)}")
    return sliced_wasserstein_and_se(a, b, projections(a.shape[1], n_projections, seed))[0]


def _reference(inputs: Inputs, kind):
    """The exact samples made ready for one kind of comparison (``FrechetReference.of`` or ``NeighbourReference``),
    once per exact sample set and kind; None for a model without exact samples."""
    exact = exact_samples(inputs)
    if exact is None:
        return None
    cache = inputs.sweep.setdefault("exact_references", {})
    key = (id(exact), kind)  # exact_samples' cache, in the same sweep, keeps the set (and so its id) alive
    if key not in cache:
        cache[key] = kind(_flat(exact).double())
    return cache[key]


def exact_samples(inputs: Inputs) -> torch.Tensor | None:
    """The config's exact samples of p_0 (float64, on the CPU), None for a model without them."""
    source, cfg = inputs.source, inputs.cfg
    if not isinstance(source, GaussianMixture):
        return None
    cache = inputs.sweep.setdefault("exact_samples", {})
    key = (cfg.model, cfg.image_resize, cfg.n_samples)
    if key not in cache:
        cache[key] = source.sample(cfg.n_samples, torch.Generator().manual_seed(EXACT_SAMPLES_SEED))
    return cache[key]


def _sample_log_density(inputs: Inputs) -> dict:
    if not isinstance(inputs.source, GaussianMixture):
        return {}
    per_sample = inputs.source.log_prob(inputs.samples.double().cpu())
    return {"sample_log_density": per_sample.mean().item(), "sample_log_density_se": bootstrap_se(per_sample, "mean")}


def _frechet(inputs: Inputs) -> dict:
    reference = _reference(inputs, FrechetReference.of)
    if reference is None:
        return {}
    value, se = reference.distance_and_se(_flat(inputs.samples).double().cpu())
    return {"frechet": value, "frechet_se": se}


def _precision_recall(inputs: Inputs) -> dict:
    if "fid" in inputs.cfg.metrics:  # with FID, precision/recall are the Inception features'
        return {}
    reference = _reference(inputs, NeighbourReference)
    if reference is None:
        return {}
    return reference.precision_recall_and_se(_flat(inputs.samples).double().cpu())


def _sliced_wasserstein(inputs: Inputs) -> dict:
    exact = exact_samples(inputs)
    if exact is None:
        return {}
    a, b = _flat(inputs.samples).double().cpu(), _flat(exact).double()
    value, se = sliced_wasserstein_and_se(a, b, projections(a.shape[1], seed=inputs.seed))
    return {"sliced_wasserstein": value, "sliced_wasserstein_se": se}


register(Metric(
    "sample_log_density", "mean exact log p_0 of the samples (analytic models); rewards under-dispersed samplers, so "
    "it is no likelihood of data under the model",
    {"sample_log_density": (F64, "mean over samples of the exact log p_0"),
     "sample_log_density_se": (F64, "its standard error")}, ("exact",), _sample_log_density))
register(Metric(
    "frechet", "Frechet distance between samples and exact samples of p_0, in data space (analytic models)",
    {"frechet": (F64, "Frechet distance to the exact samples, in data space"),
     "frechet_se": (F64, "its standard error (jackknife over samples)")}, ("exact",), _frechet,
    better={"frechet": "lower"}, min_samples=3))  # each kept set's covariance
register(Metric(
    "precision_recall", "k-NN precision and recall (k = 3) against exact samples of p_0 (analytic models)",
    PRECISION_RECALL_COLUMNS, ("exact",), _precision_recall, better={"precision": "higher", "recall": "higher"},
    min_samples=NEIGHBOUR_SAMPLES))
register(Metric(
    "sliced_wasserstein", "sliced Wasserstein-2 distance to exact samples of p_0, 256 projections (analytic models)",
    {"sliced_wasserstein": (F64, "sliced Wasserstein-2 distance to the exact samples, 256 projections"),
     "sliced_wasserstein_se": (F64, "its standard error (jackknife over samples)")},
    ("exact",), _sliced_wasserstein, better={"sliced_wasserstein": "lower"}))
