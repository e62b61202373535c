"""Standard errors of the metrics from the one sample set a row has: every figure with its uncertainty.

Two resampling schemes, each where it is right (both checked against the spread of the metric over
independently drawn sample sets in tests/test_uncertainty.py):

- Per-sample statistics (the median or mean of per-sample errors, distances, log-densities, LPIPS):
  the bootstrap over samples, ``BOOTSTRAP_REPLICATES`` = 200 resamples (the SE's own Monte Carlo error
  is then 1/sqrt(2 x 199) = 5%), from the per-sample values the metric already has.
- Distances between the sample set and a reference set (FID and the data-space Frechet distance, KID,
  precision, recall, sliced Wasserstein): the delete-a-group jackknife, ``JACKKNIFE_GROUPS`` = 64 groups
  (or one sample per group below 64 samples; the SE's Monte Carlo error about 1/sqrt(2 x 63) = 9%),
  recomputed from the features, distances or kernel values the metric computes anyway. The bootstrap is
  wrong for these: a resample repeats about a third of its samples, which a covariance, a nearest-neighbour
  radius or a kernel mean counts as real, and at 128 Inception features (2,048 dimensions) its FID spread
  came out 2.3x the true one (jackknife: 1.04x). The reference set's own statistics are held fixed: the
  SE is that of the figure given the reference, which every configuration of a run shares.

Replicates are computed in float64 with exact formulas (FID's trace term from the eigenvalues of the
samples' Gram matrix in the reference's whitened coordinates), seeded from the config's seed, so a rerun
gives the same standard errors.
"""
from __future__ import annotations

import math

import torch

BOOTSTRAP_REPLICATES = 200
JACKKNIFE_GROUPS = 64


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(1_000_003 * seed + 17)


def bootstrap_se(values: torch.Tensor, statistic: str = "median", seed: int = 0) -> float:
    """SE of ``statistic`` (median, mean or rms) of per-sample ``values`` by the bootstrap over samples."""
    values = values.detach().double().cpu().flatten()
    if len(values) < 2:
        return math.nan
    if statistic == "mean":  # the bootstrap's limit, exactly
        return float(values.std() / math.sqrt(len(values)))
    draws = values[torch.randint(0, len(values), (BOOTSTRAP_REPLICATES, len(values)), generator=_generator(seed))]
    replicates = {"median": lambda v: v.median(dim=1).values,
                  "rms": lambda v: v.square().mean(dim=1).sqrt()}[statistic](draws)
    return float(replicates.std())


def groups(n: int) -> torch.Tensor:
    """The jackknife group of each of ``n`` samples: i mod G with G = min(n, JACKKNIFE_GROUPS)."""
    return torch.arange(n) % min(n, JACKKNIFE_GROUPS)


def jackknife_se(replicates) -> float:
    """The delete-a-group jackknife SE from the G leave-one-group-out values: sqrt((G - 1)/G sum (r - mean)^2)."""
    replicates = torch.as_tensor(replicates, dtype=torch.float64)
    count = len(replicates)
    if count < 2:
        return math.nan
    return float(((count - 1) / count * (replicates - replicates.mean()).square().sum()).sqrt())


def _leave_one_group_out(n: int):
    labels = groups(n)
    return [labels != g for g in range(int(labels.max()) + 1)]


def _sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


class FrechetReference:
    """A reference distribution's mean and covariance, ready for the Frechet distance (FID on Inception features,
    the data-space Frechet distance on raw samples) of any sample set and its jackknife SE.

    d^2 = |mu - mu_r|^2 + tr S + tr S_r - 2 tr sqrt(S_r^(1/2) S S_r^(1/2)); with Y the samples' centred features
    times S_r^(1/2), the last trace is the sum of the square roots of the eigenvalues of Y Y^T / (n - 1) (n <= d)
    or Y^T Y / (n - 1) (n > d): exact, and equal to torch-fidelity's scipy.linalg.sqrtm form to rounding."""

    def __init__(self, mu: torch.Tensor, sigma: torch.Tensor):
        self.mu, self.sigma = torch.as_tensor(mu, dtype=torch.float64), torch.as_tensor(sigma, dtype=torch.float64)
        self.root, self.trace = _sqrtm_psd(self.sigma), float(torch.trace(self.sigma))

    @classmethod
    def of(cls, features: torch.Tensor) -> "FrechetReference":
        features = features.double().reshape(len(features), -1)
        return cls(features.mean(0), torch.cov(features.T).reshape(features.shape[1], features.shape[1]))

    def _distance(self, features: torch.Tensor, projected: torch.Tensor) -> float:
        n = len(features)
        mean = features.mean(0)
        centred = projected - projected.mean(0)
        small = centred @ centred.T if n <= centred.shape[1] else centred.T @ centred
        trace_root = torch.linalg.eigvalsh(small / (n - 1)).clamp_min(0).sqrt().sum()
        trace = (features - mean).square().sum() / (n - 1)
        return float((mean - self.mu).square().sum() + trace + self.trace - 2 * trace_root)

    def distance_and_se(self, features: torch.Tensor) -> tuple[float, float]:
        features = features.double().reshape(len(features), -1).to(self.mu.device)
        projected = features @ self.root
        value = self._distance(features, projected)
        replicates = [self._distance(features[keep], projected[keep]) for keep in _leave_one_group_out(len(features))]
        return value, jackknife_se(replicates)


def kid_se(features: torch.Tensor, reference: torch.Tensor, chunk: int = 2048) -> float:
    """Jackknife SE of KID, the unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3
    (Binkowski et al. 2018; torch-fidelity's), between the samples and the reference features, all of them (the
    reported KID averages 100 subsets of them). The kernel sums are accumulated per jackknife group, so no n x n
    matrix is held at once."""
    x, y = features.double(), reference.double().to(features.device)
    n, m, d = len(x), len(y), x.shape[1]
    labels = groups(n).to(x.device)
    count = int(labels.max()) + 1
    one_hot = torch.nn.functional.one_hot(labels, count).double()
    block_xx = torch.zeros(count, count, dtype=torch.float64, device=x.device)  # sum of k(x_i, x_j) by groups
    diagonal = torch.zeros(count, dtype=torch.float64, device=x.device)
    cross = torch.zeros(count, dtype=torch.float64, device=x.device)  # sum over the reference of k(x_i, y)
    for start in range(0, n, chunk):
        part = x[start:start + chunk]
        kernel = (part @ x.T / d + 1) ** 3
        block_xx += one_hot[start:start + chunk].T @ kernel @ one_hot
        diagonal += one_hot[start:start + chunk].T @ ((part * part).sum(1) / d + 1) ** 3
        cross += one_hot[start:start + chunk].T @ ((part @ y.T / d + 1) ** 3).sum(1)
    yy = 0.0
    for start in range(0, m, chunk):
        kernel = (y[start:start + chunk] @ y.T / d + 1) ** 3
        yy += float(kernel.sum() - torch.diagonal(kernel, offset=start).sum())
    yy /= m * (m - 1)
    sizes = one_hot.sum(0)
    replicates = []
    for g in range(count):
        kept = n - sizes[g]
        xx = block_xx.sum() - 2 * block_xx[g].sum() + block_xx[g, g] - (diagonal.sum() - diagonal[g])
        xy = cross.sum() - cross[g]
        replicates.append(float(xx / (kept * (kept - 1)) + yy - 2 * xy / (kept * m)))
    return jackknife_se(replicates)


def precision_recall_and_se(features: torch.Tensor, reference: torch.Tensor, k: int = 3) -> dict:
    """k-NN precision and recall (Kynkaanniemi et al. 2019; torch-fidelity's definition: a radius is the distance
    to the k-th nearest other point of the same set) with their jackknife SEs. Leaving a group of samples out
    drops their balls and their votes, and the remaining samples' radii are taken among the samples kept."""
    x, y = features.double(), reference.double().to(features.device)
    within_x, x_to_y = torch.cdist(x, x), torch.cdist(x, y)
    reference_radii = torch.cdist(y, y).kthvalue(k + 1, dim=1).values
    inside_reference = (x_to_y <= reference_radii).any(dim=1).double()  # a sample inside some reference ball

    def recall(keep: torch.Tensor) -> float:
        radii = within_x[keep][:, keep].kthvalue(k + 1, dim=1).values
        return float((x_to_y[keep] <= radii[:, None]).any(dim=0).double().mean())

    everyone = torch.ones(len(x), dtype=torch.bool, device=x.device)
    subsets = _leave_one_group_out(len(x))
    return {"precision": float(inside_reference.mean()), "recall": recall(everyone),
            "precision_se": jackknife_se([float(inside_reference[keep.to(x.device)].mean()) for keep in subsets]),
            "recall_se": jackknife_se([recall(keep.to(x.device)) for keep in subsets])}


def sliced_wasserstein_and_se(samples: torch.Tensor, reference: torch.Tensor, directions: torch.Tensor) -> tuple:
    """SW_2 over the unit ``directions`` (d, P) between equal-size sets, and its jackknife SE: a replicate compares
    the kept samples' sorted projections with the reference's quantiles at the same levels."""
    a, b = samples.double() @ directions, reference.double() @ directions
    sorted_b = b.sort(dim=0).values
    value = float((a.sort(dim=0).values - sorted_b).square().mean().sqrt())

    def replicate(keep):
        kept = a[keep].sort(dim=0).values
        levels = (torch.arange(len(kept), dtype=torch.float64) + 0.5) / len(kept) * len(b) - 0.5
        low = levels.floor().clamp(0, len(b) - 1).long()
        high = (low + 1).clamp(max=len(b) - 1)
        weight = (levels - low).clamp(0, 1)[:, None]
        quantiles = sorted_b[low] * (1 - weight) + sorted_b[high] * weight
        return float((kept - quantiles).square().mean().sqrt())

    return value, jackknife_se([replicate(keep) for keep in _leave_one_group_out(len(a))])
