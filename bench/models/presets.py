"""Model presets by name: the analytic Gaussian mixtures, which carry exact ground truth, and the
project's trained Fashion-MNIST UNet (``fmnist_unet``, shipped in bench/checkpoints/)."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.models.analytic import GaussianMixture


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


def gmm_classes(dim: int = 16, n_modes: int = 16, n_classes: int = 4, scale: float = 0.5, std: float = 0.2,
                seed: int = 0) -> GaussianMixture:
    """A class-conditional mixture: ``n_modes`` equal-weight isotropic Gaussians with means N(0, scale^2 I) drawn
    from ``seed``, component k in class k mod ``n_classes`` (so every class is a mixture of several modes that
    interleave with the other classes'); equal class probabilities, so uniformly drawn labels sample p_0 exactly."""
    g = torch.Generator().manual_seed(seed)
    means = scale * torch.randn(n_modes, dim, generator=g, dtype=torch.float64)
    mixture = GaussianMixture(means, std**2, component_classes=torch.arange(n_modes) % n_classes,
                              class_names=[f"class {c}" for c in range(n_classes)])
    return _named(mixture, f"synthetic: {n_modes} random Gaussians in {n_classes} classes ({dim}-D)")


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
    from bench.models.data import fashion_mnist

    images = fashion_mnist("train", data_dir=data_dir, size=size, resize=resize)[:n_components].double()
    mixture = GaussianMixture(images.reshape(len(images), -1), std**2, event_shape=tuple(images.shape[1:]))
    return _named(mixture, f"Fashion-MNIST train[:{n_components}] as mixture means ({resize} to {size}px)")


def _named(mixture: GaussianMixture, dataset: str) -> GaussianMixture:
    mixture.dataset = dataset
    return mixture


CHECKPOINTS_DIR = Path(__file__).parent / "checkpoints"


def fmnist_unet(directory: Path = CHECKPOINTS_DIR / "fmnist_unet"):
    """The project's UNet trained on Fashion-MNIST (32x32, eps prediction, DDPM linear betas), loaded like
    ``diffusers:PATH`` after checking the weights' sha256 against ``training.json`` (which also holds the
    command and commit that trained it; the folder's README tells the rest)."""
    from bench.models.networks import FASHION_MNIST, load_diffusers

    record = json.loads((directory / "training.json").read_text())
    weights = directory / "unet" / "diffusion_pytorch_model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if digest != record["weights_sha256"]:
        raise ValueError(f"fmnist_unet: {weights} has sha256 {digest[:16]}..., training.json says "
                         f"{record['weights_sha256'][:16]}... (a Git LFS pointer or a changed file?)")
    source = load_diffusers(directory)
    source.dataset = f"{FASHION_MNIST} (the project's UNet, bench/checkpoints/fmnist_unet)"
    return source


def fmnist_cond_unet(directory: Path = CHECKPOINTS_DIR / "fmnist_cond_unet"):
    """The project's class-conditional UNet on Fashion-MNIST (the ten classes, and the null class learned by label
    dropout, so it guides), checked and loaded like ``fmnist_unet`` (its folder's README tells the rest)."""
    from bench.models.networks import FASHION_MNIST

    source = fmnist_unet(directory)
    source.dataset = f"{FASHION_MNIST}, class-conditional (the project's UNet, bench/checkpoints/fmnist_cond_unet)"
    return source


ANALYTIC_PRESETS = {"ring2d": ring2d, "gmm_hd": gmm_hd, "gmm_classes": gmm_classes, "digits": digits,
                    "fashion_gmm": fashion_gmm}
NETWORK_PRESETS = {"fmnist_unet": fmnist_unet, "fmnist_cond_unet": fmnist_cond_unet}
CONDITIONAL_ANALYTIC = {"gmm_classes"}  # analytic presets with component classes (cheap to build)
DATA_MODELS = {"fashion_gmm"}  # presets that read a dataset and take data_dir
EXACT_IMAGE_SIDES = {"digits": 8, "fashion_gmm": 32}  # the analytic presets whose samples are images: their side in px

# Every model name a grid spec may use -> a factory. Analytic ones return a GaussianMixture.
MODELS = {**ANALYTIC_PRESETS, **NETWORK_PRESETS}


def weights_digest(source) -> str | None:
    """sha256 of what a model computes from: a network's weight files (``source.weights_sha256``, set by its
    loader), an analytic mixture's means, variances and weights; None for a python: function's own model."""
    if isinstance(source, GaussianMixture):
        digest = hashlib.sha256()
        for tensor in (source.means, source.variances, source.log_weights):
            digest.update(tensor.contiguous().numpy().tobytes())
        return digest.hexdigest()
    return getattr(source, "weights_sha256", None)


def build_model(name: str, data_dir=None, image_resize: str = "pad"):
    """The model source for a spec entry: a preset name, ``diffusers:PATH`` or ``python:module:function``."""
    from bench.models.networks import LOADERS

    prefix, sep, rest = name.partition(":")
    if sep and prefix in LOADERS:
        return LOADERS[prefix](rest)
    return MODELS[name](**({"data_dir": data_dir, "resize": image_resize} if name in DATA_MODELS else {}))


def model_conditioning(name: str):
    """A model's ClassConditioning (None: unconditional) from its name, without loading weights; "unknown" for a
    python: function's model, which says only once built, and for a diffusers folder that is not there (yet: its
    rows say what is missing)."""
    from bench.models.networks import read_conditioning

    prefix, sep, rest = name.partition(":")
    if sep and prefix == "diffusers":
        return read_conditioning(rest) if Path(rest).is_dir() else "unknown"
    if sep:
        return "unknown"
    if name in CONDITIONAL_ANALYTIC:
        return MODELS[name]().conditioning
    if name in NETWORK_PRESETS:
        return read_conditioning(CHECKPOINTS_DIR / name)
    return None


@dataclass(frozen=True)
class SampleKind:
    """What a model's samples are, as far as the metrics care: ``exact``, an analytic mixture's (exact samples and
    density to compare with); ``image_side``, the shorter side in pixels of the images the image metrics see (a
    latent model's decoded ones), None for points that are not images."""

    exact: bool
    image_side: int | None


def sample_kind(name: str) -> SampleKind | None:
    """A model's SampleKind from its name and configs alone (no weights loaded); None where only the built model
    says: a python: function's, a diffusers folder that is not there (yet)."""
    from bench.models.networks import read_image_side

    prefix, sep, rest = name.partition(":")
    if sep:
        return SampleKind(False, read_image_side(rest)) if prefix == "diffusers" and Path(rest).is_dir() else None
    if name in ANALYTIC_PRESETS:
        return SampleKind(True, EXACT_IMAGE_SIDES.get(name))
    return SampleKind(False, read_image_side(CHECKPOINTS_DIR / name))


def model_problem(name: str) -> str | None:
    """What is wrong with a model entry that is_model_name accepts, found before anything is built: a python:
    function's module that is not on the python path (a diffusers folder may appear later: its rows say so)."""
    from bench.models.networks import python_model_problem

    prefix, sep, rest = name.partition(":")
    return python_model_problem(rest) if sep and prefix == "python" else None


def is_model_name(name: str) -> bool:
    from bench.models.networks import LOADERS

    prefix, sep, rest = name.partition(":")
    return name in MODELS or bool(sep and prefix in LOADERS and rest)
