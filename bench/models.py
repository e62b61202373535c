"""Model presets by name. For now the analytic Gaussian mixtures, which carry exact ground truth."""
from __future__ import annotations

import math

import torch

from bench.analytic import GaussianMixture


def ring2d(n_modes: int = 8, radius: float = 1.0, std: float = 0.1) -> GaussianMixture:
    """n_modes equal-weight isotropic Gaussians evenly spaced on a circle in 2-D."""
    angles = torch.arange(n_modes, dtype=torch.float64) * (2 * math.pi / n_modes)
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return _named(GaussianMixture(means, std**2), f"synthetic: {n_modes} Gaussians on a circle (2-D)")


def gmm_hd(dim: int = 64, n_modes: int = 16, scale: float = 0.5, std: float = 0.2, seed: int = 0) -> GaussianMixture:
    """A higher-dimensional mixture: means N(0, scale^2 I) drawn from ``seed``, random positive weights."""
    g = torch.Generator().manual_seed(seed)
    means = scale * torch.randn(n_modes, dim, generator=g, dtype=torch.float64)
    weights = 0.5 + torch.rand(n_modes, generator=g, dtype=torch.float64)
    return _named(GaussianMixture(means, std**2, weights), f"synthetic: {n_modes} random Gaussians ({dim}-D)")


def digits(std: float = 0.1) -> GaussianMixture:
    """Means are the 1,797 8x8 handwritten digits shipped in scikit-learn, scaled to [-1, 1]; shape (1, 8, 8)."""
    from sklearn.datasets import load_digits

    images = torch.as_tensor(load_digits().images, dtype=torch.float64)  # (1797, 8, 8), values 0..16
    mixture = GaussianMixture(images.reshape(-1, 64) / 8.0 - 1.0, std**2, event_shape=(1, 8, 8))
    return _named(mixture, "scikit-learn digits 8x8 (all 1,797 as mixture means)")


def fashion_gmm(n_components: int = 500, std: float = 0.1, size: int = 32, data_dir=None,
                resize: str = "pad") -> GaussianMixture:
    """An image-space mixture: the first ``n_components`` Fashion-MNIST training images (padded or
    resized to ``size``, in [-1, 1]) as means, isotropic std ``std``; shape (1, size, size). Its exact
    samples make FID measure solver error alone."""
    from bench.data import fashion_mnist

    images = fashion_mnist("train", data_dir=data_dir, size=size, resize=resize)[:n_components].double()
    mixture = GaussianMixture(images.reshape(len(images), -1), std**2, event_shape=tuple(images.shape[1:]))
    return _named(mixture, f"Fashion-MNIST train[:{n_components}] as mixture means ({resize} to {size}px)")


def _named(mixture: GaussianMixture, dataset: str) -> GaussianMixture:
    mixture.dataset = dataset
    return mixture


ANALYTIC_PRESETS = {"ring2d": ring2d, "gmm_hd": gmm_hd, "digits": digits, "fashion_gmm": fashion_gmm}
DATA_MODELS = {"fashion_gmm"}  # presets that read a dataset and take data_dir

# Every model name a grid spec may use -> a factory. Analytic ones return a GaussianMixture.
MODELS = dict(ANALYTIC_PRESETS)


def build_model(name: str, data_dir=None, image_resize: str = "pad"):
    """The model source for a spec entry: a preset name, ``diffusers:PATH`` or ``python:module:function``."""
    from bench.networks import LOADERS

    prefix, sep, rest = name.partition(":")
    if sep and prefix in LOADERS:
        return LOADERS[prefix](rest)
    return MODELS[name](**({"data_dir": data_dir, "resize": image_resize} if name in DATA_MODELS else {}))


def is_model_name(name: str) -> bool:
    from bench.networks import LOADERS

    prefix, sep, rest = name.partition(":")
    return name in MODELS or bool(sep and prefix in LOADERS and rest)
