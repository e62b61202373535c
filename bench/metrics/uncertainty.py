"""Standard errors of the metrics from the one sample set a row has: every figure with its uncertainty.

Two resampling schemes, each where it is right (both checked against the spread of the metric over
independently drawn sample sets in tests/metrics/test_uncertainty.py):

- Per-sample statistics (the median or mean of per-sample errors, distances, log-densities, LPIPS):
  the bootstrap over samples, ``BOOTSTRAP_REPLICATES`` = 200 resamples (the SE's own Monte Carlo error
  is then 1/sqrt(2 x 199) = 5%), from the per-sample values the metric already has.
- Precision, a share of independent votes (each sample inside the reference's balls or not): the binomial
  SE under Jeffreys' prior (``share_se``), never 0 at a bound.
- Distances between the sample set and a reference set (FID and the data-space Frechet distance, KID,
  recall, sliced Wasserstein): the delete-a-group jackknife, ``JACKKNIFE_GROUPS`` = 64 groups
  (or one sample per group below 64 samples; the SE's Monte Carlo error about 1/sqrt(2 x 63) = 9%),
  recomputed from the features, distances or kernel values the metric computes anyway. The bootstrap is
  wrong for these: a resample repeats about a third of its samples, which a covariance, a nearest-neighbour
  radius or a kernel mean counts as real, and at 128 Inception features (2,048 dimensions) its FID spread
  came out 2.3x the true one (jackknife: 1.13x). The reference set's own statistics are held fixed: the
  SE is that of the figure given the reference, which every row shares (one set whatever the row's seed).
  Recall and coverage, shares of the reference's points, take the larger of their jackknife SE and ``share_se``
  (``share_jackknife_se``): at a bound no group's removal changes a point's vote, and the jackknife is 0.

Replicates are computed in float64 with exact formulas (FID's trace term from the eigenvalues of the
samples' whitened covariance), seeded from the config's seed, so a rerun gives the same standard errors; but
for FID's trace term above ``EXACT_RANK`` dimensions with ``EXPANDED_FROM`` samples per dimension or more (the
standard FID at 8,192 samples or more), which is expanded to second order about the whole set's: one
eigendecomposition of 2,048 x 2,048 instead of 64 (see FrechetReference._primal_roots for how close).
"""
from __future__ import annotations

import contextlib
import math

import torch

BOOTSTRAP_REPLICATES = 200
JACKKNIFE_GROUPS = 64
EXACT_RANK, EXPANDED_FROM = 256, 4  # FrechetReference: above that rank, from 4 samples per dimension, expanded
NEAREST = 3  # precision and recall's k (Kynkaanniemi et al. 2019, torch-fidelity's default)
NEIGHBOUR_SAMPLES = NEAREST + 2  # the fewest samples for them: k others around each, in every set recall's jackknife keeps


@contextlib.contextmanager
def full_precision_matmul():
    """float32 matmuls in full precision while metrics are computed (no TF32 on CUDA, whatever the sweep's policy
    set): nearest-neighbour radii and distances in TF32 would move precision and recall. Restored after."""
    precision, tf32 = torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cuda.matmul.allow_tf32 = tf32


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


def share_se(count: float, n: int) -> float:
    """SE of a share ``count``/``n`` of independent yes/no votes (precision: each sample inside the reference's
    balls or not, the reference fixed): the posterior standard deviation under Jeffreys' prior,
    Beta(count + 1/2, n - count + 1/2) (the prior of Brown, Cai & DasGupta's 2001 recommended interval). Inside
    the range it is the binomial sqrt(p (1 - p) / (n + 2)); at a bound (every vote yes, or none) it is about
    0.71/n where the plug-in and the jackknife give 0 whatever the true share."""
    a, b = count + 0.5, n - count + 0.5
    return math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))


def share_jackknife_se(replicates, count: int, n: int) -> float:
    """SE of a share ``count``/``n`` whose votes are not independent (recall's and coverage's reference points, each
    inside or outside balls that many samples set): the delete-a-group jackknife from its leave-one-group-out
    ``replicates``, but never below ``share_se`` of ``n`` votes. The jackknife is 0 wherever no group's removal
    changes a vote, as at a bound where samples of two groups or more hold every reference point, whatever the true
    share; the floor is what ``n`` votes can tell apart. Inside the range it came out 0.6-1.0x the spread over sample
    sets, below the jackknife (recall's 1.05-2.3x, coverage's 1.1-1.7x), and it binds in 0-4% of the sets; at a
    bound in 90-98% (tests/metrics/test_uncertainty.py). NaN where the jackknife is (too few samples)."""
    se = jackknife_se(replicates)
    return se if math.isnan(se) else max(se, share_se(count, n))


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


def leave_one_group_out(n: int):
    """The masks of the samples each jackknife replicate keeps."""
    labels = groups(n)
    return [labels != g for g in range(int(labels.max()) + 1)]


class FrechetReference:
    """A reference distribution's mean and covariance, ready for the Frechet distance (FID on Inception features,
    the data-space Frechet distance on raw samples) of any sample set and its jackknife SE.

    d^2 = |mu - mu_r|^2 + tr S + tr S_r - 2 tr sqrt(S S_r). With a factor S_r = R R^T (of at most d columns, from a
    QR or Cholesky factorisation, or the m - 1 independent columns of the reference's centred features when there
    are fewer of them than dimensions) and Y the samples' centred features times R, the eigenvalues of S S_r are
    those of Y^T Y / (n - 1), and (but for zeros) of Y Y^T / (n - 1): the last trace is the sum of the square roots
    of the ``rank`` largest, from the smaller matrix. Exact, no matrix square root, and equal to torch-fidelity's
    scipy.linalg.sqrtm form to its rounding (tested)."""

    def __init__(self, mu: torch.Tensor, factor: torch.Tensor, rank: int):
        self.mu, self.factor, self.rank = torch.as_tensor(mu, dtype=torch.float64), factor.double(), rank
        self.trace = float(self.factor.square().sum())

    @classmethod
    def of(cls, features: torch.Tensor) -> "FrechetReference":
        """From the reference set's features: their sample covariance, factored through the features themselves."""
        features = features.double().reshape(len(features), -1)
        (m, d), mean = features.shape, features.mean(0)
        centred = (features - mean) / math.sqrt(m - 1)
        if m > d:  # S_r = U^T U with centred = Q U
            return cls(mean, torch.linalg.qr(centred).R.T, d)
        return cls(mean, centred.T, m - 1)

    @classmethod
    def of_statistics(cls, mu, sigma) -> "FrechetReference":
        """From a mean and covariance (the shipped statistics), factored by Cholesky (by eigendecomposition where
        the covariance is singular)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        factor, info = torch.linalg.cholesky_ex(sigma)
        if not int(info):
            return cls(torch.as_tensor(mu, dtype=torch.float64), factor, len(sigma))
        values, vectors = torch.linalg.eigh(sigma)
        positive = values > values.max() * len(values) * torch.finfo(torch.float64).eps
        return cls(torch.as_tensor(mu, dtype=torch.float64), vectors[:, positive] * values[positive].sqrt(),
                   int(positive.sum()))

    def distance_and_se(self, features: torch.Tensor) -> tuple[float, float]:
        """The distance and its delete-a-group jackknife SE. Every replicate is computed from the whole set's sums
        and products less its group's, no kept set copied: the mean and trace terms exactly; tr sqrt exactly from
        one n x n Gram matrix with no more samples than the reference's rank (_dual_roots), and with more from the
        r x r second moments, exactly where the rank is at most ``EXACT_RANK`` or there are fewer than
        ``EXPANDED_FROM`` samples per dimension, else to second order (_primal_roots)."""
        features = features.double().reshape(len(features), -1).to(self.mu.device)
        projected = features @ self.factor
        membership = torch.nn.functional.one_hot(groups(len(features)).to(features.device)).double()  # (n, G)
        mean_term, kept_mean_term = self._mean_terms(features, membership)
        whitened = projected - projected.mean(0)
        roots = self._primal_roots if len(features) > projected.shape[1] else self._dual_roots
        root, kept_root = roots(whitened, membership)
        return float(mean_term + self.trace - 2 * root), jackknife_se(kept_mean_term + self.trace - 2 * kept_root)

    def _mean_terms(self, features: torch.Tensor, membership: torch.Tensor) -> tuple:
        """|mean - mu|^2 + tr S of the samples, and of each replicate's kept samples from the sums less its
        group's."""
        n, kept = len(features), len(features) - membership.sum(0)  # kept: (G,)
        mean = features.mean(0)
        centred = features - mean
        kept_x = -(membership.T @ centred)  # the kept samples' sums (the centred ones sum to 0)
        spread = centred.square().sum()
        kept_spread = spread - membership.T @ centred.square().sum(1)
        mean_term = (mean - self.mu).square().sum() + spread / (n - 1)
        kept_mean_term = ((mean + kept_x / kept[:, None] - self.mu).square().sum(1)
                          + (kept_spread - kept_x.square().sum(1) / kept) / (kept - 1))
        return mean_term, kept_mean_term

    def _sqrt_trace(self, moments: torch.Tensor, n: int) -> torch.Tensor:
        """The sum of the square roots of the min(n - 1, rank) largest eigenvalues of ``moments`` (the rest are
        rounding zeros)."""
        return torch.linalg.eigvalsh(moments)[-min(n - 1, self.rank):].clamp_min(0).sqrt().sum()

    def _dual_roots(self, whitened: torch.Tensor, membership: torch.Tensor) -> tuple:
        """n <= r: tr sqrt(A) from the Gram matrix W = Y Y^T of the centred projected samples, whose eigenvalues
        over n - 1 are A's nonzero ones; each replicate's from W's kept rows and columns K, centred at the kept
        samples' mean (W_KK - c 1^T - 1 c^T + mean(c), c = W_KK 1 / m). Exact; one n x n matrix in all (the 64 kept
        sets stacked, as at 1ec2a70, took 9.6 GB and 75 s at 2,000 Inception features on 2 cores; this 25 s)."""
        gram = whitened @ whitened.T
        kept_root = torch.empty(membership.shape[1], dtype=torch.float64, device=whitened.device)
        for g in range(len(kept_root)):
            kept = (membership[:, g] == 0).nonzero().squeeze(1)
            block = gram[kept][:, kept]
            row_means = block.mean(1)
            centred = block - row_means[:, None] - row_means[None, :] + row_means.mean()
            kept_root[g] = self._sqrt_trace(centred / (len(kept) - 1), len(kept))
        return self._sqrt_trace(gram / (len(gram) - 1), len(gram)), kept_root

    def _primal_roots(self, whitened: torch.Tensor, membership: torch.Tensor) -> tuple:
        """n > r: tr sqrt of the whitened covariance A = Y^T Y / (n - 1) of the centred projected samples Y, and of
        each replicate's A_k = (Y^T Y - Y_g^T Y_g - s_g s_g^T / n_k) / (n_k - 1) from the sums less its group's
        (s_g: the group's sum of Y, minus the kept samples'). Exact (an eigendecomposition per replicate) up to
        rank ``EXACT_RANK`` or below ``EXPANDED_FROM`` r samples. Above, one eigendecomposition A = V diag(l) V^T
        in all (at 2,048 Inception dimensions and 10,000 samples, 64 take half a minute per row on 2 cores), and
        tr sqrt(A + D) to second order in D = A_k - A, in its basis (D' = V^T D V): sum_j D'_jj / (2 sqrt l_j) -
        sum_jk D'_jk^2 / (4 sqrt l_j sqrt l_k (sqrt l_j + sqrt l_k)) (the Daleckii-Krein expansion). D is about
        1/64 of A, so the error is third order. Measured against the exact replicates on Fashion-MNIST Inception
        features and the shipped test-split statistics: samples of the shipped UNet (ddim, 5 steps; FID 70) and a
        mix with training images (FID 25) at 4,096 to 12,000 samples, SE within 0.04%; training images alone
        (FID 2.7-4.4, where FID's first-order fluctuations cancel and its spread is itself second order) 5.6% apart
        at 4,096 samples, 2.4% at 6,000, 0.3% and 0.4% at 8,192 and 9,000: hence 4 samples a dimension."""
        n, rank = whitened.shape
        kept = n - membership.sum(0)
        second = whitened.T @ whitened
        exact = rank <= EXACT_RANK or n < EXPANDED_FROM * rank
        if exact:
            root = self._sqrt_trace(second / (n - 1), n)
        else:  # the replicates in A's eigenbasis: Z = Y V, whose second moments are (n - 1) diag(l)
            values, vectors = torch.linalg.eigh(second / (n - 1))
            roots = values.clamp_min(values[-1] * torch.finfo(torch.float64).eps).sqrt()
            root = roots.sum()
            curvature = 1 / (roots[:, None] * roots[None, :] * (roots[:, None] + roots[None, :]))
            whitened, second = whitened @ vectors, torch.diag(values * (n - 1))
        kept_root = torch.empty(len(kept), dtype=torch.float64, device=whitened.device)
        for g in range(len(kept)):
            dropped = whitened[membership[:, g] > 0]
            kept_sum = -dropped.sum(0)
            kept_whitened = (second - dropped.T @ dropped - torch.outer(kept_sum, kept_sum) / kept[g]) / (kept[g] - 1)
            if exact:
                kept_root[g] = self._sqrt_trace(kept_whitened, int(kept[g]))
            else:
                change = kept_whitened - torch.diag(values)  # D' = V^T (A_k - A) V
                kept_root[g] = root + (change.diagonal() / roots).sum() / 2 - (change.square() * curvature).sum() / 4
        return root, kept_root


class KernelReference:
    """A reference set's features for KID's jackknife SE: the unbiased MMD^2 with the cubic polynomial kernel
    k(x, y) = (x.y / d + 1)^3 (Binkowski et al. 2018; torch-fidelity's) between the samples and all the reference
    features (the reported KID averages 100 subsets of them). The reference's own kernel mean is computed once."""

    def __init__(self, reference: torch.Tensor, chunk: int = 2048):
        self.y, self.chunk = reference.double(), chunk
        m, d = self.y.shape
        total = 0.0
        for start in range(0, m, chunk):
            kernel = (self.y[start:start + chunk] @ self.y.T / d + 1) ** 3
            total += float(kernel.sum() - torch.diagonal(kernel, offset=start).sum())
        self.mean_yy = total / (m * (m - 1))

    def kid_se(self, features: torch.Tensor) -> float:
        """Jackknife SE over the samples; the kernel sums are accumulated per group, no n x n matrix is held."""
        x = features.double().to(self.y.device)
        n, m, d = len(x), len(self.y), x.shape[1]
        labels = groups(n).to(x.device)
        one_hot = torch.nn.functional.one_hot(labels, int(labels.max()) + 1).double()
        block_xx = torch.zeros(one_hot.shape[1], one_hot.shape[1], dtype=torch.float64, device=x.device)
        diagonal = torch.zeros(one_hot.shape[1], dtype=torch.float64, device=x.device)
        cross = torch.zeros(one_hot.shape[1], dtype=torch.float64, device=x.device)  # sum of k(x_i, y) by group
        for start in range(0, n, self.chunk):
            part, membership = x[start:start + self.chunk], one_hot[start:start + self.chunk]
            block_xx += membership.T @ ((part @ x.T / d + 1) ** 3) @ one_hot
            diagonal += membership.T @ (((part * part).sum(1) / d + 1) ** 3)
            cross += membership.T @ ((part @ self.y.T / d + 1) ** 3).sum(1)
        kept = n - one_hot.sum(0)
        xx = block_xx.sum() - 2 * block_xx.sum(1) + torch.diagonal(block_xx) - (diagonal.sum() - diagonal)
        replicates = xx / (kept * (kept - 1)) + self.mean_yy - 2 * (cross.sum() - cross) / (kept * m)
        return jackknife_se(replicates)


class NeighbourReference:
    """A reference set's features for k-NN precision and recall (Kynkaanniemi et al. 2019, torch-fidelity's
    definition: a radius is the distance to the k-th nearest other point of the same set), in float32 as
    torch-fidelity computes them; the reference's radii are computed once."""

    def __init__(self, reference: torch.Tensor, k: int = NEAREST):
        self.y, self.k = reference.float(), k
        self.radii = torch.cdist(self.y, self.y).kthvalue(k + 1, dim=1).values

    def precision_recall_and_se(self, features: torch.Tensor) -> dict:
        """Precision and recall with their SEs. Precision counts independent votes (each sample inside the fixed
        reference's balls or not): ``share_se``, which is not 0 when every sample is inside (the jackknife's was,
        so that its +-1.96 SE held the true precision 0.9994 in 3% of sets of 128 samples, this one in all of them:
        tests/metrics/test_uncertainty.py). Recall's is the delete-a-group jackknife (never below ``share_se`` of the
        reference's points: ``share_jackknife_se``): leaving a group of samples
        out drops their balls, and the kept samples' radii are those among the kept samples (a radius grows where
        the group held one of its k nearest): the recall of the kept set itself. Holding the radii fixed instead
        left out most of recall's variance where samples cluster (a few-step solver's collapsed modes): its SE
        came out 0.06-0.57x the spread over sample sets there, against 1.05-2.3x (conservative, as Efron & Stein
        1981 have the jackknife) recomputed (tests/metrics/test_uncertainty.py)."""
        x = features.float().to(self.y.device)
        x_to_y = torch.cdist(x, self.y)
        inside_reference = int((x_to_y <= self.radii).any(dim=1).sum())  # samples inside some reference ball
        labels = groups(len(x)).to(x.device)
        membership = torch.nn.functional.one_hot(labels).double()  # (n, G)
        recall, recall_se = self._recall_and_se(x_to_y, torch.cdist(x, x), labels, membership)
        return {"precision": inside_reference / len(x), "precision_se": share_se(inside_reference, len(x)),
                "recall": recall, "recall_se": recall_se}

    def _recall_and_se(self, x_to_y, x_to_x, labels, membership) -> tuple[float, float]:
        """Recall (the share of reference points inside some sample's ball) and its SE, the delete-a-group jackknife
        floored (``share_jackknife_se``). A sample's radius among the kept is the (k+1)-th smallest of its distances
        to them (itself the first), so its k + 1 + (largest group) nearest hold it; only the samples whose k nearest
        met the group change balls, and a replicate's counts are the whole set's less the group's balls and those
        samples' old ones, plus their new ones. NaN where a kept set has no k other samples."""
        k, n = self.k, len(x_to_x)
        radii = x_to_x.kthvalue(k + 1, dim=1).values
        covers = (x_to_y <= radii[:, None]).double()  # (n, m): sample i's ball holds reference point j
        counts = covers.sum(0)
        covered = int((counts > 0).sum())
        recall = covered / len(counts)
        largest_group = int(membership.sum(0).max())
        if n - largest_group < k + 1:
            return recall, math.nan
        nearest, neighbours = x_to_x.topk(min(n, k + 1 + largest_group), dim=1, largest=False)  # sorted
        neighbour_groups = labels[neighbours]
        without_group = counts[None, :] - membership.T @ covers  # (G, m): the group's balls gone
        replicates = []
        for group in range(membership.shape[1]):
            rank = (neighbour_groups != group).cumsum(dim=1)  # kept neighbours up to each place
            place = (rank == k + 1).double().argmax(dim=1)  # the first place holding the (k+1)-th kept one
            grown = nearest.gather(1, place[:, None]).squeeze(1)
            moved = ((grown > radii) & (labels != group)).nonzero().squeeze(1)
            counts_kept = (without_group[group] - covers[moved].sum(0)
                           + (x_to_y[moved] <= grown[moved, None]).double().sum(0))
            replicates.append((counts_kept > 0).double().mean())
        return recall, share_jackknife_se(torch.stack(replicates), covered, len(counts))


def sliced_wasserstein_and_se(samples: torch.Tensor, reference: torch.Tensor, directions: torch.Tensor) -> tuple:
    """SW_2 over the unit ``directions`` (d, P) between equal-size sets, and its jackknife SE: a replicate compares
    the kept samples' sorted projections with the reference's quantiles at the same levels (linear interpolation).
    A kept projection at sorted place j with c of the group's projections before it has place j - c among the kept;
    the replicates are computed for several groups at once, in float32 (what an SE needs)."""
    a, b = samples.double() @ directions, reference.double() @ directions
    n, m, count = len(a), len(b), a.shape[1]
    order = a.argsort(dim=0)
    sorted_a, sorted_b = a.gather(0, order), b.sort(dim=0).values
    value = float((sorted_a - sorted_b).square().mean().sqrt())
    labels = groups(n)[order]  # (n, P): the group of each sorted projection
    sizes = torch.bincount(groups(n))
    quantiles = {}
    for kept in {n - int(size) for size in sizes}:  # the reference at the kept sets' levels
        levels = (torch.arange(kept, dtype=torch.float64) + 0.5) / kept * m - 0.5
        low = levels.floor().clamp(0, m - 1).long()
        weight = (levels - low).clamp(0, 1)[:, None]
        quantiles[kept] = (sorted_b[low] * (1 - weight) + sorted_b[(low + 1).clamp(max=m - 1)] * weight).float()
    if int(sizes.max()) <= PREFIX_GROUP_SIZE:
        return value, jackknife_se(_sliced_replicates_by_prefix_sums(sorted_a, labels, sizes, quantiles).sqrt())
    sorted_a, places = sorted_a.float(), torch.arange(n)[None, :, None]
    replicates = []
    chunk = max(1, 2**24 // (n * count))  # groups at once: at most 16M entries per array
    for start in range(0, len(sizes), chunk):
        chosen = torch.arange(start, min(start + chunk, len(sizes)))
        removed = labels[None] == chosen[:, None, None]  # (g, n, P)
        before = removed.cumsum(1) - removed.long()  # removed places before each place
        for kept in quantiles:  # the groups of one size together (gather needs one quantile table)
            rows = (n - sizes[chosen]) == kept
            rank = (places - before[rows]).clamp(0, kept - 1)
            terms = (sorted_a[None] - quantiles[kept][rank, torch.arange(count)]).square()
            replicates.append(((terms * ~removed[rows]).sum((1, 2)) / (kept * count), chosen[rows]))
    values = torch.empty(len(sizes), dtype=torch.float64)
    for part, index in replicates:
        values[index] = part.double()
    return value, jackknife_se(values.sqrt())


PREFIX_GROUP_SIZE = 8  # jackknife groups up to this size (up to 512 samples) take the prefix-sum path


def _sliced_replicates_by_prefix_sums(sorted_a, labels, sizes, quantiles) -> torch.Tensor:
    """Each group's replicate of SW_2^2 from prefix sums: with k removed places u_1 < ... < u_k in a direction, the
    kept stretches [0, u_1), (u_1, u_2), ..., (u_k, n) compare place j with quantile j - c, c = 0, ..., k."""
    n, count = sorted_a.shape
    prefix = {}  # (kept size, c) -> cumulative sums over places of (a_(j) - q_(j - c))^2, a zero row first
    for kept, table in quantiles.items():
        for c in range(n - kept + 1):
            rank = (torch.arange(n) - c).clamp(0, kept - 1)
            terms = (sorted_a - table.double()[rank]).square()
            prefix[kept, c] = torch.cat([torch.zeros(1, count, dtype=torch.float64), terms.cumsum(0)])
    places = torch.sort(labels * n + torch.arange(n)[:, None], dim=0).values % n  # each group's places, in order
    column, values, offset = torch.arange(count), torch.empty(len(sizes), dtype=torch.float64), 0
    for g, size in enumerate(sizes.tolist()):
        removed, kept = places[offset:offset + size], n - size  # (size, P), increasing within a direction
        offset += size
        ends = torch.cat([removed, torch.full((1, count), n)])
        starts = torch.cat([torch.zeros(1, count, dtype=torch.long), removed + 1])
        total = sum(prefix[kept, c][ends[c], column] - prefix[kept, c][starts[c], column] for c in range(size + 1))
        values[g] = total.sum() / (kept * count)
    return values
