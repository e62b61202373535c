"""Seconds of an image row's metric arithmetic after the Inception pass, on this machine: FID with its jackknife SE,
KID (100 subsets), KID's SE and precision/recall with theirs, on 2,048-d features against a 2,000-feature reference,
at 2,000 samples (FID's replicates from one Gram matrix) and 10,000 (the GPU baseline's; FID's replicates expanded
to second order). Synthetic features with an Inception-like spectrum; the values do not matter, the shapes do.
"""
import pytest
import torch

from bench.metrics.fid import ReferenceSet

DIM = 2048


def _features(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    scales = torch.arange(1, DIM + 1, dtype=torch.float64) ** -0.6
    return torch.randn(n, DIM, generator=generator, dtype=torch.float64) * scales


@pytest.mark.parametrize("n", [2000, 10_000])
def test_image_metric_math_seconds(benchmark, n):
    reference, samples = ReferenceSet.of_features(_features(2000, 0)), _features(n, 1) * 1.1
    benchmark.group = f"image metric arithmetic per row, 2,048-d features, {torch.get_num_threads()} threads"
    values = benchmark.pedantic(reference.metrics, args=(samples,), rounds=1, iterations=1)
    assert values["fid"] > 0 and values["fid_se"] > 0 and 0 <= values["precision"] <= 1
