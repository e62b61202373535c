"""Sample-quality and error metrics on flat sample tensors.

Distances between a solver's samples and exact samples of p_0 (analytic models): Frechet distance in
data space and k-NN precision/recall (k = 3, Kynkaanniemi et al. 2019), both computed by
torch-fidelity's own functions on the raw data as features; sliced Wasserstein-2 (Bonneel et al.
2015). Solver errors: the step-doubling estimate and the error against a reference solve.
"""
from __future__ import annotations

import torch

# name -> what the column(s) hold; the runner computes the ones a spec asks for.
METRICS = {
    "err_reference": "median per-sample L2 error against a dopri5 reference solve from the same x_T (rtol = atol = the "
                     "spec's reference_tolerance, default 1e-8; deterministic configs)",
    "err_stepdoubling": "median (and RMS) over samples of |x_n - x_2n| / (2^p - 1), same x_T and Brownian path",
    "sample_log_density": "mean exact log p_0 of the samples (analytic models); rewards under-dispersed "
                          "samplers, so it is no likelihood of data under the model",
    "frechet": "Frechet distance between samples and exact samples of p_0, in data space (analytic models)",
    "precision_recall": "k-NN precision and recall (k = 3) against exact samples of p_0 (analytic models)",
    "sliced_wasserstein": "sliced Wasserstein-2 distance to exact samples of p_0, 256 projections (analytic models)",
    "fid": "FID, KID, precision/recall (k = 3) on Inception pool3 features (image models) against exact samples "
           "of p_0 (image mixtures) or the dataset; fills precision/recall instead of the data-space ones",
    "lpips_reference": "median LPIPS (AlexNet, v0.1) between each sample and the reference solve from the same "
                       "x_T: the solver's error as a person sees it (deterministic image configs, 32 px and up)",
    "lpips_diversity": "mean LPIPS (AlexNet, v0.1) over all pairs of samples: what eta buys (image models, 32 px and up)",
    "nll": "negative log-likelihood per dimension (nats) of n_samples held-out points (exact samples of p_0; for a "
           "network, Fashion-MNIST test images, dequantised) through the PF-ODE integrated by the config's solver, "
           "exact divergence up to 64 dimensions, else Hutchinson; nll_se its standard error; nll_bpd bits/dim of "
           "the images (eta = 0 rows of euler, heun, midpoint, rk4 and the adaptive solvers)",
}


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def per_sample_norms(difference: torch.Tensor) -> torch.Tensor:
    return _flat(difference).double().norm(dim=1)


def stepdoubling_error(x_n: torch.Tensor, x_2n: torch.Tensor, order: int) -> tuple[float, float]:
    """(median, RMS) over samples of |x_n - x_2n| / (2^p - 1): Richardson's estimate of the error of x_2n
    (for an order-p solver, x_n's error is about 2^p times that)."""
    norms = per_sample_norms(x_n - x_2n) / (2**order - 1)
    return norms.median().item(), norms.square().mean().sqrt().item()


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
