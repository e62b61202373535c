"""FID, KID and precision/recall of image samples from one Inception feature pass (torch-fidelity).

Samples in [-1, 1] are turned into uint8 exactly as saving a PNG would (round((x + 1)/2 * 255),
clamped; grey images repeated to RGB) and fed as tensors; torch-fidelity's extractor resizes them
to 299x299 the way TensorFlow 1 did and returns pool3 (2048-d) features, which serve all three
metrics (FID: Heusel et al. 2017; KID: Binkowski et al. 2018; precision/recall k = 3: Kynkaanniemi
et al. 2019). Reference features are cached on disk, keyed by what they were computed from.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from bench import fid_weights, metrics

CACHE_DIR = Path(".cache/fid")
EXTRACTOR_ID = "inception-v3-compat-2015-12-05"


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats (N, C, H, W) -> uint8 RGB as a saved PNG holds them."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"image metrics need (N, 1 or 3, H, W) images, got shape {tuple(images.shape)}")
    pixels = ((images.float() + 1) * 127.5 + 0.5).floor().clamp(0, 255).to(torch.uint8)
    return pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels


class InceptionFeatures:
    """pool3 features of the 2015 FID Inception network from local weights, computed in batches."""

    def __init__(self, weights: str | None = None, device: str = "cpu", batch_size: int = 50):
        self.weights_path = fid_weights.resolve(weights)
        self.weights_digest = fid_weights.sha256(self.weights_path)
        self.device, self.batch_size = device, batch_size
        self.net = fid_weights.extractor(self.weights_path, device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        pixels = to_uint8_rgb(images)
        parts = [self.net(chunk.to(self.device))[0].double().cpu() for chunk in pixels.split(self.batch_size)]
        return torch.cat(parts)


def image_metrics(features: torch.Tensor, reference: torch.Tensor, seed: int = 0) -> dict:
    """fid, kid (mean over subsets), precision and recall of ``features`` against ``reference``."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    subset = min(1000, len(features), len(reference))
    kid = kid_features_to_metric(features, reference, kid_subsets=100, kid_subset_size=subset, verbose=False,
                                 rng_seed=seed)["kernel_inception_distance_mean"]
    precision, recall = metrics.precision_recall(features, reference)
    return {"fid": metrics.frechet_distance(features, reference), "kid": float(kid), "precision": precision,
            "recall": recall}


def cached_reference(key: str, make_images, extractor: InceptionFeatures, cache_dir: Path = CACHE_DIR) -> torch.Tensor:
    """Features of ``make_images()``, computed once per ``key`` (dataset, split, size, extractor) and kept on disk."""
    digest = hashlib.sha1(f"{key}|{EXTRACTOR_ID}|{extractor.weights_digest}".encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"ref-{key}-{digest}.pt"
    if path.is_file():
        return torch.load(path)
    features = extractor(make_images())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    torch.save(features, tmp)
    tmp.replace(path)
    return features
