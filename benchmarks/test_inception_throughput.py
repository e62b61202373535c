"""Images per second of the FID feature pass on this machine: what a CPU image grid costs.

The plain torch-fidelity extractor and the harness's (channels-last, inference mode) side by side in
one run, on 100 images of 32x32 (resized to 299x299 inside). Needs the FID weights (make fid-weights).
"""
import pytest
import torch

from bench.metrics.fid import InceptionFeatures

IMAGES = torch.rand(100, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.mark.parametrize("channels_last", [False, True], ids=["plain", "harness"])
def test_inception_images_per_second(benchmark, channels_last):
    extractor = InceptionFeatures(channels_last=channels_last)
    extractor(IMAGES[:10])  # warm-up: allocations and kernel choice
    benchmark.group = f"FID feature pass, {len(IMAGES)} images 32x32, {torch.get_num_threads()} threads"
    features = benchmark.pedantic(extractor, args=(IMAGES,), rounds=3, iterations=1)
    if benchmark.stats is not None:  # None under --benchmark-disable (a plain test run)
        benchmark.extra_info["images_per_s"] = len(IMAGES) / benchmark.stats.stats.mean
    assert features.shape == (len(IMAGES), 2048)
