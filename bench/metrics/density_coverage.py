"""Density and coverage (Naeem et al. 2020, arXiv:2002.09797, eqs. 4 and 5) on the Inception features FID uses.

With the reference features X_1..X_M, each with the radius r_i to its k-th nearest other reference feature, and
the samples' features Y_1..Y_N:

    density  = 1/(k N) sum_j sum_i 1[|Y_j - X_i| <= r_i]     (how many reference balls a sample falls in, / k)
    coverage = 1/M sum_i 1[some Y_j has |Y_j - X_i| <= r_i]  (the share of reference balls that hold a sample)

k = 5, the paper's choice. Unlike precision and recall, both depend on the reference's balls only, so an
outlying sample cannot inflate them. The samples' features are the row's own (computed once, shared with the
fid metric); the reference is the fid metric's (the shipped subset features, or the reference set's). Standard
errors: density is a mean over samples (its SE from their spread), never below the binomial SE of the share of
samples in some ball, over k (each such sample adds at least 1/k: at density 0 the spread is 0); coverage by the
delete-a-group jackknife over the samples, never below the binomial SE of a share of M votes
(``share_jackknife_se``: at 1 the jackknife is 0).
"""
from __future__ import annotations

import torch

from bench.metrics.fid import reference_features, sample_features
from bench.metrics.registry import F64, Inputs, Metric, register
from bench.metrics.uncertainty import bootstrap_se, leave_one_group_out, share_jackknife_se, share_se

NEIGHBOURS = 5


def density_coverage(features: torch.Tensor, reference: torch.Tensor, k: int = NEIGHBOURS) -> dict:
    """The paper's density and coverage of ``features`` against ``reference`` (rows are points), with SEs."""
    x, y = reference.double(), features.double().to(reference.device)
    radii = torch.cdist(x, x).kthvalue(k + 1, dim=1).values  # the k-th nearest other point (itself is at 0)
    inside = torch.cdist(y, x) <= radii  # (N, M): sample j inside reference ball i
    per_sample = inside.double().sum(1) / k
    # the share of samples in some ball bounds the spread from below (c >= 1 where c > 0: var c >= var 1[c > 0])
    least_se = share_se(int((per_sample > 0).sum()), len(y)) / k
    replicates = [float(inside[keep.to(inside.device)].any(dim=0).double().mean())
                  for keep in leave_one_group_out(len(y))]
    covered = int(inside.any(dim=0).sum())
    return {"density": float(per_sample.mean()), "density_se": max(bootstrap_se(per_sample, "mean"), least_se),
            "coverage": covered / len(x), "coverage_se": share_jackknife_se(replicates, covered, len(x))}


def _density_coverage(inputs: Inputs) -> dict:
    images = inputs.images(inputs.samples)
    if images.ndim != 4:
        return {}
    return density_coverage(sample_features(inputs, images), reference_features(inputs))


register(Metric(
    "density_coverage", "density and coverage (Naeem et al. 2020, k = 5) of the samples' Inception features against "
    "the FID reference set's: robust to outlying samples (image models)",
    {"density": (F64, "mean over samples of the reference balls they fall in, / k (1 for a perfect match)"),
     "density_se": (F64, "its standard error (bootstrap over samples, never below a share's: not 0 at 0)"),
     "coverage": (F64, "the share of reference balls holding a sample"),
     "coverage_se": (F64, "its standard error (jackknife over samples, never below a share's: not 0 at 1)")},
    ("images", "inception", "dataset"), _density_coverage, better={"coverage": "higher"},
    min_samples=NEIGHBOURS + 1))  # k others around each reference point: exact samples are a reference of n
