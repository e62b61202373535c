"""Seconds of an image row's metric arithmetic after the Inception pass, on this machine, on synthetic 2,048-d
features with an Inception-like spectrum (the values do not matter, the shapes do):

- FID with its jackknife SE against the shipped Fashion-MNIST test-split statistics, at 128 and 2,000 samples (both
  with fewer samples than dimensions: the replicates from one Gram matrix);
- the whole row (FID, KID over 100 subsets, KID's SE, precision/recall, each with its SE) against a 2,000-feature
  reference, at 2,000 samples and 10,000 (the GPU baseline's; FID's replicates expanded to second order).
"""
import json

import pytest
import torch

from bench.metrics.fid import REFERENCES_DIR, ReferenceSet, ShippedReference

DIM = 2048


def _features(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    scales = torch.arange(1, DIM + 1, dtype=torch.float64) ** -0.6
    return torch.randn(n, DIM, generator=generator, dtype=torch.float64) * scales


@pytest.mark.parametrize("n", [128, 2000])
def test_fid_and_se_seconds(benchmark, n):
    weights_digest = json.loads((REFERENCES_DIR / "fashion_mnist_test.json").read_text())["fid_weights_sha256"]
    frechet = ShippedReference("fashion_mnist_test", weights_digest).reference_set.frechet
    samples = _features(n, 1).abs()
    benchmark.group = f"FID and its SE, 2,048-d features, shipped statistics, {torch.get_num_threads()} threads"
    fid, se = benchmark.pedantic(frechet.distance_and_se, args=(samples,), rounds=3, iterations=1)
    assert fid > 0 and se > 0


@pytest.mark.parametrize("n", [2000, 10_000])
def test_image_metric_math_seconds(benchmark, n):
    reference, samples = ReferenceSet.of_features(_features(2000, 0)), _features(n, 1) * 1.1
    benchmark.group = f"image metric arithmetic per row, 2,048-d features, {torch.get_num_threads()} threads"
    values = benchmark.pedantic(reference.metrics, args=(samples,), rounds=1, iterations=1)
    assert values["fid"] > 0 and values["fid_se"] > 0 and 0 <= values["precision"] <= 1
