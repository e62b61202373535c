"""Distances between a solver's samples and exact samples of p_0 (analytic models), in data space.

Frechet distance and k-NN precision/recall (k = 3, Kynkaanniemi et al. 2019), both computed by
torch-fidelity's own functions on the raw data as features; sliced Wasserstein-2 (Bonneel et al.
2015); and the mean exact log-density of the samples. The exact samples are drawn once per sweep
from the config's seed (EXACT_SAMPLES_SEED + seed), the same for every config with that seed.
"""
from __future__ import annotations

import torch

from bench.metrics.registry import F64, Inputs, Metric, register
from bench.models.analytic import GaussianMixture

EXACT_SAMPLES_SEED = 10_000  # exact samples of p_0 come from this offset plus the config's seed


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def frechet_distance(samples: torch.Tensor, reference: torch.Tensor) -> float:
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    stats = [fid_features_to_statistics(_flat(x).double().cpu()) for x in (samples, reference)]
    return float(fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"])


def precision_recall(samples: torch.Tensor, reference: torch.Tensor, k: int = 3) -> tuple[float, float]:
    from torch_fidelity.metric_prc import prc_features_to_metric

    out = prc_features_to_metric(_flat(samples).float().cpu(), _flat(reference).float().cpu(), prc_neighborhood=k,
                                 prc_batch_size=10000, save_cpu_ram=False, verbose=False)
    return out["precision"], out["recall"]


def sliced_wasserstein(samples: torch.Tensor, reference: torch.Tensor, n_projections: int = 256, seed: int = 0) -> float:
    """SW_2 between two equal-size sample sets: random unit directions, sorted projections."""
    a, b = _flat(samples).double().cpu(), _flat(reference).double().cpu()
    if a.shape != b.shape:
        raise ValueError(f"sliced_wasserstein needs equal-size sets, got {tuple(a.shape)} and {tuple(b.shape)}")
    directions = torch.randn(a.shape[1], n_projections, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    directions /= directions.norm(dim=0, keepdim=True)
    pa, pb = (a @ directions).sort(dim=0).values, (b @ directions).sort(dim=0).values
    return (pa - pb).square().mean().sqrt().item()


def exact_samples(inputs: Inputs) -> torch.Tensor | None:
    """The config's exact samples of p_0 (float64, on the CPU), None for a model without them."""
    source, cfg = inputs.source, inputs.cfg
    if not isinstance(source, GaussianMixture):
        return None
    cache = inputs.sweep.setdefault("exact_samples", {})
    key = (cfg.model, cfg.image_resize, cfg.seed, cfg.n_samples)
    if key not in cache:
        cache[key] = source.sample(cfg.n_samples, torch.Generator().manual_seed(EXACT_SAMPLES_SEED + cfg.seed))
    return cache[key]


def _sample_log_density(inputs: Inputs) -> dict:
    if not isinstance(inputs.source, GaussianMixture):
        return {}
    return {"sample_log_density": inputs.source.log_prob(inputs.samples.double().cpu()).mean().item()}


def _frechet(inputs: Inputs) -> dict:
    exact = exact_samples(inputs)
    return {} if exact is None else {"frechet": frechet_distance(inputs.samples.double().cpu(), exact)}


def _precision_recall(inputs: Inputs) -> dict:
    exact = exact_samples(inputs)
    if exact is None or "fid" in inputs.cfg.metrics:  # with FID, precision/recall are the Inception features'
        return {}
    precision, recall = precision_recall(inputs.samples.double().cpu(), exact)
    return {"precision": precision, "recall": recall}


def _sliced_wasserstein(inputs: Inputs) -> dict:
    exact = exact_samples(inputs)
    if exact is None:
        return {}
    return {"sliced_wasserstein": sliced_wasserstein(inputs.samples.double().cpu(), exact, seed=inputs.seed)}


register(Metric(
    "sample_log_density", "mean exact log p_0 of the samples (analytic models); rewards under-dispersed samplers, so "
    "it is no likelihood of data under the model",
    {"sample_log_density": (F64, "mean over samples of the exact log p_0")}, ("exact",), _sample_log_density))
register(Metric(
    "frechet", "Frechet distance between samples and exact samples of p_0, in data space (analytic models)",
    {"frechet": (F64, "Frechet distance to the exact samples, in data space")}, ("exact",), _frechet))
register(Metric(
    "precision_recall", "k-NN precision and recall (k = 3) against exact samples of p_0 (analytic models)",
    {"precision": (F64, "k-NN precision (k = 3): the share of samples inside the reference set's manifold"),
     "recall": (F64, "k-NN recall (k = 3): the share of the reference set inside the samples' manifold")},
    ("exact",), _precision_recall))
register(Metric(
    "sliced_wasserstein", "sliced Wasserstein-2 distance to exact samples of p_0, 256 projections (analytic models)",
    {"sliced_wasserstein": (F64, "sliced Wasserstein-2 distance to the exact samples, 256 projections")},
    ("exact",), _sliced_wasserstein))
